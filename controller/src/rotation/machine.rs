//! The rotation state machine: its phases ([`Phase`]), the events it emits
//! ([`RotationEvent`]) and one function per phase. Its whole state is the
//! policy's status, and each step ([`step_with`]) moves at most one phase and returns
//! the status to persist before the next step, so a restart after any step
//! resumes where it left off, and no step is done twice:
//!
//! ```text
//! Idle ──due──► Generating ──pending written──► Propagating ──all acked──► Promoting ──► Retiring ──grace──► Idle
//!                    │ with a target                 ▲
//!                    └──► Setting ──► Testing ───────┘   (each retried with backoff, then RollingBack)
//!                                                   │ ack timeout
//!                                                   ├── onTimeout: Promote ──► Promoting (Degraded)
//!                                                   └── onTimeout: Rollback ─► RollingBack ──► Idle (Degraded)
//! ```
//!
//! Generating first looks for a PENDING version in the store, so a crash
//! between writing the value and saving the status adopts that value rather
//! than generating another: a generated value is never lost.
//!
//! With a [`Target`], Generating writes the pending value first (AWS's
//! createSecret), Setting changes the target (setSecret) and Testing logs
//! in with the new value (testSecret), each up to [`TARGET_ATTEMPTS`]
//! times with the [`super::retry`] schedule between attempts; consumers
//! see the value only in Propagating. RollingBack then puts the target
//! back: singleUser gets CURRENT's password again, alternatingUsers' idle
//! role gets a random password nobody holds, an HTTPS receiver gets
//! `setSecret` with CURRENT. Retiring, after the grace period, runs the
//! finish step (finishSecret): alternatingUsers' role no longer in use gets
//! a random password nobody holds; a receiver gets `finishSecret`. A failed
//! finish is retried, then leaves `Degraded` without undoing the promotion.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rotor_contract::api::{
    ConsumerState, ConsumerStatus, OnTimeout, PolicyCondition, PolicyReason,
    SecretRotationPolicyStatus,
};
use rotor_store::{Selector, Stage, Store, VersionId, WriteAs};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::generate::generate;
use super::target::https::{Receiver, RotationCall, RotationStep};
use super::target::{Credential, DbSecret, Strategy, Target, TargetFailure, admin_credential};
use super::validate::Policy;
use crate::{Error, Result};
use rotor_store::random::Random;

/// Where a rotation is: `status.phase`, typed in the API
/// (`rotor_contract::api::Phase`); a missing phase is [`Phase::Idle`]. A phase
/// string no variant has is refused when the status is read (and by the
/// CRD's schema when it is written).
pub use rotor_contract::api::Phase;

/// Whether an event is routine or needs a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// What a step did that is worth a Kubernetes Event or a log line. None
/// holds a value, only names and version ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationEvent {
    Started {
        secret: String,
    },
    /// The secret did not exist: its first version was written as current.
    Created {
        secret: String,
        version: String,
    },
    Staged {
        secret: String,
        version: String,
    },
    Acknowledged {
        consumers: usize,
        version: String,
    },
    /// Consumers did not acknowledge in time; `on_timeout` says what follows.
    AckTimeout {
        on_timeout: OnTimeout,
        laggards: Vec<String>,
    },
    Promoted {
        secret: String,
        version: String,
    },
    Retired {
        secret: String,
        version: String,
    },
    RolledBack {
        secret: String,
        version: String,
    },
    /// The target took the pending value.
    TargetSet {
        role: String,
    },
    /// A login with the pending value worked.
    TargetTested {
        role: String,
    },
    /// A Setting or Testing attempt failed; after [`TARGET_ATTEMPTS`] the
    /// rotation rolls back.
    TargetFailed {
        phase: Phase,
        failure: TargetFailure,
        attempt: u32,
        rolling_back: bool,
    },
    /// RollingBack put the target back as the store has it.
    TargetRestored {
        role: String,
    },
    /// Retiring gave the role no longer in use a password nobody holds.
    TargetFinished {
        role: String,
    },
    /// singleUser: from the password change to the last acknowledgement,
    /// consumers held a password the database refused.
    SingleUserWindow {
        role: String,
        millis: u64,
    },
    /// The policy cannot rotate (its spec, or its store as it is now);
    /// nothing is done until that changes. Every problem is listed.
    Blocked {
        reason: Blocked,
        problems: Vec<String>,
    },
}

/// Why a policy does not rotate: the reason of its `Ready=False` condition
/// and of the Warning Event that announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The spec has problems the CRD's CEL rules did not catch.
    InvalidSpec,
    /// No RotorStore of that name in the namespace, and no ClusterRotorStore.
    StoreNotFound,
    /// A store rotation cannot use: a kind the controller cannot reach in a
    /// cluster (`kubernetes`, `local`), or auth it cannot log in with.
    StoreUnsupported,
    /// A ClusterRotorStore that does not allow the policy's namespace or
    /// secret path.
    NotAllowed,
    /// The store refused the login or the secret's path (Vault 403, AWS
    /// AccessDenied): the store's own policy does not allow this rotation.
    StoreDenied,
    /// The policy's namespace has no rotator ServiceAccount
    /// (`identity`), so rotation has no identity to act with.
    RotatorMissing,
}

