//! Change detection once per (store, secret): the controller, not every
//! sidecar, asks each store whether a secret changed.
//!
//! From the subscriptions (which sidecar wants which secret of which store,
//! at which refresh interval) the detector keeps one target per distinct
//! (store, secret), checked every *shortest* interval asked for it,
//! however many sidecars ask. A check is the store's cheapest version
//! call, [`Store::current_version`]: Vault/OpenBao KV v2 metadata (a data
//! read only when the policy grants data alone), AWS `DescribeSecret`
//! (never `GetSecretValue`), the local store's `stat`. The store comes
//! from [`DetectStores`], which builds it with the tenant's identity (the
//! subscribing namespace's rotator, as rotation does) and puts it behind
//! the store's call budget ([`crate::budget::BudgetedStore`]).
//!
//! Each version seen for the first time (the first check included, with
//! `previous: None`) is sent as a [`VersionChanged`] on a bounded tokio
//! channel: the seam the channel's hub consumes to tell the subscribed
//! sidecars (`VersionAvailable`). A full channel holds the detector back;
//! a closed one stops it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use rotor_store::{Store, VersionId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Result;
use crate::budget::Limit;
use crate::store_index::StoreKind;

/// How many checks run at once; the store's budget bounds them further.
pub const MAX_CONCURRENT_CHECKS: usize = 16;

/// A store as a tenant uses it: the subscribing pod's namespace (whose
/// identity the checks use) and the store's kind and name. The kind is
/// what the hub resolved; `ClusterStores` resolves the name again through
/// the store index, as for the namespace's pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreRef {
    pub namespace: String,
    pub kind: StoreKind,
    pub name: String,
}

impl std::fmt::Display for StoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// One sidecar's interest in one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub store: StoreRef,
    pub secret: String,
    /// The sidecar's refresh interval for it.
    pub refresh: Duration,
}

/// A version of a secret the detector saw for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChanged {
    pub store: StoreRef,
    pub secret: String,
    /// The store's CURRENT version now.
    pub version: VersionId,
    /// The version seen before; `None` at the first check.
    pub previous: Option<VersionId>,
}

/// The stores the detector checks, each as its tenant and within its
/// budget. In a cluster: `cluster::stores::ClusterStores`, which resolves
/// the store through the store index (refusing a secret the tenant may
/// not read), logs in as the namespace's rotator, and shares the store's
/// limiter with rotation.
#[async_trait]
pub trait DetectStores: Send + Sync {
    /// `store` as its namespace may use it for `secret`.
    async fn store_for(&self, store: &StoreRef, secret: &str) -> Result<Arc<dyn Store>>;

    /// Whether changes of `store` are detected here (standalone: a store
    /// the controller defines, not a Kubernetes one). A cluster's
    /// admission decides from the resolved store instead.
    fn detects(&self, store: &StoreRef) -> bool {
        let _ = store;
        true
    }

    /// How many sidecar fetches a second the store's budget allows
    /// ([`crate::budget::Budget::fetch_limit`]), which the fan-out of a
    /// change paces the sidecars by (`crate::channel::fanout`); `None`:
    /// unlimited.
    fn fetch_limit(&self, store: &StoreRef, secret: &str) -> Option<Limit> {
        let _ = (store, secret);
        None
    }
}

type Key = (StoreRef, String);

/// One distinct (store, secret).
#[derive(Debug)]
struct Target {
    every: Duration,
    due: Instant,
    last: Option<VersionId>,
}

