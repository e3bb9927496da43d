//! The one driver of the rotation machine, shared by standalone mode and
//! the cluster reconciler. [`Rotation`] holds one step's inputs and runs
//! the step; [`Rotation::settle`] does everything after it, in one order
//! for both modes: the served versions (`status.serving`), the rotate-now
//! token, the status saved through a [`Record`] (server-side apply in a
//! cluster, the state file in standalone), the metrics, then the step's
//! events. What differs between the modes is only the [`Record`] and how
//! a failed step is retried (the controller's requeue, standalone's
//! [`rotor_store::backoff`] schedule).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rotor_contract::api::SecretRotationPolicyStatus;
use rotor_store::Store;
use rotor_store::random::Random;

use super::machine::{Consumers, Inputs, Phase, RotationEvent, Step, step_with};
use super::metrics::RotationMetrics;
use super::target::https::{CallerToken, Https, Receiver};
use super::target::{Target, TargetSpec};
use super::validate::Policy;
use crate::Result;
use crate::serving::Served;

/// One step's inputs: the policy, its status as saved, and what the step
/// reaches outside the controller.
pub struct Rotation<'a> {
    pub policy: &'a Policy,
    /// The status as the last step left it.
    pub current: &'a SecretRotationPolicyStatus,
    pub now: SystemTime,
    /// A rotate-now request not yet handled.
    pub rotate_now: bool,
    pub store: &'a dyn Store,
    pub consumers: &'a dyn Consumers,
    /// What an https target receives as the caller's token.
    pub caller: Option<&'a dyn CallerToken>,
    /// For generated values and schedule jitter.
    pub rng: &'a dyn Random,
}

impl Rotation<'_> {
    /// Advances the rotation by at most one phase (connecting to the
    /// policy's target, if it has one).
    pub async fn step(&self) -> Result<Step> {
        let postgres = self
            .policy
            .postgres()
            .map(TargetSpec::connect)
            .transpose()?;
        let https = self
            .policy
            .https()
            .map(|h| Https::new(h, self.caller))
            .transpose()?;
        let inputs = Inputs {
            policy: self.policy,
            now: self.now,
            store: self.store,
            consumers: self.consumers,
            rng: self.rng,
            target: postgres.as_ref().map(|p| p as &dyn Target),
            receiver: https.as_ref().map(|h| h as &dyn Receiver),
        };
        step_with(&inputs, self.current, self.rotate_now).await
    }
}

/// Where a driver keeps a policy's status and tells of its events.
#[async_trait]
pub trait Record: Send + Sync {
    /// Saves the status the next step starts from (its
    /// `rotateNowHandled` included).
    async fn save(&self, status: &SecretRotationPolicyStatus) -> Result<()>;
    /// Tells of one event of the step (saved first).
    async fn announce(&self, event: &RotationEvent);
}

/// What [`Rotation::settle`] needs besides the step.
pub struct Settle<'a> {
    /// The policy as the metrics label it (`namespace/name` in a cluster).
    pub key: &'a str,
    /// The status saved before the step.
    pub before: &'a SecretRotationPolicyStatus,
    /// The rotate-now request (the annotation's value), if any.
    pub token: Option<String>,
    /// The rotate-now request last handled.
    pub handled: Option<String>,
    /// The policy's `metadata.generation`.
    pub generation: Option<i64>,
    /// The policy's consumers, `namespace/pod`.
    pub pods: &'a [String],
    pub secret: &'a str,
    pub served: &'a Served,
    pub metrics: &'a RotationMetrics,
}

/// After a step: fills in what the step does not know, saves the status,
/// counts and announces. Returns when to step again.
pub async fn settle(step: Step, s: Settle<'_>, record: &dyn Record) -> Result<Duration> {
    let Step {
        mut status,
        requeue,
        events,
        finished,
    } = step;
    let Settle {
        key,
        before,
        token,
        handled,
        generation,
        pods,
        secret,
        served,
        metrics,
    } = s;
    status.observed_generation = generation;
    crate::serving::fill(&mut status, &before.consumers, pods, secret, served);
    // A rotate-now request is handled once a rotation has started.
    status.rotate_now_handled = if token.is_some() && status.phase != Some(Phase::Idle) {
        token
    } else {
        handled
    };
    record.save(&status).await?;
    if let Some((outcome, duration)) = finished {
        metrics.finished(outcome.as_str(), duration.as_secs_f64());
    }
    let pending = status
        .consumers
        .iter()
        .filter(|c| {
            status.pending_version.is_some() && c.acknowledged_version != status.pending_version
        })
        .count();
    metrics.pending(key, pending);
    if let Some(counts) = &status.serving {
        metrics.serving(key, counts);
    }
    metrics.next_rotation(key, &status);
    let propagating = Some(Phase::Propagating);
    if before.phase == propagating && status.phase != propagating {
        let since = status
            .phase_since
            .as_ref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.elapsed().ok());
        if let Some(since) = since {
            metrics.acknowledged(since.as_secs_f64());
        }
    }
    for e in &events {
        if let RotationEvent::SingleUserWindow { millis, .. } = e {
            metrics.single_user_window(*millis as f64 / 1000.0);
        }
        record.announce(e).await;
    }
    Ok(requeue)
}
