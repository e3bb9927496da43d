//! A call budget per store: every request the controller sends a store
//! goes through a token bucket, and a throttling answer (HTTP 429 from
//! Vault/OpenBao, AWS `ThrottlingException`) holds the store's calls back
//! for a growing, jittered delay ([`rotor_store::backoff::Backoff`]).
//!
//! - [`Budget::of`]: the limits of one store, from its `spec.budget`
//!   (one bucket for every call) or, unset, the provider's published
//!   quotas (AWS Secrets Manager: [`AWS_DESCRIBE_SECRET_TPS`] for change
//!   checks, [`AWS_GET_SECRET_VALUE_TPS`] for reads, [`AWS_WRITE_TPS`] for
//!   writes, per call class); Vault, Kubernetes and the local store have
//!   none unless set.
//! - [`TokenBucket`]: the bucket, a value with the time passed in.
//! - [`Limiter`]: the buckets of one store and its throttling hold, on
//!   tokio time (so tests run it on paused time), with the random source
//!   of the backoff's jitter passed in.
//! - [`BudgetedStore`]: a [`Store`] whose every call waits for the
//!   limiter, and is counted in `rotor_store_requests_total{store,call,result}`
//!   and, when throttled, `rotor_store_throttled_total{store}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rotor_contract::api::{ProviderKind, StoreBudget};
use rotor_store::backoff::{Backoff, Random, Retry};
use rotor_store::{Fetched, Selector, Store, VersionId, WriteAs};
use tokio::time::Instant;

use crate::{Error, Result};

/// AWS Secrets Manager's published quota for `DescribeSecret`, a second.
pub const AWS_DESCRIBE_SECRET_TPS: u32 = 40_000;
/// AWS Secrets Manager's published quota for `GetSecretValue`, a second.
pub const AWS_GET_SECRET_VALUE_TPS: u32 = 10_000;
/// AWS Secrets Manager's published combined quota for `PutSecretValue`,
/// `UpdateSecretVersionStage` and the other writes, a second.
pub const AWS_WRITE_TPS: u32 = 50;

/// The first hold after a throttling answer; it doubles per throttling
/// answer in a row, jittered, up to [`THROTTLE_CAP`].
pub const THROTTLE_BASE: Duration = Duration::from_millis(500);
/// The longest hold after throttling answers.
pub const THROTTLE_CAP: Duration = Duration::from_secs(60);

/// What a call costs the store, for the per-call quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// The change check: KV metadata, `DescribeSecret`, a `stat`.
    Check,
    /// A value read.
    Read,
    /// A write, promotion or retirement.
    Write,
}

impl CallClass {
    const ALL: [CallClass; 3] = [CallClass::Check, CallClass::Read, CallClass::Write];

    fn index(self) -> usize {
        self as usize
    }
}

/// Requests a second and the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per_second: u32,
    pub burst: u32,
}

impl Limit {
    /// A limit of `per_second` with a burst of one second's worth.
    pub const fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: per_second,
        }
    }

    /// A store's `spec.budget`, checked ([`problems`]).
    pub fn from_spec(store: &str, budget: &StoreBudget) -> Result<Self> {
        let problems = problems(budget);
        if !problems.is_empty() {
            return Err(Error::InvalidBudget {
                store: store.to_owned(),
                problem: problems.join("; "),
            });
        }
        Ok(Self {
            per_second: budget.requests_per_second,
            burst: budget.burst.unwrap_or(budget.requests_per_second),
        })
    }
}

/// What is wrong with a `spec.budget`, each problem naming its field and
/// what is expected (the store status reconcilers report them too).
pub fn problems(budget: &StoreBudget) -> Vec<String> {
    let mut out = Vec::new();
    if budget.requests_per_second == 0 {
        out.push(
            "spec.budget.requestsPerSecond is 0; expected at least 1 request a second".to_owned(),
        );
    }
    if budget.burst == Some(0) {
        out.push(
            "spec.budget.burst is 0; expected at least 1 (or leave it unset for requestsPerSecond)"
                .to_owned(),
        );
    }
    out
}

/// Requests a sidecar's fetch of CURRENT costs the store: Vault/OpenBao
/// reads the metadata (where Rotor's CURRENT label is) and then the
/// version's data; AWS one `GetSecretValue`; the others one read.
pub fn requests_per_fetch(provider: ProviderKind) -> u32 {
    match provider {
        ProviderKind::Vault(_) => 2,
        ProviderKind::Aws(_) | ProviderKind::Kubernetes(_) | ProviderKind::Local(_) => 1,
    }
}

