//! `rotor-controller run` against a real API server, authenticated as its
//! own ServiceAccount: self-managed certificates and the caBundle, store
//! status by server-side apply, injection through the real admission chain,
//! the RBAC it may and may not use, and what happens when it is down.
//!
//! One scenario, in order: each step needs the cluster the previous one
//! left (the webhook is cluster-wide; the last step stops it).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rotor_contract::api::{ClusterRotorStore, RotorStore};
use rotor_e2e::cluster::{ControlPlane, Controller, eventually, installed, point_webhook_at};

/// A pod as a Deployment would make it; `annotations` may be empty.
fn pod(name: &str, annotations: &[(&str, &str)], run_as_user: Option<i64>) -> Pod {
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
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "securityContext": run_as_user.map(|u| serde_json::json!({ "runAsUser": u })),
            }],
        },
    }))
    .unwrap()
}

const INJECT: &[(&str, &str)] = &[
    ("rotor.dev/inject", "true"),
    ("rotor.dev/store", "local"),
    ("rotor.dev/secret.db-password", "app/db#password"),
];

fn local_store(name: &str, path: &str) -> RotorStore {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": name },
        "spec": { "provider": { "local": { "path": path, "keyPath": "/etc/rotor/key/kek" } } },
    }))
    .unwrap()
}

/// The message a refused create carries to the client.
fn refusal(result: Result<Pod, kube::Error>) -> String {
    match result {
        Ok(p) => panic!("admitted: {:?}", p.metadata.name),
        Err(kube::Error::Api(r)) => r.message,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn ready_condition(
    status: Option<&rotor_contract::api::RotorStoreStatus>,
) -> Option<(String, String)> {
    let c = status?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.message.clone()))
}

#[tokio::test]
async fn the_controller_in_a_real_cluster() {
    let plane = installed();
    let client = plane.client().await;
    let webhook_port = rotor_e2e::free_port();
    point_webhook_at(plane, webhook_port);
    let mut a = Controller::start_at(plane, "replica-a", webhook_port, &[]).await;

    eprintln!("step: self_managed_certificates");
    self_managed_certificates(plane, &client, &a).await;
    eprintln!("step: store_status");
    store_status(plane, &client).await;
    eprintln!("step: injection");
    injection(plane, &client).await;
    eprintln!("step: attacks");
    let running = attacks(plane, &client).await;
    eprintln!("step: least_privilege");
    least_privilege(plane, &a).await;
    eprintln!("step: metrics");
    build_and_process_metrics(&a);

    eprintln!("step: second replica");
    // A second replica reuses the certificate in the Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "rotor-system");
    let before = secrets.get("rotor-webhook-tls").await.unwrap();
    let mut b = Controller::start(plane, "replica-b", &[]).await;
    b.wait_serving();
    assert_eq!(b.serving_cert(), a.serving_cert(), "{}", b.log());
    let after = secrets.get("rotor-webhook-tls").await.unwrap();
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );

    // Nothing the controllers did was refused by RBAC.
    for c in [&a, &b] {
        let log = c.full_log();
        assert!(
            !log.contains("forbidden") && !log.contains("Forbidden"),
            "{} was refused something: {log}",
            c.identity
        );
    }

    eprintln!("step: stop");
    a.stop();
    b.stop();
    eprintln!("step: webhook_down");
    webhook_down(plane, &client, &running).await;
}

/// The controller creates `rotor-webhook-tls`, serves it, and puts its CA
/// into the webhook configuration.
async fn self_managed_certificates(plane: &ControlPlane, client: &kube::Client, a: &Controller) {
    a.wait_serving();
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let secret: Api<Secret> = Api::namespaced(client.clone(), "rotor-system");
    let ok = eventually(30, || async {
        let Ok(w) = webhooks.get("rotor-webhook").await else {
            return false;
        };
        w.webhooks.unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty())
    })
    .await;
    assert!(ok, "no caBundle: {}", a.log());
    let tls = secret.get("rotor-webhook-tls").await.expect("the Secret");
    let data = tls.data.unwrap();
    let ca = String::from_utf8(data["ca.crt"].0.clone()).unwrap();
    let webhook = webhooks.get("rotor-webhook").await.unwrap();
    let bundle = webhook.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    assert_eq!(String::from_utf8(bundle.0).unwrap(), ca);
    assert_eq!(
        String::from_utf8(data["tls.crt"].0.clone()).unwrap(),
        a.serving_cert()
    );
    let _ = plane;
}

