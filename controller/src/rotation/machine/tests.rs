//! Tests of the rotation state machine: every phase over fake consumers, stores
//! and targets, with a seeded random source.

use std::sync::{Arc, Mutex};

use rotor_contract::api::{
    Generator, PasswordGenerator, Schedule, SecretRotationPolicySpec, Staged, StoreRef, Strategy,
};
use rotor_envelope::{ExposeSecret, KeyFileKek};
use rotor_store::LocalStore;

use super::*;
use crate::rotation::target::https::CallerToken;
use crate::rotation::validate::Mode;

/// [`super::step`] with a seeded random source, as every test here runs it.
async fn step(
    policy: &Policy,
    current: &SecretRotationPolicyStatus,
    now: SystemTime,
    rotate_now: bool,
    store: &dyn Store,
    consumers: &dyn Consumers,
    caller: Option<&dyn CallerToken>,
) -> Result<Step> {
    let rng = Seeded::new(0);
    crate::rotation::driver::Rotation {
        policy,
        current,
        now,
        rotate_now,
        store,
        consumers,
        caller,
        rng: &rng,
    }
    .step()
    .await
}

/// Consumers that acknowledge what they are asked for, except those listed
/// as stuck, and record every call.
#[derive(Default)]
struct Fake {
    names: Vec<String>,
    stuck: Vec<String>,
    /// Consumers whose sidecar has no stream.
    absent: Vec<String>,
    calls: Mutex<Vec<Option<String>>>,
}

#[async_trait]
impl Consumers for Fake {
    async fn refresh(&self, _secret: &str, version: Option<&str>) -> Vec<Ack> {
        self.calls.lock().unwrap().push(version.map(str::to_owned));
        self.names
            .iter()
            .map(|n| {
                if self.absent.contains(n) {
                    return Ack::unanswered(n.clone(), Unanswered::NotConnected);
                }
                Ack::answered(
                    n.clone(),
                    if self.stuck.contains(n) {
                        Some("old".into())
                    } else {
                        version.map(str::to_owned)
                    },
                    None,
                )
            })
            .collect()
    }
}

fn fake(names: &[&str], stuck: &[&str]) -> Fake {
    Fake {
        names: names.iter().map(|s| s.to_string()).collect(),
        stuck: stuck.iter().map(|s| s.to_string()).collect(),
        absent: Vec::new(),
        calls: Mutex::default(),
    }
}

fn spec(on_timeout: OnTimeout) -> SecretRotationPolicySpec {
    SecretRotationPolicySpec {
        store_ref: StoreRef {
            name: "local".into(),
            kind: "RotorStore".into(),
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
        target: None,
        sidecars: vec![],
        paused: false,
    }
}

fn policy(on_timeout: OnTimeout) -> Policy {
    Policy::parse(&spec(on_timeout), Mode::Cluster).unwrap()
}

/// A fixed start time: no test reads the wall clock.
fn t0() -> SystemTime {
    humantime::parse_rfc3339("2026-11-24T10:00:00Z").unwrap()
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

fn phase(s: &SecretRotationPolicyStatus) -> Phase {
    Phase::of(s)
}

fn cond<'a>(
    s: &'a SecretRotationPolicyStatus,
    t: &str,
) -> Option<&'a rotor_contract::api::PolicyCondition> {
    s.conditions.iter().find(|c| c.type_ == t)
}

/// Steps until the phase is `target` (at most 10 steps), at time `now`.
async fn until(
    spec: &Policy,
    mut status: SecretRotationPolicyStatus,
    now: SystemTime,
    store: &LocalStore,
    c: &Fake,
    target: Phase,
) -> SecretRotationPolicyStatus {
    for _ in 0..10 {
        status = step(spec, &status, now, false, store, c, None)
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
    let spec = policy(OnTimeout::Rollback);
    let t0 = t0();
    let s = step(
        &spec,
        &SecretRotationPolicyStatus::default(),
        t0,
        false,
        &store,
        &c,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        phase(&s.status),
        Phase::Generating,
        "never rotated: due at once"
    );
    assert_eq!(s.status.current_version.as_deref(), Some("1"));
    let s = step(&spec, &s.status, t0, false, &store, &c, None)
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Propagating);
    assert_eq!(s.status.pending_version.as_deref(), Some("2"));
    assert_eq!(
        store.current_number("app/db").unwrap(),
        1,
        "staged, not promoted"
    );
    let s = step(&spec, &s.status, t0, false, &store, &c, None)
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Promoting);
    assert!(
        s.status
            .consumers
            .iter()
            .all(|x| x.acknowledged_version.as_deref() == Some("2"))
    );
    assert_eq!(s.status.consumers.len(), 3);
    let s = step(&spec, &s.status, t0, false, &store, &c, None)
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Retiring);
    assert_eq!(
        (
            s.status.current_version.as_deref(),
            s.status.previous_version.as_deref()
        ),
        (Some("2"), Some("1"))
    );
    assert_eq!(store.current_number("app/db").unwrap(), 2);
    assert_eq!(s.finished.unwrap().0, Outcome::Success);
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
        None,
    )
    .await
    .unwrap();
    assert_eq!(phase(&early.status), Phase::Retiring);
    assert!(store.get("app/db", Selector::Version(1.into())).is_ok());
    let done = step(
        &spec,
        &s.status,
        t0 + Duration::from_secs(601),
        false,
        &store,
        &c,
        None,
    )
    .await
    .unwrap();
    assert_eq!(phase(&done.status), Phase::Idle);
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
        None,
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
    let spec = policy(OnTimeout::Rollback);
    let t0 = t0();
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
            None,
        )
        .await
        .unwrap()
        .status;
        seen.push(phase(&status));
        // Repeating the same step from the same persisted status is harmless.
        let again = step(
            &spec,
            &persisted,
            t0 + Duration::from_secs(700) * ((seen.len() - 1) as u32 / 4),
            false,
            &store,
            &c,
            None,
        )
        .await
        .unwrap()
        .status;
        assert_eq!(phase(&again), phase(&status));
    }
    // Exactly one new version, and the old one retired after the grace period.
    assert_eq!(store.current_number("app/db").unwrap(), 2, "{seen:?}");
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
    let spec = policy(OnTimeout::Rollback);
    let now = t0();
    let mut generating = SecretRotationPolicyStatus {
        current_version: Some("1".into()),
        ..Default::default()
    };
    enter(&mut generating, Phase::Generating, now);
    // The value reached the store, the status did not.
    store
        .put("app/db", b"written-before-the-crash", WriteAs::Pending)
        .unwrap();
    let s = step(&spec, &generating, now, false, &store, &c, None)
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
        let spec = self::policy(policy);
        let t0 = t0();
        let s = until(
            &spec,
            SecretRotationPolicyStatus::default(),
            t0,
            &store,
            &c,
            Phase::Propagating,
        )
        .await;
        let waiting = step(
            &spec,
            &s,
            t0 + Duration::from_secs(10),
            false,
            &store,
            &c,
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            phase(&waiting.status),
            Phase::Propagating,
            "blocked while a consumer has not acknowledged"
        );
        let late = t0 + Duration::from_secs(31);
        let s = step(&spec, &waiting.status, late, false, &store, &c, None)
            .await
            .unwrap()
            .status;
        let degraded = cond(&s, "Degraded").unwrap();
        assert_eq!(degraded.status, "True");
        assert!(degraded.message.contains("pod-stuck"), "{degraded:?}");
        let s = step(&spec, &s, late, false, &store, &c, None)
            .await
            .unwrap()
            .status;
        assert_eq!(
            store.current_number("app/db").unwrap().to_string(),
            expect,
            "{policy:?}"
        );
        if policy == OnTimeout::Rollback {
            assert_eq!(phase(&s), Phase::Idle);
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
    let mut spec = policy(OnTimeout::Rollback);
    spec.paused = true;
    let now = t0();
    let s = step(
        &spec,
        &SecretRotationPolicyStatus::default(),
        now,
        false,
        &store,
        &c,
        None,
    )
    .await
    .unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(cond(&s.status, "Ready").unwrap().reason, "Paused");
    let s = step(&spec, &s.status, now, true, &store, &c, None)
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Generating);
}

