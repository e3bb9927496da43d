//! The rotation reconciler against the fake API server of `rotor-fixtures`,
//! which records and answers every request.

use kube::runtime::events::Reporter;
use rotor_crds::api::{
    Generator, RandomBytesGenerator, Schedule, SecretRotationPolicySpec, StoreRef, Strategy,
};
use rotor_envelope::KeyFileKek;
use rotor_fixtures::api_server::{self, Recorded, Scenario};
use rotor_store::{LocalStore, WriteAs};

use super::*;

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
        http: Arc::new(HttpSidecars::new(vec![])),
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
    p.status = Some(rotor_crds::api::SecretRotationPolicyStatus {
        phase: Some("Idle".into()),
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
    idle.phase = Some("Idle".into());
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
