//! A real PostgreSQL for rotation tests and benches (Debian's server, run
//! as the `postgres` user on a free loopback port, optionally with
//! `ssl=on`), and a rig of `rotor-controller standalone` with a
//! `postgresql` target, one `rotor-sidecar` and the local store.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rotor_envelope::ExposeSecret;
use rotor_store::{LocalStore, Selector, WriteAs};

use crate::pod::Pod;
use crate::standalone::Standalone;
use crate::{free_port, wait_until};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server in a temporary directory, password (SCRAM) logins
/// over TCP, trust only on its own Unix socket; stopped on drop.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

/// A server certificate and key for PostgreSQL's `ssl=on`.
pub struct ServerTls {
    pub cert: String,
    pub key: String,
    /// pg_hba.conf allows TCP logins over TLS only (`hostssl`).
    pub ssl_only: bool,
}

impl Postgres {
    pub fn start_tls(tls: Option<&ServerTls>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let run = |args: &[&str]| {
            let status = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{args:?} failed");
        };
        // PostgreSQL refuses root: the directory belongs to postgres.
        assert!(
            Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap()
                .success()
        );
        run(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "pg",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]);
        let port = free_port();
        let mut ssl = Vec::new();
        if tls.is_some_and(|t| t.ssl_only) {
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).unwrap();
            let text: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, text).unwrap();
        }
        if let Some(t) = tls {
            // The key must belong to the server's user, mode 0600.
            for (name, pem) in [("server.crt", &t.cert), ("server.key", &t.key)] {
                let path = dir.path().join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                assert!(
                    Command::new("chown")
                        .arg("postgres")
                        .arg(&path)
                        .status()
                        .unwrap()
                        .success()
                );
            }
            ssl = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", dir.path().join("server.crt").display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", dir.path().join("server.key").display()),
            ];
        }
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/postgres"), "-D"])
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(&ssl)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("postgres.log")).unwrap())
            .spawn()
            .unwrap();
        let pg = Self { dir, port, child };
        assert!(
            wait_until(30, || std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "postgres did not start"
        );
        pg
    }

    /// Runs `sql` as the superuser over the Unix socket, once the server
    /// accepts logins (it refuses them while it starts up), within 30 s.
    pub async fn admin_sql(&self, sql: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let attempt = tokio_postgres::Config::new()
                .host_path(self.dir.path())
                .port(self.port)
                .user("pg")
                .dbname("postgres")
                .connect(tokio_postgres::NoTls)
                .await;
            match attempt {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    break client;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("postgres never accepted a login: {e}\n{}", self.log()),
            }
        };
        // One at a time: CREATE DATABASE refuses an implicit transaction.
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            client.batch_execute(statement).await.unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok();
        if let Some(pid) = pid.as_deref().and_then(|p| p.lines().next()) {
            let _ = Command::new("kill").arg(pid).status();
        }
        let _ = self.child.wait();
    }
}

/// A login as `user`/`password` and one query.
pub async fn login(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("shop")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    client.batch_execute("SELECT 1").await?;
    Ok(client)
}

#[derive(serde::Deserialize, Clone, PartialEq)]
pub struct DbSecret {
    pub username: String,
    pub password: String,
}

/// A child process killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller, the sidecar and the app, on one local store.
pub struct Rig {
    pub pg: Postgres,
    pub pod: Pod,
    pub store: LocalStore,
    pub dir: tempfile::TempDir,
    _controller: Standalone,
}

/// The `strategy` of a postgresql target alternating `roles` (a YAML list).
pub fn alternating(roles: &str) -> String {
    format!("{{alternatingUsers: {{roles: {roles}}}}}")
}

impl Rig {
    pub async fn start(admin_password: &str) -> Self {
        Self::start_with(admin_password, None, "[app_a, app_b]").await
    }

    /// With the target's port replaced by `port` and its roles by `roles`.
    pub async fn start_with(admin_password: &str, port: Option<u16>, roles: &str) -> Self {
        Self::start_full(admin_password, port, &alternating(roles), None, "").await
    }

    /// With the target's `strategy` (YAML), the server's TLS `tls` and the
    /// target's `tls_yaml` (a `tls:` field of the postgresql target, or
    /// nothing).
    pub async fn start_full(
        admin_password: &str,
        port: Option<u16>,
        strategy: &str,
        tls: Option<&ServerTls>,
        tls_yaml: &str,
    ) -> Self {
        let pg = Postgres::start_tls(tls);
        pg.admin_sql(
            "ALTER ROLE pg PASSWORD 'pg-admin-canary-5d1a'; \
             CREATE DATABASE shop; \
             CREATE ROLE app_a LOGIN PASSWORD 'initial-a-canary-31f0'; \
             CREATE ROLE app_b LOGIN PASSWORD 'initial-b-canary-8e22';",
        )
        .await;
        let mut pod = Pod::new();
        let store = pod.use_local_store();
        store
            .put(
                "app/db",
                format!(
                    r#"{{"username":"app_a","password":"initial-a-canary-31f0","host":"127.0.0.1","port":{},"dbname":"shop"}}"#,
                    pg.port
                )
                .as_bytes(),
                WriteAs::Current,
            )
            .unwrap();
        store
            .put(
                "app/db-admin",
                format!(r#"{{"username":"pg","password":"{admin_password}"}}"#).as_bytes(),
                WriteAs::Current,
            )
            .unwrap();
        pod.annotate(&[
            ("rotor.dev/secret.db", "app/db"),
            ("rotor.dev/refresh", "1h"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("store.yaml"),
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
                pod.work.path().join("store.rotor").display(),
                pod.work.path().join("kek").display()
            ),
        )
        .unwrap();
        // The controller first: the sidecar dials it over the channel.
        let controller = Standalone::start(
            &policies,
            &dir.path().join("state"),
            &dir.path().join("controller.log"),
            &[],
            &[],
        );
        pod.envs.extend(controller.sidecar_env("default", "app"));
        pod.start();
        assert!(
            controller.wait_streams(1, 20),
            "the sidecar did not connect: {}",
            controller.log_text()
        );
        let rig_policy = |n: u32| {
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db, namespace: default, annotations: {{rotor.dev/rotate-now: 'r{n}'}}}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule: {{interval: 1h}}\n  generator: {{password: {{length: 24, minDigits: 2}}}}\n  strategy: {{staged: {{ackTimeout: 10s, gracePeriod: 1s}}}}\n  target:\n    postgresql: {{host: 127.0.0.1, port: {}, dbname: shop, adminSecretName: app/db-admin, strategy: {strategy}{tls_yaml}}}\n  sidecars: ['default/app']\n",
                port.unwrap_or(pg.port),
            )
        };
        std::fs::write(policies.join("policy.yaml"), rig_policy(0)).unwrap();
        Self {
            pg,
            pod,
            store,
            dir,
            _controller: controller,
        }
    }

    pub fn status(&self) -> serde_json::Value {
        std::fs::read(self.dir.path().join("state/default.db.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["status"].clone())
            .unwrap_or_default()
    }

    /// Asks for rotation `n` with a new rotate-now token.
    pub fn rotate(&self, n: u32) {
        let path = self.dir.path().join("policies/policy.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        let yaml = yaml.replace(&format!("'r{}'", n - 1), &format!("'r{n}'"));
        std::fs::write(path, yaml).unwrap();
    }

    /// The store's CURRENT value, as text.
    pub fn current_text(&self) -> String {
        let f = self.store.get("app/db", Selector::Current).unwrap();
        String::from_utf8(f.value.expose_secret().to_vec()).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }
}

/// Polls `cond` every 50 ms for up to `secs` seconds.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
