//! Rotation in a real cluster: two `rotor-controller run` replicas share the
//! Lease, consumer pods are real Pod objects admitted through the webhook,
//! the harness plays the kubelet for them (pod IPs on 127.0.0.N, real
//! `rotor-sidecar`s logging in to OpenBao with pod-bound tokens through its
//! Kubernetes auth method, whose TokenReviews this API server answers).
//! The leader is killed mid-rotation; the other replica finishes it, once.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rotor_contract::api::{Phase, RotorStore, SecretRotationPolicy};
use rotor_e2e::cluster::{
    Controller, ROTATOR, consumer_pod, event_reasons, eventually, installed, kv_metadata,
    point_webhook_at, vault_kubernetes_auth,
};
use rotor_e2e::kubelet::RunningPod;
use rotor_e2e::policy::PolicyFixture;
use rotor_e2e::servers::Bao;

const LEASE: &str = "rotor-controller-leader";

async fn lease_holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "rotor-system")
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test]
async fn a_rotation_survives_the_leaders_death_and_completes_once() {
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    let ns = plane.namespace("rotation").await;
    plane.service_account(&ns, "app").await;
    // Rotation writes as the namespace's rotator account.
    plane.service_account(&ns, ROTATOR).await;
    vault_kubernetes_auth(plane, &bao, "app", &["app", ROTATOR], &[&ns]).await;
    let secret = format!("{ns}/db");
    bao.api(
        "POST",
        &format!("secret/data/{secret}"),
        r#"{"data":{"value":"initial-password"}}"#,
    );
    let store: RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": "vault" },
        "spec": { "provider": { "vault": {
            "server": bao.addr(),
            "mount": "secret",
            "auth": { "kubernetes": { "role": "app" } },
        } } },
    }))
    .unwrap();
    Api::<RotorStore>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &store)
        .await
        .unwrap();

    // Replica A leads; B waits.
    let webhook_port = rotor_e2e::free_port();
    point_webhook_at(plane, webhook_port);
    let lease = ["--lease-duration=4s"];
    let mut a = Controller::start_at(plane, "replica-a", webhook_port, &lease).await;
    let led = eventually(30, || async {
        lease_holder(&client).await.as_deref() == Some("replica-a")
    })
    .await;
    assert!(led, "replica-a never took the Lease: {}", a.log());
    let mut b = Controller::start(plane, "replica-b", &lease).await;

    // Two consumer pods through the webhook; the first one's sidecar runs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for name in ["c1", "c2"] {
        let admitted = eventually(30, || async {
            pods.create(&PostParams::default(), &consumer_pod(name, &secret))
                .await
                .is_ok()
        })
        .await;
        assert!(admitted, "{name} was not admitted: {}", a.log());
    }
    let c1 = RunningPod::start(plane, &ns, "c1", "127.0.0.2").await;
    c1.wait_ready();
    assert_eq!(c1.read("db-password").as_deref(), Some("initial-password"));
    // The second pod is Running with its IP, but its sidecar is not up yet.
    let mut c2 = RunningPod::prepare(plane, &ns, "c2", "127.0.0.3").await;

    let policy = PolicyFixture::new("db", "vault", &secret)
        .ack_timeout("3m")
        .build();
    let policies: Api<SecretRotationPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    // Mid-rotation: staged, c1 acknowledged, c2 not.
    let status = || async { policies.get("db").await.unwrap().status.unwrap_or_default() };
    let midway = eventually(60, || async {
        let s = status().await;
        s.phase == Some(Phase::Propagating)
            && s.consumers.iter().any(|c| {
                c.name == format!("{ns}/c1") && c.acknowledged_version == s.pending_version
            })
            && s.consumers
                .iter()
                .any(|c| c.name == format!("{ns}/c2") && c.acknowledged_version.is_none())
    })
    .await;
    let s = status().await;
    assert!(midway, "{s:?}\n{}\n{}", a.log(), c1.log());
    let pending = s.pending_version.clone().unwrap();
    let staged = c1.read("db-password").unwrap();
    assert_ne!(staged, "initial-password", "c1 serves the staged value");

    // The leader dies; c2's sidecar comes up.
    a.kill();
    c2.spawn();
    c2.wait_ready();

    let done = eventually(90, || async {
        let s = status().await;
        s.phase == Some(Phase::Idle) && s.current_version.as_deref() == Some(&pending)
    })
    .await;
    let s = status().await;
    assert!(done, "{s:?}\n{}", b.log());
    assert_eq!(lease_holder(&client).await.as_deref(), Some("replica-b"));
    assert!(b.full_log().contains("leadership changed"), "{}", b.log());
    for c in &s.consumers {
        assert_eq!(
            c.acknowledged_version.as_deref(),
            Some(pending.as_str()),
            "{s:?}"
        );
    }
    let rotating = s.conditions.iter().find(|c| c.type_ == "Rotating").unwrap();
    assert_eq!(rotating.status, "False", "{s:?}");

    // Both pods serve the promoted value, which is the store's CURRENT.
    let current: serde_json::Value =
        serde_json::from_str(&bao.api("GET", &format!("secret/data/{secret}"), "")).unwrap();
    let value = current["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(value, staged);
    let served = eventually(30, || async {
        c2.read("db-password").as_deref() == Some(&value)
            && c1.read("db-password").as_deref() == Some(&value)
    })
    .await;
    assert!(served, "{}", c2.log());

    // Once: one generated version, each phase's Event once.
    let (versions, labels) = kv_metadata(&bao, &secret);
    assert_eq!(
        versions, 2,
        "one initial and one generated version: {labels}"
    );
    assert_eq!(labels["rotor-current"], pending.as_str(), "{labels}");
    let retired = eventually(30, || async {
        event_reasons(plane, &ns, "db").contains_key("Retired")
    })
    .await;
    let reasons = event_reasons(plane, &ns, "db");
    assert!(retired, "{reasons:?}\n{}", b.log());
    for reason in [
        "RotationStarted",
        "Staged",
        "Acknowledged",
        "Promoted",
        "Retired",
    ] {
        assert_eq!(reasons.get(reason), Some(&1), "{reason}: {reasons:?}");
    }
    assert!(!reasons.contains_key("RolledBack"), "{reasons:?}");

    // rotate-now, with the controller's RBAC (it cannot write policies):
    // handled once, recorded in the status.
    rotor_e2e::policy::rotate_now(&policies, "db", "again").await;
    let again = eventually(30, || async {
        status().await.rotate_now_handled.as_deref() == Some("again")
    })
    .await;
    assert!(again, "{:?}\n{}", status().await, b.log());
    let started = eventually(30, || async {
        event_reasons(plane, &ns, "db").get("RotationStarted") == Some(&2)
    })
    .await;
    assert!(started, "{:?}", event_reasons(plane, &ns, "db"));
    b.stop();
    assert!(!b.full_log().contains("forbidden"), "{}", b.log());
}
