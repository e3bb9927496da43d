//! The webhook through its axum Router, with AdmissionReview fixtures.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use http_body_util::BodyExt;
use rotor_controller::store_index::StoreIndex;
use rotor_controller::webhook::InjectConfig;
use rotor_controller::webhook::inject::{CaSource, ChannelInjection};
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
    let state = Arc::new(WebhookState::new(
        Arc::new(std::sync::RwLock::new(stores())),
        config,
    ));
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

/// The controller's CA bundle, the same for every call of a test run,
/// written as a user might (CRLF line ends, blank lines around).
fn ca_pem() -> &'static str {
    static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        let pem = rcgen::generate_simple_self_signed(vec!["rotor-webhook.rotor-system.svc".into()])
            .unwrap()
            .cert
            .pem();
        format!("\n{}\n\n", pem.replace('\n', "\r\n"))
    })
}

/// The default settings with the channel, as `rotor-controller run` has.
fn with_channel() -> InjectConfig {
    InjectConfig {
        channel: Some(ChannelInjection {
            controller_addr: "rotor-webhook.rotor-system.svc:9466".into(),
            ca: CaSource::Pem(ca_pem().to_owned()),
        }),
        ..InjectConfig::default()
    }
}

async fn call(body: &str) -> (u16, Value) {
    call_with(with_channel(), body).await
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
async fn sidecar_settings_reach_the_injected_pod() {
    let review = include_str!("fixtures/inject.json");
    let config = || InjectConfig {
        pull_policy: "IfNotPresent".into(),
        resources: rotor_controller::webhook::inject::SidecarResources {
            cpu_request: "10m".into(),
            memory_request: "20Mi".into(),
            cpu_limit: "200m".into(),
            memory_limit: "40Mi".into(),
        },
        default_refresh: Some("2m".into()),
        ..InjectConfig::default()
    };
    let (_, v) = call_with(config(), review).await;
    let pod = patched(review, &v);
    let sidecar = &pod["spec"]["initContainers"][0];
    assert_eq!(sidecar["imagePullPolicy"], "IfNotPresent");
    assert_eq!(sidecar["resources"]["requests"]["cpu"], "10m");
    assert_eq!(sidecar["resources"]["requests"]["memory"], "20Mi");
    assert_eq!(sidecar["resources"]["limits"]["cpu"], "200m");
    assert_eq!(sidecar["resources"]["limits"]["memory"], "40Mi");
    // A pod without rotor.dev/refresh gets the default as an annotation,
    // which the sidecar reads...
    assert_eq!(pod["metadata"]["annotations"]["rotor.dev/refresh"], "2m");
    // ...and a second pass adds nothing.
    let mut again: Value = serde_json::from_str(review).unwrap();
    again["request"]["object"] = pod;
    let (_, v) = call_with(config(), &again.to_string()).await;
    assert!(v["response"]["patch"].is_null(), "patched again: {v}");
    // A pod's own refresh stays.
    let mut own: Value = serde_json::from_str(review).unwrap();
    own["request"]["object"]["metadata"]["annotations"]["rotor.dev/refresh"] = "45s".into();
    let (_, v) = call_with(config(), &own.to_string()).await;
    let pod = patched(&own.to_string(), &v);
    assert_eq!(pod["metadata"]["annotations"]["rotor.dev/refresh"], "45s");
    // Without the setting, no annotation is added.
    let (_, v) = call(review).await;
    let pod = patched(review, &v);
    assert!(pod["metadata"]["annotations"]["rotor.dev/refresh"].is_null());
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

/// The sidecar's projected token carries the audience the store's Vault
/// role expects (`auth.kubernetes.audience`), not always "vault".
#[tokio::test]
async fn the_sidecars_token_has_the_stores_vault_audience() {
    let review = include_str!("fixtures/cluster-store.json").replace("shared-vault", "prod-vault");
    let (_, v) = call(&review).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let pod = patched(&review, &v);
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"audience\":\"vault-prod\""), "{volumes}");
    assert!(!volumes.contains("\"audience\":\"vault\""), "{volumes}");
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
            "ClusterRotorStore \"shared-vault\" does not allow namespace \"team-b\"",
        ),
        (
            include_str!("fixtures/path-not-allowed.json"),
            "does not allow secret \"apps/team-b/db\" in namespace \"team-a\"",
        ),
        (
            include_str!("fixtures/address-annotation.json"),
            "annotation rotor.dev/vault-addr: is not a Rotor annotation; store addresses come only from RotorStore",
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

/// The inject fixture, changed by `edit` (on the whole review).
fn review_with(edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(include_str!("fixtures/inject.json")).unwrap();
    edit(&mut v);
    v.to_string()
}

/// One 2 MB review with 180,000 bad reload actions once produced a
/// 27.7 MB response: now the problems are capped, counted, and the
/// message is bounded.
#[tokio::test]
async fn a_flood_of_annotation_problems_gets_a_bounded_answer() {
    let body = review_with(|v| {
        let a = &mut v["request"]["object"]["metadata"]["annotations"];
        a["rotor.dev/reload"] = Value::String("signal:X:y,".repeat(190_000));
        for i in 0..200 {
            a[format!("rotor.dev/bogus-{i}")] = Value::String("x".into());
        }
    });
    assert!(body.len() > 2_000_000);
    let (status, v) = call(&body).await;
    assert_eq!(status, 200);
    let message = denial(&v);
    assert!(message.len() <= rotor_controller::webhook::review::MAX_DENY_MESSAGE + 64);
    assert!(message.contains("more problems"), "{message}");
    assert!(v.to_string().len() < 8 * 1024, "{}", v.to_string().len());
}

#[tokio::test]
async fn exec_reload_needs_the_stores_consent() {
    let exec = |store: &'static str| {
        review_with(move |v| {
            let a = &mut v["request"]["object"]["metadata"]["annotations"];
            a["rotor.dev/store"] = Value::String(store.into());
            a["rotor.dev/reload"] = Value::String("exec:/usr/bin/reload-app".into());
        })
    };
    let (_, v) = call(&exec("local")).await;
    let message = denial(&v);
    assert!(
        message.contains("exec: actions are off for RotorStore \"local\"")
            && message.contains("spec.allowExecReload: true"),
        "{message}"
    );
    let (_, v) = call(&exec("local-exec")).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
}

