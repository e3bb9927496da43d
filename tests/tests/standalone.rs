//! `rotor-controller standalone` through live edits: it says what it
//! loaded, an invalid edit is logged once (file, line, field) while the
//! last good policy keeps rotating, and it never exits over one.

use std::sync::Arc;

use rotor_envelope::KeyFileKek;
use rotor_store::{LocalStore, WriteAs};

/// The policy file: a 2 s interval (and ack timeout), `sidecars: []` (what a user writes
/// when there are none yet), and `schedule_key` spelled as given.
fn policy(schedule_key: &str) -> String {
    format!(
        "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db, namespace: default}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule:\n    {schedule_key}: 2s\n  generator: {{password: {{length: 32}}}}\n  strategy: {{staged: {{ackTimeout: 2s, gracePeriod: 1s}}}}\n  sidecars: []\n"
    )
}

/// The current version in the policy's status file, if any yet.
fn current(state: &std::path::Path) -> Option<u64> {
    let text = std::fs::read(state.join("default.db.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["status"]["currentVersion"].as_str()?.parse().ok()
}

#[test]
fn an_invalid_edit_is_logged_once_and_the_last_good_policy_keeps_rotating() {
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
    std::fs::write(policies.join("policy.yaml"), policy("interval")).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("controller.log");
    let metrics_port = rotor_fixtures::net::free_port();
    let mut child = rotor_e2e::command("rotor-controller")
        .args(["standalone", "--policies"])
        .arg(&policies)
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg("--state")
        .arg(&state)
        .env("ROTOR_LOG_FORMAT", "text")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let rotated = rotor_e2e::wait_until(30, || current(&state).is_some_and(|v| v >= 2));
    assert!(rotated, "no rotation: {}", read_log());
    assert!(
        read_log().contains("policies and stores loaded"),
        "{}",
        read_log()
    );

    // /metrics counts the finished rotations (the counter each waited for).
    let counted = rotor_e2e::wait_until(30, || {
        rotor_e2e::http(metrics_port, "GET", "/metrics", "").is_some_and(|(code, text)| {
            code == 200
                && text.lines().any(|l| {
                    l.starts_with("rotor_rotations_total{result=\"success\"}")
                        && l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) >= Some(1.0)
                })
        })
    });
    assert!(counted, "no rotation counted on /metrics: {}", read_log());

    // The edit: a misspelt field.
    std::fs::write(policies.join("policy.yaml"), policy("intervall")).unwrap();
    let logged = rotor_e2e::wait_until(30, || read_log().contains("invalid policy files"));
    assert!(logged, "{}", read_log());
    let before = current(&state).unwrap();
    // The last good policy keeps rotating: two more versions.
    let kept = rotor_e2e::wait_until(30, || current(&state).is_some_and(|v| v >= before + 2));
    assert!(kept, "rotation stopped: {}", read_log());
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited: {}",
        read_log()
    );
    let text = read_log();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("invalid policy files"))
        .collect();
    assert_eq!(errors.len(), 1, "logged more than once: {text}");
    assert!(
        errors[0].contains("policy.yaml")
            && errors[0].contains("spec.schedule.intervall")
            && errors[0].contains("line 8"),
        "{}",
        errors[0]
    );

    // Fixed again: used again, still running.
    std::fs::write(policies.join("policy.yaml"), policy("interval")).unwrap();
    let fixed = rotor_e2e::wait_until(30, || read_log().contains("policy files valid again"));
    assert!(fixed, "{}", read_log());
    rotor_e2e::signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", read_log());
}