/// The limits of one store's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// No limit (Vault, Kubernetes, local without `spec.budget`).
    Unlimited,
    /// One bucket for every call (`spec.budget`).
    All(Limit),
    /// A bucket per call class (AWS's published quotas).
    PerCall {
        check: Limit,
        read: Limit,
        write: Limit,
    },
}

impl Budget {
    /// The budget of store `store` (its name, for errors) from its
    /// `spec.budget`, else its provider's defaults.
    pub fn of(store: &str, budget: Option<&StoreBudget>, provider: ProviderKind) -> Result<Self> {
        if let Some(budget) = budget {
            return Ok(Budget::All(Limit::from_spec(store, budget)?));
        }
        Ok(match provider {
            ProviderKind::Aws(_) => Budget::PerCall {
                check: Limit::per_second(AWS_DESCRIBE_SECRET_TPS),
                read: Limit::per_second(AWS_GET_SECRET_VALUE_TPS),
                write: Limit::per_second(AWS_WRITE_TPS),
            },
            ProviderKind::Vault(_) | ProviderKind::Kubernetes(_) | ProviderKind::Local(_) => {
                Budget::Unlimited
            }
        })
    }

    /// How many sidecar fetches a second fit in the read budget of a
    /// store of `provider`: a fetch of CURRENT is [`requests_per_fetch`]
    /// requests. `None`: unlimited.
    pub fn fetch_limit(&self, provider: ProviderKind) -> Option<Limit> {
        let limit = self.limit(CallClass::Read)?;
        let cost = requests_per_fetch(provider);
        Some(Limit {
            per_second: (limit.per_second / cost).max(1),
            burst: (limit.burst / cost).max(1),
        })
    }