impl Blocked {
    pub const ALL: [Blocked; 6] = [
        Blocked::InvalidSpec,
        Blocked::StoreNotFound,
        Blocked::StoreUnsupported,
        Blocked::NotAllowed,
        Blocked::StoreDenied,
        Blocked::RotatorMissing,
    ];

    /// The `Ready` condition's reason.
    pub fn reason(self) -> PolicyReason {
        match self {
            Blocked::InvalidSpec => PolicyReason::InvalidSpec,
            Blocked::StoreNotFound => PolicyReason::StoreNotFound,
            Blocked::StoreUnsupported => PolicyReason::StoreUnsupported,
            Blocked::NotAllowed => PolicyReason::NotAllowed,
            Blocked::StoreDenied => PolicyReason::StoreDenied,
            Blocked::RotatorMissing => PolicyReason::RotatorMissing,
        }
    }

    /// The condition's and the Event's reason, as a string.
    pub fn as_str(self) -> &'static str {
        self.reason().as_str()
    }

    /// The reason a `Ready` condition carries, if it is one of these.
    fn of(condition: &PolicyCondition) -> Option<Self> {
        Blocked::ALL
            .into_iter()
            .find(|b| condition.status == "False" && b.reason() == condition.reason)
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RotationEvent {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RotationEvent::Started { .. } => "RotationStarted",
            RotationEvent::Created { .. } => "Created",
            RotationEvent::Staged { .. } => "Staged",
            RotationEvent::Acknowledged { .. } => "Acknowledged",
            RotationEvent::AckTimeout { .. } => "AckTimeout",
            RotationEvent::Promoted { .. } => "Promoted",
            RotationEvent::Retired { .. } => "Retired",
            RotationEvent::RolledBack { .. } => "RolledBack",
            RotationEvent::TargetSet { .. } => "TargetSet",
            RotationEvent::TargetTested { .. } => "TargetTested",
            RotationEvent::TargetFailed { failure, .. } => failure.reason(),
            RotationEvent::TargetRestored { .. } => "TargetRestored",
            RotationEvent::TargetFinished { .. } => "TargetFinished",
            RotationEvent::SingleUserWindow { .. } => "SingleUserWindow",
            RotationEvent::Blocked { reason, .. } => reason.as_str(),
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            RotationEvent::AckTimeout { .. }
            | RotationEvent::RolledBack { .. }
            | RotationEvent::TargetFailed { .. }
            | RotationEvent::Blocked { .. } => Severity::Warning,
            _ => Severity::Normal,
        }
    }

    /// The Event note.
    pub fn message(&self) -> String {
        match self {
            RotationEvent::Started { secret } => format!("rotating {secret}"),
            RotationEvent::Created { secret, version } => {
                format!("created {secret} version {version}")
            }
            RotationEvent::Staged { secret, version } => {
                format!("version {version} of {secret} staged as pending")
            }
            RotationEvent::Acknowledged { consumers, version } => {
                format!("all {consumers} consumers serve version {version}")
            }
            RotationEvent::AckTimeout {
                on_timeout,
                laggards,
            } => format!(
                "{}; no acknowledgement from {}",
                match on_timeout {
                    OnTimeout::Promote => "promoting anyway",
                    OnTimeout::Rollback => "rolling back",
                },
                laggards.join(", ")
            ),
            RotationEvent::Promoted { secret, version } => {
                format!("version {version} of {secret} is current")
            }
            RotationEvent::Retired { secret, version } => {
                format!("version {version} of {secret} retired")
            }
            RotationEvent::RolledBack { secret, version } => {
                format!("pending version {version} of {secret} retired")
            }
            RotationEvent::TargetSet { role } => format!("password of role {role} set"),
            RotationEvent::TargetTested { role } => format!("login as role {role} works"),
            RotationEvent::TargetFailed {
                phase,
                failure,
                attempt,
                rolling_back,
            } => format!(
                "{phase} failed ({failure}), attempt {attempt} of {TARGET_ATTEMPTS}; {}",
                if *rolling_back {
                    "rolling back"
                } else if *attempt >= TARGET_ATTEMPTS {
                    "giving up: the previous credential works until the next rotation"
                } else {
                    "retrying"
                }
            ),
            RotationEvent::TargetRestored { role } => {
                format!("role {role} put back as the store has it")
            }
            RotationEvent::TargetFinished { role } => {
                format!("role {role} no longer in use: given a password nobody holds")
            }
            RotationEvent::SingleUserWindow { role, millis } => format!(
                "role {role}: {millis} ms from the password change to the last acknowledgement"
            ),
            RotationEvent::Blocked { problems, .. } => {
                format!("not rotating until fixed: {}", problems.join("; "))
            }
        }
    }
}

/// How a rotation ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Promoted without every acknowledgement.
    Degraded,
    RolledBack,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Degraded => "degraded",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// One consumer's answer to a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub consumer: String,
    pub version: Option<String>,
    pub error: Option<String>,
    /// Why no answer came, when none did.
    pub unanswered: Option<Unanswered>,
}

/// Why a consumer gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The pod's sidecar has no stream to the controller.
    NotConnected,
    /// The pod's stream does not serve the secret.
    NotServed,
    /// No acknowledgement within the deadline, or the stream ended first.
    Timeout,
}