/// RotorStore and ClusterRotorStore conditions, by server-side apply,
/// with the messages the README documents.
async fn store_status(plane: &ControlPlane, client: &kube::Client) {
    let ns = plane.namespace("stores").await;
    let stores: Api<RotorStore> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    stores
        .create(&pp, &local_store("good", "/var/lib/rotor/store.rotor"))
        .await
        .unwrap();
    stores
        .create(&pp, &local_store("relative", "store.rotor"))
        .await
        .unwrap();
    let cluster: Api<ClusterRotorStore> = Api::all(client.clone());
    let empty_paths: ClusterRotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "ClusterRotorStore",
        "metadata": { "name": format!("{ns}-no-paths") },
        "spec": {
            "allowedNamespaces": { "matchLabels": { "team": "a" } },
            "paths": [],
            "provider": { "aws": { "region": "eu-west-1" } },
        },
    }))
    .unwrap();
    cluster.create(&pp, &empty_paths).await.unwrap();

    let wanted = [
        ("good", "True", "the store's settings are complete"),
        (
            "relative",
            "False",
            "spec.provider.local.path \"store.rotor\" is not an absolute path without '..'",
        ),
    ];
    for (name, status, message) in wanted {
        let ok = eventually(30, || async {
            let s = stores.get(name).await.unwrap();
            ready_condition(s.status.as_ref()) == Some((status.to_owned(), message.to_owned()))
        })
        .await;
        let got = stores.get(name).await.unwrap();
        assert!(ok, "{name}: {:?}", ready_condition(got.status.as_ref()));
        assert_eq!(
            got.status.as_ref().unwrap().provider.as_deref(),
            Some("local")
        );
        // Written by server-side apply, under the controller's field manager.
        let managers: Vec<_> = got
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.subresource.as_deref() == Some("status"))
            .map(|m| (m.manager, m.operation))
            .collect();
        assert_eq!(
            managers,
            vec![(Some("rotor-controller".into()), Some("Apply".into()))]
        );
    }
    let name = format!("{ns}-no-paths");
    let ok = eventually(30, || async {
        let s = cluster.get(&name).await.unwrap();
        ready_condition(s.status.as_ref()).is_some_and(|(status, message)| {
            status == "False" && message.contains("spec.paths is empty, so no secret may be read")
        })
    })
    .await;
    assert!(
        ok,
        "{:?}",
        cluster
            .get(&name)
            .await
            .unwrap()
            .status
            .map(|s| s.conditions)
    );
}

