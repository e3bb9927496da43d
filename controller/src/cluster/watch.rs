//! The watches that keep the in-memory indexes fresh: RotorStores,
//! ClusterRotorStores and Namespaces into the store index, Pods into the
//! consumer index. What an event does to an index is the index's own
//! [`IndexResource`] impl; this only feeds events in.

use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use rotor_crds::api::{ClusterRotorStore, RotorStore};

use crate::rotation::consumers::ConsumerIndex;
use crate::store_index::SharedStoreIndex;

/// An index fed by a watch on `K`, as linkerd's policy indexes are.
pub trait IndexResource<K> {
    /// An object was created or changed.
    fn apply(&mut self, object: &K);
    /// An object was deleted.
    fn delete(&mut self, object: &K);
    /// A relist completed: `all` replaces every entry of this kind.
    fn reset(&mut self, all: &[K]);
}

/// Runs the three watches that feed the store index, forever. A relist
/// replaces a kind's entries only once the new list is complete.
pub async fn keep_index_fresh(client: Client, index: SharedStoreIndex) {
    tokio::join!(
        feed(Api::<RotorStore>::all(client.clone()), index.clone()),
        feed(Api::<ClusterRotorStore>::all(client.clone()), index.clone()),
        feed(Api::<Namespace>::all(client), index),
    );
}

/// Keeps the consumer index fresh from a watch on pods, forever.
pub async fn keep_consumers_fresh(client: Client, index: Arc<RwLock<ConsumerIndex>>) {
    feed(Api::<Pod>::all(client), index).await;
}

/// Feeds one kind's watch events into `index`, forever. A relist is
/// buffered and handed over whole, so readers never see half a list.
async fn feed<K, I>(api: Api<K>, index: Arc<RwLock<I>>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    I: IndexResource<K>,
{
    let kind = K::kind(&()).into_owned();
    let mut buffer: Vec<K> = Vec::new();
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let write = || index.write().expect("index lock");
        match event {
            Ok(watcher::Event::Init) => buffer.clear(),
            Ok(watcher::Event::InitApply(o)) => buffer.push(o),
            Ok(watcher::Event::InitDone) => write().reset(&std::mem::take(&mut buffer)),
            Ok(watcher::Event::Apply(o)) => write().apply(&o),
            Ok(watcher::Event::Delete(o)) => write().delete(&o),
            Err(e) => {
                tracing::warn!(%kind, error = %e, "watch interrupted; it resumes by itself")
            }
        }
    }
}