impl Unanswered {
    pub fn as_str(self) -> &'static str {
        match self {
            Unanswered::NotConnected => {
                "not connected: the pod's sidecar has no stream to the controller"
            }
            Unanswered::NotServed => "the pod's stream does not serve this secret",
            Unanswered::Timeout => "no acknowledgement in time",
        }
    }
}

impl Ack {
    /// What `consumer` answered.
    pub fn answered(consumer: String, version: Option<String>, error: Option<String>) -> Self {
        Self {
            consumer,
            version,
            error,
            unanswered: None,
        }
    }

    /// No answer from `consumer`, for `why`.
    pub fn unanswered(consumer: String, why: Unanswered) -> Self {
        Self {
            consumer,
            version: None,
            error: Some(why.as_str().to_owned()),
            unanswered: Some(why),
        }
    }

    /// The consumer's state in a rotation to `pending`.
    pub fn state(&self, pending: &str) -> ConsumerState {
        match self.unanswered {
            _ if self.version.as_deref() == Some(pending) => ConsumerState::Acknowledged,
            Some(Unanswered::NotConnected) => ConsumerState::NotConnected,
            Some(Unanswered::Timeout) => ConsumerState::Timeout,
            Some(Unanswered::NotServed) => ConsumerState::Failed,
            None if self.error.is_some() => ConsumerState::Failed,
            None => ConsumerState::Waiting,
        }
    }
}

/// The consumers of a secret: sidecars listed in the policy (standalone) or
/// found from pod annotations (in a cluster).
#[async_trait]
pub trait Consumers: Send + Sync {
    /// Asks every consumer to serve `version` (a pending version), or
    /// CURRENT when `None`, and returns what each now serves.
    async fn refresh(&self, secret: &str, version: Option<&str>) -> Vec<Ack>;
}

/// What one step did.
#[derive(Debug)]
pub struct Step {
    pub status: SecretRotationPolicyStatus,
    /// When to step again.
    pub requeue: Duration,
    pub events: Vec<RotationEvent>,
    /// A rotation that ended in this step, and how long it took.
    pub finished: Option<(Outcome, Duration)>,
}

impl Step {
    fn new(status: SecretRotationPolicyStatus, requeue: Duration) -> Self {
        Self {
            status,
            requeue,
            events: Vec::new(),
            finished: None,
        }
    }

    fn event(mut self, event: RotationEvent) -> Self {
        self.events.push(event);
        self
    }
}

/// What a phase works with besides the status.
pub struct Inputs<'a> {
    pub policy: &'a Policy,
    pub now: SystemTime,
    pub store: &'a dyn Store,
    pub consumers: &'a dyn Consumers,
    /// For generated values and schedule jitter.
    pub rng: &'a dyn Random,
    /// The database to change, when the policy has a postgresql target.
    pub target: Option<&'a dyn Target>,
    /// The receiver to call, when the policy has an https target.
    pub receiver: Option<&'a dyn Receiver>,
}

impl Inputs<'_> {
    fn secret(&self) -> &str {
        &self.policy.secret_name
    }
}

pub use rotor_contract::api::rfc3339;

fn parse_time(s: &Option<String>) -> Option<SystemTime> {
    s.as_ref().and_then(|s| humantime::parse_rfc3339(s).ok())
}

fn set_condition(
    status: &mut SecretRotationPolicyStatus,
    type_: &str,
    on: bool,
    reason: PolicyReason,
    message: &str,
    now: SystemTime,
) {
    PolicyCondition {
        type_: type_.to_owned(),
        status: if on { "True" } else { "False" }.to_owned(),
        reason,
        message: message.to_owned(),
        last_transition_time: rfc3339(now),
        observed_generation: None,
    }
    .set_in(&mut status.conditions);
}

/// The step for a policy that cannot rotate: a spec
/// [`crate::rotation::validate::Policy::check`] refused, a store that is
/// missing, unusable or does not allow it. The phase stays where it is,
/// `Ready` is False with `reason` and every problem (each naming what is
/// wrong), and one Warning event when the reason is new (not when only the
/// message changes, not on a retry); the caller waits for the spec, the
/// store or the namespace to change.
pub fn blocked(
    current: &SecretRotationPolicyStatus,
    reason: Blocked,
    problems: Vec<String>,
    now: SystemTime,
) -> Step {
    let was = ready_blocked(current);
    let mut status = current.clone();
    set_condition(
        &mut status,
        "Ready",
        false,
        reason.reason(),
        &problems.join("; "),
        now,
    );
    let requeue = match reason {
        Blocked::InvalidSpec => Duration::from_secs(3600),
        // A store's own policy can change without any object changing, and
        // a ServiceAccount's creation is not watched.
        Blocked::StoreDenied | Blocked::RotatorMissing => Duration::from_secs(60),
        // Store and namespace changes re-check at once; this is the
        // safety net.
        Blocked::StoreNotFound | Blocked::StoreUnsupported | Blocked::NotAllowed => {
            Duration::from_secs(600)
        }
    };
    let step = Step::new(status, requeue);
    if was == Some(reason) {
        step
    } else {
        step.event(RotationEvent::Blocked { reason, problems })
    }
}

