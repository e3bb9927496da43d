//! deploy/: kustomize renders it, every object validates strictly against
//! Kubernetes' schemas, checkov finds nothing (skips are justified inline),
//! RBAC matches its golden file, the examples parse as Rotor's types, and
//! the pod the webhook produces from the example passes checkov too.

use std::path::PathBuf;
use std::process::Command;

use rotor_e2e::servers::{checkov, venv_bin};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn render() -> String {
    render_dir("deploy")
}

fn render_dir(dir: &str) -> String {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(dir))
        .output()
        .expect("kubectl (with kustomize) is needed for these tests");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn kustomize_renders_and_every_object_validates_strictly() {
    let rendered = render();
    let kinds: Vec<String> = docs(&rendered)
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "CustomResourceDefinition",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let mut files = vec![file];
    files.push(root().join("deploy/examples/app-deployment.yaml"));
    for f in files {
        let out = Command::new(venv_bin("kubernetes-validate"))
            .arg("--strict")
            .arg(&f)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{}:\n{text}",
            f.display()
        );
    }
}

#[test]
fn the_webhook_and_deployment_are_configured_safely() {
    let rendered = docs(&render());
    let hook = rendered
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    let w = &hook["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert!(w["timeoutSeconds"].as_u64().unwrap() <= 10);
    let excluded = serde_yaml_ng::to_string(&w["namespaceSelector"]).unwrap();
    assert!(
        excluded.contains("rotor-system") && excluded.contains("kube-system"),
        "{excluded}"
    );
    let deploy = rendered.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
}

/// The subresource policy names Rotor's containers and volumes as the
/// webhook does (`rotor_controller::pod_injection`), and is bound to deny.
#[test]
fn the_subresource_policy_uses_rotors_names_and_denies() {
    use rotor_controller::pod_injection::{RESERVED_PREFIX, SIDECAR};
    let rendered = docs(&render());
    let policy = rendered
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let text = serde_yaml_ng::to_string(&policy["spec"]).unwrap();
    for needle in [
        "pods/status",
        "pods/ephemeralcontainers",
        "pods/binding",
        &format!("'{SIDECAR}'"),
        &format!("startsWith('{RESERVED_PREFIX}')"),
        "startsWith('rotor.dev/')",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert!(rotor_contract::annotations::PREFIX == "rotor.dev/");
    let binding = rendered
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap();
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
}

#[test]
fn checkov_passes_on_the_base_and_the_cert_manager_overlay() {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml) in [
        ("base.yaml", render()),
        ("cert-manager.yaml", render_dir("deploy/cert-manager")),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        checkov(&file, &[]);
    }
}

#[test]
fn the_cert_manager_overlay_mounts_the_certificate_and_injects_the_ca() {
    let rendered = docs(&render_dir("deploy/cert-manager"));
    let deploy = rendered.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        spec["volumes"][0]["secret"]["secretName"],
        "rotor-webhook-tls"
    );
    let args = serde_yaml_ng::to_string(&spec["containers"][0]["args"]).unwrap();
    assert!(!args.contains("--self-managed-certs"), "{args}");
    let hook = rendered
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "rotor-system/rotor-webhook"
    );
    assert!(rendered.iter().any(|d| d["kind"] == "Certificate"));
}

#[test]
fn rbac_matches_the_golden_file() {
    let golden: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("tests/golden/rbac-rules.yaml")).unwrap(),
    )
    .unwrap();
    let mut rendered = serde_yaml_ng::Mapping::new();
    for d in docs(&render()) {
        let kind = d["kind"].as_str().unwrap();
        if kind == "ClusterRole" || kind == "Role" {
            let key = format!("{kind}/{}", d["metadata"]["name"].as_str().unwrap());
            rendered.insert(key.into(), d["rules"].clone());
        }
    }
    assert_eq!(
        rendered, golden,
        "deploy/ RBAC differs from tests/golden/rbac-rules.yaml; update the golden file only if the new permission is meant"
    );
    let all = serde_yaml_ng::to_string(&rendered).unwrap();
    // No cluster-wide read of Secrets.
    for d in docs(&render())
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
    {
        for rule in d["rules"].as_sequence().unwrap() {
            let grants_secrets = rule["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|r| r == "secrets" || r == "*");
            assert!(!grants_secrets, "a ClusterRole grants Secrets: {all}");
        }
    }
}

#[test]
fn examples_parse_as_rotor_types() {
    let read = |f: &str| std::fs::read_to_string(root().join("deploy/examples").join(f)).unwrap();
    let _: rotor_contract::api::RotorStore =
        serde_yaml_ng::from_str(&read("rotorstore.yaml")).unwrap();
    let _: rotor_contract::api::ClusterRotorStore =
        serde_yaml_ng::from_str(&read("clusterrotorstore.yaml")).unwrap();
    let p: rotor_contract::api::SecretRotationPolicy =
        serde_yaml_ng::from_str(&read("rotationpolicy.yaml")).unwrap();
    assert_eq!(p.spec.secret_name, "shop/db-password");
}

/// The example Deployment's pod, as the API server would send it to the
/// webhook, injected, then checked by checkov with a NetworkPolicy beside it.
#[test]
fn the_injected_pod_passes_checkov_pod_checks() {
    let stores = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("deploy/examples/rotorstore.yaml"),
        stores.path().join("s.yaml"),
    )
    .unwrap();
    let index = rotor_controller::store_index::StoreIndex::from_dir(stores.path()).unwrap();
    let deployment: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/examples/app-deployment.yaml")).unwrap(),
    )
    .unwrap();
    let template = &deployment["spec"]["template"];
    let mut pod: serde_json::Value = serde_json::to_value(template).unwrap();
    pod["apiVersion"] = "v1".into();
    pod["kind"] = "Pod".into();
    pod["metadata"]["name"] = "shop-1".into();
    pod["metadata"]["namespace"] = "shop".into();
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {}, "object": pod.clone()
        }
    });
    // With the channel as `run` injects it (token volume, CA, identity).
    let ca = rcgen::generate_simple_self_signed(vec!["rotor-webhook.rotor-system.svc".into()])
        .unwrap()
        .cert
        .pem();
    let config = rotor_controller::webhook::InjectConfig {
        image: "ghcr.io/rotor-dev/rotor-sidecar@sha256:1111111111111111111111111111111111111111111111111111111111111111".into(),
        channel: Some(rotor_controller::webhook::inject::ChannelInjection {
            controller_addr: "rotor-webhook.rotor-system.svc:9466".into(),
            ca: rotor_controller::webhook::inject::CaSource::Pem(ca),
        }),
        ..Default::default()
    };
    let (status, reply) =
        rotor_controller::webhook::review::handle(review.to_string().as_bytes(), &index, &config);
    assert_eq!(status, 200);
    assert_eq!(reply["response"]["allowed"], true, "{reply}");
    use base64::Engine as _;
    let patch: json_patch::Patch = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(reply["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    let policy = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "shop"}}, "policyTypes": ["Ingress"]}
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(
        &file,
        format!(
            "{}---\n{}",
            serde_yaml_ng::to_string(&pod).unwrap(),
            serde_yaml_ng::to_string(&policy).unwrap()
        ),
    )
    .unwrap();
    checkov(&file, &[]);
}