/// A pod that asks for Vault's agent and Rotor's sidecar is injected,
/// with a warning naming both annotations; Vault's annotation set to
/// "false" draws none.
#[tokio::test]
async fn both_injectors_on_one_pod_draw_a_warning() {
    let with_vault = |value: &'static str| {
        review_with(move |v| {
            v["request"]["object"]["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"] =
                Value::String(value.into());
        })
    };
    let (_, v) = call(&with_vault("true")).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert!(v["response"]["patch"].is_string(), "{v}");
    let warnings = v["response"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    let warning = warnings[0].as_str().unwrap();
    assert!(
        warning.contains("vault.hashicorp.com/agent-inject")
            && warning.contains("rotor.dev/inject")
            && warning.contains("rotor migrate vault-injector"),
        "{warning}"
    );
    let (_, v) = call(&with_vault("false")).await;
    assert!(v["response"]["warnings"].is_null(), "{v}");
}

/// The inject fixture's pod as the webhook injected it.
async fn injected_pod() -> Value {
    let review = include_str!("fixtures/inject.json");
    let (_, v) = call(review).await;
    patched(review, &v)
}

/// An UPDATE of a pod's annotations, old → new, on `spec` (a pod's spec
/// cannot change, so both have it).
fn update_of(spec: &Value, old: &[(&str, &str)], new: &[(&str, &str)], namespace: &str) -> String {
    let pod = |pairs: &[(&str, &str)]| {
        let mut annotations: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        annotations.insert("rotor.dev/status".into(), "injected".into());
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "app", "namespace": namespace, "annotations": annotations },
            "spec": spec,
        })
    };
    review_with(|v| {
        let r = &mut v["request"];
        r["operation"] = "UPDATE".into();
        r["namespace"] = namespace.into();
        r["object"] = pod(new);
        r["oldObject"] = pod(old);
    })
}

/// An UPDATE of a running injected pod's annotations, old → new.
async fn update(old: &[(&str, &str)], new: &[(&str, &str)], namespace: &str) -> String {
    update_of(&injected_pod().await["spec"], old, new, namespace)
}

