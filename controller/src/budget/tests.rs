//! Tests of the request budget: its spec checks and the limiter's pacing, in
//! paused time.

use std::sync::atomic::Ordering;

use rotor_contract::api::{AwsProvider, KubernetesProvider};
use rotor_store::backoff::Fixed;

use super::*;
use crate::detect::tests::Versions;

const MS: Duration = Duration::from_millis(1);

fn spec(requests_per_second: u32, burst: Option<u32>) -> StoreBudget {
    StoreBudget {
        requests_per_second,
        burst,
    }
}

fn aws() -> AwsProvider {
    AwsProvider {
        region: "us-east-1".into(),
        endpoint: None,
        role_arn: None,
    }
}

#[test]
fn a_budget_that_cannot_work_is_refused_naming_the_field() {
    let err = Limit::from_spec("ns/s", &spec(0, None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "store \"ns/s\": spec.budget.requestsPerSecond is 0; expected at least 1 request a second"
    );
    assert_eq!(err.metric_label(), "store_spec");
    let err = Limit::from_spec("ns/s", &spec(5, Some(0))).unwrap_err();
    assert!(err.to_string().contains("spec.budget.burst is 0"), "{err}");
    // Both at once: both named, as the store's Ready condition says them.
    assert_eq!(problems(&spec(0, Some(0))).len(), 2);
    assert_eq!(
        Limit::from_spec("ns/s", &spec(5, None)).unwrap(),
        Limit {
            per_second: 5,
            burst: 5
        }
    );
}

#[test]
fn defaults_follow_the_providers_published_quotas() {
    let k8s = KubernetesProvider {};
    assert_eq!(
        Budget::of("s", None, ProviderKind::Kubernetes(&k8s)).unwrap(),
        Budget::Unlimited
    );
    let aws = aws();
    let budget = Budget::of("s", None, ProviderKind::Aws(&aws)).unwrap();
    assert_eq!(
        budget.limit(CallClass::Check),
        Some(Limit::per_second(40_000))
    );
    assert_eq!(
        budget.limit(CallClass::Read),
        Some(Limit::per_second(10_000))
    );
    assert_eq!(budget.limit(CallClass::Write), Some(Limit::per_second(50)));
    // A budget set applies to every call, AWS's included.
    let set = Budget::of("s", Some(&spec(20, Some(40))), ProviderKind::Aws(&aws)).unwrap();
    for class in CallClass::ALL {
        assert_eq!(
            set.limit(class),
            Some(Limit {
                per_second: 20,
                burst: 40
            })
        );
    }
}

#[test]
fn the_bucket_gives_its_burst_then_one_token_per_period() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(
        Limit {
            per_second: 2,
            burst: 3,
        },
        t0,
    );
    for _ in 0..3 {
        bucket.take(t0).unwrap();
    }
    assert_eq!(bucket.take(t0), Err(500 * MS));
    assert_eq!(bucket.take(t0 + 250 * MS), Err(250 * MS));
    bucket.take(t0 + 500 * MS).unwrap();
    // A long quiet spell refills up to the burst, not beyond.
    let later = t0 + Duration::from_secs(60);
    for _ in 0..3 {
        bucket.take(later).unwrap();
    }
    assert!(bucket.take(later).is_err());
}

/// 25 calls at 10 a second with a burst of 5: the first 5 at once, the
/// other 20 one per 100 ms.
#[tokio::test(start_paused = true)]
async fn calls_wait_for_the_budget() {
    let limiter = Limiter::new(
        Budget::All(Limit {
            per_second: 10,
            burst: 5,
        }),
        Box::new(Fixed(0.5)),
    );
    let start = Instant::now();
    let mut at = Vec::new();
    for _ in 0..25 {
        limiter.acquire(CallClass::Check).await;
        at.push(start.elapsed());
    }
    assert!(at[..5].iter().all(|t| *t == Duration::ZERO), "{at:?}");
    for (i, t) in at[5..].iter().enumerate() {
        let due = 100 * MS * (i as u32 + 1);
        assert!(*t >= due && *t < due + 10 * MS, "call {}: {t:?}", i + 5);
    }
}

fn scrape(metrics: &StoreMetrics) -> String {
    let mut registry = Registry::default();
    metrics.register(registry.sub_registry_with_prefix("rotor"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// Three throttling answers in a row hold the store's calls back 1 s,
/// 2 s, then 4 s (500 ms doubling, the jitter fixed at its top); each is
/// counted, and an answer resets the growth.
#[tokio::test(start_paused = true)]
async fn throttling_answers_slow_the_calls_and_are_counted() {
    let metrics = StoreMetrics::default();
    let limiter = Arc::new(Limiter::new(Budget::Unlimited, Box::new(Fixed(1.0))));
    let versions = Versions::default();
    versions.set("db", 1);
    versions.throttle.store(3, Ordering::SeqCst);
    let store = BudgetedStore::new(Arc::new(versions), limiter.clone(), metrics.clone(), "ns/s");
    assert!(
        scrape(&metrics).contains("rotor_store_throttled_total{store=\"ns/s\"} 0"),
        "{}",
        scrape(&metrics)
    );
    let start = Instant::now();
    let mut at = Vec::new();
    loop {
        let result = store.current_version("db").await;
        at.push(start.elapsed());
        if result.is_ok() {
            break;
        }
    }
    assert_eq!(at.len(), 4, "{at:?}");
    let expected = [0, 1_000, 3_000, 7_000].map(|ms| ms * MS);
    for (t, due) in at.iter().zip(expected) {
        assert!(*t >= due && *t < due + 10 * MS, "{at:?}");
    }
    let text = scrape(&metrics);
    for line in [
        "rotor_store_requests_total{store=\"ns/s\",call=\"current_version\",result=\"throttled\"} 3",
        "rotor_store_requests_total{store=\"ns/s\",call=\"current_version\",result=\"ok\"} 1",
        "rotor_store_throttled_total{store=\"ns/s\"} 3",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // Answered: the next throttling starts from the base again.
    assert_eq!(limiter.throttled(), 1_000 * MS);
}

/// The fan-out paces fetches, and a Vault fetch of CURRENT is two
/// requests (metadata, then data): half as many fetches as requests.
#[test]
fn fetches_a_second_are_the_read_budget_over_a_fetchs_requests() {
    let vault: rotor_contract::api::VaultProvider = serde_json::from_value(serde_json::json!({
        "server": "http://127.0.0.1:8200",
        "auth": {"tokenSecretRef": {"name": "t", "key": "token"}}
    }))
    .unwrap();
    let set = Budget::of("s", Some(&spec(20, Some(30))), ProviderKind::Vault(&vault)).unwrap();
    assert_eq!(
        set.fetch_limit(ProviderKind::Vault(&vault)),
        Some(Limit {
            per_second: 10,
            burst: 15
        })
    );
    let aws = aws();
    let quota = Budget::of("s", None, ProviderKind::Aws(&aws)).unwrap();
    assert_eq!(
        quota.fetch_limit(ProviderKind::Aws(&aws)),
        Some(Limit::per_second(AWS_GET_SECRET_VALUE_TPS))
    );
    assert_eq!(
        Budget::of("s", None, ProviderKind::Vault(&vault))
            .unwrap()
            .fetch_limit(ProviderKind::Vault(&vault)),
        None
    );
    // A budget of one request a second still lets one fetch through.
    let one = Budget::of("s", Some(&spec(1, None)), ProviderKind::Vault(&vault)).unwrap();
    assert_eq!(
        one.fetch_limit(ProviderKind::Vault(&vault)),
        Some(Limit::per_second(1))
    );
}
