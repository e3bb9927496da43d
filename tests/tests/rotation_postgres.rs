//! Rotation against a real PostgreSQL (Debian's server, run as the
//! `postgres` user on a free loopback port): `rotor-controller standalone`
//! on the local store with a `postgresql` target, one `rotor-sidecar`, and
//! an app with a pool of connections that re-reads the secret file and
//! reconnects when it changes. Across alternatingUsers rotations the app
//! never fails a login or a query, and a wrong admin credential rolls back
//! with nothing changed.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rotor_e2e::pod::Pod;
use rotor_e2e::{command, free_port, wait_until};
use rotor_envelope::ExposeSecret;
use rotor_store::{LocalStore, Selector, WriteAs};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server in a temporary directory, password (SCRAM) logins
/// over TCP, trust only on its own Unix socket; stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Postgres {
    fn start() -> Self {
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
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/postgres"), "-D"])
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
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
    async fn admin_sql(&self, sql: &str) {
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

    fn log(&self) -> String {
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
async fn login(
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
struct DbSecret {
    username: String,
    password: String,
}

/// The app: a pool of two connections, rebuilt when the secret file
/// changes, and a query on each every 20 ms. Counts every failure and
/// keeps every credential it held.
struct App {
    failures: Arc<AtomicU64>,
    queries: Arc<AtomicU64>,
    held: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl App {
    fn start(port: u16, file: std::path::PathBuf) -> Self {
        let app = Self {
            failures: Arc::default(),
            queries: Arc::default(),
            held: Arc::default(),
            stop: Arc::default(),
        };
        let (failures, queries, held, stop) = (
            app.failures.clone(),
            app.queries.clone(),
            app.held.clone(),
            app.stop.clone(),
        );
        tokio::spawn(async move {
            let mut current: Option<DbSecret> = None;
            let mut pool = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let read = std::fs::read(&file)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<DbSecret>(&b).ok());
                if read.is_some() && read != current {
                    let s = read.clone().unwrap();
                    let mut fresh = Vec::new();
                    for _ in 0..2 {
                        match login(port, &s.username, &s.password).await {
                            Ok(c) => fresh.push(c),
                            Err(_) => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if !fresh.is_empty() {
                        pool = fresh;
                        held.lock()
                            .unwrap()
                            .push((s.username.clone(), s.password.clone()));
                        current = read;
                    }
                }
                for c in &pool {
                    match c.batch_execute("SELECT 1").await {
                        Ok(()) => queries.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        app
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The controller, the sidecar and the app, on one local store.
struct Rig {
    pg: Postgres,
    pod: Pod,
    store: LocalStore,
    dir: tempfile::TempDir,
    _controller: Killed,
}

impl Rig {
    async fn start(admin_password: &str) -> Self {
        Self::start_with(admin_password, None, "[app_a, app_b]").await
    }

    /// With the target's port replaced by `port` and its roles by `roles`.
    async fn start_with(admin_password: &str, port: Option<u16>, roles: &str) -> Self {
        let pg = Postgres::start();
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
        pod.start();
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
        let rig_policy = |n: u32| {
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db, namespace: default, annotations: {{rotor.dev/rotate-now: 'r{n}'}}}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule: {{interval: 1h}}\n  generator: {{password: {{length: 24, minDigits: 2}}}}\n  strategy: {{staged: {{ackTimeout: 10s, gracePeriod: 1s}}}}\n  target:\n    postgresql: {{host: 127.0.0.1, port: {}, dbname: shop, adminSecretName: app/db-admin, strategy: {{alternatingUsers: {{roles: {roles}}}}}}}\n  sidecars: ['http://127.0.0.1:{}']\n",
                port.unwrap_or(pg.port),
                pod.push
            )
        };
        std::fs::write(policies.join("policy.yaml"), rig_policy(0)).unwrap();
        let controller = command("rotor-controller")
            .args(["standalone", "--policies"])
            .arg(&policies)
            .arg("--state")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
            .spawn()
            .unwrap();
        Self {
            pg,
            pod,
            store,
            dir,
            _controller: Killed(controller),
        }
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read(self.dir.path().join("state/default.db.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["status"].clone())
            .unwrap_or_default()
    }

    /// Asks for rotation `n` with a new rotate-now token.
    fn rotate(&self, n: u32) {
        let path = self.dir.path().join("policies/policy.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        let yaml = yaml.replace(&format!("'r{}'", n - 1), &format!("'r{n}'"));
        std::fs::write(path, yaml).unwrap();
    }

    /// The store's CURRENT value, as text.
    fn current_text(&self) -> String {
        let f = self.store.get("app/db", Selector::Current).unwrap();
        String::from_utf8(f.value.expose_secret().to_vec()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }
}

async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// Alternating-users rotations the pooled app runs through.
const ROTATIONS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_users_rotations_never_fail_a_login_or_a_query() {
    let rig = Rig::start("pg-admin-canary-5d1a").await;
    // Rotation r0 starts as soon as the controller reads the policy.
    let app = App::start(rig.pg.port, rig.pod.out.path().join("db"));
    let mut currents = Vec::new();
    for n in 0..ROTATIONS {
        if n > 0 {
            rig.rotate(n);
        }
        let before = currents.last().cloned();
        assert!(
            wait_for(60, || {
                let s = rig.status();
                let cur = s["currentVersion"].as_str().map(str::to_owned);
                s["phase"] == "Idle"
                    && s["previousVersion"].is_string()
                    && cur.is_some()
                    && cur != before
            })
            .await,
            "rotation {n} did not finish: {}\n{}",
            rig.status(),
            rig.log()
        );
        currents.push(rig.status()["currentVersion"].as_str().unwrap().to_owned());
        // The app moved to the promoted role.
        let current: DbSecret = serde_json::from_slice(
            rig.store
                .get("app/db", Selector::Current)
                .unwrap()
                .value
                .expose_secret(),
        )
        .unwrap();
        assert!(
            wait_for(10, || app.held.lock().unwrap().last().map(|h| &h.1)
                == Some(&current.password))
            .await,
            "the app never picked up rotation {n}"
        );
        // Idle means Retiring's finish ran: the role not in use has a
        // password nobody holds, so no credential the app (or the store's
        // first value) ever held for it logs in, and of the app's
        // credentials only the current one works.
        let held = app.held.lock().unwrap().clone();
        let idle = if current.username == "app_a" {
            "app_b"
        } else {
            "app_a"
        };
        for (user, old) in held.iter().filter(|(u, _)| u == idle) {
            assert!(
                login(rig.pg.port, user, old).await.is_err(),
                "rotation {n}: a password of {idle}, the role not in use, still works"
            );
        }
        let initial = if idle == "app_a" {
            "initial-a-canary-31f0"
        } else {
            "initial-b-canary-8e22"
        };
        assert!(login(rig.pg.port, idle, initial).await.is_err());
        for (user, old) in held
            .iter()
            .filter(|(u, p)| u == &current.username && p != &current.password)
        {
            assert!(
                login(rig.pg.port, user, old).await.is_err(),
                "rotation {n}: an old password of {user} still works"
            );
        }
    }
    app.stop.store(true, Ordering::Relaxed);
    let (failures, queries) = (
        app.failures.load(Ordering::Relaxed),
        app.queries.load(Ordering::Relaxed),
    );
    assert_eq!(
        failures, 0,
        "failed logins or queries across {ROTATIONS} rotations"
    );
    assert!(queries > 0);
    // Canary: no password the app held, nor the admin's, is in any log or
    // in the status.
    let text = format!(
        "{}{}{}",
        rig.log(),
        rig.status(),
        std::fs::read_to_string(rig.pod.log()).unwrap_or_default()
    );
    for (_, p) in app.held.lock().unwrap().iter() {
        assert!(!text.contains(p.as_str()), "a password leaked");
    }
    assert!(!text.contains("pg-admin-canary-5d1a"));
    eprintln!("{queries} queries across {ROTATIONS} rotations, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_admin_credential_rolls_back_and_changes_nothing() {
    let rig = Rig::start("not-the-admin-password").await;
    assert!(
        wait_for(60, || rig.status()["conditions"].as_array().is_some_and(
            |c| c
                .iter()
                .any(|c| c["type"] == "Degraded" && c["reason"] == "AdminLoginFailed")
        ))
        .await,
        "no rollback: {}\n{}",
        rig.status(),
        rig.log()
    );
    assert!(wait_for(10, || rig.status()["phase"] == "Idle").await);
    assert!(
        rig.log().contains("AdminLoginFailed"),
        "the failure is logged"
    );
    // Nothing half-done: both roles keep their passwords, the store its value.
    login(rig.pg.port, "app_a", "initial-a-canary-31f0")
        .await
        .unwrap();
    login(rig.pg.port, "app_b", "initial-b-canary-8e22")
        .await
        .unwrap();
    let current = rig.current_text();
    assert!(current.contains("initial-a-canary-31f0"));
    assert!(rig.status()["pendingVersion"].is_null());
    assert!(!rig.log().contains("not-the-admin-password"));
    let _ = rig.pg.log();
}

/// A failure of the target rolls back with its reason in the Degraded
/// condition and the controller's log, the store keeps its CURRENT value
/// and no pending one, and both roles keep their passwords.
async fn rolls_back_with(rig: &Rig, reason: &str) {
    assert!(
        wait_for(60, || rig.status()["conditions"].as_array().is_some_and(
            |c| c
                .iter()
                .any(|c| c["type"] == "Degraded" && c["reason"] == reason)
        ))
        .await,
        "no rollback for {reason}: {}\n{}",
        rig.status(),
        rig.log()
    );
    assert!(wait_for(10, || rig.status()["phase"] == "Idle").await);
    assert!(rig.log().contains(reason), "the failure is logged");
    assert!(rig.status()["pendingVersion"].is_null());
    let current = rig.current_text();
    assert!(current.contains("initial-a-canary-31f0"));
    login(rig.pg.port, "app_a", "initial-a-canary-31f0")
        .await
        .unwrap();
    login(rig.pg.port, "app_b", "initial-b-canary-8e22")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_rolls_back_and_changes_nothing() {
    // A free port nothing listens on.
    let rig = Rig::start_with("pg-admin-canary-5d1a", Some(free_port()), "[app_a, app_b]").await;
    rolls_back_with(&rig, "TargetUnreachable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_exist_rolls_back_and_changes_nothing() {
    let rig = Rig::start_with("pg-admin-canary-5d1a", None, "[app_a, app_missing]").await;
    rolls_back_with(&rig, "NoSuchRole").await;
}