// Each phase function on its own: success, a store error, and its timing.

/// A store whose every call fails with an error that is not "not found",
/// counting the calls.
#[derive(Default)]
pub(crate) struct Broken {
    calls: Mutex<usize>,
    /// Fail as a store whose own policy refuses the caller.
    denied: bool,
}

impl Broken {
    /// Every call refused with permission denied.
    pub(crate) fn denied() -> Self {
        Self {
            denied: true,
            ..Self::default()
        }
    }

    fn fail<T>(&self) -> rotor_store::Result<T> {
        *self.calls.lock().unwrap() += 1;
        Err(if self.denied {
            rotor_store::Error::PermissionDenied {
                store: "broken".into(),
                name: "app/db".into(),
                detail: "permission denied".into(),
            }
        } else {
            rotor_store::Error::Corrupt {
                path: "/broken".into(),
                problem: "test".into(),
            }
        })
    }
}

#[async_trait]
impl Store for Broken {
    fn describe(&self) -> String {
        "broken".into()
    }
    async fn read(&self, _: &str, _: &Selector) -> rotor_store::Result<rotor_store::Fetched> {
        self.fail()
    }
    async fn current_version(&self, _: &str) -> rotor_store::Result<VersionId> {
        self.fail()
    }
    async fn write(&self, _: &str, _: &[u8], _: WriteAs) -> rotor_store::Result<VersionId> {
        self.fail()
    }
    async fn promote(&self, _: &str, _: &VersionId) -> rotor_store::Result<()> {
        self.fail()
    }
    async fn retire(&self, _: &str, _: &VersionId) -> rotor_store::Result<()> {
        self.fail()
    }
}

/// A store where the secret does not exist yet: a PENDING write is "not
/// found", as in the network stores.
struct Unborn(LocalStore);

#[async_trait]
impl Store for Unborn {
    fn describe(&self) -> String {
        "unborn".into()
    }
    async fn read(&self, n: &str, s: &Selector) -> rotor_store::Result<rotor_store::Fetched> {
        Store::read(&self.0, n, s).await
    }
    async fn current_version(&self, n: &str) -> rotor_store::Result<VersionId> {
        Store::current_version(&self.0, n).await
    }
    async fn write(&self, n: &str, v: &[u8], w: WriteAs) -> rotor_store::Result<VersionId> {
        match w {
            WriteAs::Pending => Err(rotor_store::Error::SecretNotFound {
                store: "unborn".into(),
                name: n.into(),
            }),
            WriteAs::Current => Store::write(&self.0, n, v, w).await,
        }
    }
    async fn promote(&self, n: &str, v: &VersionId) -> rotor_store::Result<()> {
        Store::promote(&self.0, n, v).await
    }
    async fn retire(&self, n: &str, v: &VersionId) -> rotor_store::Result<()> {
        Store::retire(&self.0, n, v).await
    }
}

/// What a phase test works with: the policy, consumers that acknowledge
/// (except `stuck`) and a seeded random source.
struct Rig {
    policy: Policy,
    consumers: Fake,
    rng: Seeded,
}

impl Rig {
    fn new(on_timeout: OnTimeout, names: &[&str], stuck: &[&str]) -> Self {
        Self {
            policy: policy(on_timeout),
            consumers: fake(names, stuck),
            rng: Seeded::new(1),
        }
    }

    fn at<'a>(&'a self, now: SystemTime, store: &'a dyn Store) -> Inputs<'a> {
        Inputs {
            policy: &self.policy,
            now,
            store,
            consumers: &self.consumers,
            rng: &self.rng,
            target: None,
            receiver: None,
        }
    }

    fn calls(&self) -> Vec<Option<String>> {
        self.consumers.calls.lock().unwrap().clone()
    }
}

/// A status in `phase` since `since`, current version 1, pending 2.
fn in_phase(phase: Phase, since: SystemTime) -> SecretRotationPolicyStatus {
    let mut s = SecretRotationPolicyStatus {
        current_version: Some("1".into()),
        pending_version: Some("2".into()),
        ..Default::default()
    };
    enter(&mut s, phase, since);
    s
}

