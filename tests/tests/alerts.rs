//! The chart's alert rules (`metrics.prometheusRule`) and the series they
//! read: `promtool check rules` and `promtool test rules` (each alert
//! firing and not firing, `tests/alerts/rules.test.yaml`) on the rules as
//! the chart renders them; every metric the rules name is one the real
//! binaries export (`rotor-controller run` on a real API server,
//! `standalone` with `--metrics-addr`, a sidecar's admin port); and the
//! counters the alerts take `increase()` of are there at 0 from the start,
//! for every secret and reason, every reload action and result, every
//! reconciler and error kind.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rotor_e2e::cluster::{Controller, eventually, installed};
use rotor_e2e::pod::Pod;
use rotor_e2e::{http, tools, wait_until};
use rotor_envelope::KeyFileKek;
use rotor_store::{LocalStore, WriteAs};
use serde_yaml_ng::Value;

/// The chart's rule groups as a Prometheus rules file (the
/// PrometheusRule's `spec`), with the chart's default thresholds.
fn rendered_rules() -> String {
    let home = tempfile::tempdir().unwrap();
    let chart = rotor_e2e::workspace_root().join("charts/rotor");
    let out = tools::helm(home.path())
        .args(["template", "rotor"])
        .arg(&chart)
        .args(["--namespace", "rotor-system"])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .args(["--show-only", "templates/prometheusrule.yaml"])
        .output()
        .expect("run helm");
    let (stdout, stderr) = rotor_e2e::text(&out);
    assert!(out.status.success(), "helm template: {stderr}");
    let rule: Value = serde_yaml_ng::from_str(&stdout).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule", "{stdout}");
    serde_yaml_ng::to_string(&rule["spec"]).unwrap()
}

