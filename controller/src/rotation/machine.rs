//! The rotation state machine. Its whole state is the policy's status, and
//! each [`step`] moves at most one phase and returns the status to persist
//! before the next step, so a restart after any step resumes where it left
//! off, and no step is done twice:
//!
//! ```text
//! Idle ──due──► Generating ──pending written──► Propagating ──all acked──► Promoting ──► Retiring ──grace──► Idle
//!                                                   │ ack timeout
//!                                                   ├── onTimeout: Promote ──► Promoting (Degraded)
//!                                                   └── onTimeout: Rollback ─► RollingBack ──► Idle (Degraded)
//! ```
//!
//! Generating first looks for a PENDING version in the store, so a crash
//! between writing the value and saving the status adopts that value rather
//! than generating another: a generated value is never lost.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rotor_crds::api::{
    Condition, ConsumerStatus, OnTimeout, SecretRotationPolicySpec, SecretRotationPolicyStatus,
};
use rotor_store::{Selector, Stage, Store, VersionId, WriteAs};

use super::generate::generate;
use super::schedule::{next_rotation, parse_duration};
use crate::{Error, Result};

pub const IDLE: &str = "Idle";
pub const GENERATING: &str = "Generating";
pub const PROPAGATING: &str = "Propagating";
pub const PROMOTING: &str = "Promoting";
pub const RETIRING: &str = "Retiring";
pub const ROLLING_BACK: &str = "RollingBack";

/// One consumer's answer to a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub consumer: String,
    pub version: Option<String>,
    pub error: Option<String>,
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
    /// (reason, message) for a Kubernetes Event or a log line.
    pub events: Vec<(String, String)>,
    /// Rotation results for metrics: ("success" | "degraded" | "rolled_back", duration).
    pub finished: Option<(&'static str, Duration)>,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time(s: &Option<String>) -> Option<SystemTime> {
    s.as_ref().and_then(|s| humantime::parse_rfc3339(s).ok())
}

fn set_condition(
    status: &mut SecretRotationPolicyStatus,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: SystemTime,
) {
    let value = if on { "True" } else { "False" };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == value && c.reason == reason && c.message == message => {}
        Some(c) => {
            if c.status != value {
                c.last_transition_time = rfc3339(now);
            }
            c.status = value.to_owned();
            c.reason = reason.to_owned();
            c.message = message.to_owned();
        }
        None => status.conditions.push(Condition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: rfc3339(now),
            observed_generation: None,
        }),
    }
}

fn enter(status: &mut SecretRotationPolicyStatus, phase: &str, now: SystemTime) {
    status.phase = Some(phase.to_owned());
    status.phase_since = Some(rfc3339(now));
    let rotating = phase != IDLE;
    set_condition(status, "Rotating", rotating, phase, "", now);
}