/// The targets for `subscriptions`: each distinct (store, secret) at the
/// shortest interval asked. A target kept keeps its last version and due
/// time (sooner when its interval shrank); a new one is due at `now`.
fn plan(old: &mut BTreeMap<Key, Target>, subscriptions: &[Subscription], now: Instant) {
    let mut every: BTreeMap<Key, Duration> = BTreeMap::new();
    for sub in subscriptions {
        let key = (sub.store.clone(), sub.secret.clone());
        let refresh = sub.refresh.max(Duration::from_millis(1));
        every
            .entry(key)
            .and_modify(|d| *d = (*d).min(refresh))
            .or_insert(refresh);
    }
    old.retain(|key, _| every.contains_key(key));
    for (key, every) in every {
        match old.get_mut(&key) {
            Some(target) => {
                if every < target.every {
                    target.due = target.due.min(now + every);
                }
                target.every = every;
            }
            None => {
                old.insert(
                    key,
                    Target {
                        every,
                        due: now,
                        last: None,
                    },
                );
            }
        }
    }
}

/// The detector: run it with [`Detector::run`].
pub struct Detector {
    stores: Arc<dyn DetectStores>,
    checks: watch::Sender<u64>,
}

impl Detector {
    pub fn new(stores: Arc<dyn DetectStores>) -> Self {
        Self {
            stores,
            checks: watch::Sender::new(0),
        }
    }

    /// Checks finished so far (answered or failed), for tests and
    /// benchmarks to wait on.
    pub fn checks(&self) -> watch::Receiver<u64> {
        self.checks.subscribe()
    }

    /// Checks every distinct (store, secret) of `subscriptions` (the
    /// latest value; a change takes effect at once) at its shortest
    /// interval and sends each new version on `events`. Returns when
    /// `subscriptions`' sender or `events`' receiver is gone.
    pub async fn run(
        self,
        mut subscriptions: watch::Receiver<Vec<Subscription>>,
        events: mpsc::Sender<VersionChanged>,
    ) {
        let mut targets = BTreeMap::new();
        plan(
            &mut targets,
            &subscriptions.borrow_and_update(),
            Instant::now(),
        );
        loop {
            let next = targets.values().map(|t: &Target| t.due).min();
            let sleep = async {
                match next {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = subscriptions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    plan(&mut targets, &subscriptions.borrow_and_update(), Instant::now());
                }
                () = sleep => {
                    if !self.round(&mut targets, &events).await {
                        return;
                    }
                }
            }
        }
    }

    /// Checks every due target once; `false` when `events` is closed.
    async fn round(
        &self,
        targets: &mut BTreeMap<Key, Target>,
        events: &mpsc::Sender<VersionChanged>,
    ) -> bool {
        let now = Instant::now();
        let due: Vec<Key> = targets
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let results: Vec<(Key, Result<VersionId>)> = futures_util::stream::iter(due)
            .map(|key| async move {
                let version = self.check(&key).await;
                (key, version)
            })
            .buffer_unordered(MAX_CONCURRENT_CHECKS)
            .collect()
            .await;
        let finished = Instant::now();
        for ((store, secret), result) in results {
            let Some(target) = targets.get_mut(&(store.clone(), secret.clone())) else {
                continue;
            };
            // Next due one interval after this one was due; after a round
            // that ran past that (a budget or throttling wait), one
            // interval after it finished: no catching up in a burst.
            let next = target.due + target.every;
            target.due = if next > finished {
                next
            } else {
                finished + target.every
            };
            self.checks.send_modify(|n| *n += 1);
            match result {
                Ok(version) if target.last.as_ref() != Some(&version) => {
                    let previous = target.last.replace(version.clone());
                    tracing::debug!(%store, %secret, %version, "new version");
                    let event = VersionChanged {
                        store,
                        secret,
                        version,
                        previous,
                    };
                    if events.send(event).await.is_err() {
                        return false;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%store, %secret, error = %e, reason = e.metric_label(), "change check failed; checking again at the next interval");
                }
            }
        }
        true
    }

    async fn check(&self, (store, secret): &Key) -> Result<VersionId> {
        let client = self.stores.store_for(store, secret).await?;
        Ok(client.current_version(secret).await?)
    }
}

#[cfg(test)]
pub(crate) mod tests;
