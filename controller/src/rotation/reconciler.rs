//! The `SecretRotationPolicy` reconciler for clusters: only the leader
//! rotates; each reconcile checks the spec, then resolves the policy's
//! store as it is now ([`StoreFactory`]), runs one state-machine step (or,
//! when either has a problem, reports every problem in `Ready=False` with a
//! [`Blocked`] reason), saves the status by server-side apply, publishes
//! the step's Events, and requeues at the time the step asks for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use rotor_contract::api::{SecretRotationPolicy, SecretRotationPolicyStatus};
use rotor_store::Store;

use super::consumers::ConsumerIndex;
use super::driver::{Record, Rotation, Settle, settle};
use super::machine::Consumers;
use super::machine::{Blocked, RotationEvent, Severity, blocked, ready_blocked, unblocked};
use super::metrics::RotationMetrics;
use super::target::https::Callers;
use super::validate::{Mode, Policy};
use crate::serving::Served;

use crate::store_index::Refusal;
use crate::{Error, Result};
use rotor_contract::annotations::ROTATE_NOW;
use rotor_contract::names::FIELD_MANAGER;

/// The sidecars' streams as the reconciler asks them (the channel's hub
/// implements it): rotation owns the trait, the channel sits above.
pub trait Streams: Send + Sync {
    /// The consumers `pods` (`namespace/pod`), each with `deadline` to
    /// acknowledge one request.
    fn consumers(&self, pods: Vec<String>, deadline: Duration) -> Box<dyn Consumers + '_>;
    /// What each pod last said it serves.
    fn served(&self) -> &Served;
}

/// Builds the store a policy names (from its RotorStore or
/// ClusterRotorStore), resolved on every call against the store and the
/// namespace as they are now. A store the policy cannot use is an error
/// [`store_blocked`] classifies.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    async fn store(&self, policy: &SecretRotationPolicy) -> Result<Arc<dyn Store>>;
}

/// What a reconcile works with: a valid policy and its store, or why the
/// policy cannot rotate.
pub enum Assessed {
    Ready(Box<Policy>, Arc<dyn Store>),
    Blocked {
        /// The spec's problem first, as it is checked first.
        reason: Blocked,
        /// Every problem: the spec's, then the store's.
        problems: Vec<String>,
    },
}

/// Combines the spec check and the store resolution. A store error that is
/// no problem of the policy (the API or the network) is returned as is, to
/// be retried, unless the spec is invalid anyway.
pub fn assess(
    checked: Result<Policy, Vec<String>>,
    store: Result<Arc<dyn Store>>,
) -> Result<Assessed> {
    let store_problem = |e: &Error| store_blocked(e).map(|reason| (reason, e.to_string()));
    match (checked, store) {
        (Ok(policy), Ok(store)) => Ok(Assessed::Ready(Box::new(policy), store)),
        (Ok(_), Err(e)) => match store_problem(&e) {
            Some((reason, problem)) => Ok(Assessed::Blocked {
                reason,
                problems: vec![problem],
            }),
            None => Err(e),
        },
        (Err(mut problems), store) => {
            if let Err(e) = &store {
                match store_problem(e) {
                    Some((_, problem)) => problems.push(problem),
                    None => tracing::debug!(error = %e, "store not checked: the spec is invalid"),
                }
            }
            Ok(Assessed::Blocked {
                reason: Blocked::InvalidSpec,
                problems,
            })
        }
    }
}

/// The [`Blocked`] reason a store error means, or `None` for a failure a
/// retry may fix.
pub fn store_blocked(error: &Error) -> Option<Blocked> {
    match error {
        Error::StoreRefused(Refusal::NotFound { .. }) => Some(Blocked::StoreNotFound),
        Error::StoreRefused(
            Refusal::NamespaceNotAllowed { .. } | Refusal::PathNotAllowed { .. },
        ) => Some(Blocked::NotAllowed),
        Error::StoreRefused(Refusal::SecretAuth { .. })
        | Error::UnsupportedStore { .. }
        | Error::Provider { .. }
        | Error::AwsRoleMissing { .. }
        | Error::KeyFile { .. } => Some(Blocked::StoreUnsupported),
        Error::RotatorMissing { .. } => Some(Blocked::RotatorMissing),
        Error::Store(
            rotor_store::Error::PermissionDenied { .. }
            | rotor_store::Error::Auth { .. }
            | rotor_store::Error::Token { .. },
        ) => Some(Blocked::StoreDenied),
        _ => None,
    }
}