/// Advances the rotation of one policy by at most one phase.
pub async fn step(
    spec: &SecretRotationPolicySpec,
    current: &SecretRotationPolicyStatus,
    now: SystemTime,
    rotate_now: bool,
    store: &dyn Store,
    consumers: &dyn Consumers,
) -> Result<Step> {
    let mut status = current.clone();
    let mut events = Vec::new();
    let mut finished = None;
    let secret = spec.secret_name.as_str();
    let phase = status.phase.clone().unwrap_or_else(|| IDLE.to_owned());
    let since = parse_time(&status.phase_since).unwrap_or(now);
    let staged = &spec.strategy.staged;
    let requeue = match phase.as_str() {
        IDLE => {
            if status.current_version.is_none() {
                match store.current_version(secret).await {
                    Ok(v) => status.current_version = Some(v.0),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::Store(e)),
                }
            }
            let next = match parse_time(&status.next_rotation) {
                Some(t) => t,
                None => {
                    let t = next_rotation(&spec.schedule, parse_time(&status.last_rotation), now)?;
                    status.next_rotation = Some(rfc3339(t));
                    t
                }
            };
            if spec.paused && !rotate_now {
                set_condition(
                    &mut status,
                    "Ready",
                    true,
                    "Paused",
                    "rotation is paused",
                    now,
                );
                Duration::from_secs(3600)
            } else if rotate_now || next <= now {
                enter(&mut status, GENERATING, now);
                events.push(("RotationStarted".to_owned(), format!("rotating {secret}")));
                Duration::ZERO
            } else {
                set_condition(
                    &mut status,
                    "Ready",
                    true,
                    "Scheduled",
                    &format!("next rotation at {}", rfc3339(next)),
                    now,
                );
                next.duration_since(now).unwrap_or_default()
            }
        }
        GENERATING => {
            // Adopt a pending version written before a crash.
            let adopted = match store.read(secret, &Selector::Stage(Stage::Pending)).await {
                Ok(f) if Some(&f.version.0) != status.current_version.as_ref() => Some(f.version),
                Ok(_) => None,
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(Error::Store(e)),
            };
            let version = match adopted {
                Some(v) => v,
                None => {
                    let value = generate(&spec.generator)?;
                    match store.write(secret, &value, WriteAs::Pending).await {
                        Ok(v) => v,
                        Err(e) if e.is_not_found() => {
                            // The secret does not exist yet: its first version is current.
                            let v = store
                                .write(secret, &value, WriteAs::Current)
                                .await
                                .map_err(Error::Store)?;
                            status.current_version = Some(v.0.clone());
                            status.last_rotation = Some(rfc3339(now));
                            status.next_rotation =
                                Some(rfc3339(next_rotation(&spec.schedule, Some(now), now)?));
                            enter(&mut status, IDLE, now);
                            events.push((
                                "Created".to_owned(),
                                format!("created {secret} version {}", v.0),
                            ));
                            return Ok(Step {
                                status,
                                requeue: Duration::ZERO,
                                events,
                                finished: Some(("success", Duration::ZERO)),
                            });
                        }
                        Err(e) => return Err(Error::Store(e)),
                    }
                }
            };
            events.push((
                "Staged".to_owned(),
                format!("version {} of {secret} staged as pending", version.0),
            ));
            status.pending_version = Some(version.0);
            status.consumers.clear();
            enter(&mut status, PROPAGATING, now);
            Duration::ZERO
        }
        PROPAGATING => {
            let pending = status
                .pending_version
                .clone()
                .ok_or_else(|| Error::Config("Propagating without a pending version".to_owned()))?;
            let acks = consumers.refresh(secret, Some(&pending)).await;
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
            let timeout = parse_duration("spec.strategy.staged.ackTimeout", &staged.ack_timeout)?;
            if laggards.is_empty() {
                events.push((
                    "Acknowledged".to_owned(),
                    format!(
                        "all {} consumers serve version {pending}",
                        status.consumers.len()
                    ),
                ));
                enter(&mut status, PROMOTING, now);
                Duration::ZERO
            } else if now.duration_since(since).unwrap_or_default() >= timeout {
                let who = laggards.join(", ");
                match staged.on_timeout {
                    OnTimeout::Promote => {
                        set_condition(
                            &mut status,
                            "Degraded",
                            true,
                            "AckTimeout",
                            &format!("promoted without acknowledgement from {who}"),
                            now,
                        );
                        events.push((
                            "AckTimeout".to_owned(),
                            format!("promoting anyway; no acknowledgement from {who}"),
                        ));
                        enter(&mut status, PROMOTING, now);
                    }
                    OnTimeout::Rollback => {
                        set_condition(
                            &mut status,
                            "Degraded",
                            true,
                            "RolledBack",
                            &format!("rolled back: no acknowledgement from {who}"),
                            now,
                        );
                        events.push((
                            "AckTimeout".to_owned(),
                            format!("rolling back; no acknowledgement from {who}"),
                        ));
                        enter(&mut status, ROLLING_BACK, now);
                    }
                }
                Duration::ZERO
            } else {
                Duration::from_millis(500)
            }
        }
        PROMOTING => {
            let pending = status
                .pending_version
                .clone()
                .ok_or_else(|| Error::Config("Promoting without a pending version".to_owned()))?;
            store
                .promote(secret, &VersionId(pending.clone()))
                .await
                .map_err(Error::Store)?;
            // Consumers that pinned the pending version now follow CURRENT.
            let _ = consumers.refresh(secret, None).await;
            status.previous_version = status.current_version.take();
            status.current_version = Some(pending.clone());
            status.pending_version = None;
            let started = parse_time(&status.next_rotation).unwrap_or(now);
            status.last_rotation = Some(rfc3339(now));
            status.next_rotation = Some(rfc3339(next_rotation(&spec.schedule, Some(now), now)?));
            let degraded = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "AckTimeout");
            if !degraded {
                set_condition(&mut status, "Degraded", false, "Acknowledged", "", now);
            }
            finished = Some((
                if degraded { "degraded" } else { "success" },
                now.duration_since(started).unwrap_or_default(),
            ));
            events.push((
                "Promoted".to_owned(),
                format!("version {pending} of {secret} is current"),
            ));
            enter(&mut status, RETIRING, now);
            parse_duration("spec.strategy.staged.gracePeriod", &staged.grace_period)?
        }
        RETIRING => {
            let grace = parse_duration("spec.strategy.staged.gracePeriod", &staged.grace_period)?;
            let until = since + grace;
            if now < until {
                until.duration_since(now).unwrap_or_default()
            } else {
                if let Some(previous) = &status.previous_version {
                    match store.retire(secret, &VersionId(previous.clone())).await {
                        Ok(()) => events.push((
                            "Retired".to_owned(),
                            format!("version {previous} of {secret} retired"),
                        )),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(Error::Store(e)),
                    }
                }
                enter(&mut status, IDLE, now);
                Duration::ZERO
            }
        }
        ROLLING_BACK => {
            let _ = consumers.refresh(secret, None).await;
            if let Some(pending) = status.pending_version.take() {
                match store.retire(secret, &VersionId(pending.clone())).await {
                    Ok(()) => events.push((
                        "RolledBack".to_owned(),
                        format!("pending version {pending} of {secret} retired"),
                    )),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Error::Store(e)),
                }
            }
            let timeout = parse_duration("spec.strategy.staged.ackTimeout", &staged.ack_timeout)?;
            let retry = (timeout * 10).clamp(Duration::from_secs(60), Duration::from_secs(86_400));
            status.next_rotation = Some(rfc3339(now + retry));
            finished = Some(("rolled_back", Duration::ZERO));
            enter(&mut status, IDLE, now);
            Duration::ZERO
        }
        other => {
            return Err(Error::Config(format!(
                "status.phase {other:?} is not a known phase"
            )));
        }
    };
    Ok(Step {
        status,
        requeue,
        events,
        finished,
    })
}

#[cfg(test)]
mod tests;
