//! `rotor demo --postgres`: rotation that changes the database. A
//! throwaway PostgreSQL cluster on a free loopback port with two login
//! roles, `demo_a` and `demo_b`; the secret `demo/db` (the JSON object a
//! `postgresql` target keeps) and the admin's `demo/db-admin` in the local
//! store; a policy with `target.postgresql` alternatingUsers; the sidecar
//! writing the JSON and a connection string from a template; and, in this
//! process, an app holding a pool of connections that queries in a loop
//! and reconnects when the sidecar signals it (SIGUSR1) or the file
//! changes. After each rotation the demo prints the version, the role the
//! app's queries run as and its queries since the last one, and checks
//! that the passwords the app held for the role now idle no longer log in.
//! It stops after `--rotations` and fails if any query or login failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rotor_contract::api::Phase;
use rotor_controller::standalone::State;
use rotor_store::{LocalStore, WriteAs};
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroizing;

use super::{Demo, End, Role, Sidecar, Signals, describe, random_value, say};
use crate::postgres::cluster::{Cluster, SUPERUSER};
use crate::postgres::pool::PoolApp;

const SECRET: &str = "demo/db";
const ADMIN_SECRET: &str = "demo/db-admin";
const ROLES: [&str; 2] = ["demo_a", "demo_b"];
const DBNAME: &str = "demo";
/// The connections the app's pool holds.
const POOL: usize = 2;
/// How often the app queries on each connection.
const TICK: Duration = Duration::from_millis(20);

/// What `rotor demo` set up before it knew the demo is PostgreSQL's.
pub(super) struct Setup {
    pub bin: PathBuf,
    pub work: PathBuf,
    pub out: PathBuf,
    pub store: LocalStore,
    pub store_path: PathBuf,
    pub key_path: PathBuf,
    pub every: u64,
    pub rotations: u32,
}

impl Demo {
    pub(super) async fn run_postgres(
        &mut self,
        setup: Setup,
        signals: &mut Signals,
    ) -> anyhow::Result<End> {
        let Setup {
            bin,
            work,
            out,
            store,
            store_path,
            key_path,
            every,
            rotations,
        } = setup;
        say(&format!(
            "starting a throwaway PostgreSQL cluster with {}",
            bin.display()
        ))?;
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(&bin, None))
            .await?
            .context("cannot start PostgreSQL")?;
        let port = cluster.port();
        self.logs.push((Role::Postgres, cluster.log_path()));
        let cluster = self.postgres.insert(cluster);
        let (admin, a, b) = (password()?, password()?, password()?);
        let sql = Zeroizing::new(format!(
            "ALTER ROLE {SUPERUSER} PASSWORD '{}'; CREATE DATABASE {DBNAME}; \
             CREATE ROLE {} LOGIN PASSWORD '{}'; CREATE ROLE {} LOGIN PASSWORD '{}'",
            *admin, ROLES[0], *a, ROLES[1], *b
        ));
        cluster.admin_sql(&sql).await?;
        // `b`'s password is for nobody: the first rotation replaces it.
        drop(b);
        // Built as text, never as a JSON value: the passwords stay in
        // buffers that are wiped (hex needs no escaping).
        let secret = Zeroizing::new(format!(
            r#"{{"username":"{}","password":"{}","host":"127.0.0.1","port":{port},"dbname":"{DBNAME}"}}"#,
            ROLES[0], *a
        ));
        let first = store.put(SECRET, secret.as_bytes(), WriteAs::Current)?;
        let admin_secret = Zeroizing::new(format!(
            r#"{{"username":"{SUPERUSER}","password":"{}"}}"#,
            *admin
        ));
        store.put(ADMIN_SECRET, admin_secret.as_bytes(), WriteAs::Current)?;
        say(&format!(
            "PostgreSQL on 127.0.0.1:{port}, database {DBNAME:?}, login roles {} and {}; \
             local store {}: {SECRET:?} version {} holds {}'s login (JSON), {ADMIN_SECRET:?} \
             the admin's",
            ROLES[0],
            ROLES[1],
            store_path.display(),
            first.version,
            ROLES[0]
        ))?;

