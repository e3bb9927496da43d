//! In a cluster: keep the store index fresh from watches, and manage the
//! serving certificate when no cert-manager provides one.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use rotor_crds::api::{ClusterSecretStore, SecretStore};

use crate::store_index::StoreIndex;
use crate::webhook::server::WebhookState;
use crate::{Error, Result};

/// Runs the three watches that feed the store index, forever. A relist
/// replaces a kind's entries only once the new list is complete.
pub async fn keep_index_fresh(client: Client, state: Arc<WebhookState>) {
    let stores = watch_kind::<SecretStore>(
        Api::all(client.clone()),
        state.clone(),
        |index, objs| {
            for (ns, name) in index.store_keys() {
                if !objs.iter().any(|s: &SecretStore| {
                    s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == name
                }) {
                    index.delete_store(&ns, &name);
                }
            }
            objs.iter().for_each(|s| index.apply_store(s));
        },
        |index, s| index.apply_store(s),
        |index, s| index.delete_store(&s.namespace().unwrap_or_default(), &s.name_any()),
    );
    let cluster = watch_kind::<ClusterSecretStore>(
        Api::all(client.clone()),
        state.clone(),
        |index, objs| {
            for name in index.cluster_store_names() {
                if !objs
                    .iter()
                    .any(|s: &ClusterSecretStore| s.name_any() == name)
                {
                    index.delete_cluster_store(&name);
                }
            }
            objs.iter().for_each(|s| index.apply_cluster_store(s));
        },
        |index, s| index.apply_cluster_store(s),
        |index, s| index.delete_cluster_store(&s.name_any()),
    );
    let namespaces = watch_kind::<Namespace>(
        Api::all(client),
        state,
        |index, objs| {
            objs.iter()
                .for_each(|n: &Namespace| index.apply_namespace(&n.name_any(), n.labels().clone()));
        },
        |index, n| index.apply_namespace(&n.name_any(), n.labels().clone()),
        |index, n| index.delete_namespace(&n.name_any()),
    );
    tokio::join!(stores, cluster, namespaces);
}

async fn watch_kind<K>(
    api: Api<K>,
    state: Arc<WebhookState>,
    relisted: impl Fn(&mut StoreIndex, &[K]),
    applied: impl Fn(&mut StoreIndex, &K),
    deleted: impl Fn(&mut StoreIndex, &K),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut buffer: Vec<K> = Vec::new();
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(o),
            Ok(watcher::Event::InitDone) => {
                relisted(&mut state.stores.write().expect("index lock"), &buffer);
                buffer.clear();
            }
            Ok(watcher::Event::Apply(o)) => {
                applied(&mut state.stores.write().expect("index lock"), &o)
            }
            Ok(watcher::Event::Delete(o)) => {
                deleted(&mut state.stores.write().expect("index lock"), &o)
            }
            Err(e) => tracing::warn!(error = %e, "watch interrupted; it resumes by itself"),
        }
    }
}

/// Runs the SecretStore and ClusterSecretStore reconcilers until shutdown.
pub async fn run_store_reconciler(client: Client) {
    use kube::runtime::Controller;
    let ctx = Arc::new(crate::reconcile::Context {
        client: client.clone(),
    });
    let stores = Controller::new(
        Api::<SecretStore>::all(client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        crate::reconcile::reconcile,
        crate::reconcile::error_policy,
        ctx.clone(),
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "store reconcile");
        }
    });
    let cluster = Controller::new(
        Api::<ClusterSecretStore>::all(client),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        crate::reconcile::reconcile_cluster,
        crate::reconcile::error_policy_cluster,
        ctx,
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "cluster store reconcile");
        }
    });
    tokio::join!(stores, cluster);
}

