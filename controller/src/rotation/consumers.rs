//! The consumer index: which pods read which secret from which store,
//! from their `rotor.dev/` annotations; only pods whose spec holds the
//! sidecar as the webhook injects it ([`injected`]) count. A plain struct with `apply` /
//! `delete` / `reset` ([`IndexResource`]), unit-tested without an API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use rotor_crds::annotations;

use super::machine::{Ack, Consumers};
use crate::cluster::watch::IndexResource;
use crate::pod_injection::injected;
use crate::sidecar_push::HttpSidecars;

/// (namespace, store, secret).
type SecretKey = (String, String, String);
/// (namespace, pod).
type PodKey = (String, String);

/// (namespace, store, secret) → pod name → push URL.
#[derive(Debug, Clone)]
pub struct ConsumerIndex {
    /// The sidecars' push port, where the URLs point.
    push_port: u16,
    by_secret: BTreeMap<SecretKey, BTreeMap<String, String>>,
    /// The secret keys each pod is listed under, for deletes.
    by_pod: BTreeMap<PodKey, BTreeSet<SecretKey>>,
}

/// Pods whose sidecars listen on the default push port.
impl Default for ConsumerIndex {
    fn default() -> Self {
        Self::new(rotor_crds::defaults::PUSH_PORT)
    }
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
        *self = Self::new(self.push_port);
        for pod in all {
            self.insert(pod.namespace().unwrap_or_default(), pod.name_any(), pod);
        }
    }
}

impl ConsumerIndex {
    /// An empty index of sidecars that listen on `push_port`.
    pub fn new(push_port: u16) -> Self {
        Self {
            push_port,
            by_secret: BTreeMap::new(),
            by_pod: BTreeMap::new(),
        }
    }

    /// Adds a pod that is not in the index, if it is running and its spec
    /// holds Rotor's sidecar.
    fn insert(&mut self, ns: String, name: String, pod: &Pod) {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let Some(ip) = ip.filter(|_| running) else {
            return;
        };
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
        let url = format!("http://{ip}:{}", self.push_port);
        let mut keys = BTreeSet::new();
        for secret in contract.secret_names() {
            let key = (ns.clone(), store.clone(), secret.to_owned());
            self.by_secret
                .entry(key.clone())
                .or_default()
                .insert(name.clone(), url.clone());
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

    /// `namespace/pod` → push URL for the consumers of one secret.
    pub fn consumers(&self, namespace: &str, store: &str, secret: &str) -> Vec<(String, String)> {
        self.by_secret
            .get(&(namespace.to_owned(), store.to_owned(), secret.to_owned()))
            .map(|m| {
                m.iter()
                    .map(|(pod, url)| (format!("{namespace}/{pod}"), url.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn pods(&self) -> usize {
        self.by_pod.len()
    }
}

/// The consumer pods of one secret, reached over their push endpoints.
pub struct PodConsumers {
    pub pods: Vec<(String, String)>,
    pub http: Arc<HttpSidecars>,
}

#[async_trait]
impl Consumers for PodConsumers {
    async fn refresh(&self, secret: &str, version: Option<&str>) -> Vec<Ack> {
        let urls: Vec<String> = self.pods.iter().map(|(_, u)| u.clone()).collect();
        let acks = self.http.refresh_urls(&urls, secret, version).await;
        acks.into_iter()
            .zip(&self.pods)
            .map(|(mut ack, (name, _))| {
                ack.consumer = name.clone();
                ack
            })
            .collect()
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
        let mut i = ConsumerIndex::new(9465);
        i.apply(&pod("a", "10.0.0.1", "Running", ANN));
        i.apply(&pod("b", "10.0.0.2", "Running", ANN));
        i.apply(&pod("pending", "10.0.0.3", "Pending", ANN));
        i.apply(&pod("plain", "10.0.0.4", "Running", &[("app", "x")]));
        assert_eq!(
            i.consumers("shop", "vault", "shop/db"),
            vec![
                ("shop/a".to_owned(), "http://10.0.0.1:9465".to_owned()),
                ("shop/b".to_owned(), "http://10.0.0.2:9465".to_owned())
            ]
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
    fn a_relist_replaces_every_pod_and_keeps_the_port() {
        let mut i = ConsumerIndex::new(9999);
        i.apply(&pod("gone", "10.0.0.9", "Running", ANN));
        i.reset(&[
            pod("a", "10.0.0.1", "Running", ANN),
            pod("pending", "10.0.0.3", "Pending", ANN),
        ]);
        assert_eq!(
            i.consumers("shop", "vault", "shop/db"),
            vec![("shop/a".to_owned(), "http://10.0.0.1:9999".to_owned())]
        );
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
        let mut i = ConsumerIndex::new(9465);
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
            vec![("shop/classic".to_owned(), "http://10.0.0.8:9465".to_owned())]
        );
    }

    #[test]
    fn the_default_port_is_the_sidecars() {
        let mut i = ConsumerIndex::default();
        i.apply(&pod("a", "10.0.0.1", "Running", ANN));
        assert_eq!(
            i.consumers("shop", "vault", "shop/api")[0].1,
            format!("http://10.0.0.1:{}", rotor_crds::defaults::PUSH_PORT)
        );
    }
}
