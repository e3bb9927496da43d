//! The controller–sidecar channel on a real API server: injected sidecars
//! (real `rotor-sidecar` processes the harness starts as the kubelet
//! would) dial `rotor-controller run` through the Service stand-in with
//! their projected `rotor.dev/channel` tokens; rotation asks three pods
//! over their streams, and shows a fourth, whose sidecar never connects,
//! as NotConnected until the policy's ack timeout rolls back.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use rotor_contract::api::{ConsumerState, Phase, SecretRotationPolicy};
use rotor_e2e::cluster::{
    admit_pod, consumer_pod, events, eventually, installed, lone_leader, vault_store_namespace,
};
use rotor_e2e::kubelet::RunningPod;
use rotor_e2e::policy::PolicyFixture;
use rotor_e2e::servers::Bao;

#[tokio::test]
async fn rotation_goes_over_the_streams_and_an_unconnected_pod_is_shown() {
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    let (ns, secret) = vault_store_namespace(plane, &bao, "channel").await;
    let controller = lone_leader(plane, "channel-replica").await;

    // Three consumers whose sidecars dial the controller, and a fourth
    // that is Running but whose sidecar never starts.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut running = Vec::new();
    for (i, name) in ["c1", "c2", "c3", "silent"].iter().enumerate() {
        admit_pod(&pods, consumer_pod(name, &secret), &controller).await;
        let ip = format!("127.0.{}.{}", 60 + i, 2);
        let pod = if *name == "silent" {
            RunningPod::prepare(plane, &ns, name, &ip).await
        } else {
            RunningPod::start(plane, &ns, name, &ip).await
        };
        running.push(pod);
    }
    for pod in &running[..3] {
        pod.wait_ready();
        assert_eq!(pod.read("db-password").as_deref(), Some("initial-password"));
    }
    let connected = eventually(30, || async {
        controller
            .full_log()
            .matches("channel: stream admitted")
            .count()
            >= 3
    })
    .await;
    assert!(connected, "{}\n{}", controller.log(), running[0].log());

    // The policy waits 20 s for every consumer, then rolls back.
    let policy = PolicyFixture::new("db", "vault", &secret)
        .ack_timeout("20s")
        .build();
    let policies: Api<SecretRotationPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let status = || async { policies.get("db").await.unwrap().status.unwrap_or_default() };
    let state_of = |s: &rotor_contract::api::SecretRotationPolicyStatus, pod: &str| {
        s.consumers
            .iter()
            .find(|c| c.name == format!("{ns}/{pod}"))
            .map(|c| c.state)
    };

    // Propagating: the three acknowledged over their streams, the silent
    // pod shown as not connected.
    let midway = eventually(60, || async {
        let s = status().await;
        s.phase == Some(Phase::Propagating)
            && ["c1", "c2", "c3"]
                .iter()
                .all(|p| state_of(&s, p) == Some(ConsumerState::Acknowledged))
            && state_of(&s, "silent") == Some(ConsumerState::NotConnected)
    })
    .await;
    let s = status().await;
    assert!(midway, "{s:?}\n{}", controller.log());
    let staged = running[0].read("db-password").unwrap();
    assert_ne!(staged, "initial-password", "c1 serves the staged value");
    assert!(
        s.consumers
            .iter()
            .find(|c| c.name == format!("{ns}/silent"))
            .unwrap()
            .acknowledged_version
            .is_none(),
        "{s:?}"
    );

    // As the policy says: no acknowledgement from the silent pod in 20 s,
    // rolled back, and the pods serve the old value again.
    let rolled_back = eventually(60, || async {
        let s = status().await;
        s.phase == Some(Phase::Idle)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.reason == "RolledBack")
    })
    .await;
    let s = status().await;
    assert!(rolled_back, "{s:?}\n{}", controller.log());
    let message = &s
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .message;
    assert!(message.contains(&format!("{ns}/silent")), "{message}");
    assert!(!message.contains(&format!("{ns}/c1")), "{message}");
    let restored = eventually(30, || async {
        running[..3]
            .iter()
            .all(|p| p.read("db-password").as_deref() == Some("initial-password"))
    })
    .await;
    assert!(restored, "{}", running[0].log());

    // Without the silent pod, the next rotation completes across the
    // three streams.
    pods.delete("silent", &DeleteParams::default())
        .await
        .unwrap();
    rotor_e2e::policy::rotate_now(&policies, "db", "again").await;
    let done = eventually(90, || async {
        let s = status().await;
        s.phase == Some(Phase::Idle)
            && s.rotate_now_handled.as_deref() == Some("again")
            && s.current_version.is_some()
            && s.consumers.len() == 3
            && s.consumers.iter().all(|c| {
                c.acknowledged_version == s.current_version
                    && c.state == ConsumerState::Acknowledged
            })
    })
    .await;
    let s = status().await;
    assert!(done, "{s:?}\n{}", controller.log());
    let current: serde_json::Value =
        serde_json::from_str(&bao.api("GET", &format!("secret/data/{secret}"), "")).unwrap();
    let value = current["data"]["data"]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(value, "initial-password");
    let served = eventually(30, || async {
        running[..3]
            .iter()
            .all(|p| p.read("db-password").as_deref() == Some(value.as_str()))
    })
    .await;
    assert!(served, "{}", running[0].log());

    // Neither generated value is in the controller's log, the Events or
    // the status.
    let events = serde_json::to_string(&events(plane, &ns, "db")).unwrap();
    let status_json = serde_json::to_string(&s).unwrap();
    let log = controller.full_log();
    for canary in [&staged, &value] {
        assert!(
            !log.contains(canary.as_str()),
            "the controller logged a value"
        );
        assert!(!events.contains(canary.as_str()), "an Event holds a value");
        assert!(
            !status_json.contains(canary.as_str()),
            "the status holds a value"
        );
    }
}
