//! The reconciler against the fake API server of `rotor-fixtures`: a
//! scripted scenario checks each request and answers it.

use http::Method;
use rotor_contract::api::{
    LocalProvider, RotorStoreSpec, VaultAuthSpec, VaultKubernetesAuth, VaultProvider,
};
use rotor_fixtures::api_server::{self, ApiServerVerifier, Exchange, Recorded, Reply, Scenario};

use super::*;

/// Expects one status patch of `path` by the controller, answered with
/// `object`.
fn status_patch(server: ApiServerVerifier, path: &str, object: &impl serde::Serialize) -> Recorded {
    server.run(Scenario::Script(vec![
        Exchange::expect(Method::PATCH, path)
            .query_contains("fieldManager=rotor-controller")
            .reply(Reply::ok(object)),
    ]))
}

/// The body of the one status patch `recorded` expects.
async fn patch_of(recorded: Recorded) -> serde_json::Value {
    timeout_after_1s(recorded.finished()).await[0].body.clone()
}

/// The status path of a namespaced `RotorStore`.
fn status_path(store: &RotorStore) -> String {
    format!(
        "/apis/rotor.dev/v1alpha1/namespaces/{}/rotorstores/{}/status",
        store.namespace().unwrap(),
        store.name_any()
    )
}

fn store(provider: Provider) -> RotorStore {
    let mut s = RotorStore::new(
        "vault",
        RotorStoreSpec {
            provider,
            allow_exec_reload: false,
            budget: None,
        },
    );
    s.metadata.namespace = Some("shop".into());
    s.metadata.generation = Some(3);
    s
}

fn vault(server: &str) -> Provider {
    Provider {
        vault: Some(VaultProvider {
            server: server.into(),
            mount: "secret".into(),
            ca_bundle: None,
            auth: VaultAuthSpec {
                kubernetes: Some(VaultKubernetesAuth {
                    role: "shop".into(),
                    mount_path: "kubernetes".into(),
                    audience: None,
                }),
                app_role: None,
                token_secret_ref: None,
            },
        }),
        aws: None,
        kubernetes: None,
        local: None,
    }
}

fn context() -> (Arc<Context>, ApiServerVerifier) {
    let (client, server) = api_server::pair("default");
    (
        Arc::new(Context {
            client,
            metrics: Arc::default(),
        }),
        server,
    )
}

