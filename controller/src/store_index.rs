//! The stores a pod may name: RotorStores by namespace, ClusterRotorStores,
//! and namespace labels. A plain in-memory index with `apply` / `delete` /
//! `reset` per kind ([`IndexResource`]), filled by watches in a cluster or
//! from YAML files without one, and unit-tested without any API. The
//! webhook and rotation share one [`SharedStoreIndex`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use rotor_crds::api::{
    ClusterRotorStore, ClusterRotorStoreSpec, Labels, Provider, ProviderKind, RotorStore,
    RotorStoreSpec,
};

use crate::Result;
use crate::cluster::watch::IndexResource;

/// The store index as the webhook and the rotation reconciler share it:
/// written by the watches (or loaded once from files), read per request.
pub type SharedStoreIndex = Arc<RwLock<StoreIndex>>;

/// Which of Rotor's two store kinds a [`Resolved`] store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A `RotorStore`, in the pod's namespace.
    Namespaced,
    /// A `ClusterRotorStore`.
    Cluster,
}

impl StoreKind {
    /// The kind's name, as messages and the API say it.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Namespaced => "RotorStore",
            StoreKind::Cluster => "ClusterRotorStore",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store a pod may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub kind: StoreKind,
    pub name: String,
    pub provider: Provider,
    /// The store's owner lets pods run `exec:` reload actions.
    pub allow_exec_reload: bool,
}

#[derive(Debug, Default, Clone)]
pub struct StoreIndex {
    namespaced: BTreeMap<(String, String), RotorStoreSpec>,
    cluster: BTreeMap<String, ClusterRotorStoreSpec>,
    namespaces: BTreeMap<String, Labels>,
}

impl StoreIndex {
    pub fn apply_store(&mut self, s: &RotorStore) {
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        self.namespaced.insert(key, s.spec.clone());
    }