        let pid_file = work.join("app.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
        let annotations = work.join("annotations");
        std::fs::write(
            &annotations,
            rotor_sidecar::downward::format(&annotations_map(port, &pid_file)),
        )?;
        let policies = work.join("policies");
        std::fs::create_dir_all(&policies)?;
        std::fs::write(
            policies.join("demo.yaml"),
            policy_yaml(&store_path, &key_path, every, port),
        )?;
        let exe = std::env::current_exe().context("cannot find the rotor executable")?;
        let channel_port = match self.start_controller(&exe, &work, &policies).await? {
            Ok(p) => p,
            Err(end) => return Ok(end),
        };
        say(&format!(
            "rotation controller (standalone): every {every}s a new password on the role not \
             in use (alternatingUsers), tested, staged, sent to the sidecar, promoted"
        ))?;
        let channel = work.join("channel");
        let sidecar_log = work.join("sidecar.log");
        let sidecar = Sidecar {
            annotations: &annotations,
            out: &out,
            store: &store_path,
            key: &key_path,
            channel_port,
            channel: &channel,
            log: &sidecar_log,
        };
        if let Err(end) = self.start_sidecar(&exe, sidecar).await? {
            return Ok(end);
        }
        say(&format!(
            "sidecar pid {} writes {} (db: the JSON secret; dsn: a connection string from a \
             template) and sends SIGUSR1 to the app on each change",
            self.child(Role::Sidecar).id().unwrap_or(0),
            out.display()
        ))?;

        let mut usr1 = signal(SignalKind::user_defined1())?;
        let app = PoolApp::start(out.join("dsn"), POOL, TICK);
        if !app.wait_pools(0, Duration::from_secs(20)).await {
            bail!(
                "the app could not log in with the connection string in {} within 20 s",
                out.join("dsn").display()
            );
        }
        say(&format!(
            "app: a pool of {POOL} connections as role {}, `SELECT current_user` on each every \
             {} ms; reconnects on SIGUSR1",
            app.role().as_deref().unwrap_or("?"),
            TICK.as_millis()
        ))?;

        let state = work.join("state").join("demo.db.json");
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last_line = String::new();
        let mut current = status_of(&state).current;
        let mut since = app.counts();
        let mut done = 0;
        let mut stale_logins = 0;
        let (mut signalled, mut last_pools) = (false, app.counts().pools);
        // A rotation takes an interval and a few seconds; far more is a
        // rotation that cannot finish (the controller's log says why).
        let limit = Duration::from_secs(every * 2 + 60);
        let mut started = Instant::now();
        while done < rotations {
            tokio::select! {
                () = signals.recv() => return Ok(End::Interrupted),
                _ = usr1.recv() => {
                    signalled = true;
                    app.reload();
                }
                _ = tick.tick() => {
                    if let Some((role, status)) = self.exited()? {
                        return Ok(End::Exited(role, status));
                    }
                    let pools = app.counts().pools;
                    if pools > last_pools {
                        last_pools = pools;
                        say(&format!(
                            "app: new credentials in the file ({}); the pool reconnected, its queries run as {}",
                            if std::mem::take(&mut signalled) { "the sidecar's SIGUSR1" } else { "seen changed" },
                            app.role().as_deref().unwrap_or("?")
                        ))?;
                    }
                    if let Some(line) = describe(&state) && line != last_line {
                        say(&line)?;
                        last_line = line;
                    }
                    let now = status_of(&state);
                    if now.idle && now.current.is_some() && now.current != current {
                        done += 1;
                        current = now.current;
                        let counts = app.counts();
                        let role = app.role().unwrap_or_default();
                        say(&format!(
                            "rotation {done} of {rotations}: version {} is CURRENT, the app's queries run as {role}; since the last rotation {} queries ok, {} failed",
                            current.as_deref().unwrap_or("?"),
                            (counts - since).queries_ok,
                            (counts - since).failed,
                        ))?;
                        stale_logins += self.check_idle_role(&app, &role).await?;
                        since = counts;
                        started = Instant::now();
                    } else if started.elapsed() > limit {
                        bail!(
                            "rotation {} did not finish within {} s (phase {}); the controller's log in {} says why",
                            done + 1,
                            limit.as_secs(),
                            now.phase.map_or("unknown", Phase::as_str),
                            work.join("controller.log").display()
                        );
                    }
                }
            }
        }
        app.stop();
        let total = app.counts();
        if total.failed > 0 || stale_logins > 0 {
            bail!(
                "{} queries or logins of the app failed and {stale_logins} retired passwords \
                 still logged in, across {rotations} rotations ({} queries ok)",
                total.failed,
                total.queries_ok
            );
        }
        say(&format!(
            "{rotations} rotations, {} queries ok, 0 failed; the app reconnected {} times and \
             never held a password that stopped working",
            total.queries_ok,
            total.pools - 1
        ))?;
        Ok(End::Finished)
    }