/// The [`Blocked`] reason of `status`'s `Ready` condition, if any.
pub fn ready_blocked(status: &SecretRotationPolicyStatus) -> Option<Blocked> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .and_then(Blocked::of)
}

/// Before a step of a policy that can rotate again: a `Ready` condition
/// still saying why it could not becomes True (the phases that follow
/// set their own reasons).
pub fn unblocked(status: &mut SecretRotationPolicyStatus, now: SystemTime) {
    if ready_blocked(status).is_some() {
        set_condition(
            status,
            "Ready",
            true,
            PolicyReason::Resumed,
            "the spec and the store allow rotation again",
            now,
        );
    }
}

fn enter(status: &mut SecretRotationPolicyStatus, phase: Phase, now: SystemTime) {
    status.phase = Some(phase);
    status.phase_since = Some(rfc3339(now));
    set_condition(
        status,
        "Rotating",
        phase != Phase::Idle,
        phase.into(),
        "",
        now,
    );
}

/// When the current phase began (`now` if the status does not say).
fn since(status: &SecretRotationPolicyStatus, now: SystemTime) -> SystemTime {
    parse_time(&status.phase_since).unwrap_or(now)
}

fn pending(status: &SecretRotationPolicyStatus, phase: Phase) -> Result<String> {
    status
        .pending_version
        .clone()
        .ok_or(Error::NoPendingVersion(phase))
}

/// Advances the rotation of one policy by at most one phase, drawing
/// generated values and schedule jitter from `i.rng`; the driver
/// ([`super::driver::Rotation::step`]) gives every input.
pub async fn step_with(
    i: &Inputs<'_>,
    current: &SecretRotationPolicyStatus,
    rotate_now: bool,
) -> Result<Step> {
    let status = current.clone();
    match Phase::of(current) {
        Phase::Idle => idle(i, status, rotate_now).await,
        Phase::Generating => generating(i, status).await,
        Phase::Setting => setting(i, status).await,
        Phase::Testing => testing(i, status).await,
        Phase::Propagating => propagating(i, status).await,
        Phase::Promoting => promoting(i, status).await,
        Phase::Retiring => retiring(i, status).await,
        Phase::RollingBack => rolling_back(i, status).await,
    }
}

/// Idle: learns the current version, schedules the next rotation, and
/// starts one when it is due (or asked for), unless the policy is paused.
async fn idle(
    i: &Inputs<'_>,
    mut status: SecretRotationPolicyStatus,
    rotate_now: bool,
) -> Result<Step> {
    let now = i.now;
    if status.current_version.is_none() {
        match i.store.current_version(i.secret()).await {
            Ok(v) => status.current_version = Some(v.0),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::Store(e)),
        }
    }
    let next = match parse_time(&status.next_rotation) {
        Some(t) => t,
        None => {
            let last = parse_time(&status.last_rotation);
            let t = i.policy.schedule.next(last, now, i.rng)?;
            status.next_rotation = Some(rfc3339(t));
            t
        }
    };
    if i.policy.paused && !rotate_now {
        set_condition(
            &mut status,
            "Ready",
            true,
            PolicyReason::Paused,
            "rotation is paused",
            now,
        );
        Ok(Step::new(status, Duration::from_secs(3600)))
    } else if rotate_now || next <= now {
        enter(&mut status, Phase::Generating, now);
        Ok(
            Step::new(status, Duration::ZERO).event(RotationEvent::Started {
                secret: i.secret().to_owned(),
            }),
        )
    } else {
        set_condition(
            &mut status,
            "Ready",
            true,
            PolicyReason::Scheduled,
            &format!("next rotation at {}", rfc3339(next)),
            now,
        );
        Ok(Step::new(
            status,
            next.duration_since(now).unwrap_or_default(),
        ))
    }
}

/// Generating: adopts a PENDING version written before a crash, or writes
/// a new value as PENDING (as CURRENT when the secret does not exist yet).
async fn generating(i: &Inputs<'_>, mut status: SecretRotationPolicyStatus) -> Result<Step> {
    let (now, secret) = (i.now, i.secret());
    let adopted = match i.store.read(secret, &Selector::Stage(Stage::Pending)).await {
        Ok(f) if Some(&f.version.0) != status.current_version.as_ref() => Some(f.version),
        Ok(_) => None,
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(Error::Store(e)),
    };
    let version = match adopted {
        Some(v) => v,
        None => {
            let value = new_value(i).await?;
            match i.store.write(secret, &value, WriteAs::Pending).await {
                Ok(v) => v,
                Err(e) if e.is_not_found() => {
                    // The secret does not exist yet: its first version is current.
                    let v = i.store.write(secret, &value, WriteAs::Current).await?;
                    status.current_version = Some(v.0.clone());
                    status.last_rotation = Some(rfc3339(now));
                    status.next_rotation =
                        Some(rfc3339(i.policy.schedule.next(Some(now), now, i.rng)?));
                    enter(&mut status, Phase::Idle, now);
                    let mut step =
                        Step::new(status, Duration::ZERO).event(RotationEvent::Created {
                            secret: secret.to_owned(),
                            version: v.0,
                        });
                    step.finished = Some((Outcome::Success, Duration::ZERO));
                    return Ok(step);
                }
                Err(e) => return Err(Error::Store(e)),
            }
        }
    };
    status.pending_version = Some(version.0.clone());
    status.consumers.clear();
    status.target_attempts = None;
    status.target_set_at = None;
    let next = if i.policy.target.is_some() {
        Phase::Setting
    } else {
        Phase::Propagating
    };
    enter(&mut status, next, now);
    Ok(
        Step::new(status, Duration::ZERO).event(RotationEvent::Staged {
            secret: secret.to_owned(),
            version: version.0,
        }),
    )
}