fn store_error(r: Result<Step>) -> rotor_store::Error {
    match r {
        Err(Error::Store(e)) => e,
        other => panic!("expected a store error, got {other:?}"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

use rotor_store::random::Seeded;

#[test]
fn phase_strings_round_trip() {
    let wire = [
        "Idle",
        "Generating",
        "Setting",
        "Testing",
        "Propagating",
        "Promoting",
        "Retiring",
        "RollingBack",
    ];
    assert_eq!(Phase::ALL.map(Phase::as_str), wire);
    for p in Phase::ALL {
        assert_eq!(p.to_string(), p.as_str());
        // Through the status as it is stored and read back.
        let mut status = SecretRotationPolicyStatus::default();
        enter(&mut status, p, t0());
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], p.as_str());
        let back: SecretRotationPolicyStatus = serde_json::from_value(json).unwrap();
        assert_eq!(Phase::of(&back), p);
        // A status stored as a string before the phase was typed reads
        // back as the same phase.
        let stored: SecretRotationPolicyStatus =
            serde_json::from_value(serde_json::json!({ "phase": p.as_str() })).unwrap();
        assert_eq!(stored.phase, Some(p));
    }
    assert_eq!(
        Phase::of(&SecretRotationPolicyStatus::default()),
        Phase::Idle,
        "no phase yet: Idle"
    );
}

/// A status written with a phase this controller does not know is
/// refused when it is read, naming the value, so no step can act on it;
/// the CRD's schema refuses it on write.
#[test]
fn an_unknown_phase_is_refused_when_the_status_is_read() {
    for unknown in ["Verifying", "idle", "", "Staged"] {
        let err = serde_json::from_value::<SecretRotationPolicyStatus>(
            serde_json::json!({ "phase": unknown }),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("unknown variant `{unknown}`")),
            "{err}"
        );
    }
    let crd = serde_json::to_value(
        <rotor_contract::api::SecretRotationPolicy as kube::CustomResourceExt>::crd(),
    )
    .unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["phase"];
    let allowed: Vec<&str> = schema["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("phase schema: {schema}"))
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(allowed, Phase::ALL.map(Phase::as_str));
}

#[test]
fn events_keep_their_reasons_types_and_messages() {
    let (secret, version) = ("app/db".to_owned(), "7".to_owned());
    let laggards = vec!["pod-a".to_owned(), "pod-b".to_owned()];
    for (event, reason, severity, message) in [
        (
            RotationEvent::Started {
                secret: secret.clone(),
            },
            "RotationStarted",
            Severity::Normal,
            "rotating app/db",
        ),
        (
            RotationEvent::Created {
                secret: secret.clone(),
                version: version.clone(),
            },
            "Created",
            Severity::Normal,
            "created app/db version 7",
        ),
        (
            RotationEvent::Staged {
                secret: secret.clone(),
                version: version.clone(),
            },
            "Staged",
            Severity::Normal,
            "version 7 of app/db staged as pending",
        ),
        (
            RotationEvent::Acknowledged {
                consumers: 3,
                version: version.clone(),
            },
            "Acknowledged",
            Severity::Normal,
            "all 3 consumers serve version 7",
        ),
        (
            RotationEvent::AckTimeout {
                on_timeout: OnTimeout::Promote,
                laggards: laggards.clone(),
            },
            "AckTimeout",
            Severity::Warning,
            "promoting anyway; no acknowledgement from pod-a, pod-b",
        ),
        (
            RotationEvent::AckTimeout {
                on_timeout: OnTimeout::Rollback,
                laggards,
            },
            "AckTimeout",
            Severity::Warning,
            "rolling back; no acknowledgement from pod-a, pod-b",
        ),
        (
            RotationEvent::Promoted {
                secret: secret.clone(),
                version: version.clone(),
            },
            "Promoted",
            Severity::Normal,
            "version 7 of app/db is current",
        ),
        (
            RotationEvent::Retired {
                secret: secret.clone(),
                version: version.clone(),
            },
            "Retired",
            Severity::Normal,
            "version 7 of app/db retired",
        ),
        (
            RotationEvent::RolledBack { secret, version },
            "RolledBack",
            Severity::Warning,
            "pending version 7 of app/db retired",
        ),
    ] {
        assert_eq!(
            (event.reason(), event.severity(), event.message().as_str()),
            (reason, severity, message)
        );
    }
}

#[tokio::test]
async fn idle_starts_a_due_rotation_and_waits_for_one_not_due() {
    let (_d, store) = store();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let now = t0();
    let i = r.at(now, &store);
    // Never rotated: due now.
    let s = idle(&i, SecretRotationPolicyStatus::default(), false)
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Generating);
    assert_eq!(s.status.current_version.as_deref(), Some("1"));
    assert_eq!(s.requeue, Duration::ZERO);
    assert_eq!(
        s.events,
        [RotationEvent::Started {
            secret: "app/db".into()
        }]
    );
    assert_eq!(cond(&s.status, "Rotating").unwrap().status, "True");
    // Rotated 20 minutes ago with a 1h interval: due in 40 minutes.
    let rotated = SecretRotationPolicyStatus {
        last_rotation: Some(rfc3339(now - secs(1200))),
        ..Default::default()
    };
    let s = idle(&i, rotated, false).await.unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(s.requeue, secs(2400));
    assert!(s.events.is_empty());
    let ready = cond(&s.status, "Ready").unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("Scheduled", "next rotation at 2026-11-24T10:40:00Z")
    );
    assert_eq!(
        s.status.next_rotation.as_deref(),
        Some("2026-11-24T10:40:00Z")
    );
}

#[tokio::test]
async fn idle_returns_a_store_error() {
    let broken = Broken::default();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let i = r.at(t0(), &broken);
    let e = store_error(idle(&i, SecretRotationPolicyStatus::default(), false).await);
    assert_eq!(e.metric_label(), "corrupt");
}

#[tokio::test]
async fn generating_stages_a_new_value_or_creates_the_first_one() {
    let (_d, store) = store();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let now = t0();
    let i = r.at(now, &store);
    let mut status = in_phase(Phase::Generating, now);
    status.pending_version = None;
    let s = generating(&i, status).await.unwrap();
    assert_eq!(phase(&s.status), Phase::Propagating);
    assert_eq!(s.status.pending_version.as_deref(), Some("2"));
    assert_eq!(
        s.events,
        [RotationEvent::Staged {
            secret: "app/db".into(),
            version: "2".into()
        }]
    );
    assert_eq!(store.current_number("app/db").unwrap(), 1, "staged only");
    assert!(s.finished.is_none());

    // A store that has no such secret (and so refuses a PENDING write):
    // its first version is current.
    let (_d2, local) = self::store();
    let empty = Unborn(local);
    let i = r.at(now, &empty);
    let s = generating(&i, in_phase(Phase::Generating, now))
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(s.status.current_version.as_deref(), Some("2"));
    assert_eq!(s.events[0].reason(), "Created");
    assert_eq!(s.finished, Some((Outcome::Success, Duration::ZERO)));
    assert_eq!(
        s.status.next_rotation.as_deref(),
        Some("2026-11-24T11:00:00Z"),
        "an interval after the creation"
    );
}

