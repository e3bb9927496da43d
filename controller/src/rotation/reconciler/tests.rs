//! The rotation reconciler against the fake API server of `rotor-fixtures`,
//! which records and answers every request.

use kube::runtime::events::Reporter;
use rotor_contract::api::{
    Generator, RandomBytesGenerator, Schedule, SecretRotationPolicySpec, StoreRef, Strategy,
};
use rotor_envelope::KeyFileKek;
use rotor_fixtures::api_server::{self, Recorded, Scenario};
use rotor_store::{LocalStore, WriteAs};

use super::*;
use crate::channel::Hub;
use crate::rotation::machine::Phase;

struct LocalFactory(LocalStore);

#[async_trait]
impl StoreFactory for LocalFactory {
    async fn store(&self, _policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(self.0.clone()))
    }
}

/// Answers every request: a status patch with the policy, an event with
/// itself, and records them.
fn api_server(policy: SecretRotationPolicy) -> (Client, Recorded) {
    let (client, server) = api_server::pair("default");
    (client, server.run(Scenario::echo(&policy)))
}

fn policy() -> SecretRotationPolicy {
    let mut p = SecretRotationPolicy::new(
        "db",
        SecretRotationPolicySpec {
            store_ref: StoreRef {
                name: "vault".into(),
                kind: "RotorStore".into(),
            },
            secret_name: "app/db".into(),
            schedule: Schedule {
                interval: Some("1h".into()),
                ..Schedule::default()
            },
            generator: Generator {
                password: None,
                random_bytes: Some(RandomBytesGenerator {
                    length: 32,
                    encoding: Default::default(),
                }),
                key_pair: None,
            },
            strategy: Strategy::default(),
            target: None,
            sidecars: vec![],
            paused: false,
        },
    );
    p.metadata.namespace = Some("shop".into());
    p.metadata.generation = Some(2);
    p
}

fn context(client: Client, leader: bool) -> (Arc<RotationContext>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(
        dir.path().join("s.rotor"),
        Arc::new(KeyFileKek::from_bytes(&[5; 32])),
    );
    store.put("app/db", b"v1", WriteAs::Current).unwrap();
    let ctx = RotationContext {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "rotor-controller".into(),
                instance: None,
            },
        ),
        client,
        stores: Arc::new(LocalFactory(store)),
        consumers: Arc::default(),
        hub: Arc::new(Hub::new(2)),
        ack_deadline: Duration::from_millis(100),
        rotators: None,
        leader: Arc::new(AtomicBool::new(leader)),
        metrics: Arc::default(),
    };
    (Arc::new(ctx), dir)
}

async fn timeout_after_1s<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn the_leader_steps_saves_status_and_publishes_an_event() {
    let p = policy();
    let (client, seen) = api_server(p.clone());
    let (ctx, _dir) = context(client, true);
    let action = timeout_after_1s(reconcile(Arc::new(p), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_millis(100)),
        "due now: step again at once"
    );
    let seen = seen.requests();
    let first = &seen[0];
    let body = &first.body;
    assert_eq!(
        (first.method.as_str(), first.path.as_str()),
        (
            "PATCH",
            "/apis/rotor.dev/v1alpha1/namespaces/shop/secretrotationpolicies/db/status"
        )
    );
    assert_eq!(body["status"]["phase"], "Generating");
    assert_eq!(body["status"]["currentVersion"], "1");
    assert_eq!(body["status"]["observedGeneration"], 2);
    let event = seen
        .iter()
        .find(|r| r.path.contains("/events"))
        .expect("an event");
    assert_eq!(event.method, "POST");
    assert_eq!(event.body["reason"], "RotationStarted");
    assert_eq!(event.body["regarding"]["name"], "db");
}