async fn timeout_after_1s<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn a_valid_store_is_ready() {
    let (ctx, server) = context();
    let s = store(vault("https://vault:8200"));
    let verify = status_patch(server, &status_path(&s), &s);
    let action = timeout_after_1s(reconcile(Arc::new(s), ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
    let patch = patch_of(verify).await;
    assert_eq!(patch["status"]["provider"], "vault");
    assert_eq!(patch["status"]["observedGeneration"], 3);
    let c = &patch["status"]["conditions"][0];
    assert_eq!(
        (
            c["type"].as_str(),
            c["status"].as_str(),
            c["reason"].as_str()
        ),
        (Some("Ready"), Some("True"), Some("Valid"))
    );
}

#[tokio::test]
async fn an_invalid_store_says_why() {
    let (ctx, server) = context();
    let mut provider = vault("vault:8200");
    provider.local = Some(LocalProvider {
        path: "relative/store".into(),
        key_path: "/k".into(),
        volume: None,
    });
    let s = store(provider);
    let verify = status_patch(server, &status_path(&s), &s);
    timeout_after_1s(reconcile(Arc::new(s), ctx)).await.unwrap();
    let patch = patch_of(verify).await;
    let c = &patch["status"]["conditions"][0];
    assert_eq!(c["status"], "False");
    let message = c["message"].as_str().unwrap();
    for expected in [
        "sets 2 providers",
        "spec.provider.vault.server \"vault:8200\" is not an http(s) URL",
        "spec.provider.local.path \"relative/store\" is not an absolute path",
    ] {
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn api_errors_requeue_through_the_error_policy() {
    let (ctx, server) = context();
    let s = store(vault("https://vault:8200"));
    server.run(Scenario::Script(vec![
        Exchange::any().reply(Reply::failure(500, "InternalError")),
    ]));
    let err = timeout_after_1s(reconcile(Arc::new(s.clone()), ctx.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "kube");
    assert_eq!(
        error_policy(Arc::new(s), &err, ctx),
        Action::requeue(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn a_cluster_store_without_namespaces_or_paths_says_so() {
    use rotor_contract::api::ClusterRotorStoreSpec;
    let (ctx, server) = context();
    let store = ClusterRotorStore::new(
        "shared",
        ClusterRotorStoreSpec {
            provider: vault("https://vault:8200"),
            allowed_namespaces: Default::default(),
            paths: vec![],
            allow_exec_reload: false,
            budget: None,
        },
    );
    let verify = status_patch(
        server,
        "/apis/rotor.dev/v1alpha1/clusterrotorstores/shared/status",
        &store,
    );
    timeout_after_1s(reconcile_cluster(Arc::new(store), ctx))
        .await
        .unwrap();
    let patch = patch_of(verify).await;
    let message = patch["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(patch["status"]["conditions"][0]["status"], "False");
    assert!(
        message.contains("spec.allowedNamespaces is empty")
            && message.contains("spec.paths is empty"),
        "{message}"
    );
}

/// The status patch for a ClusterRotorStore with `provider` (namespaces
/// and paths set) and `status`.
async fn cluster_store_status(
    provider: Provider,
    status: Option<RotorStoreStatus>,
) -> serde_json::Value {
    use rotor_contract::api::{ClusterRotorStoreSpec, PathRule};
    let (ctx, server) = context();
    let mut store = ClusterRotorStore::new(
        "shared",
        ClusterRotorStoreSpec {
            provider,
            allowed_namespaces: serde_json::from_value(
                serde_json::json!({ "matchLabels": { "team": "a" } }),
            )
            .unwrap(),
            paths: vec![PathRule {
                namespace: "*".into(),
                patterns: vec!["{namespace}/*".into()],
            }],
            allow_exec_reload: false,
            budget: None,
        },
    );
    store.status = status;
    let verify = status_patch(
        server,
        "/apis/rotor.dev/v1alpha1/clusterrotorstores/shared/status",
        &store,
    );
    timeout_after_1s(reconcile_cluster(Arc::new(store), ctx))
        .await
        .unwrap();
    patch_of(verify).await["status"].clone()
}

#[tokio::test]
async fn a_cluster_store_with_secret_based_auth_is_not_ready_and_says_what_to_use() {
    use rotor_contract::api::SecretKeyRef;
    let mut provider = vault("https://vault:8200");
    let auth = &mut provider.vault.as_mut().unwrap().auth;
    auth.kubernetes = None;
    auth.token_secret_ref = Some(SecretKeyRef {
        name: "vault-token".into(),
        key: "token".into(),
    });
    let status = cluster_store_status(provider, None).await;
    let c = &status["conditions"][0];
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("TokenSecretRefNotAllowed"))
    );
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("spec.provider.vault.auth.tokenSecretRef is not allowed")
            && message.contains("use spec.provider.vault.auth.kubernetes instead"),
        "{message}"
    );
}

#[tokio::test]
async fn the_ready_condition_keeps_its_transition_time_while_its_status_holds() {
    let earlier = "2026-01-01T00:00:00Z";
    let ready = RotorStoreStatus {
        provider: Some("vault".into()),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Valid".into(),
            message: String::new(),
            last_transition_time: earlier.into(),
            observed_generation: None,
        }],
        observed_generation: None,
    };
    let status = cluster_store_status(vault("https://vault:8200"), Some(ready.clone())).await;
    assert_eq!(status["conditions"][0]["lastTransitionTime"], earlier);
    // Not ready any more: the time moves.
    let status = cluster_store_status(vault("vault:8200"), Some(ready)).await;
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_ne!(status["conditions"][0]["lastTransitionTime"], earlier);
}