#[tokio::test]
async fn generating_returns_a_store_error() {
    let broken = Broken::default();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let i = r.at(t0(), &broken);
    let e = store_error(generating(&i, in_phase(Phase::Generating, t0())).await);
    assert_eq!(e.metric_label(), "corrupt");
    assert_eq!(
        *broken.calls.lock().unwrap(),
        1,
        "no write after a failed read"
    );
}

#[tokio::test]
async fn propagating_promotes_once_every_consumer_acknowledged() {
    let (_d, store) = store();
    let r = Rig::new(OnTimeout::Rollback, &["pod-a", "pod-b"], &[]);
    let now = t0();
    let i = r.at(now, &store);
    let s = propagating(&i, in_phase(Phase::Propagating, now))
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Promoting);
    assert_eq!(
        s.events,
        [RotationEvent::Acknowledged {
            consumers: 2,
            version: "2".into()
        }]
    );
    assert!(s.status.consumers.iter().all(|c| {
        c.acknowledged_version.as_deref() == Some("2")
            && c.acknowledged_at.as_deref() == Some("2026-11-24T10:00:00Z")
    }));
    assert_eq!(r.calls(), &[Some("2".to_owned())]);
}

#[tokio::test]
async fn propagating_waits_until_the_ack_timeout_then_does_what_the_policy_says() {
    let (_d, store) = store();
    let since = t0();
    for (on_timeout, next, reason) in [
        (OnTimeout::Promote, Phase::Promoting, "AckTimeout"),
        (OnTimeout::Rollback, Phase::RollingBack, "RolledBack"),
    ] {
        let r = Rig::new(on_timeout, &["pod-a", "pod-stuck"], &["pod-stuck"]);
        // 29 s into a 30 s ackTimeout: wait.
        let i = r.at(since + secs(29), &store);
        let s = propagating(&i, in_phase(Phase::Propagating, since))
            .await
            .unwrap();
        assert_eq!(phase(&s.status), Phase::Propagating);
        assert_eq!(s.requeue, Duration::from_millis(500));
        assert!(s.events.is_empty() && cond(&s.status, "Degraded").is_none());
        // At 30 s: the timeout.
        let i = r.at(since + secs(30), &store);
        let s = propagating(&i, in_phase(Phase::Propagating, since))
            .await
            .unwrap();
        assert_eq!(phase(&s.status), next);
        assert_eq!(
            s.events,
            [RotationEvent::AckTimeout {
                on_timeout,
                laggards: vec!["pod-stuck".into()]
            }]
        );
        let degraded = cond(&s.status, "Degraded").unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reason)
        );
        assert!(degraded.message.contains("pod-stuck"));
    }
}

/// Each consumer's state is recorded: the pod whose sidecar has no
/// stream is NotConnected and holds the rotation back; one that answers
/// with another version is Waiting.
#[tokio::test]
async fn propagating_records_each_consumers_state() {
    let (_d, store) = store();
    let mut r = Rig::new(
        OnTimeout::Rollback,
        &["pod-a", "pod-stuck", "pod-absent"],
        &["pod-stuck"],
    );
    r.consumers.absent = vec!["pod-absent".into()];
    let i = r.at(t0(), &store);
    let s = propagating(&i, in_phase(Phase::Propagating, t0()))
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Propagating);
    let state = |name: &str| {
        s.status
            .consumers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.state)
    };
    assert_eq!(state("pod-a"), Some(ConsumerState::Acknowledged));
    assert_eq!(state("pod-stuck"), Some(ConsumerState::Waiting));
    assert_eq!(state("pod-absent"), Some(ConsumerState::NotConnected));
    // An acknowledgement stands when the pod later does not answer.
    r.consumers.absent = vec!["pod-a".into(), "pod-absent".into()];
    let i = r.at(t0() + secs(1), &store);
    let s = propagating(&i, s.status.clone()).await.unwrap();
    let a = s
        .status
        .consumers
        .iter()
        .find(|c| c.name == "pod-a")
        .unwrap();
    assert_eq!(a.state, ConsumerState::Acknowledged);
    assert_eq!(a.acknowledged_version.as_deref(), Some("2"));
}

#[tokio::test]
async fn propagating_without_a_pending_version_is_an_error() {
    let (_d, store) = store();
    let r = Rig::new(OnTimeout::Rollback, &["pod-a"], &[]);
    let i = r.at(t0(), &store);
    let mut status = in_phase(Phase::Propagating, t0());
    status.pending_version = None;
    let err = propagating(&i, status).await.unwrap_err();
    assert!(matches!(err, Error::NoPendingVersion(Phase::Propagating)));
    assert_eq!(err.to_string(), "Propagating without a pending version");
    assert!(r.calls().is_empty());
}

#[tokio::test]
async fn promoting_makes_the_pending_version_current() {
    let (_d, store) = store();
    store.put("app/db", b"next", WriteAs::Pending).unwrap();
    let r = Rig::new(OnTimeout::Rollback, &["pod-a"], &[]);
    let now = t0();
    let mut status = in_phase(Phase::Promoting, now);
    status.next_rotation = Some(rfc3339(now - secs(90)));
    let i = r.at(now, &store);
    let s = promoting(&i, status.clone()).await.unwrap();
    assert_eq!(phase(&s.status), Phase::Retiring);
    assert_eq!(store.current_number("app/db").unwrap(), 2);
    assert_eq!(
        (
            s.status.current_version.as_deref(),
            s.status.previous_version.as_deref(),
            s.status.pending_version.as_deref()
        ),
        (Some("2"), Some("1"), None)
    );
    assert_eq!(s.requeue, secs(600), "the grace period");
    assert_eq!(s.finished, Some((Outcome::Success, secs(90))));
    assert_eq!(s.events[0].message(), "version 2 of app/db is current");
    assert_eq!(r.calls(), &[None]);
    // After an ack timeout with onTimeout: Promote, the rotation is degraded.
    set_condition(
        &mut status,
        "Degraded",
        true,
        rotor_contract::api::PolicyReason::AckTimeout,
        "x",
        now,
    );
    let (_d2, store) = self::store();
    store.put("app/db", b"next", WriteAs::Pending).unwrap();
    let i = r.at(now, &store);
    let s = promoting(&i, status).await.unwrap();
    assert_eq!(s.finished.unwrap().0, Outcome::Degraded);
}