#[tokio::test]
async fn a_follower_does_nothing() {
    let p = policy();
    let (client, seen) = api_server(p.clone());
    let (ctx, _dir) = context(client, false);
    let action = timeout_after_1s(reconcile(Arc::new(p), ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert!(seen.requests().is_empty());
}

/// `rotor.dev/rotate-now` is acted on once, and the controller records
/// that in the status: it needs no write access to the policy itself.
#[tokio::test]
async fn rotate_now_is_recorded_in_the_status_not_the_policy() {
    let mut p = policy();
    // Rotated, and the next rotation scheduled far ahead whatever the wall
    // clock says: only rotate-now starts one.
    p.status = Some(rotor_contract::api::SecretRotationPolicyStatus {
        phase: Some(Phase::Idle),
        current_version: Some("1".into()),
        last_rotation: Some("2026-11-24T10:00:00Z".into()),
        next_rotation: Some("2999-01-01T00:00:00Z".into()),
        ..Default::default()
    });
    p.metadata.annotations = Some([(ROTATE_NOW.to_owned(), "t1".to_owned())].into());
    let (client, seen) = api_server(p.clone());
    let (ctx, _dir) = context(client, true);
    timeout_after_1s(reconcile(Arc::new(p.clone()), ctx.clone()))
        .await
        .unwrap();
    let requests = seen.requests();
    let patches: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.contains("/events"))
        .collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(patches[0].path.ends_with("/status"));
    assert_eq!(patches[0].body["status"]["phase"], "Generating");
    assert_eq!(patches[0].body["status"]["rotateNowHandled"], "t1");

    // Handled: the same token does not start another rotation.
    let mut handled = p;
    handled.status = Some(serde_json::from_value(patches[0].body["status"].clone()).unwrap());
    let mut idle = handled.status.clone().unwrap();
    idle.phase = Some(Phase::Idle);
    handled.status = Some(idle);
    let (client, seen) = api_server(handled.clone());
    let (ctx, _dir) = context(client, true);
    timeout_after_1s(reconcile(Arc::new(handled), ctx))
        .await
        .unwrap();
    let requests = seen.requests();
    let status = &requests
        .iter()
        .find(|r| r.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["phase"], "Idle");
    assert_eq!(status["rotateNowHandled"], "t1");
}

/// A store index's answer for a store that is not there.
struct Missing;

#[async_trait]
impl StoreFactory for Missing {
    async fn store(&self, policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>> {
        Err(Refusal::NotFound {
            namespace: policy.namespace().unwrap_or_default(),
            store: policy.spec.store_ref.name.clone(),
        }
        .into())
    }
}

/// A store that cannot be reached right now (not the policy's problem).
struct Unreachable;

#[async_trait]
impl StoreFactory for Unreachable {
    async fn store(&self, _policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>> {
        Err(Error::Kube(kube::Error::LinesCodecMaxLineLengthExceeded))
    }
}

fn with_stores(ctx: Arc<RotationContext>, stores: Arc<dyn StoreFactory>) -> Arc<RotationContext> {
    let RotationContext {
        client,
        consumers,
        hub,
        ack_deadline,
        rotators,
        leader,
        metrics,
        recorder,
        ..
    } = Arc::into_inner(ctx).unwrap();
    Arc::new(RotationContext {
        client,
        stores,
        consumers,
        hub,
        ack_deadline,
        rotators,
        leader,
        metrics,
        recorder,
    })
}

/// Reconciles `p` once with `stores`; the status it saved and the Events
/// it published (reason, type, note).
async fn reconcile_with(
    p: &SecretRotationPolicy,
    stores: Arc<dyn StoreFactory>,
) -> (
    serde_json::Value,
    Vec<(String, String, String)>,
    Vec<String>,
) {
    let (client, seen) = api_server(p.clone());
    let (ctx, _dir) = context(client, true);
    let ctx = with_stores(ctx, stores);
    let action = timeout_after_1s(reconcile(Arc::new(p.clone()), ctx))
        .await
        .unwrap();
    assert!(
        [60, 600, 3600]
            .map(|s| Action::requeue(Duration::from_secs(s)))
            .contains(&action),
        "{action:?}"
    );
    let requests = seen.requests();
    let status = requests
        .iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .expect("a status patch")
        .body["status"]
        .clone();
    let events = requests
        .iter()
        .filter(|r| r.path.contains("/events"))
        .map(|r| {
            let text = |k: &str| r.body[k].as_str().unwrap_or_default().to_owned();
            (text("reason"), text("type"), text("note"))
        })
        .collect();
    let calls = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    (status, events, calls)
}

fn ready(status: &serde_json::Value) -> (String, String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("a Ready condition");
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (text("status"), text("reason"), text("message"))
}

/// Reconciles `p` with `stores` twice, the second time with the status the
/// first saved: `Ready=False` with `reason` and one Warning Event the first
/// time, the same condition and no Event the second. The saved status, the
/// condition's message and the first reconcile's calls.
async fn blocked_once(
    p: &SecretRotationPolicy,
    stores: impl Fn() -> Arc<dyn StoreFactory>,
    reason: &str,
) -> (serde_json::Value, String, Vec<String>) {
    let (status, events, calls) = reconcile_with(p, stores()).await;
    let (on, saved_reason, message) = ready(&status);
    assert_eq!((on.as_str(), saved_reason.as_str()), ("False", reason));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        (reason, "Warning")
    );
    assert!(events[0].2.contains(&message), "{events:?}");

    let mut again = p.clone();
    again.status = Some(serde_json::from_value(status.clone()).unwrap());
    let (status2, events, calls2) = reconcile_with(&again, stores()).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(calls2.iter().all(|c| !c.starts_with("GET")), "{calls2:?}");
    assert_eq!(
        status2["conditions"], status["conditions"],
        "lastTransitionTime kept"
    );
    (status, message, calls)
}

#[tokio::test]
async fn a_missing_store_is_a_condition_and_one_warning_event() {
    let (status, message, calls) =
        blocked_once(&policy(), || Arc::new(Missing), "StoreNotFound").await;
    assert!(
        message.contains("there is no RotorStore \"vault\" in namespace \"shop\""),
        "{message}"
    );
    assert_eq!(status["observedGeneration"], 2);
    assert!(status.get("phase").is_none(), "nothing started: {status}");
    // A new reason is decided on the status as saved, read first.
    assert_eq!(
        calls[0],
        "GET /apis/rotor.dev/v1alpha1/namespaces/shop/secretrotationpolicies/db"
    );
}

#[tokio::test]
async fn a_bad_spec_and_a_missing_store_list_both_problems() {
    let mut p = policy();
    p.spec.schedule = Schedule {
        cron: Some("61 * * * *".into()),
        ..Schedule::default()
    };
    let (status, events, _) = reconcile_with(&p, Arc::new(Missing)).await;
    let (on, reason, message) = ready(&status);
    assert_eq!((on.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        message.contains("spec.schedule.cron") && message.contains("store \"vault\" not found"),
        "{message}"
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "InvalidSpec");
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_now_is_retried_not_reported() {
    let p = policy();
    let (client, seen) = api_server(p.clone());
    let (ctx, _dir) = context(client, true);
    let ctx = with_stores(ctx, Arc::new(Unreachable));
    let err = timeout_after_1s(reconcile(Arc::new(p), ctx))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "kube");
    assert!(seen.requests().is_empty(), "{:?}", seen.requests());
}

#[tokio::test]
async fn a_store_usable_again_clears_the_condition_and_rotates() {
    let mut p = policy();
    p.status = Some(
        serde_json::from_value(serde_json::json!({
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "NotAllowed",
                "message": "ClusterRotorStore \"vault\" does not allow namespace \"shop\"",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        }))
        .unwrap(),
    );
    let (client, seen) = api_server(p.clone());
    let (ctx, _dir) = context(client, true);
    timeout_after_1s(reconcile(Arc::new(p), ctx)).await.unwrap();
    let requests = seen.requests();
    let status = &requests
        .iter()
        .find(|r| r.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["phase"], "Generating");
    let (on, reason, _) = ready(status);
    assert_eq!((on.as_str(), reason.as_str()), ("True", "Resumed"));
}

#[test]
fn store_errors_map_to_typed_reasons() {
    let refused = |r: Refusal| store_blocked(&Error::StoreRefused(r));
    let (namespace, store) = ("shop".to_owned(), "vault".to_owned());
    assert_eq!(
        refused(Refusal::NotFound {
            namespace: namespace.clone(),
            store: store.clone()
        }),
        Some(Blocked::StoreNotFound)
    );
    assert_eq!(
        refused(Refusal::NamespaceNotAllowed {
            namespace: namespace.clone(),
            store: store.clone()
        }),
        Some(Blocked::NotAllowed)
    );
    assert_eq!(
        refused(Refusal::PathNotAllowed {
            namespace,
            store: store.clone(),
            secret: "x".into()
        }),
        Some(Blocked::NotAllowed)
    );
    assert_eq!(
        refused(Refusal::SecretAuth {
            store: store.clone(),
            auth: crate::store_index::SecretAuth::TokenSecretRef
        }),
        Some(Blocked::StoreUnsupported)
    );
    assert_eq!(
        store_blocked(&Error::UnsupportedStore {
            store,
            reason: "kubernetes".into()
        }),
        Some(Blocked::StoreUnsupported)
    );
    assert_eq!(store_blocked(&Error::Random), None);
}

/// A store that refuses the controller every call.
struct Denying;

#[async_trait]
impl StoreFactory for Denying {
    async fn store(&self, _policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(crate::rotation::machine::tests::Broken::denied()))
    }
}

#[tokio::test]
async fn a_store_that_refuses_the_controller_says_so() {
    let (_, message, _) = blocked_once(&policy(), || Arc::new(Denying), "StoreDenied").await;
    assert!(message.contains("permission denied"), "{message}");
}