/// Self-managed certificates: reuse the Secret `secret` in `namespace` or
/// create it with a new CA and serving certificate, write the files the
/// server reads, and put the CA into the webhook configuration's caBundle.
pub async fn self_managed_certs(
    client: Client,
    namespace: &str,
    secret: &str,
    names: &[String],
    webhook: &str,
    dir: &Path,
    owner: Option<&OwnerReference>,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = secrets.get_opt(secret).await?;
    let generated = match existing.as_ref().and_then(read_tls) {
        Some(g) => g,
        None => {
            let g = crate::certs::generate(names)?;
            let data = [
                ("ca.crt", g.ca_pem.as_bytes()),
                ("tls.crt", g.cert_pem.as_bytes()),
                ("tls.key", g.key_pem.as_bytes()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
            .collect();
            let object = Secret {
                metadata: ObjectMeta {
                    name: Some(secret.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(data),
                ..Secret::default()
            };
            match secrets.create(&PostParams::default(), &object).await {
                Ok(_) => g,
                // Another replica won the race: use its certificate.
                Err(kube::Error::Api(r)) if r.code == 409 => secrets
                    .get(secret)
                    .await
                    .ok()
                    .as_ref()
                    .and_then(read_tls)
                    .ok_or_else(|| {
                        Error::Certs(format!("Secret {namespace}/{secret} is incomplete"))
                    })?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    crate::certs::write(dir, &generated)?;
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(&generated.ca_pem);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client);
    let current = webhooks.get(webhook).await?;
    let patch: Vec<serde_json::Value> = current
        .webhooks
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, _)| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca}))
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(patch))
        .map_err(|e| Error::Certs(e.to_string()))?;
    webhooks
        .patch(webhook, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    tracing::info!(secret = %format!("{namespace}/{secret}"), webhook, "serving certificate ready; caBundle set");
    Ok(())
}

/// The controller's ServiceAccount as the owner of the objects it creates
/// in its namespace (the self-managed certificate's Secret, the leader
/// Lease): when an uninstall deletes the account, the garbage collector
/// deletes them. `None`, with a warning, when the account cannot be read.
pub async fn owner_reference(
    client: Client,
    namespace: &str,
    service_account: &str,
) -> Option<OwnerReference> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
    match accounts.get(service_account).await {
        Ok(sa) => Some(OwnerReference {
            api_version: "v1".to_owned(),
            kind: "ServiceAccount".to_owned(),
            name: service_account.to_owned(),
            uid: sa.metadata.uid?,
            controller: None,
            block_owner_deletion: None,
        }),
        Err(e) => {
            tracing::warn!(error = %e, service_account = %format!("{namespace}/{service_account}"),
                "cannot read the controller's ServiceAccount: the Secret and Lease it creates will outlive an uninstall");
            None
        }
    }
}

fn read_tls(secret: &Secret) -> Option<crate::certs::Generated> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(crate::certs::Generated {
        ca_pem: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}

/// Builds rotation stores from the store index: Vault with the
/// controller's own Kubernetes auth, AWS with the default chain. Stores are
/// cached by (namespace, store).
pub struct ClusterStores {
    pub index: Arc<WebhookState>,
    /// The controller's ServiceAccount token, for Vault Kubernetes auth.
    jwt_path: std::path::PathBuf,
    cache: tokio::sync::Mutex<
        std::collections::BTreeMap<(String, String), Arc<dyn rotor_store::Store>>,
    >,
}

impl ClusterStores {
    pub fn new(index: Arc<WebhookState>, jwt_path: std::path::PathBuf) -> Self {
        Self {
            index,
            jwt_path,
            cache: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl crate::rotation::reconciler::StoreFactory for ClusterStores {
    async fn store(
        &self,
        policy: &rotor_crds::api::SecretRotationPolicy,
    ) -> Result<Arc<dyn rotor_store::Store>> {
        let namespace = policy.namespace().unwrap_or_default();
        let name = policy.spec.store_ref.name.clone();
        let key = (namespace.clone(), name.clone());
        if let Some(s) = self.cache.lock().await.get(&key) {
            return Ok(s.clone());
        }
        let resolved = self
            .index
            .stores
            .read()
            .expect("index lock")
            .resolve(&namespace, &name, &[policy.spec.secret_name.as_str()])
            .map_err(Error::Config)?;
        let p = &resolved.provider;
        let store: Arc<dyn rotor_store::Store> = if let Some(v) = &p.vault {
            let k = v.auth.kubernetes.as_ref().ok_or_else(|| {
                Error::Config(format!("store {name:?}: rotation in a cluster needs Vault kubernetes auth for the controller"))
            })?;
            let mut config = rotor_store::VaultConfig::new(
                v.server.clone(),
                rotor_store::VaultAuth::Kubernetes {
                    mount: k.mount_path.clone(),
                    role: k.role.clone(),
                    jwt_path: self.jwt_path.clone(),
                },
            );
            config.mount = v.mount.clone();
            Arc::new(rotor_store::VaultStore::new(config)?)
        } else if let Some(a) = &p.aws {
            Arc::new(
                rotor_store::AwsStore::new(rotor_store::AwsConfig {
                    region: Some(a.region.clone()),
                    endpoint: a.endpoint.clone(),
                    static_credentials: None,
                })
                .await,
            )
        } else {
            return Err(Error::Config(format!(
                "store {name:?}: rotation in a cluster supports vault and aws stores (the controller holds no Secret or file access)"
            )));
        };
        self.cache.lock().await.insert(key, store.clone());
        Ok(store)
    }
}

/// Keeps the consumer index fresh from a watch on pods.
pub async fn keep_consumers_fresh(
    client: Client,
    index: Arc<std::sync::RwLock<crate::rotation::consumers::ConsumerIndex>>,
    push_port: u16,
) {
    let mut events = watcher(
        Api::<k8s_openapi::api::core::v1::Pod>::all(client),
        watcher::Config::default(),
    )
    .boxed();
    let mut fresh = crate::rotation::consumers::ConsumerIndex::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => fresh.reset(),
            Ok(watcher::Event::InitApply(p)) => fresh.apply(&p, push_port),
            Ok(watcher::Event::InitDone) => {
                *index.write().expect("consumer index lock") = std::mem::take(&mut fresh)
            }
            Ok(watcher::Event::Apply(p)) => index
                .write()
                .expect("consumer index lock")
                .apply(&p, push_port),
            Ok(watcher::Event::Delete(p)) => index
                .write()
                .expect("consumer index lock")
                .delete(&p.namespace().unwrap_or_default(), &p.name_any()),
            Err(e) => tracing::warn!(error = %e, "pod watch interrupted; it resumes by itself"),
        }
    }
}

/// Runs the rotation controller until shutdown.
pub async fn run_rotation(ctx: Arc<crate::rotation::reconciler::RotationContext>) {
    use kube::runtime::Controller;
    use rotor_crds::api::SecretRotationPolicy;
    Controller::new(
        Api::<SecretRotationPolicy>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        crate::rotation::reconciler::reconcile,
        crate::rotation::reconciler::error_policy,
        ctx,
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "rotation reconcile");
        }
    })
    .await;
}

/// Serves `/metrics` on plain HTTP.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<crate::rotation::metrics::RotationMetrics>,
) -> Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.encode() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    axum::serve(listener, router)
        .await
        .map_err(|e| Error::Config(format!("metrics server: {e}")))
}
