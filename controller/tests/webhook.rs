//! The webhook through its axum Router, with AdmissionReview fixtures.

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use http_body_util::BodyExt;
use rotor_controller::store_index::StoreIndex;
use rotor_controller::webhook::InjectConfig;
use rotor_controller::webhook::server::{WebhookState, router};
use serde_json::Value;
use tower::ServiceExt;

fn stores() -> StoreIndex {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stores.yaml"),
        include_str!("fixtures/stores.yaml"),
    )
    .unwrap();
    StoreIndex::from_dir(dir.path()).unwrap()
}

async fn call_with(config: InjectConfig, body: &str) -> (u16, Value) {
    let state = Arc::new(WebhookState {
        stores: RwLock::new(stores()),
        config,
    });
    let response = router(state)
        .oneshot(
            Request::post("/mutate")
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn call(body: &str) -> (u16, Value) {
    call_with(InjectConfig::default(), body).await
}

/// The review's pod with the response's patch applied.
fn patched(review: &str, response: &Value) -> Value {
    let mut pod: Value =
        serde_json::from_str::<Value>(review).unwrap()["request"]["object"].clone();
    let patch = response["response"]["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("no patch in {response}"));
    let ops: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    json_patch::patch(&mut pod, &ops).unwrap();
    pod
}

fn denial(v: &Value) -> String {
    assert_eq!(v["response"]["allowed"], false, "{v}");
    v["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn injects_a_hardened_native_sidecar() {
    let review = include_str!("fixtures/inject.json");
    let (status, v) = call(review).await;
    assert_eq!(status, 200);
    assert_eq!(v["response"]["uid"], "uid-inject");
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let pod = patched(review, &v);
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "rotor-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 1000);
    assert_eq!(sc["runAsGroup"], 1000);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sidecar["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--local-store=/var/lib/rotor/store.rotor"),
        "{args:?}"
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let secrets = volumes
        .iter()
        .find(|v| v["name"] == "rotor-secrets")
        .unwrap();
    assert_eq!(secrets["emptyDir"]["medium"], "Memory");
    assert_eq!(secrets["emptyDir"]["sizeLimit"], "1Mi");
    let podinfo = volumes
        .iter()
        .find(|v| v["name"] == "rotor-podinfo")
        .unwrap();
    assert_eq!(
        podinfo["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations"
    );
    let app_mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(app_mount["name"], "rotor-secrets");
    assert_eq!(app_mount["mountPath"], "/run/secrets/rotor");
    assert_eq!(app_mount["readOnly"], true);
    assert_eq!(
        pod["spec"]["shareProcessNamespace"], true,
        "signal by name needs a shared PID namespace"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["rotor.dev/status"],
        "injected"
    );
}

#[tokio::test]
async fn a_second_pass_adds_nothing() {
    let review = include_str!("fixtures/inject.json");
    let (_, v) = call(review).await;
    let pod = patched(review, &v);
    let mut again: Value = serde_json::from_str(review).unwrap();
    again["request"]["object"] = pod;
    let (status, v) = call(&again.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(v["response"]["allowed"], true);
    assert!(
        v["response"]["patch"].is_null(),
        "reinvocation patched again: {v}"
    );
}

#[tokio::test]
async fn classic_layout_for_older_clusters() {
    let review = include_str!("fixtures/inject.json");
    let config = InjectConfig {
        native_sidecar: false,
        ..InjectConfig::default()
    };
    let (_, v) = call_with(config, review).await;
    let pod = patched(review, &v);
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "rotor-init");
    assert!(pod["spec"]["initContainers"][0]["restartPolicy"].is_null());
    assert!(
        pod["spec"]["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--once")
    );
    assert_eq!(pod["spec"]["containers"][0]["name"], "rotor-sidecar");
}

#[tokio::test]
async fn a_cluster_store_wires_vault_kubernetes_auth() {
    let review = include_str!("fixtures/cluster-store.json");
    let (_, v) = call(review).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let pod = patched(review, &v);
    let args = pod["spec"]["initContainers"][0]["args"].to_string();
    assert!(
        args.contains("--vault-addr=https://vault.vault.svc:8200")
            && args.contains("--vault-auth=kubernetes"),
        "{args}"
    );
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"audience\":\"vault\""), "{volumes}");
}

#[tokio::test]
async fn every_deny_case_names_the_problem() {
    for (fixture, expected) in [
        (
            include_str!("fixtures/bad-file-name.json"),
            "annotation rotor.dev/secret.../etc/passwd: names the file \"../etc/passwd\"",
        ),
        (
            include_str!("fixtures/traversal.json"),
            "has the secret name \"../../etc/shadow\", which has a \"..\" path segment",
        ),
        (
            include_str!("fixtures/unknown-store.json"),
            "annotation rotor.dev/store: store \"nope\" not found",
        ),
        (
            include_str!("fixtures/store-not-allowed.json"),
            "ClusterSecretStore \"shared-vault\" does not allow namespace \"team-b\"",
        ),
        (
            include_str!("fixtures/path-not-allowed.json"),
            "does not allow secret \"apps/team-b/db\" in namespace \"team-a\"",
        ),
        (
            include_str!("fixtures/address-annotation.json"),
            "annotation rotor.dev/vault-addr: is not a Rotor annotation; store addresses come only from SecretStore",
        ),
        (
            include_str!("fixtures/status-spoof.json"),
            "annotation rotor.dev/refresh: value \"never\" is not a duration",
        ),
    ] {
        let (status, v) = call(fixture).await;
        assert_eq!(status, 200);
        let message = denial(&v);
        assert!(
            message.contains(expected),
            "got {message:?}, expected {expected:?}"
        );
        assert!(v["response"]["patch"].is_null());
    }
}

fn sidecar_args(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Most pods run as their image's USER and set no runAsUser: they are
/// admitted, the sidecar runs as a fixed non-root user, the files are
/// readable inside the pod, and kubectl shows a warning saying so.
#[tokio::test]
async fn pods_without_a_user_are_admitted_with_a_warning() {
    let review = include_str!("fixtures/no-run-as-user.json");
    let (status, v) = call(review).await;
    assert_eq!(status, 200);
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let warning = v["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("mode 0444"), "{warning}");
    assert!(
        warning.contains("set securityContext.runAsUser"),
        "{warning}"
    );
    let pod = patched(review, &v);
    let sc = &pod["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["runAsGroup"], 65532);
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(sidecar_args(&pod).contains(&"--default-file-mode=0444".to_owned()));
    // The pod's own securityContext and env are untouched.
    assert!(pod["spec"]["securityContext"].is_null());
    assert!(pod["spec"]["containers"][0]["env"].is_null());

    // With an fsGroup: the sidecar joins it and the files are 0440.
    let mut with_group: Value = serde_json::from_str(review).unwrap();
    with_group["request"]["object"]["spec"]["securityContext"] =
        serde_json::json!({ "fsGroup": 2000 });
    let review = with_group.to_string();
    let (_, v) = call(&review).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let warning = v["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("fsGroup 2000") && warning.contains("0440"),
        "{warning}"
    );
    let pod = patched(&review, &v);
    let sc = &pod["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["runAsGroup"], 2000);
    assert!(sidecar_args(&pod).contains(&"--default-file-mode=0440".to_owned()));
    assert_eq!(
        pod["spec"]["securityContext"],
        serde_json::json!({ "fsGroup": 2000 })
    );
}

#[tokio::test]
async fn pods_with_a_user_get_no_warning_and_mode_0400() {
    let review = include_str!("fixtures/inject.json");
    let (_, v) = call(review).await;
    assert!(v["response"]["warnings"].is_null(), "{v}");
    let pod = patched(review, &v);
    assert!(
        !sidecar_args(&pod)
            .iter()
            .any(|a| a.starts_with("--default-file-mode"))
    );
}

#[tokio::test]
async fn pods_without_annotations_pass_untouched() {
    let (status, v) = call(include_str!("fixtures/no-annotation.json")).await;
    assert_eq!(status, 200);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"]["patch"].is_null());
}

#[tokio::test]
async fn malformed_input_gets_400_or_an_invalid_review_never_a_panic() {
    let (status, v) = call("{not json").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("not JSON"), "{v}");

    let (status, v) = call(include_str!("fixtures/wrong-shape.json")).await;
    assert_eq!(status, 200);
    assert!(denial(&v).contains("malformed AdmissionReview"), "{v}");

    let (status, v) =
        call(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(v["response"]["allowed"], false, "{v}");

    let (status, _) = call("[]").await;
    assert_eq!(status, 200);
}
