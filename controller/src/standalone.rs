//! Standalone mode: rotation without Kubernetes. Policies and stores come
//! from YAML files, each policy's status lives in a JSON file in the state
//! directory (so a restart resumes), and consumers are the sidecars
//! connected over the channel ([`channel`]), which they dial with a token
//! file shared with the controller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use rotor_contract::api::{RotorStore, SecretRotationPolicy, SecretRotationPolicyStatus};
use serde::{Deserialize, Serialize};

use crate::rotation::driver::{Record, Rotation, Settle, settle};
use crate::rotation::machine::RotationEvent;
use crate::rotation::metrics::RotationMetrics;
use crate::rotation::target::https::CallerToken;
use crate::rotation::validate::{Mode, Policy};
use rotor_store::backoff::Retry;

use crate::store_from_spec::Reach;
use crate::{Error, Result};

pub mod channel;
pub mod stores;

use stores::{StandaloneStores, StoreSpec};

/// The rotate-now annotation: a new value triggers one rotation.
pub use rotor_contract::annotations::ROTATE_NOW;

/// One policy's state file in the state directory (what `rotor demo`
/// reads to tell the story).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub status: SecretRotationPolicyStatus,
    #[serde(default)]
    pub rotate_now_handled: Option<String>,
}

pub struct Options {
    pub policies: PathBuf,
    pub state: PathBuf,
    /// Vault token for stores whose auth is a Secret reference.
    pub vault_token_file: Option<PathBuf>,
    /// Where finished rotations and failed steps are counted (what
    /// `--metrics-addr` serves).
    pub metrics: Arc<RotationMetrics>,
    /// The channel the sidecars dial.
    pub channel: channel::ChannelOptions,
    /// Counts the channel's streams, refusals and cut-offs.
    pub channel_metrics: crate::channel::ChannelMetrics,
    /// What https rotation targets receive as the caller's token.
    pub https_target_token: Option<rotor_store::TokenFile>,
}

/// Policies and stores read from the directory.
struct Loaded {
    policies: Vec<(SecretRotationPolicy, Policy)>,
    stores: BTreeMap<String, StoreSpec>,
}

fn load(dir: &Path) -> Result<Loaded> {
    let mut out = Loaded {
        policies: Vec::new(),
        stores: BTreeMap::new(),
    };
    // Every document is checked in full before anything acts on any.
    let mut problems = Vec::new();
    for doc in crate::manifests::documents(dir, "--policies")? {
        match doc.kind.as_str() {
            "SecretRotationPolicy" => match doc.parse_strict::<SecretRotationPolicy>() {
                Ok(p) => {
                    let sidecars = channel::check_sidecars(&p.spec.sidecars);
                    match Policy::check(&p.spec, Mode::Standalone) {
                        Ok(valid) if sidecars.is_empty() => out.policies.push((p, valid)),
                        Ok(_) => problems.extend(sidecars.iter().map(|e| doc.problem(e))),
                        Err(found) => {
                            problems.extend(found.iter().chain(&sidecars).map(|e| doc.problem(e)))
                        }
                    }
                }
                Err(e) => problems.push(e.to_string()),
            },
            "RotorStore" | "ClusterRotorStore" => {
                let parsed = if doc.kind == "RotorStore" {
                    doc.parse_strict::<RotorStore>()
                        .map(|s| (s.name_any(), s.spec.provider, s.spec.budget))
                } else {
                    doc.parse_strict::<rotor_contract::api::ClusterRotorStore>()
                        .map(|s| (s.name_any(), s.spec.provider, s.spec.budget))
                };
                match parsed {
                    Ok((name, provider, budget)) => {
                        let mut found = crate::store_status::problems(&provider);
                        found.extend(
                            budget
                                .as_ref()
                                .map(crate::budget::problems)
                                .unwrap_or_default(),
                        );
                        if found.is_empty() {
                            out.stores.insert(name, StoreSpec { provider, budget });
                        } else {
                            problems.extend(found.iter().map(|e| doc.problem(e)));
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            _ => return Err(doc.unexpected("SecretRotationPolicy, RotorStore, ClusterRotorStore")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidManifests {
            dir: dir.to_owned(),
            problems,
        });
    }
    Ok(out)
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

/// Standalone's [`Record`]: the status in the policy's state file (the
/// rotate-now token handled beside it), the events in the log.
struct StateFile<'a> {
    path: &'a Path,
    policy: &'a str,
}

#[async_trait::async_trait]
impl Record for StateFile<'_> {
    async fn save(&self, status: &SecretRotationPolicyStatus) -> Result<()> {
        let mut status = status.clone();
        let rotate_now_handled = status.rotate_now_handled.take();
        write_state(
            self.path,
            &State {
                status,
                rotate_now_handled,
            },
        )
    }

    async fn announce(&self, e: &RotationEvent) {
        let (reason, message) = (e.reason(), e.message());
        tracing::info!(policy = %self.policy, %reason, %message, "rotation event");
    }
}

fn write_state(path: &Path, state: &State) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let io = |source| Error::File {
        what: "state file",
        path: path.to_owned(),
        source,
    };
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
        return Err(Error::File {
            what: "--policies",
            path: options.policies.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such directory; expected a directory of SecretRotationPolicy and RotorStore YAML files",
            ),
        });
    }
    // Checked in full before the state directory or any store is touched.
    let loaded = load(&options.policies)?;
    tracing::info!(
        dir = %options.policies.display(),
        policies = ?loaded.policies.iter().map(|(p, _)| p.name_any()).collect::<Vec<_>>(),
        stores = ?loaded.stores.keys().collect::<Vec<_>>(),
        "policies and stores loaded"
    );
    std::fs::create_dir_all(&options.state).map_err(|source| Error::File {
        what: "--state",
        path: options.state.clone(),
        source,
    })?;
    let stores = Arc::new(StandaloneStores::new(
        Reach::Standalone {
            vault_token_file: options.vault_token_file.clone(),
        },
        options.metrics.stores.clone(),
    ));
    stores.set(loaded.stores.clone());
    let channel = channel::Channel::set_up(
        options.channel,
        options.channel_metrics.clone(),
        stores.clone(),
    )
    .await?;
    let hub = channel.server.hub.clone();
    let detection = tokio::spawn(
        crate::channel::fanout::Fanout::new(hub.clone(), stores.clone(), options.channel_metrics)
            .run(),
    );
    tracing::info!(addr = ?channel.local_addr(), "channel: serving sidecar streams");
    let (stop_channel, channel_stopped) = tokio::sync::oneshot::channel::<()>();
    let channel_task = tokio::spawn(channel.serve(async move {
        let _ = channel_stopped.await;
    }));
    let result = rotate(
        &options.policies,
        &options.state,
        Outside {
            stores: &stores,
            https_target_token: options.https_target_token.as_ref(),
        },
        &options.metrics,
        &hub,
        loaded,
        shutdown,
    )
    .await;
    detection.abort();
    let _ = stop_channel.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), channel_task).await;
    result
}

