//! The stores a pod may name: RotorStores by namespace, ClusterRotorStores,
//! and namespace labels. A plain in-memory index with `apply` / `delete` /
//! `reset` per kind ([`IndexResource`]), filled by watches in a cluster or
//! from YAML files without one, and unit-tested without any API. The
//! webhook and rotation share one [`SharedStoreIndex`].
//!
//! Every change that can alter a resolution (a store's spec or revision, a
//! namespace's labels) is also recorded as a [`Touched`] key, which the
//! rotation controller takes ([`StoreIndex::take_touched`]) to re-check the
//! policies that depend on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use rotor_contract::api::{
    ClusterRotorStore, ClusterRotorStoreSpec, Labels, Provider, ProviderKind, RotorStore,
    RotorStoreSpec,
};

use crate::Result;
use crate::index::IndexResource;

/// The store index as the webhook and the rotation reconciler share it:
/// written by the watches (or loaded once from files), read per request.
pub type SharedStoreIndex = Arc<RwLock<StoreIndex>>;

/// Which of Rotor's two store kinds a [`Resolved`] store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    /// The store's `spec.budget` (see `crate::budget`).
    pub budget: Option<rotor_contract::api::StoreBudget>,
}

/// Which object of a store's kind and name a [`Resolved`] store came from:
/// a store deleted and created again has another uid, a changed spec a
/// higher generation. Both `None` for stores read from files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revision {
    pub uid: Option<String>,
    pub generation: Option<i64>,
}

/// A store's spec as indexed, with the revision it came from.
#[derive(Debug, Clone, PartialEq)]
struct Entry<S> {
    spec: S,
    revision: Revision,
}

impl<S: Clone> Entry<S> {
    fn of(spec: &S, meta: &kube::api::ObjectMeta) -> Self {
        Self {
            spec: spec.clone(),
            revision: Revision {
                uid: meta.uid.clone(),
                generation: meta.generation,
            },
        }
    }
}

/// A RotorStore's index key and entry.
fn store_entry(s: &RotorStore) -> ((String, String), Entry<RotorStoreSpec>) {
    let key = (s.namespace().unwrap_or_default(), s.name_any());
    (key, Entry::of(&s.spec, &s.metadata))
}

/// A ClusterRotorStore's index key and entry.
fn cluster_entry(s: &ClusterRotorStore) -> (String, Entry<ClusterRotorStoreSpec>) {
    (s.name_any(), Entry::of(&s.spec, &s.metadata))
}

/// An index key whose entry changed: the policies that name this store, or
/// live in this namespace, must be resolved again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Touched {
    /// A RotorStore `name` in `namespace`.
    Store { namespace: String, name: String },
    /// A ClusterRotorStore `name`.
    ClusterStore { name: String },
    /// The labels of namespace `name`.
    Namespace { name: String },
}

/// Why a store may not be used from a namespace for some secrets: what
/// [`StoreIndex::lookup`] refuses. The message never lists a store's path
/// patterns: whoever can reach the webhook could read another namespace's
/// rules from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "store {store:?} not found: there is no RotorStore {store:?} in namespace {namespace:?} and no ClusterRotorStore {store:?}"
    )]
    NotFound { namespace: String, store: String },
    #[error(
        "ClusterRotorStore {store:?} does not allow namespace {namespace:?}: its allowedNamespaces selector does not match the namespace's labels"
    )]
    NamespaceNotAllowed { namespace: String, store: String },
    #[error(
        "ClusterRotorStore {store:?} does not allow secret {secret:?} in namespace {namespace:?}; its spec.paths lists what each namespace may read"
    )]
    PathNotAllowed {
        namespace: String,
        store: String,
        secret: String,
    },
    #[error(
        "ClusterRotorStore {store:?} uses Secret-based Vault auth ({}), which pods in other namespaces cannot mount; use kubernetes auth ({}) for a ClusterRotorStore",
        auth.field(),
        SecretAuth::INSTEAD
    )]
    SecretAuth { store: String, auth: SecretAuth },
}

/// Vault auth read from a Secret, which a ClusterRotorStore cannot use: a
/// pod cannot mount a Secret of another namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAuth {
    TokenSecretRef,
    AppRole,
}

impl SecretAuth {
    /// What a ClusterRotorStore uses instead.
    pub const INSTEAD: &str = "spec.provider.vault.auth.kubernetes";

