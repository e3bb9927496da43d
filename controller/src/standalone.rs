//! Standalone mode: rotation without Kubernetes. Policies and stores come
//! from YAML files, each policy's status lives in a JSON file in the state
//! directory (so a restart resumes), and consumers are the sidecars each
//! policy lists, reached over HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use rotor_crds::api::{Provider, SecretRotationPolicy, SecretRotationPolicyStatus, SecretStore};
use rotor_envelope::{Kek, KeyFileKek};
use rotor_store::{AwsConfig, AwsStore, LocalStore, Store, VaultAuth, VaultConfig, VaultStore};
use serde::{Deserialize, Serialize};

use crate::rotation::machine::{Ack, Consumers, Phase, step};
use crate::rotation::validate::Policy;
use crate::{Error, Result};

mod retry;

/// The rotate-now annotation: a new value triggers one rotation.
pub const ROTATE_NOW: &str = "rotor.dev/rotate-now";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    status: SecretRotationPolicyStatus,
    #[serde(default)]
    rotate_now_handled: Option<String>,
}

pub struct Options {
    pub policies: PathBuf,
    pub state: PathBuf,
    /// Vault token for stores whose auth is a Secret reference.
    pub vault_token_file: Option<PathBuf>,
}

/// Sidecars reached over HTTP.
pub struct HttpSidecars {
    urls: Vec<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpSidecars {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn one(&self, url: &str, body: Bytes) -> Ack {
        let fail = |e: String| Ack {
            consumer: url.to_owned(),
            version: None,
            error: Some(e),
        };
        let request =
            match hyper::Request::post(format!("{}/v1/refresh", url.trim_end_matches('/')))
                .header("content-type", "application/json")
                .body(Full::new(body))
            {
                Ok(r) => r,
                Err(e) => return fail(e.to_string()),
            };
        let response =
            match tokio::time::timeout(Duration::from_secs(10), self.client.request(request)).await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return fail(format!("unreachable: {e}")),
                Err(_) => return fail("timed out".to_owned()),
            };
        let bytes = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return fail(e.to_string()),
        };
        let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ack {
            consumer: url.to_owned(),
            version: reply["secrets"][0]["version"].as_str().map(str::to_owned),
            error: reply["secrets"][0]["error"]
                .as_str()
                .or(reply["error"].as_str())
                .map(str::to_owned),
        }
    }
}

impl HttpSidecars {
    /// Pushes to `urls` at once and returns their answers in order.
    pub async fn refresh_urls(
        &self,
        urls: &[String],
        secret: &str,
        version: Option<&str>,
    ) -> Vec<Ack> {
        let mut item = serde_json::json!({ "name": secret });
        if let Some(v) = version {
            item["version"] = v.into();
        }
        let body = Bytes::from(serde_json::json!({ "secrets": [item] }).to_string());
        futures_util::future::join_all(urls.iter().map(|u| self.one(u, body.clone()))).await
    }
}

#[async_trait]
impl Consumers for HttpSidecars {
    async fn refresh(&self, secret: &str, version: Option<&str>) -> Vec<Ack> {
        self.refresh_urls(&self.urls, secret, version).await
    }
}

/// Policies and stores read from the directory.
struct Loaded {
    policies: Vec<(SecretRotationPolicy, Policy)>,
    stores: BTreeMap<String, Provider>,
}

