//! Standalone's stores, by name, as the policy files define them: built
//! once per provider and budget, each behind its call budget
//! ([`BudgetedStore`], counted in `rotor_store_requests_total` and
//! `rotor_store_throttled_total`), shared by rotation and the change
//! detector ([`DetectStores`]). Standalone has no tenants: a stream's
//! store is the store of that name, whatever namespace the sidecar claims.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use rotor_contract::api::{Provider, ProviderKind, StoreBudget};
use rotor_store::Store;

use crate::budget::{Budget, BudgetedStore, Limit, Limiter, StoreMetrics};
use crate::detect::{DetectStores, StoreRef};
use crate::store_from_spec::Reach;
use crate::{Error, Result};

/// A store as a policy file defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSpec {
    pub provider: Provider,
    pub budget: Option<StoreBudget>,
}

impl StoreSpec {
    fn budget(&self, name: &str) -> Result<Budget> {
        let provider = self.provider.view().map_err(|source| Error::Provider {
            store: name.to_owned(),
            source,
        })?;
        Budget::of(name, self.budget.as_ref(), provider)
    }
}

/// A built store and the spec it was built from.
type Built = (StoreSpec, Arc<dyn Store>);

/// The stores of the policy files, built on first use.
pub struct StandaloneStores {
    reach: Reach,
    specs: RwLock<BTreeMap<String, StoreSpec>>,
    /// Each built store with the spec it was built from.
    built: tokio::sync::Mutex<BTreeMap<String, Built>>,
    metrics: StoreMetrics,
}

impl StandaloneStores {
    pub fn new(reach: Reach, metrics: StoreMetrics) -> Self {
        Self {
            reach,
            specs: RwLock::default(),
            built: tokio::sync::Mutex::default(),
            metrics,
        }
    }

    /// The stores as the policy files define them now; a store whose spec
    /// changed is built again at its next use.
    pub fn set(&self, specs: BTreeMap<String, StoreSpec>) {
        *self.specs.write().expect("store specs lock") = specs;
    }

    fn spec(&self, name: &str) -> Option<StoreSpec> {
        self.specs
            .read()
            .expect("store specs lock")
            .get(name)
            .cloned()
    }

    /// The store `name`, built (or reused while its spec is the same).
    /// `None` when the policy files define no such store.
    pub async fn get(&self, name: &str) -> Option<Result<Arc<dyn Store>>> {
        let spec = self.spec(name)?;
        let mut built = self.built.lock().await;
        if let Some((seen, store)) = built.get(name)
            && *seen == spec
        {
            return Some(Ok(store.clone()));
        }
        let made = async {
            let budget = spec.budget(name)?;
            let store = crate::store_from_spec::build(name, &spec.provider, &self.reach).await?;
            self.metrics.add_store(name);
            let limiter = Arc::new(Limiter::new(
                budget,
                Box::new(rotor_store::backoff::SystemRandom),
            ));
            Ok(Arc::new(BudgetedStore::new(
                store,
                limiter,
                self.metrics.clone(),
                name,
            )) as Arc<dyn Store>)
        }
        .await;
        if let Ok(store) = &made {
            built.insert(name.to_owned(), (spec, store.clone()));
        }
        Some(made)
    }
}

#[async_trait]
impl DetectStores for StandaloneStores {
    async fn store_for(&self, store: &StoreRef, _secret: &str) -> Result<Arc<dyn Store>> {
        self.get(&store.name).await.unwrap_or_else(|| {
            Err(Error::StoreNotInPolicies {
                store: store.name.clone(),
            })
        })
    }

    /// A store the policy files define, unless it is a Kubernetes one.
    fn detects(&self, store: &StoreRef) -> bool {
        self.spec(&store.name)
            .is_some_and(|s| !matches!(s.provider.view(), Ok(ProviderKind::Kubernetes(_)) | Err(_)))
    }

    fn fetch_limit(&self, store: &StoreRef, _secret: &str) -> Option<Limit> {
        let spec = self.spec(&store.name)?;
        let provider = spec.provider.view().ok()?;
        spec.budget(&store.name).ok()?.fetch_limit(provider)
    }
}
