//! Scheduled rotation end to end, with real processes: `rotor-controller
//! standalone` and three `rotor-sidecar`s dialing it over the channel, on
//! the local store, on OpenBao and on moto. The rotation reaches every
//! sidecar, the acknowledgements are
//! recorded, the previous version is retired after the grace period, and a
//! sidecar that never acknowledges triggers the rollback or a degraded
//! promotion, as the policy says.

use std::process::{Child, Stdio};
use std::sync::Arc;

use rotor_e2e::pod::Pod;
use rotor_e2e::servers::{Bao, Moto};
use rotor_e2e::standalone::Standalone;
use rotor_e2e::{command, wait_until};
use rotor_envelope::{ExposeSecret, KeyFileKek};
use rotor_store::{LocalStore, Selector, Store, VaultAuth, VaultConfig, VaultStore, WriteAs};

/// One backend: the store for the test's own reads and writes, the
/// RotorStore YAML for the controller, and the sidecar flags and env.
struct Backend {
    store: Arc<dyn Store>,
    store_yaml: String,
    sidecar_args: Vec<String>,
    env: Vec<(String, String)>,
    controller_args: Vec<String>,
    _keep: Box<dyn std::any::Any>,
}

fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek");
    KeyFileKek::generate(&key, false).unwrap();
    let path = dir.path().join("store.rotor");
    let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
    Backend {
        store: Arc::new(store),
        store_yaml: format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
            path.display(),
            key.display()
        ),
        sidecar_args: vec![
            format!("--local-store={}", path.display()),
            format!("--key={}", key.display()),
        ],
        env: vec![],
        controller_args: vec![],
        _keep: Box::new(dir),
    }
}

fn openbao() -> Backend {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "root").unwrap();
    let store = VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::TokenFile(token.clone()),
    ))
    .unwrap();
    Backend {
        store: Arc::new(store),
        store_yaml: format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    vault:\n      server: {}\n      auth: {{tokenSecretRef: {{name: unused, key: token}}}}\n",
            bao.addr()
        ),
        sidecar_args: vec![
            "--store-kind=vault".into(),
            format!("--vault-addr={}", bao.addr()),
            format!("--vault-token-file={}", token.display()),
        ],
        env: vec![],
        controller_args: vec![format!("--vault-token-file={}", token.display())],
        _keep: Box::new((bao, dir)),
    }
}

async fn moto() -> Backend {
    let moto = Moto::start();
    let store = moto.store().await;
    Backend {
        store: Arc::new(store),
        store_yaml: format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    aws: {{region: us-east-1, endpoint: \"{}\"}}\n",
            moto.endpoint()
        ),
        sidecar_args: vec![
            "--store-kind=aws".into(),
            "--aws-region=us-east-1".into(),
            format!("--aws-endpoint={}", moto.endpoint()),
        ],
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ],
        controller_args: vec![],
        _keep: Box::new(moto),
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    pods: Vec<Pod>,
    state: std::path::PathBuf,
    _controller: Standalone,
    _dir: tempfile::TempDir,
}

impl Run {
    fn status(&self) -> serde_json::Value {
        std::fs::read(self.state.join("default.db.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["status"].clone())
            .unwrap_or_default()
    }
}

/// The controller first (its channel's CA and token are what the sidecars
/// read), then three sidecars connected to it, then the policy, which
/// waits for those pods and `extra_pods` (never connected).
async fn start(backend: &Backend, extra_pods: &[String], on_timeout: &str) -> Run {
    backend
        .store
        .write("app/db", b"initial-value", WriteAs::Current)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("store.yaml"), &backend.store_yaml).unwrap();
    let state = dir.path().join("state");
    let controller = Standalone::start(
        &policies,
        &state,
        &dir.path().join("controller.log"),
        &backend.controller_args,
        &backend.env,
    );
    let mut pods = Vec::new();
    let mut names = Vec::new();
    for i in 0..3 {
        let mut pod = Pod::new();
        pod.store_args = backend.sidecar_args.iter().map(Into::into).collect();
        pod.envs = backend.env.clone();
        pod.envs
            .extend(controller.sidecar_env("default", &format!("pod-{i}")));
        names.push(format!("default/pod-{i}"));
        pod.annotate(&[
            ("rotor.dev/secret.db", "app/db"),
            ("rotor.dev/refresh", "1h"),
        ]);
        pod.start();
        pods.push(pod);
    }
    assert!(
        controller.wait_streams(3, 20),
        "the sidecars did not connect: {}",
        controller.log_text()
    );
    names.extend(extra_pods.iter().cloned());
    std::fs::write(
        policies.join("policy.yaml"),
        format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db, namespace: default}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule: {{interval: 1h}}\n  generator: {{password: {{length: 24, minDigits: 2}}}}\n  strategy: {{staged: {{ackTimeout: 3s, gracePeriod: 2s, onTimeout: {on_timeout}}}}}\n  sidecars: [{}]\n",
            names.join(", ")
        ),
    )
    .unwrap();
    Run {
        pods,
        state,
        _controller: controller,
        _dir: dir,
    }
}

