//! The reconciler against kube's mocked client: an `ApiServerVerifier`
//! over `tower_test::mock::pair` checks each request and answers it.

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use rotor_crds::api::{
    LocalProvider, SecretStoreSpec, VaultAuthSpec, VaultKubernetesAuth, VaultProvider,
};

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    /// Expects one status patch and returns its body.
    async fn status_patch(mut self, store: &SecretStore) -> serde_json::Value {
        let (request, send) = self.0.next_request().await.expect("a request");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().path(),
            format!(
                "/apis/rotor.dev/v1alpha1/namespaces/{}/secretstores/{}/status",
                store.namespace().unwrap(),
                store.name_any()
            )
        );
        assert!(
            request
                .uri()
                .query()
                .unwrap()
                .contains("fieldManager=rotor-controller")
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(store).unwrap()))
                .unwrap(),
        );
        patch
    }
}

fn store(provider: Provider) -> SecretStore {
    let mut s = SecretStore::new(
        "vault",
        SecretStoreSpec {
            provider,
            allow_exec_reload: false,
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
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        Arc::new(Context {
            client: Client::new(service, "default"),
            metrics: Arc::default(),
        }),
        ApiServerVerifier(handle),
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
    let verify = tokio::spawn({
        let s = s.clone();
        async move { server.status_patch(&s).await }
    });
    let action = timeout_after_1s(reconcile(Arc::new(s), ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
    let patch = timeout_after_1s(verify).await.unwrap();
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
    let verify = tokio::spawn({
        let s = s.clone();
        async move { server.status_patch(&s).await }
    });
    timeout_after_1s(reconcile(Arc::new(s), ctx)).await.unwrap();
    let patch = timeout_after_1s(verify).await.unwrap();
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
    let (ctx, mut server) = context();
    let s = store(vault("https://vault:8200"));
    tokio::spawn(async move {
        let (_, send) = server.0.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(br#"{"kind":"Status","status":"Failure","reason":"InternalError","code":500,"message":"boom"}"#.to_vec()))
                .unwrap(),
        );
    });
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
    use rotor_crds::api::ClusterSecretStoreSpec;
    let (ctx, mut server) = context();
    let store = ClusterSecretStore::new(
        "shared",
        ClusterSecretStoreSpec {
            provider: vault("https://vault:8200"),
            allowed_namespaces: Default::default(),
            paths: vec![],
            allow_exec_reload: false,
        },
    );
    let reply = serde_json::to_vec(&store).unwrap();
    let verify = tokio::spawn(async move {
        let (request, send) = server.0.next_request().await.expect("a request");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/rotor.dev/v1alpha1/clustersecretstores/shared/status"
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        send.send_response(Response::builder().body(Body::from(reply)).unwrap());
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    });
    timeout_after_1s(reconcile_cluster(Arc::new(store), ctx))
        .await
        .unwrap();
    let patch = timeout_after_1s(verify).await.unwrap();
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
