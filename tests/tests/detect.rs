//! The controller's change detector against real stores, counted by the
//! stores themselves: OpenBao's audit log and moto's request recorder.
//! Many subscribers of the same secrets cost one metadata call per secret
//! per interval, and no value is read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rotor_controller::budget::{Budget, BudgetedStore, Limit, Limiter, StoreMetrics};
use rotor_controller::detect::{DetectStores, Detector, StoreRef, Subscription, VersionChanged};
use rotor_controller::store_index::StoreKind;
use rotor_e2e::servers::{Bao, Moto, recorded_body};
use rotor_store::backoff::SystemRandom;
use rotor_store::{Store, VaultAuth, VaultConfig, VaultStore, WriteAs};
use tokio::sync::{mpsc, watch};

const INTERVAL: Duration = Duration::from_millis(300);
const SECRETS: [&str; 3] = ["app/db", "app/api", "app/cache"];
const SUBSCRIBERS: usize = 50;
const ROUNDS: u64 = 5;

/// One store for every tenant, behind a budget.
struct Fixed(Arc<dyn Store>);

#[async_trait]
impl DetectStores for Fixed {
    async fn store_for(&self, _: &StoreRef, _: &str) -> rotor_controller::Result<Arc<dyn Store>> {
        Ok(self.0.clone())
    }
}

fn budgeted(store: Arc<dyn Store>) -> Arc<dyn Store> {
    let limiter = Limiter::new(
        Budget::All(Limit {
            per_second: 100,
            burst: 10,
        }),
        Box::new(SystemRandom),
    );
    Arc::new(BudgetedStore::new(
        store,
        Arc::new(limiter),
        StoreMetrics::default(),
        "team-a/store",
    ))
}

/// `SUBSCRIBERS` sidecars, each on every secret, at intervals from
/// `INTERVAL` up.
fn subscriptions() -> Vec<Subscription> {
    let store = StoreRef {
        namespace: "team-a".into(),
        kind: StoreKind::Namespaced,
        name: "store".into(),
    };
    (0..SUBSCRIBERS)
        .flat_map(|i| {
            let store = store.clone();
            SECRETS.map(move |secret| Subscription {
                store: store.clone(),
                secret: secret.into(),
                refresh: INTERVAL * (1 + (i % 4) as u32),
            })
        })
        .collect()
}

/// Runs the detector for `ROUNDS` rounds, writing a new version of the
/// first secret with `write` after the first round; returns the events,
/// how many checks ran and how long it ran.
async fn detect(
    store: Arc<dyn Store>,
    write: impl AsyncFnOnce(),
) -> (Vec<VersionChanged>, u64, Duration) {
    let detector = Detector::new(Arc::new(Fixed(budgeted(store))));
    let mut checks = detector.checks();
    let (subs_tx, subs) = watch::channel(subscriptions());
    let (tx, mut rx) = mpsc::channel(64);
    let started = Instant::now();
    let task = tokio::spawn(detector.run(subs, tx));
    let per_round = SECRETS.len() as u64;
    tokio::time::timeout(
        Duration::from_secs(30),
        checks.wait_for(|n| *n >= per_round),
    )
    .await
    .expect("the first round")
    .unwrap();
    write().await;
    tokio::time::timeout(
        Duration::from_secs(30),
        checks.wait_for(|n| *n >= ROUNDS * per_round),
    )
    .await
    .expect("the rounds")
    .unwrap();
    drop(subs_tx);
    task.await.unwrap();
    let ran = started.elapsed();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (events, *checks.borrow(), ran)
}