    pub fn delete_store(&mut self, namespace: &str, name: &str) {
        self.namespaced
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    pub fn apply_cluster_store(&mut self, s: &ClusterRotorStore) {
        self.cluster.insert(s.name_any(), s.spec.clone());
    }

    pub fn delete_cluster_store(&mut self, name: &str) {
        self.cluster.remove(name);
    }

    pub fn apply_namespace(&mut self, name: &str, labels: Labels) {
        self.namespaces.insert(name.to_owned(), labels);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub fn len(&self) -> usize {
        self.namespaced.len() + self.cluster.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store `store` as the pod in `namespace` reading `secrets` may use
    /// it, or why not.
    pub fn resolve(
        &self,
        namespace: &str,
        store: &str,
        secrets: &[&str],
    ) -> Result<Resolved, String> {
        if let Some(spec) = self
            .namespaced
            .get(&(namespace.to_owned(), store.to_owned()))
        {
            return Ok(Resolved {
                kind: StoreKind::Namespaced,
                name: store.to_owned(),
                provider: spec.provider.clone(),
                allow_exec_reload: spec.allow_exec_reload,
            });
        }
        let Some(spec) = self.cluster.get(store) else {
            return Err(format!(
                "store {store:?} not found: there is no RotorStore {store:?} in namespace {namespace:?} and no ClusterRotorStore {store:?}"
            ));
        };
        let labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        if !selector_matches(&spec.allowed_namespaces, &labels) {
            return Err(format!(
                "ClusterRotorStore {store:?} does not allow namespace {namespace:?}: its allowedNamespaces selector does not match the namespace's labels"
            ));
        }
        for secret in secrets {
            let allowed: Vec<&String> = spec
                .paths
                .iter()
                .filter(|r| r.namespace == "*" || r.namespace == namespace)
                .flat_map(|r| &r.patterns)
                .collect();
            // The message never lists the patterns: whoever can reach the
            // webhook could read another namespace's rules from it.
            if !allowed.iter().any(|p| path_matches(p, secret, namespace)) {
                return Err(format!(
                    "ClusterRotorStore {store:?} does not allow secret {secret:?} in namespace {namespace:?}; its spec.paths lists what each namespace may read"
                ));
            }
        }
        if let Some(problem) = cluster_auth_problem(&spec.provider) {
            return Err(format!("ClusterRotorStore {store:?} {problem}"));
        }
        Ok(Resolved {
            kind: StoreKind::Cluster,
            name: store.to_owned(),
            provider: spec.provider.clone(),
            allow_exec_reload: spec.allow_exec_reload,
        })
    }

    /// Loads RotorStore, ClusterRotorStore and Namespace objects from the
    /// YAML files (`.yaml`, `.yml`, multi-document) in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut index = Self::default();
        for doc in crate::manifests::documents(dir, "--stores")? {
            match doc.kind.as_str() {
                "RotorStore" => index.apply(&doc.parse::<RotorStore>()?),
                "ClusterRotorStore" => index.apply(&doc.parse::<ClusterRotorStore>()?),
                "Namespace" => index.apply(&doc.parse::<Namespace>()?),
                _ => return Err(doc.unexpected("RotorStore, ClusterRotorStore, Namespace")),
            }
        }
        Ok(index)
    }
}

/// A relist replaces the RotorStores by the complete list.
impl IndexResource<RotorStore> for StoreIndex {
    fn apply(&mut self, s: &RotorStore) {
        self.apply_store(s);
    }

    fn delete(&mut self, s: &RotorStore) {
        self.delete_store(&s.namespace().unwrap_or_default(), &s.name_any());
    }

    fn reset(&mut self, all: &[RotorStore]) {
        self.namespaced.clear();
        all.iter().for_each(|s| self.apply_store(s));
    }
}

/// A relist replaces the ClusterRotorStores by the complete list.
impl IndexResource<ClusterRotorStore> for StoreIndex {
    fn apply(&mut self, s: &ClusterRotorStore) {
        self.apply_cluster_store(s);
    }

    fn delete(&mut self, s: &ClusterRotorStore) {
        self.delete_cluster_store(&s.name_any());
    }

    fn reset(&mut self, all: &[ClusterRotorStore]) {
        self.cluster.clear();
        all.iter().for_each(|s| self.apply_cluster_store(s));
    }
}

/// Namespace labels, for ClusterRotorStores' `allowedNamespaces`.
impl IndexResource<Namespace> for StoreIndex {
    fn apply(&mut self, n: &Namespace) {
        self.apply_namespace(&n.name_any(), n.labels().clone());
    }

    fn delete(&mut self, n: &Namespace) {
        self.delete_namespace(&n.name_any());
    }

    fn reset(&mut self, all: &[Namespace]) {
        self.namespaces.clear();
        all.iter()
            .for_each(|n| self.apply_namespace(&n.name_any(), n.labels().clone()));
    }
}

/// Secret-based auth cannot serve other namespaces: a pod cannot mount a
/// Secret from another namespace.
fn cluster_auth_problem(provider: &Provider) -> Option<String> {
    let Ok(ProviderKind::Vault(vault)) = provider.view() else {
        return None;
    };
    (vault.auth.token_secret_ref.is_some() || vault.auth.app_role.is_some()).then(|| {
        "uses Secret-based Vault auth, which pods in other namespaces cannot mount; use kubernetes auth for a ClusterRotorStore".to_owned()
    })
}

/// Label selector semantics; an empty selector matches nothing here, so
/// that a ClusterRotorStore is opt-in per namespace.
pub fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let match_labels = selector.match_labels.clone().unwrap_or_default();
    let exprs = selector.match_expressions.clone().unwrap_or_default();
    if match_labels.is_empty() && exprs.is_empty() {
        return false;
    }
    if match_labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        return false;
    }
    exprs.iter().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    })
}

/// `*` matches within a path segment, `**` across segments, and
/// `{namespace}` is the pod's namespace.
pub fn path_matches(pattern: &str, path: &str, namespace: &str) -> bool {
    let pattern = pattern.replace("{namespace}", namespace);
    glob(pattern.as_bytes(), path.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => (0..=s.len())
            .take_while(|i| *i == 0 || s[i - 1] != b'/')
            .any(|i| glob(rest, &s[i..])),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests;