/// What rotation reaches outside the controller: the stores (shared with
/// the change detector) and the token https targets receive.
struct Outside<'a> {
    stores: &'a StandaloneStores,
    https_target_token: Option<&'a rotor_store::TokenFile>,
}

/// The rotation loop: steps every policy until `shutdown` resolves.
async fn rotate(
    policies: &Path,
    state_dir: &Path,
    outside: Outside<'_>,
    metrics: &RotationMetrics,
    hub: &crate::channel::Hub,
    mut loaded: Loaded,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let Outside {
        stores,
        https_target_token,
    } = outside;
    // Policies whose last step failed, and when each is tried again.
    // Each with its failures in a row and when it is due.
    let mut retries: BTreeMap<String, (Retry, tokio::time::Instant)> = BTreeMap::new();
    // The problem last logged: an invalid edit is logged once, and the
    // last good policies keep running (a rotation in flight finishes or
    // rolls back under them).
    let mut invalid: Option<String> = None;
    tokio::pin!(shutdown);
    loop {
        match load(policies) {
            Ok(fresh) => {
                if invalid.take().is_some() {
                    tracing::info!(dir = %policies.display(), "policy files valid again; using them");
                }
                loaded = fresh;
                stores.set(loaded.stores.clone());
            }
            Err(error) => {
                let text = error.to_string();
                if invalid.as_deref() != Some(text.as_str()) {
                    tracing::error!(%error, "invalid policy files; the last good policies keep running");
                    invalid = Some(text);
                }
            }
        }
        let mut wake = Duration::from_secs(1);
        for (policy, valid) in &loaded.policies {
            if let Some((_, at)) = retries.get(&policy.name_any()) {
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                if !left.is_zero() {
                    wake = wake.min(left);
                    continue;
                }
            }
            let store_name = &policy.spec.store_ref.name;
            let store = stores.get(store_name).await.unwrap_or_else(|| {
                Err(Error::StoreNotDefined {
                    policy: policy.name_any(),
                    store: store_name.clone(),
                    manifests: policies.to_path_buf(),
                })
            });
            let path = state_path(state_dir, policy);
            let state = read_state(&path);
            let token = policy.annotations().get(ROTATE_NOW).cloned();
            let rotate_now = token.is_some() && token != state.rotate_now_handled;
            let consumers = channel::consumers(
                hub,
                &policy.spec.sidecars,
                store_name,
                &valid.secret_name,
                channel::ack_deadline(&state.status, valid.ack_timeout, SystemTime::now()),
            );
            let result = match store {
                Ok(store) => {
                    Rotation {
                        policy: valid,
                        current: &state.status,
                        now: SystemTime::now(),
                        rotate_now,
                        store: &*store,
                        consumers: &consumers,
                        caller: https_target_token.map(|t| t as &dyn CallerToken),
                        rng: &rotor_store::random::SystemRandom,
                    }
                    .step()
                    .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(s) => {
                    retries.remove(&policy.name_any());
                    let key = policy.name_any();
                    let after = Settle {
                        key: &key,
                        before: &state.status,
                        token,
                        handled: state.rotate_now_handled.clone(),
                        generation: policy.metadata.generation,
                        pods: &consumers.pods,
                        secret: &valid.secret_name,
                        served: hub.served(),
                        metrics,
                    };
                    let record = StateFile {
                        path: &path,
                        policy: &key,
                    };
                    wake = wake.min(settle(s, after, &record).await?);
                }
                Err(e) => {
                    metrics.reconcile_failed(crate::rotation::metrics::Reconciler::Standalone, &e);
                    let (retry, at) = retries
                        .entry(policy.name_any())
                        .or_insert_with(|| (Retry::default(), tokio::time::Instant::now()));
                    let retry_in = retry.failed_exactly(crate::rotation::retry::SCHEDULE);
                    *at = tokio::time::Instant::now() + retry_in;
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