/// Annotations changed on a running pod are applied live by the sidecar,
/// so they pass the rules CREATE applies; what cannot change is refused.
#[tokio::test]
async fn annotation_updates_pass_the_same_rules_as_create() {
    let base: &[(&str, &str)] = &[
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "shared-vault"),
        ("rotor.dev/secret.db", "apps/team-a/db"),
    ];
    // Another team's secret, past the ClusterRotorStore's path rules.
    let stolen = [base, &[("rotor.dev/secret.stolen", "apps/team-b/prod-db")]].concat();
    let (_, v) = call(&update(base, &stolen, "team-a").await).await;
    let message = denial(&v);
    assert!(
        message.contains("does not allow secret \"apps/team-b/prod-db\""),
        "{message}"
    );
    // An allowed change: admitted, and nothing patched.
    let faster = [base, &[("rotor.dev/refresh", "10s")]].concat();
    let (_, v) = call(&update(base, &faster, "team-a").await).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert!(v["response"]["patch"].is_null());
    // A bad value, as CREATE would say.
    let bad = [base, &[("rotor.dev/refresh", "never")]].concat();
    let (_, v) = call(&update(base, &bad, "team-a").await).await;
    assert!(denial(&v).contains("annotation rotor.dev/refresh"));
    // The store cannot change under a running sidecar.
    let moved = [
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "local"),
        ("rotor.dev/secret.db", "apps/team-a/db"),
    ];
    let (_, v) = call(&update(base, &moved, "team-a").await).await;
    assert!(
        denial(&v).contains("annotation rotor.dev/store cannot change on a running pod"),
        "{v}"
    );
    // Other updates (a label, the same annotations) pass untouched.
    let (_, v) = call(&update(base, base, "team-a").await).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
}

/// The denial's typed reason and message.
fn reason_and_message(v: &Value) -> (String, String) {
    let message = denial(v);
    let reason = v["response"]["status"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (reason, message)
}

/// A running pod without Rotor's sidecar cannot be made to look like a
/// consumer later (`kubectl annotate pod decoy rotor.dev/inject=true
/// rotor.dev/store=... rotor.dev/secret.db=...`), in one edit or key by key.
#[tokio::test]
async fn annotating_a_plain_pod_later_is_refused() {
    let plain = serde_json::json!({ "containers": [{ "name": "app", "image": "example/app:1" }] });
    let decoy: &[(&str, &str)] = &[
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "shared-vault"),
        ("rotor.dev/secret.db", "apps/team-a/db"),
    ];
    let (_, v) = call(&update_of(&plain, &[], decoy, "team-a")).await;
    let (reason, message) = reason_and_message(&v);
    assert_eq!(reason, "RotorAnnotationFixed", "{v}");
    assert!(
        message.starts_with("annotation rotor.dev/inject cannot be added to a running pod")
            && message.contains("the pod's spec cannot change after creation")
            && message.contains("recreate the pod through its controller"),
        "{message}"
    );
    let (_, v) = call(&update_of(&plain, &[], &decoy[1..], "team-a")).await;
    assert!(denial(&v).starts_with("annotation rotor.dev/store cannot be added"));
    // A secret alone, on a pod that opted out or never opted in.
    for old in [&[("rotor.dev/inject", "false")][..], &[]] {
        let new = [old, &decoy[2..]].concat();
        let (_, v) = call(&update_of(&plain, old, &new, "team-a")).await;
        let (reason, message) = reason_and_message(&v);
        assert_eq!(reason, "RotorNoSidecar", "{v}");
        assert!(
            message.starts_with(
                "annotation rotor.dev/secret.db cannot be added to a pod without Rotor's sidecar"
            ),
            "{message}"
        );
    }
}

/// `rotor.dev/inject` and `rotor.dev/store` cannot be taken away from an
/// injected pod, alone or with every other Rotor annotation; secrets can.
#[tokio::test]
async fn removing_inject_or_store_from_an_injected_pod_is_refused() {
    let base: &[(&str, &str)] = &[
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "shared-vault"),
        ("rotor.dev/secret.db", "apps/team-a/db"),
        ("rotor.dev/secret.api", "apps/team-a/api"),
    ];
    for (key, new) in [
        ("rotor.dev/inject", &base[1..]),
        ("rotor.dev/store", &[base[0], base[2], base[3]][..]),
        ("rotor.dev/inject", &[][..]),
    ] {
        let (_, v) = call(&update(base, new, "team-a").await).await;
        let (reason, message) = reason_and_message(&v);
        assert_eq!(reason, "RotorAnnotationFixed", "{v}");
        assert!(
            message.starts_with(&format!(
                "annotation {key} cannot be removed from a running pod"
            )),
            "{message}"
        );
    }
    let (_, v) = call(&update(base, &base[..3], "team-a").await).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
}

