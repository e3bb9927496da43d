//! Leader election with a `coordination.k8s.io` Lease: one replica holds it
//! and only that one rotates. The holder renews every `ttl / 3`; another
//! replica takes it over once it has not been renewed for `ttl`. The time
//! of an attempt is a parameter, so tests need no wall clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::chrono::{DateTime, Utc};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Keeps trying to hold the Lease `name` in `namespace` as `identity`, and
/// sets `leader` while it does. A Lease it creates is owned by `owner`
/// (the controller's ServiceAccount), so it goes when Rotor is uninstalled.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    ttl: Duration,
    leader: Arc<AtomicBool>,
    owner: Option<OwnerReference>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    loop {
        let attempt = try_acquire_owned(&api, &name, &identity, ttl, owner.as_ref(), Utc::now());
        let held = match attempt.await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "lease update failed");
                false
            }
        };
        if held != leader.swap(held, Ordering::AcqRel) {
            tracing::info!(%identity, leader = held, "leadership changed");
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

/// One attempt at `now`: renew our Lease or take over an expired one.
pub async fn try_acquire(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<bool, kube::Error> {
    try_acquire_owned(api, name, identity, ttl, None, now).await
}

/// [`try_acquire`], creating the Lease with `owner` as its owner.
pub async fn try_acquire_owned(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    ttl: Duration,
    owner: Option<&OwnerReference>,
    now: DateTime<Utc>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(now);
    let spec = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(ttl.as_secs() as i32),
        renew_time: Some(now.clone()),
        acquire_time: Some(now.clone()),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(r)) if r.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let ours = current.holder_identity.as_deref() == Some(identity);
            let expired = current
                .renew_time
                .as_ref()
                .map(|t| t.0)
                .zip(current.lease_duration_seconds)
                .is_none_or(|(renewed, secs)| {
                    now.0 > renewed + k8s_openapi::chrono::Duration::seconds(i64::from(secs))
                });
            if !ours && !expired {
                return Ok(false);
            }
            let mut next = spec(current.lease_transitions.unwrap_or(0) + i32::from(!ours));
            if ours {
                next.acquire_time = current.acquire_time;
            }
            lease.spec = Some(next);
            // The resourceVersion read above makes a racing replica's write fail.
            match api.replace(name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(r)) if r.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests;
