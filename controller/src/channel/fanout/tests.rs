//! Tests of the change detector's fan-out to the sidecars.

use std::collections::BTreeSet;

use async_trait::async_trait;
use rotor_channel::Downstream;
use rotor_store::{Store, VersionId};

use super::*;
use crate::channel::auth::{Admitted, Identity};
use crate::channel::hub::subscriptions_of;
use crate::detect::Subscription;

const S: Duration = Duration::from_secs(1);

fn limit(per_second: u32, burst: u32) -> Limit {
    Limit { per_second, burst }
}

fn admitted(pod: &str, secrets: &[&str], refresh: Duration, detects: bool) -> Admitted {
    Admitted {
        identity: Identity {
            namespace: "shop".into(),
            pod: pod.into(),
            uid: String::new(),
        },
        store: "vault".into(),
        secrets: secrets
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        kind: StoreKind::Namespaced,
        refresh,
        detects,
    }
}

fn vault() -> StoreRef {
    StoreRef {
        namespace: "shop".into(),
        kind: StoreKind::Namespaced,
        name: "vault".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn waves_carry_what_the_bucket_holds_each_second() {
    let budget = limit(10, 10);
    let mut bucket = TokenBucket::new(budget, Instant::now());
    let mut waiting = 50;
    let mut waves = Vec::new();
    let start = Instant::now();
    while waiting > 0 {
        let n = wave(Some(&mut bucket), Instant::now(), waiting);
        waves.push((Instant::now() - start, n));
        waiting -= n;
        if waiting > 0 {
            tokio::time::advance(WAVE_EVERY).await;
        }
    }
    assert_eq!(
        waves,
        [
            (Duration::ZERO, 10),
            (S, 10),
            (2 * S, 10),
            (3 * S, 10),
            (4 * S, 10)
        ]
    );
    assert_eq!(last_wave_after(50, Some(budget)), 4 * S);
    // A burst above the rate: the first wave is the burst.
    assert_eq!(last_wave_after(50, Some(limit(10, 30))), 2 * S);
    assert_eq!(last_wave_after(10, Some(budget)), Duration::ZERO);
    // No budget: one wave.
    assert_eq!(wave(None, Instant::now(), 10_000), 10_000);
    assert_eq!(last_wave_after(10_000, None), Duration::ZERO);
}

#[test]
fn subscriptions_are_the_detected_streams_secrets_at_their_refresh() {
    let streams = [
        admitted("a", &["db", "api"], 5 * S, true),
        admitted("b", &["db"], 2 * S, true),
        // A Kubernetes Secrets store: its sidecar watches.
        admitted("c", &["k8s"], S, false),
    ];
    let subs = subscriptions_of(&streams);
    let sub = |secret: &str, refresh| Subscription {
        store: vault(),
        secret: secret.into(),
        refresh,
    };
    // One per secret, at the shortest refresh.
    assert_eq!(subs, [sub("api", 5 * S), sub("db", 2 * S)]);
}

#[tokio::test]
async fn the_hub_publishes_subscriptions_as_streams_come_and_go() {
    let hub = Hub::new(2);
    let mut subs = hub.subscriptions();
    assert!(subs.borrow_and_update().is_empty());
    let (tx, _rx) = mpsc::channel(1);
    let registration = hub
        .register(admitted("a", &["db"], 5 * S, true), tx)
        .unwrap();
    assert!(subs.has_changed().unwrap());
    assert_eq!(subs.borrow_and_update().len(), 1);
    assert_eq!(hub.subscribed(&vault(), "db"), ["shop/a"]);
    assert!(hub.subscribed(&vault(), "api").is_empty());
    drop(registration);
    assert!(subs.has_changed().unwrap());
    assert!(subs.borrow_and_update().is_empty());
    assert!(hub.subscribed(&vault(), "db").is_empty());
}

/// A store with a read budget of 2 a second, burst 2.
struct Budgeted;

#[async_trait]
impl DetectStores for Budgeted {
    async fn store_for(&self, _: &StoreRef, _: &str) -> crate::Result<Arc<dyn Store>> {
        unreachable!("the fan-out checks nothing")
    }
    fn fetch_limit(&self, _: &StoreRef, _: &str) -> Option<Limit> {
        Some(limit(2, 2))
    }
}

/// Five streams, a budget of 2 reads a second: the announcements leave in
/// waves of 2, 2 and 1, a second apart; the first look at a secret is
/// announced to nobody.
#[tokio::test(start_paused = true)]
async fn a_change_is_announced_in_waves_within_the_budget() {
    let hub = Arc::new(Hub::new(2));
    let mut inboxes = Vec::new();
    let mut registrations = Vec::new();
    for pod in ["a", "b", "c", "d", "e"] {
        let (tx, rx) = mpsc::channel(4);
        registrations.push(
            hub.register(admitted(pod, &["db"], 5 * S, true), tx)
                .unwrap(),
        );
        inboxes.push(rx);
    }
    let metrics = ChannelMetrics::default();
    let fanout = Arc::new(Fanout::new(
        hub.clone(),
        Arc::new(Budgeted),
        metrics.clone(),
    ));
    let (events_tx, events) = mpsc::channel(4);
    let task = tokio::spawn(fanout.announce_all(events));
    let change = |previous: Option<u64>, version: u64| VersionChanged {
        store: vault(),
        secret: "db".into(),
        version: VersionId::from(version),
        previous: previous.map(VersionId::from),
    };
    events_tx.send(change(None, 1)).await.unwrap();
    events_tx.send(change(Some(1), 2)).await.unwrap();
    let start = Instant::now();
    let mut arrivals = Vec::new();
    for inbox in &mut inboxes {
        match inbox.recv().await.unwrap() {
            Downstream::VersionAvailable(v) => {
                assert_eq!((v.secret.as_str(), v.version.as_str()), ("db", "2"));
            }
            other => panic!("expected versionAvailable, got {other:?}"),
        }
        arrivals.push(Instant::now() - start);
    }
    arrivals.sort();
    assert_eq!(arrivals, [Duration::ZERO, Duration::ZERO, S, S, 2 * S]);
    assert_eq!(metrics.waves(), 3);
    // Only the change was announced: nothing more in any inbox.
    for inbox in &mut inboxes {
        assert!(inbox.try_recv().is_err());
    }
    drop(events_tx);
    drop(registrations);
    task.await.unwrap();
}
