//! The RotorStore and ClusterRotorStore status reconcilers: check each
//! store's spec and report it in `status` (provider kind, a `Ready`
//! condition, observedGeneration), as kube-rs/controller-rs does, with a
//! `Context` shared by `reconcile` and `error_policy`; [`run`] runs both.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use rotor_contract::api::{
    ClusterRotorStore, Condition, Provider, ProviderKind, RotorStore, RotorStoreStatus,
};

use crate::rotation::metrics::RotationMetrics;
use crate::store_index::{SecretAuth, StoreKind};
use crate::{Error, Result};

pub use rotor_contract::names::FIELD_MANAGER;

pub struct Context {
    pub client: Client,
    /// The controller's metrics, where `error_policy` counts failures.
    pub metrics: Arc<RotationMetrics>,
}

/// What is wrong with a provider's settings, if anything. Every provider
/// set is checked, so a spec with two says what is wrong with each.
pub fn problems(p: &Provider) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = p.view() {
        out.push(e.to_string());
    }
    for kind in p.all_set() {
        match kind {
            ProviderKind::Vault(v) => {
                if !(v.server.starts_with("https://") || v.server.starts_with("http://")) {
                    out.push(format!(
                        "spec.provider.vault.server {:?} is not an http(s) URL",
                        v.server
                    ));
                }
                let auths = [
                    v.auth.kubernetes.is_some(),
                    v.auth.app_role.is_some(),
                    v.auth.token_secret_ref.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                if auths != 1 {
                    out.push("spec.provider.vault.auth: expected exactly one of kubernetes, appRole, tokenSecretRef".to_owned());
                }
            }
            ProviderKind::Aws(a) => {
                if a.region.trim().is_empty() {
                    out.push(
                        "spec.provider.aws.region is empty; expected a region such as eu-west-1"
                            .to_owned(),
                    );
                }
            }
            ProviderKind::Kubernetes(_) => {}
            ProviderKind::Local(l) => {
                for (field, path) in [("path", &l.path), ("keyPath", &l.key_path)] {
                    if !path.starts_with('/') || path.split('/').any(|s| s == "..") {
                        out.push(format!(
                            "spec.provider.local.{field} {path:?} is not an absolute path without '..'"
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The reason of a store's `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreReason {
    Valid,
    InvalidSpec,
    /// A ClusterRotorStore with Secret-based Vault auth: the webhook
    /// refuses every pod that names it, and rotation cannot use it.
    SecretAuthNotAllowed(SecretAuth),
}

impl StoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreReason::Valid => "Valid",
            StoreReason::InvalidSpec => "InvalidSpec",
            StoreReason::SecretAuthNotAllowed(SecretAuth::TokenSecretRef) => {
                "TokenSecretRefNotAllowed"
            }
            StoreReason::SecretAuthNotAllowed(SecretAuth::AppRole) => "AppRoleNotAllowed",
        }
    }
}

/// The status for a store with these problems (`reason` when there are
/// any). The condition keeps its lastTransitionTime from `current` unless
/// its status changes.
fn status_for(
    provider: &Provider,
    problems: &[String],
    reason: StoreReason,
    generation: Option<i64>,
    current: Option<&RotorStoreStatus>,
) -> RotorStoreStatus {
    let ready = problems.is_empty();
    let status = if ready { "True" } else { "False" };
    let mut conditions = current.map(|s| s.conditions.clone()).unwrap_or_default();
    Condition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: if ready { StoreReason::Valid } else { reason }
            .as_str()
            .to_owned(),
        message: if ready {
            "the store's settings are complete".to_owned()
        } else {
            problems.join("; ")
        },
        last_transition_time: rotor_contract::api::rfc3339(std::time::SystemTime::now()),
        observed_generation: generation,
    }
    .set_in(&mut conditions);
    RotorStoreStatus {
        // A spec without exactly one provider reports none.
        provider: provider.view().ok().map(|k| k.name().to_owned()),
        conditions,
        observed_generation: generation,
    }
}

fn status_patch(kind: StoreKind, status: &RotorStoreStatus) -> Patch<serde_json::Value> {
    Patch::Apply(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": kind.as_str(),
        "status": status,
    }))
}

pub async fn reconcile(store: Arc<RotorStore>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = store.namespace().unwrap_or_default();
    let name = store.name_any();
    let mut problems = problems(&store.spec.provider);
    problems.extend(store.spec.budget.iter().flat_map(crate::budget::problems));
    let status = status_for(
        &store.spec.provider,
        &problems,
        StoreReason::InvalidSpec,
        store.metadata.generation,
        store.status.as_ref(),
    );
    let api: Api<RotorStore> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &status_patch(StoreKind::Namespaced, &status),
    )
    .await
    .map_err(Error::Kube)?;
    tracing::info!(%namespace, %name, ready = problems.is_empty(), "store checked");
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// The same for a ClusterRotorStore, which is also useless without path
/// patterns, with an empty namespace selector, or with Secret-based Vault
/// auth (pods of other namespaces cannot mount the Secret, so the webhook
/// refuses them all).
pub async fn reconcile_cluster(store: Arc<ClusterRotorStore>, ctx: Arc<Context>) -> Result<Action> {
    let name = store.name_any();
    let mut problems = problems(&store.spec.provider);
    problems.extend(store.spec.budget.iter().flat_map(crate::budget::problems));
    let selector = &store.spec.allowed_namespaces;
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
    {
        problems.push("spec.allowedNamespaces is empty and matches no namespace; expected matchLabels or matchExpressions".to_owned());
    }
    if store.spec.paths.is_empty() {
        problems.push("spec.paths is empty, so no secret may be read; expected at least one namespace and pattern".to_owned());
    }
    let secret_auth = SecretAuth::of(&store.spec.provider);
    if let Some(auth) = secret_auth {
        problems.push(format!(
            "{} is not allowed on a ClusterRotorStore: pods of other namespaces cannot mount its Secret, so the webhook refuses every pod that names this store; use {} instead",
            auth.field(),
            SecretAuth::INSTEAD
        ));
    }
    let reason = secret_auth.map_or(StoreReason::InvalidSpec, StoreReason::SecretAuthNotAllowed);
    let status = status_for(
        &store.spec.provider,
        &problems,
        reason,
        store.metadata.generation,
        store.status.as_ref(),
    );
    let api: Api<ClusterRotorStore> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &status_patch(StoreKind::Cluster, &status),
    )
    .await
    .map_err(Error::Kube)?;
    tracing::info!(%name, ready = problems.is_empty(), "cluster store checked");
    Ok(Action::requeue(Duration::from_secs(3600)))
}

pub fn error_policy_cluster(
    store: Arc<ClusterRotorStore>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.reconcile_failed(
        crate::rotation::metrics::Reconciler::ClusterRotorStore,
        error,
    );
    tracing::warn!(name = %store.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(30))
}

pub fn error_policy(store: Arc<RotorStore>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failed(crate::rotation::metrics::Reconciler::RotorStore, error);
    tracing::warn!(name = %store.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the RotorStore and ClusterRotorStore reconcilers until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let stores = Controller::new(
        Api::<RotorStore>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "store reconcile");
        }
    });
    let cluster = Controller::new(
        Api::<ClusterRotorStore>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(reconcile_cluster, error_policy_cluster, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "cluster store reconcile");
        }
    });
    tokio::join!(stores, cluster);
}

#[cfg(test)]
mod tests;