/// How many times Setting and Testing are tried before rolling back.
pub const TARGET_ATTEMPTS: u32 = 5;

/// A new value: the generator's, or with a target the JSON object of the
/// role the strategy picks, with a generated password.
async fn new_value(i: &Inputs<'_>) -> Result<Zeroizing<Vec<u8>>> {
    let password = generate(&i.policy.generator, i.rng)?;
    let Some(t) = i.policy.postgres() else {
        return Ok(password);
    };
    let secret = i.secret();
    let current = match i.store.read(secret, &Selector::Current).await {
        Ok(f) => DbSecret::from_bytes(f.value.expose_secret())?,
        Err(e) if e.is_not_found() => {
            return Err(Error::TargetValue(format!(
                "{secret} does not exist: write its first value (the JSON object of a role that logs in) before rotating it"
            )));
        }
        Err(e) => return Err(Error::Store(e)),
    };
    let password = String::from_utf8(password.to_vec()).map_err(|_| {
        Error::TargetValue("the generator made a password that is not UTF-8".to_owned())
    })?;
    DbSecret {
        username: t.strategy.next_role(Some(&current.username)).to_owned(),
        password,
        host: t.host.clone(),
        port: t.port,
        dbname: t.dbname.clone(),
    }
    .to_bytes()
}

/// The pending value, parsed.
async fn pending_value(
    i: &Inputs<'_>,
    status: &SecretRotationPolicyStatus,
    phase: Phase,
) -> Result<DbSecret> {
    let version = VersionId(pending(status, phase)?);
    let f = i
        .store
        .read(i.secret(), &Selector::Version(version))
        .await?;
    DbSecret::from_bytes(f.value.expose_secret())
}

/// The admin credential from the store, or why it cannot be used.
async fn admin(i: &Inputs<'_>) -> Result<Result<Credential, TargetFailure>> {
    let Some(t) = i.policy.postgres() else {
        return Ok(Err(TargetFailure::BadAdminSecret));
    };
    match i.store.read(&t.admin_secret_name, &Selector::Current).await {
        Ok(f) => Ok(admin_credential(f.value.expose_secret())),
        Err(e) if e.is_not_found() => Ok(Err(TargetFailure::BadAdminSecret)),
        Err(e) => Err(Error::Store(e)),
    }
}

/// Waits out the backoff after a failed target attempt: `Some` step while
/// the next attempt is not due.
fn backing_off(i: &Inputs<'_>, status: &SecretRotationPolicyStatus) -> Option<Duration> {
    let attempts = status.target_attempts?;
    let due = since(status, i.now) + super::retry::wait_after(attempts);
    due.duration_since(i.now).ok().filter(|d| !d.is_zero())
}

/// A failed Setting or Testing attempt: try again after the backoff, or
/// after [`TARGET_ATTEMPTS`] roll back with `Degraded` naming the reason.
fn target_failed(
    i: &Inputs<'_>,
    mut status: SecretRotationPolicyStatus,
    phase: Phase,
    failure: TargetFailure,
) -> Step {
    let now = i.now;
    let attempt = status.target_attempts.unwrap_or(0) + 1;
    let rolling_back = attempt >= TARGET_ATTEMPTS;
    let step = if rolling_back {
        status.target_attempts = None;
        set_condition(
            &mut status,
            "Degraded",
            true,
            failure.condition(),
            &format!("{phase} failed {attempt} times ({failure}); rolled back"),
            now,
        );
        enter(&mut status, Phase::RollingBack, now);
        Step::new(status, Duration::ZERO)
    } else {
        status.target_attempts = Some(attempt);
        enter(&mut status, phase, now);
        Step::new(status, super::retry::wait_after(attempt))
    };
    step.event(RotationEvent::TargetFailed {
        phase,
        failure,
        attempt,
        rolling_back,
    })
}