pub struct RotationContext {
    pub client: Client,
    pub stores: Arc<dyn StoreFactory>,
    pub consumers: Arc<RwLock<ConsumerIndex>>,
    /// The sidecars' streams, through which consumers are asked.
    pub hub: Arc<dyn Streams>,
    /// How long each consumer has to acknowledge one request.
    pub ack_deadline: Duration,
    /// Whose tokens https targets receive: the namespace's rotator.
    pub rotators: Option<Arc<dyn Callers>>,
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
    let api: Api<SecretRotationPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    // The spec first, then the store as it is now; a spec CEL let through
    // but the controller refuses, or a store the policy cannot use, is a
    // condition and an Event on the policy, not a retry loop in the log.
    let checked = Policy::check(&policy.spec, Mode::Cluster);
    let store = ctx.stores.store(&policy).await;
    let status = policy.status.clone().unwrap_or_default();
    let token = policy.annotations().get(ROTATE_NOW).cloned();
    let rotate_now = token.is_some() && token != status.rotate_now_handled;
    let now = SystemTime::now();
    let pods = ctx
        .consumers
        .read()
        .expect("consumer index lock")
        .consumers(
            &namespace,
            &policy.spec.store_ref.name,
            &policy.spec.secret_name,
        );
    let stepped = match assess(checked, store)? {
        Assessed::Ready(valid, store) => {
            let consumers = ctx.hub.consumers(pods.clone(), ctx.ack_deadline);
            let mut current = status.clone();
            unblocked(&mut current, now);
            let rotator = ctx.rotators.as_ref().map(|r| r.in_namespace(&namespace));
            let caller = rotator.as_deref();
            let rotation = Rotation {
                policy: &valid,
                current: &current,
                now,
                rotate_now,
                store: &*store,
                consumers: &*consumers,
                caller,
                rng: &rotor_store::random::SystemRandom,
            };
            match rotation.step().await {
                Ok(s) => Ok(s),
                // The store refused the controller: as much the policy's
                // problem as a path `paths` forbids.
                Err(e) => match store_blocked(&e) {
                    Some(reason) => Err((reason, vec![e.to_string()])),
                    None => return Err(e),
                },
            }
        }
        Assessed::Blocked { reason, problems } => Err((reason, problems)),
    };
    let s = match stepped {
        Ok(s) => s,
        Err((reason, problems)) => {
            tracing::info!(%namespace, %name, %reason, problems = %problems.join("; "), "policy cannot rotate");
            // A new reason is announced once: decide that on the status as
            // saved, not on a cached copy an earlier step already changed.
            let current = if ready_blocked(&status) == Some(reason) {
                status.clone()
            } else {
                api.get(&name).await?.status.unwrap_or_default()
            };
            blocked(&current, reason, problems, now)
        }
    };
    let key = format!("{namespace}/{name}");
    let after = Settle {
        key: &key,
        before: &status,
        token,
        handled: status.rotate_now_handled.clone(),
        generation: policy.metadata.generation,
        pods: &pods,
        secret: &policy.spec.secret_name,
        served: ctx.hub.served(),
        metrics: &ctx.metrics,
    };
    let record = ApiRecord {
        api: &api,
        recorder: &ctx.recorder,
        policy: &policy,
    };
    let requeue = settle(s, after, &record).await?;
    Ok(Action::requeue(requeue.max(Duration::from_millis(100))))
}

/// The cluster's [`Record`]: the status by server-side apply, the events
/// as Kubernetes Events on the policy.
struct ApiRecord<'a> {
    api: &'a Api<SecretRotationPolicy>,
    recorder: &'a Recorder,
    policy: &'a SecretRotationPolicy,
}

#[async_trait]
impl Record for ApiRecord<'_> {
    async fn save(&self, status: &SecretRotationPolicyStatus) -> Result<()> {
        self.api
            .patch_status(
                &self.policy.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "rotor.dev/v1alpha1",
                    "kind": "SecretRotationPolicy",
                    "status": status,
                })),
            )
            .await?;
        Ok(())
    }

    async fn announce(&self, e: &RotationEvent) {
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
        if let Err(error) = self
            .recorder
            .publish(&event, &self.policy.object_ref(&()))
            .await
        {
            let (namespace, name) = (
                self.policy.namespace().unwrap_or_default(),
                self.policy.name_any(),
            );
            tracing::warn!(%namespace, %name, %error, "cannot publish an event");
        }
    }
}

pub fn error_policy(
    policy: Arc<SecretRotationPolicy>,
    error: &Error,
    ctx: Arc<RotationContext>,
) -> Action {
    ctx.metrics.reconcile_failed(
        crate::rotation::metrics::Reconciler::SecretRotationPolicy,
        error,
    );
    tracing::warn!(name = %policy.name_any(), error = %error, "rotation step failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests;
