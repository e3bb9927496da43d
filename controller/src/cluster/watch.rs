//! The watches that keep the in-memory indexes fresh: RotorStores,
//! ClusterRotorStores and Namespaces into the store index, Pods into the
//! consumer index. What an event does to an index is the index's own
//! [`IndexResource`] impl; this only feeds events in, and wakes whoever
//! waits for the store index's changes ([`IndexChanges`]).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
use rotor_contract::api::{ClusterRotorStore, RotorStore};

use crate::rotation::consumers::ConsumerIndex;
use crate::store_index::{SharedStoreIndex, Touched};

pub use crate::index::IndexResource;

/// The store index and a wake-up for its changes: the watches write the
/// index (which records what they [`Touched`]) and wake the one listener,
/// the rotation controller, which takes the touched keys. Nothing is lost
/// between wake-ups: the keys wait in the index, one per store or
/// namespace.
#[derive(Clone)]
pub struct IndexChanges {
    index: SharedStoreIndex,
    wake: Arc<tokio::sync::Notify>,
}

impl IndexChanges {
    pub fn new(index: SharedStoreIndex) -> Self {
        Self {
            index,
            wake: Arc::default(),
        }
    }

    pub fn index(&self) -> &SharedStoreIndex {
        &self.index
    }

    /// Called after each write to the index.
    fn written(&self) {
        self.wake.notify_one();
    }

    /// Waits until the index has changed, and takes what changed.
    pub async fn next(&self) -> BTreeSet<Touched> {
        loop {
            let touched = self.index.write().expect("index lock").take_touched();
            if !touched.is_empty() {
                return touched;
            }
            self.wake.notified().await;
        }
    }
}

/// Runs the three watches that feed the store index, forever. A relist
/// replaces a kind's entries only once the new list is complete.
pub async fn keep_index_fresh(client: Client, changes: IndexChanges) {
    let index = changes.index().clone();
    let written = || changes.written();
    tokio::join!(
        feed(
            Api::<RotorStore>::all(client.clone()),
            index.clone(),
            written
        ),
        feed(
            Api::<ClusterRotorStore>::all(client.clone()),
            index.clone(),
            written
        ),
        feed(Api::<Namespace>::all(client), index, written),
    );
}

/// Keeps the consumer index fresh from a watch on pods, forever.
pub async fn keep_consumers_fresh(client: Client, index: Arc<RwLock<ConsumerIndex>>) {
    feed(Api::<Pod>::all(client), index, || {}).await;
}

/// Feeds one kind's watch events into `index`, forever, calling `written`
/// after each write. A relist is buffered and handed over whole, so readers
/// never see half a list.
async fn feed<K, I>(api: Api<K>, index: Arc<RwLock<I>>, written: impl Fn())
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
        written();
    }
}