/// Per secret: how many requests went to it.
fn per_secret(paths: impl Iterator<Item = String>, prefix: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for path in paths {
        if let Some(secret) = path.strip_prefix(prefix) {
            *counts.entry(secret.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// The checks were one per secret per round, spread evenly, at most one
/// per secret per interval, and the first secret's new version came out
/// once.
fn assert_one_check_per_secret_per_interval(
    checked: &BTreeMap<String, u64>,
    checks: u64,
    ran: Duration,
    events: &[VersionChanged],
) {
    assert_eq!(checked.values().sum::<u64>(), checks, "{checked:?}");
    assert_eq!(checked.len(), SECRETS.len(), "{checked:?}");
    let most = (ran.as_secs_f64() / INTERVAL.as_secs_f64()).floor() as u64 + 1;
    for (secret, n) in checked {
        assert!(
            *n >= ROUNDS - 1 && *n <= most,
            "{secret}: {n} checks in {ran:?} at {INTERVAL:?} for {SUBSCRIBERS} subscribers"
        );
    }
    let first: Vec<&VersionChanged> = events.iter().filter(|e| e.previous.is_none()).collect();
    assert_eq!(first.len(), SECRETS.len(), "{events:?}");
    let changed: Vec<&VersionChanged> = events.iter().filter(|e| e.previous.is_some()).collect();
    assert_eq!(changed.len(), 1, "{events:?}");
    assert_eq!(changed[0].secret, SECRETS[0]);
    assert_ne!(Some(&changed[0].version), changed[0].previous.as_ref());
}

/// Detection as the holder of `token` against `bao` (whose secrets are
/// seeded first): the events, checks and run time, and the `(operation,
/// path)` of every request OpenBao saw meanwhile.
async fn detect_on_bao(
    bao: &Bao,
    token: &str,
) -> (Vec<VersionChanged>, u64, Duration, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let store = VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::TokenFile(token_file),
    ))
    .unwrap();
    let before = bao.audited_requests().len();
    let (events, checks, ran) = detect(Arc::new(store), async || {
        seed(bao, SECRETS[0], "2");
    })
    .await;
    (
        events,
        checks,
        ran,
        bao.audited_requests().split_off(before),
    )
}

/// An audited OpenBao holding version 1 of every secret.
fn seeded_bao() -> Bao {
    let bao = Bao::start_audited();
    for secret in SECRETS {
        seed(&bao, secret, "1");
    }
    bao
}

fn seed(bao: &Bao, secret: &str, value: &str) {
    let body = serde_json::json!({"data": {"v": value}}).to_string();
    bao.api("POST", &format!("secret/data/{secret}"), &body);
}

/// Reads by the secret they went to, under `prefix`.
fn reads_under(requests: &[(String, String)], prefix: &str) -> BTreeMap<String, u64> {
    per_secret(
        requests
            .iter()
            .filter(|(op, _)| op == "read")
            .map(|(_, p)| p.clone()),
        prefix,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_sees_one_metadata_read_per_secret_per_interval_and_no_value_read() {
    let bao = seeded_bao();
    let (events, checks, ran, requests) = detect_on_bao(&bao, "root").await;

    // The test's own write is the only data request.
    let data: Vec<&(String, String)> = requests
        .iter()
        .filter(|(_, p)| p.starts_with("secret/data/"))
        .collect();
    assert_eq!(
        data,
        [&("update".to_owned(), format!("secret/data/{}", SECRETS[0]))],
        "a value was read"
    );
    let metadata = reads_under(&requests, "secret/metadata/");
    assert_one_check_per_secret_per_interval(&metadata, checks, ran, &events);
}

/// A policy that grants data only (no `secret/metadata/*`): the checks
/// fall back to data reads, as the sidecar's do, still once per secret
/// per interval; the metadata endpoint is tried only at the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_data_only_policy_openbao_sees_one_data_read_per_secret_per_interval() {
    let bao = seeded_bao();
    bao.api(
        "PUT",
        "sys/policies/acl/data-only",
        &serde_json::json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"})
            .to_string(),
    );
    let created: serde_json::Value = serde_json::from_str(&bao.api(
        "POST",
        "auth/token/create",
        r#"{"policies":["data-only"],"no_default_policy":true}"#,
    ))
    .unwrap();
    let token = created["auth"]["client_token"].as_str().unwrap();
    let (events, checks, ran, requests) = detect_on_bao(&bao, token).await;

    let tried: usize = requests
        .iter()
        .filter(|(_, p)| p.starts_with("secret/metadata/"))
        .count();
    // Each secret of the first round may try it (they run at once), and
    // try again once after refreshing the token.
    assert!(
        (1..=2 * SECRETS.len()).contains(&tried),
        "{tried} metadata requests"
    );
    let data = reads_under(&requests, "secret/data/");
    assert_one_check_per_secret_per_interval(&data, checks, ran, &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_sees_describe_secret_only_once_per_secret_per_interval() {
    let moto = Moto::start();
    let store = moto.store().await;
    for secret in SECRETS {
        store.write(secret, b"1", WriteAs::Current).await.unwrap();
    }
    moto.start_recording();
    let writer = moto.store().await;

    let (events, checks, ran) = detect(Arc::new(store), async || {
        writer
            .write(SECRETS[0], b"2", WriteAs::Current)
            .await
            .unwrap();
    })
    .await;

    let recording = moto.recording();
    let target = |e: &serde_json::Value| {
        e["headers"]["X-Amz-Target"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let calls: Vec<String> = recording.iter().map(target).collect();
    assert!(
        !calls
            .iter()
            .any(|c| c.ends_with(".GetSecretValue") || c.ends_with(".BatchGetSecretValue")),
        "a value was read: {calls:?}"
    );
    let described = per_secret(
        recording
            .iter()
            .filter(|e| target(e) == "secretsmanager.DescribeSecret")
            .map(|e| {
                let body: serde_json::Value =
                    serde_json::from_str(&recorded_body(e)).expect("a JSON body");
                format!("id:{}", body["SecretId"].as_str().unwrap_or(""))
            }),
        "id:",
    );
    // The writer's PutSecretValue needs no DescribeSecret: every one
    // recorded is the detector's.
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.ends_with(".PutSecretValue"))
            .count(),
        1,
        "{calls:?}"
    );
    assert_one_check_per_secret_per_interval(&described, checks, ran, &events);
}