/// Pods go through the real admission chain: injected, refused with the
/// annotation named, admitted with a warning when their user is unknown,
/// and unchanged by a second pass.
async fn injection(plane: &ControlPlane, client: &kube::Client) {
    let ns = plane.namespace("inject").await;
    let stores: Api<RotorStore> = Api::namespaced(client.clone(), &ns);
    stores
        .create(
            &PostParams::default(),
            &local_store("local", "/var/lib/rotor/store.rotor"),
        )
        .await
        .unwrap();
    // The webhook's store index learns of it through its watch.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    let ok = eventually(30, || async {
        pods.create(&pp, &pod("app", INJECT, Some(1000)))
            .await
            .is_ok()
    })
    .await;
    assert!(ok, "the annotated pod was never admitted");
    let stored = pods.get("app").await.unwrap();
    let spec = stored.spec.clone().unwrap();
    let init = spec.init_containers.clone().unwrap_or_default();
    let sidecars: Vec<_> = init.iter().filter(|c| c.name == "rotor-sidecar").collect();
    assert_eq!(sidecars.len(), 1, "{init:?}");
    assert_eq!(sidecars[0].restart_policy.as_deref(), Some("Always"));
    let sc = sidecars[0].security_context.clone().unwrap();
    assert_eq!(sc.run_as_user, Some(1000));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let volumes: Vec<String> = spec
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    for v in ["rotor-secrets", "rotor-podinfo", "rotor-sidecar-tmp"] {
        assert_eq!(volumes.iter().filter(|n| *n == v).count(), 1, "{volumes:?}");
    }
    let app = &spec.containers[0];
    assert!(
        app.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "rotor-secrets" && m.read_only == Some(true))
    );
    assert_eq!(
        stored
            .annotations()
            .get("rotor.dev/status")
            .map(String::as_str),
        Some("injected")
    );

    // A bad annotation: refused, and the client sees which one.
    let message = refusal(
        pods.create(
            &pp,
            &pod(
                "bad",
                &[INJECT, &[("rotor.dev/refresh", "never")]].concat(),
                Some(1000),
            ),
        )
        .await,
    );
    assert!(message.contains("denied the request"), "{message}");
    assert!(
        message.contains("annotation rotor.dev/refresh"),
        "{message}"
    );

    // A stock nginx pod with no securityContext: admitted, with a warning
    // kubectl prints, and its own securityContext untouched.
    let manifest = serde_json::to_string(&pod("nginx", INJECT, None)).unwrap();
    let out = rotor_e2e::output_with_stdin(
        plane.kubectl().args(["create", "-n", &ns, "-f", "-"]),
        manifest.as_bytes(),
    );
    let (stdout, stderr) = rotor_e2e::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("pod/nginx created"), "{stdout}");
    assert!(
        stderr.contains("Warning: rotor: the pod sets no runAsUser"),
        "{stderr}"
    );
    let nginx = pods.get("nginx").await.unwrap();
    let spec = nginx.spec.unwrap();
    assert!(
        spec.security_context
            .is_none_or(|s| s.run_as_user.is_none())
    );
    assert!(spec.containers[0].env.is_none());
    let sidecar = &spec.init_containers.unwrap()[0];
    assert_eq!(
        sidecar.security_context.as_ref().unwrap().run_as_user,
        Some(65532)
    );
    assert!(
        sidecar
            .args
            .as_ref()
            .unwrap()
            .contains(&"--default-file-mode=0444".to_owned())
    );

    // A second pass: another webhook at the same endpoint runs after ours
    // on the already injected pod; the stored pod has each part once.
    let second = second_pass_webhook(client, &ns).await;
    let twice = pods
        .create(&pp, &pod("twice", INJECT, Some(1000)))
        .await
        .expect("admitted through both passes");
    let spec = twice.spec.unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(init.len(), 1, "{init:?}");
    let volumes = spec.volumes.unwrap();
    assert_eq!(
        volumes.iter().filter(|v| v.name == "rotor-secrets").count(),
        1
    );
    assert_eq!(
        spec.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.name == "rotor-secrets")
            .count(),
        1
    );
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&second, &Default::default())
        .await
        .unwrap();
}

/// A copy of Rotor's webhook under another name, for one namespace, so
/// that the API server calls the endpoint twice per pod.
async fn second_pass_webhook(client: &kube::Client, ns: &str) -> String {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let ours = api.get("rotor-webhook").await.unwrap();
    let mut hook = ours.webhooks.unwrap()[0].clone();
    hook.name = "second-pass.rotor.dev".into();
    hook.namespace_selector = Some(
        serde_json::from_value(serde_json::json!({
            "matchLabels": { "kubernetes.io/metadata.name": ns }
        }))
        .unwrap(),
    );
    let name = format!("{ns}-second-pass");
    let config = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![hook]),
    };
    api.create(&PostParams::default(), &config).await.unwrap();
    name
}

