//! The stores rotation uses in a cluster: the policy's store resolved
//! through the shared store index, built once per (namespace, store).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kube::ResourceExt;
use rotor_crds::api::SecretRotationPolicy;
use rotor_store::Store;

use crate::rotation::reconciler::StoreFactory;
use crate::store_from_spec::Reach;
use crate::store_index::SharedStoreIndex;
use crate::{Error, Result};

/// Builds rotation stores from the store index: Vault with the
/// controller's own Kubernetes auth, AWS with the default chain. Stores are
/// cached by (namespace, store).
pub struct ClusterStores {
    index: SharedStoreIndex,
    /// What the controller can reach: Vault with its own projected token.
    reach: Reach,
    cache: tokio::sync::Mutex<BTreeMap<(String, String), Arc<dyn Store>>>,
}

impl ClusterStores {
    pub fn new(index: SharedStoreIndex, vault_jwt_file: PathBuf) -> Self {
        Self {
            index,
            reach: Reach::Cluster { vault_jwt_file },
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
        let store = crate::store_from_spec::build(&name, &resolved.provider, &self.reach).await?;
        self.cache.lock().await.insert(key, store.clone());
        Ok(store)
    }
}
