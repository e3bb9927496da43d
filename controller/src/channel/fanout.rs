//! The change detector wired to the streams: the hub's admitted streams
//! are the detector's subscriptions ([`Hub::subscriptions`]), and each
//! version the detector sees change (not its first look at a secret) is
//! announced (`versionAvailable`) to every stream subscribed to it.
//!
//! Announcements go out in waves paced by the store's budget in fetches
//! ([`DetectStores::fetch_limit`]: `spec.budget` or the provider's quota
//! for reads, over what one fetch of CURRENT costs): each announced
//! sidecar fetches once, so a wave holds as many streams as the store's
//! bucket has fetches for. One bucket per store object is shared by every
//! change of it, so two secrets changing at once do not double the rate.
//! A wave leaves at once, the next every [`WAVE_EVERY`]; the last of `n`
//! streams is told within [`last_wave_after`] (`ceil((n - burst) / rate)`
//! seconds) of the change being seen, so it serves the new version within
//! the detection interval plus that bound plus one fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::hub::{Hub, Request};
use super::metrics::ChannelMetrics;
use crate::budget::{Limit, TokenBucket};
use crate::detect::{DetectStores, Detector, StoreRef, VersionChanged};
use crate::store_index::StoreKind;

/// How often a wave leaves while announcements wait.
pub const WAVE_EVERY: Duration = Duration::from_secs(1);

/// How long a sidecar has to acknowledge an announcement (it fetches, then
/// writes). An unanswered one is logged; the sidecar's own polling still
/// brings it the version.
pub const ANNOUNCE_DEADLINE: Duration = Duration::from_secs(30);

/// Detected changes waiting for the fan-out.
const EVENTS: usize = 256;

/// How many streams the wave at `now` may tell, of `waiting`: the reads the
/// store's bucket has now (all of them without a budget).
pub fn wave(bucket: Option<&mut TokenBucket>, now: Instant, waiting: usize) -> usize {
    let Some(bucket) = bucket else {
        return waiting;
    };
    let mut n = 0;
    while n < waiting && bucket.take(now).is_ok() {
        n += 1;
    }
    n
}

/// The longest time from a change being seen to the last of `n` streams
/// being told, with a full bucket of `limit` (no other change of the
/// store in flight): the waves after the first burst each carry
/// `per_second` (at most `burst`) every [`WAVE_EVERY`].
pub fn last_wave_after(n: usize, limit: Option<Limit>) -> Duration {
    let Some(limit) = limit else {
        return Duration::ZERO;
    };
    let burst = limit.burst.max(1) as usize;
    if n <= burst {
        return Duration::ZERO;
    }
    let per_wave = limit.per_second.min(limit.burst).max(1) as usize;
    let waves = (n - burst).div_ceil(per_wave);
    WAVE_EVERY * u32::try_from(waves).unwrap_or(u32::MAX)
}

/// A store object, whose budget its namespaces share.
type Object = (StoreKind, String, String);

fn object(store: &StoreRef) -> Object {
    match store.kind {
        StoreKind::Namespaced => (store.kind, store.namespace.clone(), store.name.clone()),
        StoreKind::Cluster => (store.kind, String::new(), store.name.clone()),
    }
}

/// Announces detected changes to the subscribed streams.
pub struct Fanout {
    pub hub: Arc<Hub>,
    pub stores: Arc<dyn DetectStores>,
    pub metrics: ChannelMetrics,
    /// One read bucket per store object, with the limit it was made for.
    buckets: Mutex<HashMap<Object, (Limit, TokenBucket)>>,
}

impl Fanout {
    pub fn new(hub: Arc<Hub>, stores: Arc<dyn DetectStores>, metrics: ChannelMetrics) -> Self {
        Self {
            hub,
            stores,
            metrics,
            buckets: Mutex::default(),
        }
    }

    /// Runs the detector over the hub's streams and announces what it
    /// finds, until the hub is dropped.
    pub async fn run(self) {
        let detector = Detector::new(self.stores.clone());
        let (events_tx, events) = mpsc::channel(EVENTS);
        let subscriptions = self.hub.subscriptions();
        tokio::join!(
            detector.run(subscriptions, events_tx),
            Arc::new(self).announce_all(events)
        );
    }

    /// Announces each change on `events` (each in its own task, so a
    /// store's waves hold back no other store).
    pub async fn announce_all(self: Arc<Self>, mut events: mpsc::Receiver<VersionChanged>) {
        let mut tasks = JoinSet::new();
        while let Some(event) = events.recv().await {
            while tasks.try_join_next().is_some() {}
            if event.previous.is_none() {
                // The first look at a secret: its sidecars fetched it
                // themselves when they started.
                continue;
            }
            tasks.spawn(self.clone().announce(event));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Tells every stream subscribed to the change, in waves.
    async fn announce(self: Arc<Self>, event: VersionChanged) {
        let VersionChanged {
            store,
            secret,
            version,
            previous,
        } = event;
        let mut waiting = self.hub.subscribed(&store, &secret);
        if waiting.is_empty() {
            return;
        }
        let limit = self.stores.fetch_limit(&store, &secret);
        let bound = last_wave_after(waiting.len(), limit);
        tracing::info!(
            %store, %secret, %version, previous = ?previous.map(|v| v.0),
            streams = waiting.len(),
            fetches_per_second = limit.map(|l| l.per_second),
            fetch_burst = limit.map(|l| l.burst),
            last_wave_within_secs = bound.as_secs(),
            "new version detected; announcing it in waves"
        );
        self.metrics.announce_planned(waiting.len());
        let mut asks = JoinSet::new();
        loop {
            let count = {
                let mut buckets = self.buckets.lock().expect("fan-out buckets lock");
                let now = Instant::now();
                let bucket = limit.map(|limit| {
                    let entry = buckets
                        .entry(object(&store))
                        .or_insert_with(|| (limit, TokenBucket::new(limit, now)));
                    if entry.0 != limit {
                        *entry = (limit, TokenBucket::new(limit, now));
                    }
                    &mut entry.1
                });
                wave(bucket, now, waiting.len())
            };
            if count > 0 {
                self.metrics.wave_released(count);
                for pod in waiting.drain(..count) {
                    let (hub, secret, version) =
                        (self.hub.clone(), secret.clone(), version.0.clone());
                    asks.spawn(async move {
                        let request = Request::VersionAvailable {
                            secret: secret.clone(),
                            version: version.clone(),
                        };
                        match hub.ask(&pod, request, ANNOUNCE_DEADLINE).await {
                            Ok(ack) if ack.error.is_none() => {}
                            Ok(ack) => {
                                tracing::warn!(pod, secret, version, problem = ?ack.error.map(|p| p.to_string()), "announced version not applied; the sidecar's polling retries");
                            }
                            Err(why) => {
                                tracing::info!(pod, secret, version, ?why, "announced version not acknowledged; the sidecar's polling still brings it");
                            }
                        }
                    });
                }
            }
            if waiting.is_empty() {
                break;
            }
            tokio::time::sleep(WAVE_EVERY).await;
        }
        while asks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests;
