//! The sidecar's cluster credentials for real: pods admitted through the
//! webhook, their sidecars started by the harness's kubelet with pod-bound
//! ServiceAccount tokens from the TokenRequest API.
//!
//! - Kubernetes Secrets store: a Role allows only the pod's named Secret;
//!   the sidecar serves it and hears of a change through its watch (the
//!   refresh interval is an hour, so nothing else could bring it).
//! - Vault Kubernetes auth: OpenBao reviews the pod's token with this API
//!   server's TokenReview API; tokens of another account or audience are
//!   refused.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rotor_contract::api::RotorStore;
use rotor_e2e::cluster::{
    ControlPlane, Controller, app_pod, eventually, installed, point_webhook_at,
    vault_kubernetes_auth,
};
use rotor_e2e::kubelet::RunningPod;
use rotor_e2e::servers::Bao;
use rotor_store::{Store, VaultAuth, VaultConfig, VaultStore};

fn pod(name: &str, store: &str, secret: &str) -> Pod {
    app_pod(
        name,
        &[
            ("rotor.dev/inject", "true"),
            ("rotor.dev/store", store),
            ("rotor.dev/secret.value", secret),
            ("rotor.dev/refresh", "1h"),
        ],
    )
}

async fn create_store(client: &kube::Client, ns: &str, name: &str, provider: serde_json::Value) {
    let store: RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": name },
        "spec": { "provider": provider },
    }))
    .unwrap();
    Api::<RotorStore>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &store)
        .await
        .unwrap();
}

/// Creates the pod through the webhook (retrying while the webhook's store
/// index catches up with the new RotorStore).
async fn admit(client: &kube::Client, ns: &str, pod: &Pod) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let last = std::sync::Mutex::new(String::new());
    let ok = eventually(30, || async {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => true,
            Err(e) => {
                *last.lock().unwrap() = e.to_string();
                false
            }
        }
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(ok, "not admitted: {last}");
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "stringData": { "value": value },
    }))
    .unwrap()
}

#[tokio::test]
async fn sidecars_use_pod_bound_tokens_for_kubernetes_secrets_and_vault() {
    let plane = installed();
    let client = plane.client().await;
    let webhook_port = rotor_e2e::free_port();
    point_webhook_at(plane, webhook_port);
    let controller = Controller::start_at(plane, "stores", webhook_port, &[]).await;
    controller.wait_serving();

    kubernetes_secrets_store(plane, &client).await;
    vault_kubernetes_login(plane, &client).await;
}

async fn kubernetes_secrets_store(plane: &ControlPlane, client: &kube::Client) {
    let ns = plane.namespace("kube-store").await;
    plane.service_account(&ns, "app").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    secrets.create(&pp, &secret("db", "v1")).await.unwrap();
    secrets
        .create(&pp, &secret("other", "not-yours"))
        .await
        .unwrap();
    // Only its named Secret, nothing else.
    plane.kubectl_ok(&[
        "create",
        "role",
        "read-db",
        "-n",
        &ns,
        "--verb=get,list,watch",
        "--resource=secrets",
        "--resource-name=db",
    ]);
    plane.kubectl_ok(&[
        "create",
        "rolebinding",
        "read-db",
        "-n",
        &ns,
        "--role=read-db",
        &format!("--serviceaccount={ns}:app"),
    ]);
    create_store(client, &ns, "k8s", serde_json::json!({ "kubernetes": {} })).await;
    admit(client, &ns, &pod("reader", "k8s", "db")).await;

    let reader = RunningPod::start(plane, &ns, "reader", "127.0.0.4").await;
    reader.wait_ready();
    assert_eq!(reader.read("value").as_deref(), Some("v1"));

    // A change reaches the file through the watch.
    let changed = Instant::now();
    secrets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "stringData": { "value": "v2" } })),
        )
        .await
        .unwrap();
    let seen = eventually(30, || async {
        reader.read("value").as_deref() == Some("v2")
    })
    .await;
    assert!(seen, "the change never arrived: {}", reader.log());
    eprintln!(
        "kubernetes store: Secret change to file in {} ms (refresh interval 1h)",
        changed.elapsed().as_millis()
    );

    // The pod's token reads its Secret and nothing else.
    let pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("reader")
        .await
        .unwrap();
    let token = plane
        .token(
            &ns,
            "app",
            &[],
            Some(("reader", pod.metadata.uid.as_deref().unwrap())),
        )
        .await;
    let as_pod: Api<Secret> = Api::namespaced(plane.token_client(&token).await, &ns);
    as_pod.get("db").await.expect("its own Secret");
    match as_pod.get("other").await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("read another Secret: {other:?}"),
    }
}

async fn vault_kubernetes_login(plane: &ControlPlane, client: &kube::Client) {
    let ns = plane.namespace("vault-auth").await;
    plane.service_account(&ns, "app").await;
    plane.service_account(&ns, "intruder").await;
    let bao = Bao::start();
    vault_kubernetes_auth(plane, &bao, "app", &["app"], &[&ns]).await;
    let name = format!("{ns}/api-key");
    bao.api(
        "POST",
        &format!("secret/data/{name}"),
        r#"{"data":{"value":"k-1"}}"#,
    );
    create_store(
        client,
        &ns,
        "vault",
        serde_json::json!({ "vault": {
            "server": bao.addr(),
            "auth": { "kubernetes": { "role": "app" } },
        } }),
    )
    .await;
    admit(client, &ns, &pod("api", "vault", &name)).await;
    let api = RunningPod::start(plane, &ns, "api", "127.0.0.5").await;
    api.wait_ready();
    assert_eq!(api.read("value").as_deref(), Some("k-1"));
    assert!(api.log().contains("kubernetes"), "{}", api.log());

    // Another account's token, and the pod's account with the API
    // server's audience instead of Vault's: both refused by OpenBao after
    // this API server's TokenReview.
    let dir = tempfile::tempdir().unwrap();
    for (account, audiences) in [("intruder", vec!["vault"]), ("app", vec![])] {
        let jwt = plane.token(&ns, account, &audiences, None).await;
        let path = dir.path().join(format!("{account}-token"));
        std::fs::write(&path, jwt).unwrap();
        let store = VaultStore::new(VaultConfig::new(
            bao.addr(),
            VaultAuth::Kubernetes {
                mount: "kubernetes".into(),
                role: "app".into(),
                jwt: std::sync::Arc::new(rotor_store::TokenFile::new(path)),
            },
        ))
        .unwrap();
        let err = store.current_version(&name).await.unwrap_err();
        assert!(
            matches!(err, rotor_store::Error::Auth { .. })
                && err.to_string().contains("kubernetes login"),
            "{account} {audiences:?}: {err}"
        );
    }
}
