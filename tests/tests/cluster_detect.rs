//! Central change detection in `rotor-controller run` on a real API
//! server: injected sidecars (real processes, started as the kubelet
//! would) connect to the leader, which checks their secret at the pods'
//! `rotor.dev/refresh` and announces a new version over their streams.
//! The sidecars fetch it without polling; a replica that does not hold the
//! Lease admits no stream and announces nothing.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use rotor_e2e::cluster::{
    Controller, admit_pod, app_pod, eventually, installed, lone_leader, vault_store_namespace,
};
use rotor_e2e::kubelet::RunningPod;
use rotor_e2e::servers::Bao;
use rotor_e2e::standalone::metric_in;
use rotor_e2e::{http, http_to};

fn controller_metrics(controller: &Controller) -> String {
    http(controller.metrics_port, "GET", "/metrics", "")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn sidecar_metric(pod: &RunningPod, series: &str) -> f64 {
    let text = http_to(&pod.ip, pod.admin_port, "GET", "/metrics", "")
        .map(|(_, body)| body)
        .unwrap_or_default();
    metric_in(&text, series)
}

const POLLS: [&str; 2] = [
    "rotor_sidecar_polls_total{interval=\"refresh\"}",
    "rotor_sidecar_polls_total{interval=\"safety_net\"}",
];

#[tokio::test]
async fn the_leader_detects_a_change_and_announces_it_to_the_connected_pods() {
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    let (ns, secret) = vault_store_namespace(plane, &bao, "detect").await;
    let controller = lone_leader(plane, "detect-leader").await;
    // A second replica, not the Lease holder.
    let follower = Controller::start(plane, "detect-follower", &[]).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut running = Vec::new();
    for (i, name) in ["d1", "d2"].iter().enumerate() {
        let pod = app_pod(
            name,
            &[
                ("rotor.dev/inject", "true"),
                ("rotor.dev/store", "vault"),
                ("rotor.dev/secret.db-password", &secret),
                ("rotor.dev/refresh", "2s"),
            ],
        );
        admit_pod(&pods, pod, &controller).await;
        running.push(RunningPod::start(plane, &ns, name, &format!("127.0.{}.3", 70 + i)).await);
    }
    for pod in &running {
        pod.wait_ready();
        assert_eq!(pod.read("db-password").as_deref(), Some("initial-password"));
    }
    // Both streams up, and the controller says it detects for them.
    let connected = eventually(60, || async {
        running
            .iter()
            .all(|p| sidecar_metric(p, "rotor_sidecar_channel_connected") == 1.0)
            && running.iter().all(|p| p.log().contains("detects=true"))
    })
    .await;
    assert!(connected, "{}\n{}", controller.log(), running[0].log());
    // Each made the poll that was due when its stream came up.
    let polled = eventually(30, || async {
        running.iter().all(|p| sidecar_metric(p, POLLS[1]) >= 1.0)
    })
    .await;
    assert!(polled, "{}", running[0].log());
    // The leader has checked the secret once (as the namespace's rotator).
    let store = format!("store=\"{ns}/vault\"");
    let checked = eventually(30, || async {
        controller_metrics(&controller)
            .lines()
            .any(|l| l.starts_with("rotor_store_requests_total") && l.contains(&store))
    })
    .await;
    assert!(checked, "{}", controller.log());
    let polls_before: f64 = running
        .iter()
        .flat_map(|p| POLLS.map(|s| sidecar_metric(p, s)))
        .sum();

    bao.api(
        "POST",
        &format!("secret/data/{secret}"),
        r#"{"data":{"value":"second-password"}}"#,
    );
    // Both files change within a few detection intervals, well before
    // the 20 s safety net.
    let updated = eventually(15, || async {
        running
            .iter()
            .all(|p| p.read("db-password").as_deref() == Some("second-password"))
    })
    .await;
    assert!(updated, "{}\n{}", controller.log(), running[0].log());
    let announced = metric_in(
        &controller_metrics(&controller),
        "rotor_channel_announced_total",
    );
    assert_eq!(announced, 2.0, "{}", controller.log());
    let polls_after: f64 = running
        .iter()
        .flat_map(|p| POLLS.map(|s| sidecar_metric(p, s)))
        .sum();
    assert_eq!(polls_after, polls_before, "a sidecar polled");
    // The follower admitted no stream and announced nothing.
    let follower_metrics = controller_metrics(&follower);
    assert!(
        follower_metrics.contains("rotor_channel_announce_waves_total"),
        "the follower serves its metrics: {}",
        follower.log()
    );
    assert_eq!(metric_in(&follower_metrics, "rotor_channel_streams"), 0.0);
    assert_eq!(
        metric_in(&follower_metrics, "rotor_channel_announced_total"),
        0.0
    );
}