/// One Setting or Testing attempt (`phase`): `Ok` with the status and the
/// role when it worked, else the step to return: without a target the
/// rotation goes on to Propagating, while the last failed attempt's
/// backoff runs it waits, and a failure is counted ([`target_failed`]).
async fn attempt(
    i: &Inputs<'_>,
    mut status: SecretRotationPolicyStatus,
    phase: Phase,
) -> Result<std::result::Result<(SecretRotationPolicyStatus, String), Step>> {
    if i.target.is_none() && i.receiver.is_none() {
        enter(&mut status, Phase::Propagating, i.now);
        return Ok(Err(Step::new(status, Duration::ZERO)));
    }
    if let Some(wait) = backing_off(i, &status) {
        return Ok(Err(Step::new(status, wait)));
    }
    let setting = phase == Phase::Setting;
    let (result, role) = match (i.receiver, i.target) {
        (Some(receiver), _) => {
            let step = if setting {
                RotationStep::Set
            } else {
                RotationStep::Test
            };
            let call = pending_call(i, &status, step).await?;
            (receiver.call(&call).await, receiver.url().to_owned())
        }
        (None, None) => return Ok(Err(Step::new(status, Duration::ZERO))),
        (None, Some(target)) => {
            let new = pending_value(i, &status, phase).await?.credential();
            let result = if setting {
                match admin(i).await? {
                    Ok(admin) => target.set(&admin, &new).await,
                    Err(f) => Err(f),
                }
            } else {
                target.test(&new).await
            };
            (result, new.username.clone())
        }
    };
    Ok(match result {
        Ok(()) => Ok((status, role)),
        Err(f) => Err(target_failed(i, status, phase, f)),
    })
}

/// Setting: logs in to the target as the admin and sets the pending
/// password on the pending value's role.
async fn setting(i: &Inputs<'_>, status: SecretRotationPolicyStatus) -> Result<Step> {
    let now = i.now;
    let (mut status, role) = match attempt(i, status, Phase::Setting).await? {
        Ok(worked) => worked,
        Err(step) => return Ok(step),
    };
    status.target_attempts = None;
    status.target_set_at = Some(rfc3339(now));
    enter(&mut status, Phase::Testing, now);
    Ok(Step::new(status, Duration::ZERO).event(RotationEvent::TargetSet { role }))
}

/// Testing: logs in to the target with the pending value.
async fn testing(i: &Inputs<'_>, status: SecretRotationPolicyStatus) -> Result<Step> {
    let now = i.now;
    let (mut status, role) = match attempt(i, status, Phase::Testing).await? {
        Ok(worked) => worked,
        Err(step) => return Ok(step),
    };
    status.target_attempts = None;
    status.consumers.clear();
    enter(&mut status, Phase::Propagating, now);
    Ok(Step::new(status, Duration::ZERO).event(RotationEvent::TargetTested { role }))
}

/// RollingBack's half on the target, when Setting changed it: singleUser's
/// role gets CURRENT's password back; alternatingUsers' idle role gets a
/// fresh random password nobody holds, so the retired pending one stops
/// working.
async fn restore_target(
    i: &Inputs<'_>,
    status: &SecretRotationPolicyStatus,
) -> Result<Option<RotationEvent>> {
    if status.target_set_at.is_none() || status.pending_version.is_none() {
        return Ok(None);
    }
    if let Some(receiver) = i.receiver {
        return restore_receiver(i, receiver).await;
    }
    let (Some(target), Some(spec)) = (i.target, i.policy.postgres()) else {
        return Ok(None);
    };
    let role = pending_value(i, status, Phase::RollingBack)
        .await?
        .username
        .clone();
    let restored = match &spec.strategy {
        Strategy::SingleUser(_) => {
            let f = i.store.read(i.secret(), &Selector::Current).await?;
            DbSecret::from_bytes(f.value.expose_secret())?.credential()
        }
        Strategy::AlternatingUsers(_) => Credential {
            username: role.clone(),
            password: random_password(i)?,
        },
    };
    let admin = admin(i).await?.map_err(Error::TargetRollback)?;
    target
        .set(&admin, &restored)
        .await
        .map_err(Error::TargetRollback)?;
    Ok(Some(RotationEvent::TargetRestored { role }))
}

/// Retiring's half on the target (AWS's finishSecret), once every
/// consumer has served the promoted version for the grace period:
/// alternatingUsers gives the role no longer in use a fresh random
/// password nobody holds, so after each rotation only the current
/// credential logs in (sessions already open stay open). singleUser has
/// nothing to do.
async fn finish_target(
    i: &Inputs<'_>,
    status: &SecretRotationPolicyStatus,
) -> Result<Result<Option<RotationEvent>, TargetFailure>> {
    if let (Some(receiver), Some(current)) = (i.receiver, &status.current_version) {
        let call = RotationCall {
            step: RotationStep::Finish,
            secret_id: i.secret().to_owned(),
            client_request_token: current.clone(),
            secret_string: None,
        };
        return Ok(receiver.call(&call).await.map(|()| {
            Some(RotationEvent::TargetFinished {
                role: receiver.url().to_owned(),
            })
        }));
    }
    let (Some(target), Some(spec), Some(previous), Some(current)) = (
        i.target,
        i.policy.postgres(),
        &status.previous_version,
        &status.current_version,
    ) else {
        return Ok(Ok(None));
    };
    if matches!(spec.strategy, Strategy::SingleUser(_)) {
        return Ok(Ok(None));
    }
    let role_of = |version: &str| {
        let version = VersionId(version.to_owned());
        async move {
            match i.store.read(i.secret(), &Selector::Version(version)).await {
                Ok(f) => Ok(Some(
                    DbSecret::from_bytes(f.value.expose_secret())?
                        .username
                        .clone(),
                )),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(Error::Store(e)),
            }
        }
    };
    let (Some(old), Some(now_used)) = (role_of(previous).await?, role_of(current).await?) else {
        return Ok(Ok(None));
    };
    if old == now_used {
        return Ok(Ok(None));
    }
    let retired = Credential {
        username: old.clone(),
        password: random_password(i)?,
    };
    let result = match admin(i).await? {
        Ok(admin) => target.finish(&admin, &retired).await,
        Err(f) => Err(f),
    };
    Ok(result.map(|()| Some(RotationEvent::TargetFinished { role: old })))
}