/// What the controller's own ServiceAccount may not do, asked of the API
/// server with its token.
async fn least_privilege(plane: &ControlPlane, a: &Controller) {
    let admin = plane.client().await;
    let token = plane
        .token("rotor-system", "rotor-controller", &[], None)
        .await;
    let sa = plane.token_client(&token).await;
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    };
    forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .map(drop),
        "list Secrets in all namespaces",
    );
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), "rotor-system")
            .list(&ListParams::default())
            .await
            .map(drop),
        "list Secrets in its own namespace",
    );
    let other: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "someone-elses", "namespace": "rotor-system" },
        "stringData": { "k": "v" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), "rotor-system")
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), "rotor-system")
            .get("someone-elses")
            .await
            .map(drop),
        "read another Secret in its namespace",
    );
    let ns = plane.namespace("tenant").await;
    forbidden(
        Api::<Secret>::namespaced(sa.clone(), &ns)
            .get("anything")
            .await
            .map(drop),
        "read a Secret in another namespace",
    );
    // Its own certificate Secret it may read.
    Api::<Secret>::namespaced(sa.clone(), "rotor-system")
        .get("rotor-webhook-tls")
        .await
        .expect("its own Secret");
    // Another webhook configuration it may not touch.
    let foreign = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some("someone-elses-webhook".into()),
            ..Default::default()
        },
        webhooks: None,
    };
    Api::<MutatingWebhookConfiguration>::all(admin)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let patch = Patch::Merge(serde_json::json!({ "metadata": { "labels": { "x": "y" } } }));
    forbidden(
        Api::<MutatingWebhookConfiguration>::all(sa.clone())
            .patch("someone-elses-webhook", &PatchParams::default(), &patch)
            .await
            .map(drop),
        "patch another webhook configuration",
    );
    forbidden(
        Api::<Pod>::namespaced(sa, &ns)
            .create(&PostParams::default(), &pod("p", &[], Some(1000)))
            .await
            .map(drop),
        "create a pod",
    );
    let _ = a;
}

/// `kubectl annotate` (or label) a pod; `Err(stderr)` when refused.
fn annotate(plane: &ControlPlane, ns: &str, what: &str, pod: &str, kv: &str) -> Result<(), String> {
    let out = plane
        .kubectl()
        .args([what, "-n", ns, "pod", pod, kv, "--overwrite"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(rotor_e2e::text(&out).1)
    }
}

/// What a workload could do to Rotor through the API server: edit a
/// running pod's annotations past the store's path rules, or bring its
/// own container or volume under Rotor's names. Returns the running
/// (namespace, pod) it leaves.
async fn attacks(plane: &ControlPlane, client: &kube::Client) -> (String, String) {
    let ns = plane.namespace("attacks").await;
    plane.kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        &format!("rotor-test/shared={ns}"),
    ]);
    let shared: ClusterRotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "ClusterRotorStore",
        "metadata": { "name": format!("{ns}-shared") },
        "spec": {
            "allowedNamespaces": { "matchLabels": { "rotor-test/shared": ns } },
            "paths": [{ "namespace": "*", "patterns": ["{namespace}/**"] }],
            "provider": { "vault": {
                "server": "https://vault.example:8200",
                "auth": { "kubernetes": { "role": "apps" } },
            } },
        },
    }))
    .unwrap();
    Api::<ClusterRotorStore>::all(client.clone())
        .create(&PostParams::default(), &shared)
        .await
        .unwrap();
    let store = format!("{ns}-shared");
    let secret = format!("{ns}/db");
    let annotations = [
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", store.as_str()),
        ("rotor.dev/secret.db", secret.as_str()),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The ServiceAccount admission plugin, which would fill this in, is
    // off in the harness: Vault auth projects a token of this account.
    plane.service_account(&ns, "app").await;
    let with_account = |name: &str, annotations: &[(&str, &str)]| {
        let mut p = pod(name, annotations, Some(1000));
        p.spec.as_mut().unwrap().service_account_name = Some("app".into());
        p
    };
    let last = std::sync::Mutex::new(String::new());
    let ok = eventually(30, || async {
        let created = pods
            .create(&PostParams::default(), &with_account("app", &annotations))
            .await;
        if let Err(e) = &created {
            *last.lock().unwrap() = e.to_string();
        }
        created.is_ok()
    })
    .await;
    assert!(
        ok,
        "the pod on the cluster store was never admitted: {}",
        last.lock().unwrap()
    );

    // 3. Another team's secret added to the running pod: refused.
    let err = annotate(
        plane,
        &ns,
        "annotate",
        "app",
        "rotor.dev/secret.stolen=team-x/prod-db",
    )
    .expect_err("the stolen path was accepted");
    assert!(
        err.contains("does not allow secret \"team-x/prod-db\""),
        "{err}"
    );
    let stored = pods.get("app").await.unwrap();
    assert!(!stored.annotations().contains_key("rotor.dev/secret.stolen"));
    // Allowed live changes still work.
    annotate(plane, &ns, "annotate", "app", "rotor.dev/refresh=10s").expect("refresh change");
    annotate(
        plane,
        &ns,
        "annotate",
        "app",
        &format!("rotor.dev/secret.api={ns}/api"),
    )
    .expect("a second secret of its own");

    // 5. Rotor's names, taken by the pod itself: refused, naming the conflict.
    let mut squatter = with_account("squatter", &annotations);
    squatter.spec.as_mut().unwrap().init_containers = Some(vec![
        serde_json::from_value(serde_json::json!({
            "name": "rotor-sidecar",
            "image": "attacker/image:1",
            "args": ["--vault-addr=https://attacker.example"],
            "securityContext": { "privileged": true, "runAsUser": 0 },
        }))
        .unwrap(),
    ]);
    let message = refusal(pods.create(&PostParams::default(), &squatter).await);
    assert!(
        message.contains("init container named \"rotor-sidecar\" that differs"),
        "{message}"
    );
    let mut host = with_account("host", &annotations);
    host.spec.as_mut().unwrap().volumes = Some(vec![
        serde_json::from_value(serde_json::json!({
            "name": "rotor-secrets",
            "hostPath": { "path": "/etc" },
        }))
        .unwrap(),
    ]);
    let message = refusal(pods.create(&PostParams::default(), &host).await);
    assert!(
        message.contains("volume named \"rotor-secrets\" that is not the one Rotor injects"),
        "{message}"
    );
    // 2. One huge pod through the API server: a bounded denial.
    let mut huge = with_account("huge", &annotations);
    let a = huge.metadata.annotations.as_mut().unwrap();
    for n in 0..150 {
        a.insert(format!("rotor.dev/reload.{n}"), "signal:X:y,".repeat(700));
    }
    let message = refusal(pods.create(&PostParams::default(), &huge).await);
    assert!(
        message.contains("more problems"),
        "{}",
        &message[..message.len().min(500)]
    );
    assert!(message.len() < 4096, "a {}-byte denial", message.len());
    (ns, "app".to_owned())
}

