//! Runs the SecretRotationPolicy reconciler (`rotation::reconciler`) as a
//! kube Controller.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::api::Api;
use kube::runtime::{Controller, watcher};
use rotor_crds::api::SecretRotationPolicy;

/// Runs the rotation controller until shutdown.
pub async fn run_rotation(ctx: Arc<crate::rotation::reconciler::RotationContext>) {
    Controller::new(
        Api::<SecretRotationPolicy>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        crate::rotation::reconciler::reconcile,
        crate::rotation::reconciler::error_policy,
        ctx,
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "rotation reconcile");
        }
    })
    .await;
}