#[tokio::test]
async fn promoting_returns_a_store_error_before_telling_consumers() {
    let broken = Broken::default();
    let r = Rig::new(OnTimeout::Rollback, &["pod-a"], &[]);
    let i = r.at(t0(), &broken);
    store_error(promoting(&i, in_phase(Phase::Promoting, t0())).await);
    assert!(r.calls().is_empty());
}

#[tokio::test]
async fn retiring_waits_for_the_grace_period_then_retires_the_previous_version() {
    let (_d, store) = store();
    store.put("app/db", b"next", WriteAs::Current).unwrap();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let since = t0();
    let mut status = in_phase(Phase::Retiring, since);
    status.previous_version = Some("1".into());
    // 10 minutes' grace: 1 minute in, 9 to go, nothing retired.
    let i = r.at(since + secs(60), &store);
    let s = retiring(&i, status.clone()).await.unwrap();
    assert_eq!((phase(&s.status), s.requeue), (Phase::Retiring, secs(540)));
    assert!(s.events.is_empty());
    assert!(store.get("app/db", Selector::Version(1.into())).is_ok());
    // At the end of the grace period.
    let i = r.at(since + secs(600), &store);
    let s = retiring(&i, status.clone()).await.unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(
        s.events,
        [RotationEvent::Retired {
            secret: "app/db".into(),
            version: "1".into()
        }]
    );
    assert!(store.get("app/db", Selector::Version(1.into())).is_err());
    // Already retired (a repeated step): Idle, no event.
    let s = retiring(&i, status).await.unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    assert!(s.events.is_empty());
}

#[tokio::test]
async fn retiring_returns_a_store_error() {
    let broken = Broken::default();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let mut status = in_phase(Phase::Retiring, t0());
    status.previous_version = Some("1".into());
    let i = r.at(t0() + secs(600), &broken);
    store_error(retiring(&i, status).await);
}

#[tokio::test]
async fn rolling_back_retires_the_pending_version_and_retries_later() {
    let (_d, store) = store();
    store.put("app/db", b"next", WriteAs::Pending).unwrap();
    let r = Rig::new(OnTimeout::Rollback, &["pod-a"], &[]);
    let now = t0();
    let i = r.at(now, &store);
    let s = rolling_back(&i, in_phase(Phase::RollingBack, now))
        .await
        .unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(s.status.pending_version, None);
    assert!(store.get("app/db", Selector::Version(2.into())).is_err());
    assert_eq!(s.events[0].severity(), Severity::Warning);
    assert_eq!(s.finished, Some((Outcome::RolledBack, Duration::ZERO)));
    // Ten 30 s ackTimeouts = 300 s later.
    assert_eq!(
        s.status.next_rotation.as_deref(),
        Some("2026-11-24T10:05:00Z")
    );
    assert_eq!(r.calls(), &[None]);
}

#[tokio::test]
async fn rolling_back_returns_a_store_error() {
    let broken = Broken::default();
    let r = Rig::new(OnTimeout::Rollback, &[], &[]);
    let i = r.at(t0(), &broken);
    store_error(rolling_back(&i, in_phase(Phase::RollingBack, t0())).await);
}

#[test]
fn an_invalid_spec_is_a_condition_and_one_warning_not_a_retry() {
    let mut bad = spec(OnTimeout::Rollback);
    bad.strategy.staged.ack_timeout = "soon".to_owned();
    let problems = Policy::check(&bad, Mode::Cluster).unwrap_err();
    assert!(problems[0].contains("ackTimeout"), "{problems:?}");
    let current = in_phase(Phase::Propagating, t0());
    let step = blocked(&current, Blocked::InvalidSpec, problems.clone(), t0());
    // The phase is left as it is; Ready says why nothing happens.
    assert_eq!(phase(&step.status), Phase::Propagating);
    let ready = cond(&step.status, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert_eq!(ready.message, problems.join("; "));
    assert_eq!(
        step.events,
        vec![RotationEvent::Blocked {
            reason: Blocked::InvalidSpec,
            problems: problems.clone()
        }]
    );
    assert_eq!(step.events[0].severity(), Severity::Warning);
    assert!(step.requeue >= secs(3600));
    // The same problems again: no second event.
    let again = blocked(
        &step.status,
        Blocked::InvalidSpec,
        problems,
        t0() + secs(60),
    );
    assert!(again.events.is_empty());
    assert_eq!(again.status, step.status);
}

// ---- Rotation with a target (Setting, Testing, rollback), on a fake. ----

use std::collections::HashMap;

use super::super::target::{Credential as TargetCredential, DbSecret, TargetFailure};

/// A database in memory: role → password, a scripted number of failures
/// per step, and the admin password it accepts.
struct FakeDb {
    roles: Mutex<HashMap<String, String>>,
    admin_password: String,
    set_failures: Mutex<Vec<TargetFailure>>,
    test_failures: Mutex<Vec<TargetFailure>>,
}

impl FakeDb {
    fn new(roles: &[(&str, &str)]) -> Self {
        Self {
            roles: Mutex::new(
                roles
                    .iter()
                    .map(|(r, p)| (r.to_string(), p.to_string()))
                    .collect(),
            ),
            admin_password: "admin-pw".into(),
            set_failures: Mutex::default(),
            test_failures: Mutex::default(),
        }
    }

    fn password(&self, role: &str) -> Option<String> {
        self.roles.lock().unwrap().get(role).cloned()
    }
}

#[async_trait]
impl Target for FakeDb {
    async fn set(
        &self,
        admin: &TargetCredential,
        new: &TargetCredential,
    ) -> Result<(), TargetFailure> {
        if let Some(f) = self.set_failures.lock().unwrap().pop() {
            return Err(f);
        }
        if admin.password.expose_secret() != self.admin_password {
            return Err(TargetFailure::AdminLoginFailed);
        }
        let mut roles = self.roles.lock().unwrap();
        match roles.get_mut(&new.username) {
            Some(p) => {
                *p = new.password.expose_secret().to_owned();
                Ok(())
            }
            None => Err(TargetFailure::NoSuchRole),
        }
    }

    async fn test(&self, new: &TargetCredential) -> Result<(), TargetFailure> {
        if let Some(f) = self.test_failures.lock().unwrap().pop() {
            return Err(f);
        }
        match self.roles.lock().unwrap().get(&new.username) {
            Some(p) if p == new.password.expose_secret() => Ok(()),
            _ => Err(TargetFailure::TestLoginFailed),
        }
    }
}

fn pg_spec(strategy: rotor_contract::api::PostgresStrategy) -> Policy {
    let mut s = spec(OnTimeout::Rollback);
    s.target = Some(rotor_contract::api::Target {
        postgresql: Some(rotor_contract::api::PostgresTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "shop".into(),
            admin_secret_name: "app/db-admin".into(),
            strategy,
            tls: None,
        }),
        https: None,
    });
    Policy::parse(&s, Mode::Standalone).unwrap()
}

