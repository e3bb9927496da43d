//! The injected pod as the real API server stores it: every chart value
//! that reaches the pod (`image.sidecar`, `sidecar.*` of
//! charts/rotor/values.yaml), in the forms the API server rewrites
//! (`0.5` → `500m`, `1024Ki` → `1Mi`) and as tests/chart-values sets them,
//! passes a second time unchanged: the stored pod sent to the webhook
//! again, a pod re-created from the stored one, and a reinvocation after
//! another mutating webhook changed the pod.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rotor_contract::api::RotorStore;
use rotor_e2e::cluster::{ControlPlane, Controller, eventually, installed, point_webhook_at};

const INJECT: &[(&str, &str)] = &[
    ("rotor.dev/inject", "true"),
    ("rotor.dev/store", "local"),
    ("rotor.dev/secret.db-password", "app/db#password"),
];

/// The controller's flags for each setting, as the chart's deployment
/// template passes `image.sidecar` and `sidecar.*`.
const SETTINGS: &[(&str, &[&str])] = &[
    (
        "forms the API server rewrites, native sidecar",
        &[
            "--sidecar-cpu-request=0.005",
            "--sidecar-memory-request=16384Ki",
            "--sidecar-cpu-limit=0.5",
            "--sidecar-memory-limit=0.03125Gi",
            "--size-limit=1024Ki",
            "--sidecar-refresh=90s",
        ],
    ),
    (
        "tests/chart-values/everything.yaml",
        &[
            "--sidecar-image=registry.example.com/platform/rotor-sidecar@sha256:2222222222222222222222222222222222222222222222222222222222222222",
            "--sidecar-pull-policy=IfNotPresent",
            "--mount-path=/var/run/app-secrets",
            "--size-limit=4Mi",
            "--classic-sidecar",
            "--sidecar-refresh=1m",
            "--sidecar-cpu-request=10m",
            "--sidecar-memory-request=24Mi",
            "--sidecar-cpu-limit=200m",
            "--sidecar-memory-limit=48Mi",
        ],
    ),
    (
        "forms the API server rewrites, classic sidecar",
        &[
            "--classic-sidecar",
            "--sidecar-cpu-request=1000m",
            "--sidecar-memory-request=1.5Mi",
            "--sidecar-cpu-limit=1.5",
            "--sidecar-memory-limit=0.5Gi",
            "--size-limit=1000000",
        ],
    ),
];

fn pod(name: &str) -> Pod {
    let annotations: BTreeMap<&str, &str> = INJECT.iter().copied().collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            // What the ServiceAccount admission plugin (off in the harness)
            // sets; the channel's projected token needs it.
            "serviceAccountName": "default",
            "securityContext": { "runAsUser": 1000, "runAsGroup": 1000 },
            "containers": [{ "name": "app", "image": "example/app:1" }],
        },
    }))
    .unwrap()
}

/// `stored` as a client would create it again: the same spec and
/// annotations under a new name, without what the server sets.
fn recreated(stored: &Pod, name: &str) -> Pod {
    let mut pod = Pod {
        spec: stored.spec.clone(),
        ..Pod::default()
    };
    pod.metadata.name = Some(name.to_owned());
    pod.metadata.annotations = stored.metadata.annotations.clone();
    pod.metadata.labels = stored.metadata.labels.clone();
    pod
}

/// What Rotor injects, to compare two pods by.
fn injected(pod: &Pod) -> serde_json::Value {
    let spec = pod.spec.as_ref().unwrap();
    serde_json::json!({
        "init": spec.init_containers,
        "containers": spec.containers,
        "volumes": spec.volumes,
        "refresh": pod.metadata.annotations.as_ref().and_then(|a| a.get("rotor.dev/refresh")),
    })
}

/// POSTs a CREATE review of `pod` to the webhook on `port`, trusting the
/// CA in the MutatingWebhookConfiguration.
fn review(plane: &ControlPlane, port: u16, namespace: &str, pod: &Pod) -> serde_json::Value {
    use base64::Engine as _;
    let bundle = plane.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration/rotor-webhook",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(
        &ca,
        base64::engine::general_purpose::STANDARD
            .decode(bundle.trim())
            .unwrap(),
    )
    .unwrap();
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "again", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE", "userInfo": {}, "object": pod
        }
    });
    let out = rotor_e2e::output_with_stdin(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
            ])
            .arg(format!("https://127.0.0.1:{port}/mutate")),
        body.to_string().as_bytes(),
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A second mutating webhook, after Rotor's by name, that labels every
/// pod of namespaces labelled `rotor-test/relabel`: the API server then
/// calls Rotor's again (`reinvocationPolicy: IfNeeded`) with the pod as
/// it stores it.
struct Relabel(std::process::Child);

