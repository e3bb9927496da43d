//! The stores rotation uses in a cluster: the policy's store resolved
//! through the shared store index, built once per (namespace, store).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use rotor_crds::api::SecretRotationPolicy;
use rotor_store::Store;

use crate::cluster::identity::Rotators;
use crate::rotation::reconciler::StoreFactory;
use crate::store_from_spec::Reach;
use crate::store_index::SharedStoreIndex;
use crate::{Error, Result};

/// Builds rotation stores from the store index, logging in as the policy's
/// namespace's rotator (`cluster::identity`). Stores are cached by
/// (namespace, store).
pub struct ClusterStores {
    index: SharedStoreIndex,
    /// Whom rotation acts as: the rotator of the policy's namespace.
    rotators: Rotators,
    cache: tokio::sync::Mutex<BTreeMap<(String, String), Arc<dyn Store>>>,
}

impl ClusterStores {
    pub fn new(index: SharedStoreIndex, rotators: Rotators) -> Self {
        Self {
            index,
            rotators,
            cache: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl StoreFactory for ClusterStores {
    async fn store(&self, policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>> {
        let namespace = policy.namespace().unwrap_or_default();
        let name = policy.spec.store_ref.name.clone();
        let key = (namespace.clone(), name.clone());
        if let Some(s) = self.cache.lock().await.get(&key) {
            return Ok(s.clone());
        }
        let resolved = self
            .index
            .read()
            .expect("index lock")
            .resolve(&namespace, &name, &[policy.spec.secret_name.as_str()])
            .map_err(Error::StoreNotResolved)?;
        let reach = Reach::Cluster(self.rotators.in_namespace(&namespace));
        let store = crate::store_from_spec::build(&name, &resolved.provider, &reach).await?;
        self.cache.lock().await.insert(key, store.clone());
        Ok(store)
    }
}