/// With the webhook down, pods without Rotor annotations are still
/// created, in any namespace; annotated pods are refused (fail closed);
/// running annotated pods can still be labelled, but not re-annotated.
async fn webhook_down(plane: &ControlPlane, client: &kube::Client, running: &(String, String)) {
    let (running_ns, running_pod) = running;
    annotate(plane, running_ns, "label", running_pod, "tier=gold")
        .expect("a label on an annotated pod needs no webhook");
    let err = annotate(
        plane,
        running_ns,
        "annotate",
        running_pod,
        "rotor.dev/refresh=20s",
    )
    .expect_err("an annotation change without the webhook");
    assert!(err.contains("failed calling webhook"), "{err}");
    let ns = plane.namespace("down").await;
    for namespace in [ns.as_str(), "default"] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let name = format!("plain-{ns}");
        pods.create(&PostParams::default(), &pod(&name, &[("app", "x")], None))
            .await
            .unwrap_or_else(|e| panic!("a plain pod in {namespace} was refused: {e}"));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let message = refusal(
        pods.create(
            &PostParams::default(),
            &pod("annotated", INJECT, Some(1000)),
        )
        .await,
    );
    assert!(message.contains("failed calling webhook"), "{message}");
}

/// `/metrics` of `rotor-controller run` has `rotor_build_info` and the
/// standard `process_*` metrics beside the rotation ones.
fn build_and_process_metrics(a: &Controller) {
    let mut text = String::new();
    let answered = rotor_e2e::wait_until(30, || {
        match rotor_e2e::http(a.metrics_port, "GET", "/metrics", "") {
            Some((200, body)) => {
                text = body;
                true
            }
            _ => false,
        }
    });
    assert!(answered, "/metrics never answered: {}", a.log());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!(
            "rotor_build_info{{version=\"{version}\",binary=\"rotor-controller\"}} 1\n"
        )),
        "{text}"
    );
    let sample = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    assert!(
        sample("process_resident_memory_bytes").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(sample("process_cpu_seconds_total").is_some(), "{text}");
    assert!(
        sample("process_open_fds").is_some_and(|v| v > 0.0),
        "{text}"
    );
}
