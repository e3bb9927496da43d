//! The `SecretRotationPolicy` reconciler for clusters: only the leader
//! rotates; each reconcile runs one state-machine step, saves the status by
//! server-side apply, publishes the step's Events, and requeues at the time
//! the step asks for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use rotor_crds::api::SecretRotationPolicy;
use rotor_store::Store;

use super::consumers::{ConsumerIndex, PodConsumers};
use super::machine::{Phase, RotationEvent, Severity, invalid_spec, step};
use super::metrics::RotationMetrics;
use super::validate::Policy;

use crate::sidecar_push::HttpSidecars;
use crate::standalone::ROTATE_NOW;
use crate::store_status::FIELD_MANAGER;
use crate::{Error, Result};

/// Builds the store a policy names (from its RotorStore or
/// ClusterRotorStore).
#[async_trait]
pub trait StoreFactory: Send + Sync {
    async fn store(&self, policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>>;
}

pub struct RotationContext {
    pub client: Client,
    pub stores: Arc<dyn StoreFactory>,
    pub consumers: Arc<RwLock<ConsumerIndex>>,
    pub http: Arc<HttpSidecars>,
    pub leader: Arc<AtomicBool>,
    pub metrics: Arc<RotationMetrics>,
    pub recorder: Recorder,
}

pub async fn reconcile(
    policy: Arc<SecretRotationPolicy>,
    ctx: Arc<RotationContext>,
) -> Result<Action> {
    if !ctx.leader.load(Ordering::Acquire) {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let store = ctx.stores.store(&policy).await?;
    let pods = ctx
        .consumers
        .read()
        .expect("consumer index lock")
        .consumers(
            &namespace,
            &policy.spec.store_ref.name,
            &policy.spec.secret_name,
        );
    let consumers = PodConsumers {
        pods,
        http: ctx.http.clone(),
    };
    let status = policy.status.clone().unwrap_or_default();
    let token = policy.annotations().get(ROTATE_NOW).cloned();
    let rotate_now = token.is_some() && token != status.rotate_now_handled;
    let before = status.phase.clone();
    // A spec CEL let through but the controller refuses is a condition and
    // an event on the policy, not a retry loop in the controller's log.
    let s = match Policy::check(&policy.spec) {
        Ok(valid) => {
            step(
                &valid,
                &status,
                SystemTime::now(),
                rotate_now,
                &*store,
                &consumers,
            )
            .await?
        }
        Err(problems) => invalid_spec(&status, problems, SystemTime::now()),
    };
    let api: Api<SecretRotationPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = s.status;
    status.observed_generation = policy.metadata.generation;
    // A rotate-now request is handled once a rotation has started.
    let idle = Some(Phase::Idle.as_str());
    status.rotate_now_handled = if rotate_now && status.phase.as_deref() != idle {
        token
    } else {
        policy
            .status
            .as_ref()
            .and_then(|s| s.rotate_now_handled.clone())
    };
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1",
            "kind": "SecretRotationPolicy",
            "status": status,
        })),
    )
    .await?;
    if let Some((outcome, duration)) = s.finished {
        ctx.metrics
            .finished(outcome.as_str(), duration.as_secs_f64());
    }
    let pending = status
        .consumers
        .iter()
        .filter(|c| {
            status.pending_version.is_some() && c.acknowledged_version != status.pending_version
        })
        .count();
    ctx.metrics.pending(&format!("{namespace}/{name}"), pending);
    let propagating = Some(Phase::Propagating.as_str());
    if before.as_deref() == propagating && status.phase.as_deref() != propagating {
        let since = status
            .phase_since
            .as_ref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.elapsed().ok());
        if let Some(since) = since {
            ctx.metrics.acknowledged(since.as_secs_f64());
        }
    }
    let reference = policy.object_ref(&());
    for e in s.events {
        if let RotationEvent::SingleUserWindow { millis, .. } = e {
            ctx.metrics.single_user_window(millis as f64 / 1000.0);
        }
        let event = Event {
            type_: match e.severity() {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: e.reason().to_owned(),
            note: Some(e.message()),
            action: "Rotate".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%namespace, %name, error = %e, "cannot publish an event");
        }
    }
    Ok(Action::requeue(s.requeue.max(Duration::from_millis(100))))
}

pub fn error_policy(
    policy: Arc<SecretRotationPolicy>,
    error: &Error,
    ctx: Arc<RotationContext>,
) -> Action {
    ctx.metrics.reconcile_failed("secretrotationpolicy", error);
    tracing::warn!(name = %policy.name_any(), error = %error, "rotation step failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests;
