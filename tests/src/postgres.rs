//! A real PostgreSQL for rotation tests and benches (Debian's server, run
//! as the `postgres` user on a free loopback port, optionally with
//! `ssl=on`), and a rig of `rotor-controller standalone` with a
//! `postgresql` target, one `rotor-sidecar` and the local store.

use std::process::Child;
use std::time::Duration;

use rotor_envelope::ExposeSecret;
use rotor_store::{LocalStore, Selector, WriteAs};

use crate::pod::Pod;
use crate::standalone::Standalone;

pub use rotor::postgres::cluster::ServerTls;
use rotor::postgres::cluster::{Cluster, find_bin_dir};
use rotor::postgres::pool::Credential;

/// A PostgreSQL server in a temporary directory (the cluster `rotor demo
/// --postgres` starts too), password (SCRAM) logins over TCP, trust only
/// on its own Unix socket; stopped on drop.
pub struct Postgres {
    pub port: u16,
    cluster: Cluster,
}

impl Postgres {
    /// With the server binaries found as `rotor demo --postgres` finds
    /// them; `tests/install-tools` installs Debian's.
    pub fn start_tls(tls: Option<&ServerTls>) -> Self {
        let bin = find_bin_dir(None)
            .unwrap_or_else(|e| panic!("{e:#} (tests/install-tools installs it)"));
        let cluster = Cluster::start(&bin, tls).unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            port: cluster.port(),
            cluster,
        }
    }

    /// Runs `sql` as the superuser over the Unix socket, once the server
    /// accepts logins, within 30 s.
    pub async fn admin_sql(&self, sql: &str) {
        if let Err(e) = self.cluster.admin_sql(sql).await {
            panic!("{e:#}\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        self.cluster.log()
    }
}

/// A login as `user`/`password` to the database `shop` and one query.
pub async fn login(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    Credential {
        username: user.to_owned(),
        password: password.to_owned().into(),
        host: "127.0.0.1".to_owned(),
        port,
        dbname: "shop".to_owned(),
    }
    .login()
    .await
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