    /// The field that sets it.
    pub fn field(self) -> &'static str {
        match self {
            SecretAuth::TokenSecretRef => "spec.provider.vault.auth.tokenSecretRef",
            SecretAuth::AppRole => "spec.provider.vault.auth.appRole",
        }
    }

    /// The Secret-based auth `provider` sets, if any.
    pub fn of(provider: &Provider) -> Option<Self> {
        let Ok(ProviderKind::Vault(vault)) = provider.view() else {
            return None;
        };
        if vault.auth.token_secret_ref.is_some() {
            Some(SecretAuth::TokenSecretRef)
        } else if vault.auth.app_role.is_some() {
            Some(SecretAuth::AppRole)
        } else {
            None
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct StoreIndex {
    namespaced: BTreeMap<(String, String), Entry<RotorStoreSpec>>,
    cluster: BTreeMap<String, Entry<ClusterRotorStoreSpec>>,
    namespaces: BTreeMap<String, Labels>,
    /// Keys whose entries changed since the last [`Self::take_touched`];
    /// at most one per store and namespace.
    touched: BTreeSet<Touched>,
}

/// Puts `value` at `key`; true when that changed the entry.
fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    map.get(&key) != Some(&value) && {
        map.insert(key, value);
        true
    }
}

/// Replaces `map` by `new`; the keys whose entries changed.
fn relist<K: Ord + Clone, V: PartialEq>(map: &mut BTreeMap<K, V>, new: BTreeMap<K, V>) -> Vec<K> {
    let old = std::mem::replace(map, new);
    let mut changed: Vec<K> = old
        .iter()
        .filter(|(k, v)| map.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(map.keys().filter(|k| !old.contains_key(*k)).cloned());
    changed
}

impl StoreIndex {
    pub fn apply_store(&mut self, s: &RotorStore) {
        let (key, entry) = store_entry(s);
        if replace(&mut self.namespaced, key.clone(), entry) {
            let (namespace, name) = key;
            self.touched.insert(Touched::Store { namespace, name });
        }
    }

    pub fn delete_store(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if self.namespaced.remove(&key).is_some() {
            let (namespace, name) = key;
            self.touched.insert(Touched::Store { namespace, name });
        }
    }

    pub fn apply_cluster_store(&mut self, s: &ClusterRotorStore) {
        let (name, entry) = cluster_entry(s);
        if replace(&mut self.cluster, name.clone(), entry) {
            self.touched.insert(Touched::ClusterStore { name });
        }
    }

    pub fn delete_cluster_store(&mut self, name: &str) {
        if self.cluster.remove(name).is_some() {
            self.touched.insert(Touched::ClusterStore {
                name: name.to_owned(),
            });
        }
    }

    pub fn apply_namespace(&mut self, name: &str, labels: Labels) {
        if replace(&mut self.namespaces, name.to_owned(), labels) {
            self.touched.insert(Touched::Namespace {
                name: name.to_owned(),
            });
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.touched.insert(Touched::Namespace {
                name: name.to_owned(),
            });
        }
    }

    /// The keys whose entries changed since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<Touched> {
        std::mem::take(&mut self.touched)
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
        self.lookup(namespace, store, secrets)
            .map(|(resolved, _)| resolved)
            .map_err(|refusal| refusal.to_string())
    }

    /// [`Self::resolve`], with the revision of the store it found, or the
    /// typed refusal.
    pub fn lookup(
        &self,
        namespace: &str,
        store: &str,
        secrets: &[&str],
    ) -> Result<(Resolved, Revision), Refusal> {
        if let Some(entry) = self
            .namespaced
            .get(&(namespace.to_owned(), store.to_owned()))
        {
            let resolved = Resolved {
                kind: StoreKind::Namespaced,
                name: store.to_owned(),
                provider: entry.spec.provider.clone(),
                allow_exec_reload: entry.spec.allow_exec_reload,
                budget: entry.spec.budget.clone(),
            };
            return Ok((resolved, entry.revision.clone()));
        }
        let Some(entry) = self.cluster.get(store) else {
            return Err(Refusal::NotFound {
                namespace: namespace.to_owned(),
                store: store.to_owned(),
            });
        };
        let spec = &entry.spec;
        let labels = self.namespaces.get(namespace).cloned().unwrap_or_default();
        if !selector_matches(&spec.allowed_namespaces, &labels) {
            return Err(Refusal::NamespaceNotAllowed {
                namespace: namespace.to_owned(),
                store: store.to_owned(),
            });
        }
        for secret in secrets {
            let allowed: Vec<&String> = spec
                .paths
                .iter()
                .filter(|r| r.namespace == "*" || r.namespace == namespace)
                .flat_map(|r| &r.patterns)
                .collect();
            if !allowed.iter().any(|p| path_matches(p, secret, namespace)) {
                return Err(Refusal::PathNotAllowed {
                    namespace: namespace.to_owned(),
                    store: store.to_owned(),
                    secret: (*secret).to_owned(),
                });
            }
        }
        if let Some(auth) = SecretAuth::of(&spec.provider) {
            return Err(Refusal::SecretAuth {
                store: store.to_owned(),
                auth,
            });
        }
        let resolved = Resolved {
            kind: StoreKind::Cluster,
            name: store.to_owned(),
            provider: spec.provider.clone(),
            allow_exec_reload: spec.allow_exec_reload,
            budget: spec.budget.clone(),
        };
        Ok((resolved, entry.revision.clone()))
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
        let changed = relist(&mut self.namespaced, all.iter().map(store_entry).collect());
        self.touched.extend(
            changed
                .into_iter()
                .map(|(namespace, name)| Touched::Store { namespace, name }),
        );
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
        let changed = relist(&mut self.cluster, all.iter().map(cluster_entry).collect());
        self.touched.extend(
            changed
                .into_iter()
                .map(|name| Touched::ClusterStore { name }),
        );
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
        let new = all
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        let changed = relist(&mut self.namespaces, new);
        self.touched
            .extend(changed.into_iter().map(|name| Touched::Namespace { name }));
    }
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
