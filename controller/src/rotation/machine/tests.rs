use std::sync::{Arc, Mutex};

use rotor_crds::api::{Generator, PasswordGenerator, Schedule, Staged, StoreRef, Strategy};
use rotor_envelope::{ExposeSecret, KeyFileKek};
use rotor_store::LocalStore;

use super::*;

/// Consumers that acknowledge what they are asked for, except those listed
/// as stuck, and record every call.
#[derive(Default)]
struct Fake {
    names: Vec<String>,
    stuck: Vec<String>,
    calls: Mutex<Vec<Option<String>>>,
}

#[async_trait]
impl Consumers for Fake {
    async fn refresh(&self, _secret: &str, version: Option<&str>) -> Vec<Ack> {
        self.calls.lock().unwrap().push(version.map(str::to_owned));
        self.names
            .iter()
            .map(|n| Ack {
                consumer: n.clone(),
                version: if self.stuck.contains(n) {
                    Some("old".into())
                } else {
                    version.map(str::to_owned)
                },
                error: None,
            })
            .collect()
    }
}

fn fake(names: &[&str], stuck: &[&str]) -> Fake {
    Fake {
        names: names.iter().map(|s| s.to_string()).collect(),
        stuck: stuck.iter().map(|s| s.to_string()).collect(),
        calls: Mutex::default(),
    }
}

fn spec(on_timeout: OnTimeout) -> SecretRotationPolicySpec {
    SecretRotationPolicySpec {
        store_ref: StoreRef {
            name: "local".into(),
            kind: "SecretStore".into(),
        },
        secret_name: "app/db".into(),
        schedule: Schedule {
            interval: Some("1h".into()),
            ..Schedule::default()
        },
        generator: Generator {
            password: Some(PasswordGenerator {
                length: 24,
                symbols: "-_".into(),
                min_lower: 1,
                min_upper: 1,
                min_digits: 1,
                min_symbols: 1,
            }),
            random_bytes: None,
            key_pair: None,
        },
        strategy: Strategy {
            staged: Staged {
                ack_timeout: "30s".into(),
                grace_period: "10m".into(),
                on_timeout,
            },
        },
        sidecars: vec![],
        paused: false,
    }
}

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new(
        dir.path().join("s.rotor"),
        Arc::new(KeyFileKek::from_bytes(&[9; 32])),
    );
    s.put("app/db", b"initial", WriteAs::Current).unwrap();
    (dir, s)
}

fn phase(s: &SecretRotationPolicyStatus) -> &str {
    s.phase.as_deref().unwrap_or(IDLE)
}

fn cond<'a>(s: &'a SecretRotationPolicyStatus, t: &str) -> Option<&'a Condition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

/// Steps until the phase is `target` (at most 10 steps), at time `now`.
async fn until(
    spec: &SecretRotationPolicySpec,
    mut status: SecretRotationPolicyStatus,
    now: SystemTime,
    store: &LocalStore,
    c: &Fake,
    target: &str,
) -> SecretRotationPolicyStatus {
    for _ in 0..10 {
        status = step(spec, &status, now, false, store, c)
            .await
            .unwrap()
            .status;
        if phase(&status) == target {
            return status;
        }
    }
    panic!("never reached {target}: {status:?}");
}

#[tokio::test]
async fn every_transition_of_a_successful_rotation() {
    let (_d, store) = store();
    let c = fake(&["pod-a", "pod-b", "pod-c"], &[]);
    let spec = spec(OnTimeout::Rollback);
    let t0 = SystemTime::now();
    let s = step(
        &spec,
        &SecretRotationPolicyStatus::default(),
        t0,
        false,
        &store,
        &c,
    )
    .await
    .unwrap();
    assert_eq!(phase(&s.status), GENERATING, "never rotated: due at once");
    assert_eq!(s.status.current_version.as_deref(), Some("1"));
    let s = step(&spec, &s.status, t0, false, &store, &c).await.unwrap();
    assert_eq!(phase(&s.status), PROPAGATING);
    assert_eq!(s.status.pending_version.as_deref(), Some("2"));
    assert_eq!(
        store.current_version("app/db").unwrap(),
        1,
        "staged, not promoted"
    );
    let s = step(&spec, &s.status, t0, false, &store, &c).await.unwrap();
    assert_eq!(phase(&s.status), PROMOTING);
    assert!(
        s.status
            .consumers
            .iter()
            .all(|x| x.acknowledged_version.as_deref() == Some("2"))
    );
    assert_eq!(s.status.consumers.len(), 3);
    let s = step(&spec, &s.status, t0, false, &store, &c).await.unwrap();
    assert_eq!(phase(&s.status), RETIRING);
    assert_eq!(
        (
            s.status.current_version.as_deref(),
            s.status.previous_version.as_deref()
        ),
        (Some("2"), Some("1"))
    );
    assert_eq!(store.current_version("app/db").unwrap(), 2);
    assert_eq!(s.finished.unwrap().0, "success");
    assert_eq!(
        s.requeue,
        Duration::from_secs(600),
        "waits for the grace period"
    );
    // Before the grace period: nothing; after it: version 1 is retired.
    let early = step(
        &spec,
        &s.status,
        t0 + Duration::from_secs(60),
        false,
        &store,
        &c,
    )
    .await
    .unwrap();
    assert_eq!(phase(&early.status), RETIRING);
    assert!(store.get("app/db", Selector::Version(1.into())).is_ok());
    let done = step(
        &spec,
        &s.status,
        t0 + Duration::from_secs(601),
        false,
        &store,
        &c,
    )
    .await
    .unwrap();
    assert_eq!(phase(&done.status), IDLE);
    assert!(
        store.get("app/db", Selector::Version(1.into())).is_err(),
        "previous retired"
    );
    let idle = step(
        &spec,
        &done.status,
        t0 + Duration::from_secs(602),
        false,
        &store,
        &c,
    )
    .await
    .unwrap();
    assert!(
        idle.requeue > Duration::from_secs(2900),
        "next rotation an interval later: {:?}",
        idle.requeue
    );
    assert_eq!(cond(&idle.status, "Ready").unwrap().status, "True");
    assert_eq!(cond(&idle.status, "Rotating").unwrap().status, "False");
    // The pending version was pushed to consumers, then CURRENT.
    assert_eq!(
        c.calls.lock().unwrap().as_slice(),
        &[Some("2".to_owned()), None]
    );
    // No generated value in the status or events.
    let value = String::from_utf8(
        store
            .get("app/db", Selector::Current)
            .unwrap()
            .value
            .expose_secret()
            .to_vec(),
    )
    .unwrap();
    let text = format!("{:?}{:?}", done.status, done.events);
    assert!(!text.contains(&value));
}

