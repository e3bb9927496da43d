//! What may change on a pod after creation, against a real API server
//! with `rotor-controller run` as the webhook: a plain pod annotated later
//! never becomes one Rotor serves, `rotor.dev/inject` and `rotor.dev/store`
//! cannot be removed from an injected pod, the pod subresources that write
//! annotations or containers without a pod UPDATE (`pods/status`,
//! `pods/binding`, `pods/ephemeralcontainers`) are refused by the
//! ValidatingAdmissionPolicy `deploy/` installs, and with the webhook down
//! opting out never depends on Rotor.
//!
//! One scenario, in order: the webhook is cluster-wide and the last step
//! stops it.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use rotor_contract::api::RotorStore;
use rotor_e2e::cluster::{ControlPlane, Controller, eventually, installed, point_webhook_at};

/// A pod as a Deployment would make it.
fn pod(name: &str, annotations: &[(&str, &str)]) -> Pod {
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            // What the ServiceAccount admission plugin (off in the harness)
            // sets; the channel's projected token needs it.
            "serviceAccountName": "default",
            "securityContext": { "runAsUser": 1000 },
            "containers": [{ "name": "app", "image": "nginx:1.27" }],
        },
    }))
    .unwrap()
}

const INJECT: &[(&str, &str)] = &[
    ("rotor.dev/inject", "true"),
    ("rotor.dev/store", "local"),
    ("rotor.dev/secret.db", "app/db"),
];

