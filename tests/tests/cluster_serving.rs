//! Which pod serves which version, on a real API server: two injected
//! consumers (real `rotor-sidecar`s on the channel) of one policy. After
//! a rotation both serve CURRENT; with one sidecar stopped, the next
//! rotation pins the other to PENDING, and `rotor status`, `status.serving`,
//! the `SERVING` column and `rotor_consumers_serving` show exactly one pod
//! on PENDING; once the
//! stopped sidecar is back and the version promoted, all serve CURRENT.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rotor_contract::api::{Phase, SecretRotationPolicy, SecretRotationPolicyStatus, ServingCounts};
use rotor_e2e::cluster::{
    ControlPlane, admit_pod, consumer_pod, eventually, installed, lone_leader,
    vault_store_namespace,
};
use rotor_e2e::kubelet::RunningPod;
use rotor_e2e::servers::Bao;

/// `rotor status` for `ns` with the admin kubeconfig; stdout.
fn rotor_status(plane: &ControlPlane, ns: &str, extra: &[&str]) -> String {
    rotor_e2e::stdout_ok(
        rotor_e2e::command("rotor")
            .env("KUBECONFIG", &plane.kubeconfig)
            .args(["status", "--namespace", ns])
            .args(extra),
        "rotor status",
    )
}

/// `rotor status`'s table rows: (pod, version, class).
fn table(out: &str) -> Vec<(String, String, String)> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "POLICY",
            "POD",
            "VERSION",
            "CLASS",
            "DIGEST",
            "ACKNOWLEDGED"
        ],
        "{out}"
    );
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (
                cells[1].to_owned(),
                cells[2].to_owned(),
                cells[3].to_owned(),
            )
        })
        .collect()
}

/// The policy's `SERVING` column as `kubectl get` prints it.
fn serving_column(plane: &ControlPlane, ns: &str) -> String {
    let out = plane.kubectl_ok(&["get", "secretrotationpolicies", "-n", ns]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let column = header
        .iter()
        .position(|h| *h == "SERVING")
        .unwrap_or_else(|| panic!("no SERVING column: {out}"));
    lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(column)
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn rotor_status_shows_one_pod_on_pending_during_a_rotation() {
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    let (ns, secret) = vault_store_namespace(plane, &bao, "serving").await;
    let controller = lone_leader(plane, "serving-replica").await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut running = Vec::new();
    for (i, name) in ["c1", "c2"].iter().enumerate() {
        admit_pod(&pods, consumer_pod(name, &secret), &controller).await;
        let pod = RunningPod::start(plane, &ns, name, &format!("127.0.{}.2", 70 + i)).await;
        pod.wait_ready();
        running.push(pod);
    }
    let connected = eventually(30, || async {
        controller
            .full_log()
            .matches("channel: stream admitted")
            .count()
            >= 2
    })
    .await;
    assert!(connected, "{}", controller.log());

    let policy: SecretRotationPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "SecretRotationPolicy",
        "metadata": { "name": "db" },
        "spec": {
            "storeRef": { "name": "vault" },
            "secretName": secret,
            "schedule": { "interval": "720h" },
            "generator": { "password": { "length": 24 } },
            "strategy": { "staged": {
                "ackTimeout": "3m", "gracePeriod": "1s", "onTimeout": "Rollback",
            } },
        },
    }))
    .unwrap();
    let policies: Api<SecretRotationPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let status = || async { policies.get("db").await.unwrap().status.unwrap_or_default() };
    let counts = |s: &SecretRotationPolicyStatus| s.serving.unwrap_or_default();

    // The first rotation: both acknowledge, and both serve CURRENT.
    let first = eventually(90, || async {
        let s = status().await;
        s.phase == Some(Phase::Idle)
            && s.current_version.is_some()
            && counts(&s)
                == ServingCounts {
                    current: 2,
                    total: 2,
                    ..ServingCounts::default()
                }
    })
    .await;
    let s = status().await;
    assert!(first, "{s:?}\n{}", controller.log());
    assert_eq!(s.serving_summary.as_deref(), Some("2/2"));
    let first_version = s.current_version.clone().unwrap();

    // c2's sidecar stops; the next rotation pins c1 to the new version,
    // and c2 still serves (as it last said) the current one.
    running[1].kill();
    rotor_e2e::policy::rotate_now(&policies, "db", "second").await;
    let midway = eventually(60, || async {
        let s = status().await;
        s.phase == Some(Phase::Propagating)
            && counts(&s)
                == ServingCounts {
                    current: 1,
                    pending: 1,
                    total: 2,
                    ..ServingCounts::default()
                }
    })
    .await;
    let s = status().await;
    assert!(midway, "{s:?}\n{}", controller.log());
    let pending = s.pending_version.clone().unwrap();
    assert_eq!(s.serving_summary.as_deref(), Some("1/2"));
    assert_eq!(serving_column(plane, &ns), "1/2");
    // The same counts on /metrics, every class present.
    let gauge = |class: &str, n: u32| {
        format!("rotor_consumers_serving{{policy=\"{ns}/db\",version_class=\"{class}\"}} {n}")
    };
    let expected = [
        gauge("current", 1),
        gauge("pending", 1),
        gauge("previous", 0),
        gauge("older", 0),
        gauge("unknown", 0),
    ];
    let metrics = || {
        rotor_e2e::http(controller.metrics_port, "GET", "/metrics", "")
            .map(|(_, text)| text)
            .unwrap_or_default()
    };
    // Set right after the status is saved: wait for it.
    let exported = eventually(10, || async {
        let text = metrics();
        expected.iter().all(|line| text.lines().any(|l| l == line))
    })
    .await;
    assert!(exported, "not all of {expected:#?}:\n{}", metrics());

    let rows = table(&rotor_status(plane, &ns, &[]));
    let on_pending: Vec<_> = rows.iter().filter(|r| r.2 == "PENDING").collect();
    assert_eq!(
        on_pending,
        [&("c1".to_owned(), pending.clone(), "PENDING".to_owned())],
        "{rows:?}"
    );
    assert!(
        rows.contains(&("c2".to_owned(), first_version.clone(), "CURRENT".to_owned())),
        "{rows:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&rotor_status(plane, &ns, &["--policy", "db", "-o", "json"])).unwrap();
    let c1 = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == format!("{ns}/c1"))
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(c1["version"], pending.as_str(), "{json}");
    assert!(
        c1["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{json}"
    );
    assert!(c1["reportedAt"].is_string(), "{json}");

    // c2 is back: it is pinned too, the version is promoted, and every
    // consumer serves CURRENT.
    running[1].spawn();
    running[1].wait_ready();
    let done = eventually(90, || async {
        let s = status().await;
        s.phase == Some(Phase::Idle)
            && s.current_version.as_deref() == Some(pending.as_str())
            && counts(&s)
                == ServingCounts {
                    current: 2,
                    total: 2,
                    ..ServingCounts::default()
                }
    })
    .await;
    let s = status().await;
    assert!(done, "{s:?}\n{}", controller.log());
    assert_eq!(serving_column(plane, &ns), "2/2");
    let rows = table(&rotor_status(plane, &ns, &[]));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.1 == pending && r.2 == "CURRENT"),
        "{rows:?}"
    );
}