async fn value(store: &dyn Store, selector: Selector) -> Option<String> {
    store
        .read("app/db", &selector)
        .await
        .ok()
        .map(|f| String::from_utf8(f.value.expose_secret().to_vec()).unwrap())
}

async fn rotation_reaches_every_sidecar(backend: Backend) {
    let run = start(&backend, &[], "Rollback").await;
    assert!(
        wait_until(30, || run.status()["phase"] == "Retiring"
            || run.status()["phase"] == "Idle"
                && run.status()["previousVersion"].is_string()),
        "no promotion: {}",
        run.status()
    );
    let status = run.status();
    let current = status["currentVersion"].as_str().unwrap().to_owned();
    let previous = status["previousVersion"].as_str().unwrap().to_owned();
    let consumers = status["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 3);
    assert!(
        consumers
            .iter()
            .all(|c| c["acknowledgedVersion"] == current.as_str()),
        "{status}"
    );
    let new_value = value(&*backend.store, Selector::Current).await.unwrap();
    assert_ne!(new_value, "initial-value");
    for pod in &run.pods {
        assert_eq!(
            pod.read("db").as_deref(),
            Some(new_value.as_str()),
            "a sidecar does not serve the new version"
        );
    }
    // After the grace period the previous version is retired.
    assert!(
        wait_until(15, || run.status()["phase"] == "Idle"),
        "{}",
        run.status()
    );
    let mut retired = false;
    for _ in 0..50 {
        if value(
            &*backend.store,
            Selector::Version(rotor_store::VersionId(previous.clone())),
        )
        .await
        .is_none()
            || value(
                &*backend.store,
                Selector::Stage(rotor_store::Stage::Previous),
            )
            .await
            .is_none()
        {
            retired = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(retired, "version {previous} was not retired");
    // The status never holds the value.
    assert!(!run.status().to_string().contains(&new_value));
}

async fn a_silent_sidecar(backend: Backend, on_timeout: &str) {
    // A pod the policy waits for whose sidecar never connects.
    let dead = "default/silent".to_owned();
    let run = start(&backend, std::slice::from_ref(&dead), on_timeout).await;
    assert!(
        wait_until(30, || run.status()["conditions"].as_array().is_some_and(
            |c| c
                .iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "True")
        )),
        "no Degraded condition: {}",
        run.status()
    );
    let status = run.status();
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap()
        .clone();
    assert!(
        degraded["message"].as_str().unwrap().contains(&dead),
        "{degraded}"
    );
    match on_timeout {
        "Rollback" => {
            assert!(wait_until(10, || run.status()["phase"] == "Idle"));
            assert_eq!(
                value(&*backend.store, Selector::Current).await.as_deref(),
                Some("initial-value")
            );
            for pod in &run.pods {
                assert!(
                    wait_until(10, || pod.read("db").as_deref() == Some("initial-value")),
                    "a sidecar kept the rolled-back version"
                );
            }
        }
        _ => {
            assert!(
                wait_until(10, || run.status()["previousVersion"].is_string()),
                "{}",
                run.status()
            );
            assert_ne!(
                value(&*backend.store, Selector::Current).await.as_deref(),
                Some("initial-value")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_store_rotation_reaches_three_sidecars() {
    rotation_reaches_every_sidecar(local()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn local_store_silent_sidecar_triggers_rollback() {
    a_silent_sidecar(local(), "Rollback").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn local_store_silent_sidecar_with_promote_degrades() {
    a_silent_sidecar(local(), "Promote").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openbao_rotation_reaches_three_sidecars() {
    rotation_reaches_every_sidecar(openbao()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openbao_silent_sidecar_triggers_rollback() {
    a_silent_sidecar(openbao(), "Rollback").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_rotation_reaches_three_sidecars() {
    rotation_reaches_every_sidecar(moto().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_silent_sidecar_triggers_rollback() {
    a_silent_sidecar(moto().await, "Rollback").await;
}

/// Standalone mode checks every file in full before it acts: a typo in a
/// field, a bad value, a missing directory each stop it with the file,
/// the line, the field path and what is expected, before any value is
/// generated.
#[test]
fn standalone_refuses_bad_specs_before_acting() {
    let (dir, policies, store) = standalone_dir("interval: 1h");
    let run = |policies: &std::path::Path| {
        let out = command("rotor-controller")
            .args(["standalone", "--policies"])
            .arg(policies)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let policy = |schedule: &str, length: u32| {
        format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule: {{{schedule}}}\n  generator: {{password: {{length: {length}}}}}\n"
        )
    };
    for (yaml, expected) in [
        (
            policy("intervall: 1s", 32),
            "policy.yaml document 1 (SecretRotationPolicy): unknown field spec.schedule.intervall",
        ),
        (
            policy("interval: 1s, cron: '0 3 * * *'", 32),
            "policy.yaml document 1: spec.schedule: set exactly one of interval and cron",
        ),
        (
            policy("interval: 1s", 4),
            "policy.yaml document 1: spec.generator.password.length 4: expected 8 to 1024",
        ),
        (
            policy("interval: every-second", 32),
            "spec.schedule.interval: \"every-second\" is not a duration",
        ),
        // Standard cron only, and the line and column of the field.
        (
            policy("cron: '*/0 * * * *'", 32),
            "policy.yaml document 1: spec.schedule.cron \"*/0 * * * *\": minute field \"*/0\" has a step of 0; expected five fields, minute hour day-of-month month day-of-week, each *, a number, a range a-b, a step */n or a-b/n, or a list of those (JAN-DEC and SUN-SAT names, 0 or 7 for Sunday; evaluated in UTC), or one of @yearly, @annually, @monthly, @weekly, @daily, @hourly (line 7, column 14)",
        ),
        (
            policy("cron: '0 3 * * 5L'", 32),
            "policy.yaml document 1: spec.schedule.cron \"0 3 * * 5L\": day-of-week field \"5L\" is not standard cron; expected five fields",
        ),
        (
            policy("cron: '@daily', intervall: 1h", 32),
            "policy.yaml document 1 (SecretRotationPolicy): unknown field spec.schedule.intervall (line 7, column 30); check the spelling against the SecretRotationPolicy reference",
        ),
    ] {
        std::fs::write(policies.join("policy.yaml"), &yaml).unwrap();
        let (ok, stderr) = run(&policies);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?}:\n{stderr}"
        );
        assert!(stderr.contains("nothing was done"), "{stderr}");
        // Nothing was generated or staged, and no state was written.
        assert_eq!(
            store.history("app/db").unwrap().len(),
            1,
            "a value was generated"
        );
        assert!(!policies.join(".state").exists());
    }
    // A store file from before the rename is refused, naming the new kind.
    std::fs::write(policies.join("policy.yaml"), policy("interval: 1s", 32)).unwrap();
    let old = std::fs::read_to_string(policies.join("store.yaml")).unwrap();
    std::fs::write(
        policies.join("store.yaml"),
        old.replace("kind: RotorStore", "kind: SecretStore"),
    )
    .unwrap();
    let (ok, stderr) = run(&policies);
    assert!(!ok, "accepted kind: SecretStore");
    assert!(
        stderr.contains(
            "store.yaml document 1: kind SecretStore was renamed RotorStore in rotor.dev/v1alpha1"
        ),
        "{stderr}"
    );
    assert_eq!(store.history("app/db").unwrap().len(), 1);
    assert!(!policies.join(".state").exists());
    // A typo in the directory is an error, not a new directory.
    let typo = dir.path().join("polices");
    let (ok, stderr) = run(&typo);
    assert!(!ok);
    assert!(
        stderr.contains("--policies") && stderr.contains("no such directory"),
        "{stderr}"
    );
    assert!(!typo.exists());
}

/// A `--policies` directory with a local RotorStore `main` holding
/// `app/db` = `v1`, and a policy `db` whose schedule is `schedule` (YAML
/// flow mapping contents). The store is returned to check nothing was
/// staged.
fn standalone_dir(schedule: &str) -> (tempfile::TempDir, std::path::PathBuf, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kek");
    KeyFileKek::generate(&key, false).unwrap();
    let store_path = dir.path().join("store.rotor");
    let store = LocalStore::new(&store_path, Arc::new(KeyFileKek::load(&key).unwrap()));
    store.put("app/db", b"v1", WriteAs::Current).unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("store.yaml"),
        format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
            store_path.display(),
            key.display()
        ),
    )
    .unwrap();
    std::fs::write(
        policies.join("policy.yaml"),
        format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db, namespace: default}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule: {{{schedule}}}\n  generator: {{password: {{length: 32}}}}\n"
        ),
    )
    .unwrap();
    (dir, policies, store)
}

/// The first instant after `now` at `hour`:00 UTC on a day `day_ok` takes
/// (days of the week 0 = Sunday), computed without cron.
fn next_at_hour(
    now: std::time::SystemTime,
    hour: u64,
    day_ok: impl Fn(u64) -> bool,
) -> std::time::SystemTime {
    let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let due = (secs / 86400..)
        .filter(|d| day_ok((d + 4) % 7)) // 1970-01-01 was a Thursday
        .map(|d| d * 86400 + hour * 3600)
        .find(|t| *t > secs)
        .unwrap();
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(due)
}

/// Standard cron as a CronJob takes it: day names, `@daily`, 7 for Sunday.
/// The controller accepts each and schedules the first rotation at the
/// next matching instant (UTC); nothing rotates before.
#[test]
fn standalone_accepts_standard_cron() {
    type Due = fn(std::time::SystemTime) -> std::time::SystemTime;
    let cases: [(&str, Due); 3] = [
        ("0 3 * * MON", |now| next_at_hour(now, 3, |d| d == 1)),
        ("@daily", |now| next_at_hour(now, 0, |_| true)),
        ("0 3 * * 7", |now| next_at_hour(now, 3, |d| d == 0)),
    ];
    for (cron, due) in cases {
        let (dir, policies, store) = standalone_dir(&format!("cron: '{cron}'"));
        let state = dir.path().join("state");
        let before = std::time::SystemTime::now();
        let _controller = Killed(
            command("rotor-controller")
                .args(["standalone", "--policies"])
                .arg(&policies)
                .arg("--state")
                .arg(&state)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let next = || {
            std::fs::read(state.join("default.db.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["status"]["nextRotation"].as_str().map(str::to_owned))
        };
        assert!(
            wait_until(30, || next().is_some()),
            "{cron}: no nextRotation; log:\n{}",
            std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default()
        );
        let next = humantime::parse_rfc3339(&next().unwrap()).unwrap();
        let after = std::time::SystemTime::now();
        assert!(
            next == due(before) || next == due(after),
            "{cron}: nextRotation {} is not {}",
            humantime::format_rfc3339(next),
            humantime::format_rfc3339(due(before))
        );
        assert_eq!(store.history("app/db").unwrap().len(), 1, "{cron}: rotated");
    }
}