impl Drop for Relabel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const RELABEL: &str = r#"
import base64, http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request"]
        labels = req["object"]["metadata"].get("labels") or {}
        resp = {"uid": req["uid"], "allowed": True}
        if "relabelled" not in labels:
            patch = [{"op": "add", "path": "/metadata/labels", "value": dict(labels, relabelled="yes")}]
            resp.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(patch).encode()).decode())
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn relabel_webhook(plane: &ControlPlane, dir: &std::path::Path) -> Relabel {
    let port = rotor_e2e::free_port();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (crt, key) = (dir.join("relabel.crt"), dir.join("relabel.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    let child = Command::new("python3")
        .args(["-c", RELABEL, &port.to_string()])
        .arg(&crt)
        .arg(&key)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    rotor_e2e::cluster::watchdog(&[child.id()], None);
    use base64::Engine as _;
    let config = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "z-relabel"},
        "webhooks": [{
            "name": "relabel.rotor-tests.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "namespaceSelector": {"matchLabels": {"rotor-test/relabel": "yes"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(cert.cert.pem()),
            },
        }],
    });
    let file = dir.join("relabel.json");
    std::fs::write(&file, config.to_string()).unwrap();
    plane.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    Relabel(child)
}

/// The webhook's `rotor_admission_requests_total` for CREATE and `result`.
fn creates(controller: &Controller, result: &str) -> u64 {
    let series =
        format!(r#"rotor_admission_requests_total{{operation="create",result="{result}"}}"#);
    rotor_e2e::servers::request(controller.metrics_port, "GET", "/metrics", &[], "")
        .and_then(|(_, text)| {
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_second_pass_over_the_stored_pod_changes_nothing() {
    let plane = installed();
    let client = plane.client().await;
    let dir = tempfile::tempdir().unwrap();
    let webhook_port = rotor_e2e::free_port();
    point_webhook_at(plane, webhook_port);
    let _relabel = relabel_webhook(plane, dir.path());
    for (i, (setting, flags)) in SETTINGS.iter().enumerate() {
        eprintln!("setting: {setting}");
        let controller =
            Controller::start_at(plane, &format!("canonical-{i}"), webhook_port, flags).await;
        controller.wait_serving();
        let ns = format!("canonical-{i}");
        plane
            .create_namespace(&ns, &[("rotor-test/relabel", "yes")])
            .await;
        let stores: Api<RotorStore> = Api::namespaced(client.clone(), &ns);
        let store = serde_json::from_value(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1", "kind": "RotorStore",
            "metadata": { "name": "local" },
            "spec": { "provider": { "local": { "path": "/var/lib/rotor/store.rotor", "keyPath": "/etc/rotor/key/kek" } } },
        }))
        .unwrap();
        stores.create(&PostParams::default(), &store).await.unwrap();

        // First pass, then the reinvocation after the relabel webhook: the
        // pod is admitted, relabelled, and Rotor was called twice for it.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pp = PostParams::default();
        let last = std::sync::Mutex::new(String::new());
        let created = eventually(30, || async {
            match pods.create(&pp, &pod("first")).await {
                Ok(_) => true,
                Err(e) => {
                    *last.lock().unwrap() = e.to_string();
                    false
                }
            }
        })
        .await;
        assert!(
            created,
            "{setting}: never admitted: {}\n{}",
            last.lock().unwrap(),
            controller.log()
        );
        let stored = pods.get("first").await.unwrap();
        let labels = stored.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("relabelled").map(String::as_str), Some("yes"));
        assert!(
            creates(&controller, "patched") >= 1 && creates(&controller, "allowed") >= 1,
            "{setting}: Rotor's webhook was not reinvoked"
        );

        // The stored pod sent again: allowed, nothing to change.
        let v = review(plane, webhook_port, &ns, &stored);
        assert_eq!(v["response"]["allowed"], true, "{setting}: {v}");
        assert!(v["response"]["patch"].is_null(), "{setting}: {v}");

        // A pod re-created from the stored one: admitted as it is.
        let again = pods
            .create(&pp, &recreated(&stored, "second"))
            .await
            .unwrap_or_else(|e| panic!("{setting}: the re-created pod was refused: {e}"));
        assert_eq!(injected(&again), injected(&stored), "{setting}");
        eprintln!(
            "{setting}: stored {}",
            serde_json::to_string(&injected(&stored)["volumes"]).unwrap()
        );
    }
}