/// A generated password nobody is given.
fn random_password(i: &Inputs<'_>) -> Result<SecretString> {
    let password = generate(&i.policy.generator, i.rng)?;
    String::from_utf8(password.to_vec())
        .map(SecretString::from)
        .map_err(|_| {
            Error::TargetValue("the generator made a password that is not UTF-8".to_owned())
        })
}

/// A `setSecret`/`testSecret` call with the pending version's value.
async fn pending_call(
    i: &Inputs<'_>,
    status: &SecretRotationPolicyStatus,
    step: RotationStep,
) -> Result<RotationCall> {
    let version = pending(status, Phase::Setting)?;
    let f = i
        .store
        .read(i.secret(), &Selector::Version(VersionId(version.clone())))
        .await?;
    Ok(RotationCall {
        step,
        secret_id: i.secret().to_owned(),
        client_request_token: version,
        secret_string: Some(value_text(f.value.expose_secret())?),
    })
}

/// A value as the text an HTTPS call carries.
fn value_text(value: &[u8]) -> Result<String> {
    String::from_utf8(value.to_vec()).map_err(|_| {
        Error::TargetValue(
            "an https target carries the value as text: use a generator whose values are UTF-8 (password or keyPair)"
                .to_owned(),
        )
    })
}

/// RollingBack on an HTTPS target: `setSecret` again with CURRENT's
/// version and value, so the receiver's system is back where the store is.
async fn restore_receiver(
    i: &Inputs<'_>,
    receiver: &dyn Receiver,
) -> Result<Option<RotationEvent>> {
    let f = match i.store.read(i.secret(), &Selector::Current).await {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(Error::Store(e)),
    };
    let call = RotationCall {
        step: RotationStep::Set,
        secret_id: i.secret().to_owned(),
        client_request_token: f.version.0.clone(),
        secret_string: Some(value_text(f.value.expose_secret())?),
    };
    receiver.call(&call).await.map_err(Error::TargetRollback)?;
    Ok(Some(RotationEvent::TargetRestored {
        role: receiver.url().to_owned(),
    }))
}

/// Propagating: asks the consumers to serve the pending version and
/// records their acknowledgements; promotes once all have, or after
/// `ackTimeout` promotes (Degraded) or rolls back, as the policy says.
async fn propagating(i: &Inputs<'_>, mut status: SecretRotationPolicyStatus) -> Result<Step> {
    let now = i.now;
    let pending = pending(&status, Phase::Propagating)?;
    let since = since(&status, now);
    let acks = i.consumers.refresh(i.secret(), Some(&pending)).await;
    for ack in &acks {
        let entry = match status.consumers.iter_mut().find(|c| c.name == ack.consumer) {
            Some(e) => e,
            None => {
                status.consumers.push(ConsumerStatus {
                    name: ack.consumer.clone(),
                    ..ConsumerStatus::default()
                });
                status.consumers.last_mut().expect("just pushed")
            }
        };
        entry.state = match ack.state(&pending) {
            // An earlier answer acknowledged it; a later failure to answer
            // again does not take that back.
            _ if entry.acknowledged_version.as_deref() == Some(&pending) => {
                ConsumerState::Acknowledged
            }
            state => state,
        };
        if ack.version.as_deref() == Some(pending.as_str())
            && entry.acknowledged_version.as_deref() != Some(&pending)
        {
            entry.acknowledged_version = Some(pending.clone());
            entry.acknowledged_at = Some(rfc3339(now));
        }
    }
    let laggards: Vec<String> = status
        .consumers
        .iter()
        .filter(|c| c.acknowledged_version.as_deref() != Some(pending.as_str()))
        .map(|c| c.name.clone())
        .collect();
    if laggards.is_empty() {
        let consumers = status.consumers.len();
        enter(&mut status, Phase::Promoting, now);
        return Ok(
            Step::new(status, Duration::ZERO).event(RotationEvent::Acknowledged {
                consumers,
                version: pending,
            }),
        );
    }
    if now.duration_since(since).unwrap_or_default() < i.policy.ack_timeout {
        return Ok(Step::new(status, Duration::from_millis(500)));
    }
    let who = laggards.join(", ");
    let on_timeout = i.policy.on_timeout;
    let (reason, message, next) = match on_timeout {
        OnTimeout::Promote => (
            PolicyReason::AckTimeout,
            format!("promoted without acknowledgement from {who}"),
            Phase::Promoting,
        ),
        OnTimeout::Rollback => (
            PolicyReason::RolledBack,
            format!("rolled back: no acknowledgement from {who}"),
            Phase::RollingBack,
        ),
    };
    set_condition(&mut status, "Degraded", true, reason, &message, now);
    enter(&mut status, next, now);
    Ok(
        Step::new(status, Duration::ZERO).event(RotationEvent::AckTimeout {
            on_timeout,
            laggards,
        }),
    )
}

