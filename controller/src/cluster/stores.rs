//! The stores rotation uses in a cluster: on every step, the policy's store
//! is resolved through the shared store index as the store and the
//! namespace are now (a deleted store, a namespace label that no longer
//! matches, a path `paths` does not allow: refused at this step). Built
//! stores are reused only while everything they were built from is the
//! same: namespace, store kind and name, the store object's uid and
//! generation, and its provider spec.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use rotor_crds::api::{Provider, SecretRotationPolicy};
use rotor_store::Store;

use crate::Result;
use crate::cluster::identity::Rotators;
use crate::rotation::reconciler::StoreFactory;
use crate::store_from_spec::Reach;
use crate::store_index::{Resolved, Revision, SharedStoreIndex, StoreKind};

/// Builds rotation stores from the store index, logging in as the policy's
/// namespace's rotator (`cluster::identity`).
pub struct ClusterStores {
    index: SharedStoreIndex,
    /// Whom rotation acts as: the rotator of the policy's namespace.
    rotators: Rotators,
    /// At most one built store per (namespace, kind, name): a new revision
    /// or provider replaces it, a refusal removes it.
    cache: tokio::sync::Mutex<BTreeMap<CacheKey, Built>>,
}

/// Whose store a cache entry is: the policy's namespace and the store.
type CacheKey = (String, StoreKind, String);

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
        }
    }

    /// Builds the store `resolved` for a policy in `namespace`.
    async fn build(&self, namespace: &str, resolved: &Resolved) -> Result<Arc<dyn Store>> {
        let reach = Reach::Cluster(self.rotators.in_namespace(namespace));
        crate::store_from_spec::build(&resolved.name, &resolved.provider, &reach).await
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
        let name = &policy.spec.store_ref.name;
        let looked_up = self.index.read().expect("index lock").lookup(
            &namespace,
            name,
            &[policy.spec.secret_name.as_str()],
        );
        let (resolved, revision) = match looked_up {
            Ok(found) => found,
            Err(refusal) => {
                let mut cache = self.cache.lock().await;
                for kind in [StoreKind::Namespaced, StoreKind::Cluster] {
                    cache.remove(&(namespace.clone(), kind, name.clone()));
                }
                return Err(refusal.into());
            }
        };
        let key = (namespace.clone(), resolved.kind, name.clone());
        if let Some(built) = self.cache.lock().await.get(&key)
            && built.matches(&resolved, &revision)
        {
            return Ok(built.store.clone());
        }
        let store = self.build(&namespace, &resolved).await?;
        let built = Built {
            revision,
            provider: resolved.provider,
            store: store.clone(),
        };
        self.cache.lock().await.insert(key, built);
        Ok(store)
    }
}

#[cfg(test)]
mod tests;