    /// The limit on calls of `class`; `None`: unlimited.
    pub fn limit(&self, class: CallClass) -> Option<Limit> {
        match (self, class) {
            (Budget::Unlimited, _) => None,
            (Budget::All(limit), _) => Some(*limit),
            (Budget::PerCall { check, .. }, CallClass::Check) => Some(*check),
            (Budget::PerCall { read, .. }, CallClass::Read) => Some(*read),
            (Budget::PerCall { write, .. }, CallClass::Write) => Some(*write),
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `per_second`; time is
/// passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: Limit,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(limit: Limit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limit.per_second);
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(self.limit.burst));
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// The throttling hold of one store.
#[derive(Debug, Default)]
struct Hold {
    retry: Retry,
    until: Option<Instant>,
}

/// One store's buckets and throttling hold.
pub struct Limiter {
    buckets: Mutex<[Option<TokenBucket>; 3]>,
    hold: Mutex<Hold>,
    backoff: Backoff,
    random: Mutex<Box<dyn Random>>,
}

impl Limiter {
    /// The limiter of a store with `budget`; the backoff after throttling
    /// draws its jitter from `random`.
    pub fn new(budget: Budget, random: Box<dyn Random>) -> Self {
        let now = Instant::now();
        let buckets = CallClass::ALL.map(|c| budget.limit(c).map(|l| TokenBucket::new(l, now)));
        Self {
            buckets: Mutex::new(buckets),
            hold: Mutex::default(),
            backoff: Backoff::new(THROTTLE_BASE, THROTTLE_CAP),
            random: Mutex::new(random),
        }
    }

    /// Waits until a call of `class` is within the budget and no
    /// throttling hold is on, and takes its token.
    pub async fn acquire(&self, class: CallClass) {
        loop {
            let now = Instant::now();
            let held = self.hold.lock().expect("hold lock").until;
            let wait = match held.filter(|until| *until > now) {
                Some(until) => until - now,
                None => {
                    let mut buckets = self.buckets.lock().expect("bucket lock");
                    match buckets[class.index()].as_mut().map(|b| b.take(now)) {
                        None | Some(Ok(())) => return,
                        Some(Err(wait)) => wait,
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The store answered "throttled": holds every call back for the next
    /// backoff delay; returns it.
    pub fn throttled(&self) -> Duration {
        let mut random = self.random.lock().expect("random lock");
        let mut hold = self.hold.lock().expect("hold lock");
        let delay = hold.retry.failed(self.backoff, random.as_mut());
        hold.until = Some(Instant::now() + delay);
        delay
    }

    /// The store answered: the next throttling starts from the base delay.
    pub fn answered(&self) {
        self.hold.lock().expect("hold lock").retry.reset();
    }
}

type Labels = Vec<(String, String)>;

/// `rotor_store_requests_total{store,call,result}` and
/// `rotor_store_throttled_total{store}`.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    requests: Family<Labels, Counter>,
    throttled: Family<Labels, Counter>,
}

impl StoreMetrics {
    /// Registers both families in `registry` (the `rotor_` prefixed one).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_requests",
            "Requests the controller sent each store, by call and result (ok, or the error kind)",
            self.requests.clone(),
        );
        registry.register(
            "store_throttled",
            "Throttling answers from each store (HTTP 429, ThrottlingException), each holding \
             its calls back for a backoff delay",
            self.throttled.clone(),
        );
    }

    /// Starts `store`'s throttling counter at 0.
    pub fn add_store(&self, store: &str) {
        let _ = self.throttled.get_or_create(&store_label(store));
    }

    fn request(&self, store: &str, call: &str, result: &str) {
        self.requests
            .get_or_create(&vec![
                ("store".to_owned(), store.to_owned()),
                ("call".to_owned(), call.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    fn throttle(&self, store: &str) {
        self.throttled.get_or_create(&store_label(store)).inc();
    }
}

fn store_label(store: &str) -> Labels {
    vec![("store".to_owned(), store.to_owned())]
}

/// A store whose every call goes through its [`Limiter`] and is counted.
pub struct BudgetedStore {
    inner: Arc<dyn Store>,
    limiter: Arc<Limiter>,
    metrics: StoreMetrics,
    /// The `store` label: `<namespace>/<name>` or `cluster/<name>`.
    label: String,
}

impl BudgetedStore {
    pub fn new(
        inner: Arc<dyn Store>,
        limiter: Arc<Limiter>,
        metrics: StoreMetrics,
        label: impl Into<String>,
    ) -> Self {
        let label = label.into();
        metrics.add_store(&label);
        Self {
            inner,
            limiter,
            metrics,
            label,
        }
    }

    /// Waits for the budget, runs `call`, and counts its result; a
    /// throttling answer holds the store's calls back.
    async fn call<T>(
        &self,
        name: &'static str,
        class: CallClass,
        call: impl std::future::Future<Output = rotor_store::Result<T>>,
    ) -> rotor_store::Result<T> {
        self.limiter.acquire(class).await;
        let result = call.await;
        match &result {
            Ok(_) => {
                self.limiter.answered();
                self.metrics.request(&self.label, name, "ok");
            }
            Err(e) => {
                self.metrics.request(&self.label, name, e.metric_label());
                if matches!(e, rotor_store::Error::Throttled { .. }) {
                    self.metrics.throttle(&self.label);
                    let hold = self.limiter.throttled();
                    tracing::warn!(store = %self.label, call = name, ?hold, "the store throttled the controller; holding its calls back");
                } else {
                    self.limiter.answered();
                }
            }
        }
        result
    }
}

#[async_trait]
impl Store for BudgetedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn read(&self, name: &str, selector: &Selector) -> rotor_store::Result<Fetched> {
        self.call("read", CallClass::Read, self.inner.read(name, selector))
            .await
    }

    async fn current_version(&self, name: &str) -> rotor_store::Result<VersionId> {
        self.call(
            "current_version",
            CallClass::Check,
            self.inner.current_version(name),
        )
        .await
    }

    async fn write(
        &self,
        name: &str,
        value: &[u8],
        write_as: WriteAs,
    ) -> rotor_store::Result<VersionId> {
        self.call(
            "write",
            CallClass::Write,
            self.inner.write(name, value, write_as),
        )
        .await
    }

    async fn promote(&self, name: &str, version: &VersionId) -> rotor_store::Result<()> {
        self.call(
            "promote",
            CallClass::Write,
            self.inner.promote(name, version),
        )
        .await
    }

    async fn retire(&self, name: &str, version: &VersionId) -> rotor_store::Result<()> {
        self.call("retire", CallClass::Write, self.inner.retire(name, version))
            .await
    }

    fn changes(&self, name: &str) -> Option<futures_util::stream::BoxStream<'static, ()>> {
        self.inner.changes(name)
    }
}

#[cfg(test)]
mod tests;