/// Promoting: makes the pending version current, moves consumers that
/// pinned it to CURRENT, and schedules the next rotation.
async fn promoting(i: &Inputs<'_>, mut status: SecretRotationPolicyStatus) -> Result<Step> {
    let (now, secret) = (i.now, i.secret());
    let pending = pending(&status, Phase::Promoting)?;
    i.store.promote(secret, &VersionId(pending.clone())).await?;
    // Consumers that pinned the pending version now follow CURRENT.
    let _ = i.consumers.refresh(secret, None).await;
    status.previous_version = status.current_version.take();
    status.current_version = Some(pending.clone());
    status.pending_version = None;
    let started = parse_time(&status.next_rotation).unwrap_or(now);
    status.last_rotation = Some(rfc3339(now));
    status.next_rotation = Some(rfc3339(i.policy.schedule.next(Some(now), now, i.rng)?));
    let degraded = status.conditions.iter().any(|c| {
        c.type_ == "Degraded" && c.status == "True" && c.reason == PolicyReason::AckTimeout
    });
    if !degraded {
        set_condition(
            &mut status,
            "Degraded",
            false,
            PolicyReason::Acknowledged,
            "",
            now,
        );
    }
    let window = match (
        i.policy.postgres(),
        parse_time(&status.target_set_at.take()),
    ) {
        (Some(t), Some(set_at)) => match &t.strategy {
            Strategy::SingleUser(role) => Some(RotationEvent::SingleUserWindow {
                role: role.clone(),
                millis: u64::try_from(now.duration_since(set_at).unwrap_or_default().as_millis())
                    .unwrap_or(u64::MAX),
            }),
            Strategy::AlternatingUsers(_) => None,
        },
        _ => None,
    };
    enter(&mut status, Phase::Retiring, now);
    let mut step = Step::new(status, i.policy.grace_period).event(RotationEvent::Promoted {
        secret: secret.to_owned(),
        version: pending,
    });
    step.events.extend(window);
    step.finished = Some((
        if degraded {
            Outcome::Degraded
        } else {
            Outcome::Success
        },
        now.duration_since(started).unwrap_or_default(),
    ));
    Ok(step)
}

/// Retiring: after the grace period, retires the previous version.
async fn retiring(i: &Inputs<'_>, mut status: SecretRotationPolicyStatus) -> Result<Step> {
    let (now, secret) = (i.now, i.secret());
    let until = since(&status, now) + i.policy.grace_period;
    if now < until {
        let wait = until.duration_since(now).unwrap_or_default();
        return Ok(Step::new(status, wait));
    }
    let mut events = Vec::new();
    match finish_target(i, &status).await? {
        Ok(finished) => events.extend(finished),
        Err(failure) => {
            let attempt = status.target_attempts.unwrap_or(0) + 1;
            let event = RotationEvent::TargetFailed {
                phase: Phase::Retiring,
                failure,
                attempt,
                rolling_back: false,
            };
            if attempt < TARGET_ATTEMPTS {
                status.target_attempts = Some(attempt);
                let wait = super::retry::wait_after(attempt);
                return Ok(Step::new(status, wait).event(event));
            }
            status.target_attempts = None;
            set_condition(
                &mut status,
                "Degraded",
                true,
                failure.condition(),
                &format!(
                    "Retiring failed {attempt} times ({failure}); the previous credential works until the next rotation"
                ),
                now,
            );
            events.push(event);
        }
    }
    status.target_attempts = None;
    if let Some(previous) = &status.previous_version {
        match i.store.retire(secret, &VersionId(previous.clone())).await {
            Ok(()) => events.push(RotationEvent::Retired {
                secret: secret.to_owned(),
                version: previous.clone(),
            }),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::Store(e)),
        }
    }
    enter(&mut status, Phase::Idle, now);
    let mut step = Step::new(status, Duration::ZERO);
    step.events = events;
    Ok(step)
}

/// RollingBack: moves consumers back to CURRENT, retires the pending
/// version, and tries again later (ten ackTimeouts, 1 minute to 1 day).
async fn rolling_back(i: &Inputs<'_>, mut status: SecretRotationPolicyStatus) -> Result<Step> {
    let (now, secret) = (i.now, i.secret());
    let _ = i.consumers.refresh(secret, None).await;
    let mut events = Vec::new();
    if let Some(restored) = restore_target(i, &status).await? {
        events.push(restored);
    }
    status.target_set_at = None;
    status.target_attempts = None;
    if let Some(pending) = status.pending_version.take() {
        match i.store.retire(secret, &VersionId(pending.clone())).await {
            Ok(()) => events.push(RotationEvent::RolledBack {
                secret: secret.to_owned(),
                version: pending,
            }),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::Store(e)),
        }
    }
    let retry =
        (i.policy.ack_timeout * 10).clamp(Duration::from_secs(60), Duration::from_secs(86_400));
    status.next_rotation = Some(rfc3339(now + retry));
    enter(&mut status, Phase::Idle, now);
    let mut step = Step::new(status, Duration::ZERO);
    step.events = events;
    step.finished = Some((Outcome::RolledBack, Duration::ZERO));
    Ok(step)
}

#[cfg(test)]
pub(crate) mod tests;
