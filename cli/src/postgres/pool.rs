//! The app with a connection pool: it reads its credential file (the JSON
//! secret a PostgreSQL rotation target keeps, or a connection string a
//! `rotor.dev/template.*` built from it), holds a pool of connections,
//! runs `SELECT current_user` on each every tick, and when the file
//! changes (seen on the next tick, or at once after [`PoolApp::reload`],
//! which the demo calls on the sidecar's signal) opens a fresh pool with
//! the new credential and drops the old one. Every failed login and query
//! is counted; nothing of a password is ever printed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

/// A database login: whom, with what, where. Holds a password, so neither
/// `Debug` nor `Serialize`.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub password: SecretString,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

/// The JSON secret's shape (AWS's database secrets'), read only to be
/// moved into a [`Credential`].
#[derive(serde::Deserialize)]
struct JsonSecret {
    username: String,
    password: String,
    host: String,
    port: u16,
    dbname: String,
}

impl Credential {
    /// Reads a credential: a JSON object (`username`, `password`, `host`,
    /// `port`, `dbname`) or a connection string (`postgresql://…` or
    /// `key=value …`). The error says which, never the text.
    pub fn parse(text: &[u8]) -> anyhow::Result<Self> {
        if text.trim_ascii_start().starts_with(b"{") {
            let s: JsonSecret = serde_json::from_slice(text).map_err(|e| {
                anyhow::anyhow!(
                    "the credential file is JSON but not a database secret (line {}, column {}); \
                     expected an object with username, password, host, port and dbname",
                    e.line(),
                    e.column()
                )
            })?;
            return Ok(Self {
                username: s.username,
                password: SecretString::from(s.password),
                host: s.host,
                port: s.port,
                dbname: s.dbname,
            });
        }
        let text = std::str::from_utf8(text)
            .ok()
            .context("the credential file is not UTF-8 text")?;
        let config: tokio_postgres::Config = text.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "the credential file is neither a JSON database secret nor a connection \
                 string (postgresql://USER:PASSWORD@HOST:PORT/DB)"
            )
        })?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => anyhow::bail!("the connection string names no TCP host"),
        };
        Ok(Self {
            username: config.get_user().unwrap_or_default().to_owned(),
            password: SecretString::from(
                String::from_utf8_lossy(config.get_password().unwrap_or_default()).into_owned(),
            ),
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: config.get_dbname().unwrap_or_default().to_owned(),
        })
    }

    /// True when both name the same login.
    pub fn same_as(&self, other: &Self) -> bool {
        self.username == other.username
            && self.password.expose_secret() == other.password.expose_secret()
            && self.host == other.host
            && self.port == other.port
            && self.dbname == other.dbname
    }

    /// A login (no TLS: the demo's and the tests' servers are on loopback)
    /// and one query.
    pub async fn login(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host(&self.host)
            .port(self.port)
            .user(&self.username)
            .password(self.password.expose_secret())
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(10))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        client.batch_execute("SELECT 1").await?;
        Ok(client)
    }
}

/// What the app counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub queries_ok: u64,
    /// Failed logins and failed queries.
    pub failed: u64,
    /// Pools opened (the first, then one per credential change).
    pub pools: u64,
}

impl std::ops::Sub for Counts {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            queries_ok: self.queries_ok - before.queries_ok,
            failed: self.failed - before.failed,
            pools: self.pools - before.pools,
        }
    }
}

#[derive(Default)]
struct Shared {
    queries_ok: AtomicU64,
    failed: AtomicU64,
    pools: AtomicU64,
    /// The role the last query ran as (`current_user`).
    role: Mutex<Option<String>>,
    /// Every credential a pool was opened with, in order.
    held: Mutex<Vec<Credential>>,
    stop: AtomicBool,
    reload: Notify,
    /// Wakes those waiting for a new pool.
    pooled: Notify,
}

/// The running app (a tokio task); stops when dropped.
pub struct PoolApp {
    shared: Arc<Shared>,
}

impl PoolApp {
    /// Starts the app on `file` with a pool of `size` connections and a
    /// query on each every `tick`.
    pub fn start(file: PathBuf, size: usize, tick: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(file, size, tick, shared.clone()));
        Self { shared }
    }

    /// Checks the file now rather than on the next tick.
    pub fn reload(&self) {
        self.shared.reload.notify_one();
    }

    pub fn counts(&self) -> Counts {
        Counts {
            queries_ok: self.shared.queries_ok.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            pools: self.shared.pools.load(Ordering::Relaxed),
        }
    }

    /// The role the last query ran as.
    pub fn role(&self) -> Option<String> {
        self.shared.role.lock().expect("not poisoned").clone()
    }

    /// Every credential a pool was opened with, oldest first.
    pub fn held(&self) -> Vec<Credential> {
        self.shared.held.lock().expect("not poisoned").clone()
    }

    /// Waits until a pool is open with more than `pools` opened in all;
    /// false after `limit`.
    pub async fn wait_pools(&self, pools: u64, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.pooled.notified();
                if self.counts().pools > pools {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.reload.notify_one();
    }
}

impl Drop for PoolApp {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(file: PathBuf, size: usize, tick: Duration, shared: Arc<Shared>) {
    let mut current: Option<Credential> = None;
    let mut pool: Vec<tokio_postgres::Client> = Vec::new();
    let mut opened = false;
    let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        let read = std::fs::read(&file)
            .ok()
            .map(zeroize::Zeroizing::new)
            .and_then(|b| Credential::parse(&b).ok());
        if let Some(new) = read
            && !current.as_ref().is_some_and(|c| c.same_as(&new))
        {
            let mut fresh = Vec::with_capacity(size);
            for _ in 0..size {
                match new.login().await {
                    Ok(c) => fresh.push(c),
                    Err(_) => {
                        count(&shared.failed);
                    }
                }
            }
            if !fresh.is_empty() {
                pool = fresh;
                shared.held.lock().expect("not poisoned").push(new.clone());
                current = Some(new);
                opened = true;
            }
        }
        for client in &pool {
            match client.query_one("SELECT current_user", &[]).await {
                Ok(row) => {
                    count(&shared.queries_ok);
                    let role: String = row.get(0);
                    *shared.role.lock().expect("not poisoned") = Some(role);
                }
                Err(_) => {
                    count(&shared.failed);
                }
            }
        }
        // Counted once its first queries ran: the role is the new one.
        if std::mem::take(&mut opened) {
            count(&shared.pools);
            shared.pooled.notify_waiters();
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = shared.reload.notified() => {}
        }
    }
}