#[tokio::test]
async fn a_restart_after_every_step_resumes_without_repeating_work() {
    let (_d, store) = store();
    let c = fake(&["pod-a"], &[]);
    let spec = spec(OnTimeout::Rollback);
    let t0 = SystemTime::now();
    let mut status = SecretRotationPolicyStatus::default();
    let mut seen = Vec::new();
    for _ in 0..6 {
        // The persisted status is all a restarted controller has.
        let persisted: SecretRotationPolicyStatus =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        status = step(
            &spec,
            &persisted,
            t0 + Duration::from_secs(700) * (seen.len() as u32 / 4),
            false,
            &store,
            &c,
        )
        .await
        .unwrap()
        .status;
        seen.push(phase(&status).to_owned());
        // Repeating the same step from the same persisted status is harmless.
        let again = step(
            &spec,
            &persisted,
            t0 + Duration::from_secs(700) * ((seen.len() - 1) as u32 / 4),
            false,
            &store,
            &c,
        )
        .await
        .unwrap()
        .status;
        assert_eq!(phase(&again), phase(&status));
    }
    // Exactly one new version, and the old one retired after the grace period.
    assert_eq!(store.current_version("app/db").unwrap(), 2, "{seen:?}");
    let versions: Vec<u64> = store
        .history("app/db")
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [2], "{seen:?}");
}

#[tokio::test]
async fn a_crash_after_writing_the_value_adopts_it() {
    let (_d, store) = store();
    let c = fake(&[], &[]);
    let spec = spec(OnTimeout::Rollback);
    let now = SystemTime::now();
    let mut generating = SecretRotationPolicyStatus {
        current_version: Some("1".into()),
        ..Default::default()
    };
    enter(&mut generating, GENERATING, now);
    // The value reached the store, the status did not.
    store
        .put("app/db", b"written-before-the-crash", WriteAs::Pending)
        .unwrap();
    let s = step(&spec, &generating, now, false, &store, &c)
        .await
        .unwrap();
    assert_eq!(s.status.pending_version.as_deref(), Some("2"));
    assert_eq!(
        store.history("app/db").unwrap().len(),
        2,
        "no second value generated"
    );
}

#[tokio::test]
async fn an_ack_timeout_promotes_with_degraded_or_rolls_back() {
    for (policy, expect) in [(OnTimeout::Promote, "2"), (OnTimeout::Rollback, "1")] {
        let (_d, store) = store();
        let c = fake(&["pod-a", "pod-stuck"], &["pod-stuck"]);
        let spec = spec(policy);
        let t0 = SystemTime::now();
        let s = until(
            &spec,
            SecretRotationPolicyStatus::default(),
            t0,
            &store,
            &c,
            PROPAGATING,
        )
        .await;
        let waiting = step(&spec, &s, t0 + Duration::from_secs(10), false, &store, &c)
            .await
            .unwrap();
        assert_eq!(
            phase(&waiting.status),
            PROPAGATING,
            "blocked while a consumer has not acknowledged"
        );
        let late = t0 + Duration::from_secs(31);
        let s = step(&spec, &waiting.status, late, false, &store, &c)
            .await
            .unwrap()
            .status;
        let degraded = cond(&s, "Degraded").unwrap();
        assert_eq!(degraded.status, "True");
        assert!(degraded.message.contains("pod-stuck"), "{degraded:?}");
        let s = step(&spec, &s, late, false, &store, &c)
            .await
            .unwrap()
            .status;
        assert_eq!(
            store.current_version("app/db").unwrap().to_string(),
            expect,
            "{policy:?}"
        );
        if policy == OnTimeout::Rollback {
            assert_eq!(phase(&s), IDLE);
            assert!(
                store.get("app/db", Selector::Version(2.into())).is_err(),
                "pending retired"
            );
            assert_eq!(
                c.calls.lock().unwrap().last().unwrap(),
                &None,
                "consumers told to go back"
            );
        }
    }
}

#[tokio::test]
async fn paused_policies_wait_unless_asked_to_rotate_now() {
    let (_d, store) = store();
    let c = fake(&[], &[]);
    let mut spec = spec(OnTimeout::Rollback);
    spec.paused = true;
    let now = SystemTime::now();
    let s = step(
        &spec,
        &SecretRotationPolicyStatus::default(),
        now,
        false,
        &store,
        &c,
    )
    .await
    .unwrap();
    assert_eq!(phase(&s.status), IDLE);
    assert_eq!(cond(&s.status, "Ready").unwrap().reason, "Paused");
    let s = step(&spec, &s.status, now, true, &store, &c).await.unwrap();
    assert_eq!(phase(&s.status), GENERATING);
}