fn load(dir: &Path) -> Result<Loaded> {
    let mut out = Loaded {
        policies: Vec::new(),
        stores: BTreeMap::new(),
    };
    // Every document is checked in full before anything acts on any.
    let mut problems = Vec::new();
    for doc in crate::manifests::documents(dir, "--policies")? {
        let source = doc.source.clone();
        match doc.kind.as_str() {
            "SecretRotationPolicy" => match doc.parse_strict::<SecretRotationPolicy>() {
                Ok(p) => match Policy::check(&p.spec) {
                    Ok(valid) => out.policies.push((p, valid)),
                    Err(found) => {
                        problems.extend(found.into_iter().map(|e| format!("{source}: {e}")))
                    }
                },
                Err(e) => problems.push(e.to_string()),
            },
            "SecretStore" | "ClusterSecretStore" => {
                let parsed = if doc.kind == "SecretStore" {
                    doc.parse_strict::<SecretStore>()
                        .map(|s| (s.name_any(), s.spec.provider))
                } else {
                    doc.parse_strict::<rotor_crds::api::ClusterSecretStore>()
                        .map(|s| (s.name_any(), s.spec.provider))
                };
                match parsed {
                    Ok((name, provider)) => {
                        let found = crate::reconcile::problems(&provider);
                        if found.is_empty() {
                            out.stores.insert(name, provider);
                        } else {
                            problems.extend(found.into_iter().map(|e| format!("{source}: {e}")));
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            _ => return Err(doc.unexpected("SecretRotationPolicy, SecretStore")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Config(format!(
            "{} has {} problem{}, nothing was done: {}",
            dir.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("; ")
        )));
    }
    Ok(out)
}

async fn build_store(name: &str, p: &Provider, options: &Options) -> Result<Arc<dyn Store>> {
    if let Some(l) = &p.local {
        let kek: Arc<dyn Kek> = Arc::new(
            KeyFileKek::load(Path::new(&l.key_path))
                .map_err(|e| Error::Config(format!("store {name:?}: {e}")))?,
        );
        return Ok(Arc::new(LocalStore::new(&l.path, kek)));
    }
    if let Some(v) = &p.vault {
        let auth = match (&v.auth.kubernetes, &options.vault_token_file) {
            (_, Some(file)) => VaultAuth::TokenFile(file.clone()),
            (Some(k), None) => VaultAuth::Kubernetes {
                mount: k.mount_path.clone(),
                role: k.role.clone(),
                jwt_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            },
            (None, None) => {
                return Err(Error::Config(format!(
                    "store {name:?}: standalone mode cannot read Kubernetes Secrets; pass --vault-token-file"
                )));
            }
        };
        let mut config = VaultConfig::new(v.server.clone(), auth);
        config.mount = v.mount.clone();
        return Ok(Arc::new(VaultStore::new(config)?));
    }
    if let Some(a) = &p.aws {
        return Ok(Arc::new(
            AwsStore::new(AwsConfig {
                region: Some(a.region.clone()),
                endpoint: a.endpoint.clone(),
                static_credentials: None,
            })
            .await,
        ));
    }
    Err(Error::Config(format!(
        "store {name:?}: standalone mode supports local, vault and aws stores"
    )))
}

fn state_path(dir: &Path, p: &SecretRotationPolicy) -> PathBuf {
    dir.join(format!(
        "{}.{}.json",
        p.namespace().unwrap_or_else(|| "default".into()),
        p.name_any()
    ))
}

fn read_state(path: &Path) -> State {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_state(path: &Path, state: &State) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let io = |e: std::io::Error| Error::Config(format!("state file {}: {e}", path.display()));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).expect("state serializes"),
    )
    .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Runs until `shutdown` resolves.
pub async fn run(options: Options, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    // A typo in --policies must not become a new, empty directory.
    if !options.policies.is_dir() {
        return Err(Error::Config(format!(
            "--policies {}: no such directory; expected a directory of SecretRotationPolicy and SecretStore YAML files",
            options.policies.display()
        )));
    }
    // Checked in full before the state directory or any store is touched.
    load(&options.policies)?;
    std::fs::create_dir_all(&options.state)
        .map_err(|e| Error::Config(format!("--state {}: {e}", options.state.display())))?;
    let mut stores: BTreeMap<String, Arc<dyn Store>> = BTreeMap::new();
    // Policies whose last step failed, and when each is tried again.
    let mut retries: BTreeMap<String, retry::Retry> = BTreeMap::new();
    tokio::pin!(shutdown);
    loop {
        let loaded = load(&options.policies)?;
        let mut wake = Duration::from_secs(1);
        for (policy, valid) in &loaded.policies {
            if let Some(r) = retries.get(&policy.name_any()) {
                let left = r.remaining(tokio::time::Instant::now());
                if !left.is_zero() {
                    wake = wake.min(left);
                    continue;
                }
            }
            let store_name = &policy.spec.store_ref.name;
            let store = match stores.get(store_name) {
                Some(s) => s.clone(),
                None => {
                    let provider = loaded.stores.get(store_name).ok_or_else(|| {
                        Error::Config(format!(
                            "policy {}: store {store_name:?} is not defined in {}",
                            policy.name_any(),
                            options.policies.display()
                        ))
                    })?;
                    let s = build_store(store_name, provider, &options).await?;
                    stores.insert(store_name.clone(), s.clone());
                    s
                }
            };
            let path = state_path(&options.state, policy);
            let mut state = read_state(&path);
            let token = policy.annotations().get(ROTATE_NOW).cloned();
            let rotate_now = token.is_some() && token != state.rotate_now_handled;
            let consumers = HttpSidecars::new(policy.spec.sidecars.clone());
            let result = step(
                valid,
                &state.status,
                SystemTime::now(),
                rotate_now,
                &*store,
                &consumers,
            )
            .await;
            match result {
                Ok(s) => {
                    retries.remove(&policy.name_any());
                    for e in &s.events {
                        let (reason, message) = (e.reason(), e.message());
                        tracing::info!(policy = %policy.name_any(), %reason, %message, "rotation event");
                    }
                    if rotate_now && s.status.phase.as_deref() != Some(Phase::Idle.as_str()) {
                        state.rotate_now_handled = token;
                    }
                    state.status = s.status;
                    write_state(&path, &state)?;
                    wake = wake.min(s.requeue);
                }
                Err(e) => {
                    let retry_in = retries
                        .entry(policy.name_any())
                        .or_insert_with(retry::Retry::new)
                        .failed(tokio::time::Instant::now());
                    tracing::warn!(policy = %policy.name_any(), error = %e, ?retry_in, "rotation step failed; retrying");
                    wake = wake.min(retry_in);
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(wake.max(Duration::from_millis(20))) => {}
        }
    }
}