    /// After a rotation: every password the app held for a role other than
    /// `in_use` (the role now idle, whose password the rotation replaced
    /// with one nobody holds) must no longer log in. The number that did.
    async fn check_idle_role(&self, app: &PoolApp, in_use: &str) -> anyhow::Result<u32> {
        let mut stale = 0;
        let mut idle = None;
        for held in app.held().iter().filter(|c| c.username != in_use) {
            idle = Some(held.username.clone());
            if held.login().await.is_ok() {
                stale += 1;
            }
        }
        if let Some(idle) = idle {
            say(&format!(
                "{idle}, now idle: {}",
                if stale == 0 {
                    "no password the app held for it logs in any more".to_owned()
                } else {
                    format!("{stale} old passwords still log in")
                }
            ))?;
        }
        Ok(stale)
    }
}

/// The fields of the controller's status file the loop follows.
struct Status {
    idle: bool,
    current: Option<String>,
    phase: Option<Phase>,
}

fn status_of(path: &Path) -> Status {
    let state: State = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let s = state.status;
    Status {
        idle: s.phase == Some(Phase::Idle) && s.previous_version.is_some(),
        current: s.current_version,
        phase: s.phase,
    }
}

/// A new random password (hex: safe in SQL and connection strings).
fn password() -> anyhow::Result<Zeroizing<String>> {
    Ok(Zeroizing::new(String::from_utf8(random_value()?)?))
}

/// The pod's annotations: the JSON secret, its username and password as
/// files, a connection string built from them, and a signal to the app.
fn annotations_map(port: u16, pid_file: &Path) -> BTreeMap<String, String> {
    [
        ("rotor.dev/secret.db", SECRET.to_owned()),
        ("rotor.dev/secret.db-user", format!("{SECRET}#username")),
        ("rotor.dev/secret.db-password", format!("{SECRET}#password")),
        (
            "rotor.dev/template.dsn",
            format!(
                "postgresql://{{{{ secrets['db-user'] }}}}:{{{{ secrets['db-password'] | urlencode }}}}@127.0.0.1:{port}/{DBNAME}"
            ),
        ),
        ("rotor.dev/refresh", "30s".to_owned()),
        (
            "rotor.dev/reload",
            format!("signal:USR1:{}", pid_file.display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The store and the policy with its PostgreSQL target.
fn policy_yaml(store: &Path, key: &Path, every: u64, port: u16) -> String {
    format!(
        "apiVersion: rotor.dev/v1alpha1
kind: RotorStore
metadata: {{name: demo}}
spec:
  provider:
    local: {{path: {store}, keyPath: {key}}}
---
apiVersion: rotor.dev/v1alpha1
kind: SecretRotationPolicy
metadata: {{name: db, namespace: {ns}}}
spec:
  storeRef: {{name: demo}}
  secretName: {SECRET}
  schedule: {{interval: {every}s}}
  generator: {{password: {{length: 24, minDigits: 2, minSymbols: 2}}}}
  strategy: {{staged: {{ackTimeout: {ack}s, gracePeriod: 2s, onTimeout: Rollback}}}}
  target:
    postgresql:
      host: 127.0.0.1
      port: {port}
      dbname: {DBNAME}
      adminSecretName: {ADMIN_SECRET}
      strategy: {{alternatingUsers: {{roles: [{a}, {b}]}}}}
  sidecars: [\"{ns}/{pod}\"]
",
        store = store.display(),
        key = key.display(),
        ns = super::POD_NAMESPACE,
        pod = super::POD_NAME,
        ack = every.min(10),
        a = ROLES[0],
        b = ROLES[1],
    )
}
