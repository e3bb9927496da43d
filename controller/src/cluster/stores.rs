//! The stores rotation uses in a cluster: on every step, the policy's store
//! is resolved through the shared store index as the store and the
//! namespace are now (a deleted store, a namespace label that no longer
//! matches, a path `paths` does not allow: refused at this step). Built
//! stores are reused only while everything they were built from is the
//! same: namespace, store kind and name, the store object's uid and
//! generation, and its provider spec.
//!
//! Every store built is a [`BudgetedStore`]: its calls go through the
//! store's [`Limiter`], one per store object (a ClusterRotorStore's is
//! shared by every namespace that uses it), and are counted in
//! [`StoreMetrics`]. The change detector (`crate::detect`) gets its
//! stores here too ([`DetectStores`]), as the subscribing namespace's
//! rotator and within the same budget.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use rotor_contract::api::{Provider, SecretRotationPolicy};
use rotor_store::Store;

use crate::Result;
use crate::budget::{Budget, BudgetedStore, Limit, Limiter, StoreMetrics};
use crate::detect::{DetectStores, StoreRef};
use crate::identity::Rotators;
use crate::rotation::reconciler::StoreFactory;
use crate::store_from_spec::Reach;
use crate::store_index::{Resolved, Revision, SharedStoreIndex, StoreKind};

/// Builds rotation stores from the store index, logging in as the policy's
/// namespace's rotator (`identity`).
pub struct ClusterStores {
    index: SharedStoreIndex,
    /// Whom rotation acts as: the rotator of the policy's namespace.
    rotators: Rotators,
    /// At most one built store per (namespace, kind, name): a new revision
    /// or provider replaces it, a refusal removes it.
    cache: tokio::sync::Mutex<BTreeMap<CacheKey, Built>>,
    /// One limiter per store object, kept while its revision is the same.
    limiters: std::sync::Mutex<BTreeMap<StoreObject, (Revision, Arc<Limiter>)>>,
    metrics: StoreMetrics,
}

/// Whose store a cache entry is: the policy's namespace and the store.
type CacheKey = (String, StoreKind, String);

/// A store object: its kind and name.
type StoreObject = (StoreKind, String);

/// A built store and what it was built from.
struct Built {
    revision: Revision,
    provider: Provider,
    store: Arc<dyn Store>,
}

impl Built {
    /// Whether this was built from `resolved` at `revision`.
    fn matches(&self, resolved: &Resolved, revision: &Revision) -> bool {
        self.revision == *revision && self.provider == resolved.provider
    }
}

impl ClusterStores {
    pub fn new(index: SharedStoreIndex, rotators: Rotators) -> Self {
        Self {
            index,
            rotators,
            cache: Default::default(),
            limiters: Default::default(),
            metrics: StoreMetrics::default(),
        }
    }

    /// Counts the stores' requests in `metrics` (the controller's).
    pub fn with_metrics(mut self, metrics: StoreMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Builds the store `resolved` for a policy in `namespace`, behind
    /// its budget.
    async fn build(
        &self,
        namespace: &str,
        resolved: &Resolved,
        revision: &Revision,
    ) -> Result<Arc<dyn Store>> {
        let reach = Reach::Cluster(self.rotators.in_namespace(namespace));
        let store =
            crate::store_from_spec::build(&resolved.name, &resolved.provider, &reach).await?;
        let limiter = self.limiter(resolved, revision)?;
        let label = match resolved.kind {
            StoreKind::Namespaced => format!("{namespace}/{}", resolved.name),
            StoreKind::Cluster => format!("cluster/{}", resolved.name),
        };
        Ok(Arc::new(BudgetedStore::new(
            store,
            limiter,
            self.metrics.clone(),
            label,
        )))
    }

    /// The limiter of the store object `resolved` came from.
    fn limiter(&self, resolved: &Resolved, revision: &Revision) -> Result<Arc<Limiter>> {
        let mut limiters = self.limiters.lock().expect("limiters lock");
        let key = (resolved.kind, resolved.name.clone());
        if let Some((seen, limiter)) = limiters.get(&key)
            && seen == revision
        {
            return Ok(limiter.clone());
        }
        let provider = resolved
            .provider
            .view()
            .map_err(|source| crate::Error::Provider {
                store: resolved.name.clone(),
                source,
            })?;
        let budget = Budget::of(&resolved.name, resolved.budget.as_ref(), provider)?;
        let limiter = Arc::new(Limiter::new(
            budget,
            Box::new(rotor_store::backoff::SystemRandom),
        ));
        limiters.insert(key, (revision.clone(), limiter.clone()));
        Ok(limiter)
    }

    /// The store `name` as `namespace` may use it for `secret`, built
    /// (or reused) as that namespace's rotator.
    async fn resolve(&self, namespace: &str, name: &str, secret: &str) -> Result<Arc<dyn Store>> {
        let looked_up = self
            .index
            .read()
            .expect("index lock")
            .lookup(namespace, name, &[secret]);
        let (resolved, revision) = match looked_up {
            Ok(found) => found,
            Err(refusal) => {
                let mut cache = self.cache.lock().await;
                for kind in [StoreKind::Namespaced, StoreKind::Cluster] {
                    cache.remove(&(namespace.to_owned(), kind, name.to_owned()));
                }
                return Err(refusal.into());
            }
        };
        let key = (namespace.to_owned(), resolved.kind, name.to_owned());
        if let Some(built) = self.cache.lock().await.get(&key)
            && built.matches(&resolved, &revision)
        {
            return Ok(built.store.clone());
        }
        let store = self.build(namespace, &resolved, &revision).await?;
        let built = Built {
            revision,
            provider: resolved.provider,
            store: store.clone(),
        };
        self.cache.lock().await.insert(key, built);
        Ok(store)
    }

    /// How many built stores are kept.
    #[cfg(test)]
    async fn cached(&self) -> usize {
        self.cache.lock().await.len()
    }
}

#[async_trait::async_trait]
impl StoreFactory for ClusterStores {
    async fn store(&self, policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>> {
        let namespace = policy.namespace().unwrap_or_default();
        self.resolve(
            &namespace,
            &policy.spec.store_ref.name,
            &policy.spec.secret_name,
        )
        .await
    }
}

#[async_trait::async_trait]
impl DetectStores for ClusterStores {
    async fn store_for(&self, store: &StoreRef, secret: &str) -> Result<Arc<dyn Store>> {
        self.resolve(&store.namespace, &store.name, secret).await
    }

    fn fetch_limit(&self, store: &StoreRef, secret: &str) -> Option<Limit> {
        let (resolved, _) = self
            .index
            .read()
            .expect("index lock")
            .lookup(&store.namespace, &store.name, &[secret])
            .ok()?;
        let provider = resolved.provider.view().ok()?;
        Budget::of(&resolved.name, resolved.budget.as_ref(), provider)
            .ok()?
            .fetch_limit(provider)
    }
}

#[cfg(test)]
mod tests;