/// `promtool <args>` in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(tools::tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let (stdout, stderr) = rotor_e2e::text(&out);
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{stdout}{stderr}"
    );
    stdout
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rendered_rules()).unwrap();
    std::fs::copy(
        rotor_e2e::workspace_root().join("tests/alerts/rules.test.yaml"),
        dir.path().join("rules.test.yaml"),
    )
    .unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 10 rules found"), "{checked}");
    let tested = promtool(dir.path(), &["test", "rules", "rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `rotor_…` metric name in the rules' expressions.
fn metric_names(rules: &str) -> BTreeSet<String> {
    let groups: Value = serde_yaml_ng::from_str(rules).unwrap();
    let mut names = BTreeSet::new();
    for group in groups["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("rotor_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

/// Whether the exposition has a sample of metric `name` (not only its
/// HELP or TYPE line).
fn has_samples(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// Whether the exposition has exactly this sample line.
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn scrape(port: u16) -> String {
    match http(port, "GET", "/metrics", "") {
        Some((200, text)) => text,
        other => panic!("GET /metrics on {port}: {other:?}"),
    }
}

/// A sidecar with a local store, serving secrets `a` and `b` with two
/// reload actions (which run only after a change, so never here).
fn sidecar() -> (Pod, LocalStore) {
    let mut pod = Pod::new();
    let store = pod.use_local_store();
    for name in ["a", "b", "c"] {
        store.put(name, b"v1", WriteAs::Current).unwrap();
    }
    pod.annotate(&[
        ("rotor.dev/secret.a", "a"),
        ("rotor.dev/secret.b", "b"),
        ("rotor.dev/refresh", "200ms"),
        ("rotor.dev/reload", "exec:/bin/true"),
        ("rotor.dev/reload.1", "http://127.0.0.1:1/reload"),
    ]);
    pod.start();
    (pod, store)
}

fn fetch_error_zeros(secret: &str) -> Vec<String> {
    rotor_store::Error::metric_labels()
        .into_iter()
        .map(|reason| {
            format!("rotor_secret_fetch_errors_total{{secret=\"{secret}\",reason=\"{reason}\"}} 0")
        })
        .collect()
}

#[test]
fn a_sidecar_exports_every_secret_and_reload_counter_at_zero_from_readiness() {
    let (mut pod, _store) = sidecar();
    // Right after readiness: nothing failed and nothing reloaded yet.
    let text = scrape(pod.admin);
    for secret in ["a", "b"] {
        for line in fetch_error_zeros(secret) {
            assert!(has_line(&text, &line), "no `{line}` in\n{text}");
        }
    }
    for action in ["exec", "http"] {
        for result in ["success", "failure"] {
            let line = format!("rotor_reload_total{{action=\"{action}\",result=\"{result}\"}} 0");
            assert!(has_line(&text, &line), "no `{line}` in\n{text}");
        }
    }

    // New annotations: the new secret's series appear, the dropped one's go.
    pod.annotate(&[
        ("rotor.dev/secret.a", "a"),
        ("rotor.dev/secret.c", "c"),
        ("rotor.dev/refresh", "200ms"),
        ("rotor.dev/reload", "signal:HUP:app"),
    ]);
    let mut last = String::new();
    let moved = wait_until(10, || {
        last = scrape(pod.admin);
        fetch_error_zeros("c").iter().all(|l| has_line(&last, l)) && !last.contains("secret=\"b\"")
    });
    assert!(moved, "secret c's zero series never appeared:\n{last}");
    for line in fetch_error_zeros("a") {
        assert!(has_line(&last, &line), "no `{line}` in\n{last}");
    }
    // The new action's series: the change of files ran it once (there is
    // no process `app` to signal), and its success count is still 0.
    let line = "rotor_reload_total{action=\"signal\",result=\"success\"} 0";
    assert!(has_line(&last, line), "no `{line}` in\n{last}");
    let failed = "rotor_reload_total{action=\"signal\",result=\"failure\"} ";
    assert!(
        last.lines().any(|l| l.starts_with(failed)),
        "no `{failed}` in\n{last}"
    );
    assert!(pod.stop().success());
}

/// `rotor-controller standalone` with one local store and one policy
/// rotating hourly, serving `/metrics`; killed on drop.
struct Standalone {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Standalone {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("kek");
        KeyFileKek::generate(&key, false).unwrap();
        let store_path = dir.path().join("store.rotor");
        LocalStore::new(&store_path, Arc::new(KeyFileKek::load(&key).unwrap()))
            .put("app/db", b"v1", WriteAs::Current)
            .unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let store = format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
            store_path.display(),
            key.display()
        );
        std::fs::write(policies.join("store.yaml"), store).unwrap();
        std::fs::write(
            policies.join("policy.yaml"),
            "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  storeRef: {name: main}\n  secretName: app/db\n  schedule: {interval: 1h}\n  generator: {password: {length: 24}}\n",
        )
        .unwrap();
        let port = rotor_e2e::free_port();
        let log = dir.path().join("controller.log");
        let state = dir.path().join("state");
        let child = rotor_e2e::command("rotor-controller")
            .args(["standalone", "--policies"])
            .arg(&policies)
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .arg("--state")
            .arg(&state)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            _dir: dir,
            state,
            child,
            port,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The policy's `nextRotation` in standalone's state file, in Unix
/// seconds.
fn next_in_state(state: &Path) -> Option<u64> {
    let text = std::fs::read(state.join("default.db.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let at = humantime::parse_rfc3339(v["status"]["nextRotation"].as_str()?).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

#[test]
fn standalone_exports_every_failure_kind_at_zero_and_the_next_rotation() {
    let standalone = Standalone::start();
    // The exported next rotation is the one the policy's status holds.
    let mut text = String::new();
    let mut state = None;
    let mirrored = wait_until(30, || {
        text = http(standalone.port, "GET", "/metrics", "")
            .map(|(_, t)| t)
            .unwrap_or_default();
        state = next_in_state(&standalone.state);
        let exported = text.lines().find_map(|l| {
            l.strip_prefix("rotor_rotation_next_timestamp_seconds{policy=\"db\"} ")?
                .parse::<u64>()
                .ok()
        });
        exported.is_some() && exported == state
    });
    assert!(
        mirrored,
        "the next rotation on /metrics is not the status's ({state:?}):\n{text}\n{}",
        standalone.log()
    );
    for kind in [
        "unreachable",
        "integrity",
        "invalid_policy",
        "inotify",
        "kube",
    ] {
        let line = format!(
            "rotor_reconcile_failures_total{{controller=\"standalone\",error=\"{kind}\"}} 0"
        );
        assert!(has_line(&text, &line), "no `{line}` in\n{text}");
    }
    for result in ["success", "degraded", "rolled_back"] {
        let line = format!("rotor_rotations_total{{result=\"{result}\"}} 0");
        assert!(has_line(&text, &line), "no `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn every_metric_the_rules_use_is_exported_by_the_real_binaries() {
    let names = metric_names(&rendered_rules());
    assert!(names.len() >= 10, "{names:?}");

    // The controller as deployed: the webhook, certificates, reconcilers.
    let plane = installed();
    let controller = Controller::start(plane, "alerts", &[]).await;
    let mut run = String::new();
    let served = eventually(60, || {
        let text = http(controller.metrics_port, "GET", "/metrics", "").map(|(_, t)| t);
        let done = text
            .as_deref()
            .is_some_and(|t| has_samples(t, "rotor_webhook_certificate_expiry_timestamp_seconds"));
        run = text.unwrap_or_default();
        async move { done }
    })
    .await;
    assert!(
        served,
        "no certificate expiry on /metrics:\n{run}\n{}",
        controller.log()
    );
    for controller in ["secretrotationpolicy", "clusterrotorstore", "rotorstore"] {
        let line = format!(
            "rotor_reconcile_failures_total{{controller=\"{controller}\",error=\"unreachable\"}} 0"
        );
        assert!(has_line(&run, &line), "no `{line}` in\n{run}");
    }

    // Standalone rotation, for a policy's next rotation.
    let standalone = Standalone::start();
    let mut alone = String::new();
    let scheduled = wait_until(30, || {
        alone = http(standalone.port, "GET", "/metrics", "")
            .map(|(_, t)| t)
            .unwrap_or_default();
        has_samples(&alone, "rotor_rotation_next_timestamp_seconds")
    });
    assert!(scheduled, "{alone}\n{}", standalone.log());

    // A sidecar, right after readiness.
    let (mut pod, _store) = sidecar();
    let side = scrape(pod.admin);
    assert!(pod.stop().success());

    for name in &names {
        assert!(
            [&run, &alone, &side].iter().any(|t| has_samples(t, name)),
            "the rules use {name}, which no binary exports:\nrun:\n{run}\nstandalone:\n{alone}\nsidecar:\n{side}"
        );
    }
}