/// A pod that brings its own container or volume under Rotor's names is
/// refused, naming the conflict; Rotor's own earlier injection is not.
#[tokio::test]
async fn rotor_names_are_reserved() {
    let (_, v) = call(&review_with(|v| {
        v["request"]["object"]["spec"]["initContainers"] = serde_json::json!([{
            "name": "rotor-sidecar",
            "image": "attacker/image:1",
            "args": ["--vault-addr=https://attacker.example"],
            "securityContext": { "privileged": true, "runAsUser": 0 },
        }]);
    }))
    .await;
    let message = denial(&v);
    assert!(
        message.contains("init container named \"rotor-sidecar\" that differs"),
        "{message}"
    );
    let (_, v) = call(&review_with(|v| {
        v["request"]["object"]["spec"]["volumes"] = serde_json::json!([{
            "name": "rotor-secrets",
            "hostPath": { "path": "/etc" },
        }]);
    }))
    .await;
    let message = denial(&v);
    assert!(
        message.contains("volume named \"rotor-secrets\" that is not the one Rotor injects"),
        "{message}"
    );
    // The pod as Rotor injected it passes a second time, unchanged.
    let review = include_str!("fixtures/inject.json");
    let (_, first) = call(review).await;
    let injected = patched(review, &first);
    let again = review_with(|v| v["request"]["object"] = injected.clone());
    let (_, v) = call(&again).await;
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert!(v["response"]["patch"].is_null(), "{v}");
}

/// No push port on the pod IP: the sidecar dials the controller, with
/// the CA bundle in canonical PEM, a 600 s projected token of Rotor's
/// audience, and the pod's name, namespace and uid from the downward API.
#[tokio::test]
async fn the_sidecar_dials_the_controller_and_listens_on_no_pod_ip() {
    let review = include_str!("fixtures/inject.json");
    let (_, v) = call(review).await;
    let pod = patched(review, &v);
    let args = sidecar_args(&pod);
    assert!(
        !args.iter().any(|a| a.starts_with("--push-addr")),
        "{args:?}"
    );
    assert!(
        args.contains(&"--controller-addr=rotor-webhook.rotor-system.svc:9466".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--channel-token=/var/run/rotor/channel/token".to_owned()),
        "{args:?}"
    );
    let sidecar = &pod["spec"]["initContainers"][0];
    let ports: Vec<&Value> = sidecar["ports"].as_array().unwrap().iter().collect();
    assert_eq!(ports.len(), 1, "only the admin port: {ports:?}");
    assert_eq!(ports[0]["name"], "admin");
    let env = sidecar["env"].as_array().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(field("ROTOR_POD_NAME"), Some("metadata.name".into()));
    assert_eq!(
        field("ROTOR_POD_NAMESPACE"),
        Some("metadata.namespace".into())
    );
    assert_eq!(field("ROTOR_POD_UID"), Some("metadata.uid".into()));
    assert_eq!(field("ROTOR_POD_IP"), None);
    let ca = env
        .iter()
        .find(|e| e["name"] == "ROTOR_CONTROLLER_CA_PEM")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----\n"), "{ca}");
    assert!(
        !ca.contains('\r') && ca.ends_with("-----END CERTIFICATE-----\n"),
        "{ca}"
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "rotor-channel-token")
        .unwrap();
    let token = &volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "rotor.dev/channel");
    assert_eq!(token["expirationSeconds"], 600);
    assert!(
        sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "rotor-channel-token"
                && m["mountPath"] == "/var/run/rotor/channel"
                && m["readOnly"] == true)
    );
    // App containers never mount the token.
    for c in pod["spec"]["containers"].as_array().unwrap() {
        assert!(
            !c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["name"] == "rotor-channel-token"),
            "{c}"
        );
    }
}

/// A controller whose CA bundle cannot be read refuses to inject, saying
/// which file, rather than injecting a sidecar that can never connect.
#[tokio::test]
async fn an_unreadable_ca_bundle_is_a_denial_naming_the_file() {
    let config = InjectConfig {
        channel: Some(ChannelInjection {
            controller_addr: "c:9466".into(),
            ca: CaSource::File("/nonexistent/rotor/ca.crt".into()),
        }),
        ..InjectConfig::default()
    };
    let (_, v) = call_with(config, include_str!("fixtures/inject.json")).await;
    let message = denial(&v);
    assert!(message.contains("/nonexistent/rotor/ca.crt"), "{message}");
}