fn alternating() -> Policy {
    pg_spec(rotor_contract::api::PostgresStrategy {
        alternating_users: Some(rotor_contract::api::AlternatingUsers {
            roles: vec!["app_a".into(), "app_b".into()],
        }),
        single_user: None,
    })
}

fn single() -> Policy {
    pg_spec(rotor_contract::api::PostgresStrategy {
        alternating_users: None,
        single_user: Some(rotor_contract::api::SingleUser { role: "app".into() }),
    })
}

/// A store whose `app/db` is role `role` with password `password`, and an
/// admin secret with `admin`'s password.
fn db_store(role: &str, password: &str, admin: &str) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new(
        dir.path().join("s.rotor"),
        Arc::new(KeyFileKek::from_bytes(&[9; 32])),
    );
    let v = format!(
        r#"{{"username":"{role}","password":"{password}","host":"127.0.0.1","port":5432,"dbname":"shop"}}"#
    );
    s.put("app/db", v.as_bytes(), WriteAs::Current).unwrap();
    let a = format!(r#"{{"username":"admin","password":"{admin}"}}"#);
    s.put("app/db-admin", a.as_bytes(), WriteAs::Current)
        .unwrap();
    (dir, s)
}

async fn value(store: &LocalStore, selector: Selector) -> DbSecret {
    let f = Store::read(store, "app/db", &selector).await.unwrap();
    DbSecret::from_bytes(f.value.expose_secret()).unwrap()
}

/// One step with the fake database.
async fn db_step(
    policy: &Policy,
    status: &SecretRotationPolicyStatus,
    now: SystemTime,
    store: &LocalStore,
    db: &FakeDb,
) -> Step {
    let c = fake(&["pod-a"], &[]);
    let rng = Seeded::new(7);
    let i = Inputs {
        policy,
        now,
        store,
        consumers: &c,
        rng: &rng,
        target: Some(db),
        receiver: None,
    };
    step_with(&i, status, false).await.unwrap()
}

#[tokio::test]
async fn alternating_users_sets_and_tests_the_idle_role_before_consumers_see_it() {
    let (_d, store) = db_store("app_a", "old-a", "admin-pw");
    let db = FakeDb::new(&[("app_a", "old-a"), ("app_b", "old-b")]);
    let policy = alternating();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut seen = Vec::new();
    for expected in [
        Phase::Setting,
        Phase::Testing,
        Phase::Propagating,
        Phase::Promoting,
        Phase::Retiring,
    ] {
        let s = db_step(&policy, &status, t0(), &store, &db).await;
        seen.extend(s.events.iter().map(|e| e.reason()));
        status = s.status;
        assert_eq!(phase(&status), expected);
    }
    assert_eq!(
        seen,
        [
            "Staged",
            "TargetSet",
            "TargetTested",
            "Acknowledged",
            "Promoted"
        ]
    );
    let current = value(&store, Selector::Current).await;
    assert_eq!(current.username, "app_b", "the role not in use");
    assert_eq!(
        db.password("app_b").as_deref(),
        Some(current.password.as_str())
    );
    assert_eq!(
        db.password("app_a").as_deref(),
        Some("old-a"),
        "the previous role keeps working"
    );
    // The next rotation goes back to app_a.
    enter(&mut status, Phase::Generating, t0());
    let s = db_step(&policy, &status, t0(), &store, &db).await;
    assert_eq!(
        value(&store, Selector::Stage(Stage::Pending))
            .await
            .username,
        "app_a"
    );
    assert_eq!(phase(&s.status), Phase::Setting);
}

#[tokio::test]
async fn a_wrong_admin_credential_retries_with_backoff_then_rolls_back_with_nothing_changed() {
    let (_d, store) = db_store("app_a", "old-a", "not-the-admin-pw");
    let db = FakeDb::new(&[("app_a", "old-a"), ("app_b", "old-b")]);
    let policy = alternating();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    status = db_step(&policy, &status, t0(), &store, &db).await.status;
    let pending = status.pending_version.clone().unwrap();
    let mut now = t0();
    let mut waits = Vec::new();
    for attempt in 1..=TARGET_ATTEMPTS {
        let s = db_step(&policy, &status, now, &store, &db).await;
        assert_eq!(
            s.events,
            [RotationEvent::TargetFailed {
                phase: Phase::Setting,
                failure: TargetFailure::AdminLoginFailed,
                attempt,
                rolling_back: attempt == TARGET_ATTEMPTS,
            }]
        );
        status = s.status;
        if attempt < TARGET_ATTEMPTS {
            waits.push(s.requeue.as_secs());
            // Before the backoff is over, nothing is tried.
            let early = db_step(&policy, &status, now + s.requeue / 2, &store, &db).await;
            assert!(early.events.is_empty());
            assert_eq!(early.status.target_attempts, Some(attempt));
            now += s.requeue;
        }
    }
    assert_eq!(waits, [1, 2, 4, 8]);
    assert_eq!(phase(&status), Phase::RollingBack);
    assert_eq!(
        cond(&status, "Degraded").unwrap().reason,
        "AdminLoginFailed"
    );
    let s = db_step(&policy, &status, now, &store, &db).await;
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(s.finished.map(|f| f.0), Some(Outcome::RolledBack));
    assert!(
        s.events.iter().all(|e| e.reason() != "TargetRestored"),
        "never set: nothing to restore"
    );
    assert!(
        Store::read(&store, "app/db", &Selector::Version(VersionId(pending)))
            .await
            .is_err(),
        "the pending version is retired"
    );
    assert_eq!(value(&store, Selector::Current).await.username, "app_a");
    assert_eq!(db.password("app_a").as_deref(), Some("old-a"));
    assert_eq!(db.password("app_b").as_deref(), Some("old-b"));
}

