//! charts/rotor against a real API server: `helm install` (into a namespace
//! made as the README says), `rotor-controller run` authenticated as the
//! chart's ServiceAccount starts and serves with the chart's RBAC, `helm
//! upgrade` to changed values keeps the controller's caBundle, and `helm
//! uninstall` leaves nothing behind but the CRDs (Helm never deletes
//! crds/): the Secret and Lease the controller made are owned by its
//! ServiceAccount, and the garbage collector (kube-controller-manager with
//! only that controller) deletes them with it.
//!
//! One scenario, in order: each step needs the cluster the previous one
//! left. This binary has its own API server (`ControlPlane::shared`), and
//! installs with Helm instead of kustomize.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use rotor_contract::api::RotorStore;
use rotor_e2e::cluster::{ControlPlane, Controller, eventually};
use rotor_e2e::tools;

/// `helm <args>` against the control plane as admin; panics unless it
/// succeeds; returns stdout.
fn helm(plane: &ControlPlane, home: &Path, args: &[&str]) -> String {
    rotor_e2e::stdout_ok(
        tools::helm(home)
            .arg(format!("--kubeconfig={}", plane.kubeconfig.display()))
            .args(args),
        &format!("helm {}", args.join(" ")),
    )
}

/// `kind/name` (with `-n ns` for namespaced ones) of every object in a
/// manifest stream, for `kubectl get`.
fn objects_of(manifest: &str) -> Vec<(String, Option<String>)> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(manifest)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|d| {
            let kind = d["kind"].as_str().unwrap().to_lowercase();
            let name = d["metadata"]["name"].as_str().unwrap();
            let group = d["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map(|(g, _)| format!(".{g}"))
                .unwrap_or_default();
            (
                format!("{kind}{group}/{name}"),
                d["metadata"]["namespace"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// `kubectl get` of one object: `Some(output)` or `None` when not found.
fn get(plane: &ControlPlane, object: &str, namespace: Option<&str>) -> Option<String> {
    let mut cmd = plane.kubectl();
    cmd.args(["get", object, "-o", "name", "--ignore-not-found"]);
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = rotor_e2e::text(&out);
    assert!(out.status.success(), "kubectl get {object}: {stderr}");
    (!stdout.trim().is_empty()).then_some(stdout)
}

fn ca_bundle(webhook: &MutatingWebhookConfiguration) -> Option<Vec<u8>> {
    webhook.webhooks.as_ref()?[0]
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .filter(|b| !b.is_empty())
}

/// Every object of every listable namespaced kind in `ns`, less Events.
fn everything_in(plane: &ControlPlane, ns: &str) -> BTreeSet<String> {
    let kinds = plane.kubectl_ok(&[
        "api-resources",
        "--verbs=list",
        "--namespaced",
        "-o",
        "name",
    ]);
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.starts_with("events")).collect();
    let all = plane.kubectl_ok(&["get", &kinds.join(","), "-n", ns, "-o", "name"]);
    all.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn helm_install_serve_upgrade_and_uninstall() {
    let plane = ControlPlane::shared();
    plane.garbage_collector();
    let client = plane.client().await;
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let chart = rotor_e2e::workspace_root().join("charts/rotor");
    let chart = chart.to_str().unwrap();

    // The namespace, as the chart's README says to make it.
    plane
        .create_namespace(
            "rotor-system",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
    let out = helm(
        plane,
        home,
        &["install", "rotor", chart, "--namespace", "rotor-system"],
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    plane.wait_for_crds();
    let manifest = helm(
        plane,
        home,
        &["get", "manifest", "rotor", "-n", "rotor-system"],
    );
    let installed = objects_of(&manifest);
    assert!(installed.len() >= 10, "{installed:?}");
    for (object, ns) in &installed {
        assert!(
            get(plane, object, ns.as_deref()).is_some(),
            "{object} was not installed"
        );
    }

    // The controller, as the chart's ServiceAccount: serves, sets the
    // caBundle, takes the Lease, and writes store status.
    let mut controller = Controller::start(plane, "chart-replica", &[]).await;
    controller.wait_serving();
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let ok = eventually(60, || async {
        webhooks
            .get("rotor-webhook")
            .await
            .ok()
            .and_then(|w| ca_bundle(&w))
            .is_some()
    })
    .await;
    assert!(ok, "no caBundle: {}", controller.log());
    let bundle = ca_bundle(&webhooks.get("rotor-webhook").await.unwrap()).unwrap();
    // The webhook answers over HTTPS with the certificate whose CA it set.
    let ca = controller.dir.path().join("ca.pem");
    std::fs::write(&ca, &bundle).unwrap();
    let url = format!("https://127.0.0.1:{}/healthz", controller.webhook_port);
    let ok = eventually(30, || async {
        std::process::Command::new("curl")
            .args(["--silent", "--fail", "--cacert"])
            .arg(&ca)
            .arg(&url)
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    assert!(ok, "{url} did not answer: {}", controller.log());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "rotor-system");
    let ok = eventually(60, || async {
        leases
            .get("rotor-controller-leader")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .is_some_and(|h| h == "chart-replica")
    })
    .await;
    assert!(ok, "the Lease was not taken: {}", controller.log());
    let ns = plane.namespace("chart-stores").await;
    let stores: Api<RotorStore> = Api::namespaced(client.clone(), &ns);
    let store: RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": "local" },
        "spec": { "provider": { "local": { "path": "/var/lib/rotor/s.rotor", "keyPath": "/etc/rotor/key/kek" } } },
    }))
    .unwrap();
    stores.create(&PostParams::default(), &store).await.unwrap();
    let ok = eventually(60, || async {
        stores
            .get("local")
            .await
            .ok()
            .and_then(|s| s.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
    })
    .await;
    assert!(ok, "no Ready status on the store: {}", controller.log());
    let log = controller.full_log();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "the chart's RBAC refused the controller something: {log}"
    );
    // What the controller made is owned by the chart's ServiceAccount.
    let account = plane.kubectl_ok(&[
        "get",
        "serviceaccount/rotor-controller",
        "-n",
        "rotor-system",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    for object in ["secret/rotor-webhook-tls", "lease/rotor-controller-leader"] {
        let owner = plane.kubectl_ok(&[
            "get",
            object,
            "-n",
            "rotor-system",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].uid}",
        ]);
        assert_eq!(
            owner,
            format!("ServiceAccount/rotor-controller/{account}"),
            "{object}"
        );
    }

    // Upgrade to changed values: applied, and the controller's caBundle
    // survives Helm's three-way merge.
    let out = helm(
        plane,
        home,
        &[
            "upgrade",
            "rotor",
            chart,
            "--namespace",
            "rotor-system",
            "--set",
            "replicaCount=3,webhook.timeoutSeconds=10,webhook.excludedNamespaces={kube-system,monitoring},sidecar.mountPath=/var/run/app-secrets,networkPolicy.enabled=false,metrics.service.enabled=true,logFormat=text",
        ],
    );
    assert!(
        out.contains("STATUS: deployed") && out.contains("REVISION: 2"),
        "{out}"
    );
    let replicas = plane.kubectl_ok(&[
        "get",
        "deployment/rotor-controller",
        "-n",
        "rotor-system",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args}",
    ]);
    assert!(replicas.starts_with("3 "), "{replicas}");
    assert!(
        replicas.contains("--mount-path=/var/run/app-secrets"),
        "{replicas}"
    );
    let hook = webhooks.get("rotor-webhook").await.unwrap();
    let w = &hook.webhooks.as_ref().unwrap()[0];
    assert_eq!(w.timeout_seconds, Some(10));
    let selector = serde_json::to_string(&w.namespace_selector).unwrap();
    assert!(selector.contains("monitoring"), "{selector}");
    assert_eq!(
        ca_bundle(&hook).as_deref(),
        Some(&bundle[..]),
        "helm upgrade dropped the caBundle"
    );
    assert!(
        get(
            plane,
            "networkpolicy/rotor-controller",
            Some("rotor-system")
        )
        .is_none()
    );
    assert!(
        get(
            plane,
            "service/rotor-controller-metrics",
            Some("rotor-system")
        )
        .is_some()
    );
    let upgraded = objects_of(&helm(
        plane,
        home,
        &["get", "manifest", "rotor", "-n", "rotor-system"],
    ));

    // Uninstall: the controller stops first, as its pods would.
    controller.stop();
    let out = helm(
        plane,
        home,
        &["uninstall", "rotor", "--namespace", "rotor-system"],
    );
    assert!(out.contains("uninstalled"), "{out}");
    for (object, ns) in installed.iter().chain(&upgraded) {
        let gone = eventually(60, || async { get(plane, object, ns.as_deref()).is_none() }).await;
        assert!(gone, "{object} is left after helm uninstall");
    }
    for crd in [
        "crd/rotorstores.rotor.dev",
        "crd/clusterrotorstores.rotor.dev",
        "crd/secretrotationpolicies.rotor.dev",
    ] {
        assert!(get(plane, crd, None).is_some(), "{crd} was deleted");
    }
    // Cluster-wide, nothing of Rotor's but the CRDs.
    for kind in [
        "clusterroles",
        "clusterrolebindings",
        "mutatingwebhookconfigurations",
    ] {
        let left = plane.kubectl_ok(&["get", kind, "-o", "name"]);
        assert!(!left.contains("rotor"), "{kind} left: {left}");
    }
    // In the namespace: nothing. The garbage collector removes what the
    // controller made once its ServiceAccount is gone.
    let empty = eventually(120, || async {
        everything_in(plane, "rotor-system").is_empty()
    })
    .await;
    assert!(
        empty,
        "left in rotor-system after helm uninstall: {:?}\n{}",
        everything_in(plane, "rotor-system"),
        plane.controller_manager_log()
    );
}
