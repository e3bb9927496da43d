//! The consumer index: which running pods read which secret from which
//! store, from their `rotor.dev/` annotations; only pods whose spec holds
//! the sidecar as the webhook injects it ([`injected`]) count. A plain
//! struct with `apply` / `delete` / `reset` ([`IndexResource`]),
//! unit-tested without an API. Rotation asks these pods over their
//! streams (`channel::StreamConsumers`); one whose sidecar holds no stream
//! counts as not acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use rotor_contract::annotations;

use crate::index::IndexResource;
use crate::pod_injection::injected;

/// (namespace, store, secret).
type SecretKey = (String, String, String);
/// (namespace, pod).
type PodKey = (String, String);

/// (namespace, store, secret) → pod names.
#[derive(Debug, Clone, Default)]
pub struct ConsumerIndex {
    by_secret: BTreeMap<SecretKey, BTreeSet<String>>,
    /// The secret keys each pod is listed under, for deletes.
    by_pod: BTreeMap<PodKey, BTreeSet<SecretKey>>,
}

/// Pods are watched: a relist replaces the whole index.
impl IndexResource<Pod> for ConsumerIndex {
    /// Indexes a running, injected pod; anything else is removed.
    fn apply(&mut self, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        self.delete_pod(&ns, &name);
        self.insert(ns, name, pod);
    }

    fn delete(&mut self, pod: &Pod) {
        self.delete_pod(&pod.namespace().unwrap_or_default(), &pod.name_any());
    }

    fn reset(&mut self, all: &[Pod]) {
        *self = Self::default();
        for pod in all {
            self.insert(pod.namespace().unwrap_or_default(), pod.name_any(), pod);
        }
    }
}

impl ConsumerIndex {
    /// Adds a pod that is not in the index, if it is running and its spec
    /// holds Rotor's sidecar.
    fn insert(&mut self, ns: String, name: String, pod: &Pod) {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running {
            return;
        }
        // Only a pod Rotor injected has a sidecar to acknowledge; a pod
        // that merely says so in its annotations would stall rotations.
        if injected(pod).is_none() {
            return;
        }
        let ann = pod.annotations();
        let Ok(contract) = annotations::parse(ann.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        else {
            return;
        };
        if !contract.inject {
            return;
        }
        let Some(store) = contract.store.clone() else {
            return;
        };
        let mut keys = BTreeSet::new();
        for secret in contract.secret_names() {
            let key = (ns.clone(), store.clone(), secret.to_owned());
            self.by_secret
                .entry(key.clone())
                .or_default()
                .insert(name.clone());
            keys.insert(key);
        }
        self.by_pod.insert((ns, name), keys);
    }

    /// Removes the pod `namespace/name`.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        if let Some(keys) = self.by_pod.remove(&(namespace.to_owned(), name.to_owned())) {
            for key in keys {
                if let Some(pods) = self.by_secret.get_mut(&key) {
                    pods.remove(name);
                    if pods.is_empty() {
                        self.by_secret.remove(&key);
                    }
                }
            }
        }
    }

    /// `namespace/pod` of each consumer of one secret.
    pub fn consumers(&self, namespace: &str, store: &str, secret: &str) -> Vec<String> {
        self.by_secret
            .get(&(namespace.to_owned(), store.to_owned(), secret.to_owned()))
            .map(|m| m.iter().map(|pod| format!("{namespace}/{pod}")).collect())
            .unwrap_or_default()
    }

    pub fn pods(&self) -> usize {
        self.by_pod.len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::pod_injection::tests::{injected_pod, plain};

    /// A pod as the webhook injected it (the spec), with these annotations
    /// and status.
    fn pod(name: &str, ip: &str, phase: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            spec: injected_pod(true).spec,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    const ANN: &[(&str, &str)] = &[
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "vault"),
        ("rotor.dev/secret.db", "shop/db#password"),
        ("rotor.dev/secret.api", "shop/api"),
    ];

    #[test]
    fn indexes_running_injected_pods_by_store_and_secret() {
        let mut i = ConsumerIndex::default();
        i.apply(&pod("a", "10.0.0.1", "Running", ANN));
        i.apply(&pod("b", "10.0.0.2", "Running", ANN));
        i.apply(&pod("pending", "10.0.0.3", "Pending", ANN));
        i.apply(&pod("plain", "10.0.0.4", "Running", &[("app", "x")]));
        assert_eq!(
            i.consumers("shop", "vault", "shop/db"),
            vec!["shop/a".to_owned(), "shop/b".to_owned()]
        );
        assert_eq!(i.consumers("shop", "vault", "shop/api").len(), 2);
        assert!(i.consumers("shop", "other", "shop/db").is_empty());
        assert!(i.consumers("elsewhere", "vault", "shop/db").is_empty());
        // An update that drops a secret, a delete, and a reset.
        i.apply(&pod("a", "10.0.0.1", "Running", &ANN[..3]));
        assert_eq!(i.consumers("shop", "vault", "shop/api").len(), 1);
        i.delete(&pod("b", "10.0.0.2", "Running", ANN));
        assert_eq!(i.consumers("shop", "vault", "shop/db").len(), 1);
        assert_eq!(i.pods(), 1);
        i.reset(&[]);
        assert_eq!(i.pods(), 0);
    }

    #[test]
    fn a_relist_replaces_every_pod() {
        let mut i = ConsumerIndex::default();
        i.apply(&pod("gone", "10.0.0.9", "Running", ANN));
        i.reset(&[
            pod("a", "10.0.0.1", "Running", ANN),
            pod("pending", "10.0.0.3", "Pending", ANN),
        ]);
        assert_eq!(i.consumers("shop", "vault", "shop/db"), vec!["shop/a"]);
        assert_eq!(i.pods(), 1);
        // A pod that stops running leaves the index.
        i.apply(&pod("a", "10.0.0.1", "Succeeded", ANN));
        assert_eq!(i.pods(), 0);
    }

    /// A running pod without Rotor's sidecar, annotated as a consumer
    /// (`kubectl annotate pod decoy rotor.dev/inject=true ...`), is never
    /// one: it has no sidecar to acknowledge, so counting it would stall
    /// every rotation of the secret.
    #[test]
    fn only_pods_holding_the_injected_sidecar_are_consumers() {
        let mut i = ConsumerIndex::default();
        let mut decoy = pod("decoy", "10.0.0.7", "Running", ANN);
        decoy.spec = plain().spec;
        i.apply(&decoy);
        i.reset(std::slice::from_ref(&decoy));
        assert_eq!(i.pods(), 0);
        let mut classic = pod("classic", "10.0.0.8", "Running", ANN);
        classic.spec = injected_pod(false).spec;
        i.apply(&classic);
        assert_eq!(
            i.consumers("shop", "vault", "shop/db"),
            vec!["shop/classic"]
        );
    }

    /// A running injected pod is a consumer before its sidecar connects
    /// (and without an IP): rotation then sees it as not connected.
    #[test]
    fn a_running_pod_counts_without_an_ip() {
        let mut i = ConsumerIndex::default();
        let mut p = pod("a", "", "Running", ANN);
        p.status.as_mut().unwrap().pod_ip = None;
        i.apply(&p);
        assert_eq!(i.consumers("shop", "vault", "shop/api"), vec!["shop/a"]);
    }
}
