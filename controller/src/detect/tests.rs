//! Tests of change detection over a store whose versions the test sets.

use std::sync::Mutex;

use rotor_store::{Fetched, Selector, WriteAs};

use super::*;

const S: Duration = Duration::from_secs(1);

/// A store whose versions the test sets, counting version checks per
/// secret; it has no values to read. Its first `throttle` checks answer
/// "throttled", as AWS's `ThrottlingException` does.
#[derive(Default)]
pub(crate) struct Versions {
    current: Mutex<BTreeMap<String, u64>>,
    checks: Mutex<BTreeMap<String, u64>>,
    pub(crate) throttle: std::sync::atomic::AtomicUsize,
}

impl Versions {
    pub(crate) fn set(&self, secret: &str, version: u64) {
        self.current
            .lock()
            .unwrap()
            .insert(secret.to_owned(), version);
    }

    pub(crate) fn checks(&self, secret: &str) -> u64 {
        self.checks
            .lock()
            .unwrap()
            .get(secret)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Store for Versions {
    fn describe(&self) -> String {
        "fake".into()
    }
    async fn read(&self, _: &str, _: &Selector) -> rotor_store::Result<Fetched> {
        panic!("the detector read a value")
    }
    async fn current_version(&self, name: &str) -> rotor_store::Result<VersionId> {
        *self
            .checks
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += 1;
        let throttled = self
            .throttle
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if throttled {
            return Err(rotor_store::Error::Throttled {
                store: "fake".into(),
                name: name.into(),
                detail: "ThrottlingException: Rate exceeded".into(),
            });
        }
        let current = self.current.lock().unwrap().get(name).copied();
        current
            .map(VersionId::from)
            .ok_or_else(|| rotor_store::Error::SecretNotFound {
                store: "fake".into(),
                name: name.into(),
            })
    }
    async fn write(&self, _: &str, _: &[u8], _: WriteAs) -> rotor_store::Result<VersionId> {
        unreachable!()
    }
    async fn promote(&self, _: &str, _: &VersionId) -> rotor_store::Result<()> {
        unreachable!()
    }
    async fn retire(&self, _: &str, _: &VersionId) -> rotor_store::Result<()> {
        unreachable!()
    }
}

struct OneStore(Arc<dyn Store>);

#[async_trait]
impl DetectStores for OneStore {
    async fn store_for(&self, _: &StoreRef, _: &str) -> Result<Arc<dyn Store>> {
        Ok(self.0.clone())
    }
}

fn store_ref() -> StoreRef {
    StoreRef {
        namespace: "team-a".into(),
        kind: StoreKind::Namespaced,
        name: "vault".into(),
    }
}

fn sub(secret: &str, refresh: Duration) -> Subscription {
    Subscription {
        store: store_ref(),
        secret: secret.into(),
        refresh,
    }
}

/// Waits (on paused time) until `n` checks have finished.
async fn until_checks(checks: &mut watch::Receiver<u64>, n: u64) {
    checks.wait_for(|c| *c >= n).await.unwrap();
}

/// Three sidecars on `db` (5 s, 2 s, 3 s) and one on `api` (4 s): `db`
/// is checked every 2 s and `api` every 4 s, once each however many
/// subscribe; each new version is sent once, with the one before it.
#[tokio::test(start_paused = true)]
async fn each_secret_is_checked_once_per_its_shortest_interval() {
    let store = Arc::new(Versions::default());
    store.set("db", 1);
    store.set("api", 7);
    let detector = Detector::new(Arc::new(OneStore(store.clone() as Arc<dyn Store>)));
    let mut checks = detector.checks();
    let (subs_tx, subs) = watch::channel(vec![
        sub("db", 5 * S),
        sub("db", 2 * S),
        sub("db", 3 * S),
        sub("api", 4 * S),
    ]);
    let (tx, mut events) = mpsc::channel(16);
    let start = Instant::now();
    let task = tokio::spawn(detector.run(subs, tx));

    // The first round: both seen for the first time.
    let mut first = [events.recv().await.unwrap(), events.recv().await.unwrap()];
    first.sort_by(|a, b| a.secret.cmp(&b.secret));
    assert_eq!(
        first
            .iter()
            .map(|e| (e.secret.as_str(), e.version.0.as_str(), e.previous.clone()))
            .collect::<Vec<_>>(),
        [("api", "7", None), ("db", "1", None)]
    );

    // db at 0, 2, 4, 6, 8 and api at 0, 4, 8: 8 checks by 8 s.
    until_checks(&mut checks, 8).await;
    assert_eq!(start.elapsed(), 8 * S);
    assert_eq!((store.checks("db"), store.checks("api")), (5, 3));

    // A new version of db is sent at its next check (10 s), once.
    store.set("db", 2);
    let event = events.recv().await.unwrap();
    assert_eq!(start.elapsed(), 10 * S);
    assert_eq!(
        (event.secret.as_str(), event.version.0.as_str()),
        ("db", "2")
    );
    assert_eq!(event.previous, Some(VersionId::from(1)));
    until_checks(&mut checks, 14).await;
    assert!(events.try_recv().is_err(), "a version sent twice");

    // The 2 s subscriber goes: db is checked every 3 s from then on; api
    // is gone with its only subscriber.
    subs_tx
        .send(vec![sub("db", 5 * S), sub("db", 3 * S)])
        .unwrap();
    let (db, api, at) = (store.checks("db"), store.checks("api"), *checks.borrow());
    until_checks(&mut checks, at + 3).await;
    assert_eq!(
        store.checks("api"),
        api,
        "a secret nobody wants was checked"
    );
    assert_eq!(store.checks("db"), db + 3);
    drop(subs_tx);
    task.await.unwrap();
}

/// A failed check is logged and counted, and the secret is checked again
/// at its next interval; a secret that appears later is then announced.
#[tokio::test(start_paused = true)]
async fn a_failed_check_is_tried_again_at_the_next_interval() {
    let store = Arc::new(Versions::default());
    let detector = Detector::new(Arc::new(OneStore(store.clone() as Arc<dyn Store>)));
    let mut checks = detector.checks();
    let (_subs_tx, subs) = watch::channel(vec![sub("late", S)]);
    let (tx, mut events) = mpsc::channel(16);
    tokio::spawn(detector.run(subs, tx));
    until_checks(&mut checks, 3).await;
    assert!(events.try_recv().is_err());
    store.set("late", 1);
    let event = events.recv().await.unwrap();
    assert_eq!((event.version, event.previous), (VersionId::from(1), None));
}

/// A store that throttles: the checks slow down (1 s, 2 s, 4 s holds,
/// the jitter fixed at its top) instead of keeping their pace, each
/// throttling answer is counted, and the change made meanwhile still
/// comes out, once.
#[tokio::test(start_paused = true)]
async fn a_throttling_store_slows_the_checks_and_no_change_is_lost() {
    use crate::budget::{Budget, BudgetedStore, Limiter, StoreMetrics};
    let versions = Arc::new(Versions::default());
    versions.set("db", 1);
    let metrics = StoreMetrics::default();
    let budgeted = BudgetedStore::new(
        versions.clone(),
        Arc::new(Limiter::new(
            Budget::Unlimited,
            Box::new(rotor_store::backoff::Fixed(1.0)),
        )),
        metrics.clone(),
        "team-a/vault",
    );
    let detector = Detector::new(Arc::new(OneStore(Arc::new(budgeted))));
    let (_subs_tx, subs) = watch::channel(vec![sub("db", S)]);
    let (tx, mut events) = mpsc::channel(16);
    let start = Instant::now();
    tokio::spawn(detector.run(subs, tx));
    assert_eq!(events.recv().await.unwrap().version, VersionId::from(1));

    versions
        .throttle
        .store(3, std::sync::atomic::Ordering::SeqCst);
    versions.set("db", 2);
    let event = events.recv().await.unwrap();
    // Throttled at 1 s (held to 2 s), 2 s (to 4 s), 4 s (to 8 s); answered
    // at 8 s. Unthrottled, the change would have been seen at 1 s.
    assert_eq!(start.elapsed(), 8 * S);
    assert_eq!(versions.checks("db"), 5);
    assert_eq!(
        (event.version, event.previous),
        (VersionId::from(2), Some(VersionId::from(1)))
    );
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("store_throttled_total{store=\"team-a/vault\"} 3"),
        "{text}"
    );
}