#[tokio::test]
async fn a_role_that_does_not_exist_rolls_back_naming_the_reason() {
    let (_d, store) = db_store("app_a", "old-a", "admin-pw");
    let db = FakeDb::new(&[("app_a", "old-a")]);
    let policy = alternating();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut now = t0();
    for _ in 0..=TARGET_ATTEMPTS {
        let s = db_step(&policy, &status, now, &store, &db).await;
        now += s.requeue;
        status = s.status;
    }
    assert_eq!(phase(&status), Phase::RollingBack);
    assert_eq!(cond(&status, "Degraded").unwrap().reason, "NoSuchRole");
    let s = db_step(&policy, &status, now, &store, &db).await;
    assert_eq!(phase(&s.status), Phase::Idle);
    assert_eq!(db.password("app_a").as_deref(), Some("old-a"));
}

#[tokio::test]
async fn single_user_test_failure_puts_the_current_password_back() {
    let (_d, store) = db_store("app", "old", "admin-pw");
    let db = FakeDb::new(&[("app", "old")]);
    *db.test_failures.lock().unwrap() = vec![TargetFailure::TestLoginFailed; 5];
    let policy = single();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut now = t0();
    let mut reasons = Vec::new();
    while phase(&status) != Phase::Idle {
        let s = db_step(&policy, &status, now, &store, &db).await;
        reasons.extend(s.events.iter().map(|e| e.reason()));
        now += s.requeue;
        status = s.status;
    }
    assert_eq!(
        reasons,
        [
            "Staged",
            "TargetSet",
            "TestLoginFailed",
            "TestLoginFailed",
            "TestLoginFailed",
            "TestLoginFailed",
            "TestLoginFailed",
            "TargetRestored",
            "RolledBack"
        ]
    );
    assert_eq!(
        db.password("app").as_deref(),
        Some("old"),
        "CURRENT's password again"
    );
    assert_eq!(value(&store, Selector::Current).await.password, "old");
    assert_eq!(status.target_set_at, None);
}

#[tokio::test]
async fn single_user_reports_the_window_from_the_change_to_promotion() {
    let (_d, store) = db_store("app", "old", "admin-pw");
    let db = FakeDb::new(&[("app", "old")]);
    let policy = single();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut events = Vec::new();
    let mut now = t0();
    while phase(&status) != Phase::Retiring {
        let s = db_step(&policy, &status, now, &store, &db).await;
        events.extend(s.events);
        status = s.status;
        now += secs(2);
    }
    // Set at t0+2s, promoted at t0+8s (Testing, Propagating, Promoting).
    assert!(events.contains(&RotationEvent::SingleUserWindow {
        role: "app".into(),
        millis: 6000
    }));
    let current = value(&store, Selector::Current).await;
    assert_eq!(
        db.password("app").as_deref(),
        Some(current.password.as_str())
    );
}

#[tokio::test]
async fn no_password_reaches_an_event_or_the_status() {
    let (_d, store) = db_store("app", "canary-old-9f2c", "admin-canary-77");
    let db = FakeDb::new(&[("app", "canary-old-9f2c")]);
    let mut db = db;
    db.admin_password = "admin-canary-77".into();
    *db.test_failures.lock().unwrap() = vec![TargetFailure::TestLoginFailed; 5];
    let policy = single();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut now = t0();
    let mut text = String::new();
    let mut new_passwords = Vec::new();
    while phase(&status) != Phase::Idle {
        let s = db_step(&policy, &status, now, &store, &db).await;
        if let Some(p) = db.password("app") {
            new_passwords.push(p);
        }
        for e in &s.events {
            text.push_str(&format!("{e:?} {} {}\n", e.reason(), e.message()));
        }
        text.push_str(&serde_json::to_string(&s.status).unwrap());
        text.push_str(&format!("{:?}", s.status));
        now += s.requeue;
        status = s.status;
    }
    for secret in new_passwords
        .iter()
        .map(String::as_str)
        .chain(["canary-old-9f2c", "admin-canary-77"])
    {
        assert!(!text.contains(secret), "a password leaked");
    }
}

/// Steps from Generating to Retiring with the fake database.
async fn to_retiring(
    policy: &Policy,
    store: &LocalStore,
    db: &FakeDb,
) -> SecretRotationPolicyStatus {
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    while phase(&status) != Phase::Retiring {
        status = db_step(policy, &status, t0(), store, db).await.status;
    }
    status
}

#[tokio::test]
async fn alternating_users_gives_the_retired_role_a_password_nobody_holds() {
    let (_d, store) = db_store("app_a", "old-a", "admin-pw");
    let db = FakeDb::new(&[("app_a", "old-a"), ("app_b", "old-b")]);
    let policy = alternating();
    let status = to_retiring(&policy, &store, &db).await;
    let previous = value(
        &store,
        Selector::Version(VersionId(status.previous_version.clone().unwrap())),
    )
    .await;
    // Another seed than the rotation's: each db_step starts from seed 7.
    let (c, rng) = (fake(&["pod-a"], &[]), Seeded::new(8));
    let i = Inputs {
        policy: &policy,
        now: t0() + secs(86_400),
        store: &store,
        consumers: &c,
        rng: &rng,
        target: Some(&db),
        receiver: None,
    };
    let s = step_with(&i, &status, false).await.unwrap();
    assert_eq!(phase(&s.status), Phase::Idle);
    let reasons: Vec<_> = s.events.iter().map(|e| e.reason()).collect();
    assert_eq!(reasons, ["TargetFinished", "Retired"]);
    let now_a = db.password("app_a").unwrap();
    assert_ne!(now_a, "old-a", "the retired role's password changed");
    assert_ne!(now_a, previous.password);
    let current = value(&store, Selector::Current).await;
    assert_ne!(now_a, current.password, "nobody is given it");
    assert_eq!(
        db.password("app_b").as_deref(),
        Some(current.password.as_str())
    );
    for e in &s.events {
        assert!(!e.message().contains(&now_a));
    }
}