/// `kubectl <args>`: `Ok(stdout)` or `Err(stderr)`.
fn kubectl(plane: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = plane.kubectl().args(args).output().expect("run kubectl");
    let (stdout, stderr) = rotor_e2e::text(&out);
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

fn refused(result: Result<String, String>, what: &str) -> String {
    result.expect_err(&format!("{what} was accepted"))
}

/// The stored pod's `rotor.dev/` annotations.
async fn rotor_annotations(pods: &Api<Pod>, name: &str) -> BTreeMap<String, String> {
    let pod = pods.get(name).await.unwrap();
    pod.annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("rotor.dev/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn what_may_change_after_creation_and_no_path_around_the_webhook() {
    let plane = installed();
    let client = plane.client().await;
    let port = rotor_e2e::free_port();
    point_webhook_at(plane, port);
    let mut controller = Controller::start_at(plane, "admission", port, &[]).await;
    controller.wait_serving();
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let ca_set = eventually(30, || async {
        webhooks.get("rotor-webhook").await.is_ok_and(|w| {
            w.webhooks.unwrap_or_default()[0]
                .client_config
                .ca_bundle
                .as_ref()
                .is_some_and(|b| !b.0.is_empty())
        })
    })
    .await;
    assert!(ca_set, "no caBundle: {}", controller.log());

    let ns = plane.namespace("admission").await;
    let store: RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": "local" },
        "spec": { "provider": { "local": {
            "path": "/var/lib/rotor/store.rotor", "keyPath": "/etc/rotor/key/kek",
        } } },
    }))
    .unwrap();
    Api::<RotorStore>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &store)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let admitted = eventually(30, || async {
        pods.create(&PostParams::default(), &pod("app", INJECT))
            .await
            .is_ok()
    })
    .await;
    assert!(
        admitted,
        "the injected pod was never admitted: {}",
        controller.log()
    );
    let app = pods.get("app").await.unwrap();
    assert!(
        app.spec.unwrap().init_containers.unwrap_or_default()[0].name == "rotor-sidecar",
        "not injected"
    );

    eprintln!("step: the annotate-later decoy");
    pods.create(&PostParams::default(), &pod("decoy", &[]))
        .await
        .expect("a plain pod needs no webhook");
    let err = refused(
        kubectl(
            plane,
            &[
                "annotate",
                "-n",
                &ns,
                "pod",
                "decoy",
                "rotor.dev/inject=true",
                "rotor.dev/store=local",
                "rotor.dev/secret.db=app/db",
            ],
        ),
        "annotating a plain pod as a consumer",
    );
    assert!(
        err.contains("RotorAnnotationFixed")
            && err.contains("annotation rotor.dev/inject cannot be added to a running pod")
            && err.contains("recreate the pod through its controller"),
        "{err}"
    );
    let err = refused(
        kubectl(
            plane,
            &[
                "annotate",
                "-n",
                &ns,
                "pod",
                "decoy",
                "rotor.dev/secret.db=app/db",
            ],
        ),
        "a secret on a pod without the sidecar",
    );
    assert!(
        err.contains(
            "annotation rotor.dev/secret.db cannot be added to a pod without Rotor's sidecar"
        ),
        "{err}"
    );
    assert!(rotor_annotations(&pods, "decoy").await.is_empty());

    eprintln!("step: inject and store stay");
    for key in ["rotor.dev/inject", "rotor.dev/store"] {
        let err = refused(
            kubectl(
                plane,
                &["annotate", "-n", &ns, "pod", "app", &format!("{key}-")],
            ),
            &format!("removing {key}"),
        );
        assert!(
            err.contains(&format!(
                "annotation {key} cannot be removed from a running pod"
            )),
            "{err}"
        );
    }
    let err = refused(
        kubectl(
            plane,
            &[
                "annotate",
                "--overwrite",
                "-n",
                &ns,
                "pod",
                "app",
                "rotor.dev/store=other",
            ],
        ),
        "changing the store",
    );
    assert!(
        err.contains("annotation rotor.dev/store cannot change on a running pod"),
        "{err}"
    );
    let kept = rotor_annotations(&pods, "app").await;
    assert_eq!(
        kept.get("rotor.dev/inject").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        kept.get("rotor.dev/store").map(String::as_str),
        Some("local")
    );
    // Live changes the sidecar applies still pass.
    kubectl(
        plane,
        &["annotate", "-n", &ns, "pod", "app", "rotor.dev/refresh=10s"],
    )
    .expect("a refresh change on the injected pod");

    eprintln!("step: pod subresources");
    let status_patch = |annotations: serde_json::Value| {
        let body = serde_json::json!({ "metadata": { "annotations": annotations } }).to_string();
        kubectl(
            plane,
            &[
                "patch",
                "-n",
                &ns,
                "pod",
                "app",
                "--subresource=status",
                "--type=merge",
                "-p",
                &body,
            ],
        )
    };
    for (what, annotations) in [
        (
            "an exec reload",
            serde_json::json!({ "rotor.dev/reload": "exec:/bin/sh -c id" }),
        ),
        (
            "another secret path",
            serde_json::json!({ "rotor.dev/secret.db": "team-b/db" }),
        ),
        (
            "a removed store",
            serde_json::json!({ "rotor.dev/store": null }),
        ),
    ] {
        let err = refused(status_patch(annotations), what);
        assert!(
            err.contains("rotor-pod-subresources")
                && err.contains("pods/status cannot add, change or remove rotor.dev/ annotations"),
            "{what}: {err}"
        );
    }
    assert_eq!(rotor_annotations(&pods, "app").await, {
        let mut k = kept.clone();
        k.insert("rotor.dev/refresh".into(), "10s".into());
        k
    });
    // What the kubelet writes (status, other annotations) still passes.
    let body = serde_json::json!({
        "metadata": { "annotations": { "example.com/note": "x" } },
        "status": { "podIP": "10.0.0.9" },
    })
    .to_string();
    kubectl(
        plane,
        &[
            "patch",
            "-n",
            &ns,
            "pod",
            "app",
            "--subresource=status",
            "--type=merge",
            "-p",
            &body,
        ],
    )
    .expect("a status update without Rotor's annotations");

    let ephemeral = |name: &str, extra: serde_json::Value| {
        let mut c = serde_json::json!({ "name": name, "image": "busybox:1" });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let body = serde_json::json!({ "spec": { "ephemeralContainers": [c] } }).to_string();
        kubectl(
            plane,
            &[
                "patch",
                "-n",
                &ns,
                "pod",
                "app",
                "--subresource=ephemeralcontainers",
                "--type=strategic",
                "-p",
                &body,
            ],
        )
    };
    for (name, extra) in [
        (
            "peek",
            serde_json::json!({ "targetContainerName": "rotor-sidecar" }),
        ),
        (
            "mount",
            serde_json::json!({ "volumeMounts": [{ "name": "rotor-secrets", "mountPath": "/s" }] }),
        ),
    ] {
        let err = refused(ephemeral(name, extra), name);
        assert!(
            err.contains("an ephemeral container on a pod with Rotor's sidecar cannot target"),
            "{name}: {err}"
        );
    }
    ephemeral("debug", serde_json::json!({ "targetContainerName": "app" }))
        .expect("an ephemeral container for the app");

    let binding = |pod: &str, annotations: serde_json::Value| {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": { "name": pod, "annotations": annotations },
            "target": { "kind": "Node", "name": "node-1" },
        });
        let out = rotor_e2e::output_with_stdin(
            plane.kubectl().args([
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/pods/{pod}/binding"),
                "-f",
                "-",
            ]),
            body.to_string().as_bytes(),
        );
        let (stdout, stderr) = rotor_e2e::text(&out);
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(stderr)
        }
    };
    let err = refused(
        binding(
            "app",
            serde_json::json!({ "rotor.dev/reload": "exec:/bin/sh -c id" }),
        ),
        "a binding with Rotor's annotations",
    );
    assert!(
        err.contains("pods/binding cannot set rotor.dev/ annotations"),
        "{err}"
    );
    assert!(
        !rotor_annotations(&pods, "app")
            .await
            .contains_key("rotor.dev/reload")
    );

    eprintln!("step: webhook down");
    controller.stop();
    for (name, annotations) in [
        ("plain", &[][..]),
        ("opted-out", &[("rotor.dev/inject", "false")][..]),
        (
            "opted-out-with-secrets",
            &[
                ("rotor.dev/inject", "false"),
                ("rotor.dev/secret.db", "app/db"),
            ][..],
        ),
    ] {
        pods.create(&PostParams::default(), &pod(name, annotations))
            .await
            .unwrap_or_else(|e| panic!("{name} was refused with the webhook down: {e}"));
    }
    let err = pods
        .create(&PostParams::default(), &pod("asks", INJECT))
        .await
        .expect_err("a pod asking for injection with the webhook down");
    assert!(err.to_string().contains("failed calling webhook"), "{err}");
    // The subresource policy runs in the API server: it holds without Rotor.
    let err = refused(
        status_patch(serde_json::json!({ "rotor.dev/reload": "exec:/bin/sh -c id" })),
        "pods/status with the webhook down",
    );
    assert!(
        err.contains("pods/status cannot add, change or remove"),
        "{err}"
    );
}
