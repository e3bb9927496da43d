//! Runs the SecretRotationPolicy reconciler (`rotation::reconciler`) as a
//! kube Controller, re-checking the policies a store or namespace change
//! concerns as soon as the store index has it, and those whose consumers
//! now serve another version (`serving::Served::changes`).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use rotor_contract::api::SecretRotationPolicy;

use super::watch::IndexChanges;
use crate::serving::Concerned;
use crate::store_index::Touched;

/// Runs the rotation controller until shutdown. Each change of the store
/// index (a store created, changed or deleted; a namespace's labels)
/// requeues the policies it concerns, so their store is resolved again at
/// once, not at their next due time.
pub async fn run_rotation(
    ctx: Arc<crate::rotation::reconciler::RotationContext>,
    changes: IndexChanges,
) {
    let controller = Controller::new(
        Api::<SecretRotationPolicy>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let policies = controller.store();
    let served_policies = policies.clone();
    let requeue = futures_util::stream::unfold(changes, |changes| async move {
        let touched = changes.next().await;
        Some((touched, changes))
    })
    .flat_map(move |touched| futures_util::stream::iter(concerned(&touched, &policies.state())));
    let served = futures_util::stream::unfold(ctx.hub.clone(), |hub| async move {
        let changed = hub.served().changes().await;
        Some((changed, hub))
    })
    .flat_map(move |changed| {
        futures_util::stream::iter(serving_changed(&changed, &served_policies.state()))
    });
    let requeue = futures_util::stream::select(requeue, served);
    controller
        .reconcile_on(requeue)
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

/// The policies whose store resolution `touched` may change: those naming
/// a touched store (a RotorStore in their namespace or a ClusterRotorStore
/// of that name, since a policy's store is looked up in both) and those in
/// a namespace whose labels changed.
pub fn concerned(
    touched: &BTreeSet<Touched>,
    policies: &[Arc<SecretRotationPolicy>],
) -> Vec<ObjectRef<SecretRotationPolicy>> {
    policies
        .iter()
        .filter(|p| {
            let namespace = p.namespace().unwrap_or_default();
            let store = &p.spec.store_ref.name;
            touched.iter().any(|t| match t {
                Touched::Store { namespace: n, name } => *n == namespace && name == store,
                Touched::ClusterStore { name } => name == store,
                Touched::Namespace { name } => *name == namespace,
            })
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The policies of the (namespace, secret) pairs whose consumers now
/// serve another version or digest.
pub fn serving_changed(
    changed: &BTreeSet<Concerned>,
    policies: &[Arc<SecretRotationPolicy>],
) -> Vec<ObjectRef<SecretRotationPolicy>> {
    policies
        .iter()
        .filter(|p| {
            changed.contains(&(
                p.namespace().unwrap_or_default(),
                p.spec.secret_name.clone(),
            ))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use rotor_contract::api::{Generator, Schedule, SecretRotationPolicySpec, StoreRef};

    use super::*;

    fn policy(namespace: &str, name: &str, store: &str) -> Arc<SecretRotationPolicy> {
        let mut p = SecretRotationPolicy::new(
            name,
            SecretRotationPolicySpec {
                store_ref: StoreRef {
                    name: store.into(),
                    kind: "ClusterRotorStore".into(),
                },
                secret_name: format!("{namespace}/{name}"),
                schedule: Schedule::default(),
                generator: Generator {
                    password: None,
                    random_bytes: None,
                    key_pair: None,
                },
                strategy: Default::default(),
                target: None,
                sidecars: vec![],
                paused: false,
            },
        );
        p.metadata.namespace = Some(namespace.into());
        Arc::new(p)
    }

    fn names(refs: Vec<ObjectRef<SecretRotationPolicy>>) -> Vec<String> {
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    #[test]
    fn a_pod_serving_another_version_requeues_the_policies_of_its_secret() {
        let policies = [
            policy("team-a", "db", "shared"),
            policy("team-a", "api", "own"),
            policy("team-b", "db", "shared"),
        ];
        let changed = BTreeSet::from([("team-a".to_owned(), "team-a/db".to_owned())]);
        assert_eq!(names(serving_changed(&changed, &policies)), ["team-a/db"]);
        // The same secret path in another namespace is another policy's.
        let elsewhere = BTreeSet::from([("team-b".to_owned(), "team-a/db".to_owned())]);
        assert!(serving_changed(&elsewhere, &policies).is_empty());
    }

    #[test]
    fn a_change_requeues_exactly_the_policies_it_concerns() {
        let policies = [
            policy("team-a", "db", "shared"),
            policy("team-a", "api", "own"),
            policy("team-b", "db", "shared"),
            policy("team-b", "api", "own"),
        ];
        let run =
            |touched: &[Touched]| names(concerned(&touched.iter().cloned().collect(), &policies));
        assert_eq!(
            run(&[Touched::ClusterStore {
                name: "shared".into()
            }]),
            ["team-a/db", "team-b/db"]
        );
        assert_eq!(
            run(&[Touched::Store {
                namespace: "team-b".into(),
                name: "own".into()
            }]),
            ["team-b/api"]
        );
        // A RotorStore named like a ClusterRotorStore takes precedence in
        // its namespace, so it concerns the policies naming either.
        assert_eq!(
            run(&[Touched::Store {
                namespace: "team-a".into(),
                name: "shared".into()
            }]),
            ["team-a/db"]
        );
        assert_eq!(
            run(&[Touched::Namespace {
                name: "team-a".into()
            }]),
            ["team-a/db", "team-a/api"]
        );
        assert!(
            run(&[Touched::Namespace {
                name: "team-c".into()
            }])
            .is_empty()
        );
        // Several changes at once: each policy once.
        assert_eq!(
            run(&[
                Touched::Namespace {
                    name: "team-b".into()
                },
                Touched::ClusterStore {
                    name: "shared".into()
                },
            ]),
            ["team-a/db", "team-b/db", "team-b/api"]
        );
    }
}