#[tokio::test]
async fn a_failed_finish_retries_then_retires_degraded_with_the_role_unchanged() {
    let (_d, store) = db_store("app_a", "old-a", "admin-pw");
    let db = FakeDb::new(&[("app_a", "old-a"), ("app_b", "old-b")]);
    let policy = alternating();
    let mut status = to_retiring(&policy, &store, &db).await;
    *db.set_failures.lock().unwrap() = vec![TargetFailure::Unreachable; TARGET_ATTEMPTS as usize];
    let later = t0() + secs(86_400);
    for attempt in 1..TARGET_ATTEMPTS {
        let s = db_step(&policy, &status, later, &store, &db).await;
        assert_eq!(phase(&s.status), Phase::Retiring, "attempt {attempt}");
        assert_eq!(s.status.target_attempts, Some(attempt));
        assert_eq!(s.requeue, crate::rotation::retry::wait_after(attempt));
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].reason(), "TargetUnreachable");
        status = s.status;
    }
    let s = db_step(&policy, &status, later, &store, &db).await;
    assert_eq!(phase(&s.status), Phase::Idle);
    assert!(s.status.target_attempts.is_none());
    let degraded = s
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "TargetUnreachable")
    );
    assert!(s.events.iter().any(|e| e.message().contains("giving up")));
    assert!(s.events.iter().any(|e| e.reason() == "Retired"));
    assert_eq!(db.password("app_a").as_deref(), Some("old-a"));
}

// ---- The HTTPS target's steps, on a fake receiver. ----

use super::super::target::https::{Receiver, RotationCall, RotationStep};

/// A receiver that records each call (step, version, value) and fails
/// the steps it is told to, `failures` times each.
#[derive(Default)]
struct FakeReceiver {
    calls: Mutex<Vec<(RotationStep, String, Option<String>)>>,
    failing: Mutex<Vec<(RotationStep, TargetFailure)>>,
}

#[async_trait]
impl Receiver for FakeReceiver {
    fn url(&self) -> &str {
        "https://rotate.example/hook"
    }

    async fn call(&self, call: &RotationCall) -> Result<(), TargetFailure> {
        self.calls.lock().unwrap().push((
            call.step,
            call.client_request_token.clone(),
            call.secret_string.clone(),
        ));
        let mut failing = self.failing.lock().unwrap();
        match failing.iter().position(|(s, _)| *s == call.step) {
            Some(i) => Err(failing.remove(i).1),
            None => Ok(()),
        }
    }
}

fn https_policy() -> Policy {
    let mut s = spec(OnTimeout::Rollback);
    s.target = Some(rotor_contract::api::Target {
        postgresql: None,
        https: Some(rotor_contract::api::HttpsTarget {
            url: "https://rotate.example/hook".into(),
            ca_bundle: None,
            timeout: None,
        }),
    });
    Policy::parse(&s, Mode::Standalone).unwrap()
}

async fn https_step(
    policy: &Policy,
    status: &SecretRotationPolicyStatus,
    now: SystemTime,
    store: &LocalStore,
    receiver: &FakeReceiver,
) -> Step {
    let (c, rng) = (fake(&["pod-a"], &[]), Seeded::new(7));
    let i = Inputs {
        policy,
        now,
        store,
        consumers: &c,
        rng: &rng,
        target: None,
        receiver: Some(receiver),
    };
    step_with(&i, status, false).await.unwrap()
}

#[tokio::test]
async fn an_https_target_gets_set_test_and_finish_in_aws_order() {
    let (_d, store) = store();
    let receiver = FakeReceiver::default();
    let policy = https_policy();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut reasons = Vec::new();
    for now in [t0(), t0(), t0(), t0(), t0(), t0() + secs(86_400)] {
        let s = https_step(&policy, &status, now, &store, &receiver).await;
        reasons.extend(s.events.iter().map(|e| e.reason()));
        status = s.status;
    }
    assert_eq!(phase(&status), Phase::Idle);
    assert_eq!(
        reasons,
        [
            "Staged",
            "TargetSet",
            "TargetTested",
            "Acknowledged",
            "Promoted",
            "TargetFinished",
            "Retired"
        ]
    );
    let current = Store::read(&store, "app/db", &Selector::Current)
        .await
        .unwrap();
    let value = String::from_utf8(current.value.expose_secret().to_vec()).unwrap();
    let calls = receiver.calls.lock().unwrap();
    let steps: Vec<_> = calls.iter().map(|c| c.0).collect();
    assert_eq!(
        steps,
        [RotationStep::Set, RotationStep::Test, RotationStep::Finish]
    );
    for (step, version, v) in calls.iter() {
        assert_eq!(version, &current.version.0);
        let expected = (*step != RotationStep::Finish).then(|| value.clone());
        assert_eq!(v, &expected, "{step:?}");
    }
}

#[tokio::test]
async fn an_https_test_failure_rolls_back_and_sets_current_again() {
    let (_d, store) = store();
    let receiver = FakeReceiver::default();
    *receiver.failing.lock().unwrap() =
        vec![(RotationStep::Test, TargetFailure::Rejected(500)); TARGET_ATTEMPTS as usize];
    let policy = https_policy();
    let mut status = in_phase(Phase::Generating, t0());
    status.pending_version = None;
    let mut now = t0();
    let mut reasons = Vec::new();
    while reasons.last() != Some(&"RolledBack") {
        let s = https_step(&policy, &status, now, &store, &receiver).await;
        reasons.extend(s.events.iter().map(|e| e.reason()));
        now += s.requeue;
        status = s.status;
        assert!(reasons.len() < 20, "{reasons:?}");
    }
    assert_eq!(
        reasons.iter().filter(|r| **r == "TargetRejected").count(),
        5
    );
    assert!(reasons.contains(&"TargetRestored"));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains("HTTP 500"),
        "{}",
        degraded.message
    );
    let current = Store::read(&store, "app/db", &Selector::Current)
        .await
        .unwrap();
    assert_eq!(current.value.expose_secret(), b"initial");
    let calls = receiver.calls.lock().unwrap();
    let last = calls.last().unwrap();
    assert_eq!(
        (last.0, last.1.as_str(), last.2.as_deref()),
        (
            RotationStep::Set,
            current.version.0.as_str(),
            Some("initial")
        ),
        "the receiver is set back to CURRENT"
    );
}
