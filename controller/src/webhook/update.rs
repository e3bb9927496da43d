//! What of Rotor's annotations may change on a pod that exists (UPDATE).
//!
//! A pod's containers and volumes cannot change after creation, so what
//! Rotor injected at CREATE is what the pod keeps: `rotor.dev/inject` and
//! `rotor.dev/store` (which decided the sidecar and its credentials) can
//! never be added, removed or changed, on any pod; and a pod without
//! Rotor's sidecar ([`injected`]) cannot gain or change a
//! `rotor.dev/secret.*` (nothing would deliver it, and it must never look
//! like a consumer). Everything else the sidecar applies live, so a change
//! passes the rules CREATE applies (the caller's job).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use rotor_contract::annotations;

use crate::pod_injection::injected;

/// What an UPDATE did to one annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Changed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Added => "be added to",
            Change::Removed => "be removed from",
            Change::Changed => "change on",
        })
    }
}

/// Why an UPDATE is refused. The message is derived from the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateDenied {
    /// `rotor.dev/inject` or `rotor.dev/store` added, removed or changed.
    #[error(
        "annotation {key} cannot {change} a running pod: it decides the pod's sidecar and its store credentials, and the pod's spec cannot change after creation; recreate the pod through its controller (for a Deployment, change its template)"
    )]
    Fixed { key: &'static str, change: Change },
    /// A `rotor.dev/secret.*` added or changed on a pod that has no sidecar.
    #[error(
        "annotation {key} cannot {change} a pod without Rotor's sidecar: the sidecar is injected only when a pod is created with rotor.dev/inject: \"true\", and the pod's spec cannot change after creation; recreate the pod through its controller with rotor.dev/inject: \"true\""
    )]
    SecretWithoutSidecar { key: String, change: Change },
}

impl UpdateDenied {
    /// The reason the AdmissionReview's status carries (and logs use).
    pub fn reason(&self) -> &'static str {
        match self {
            UpdateDenied::Fixed { .. } => "RotorAnnotationFixed",
            UpdateDenied::SecretWithoutSidecar { .. } => "RotorNoSidecar",
        }
    }
}

/// An allowed UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// No `rotor.dev/` annotation added or changed (removals of what may
    /// go, or other fields): nothing to validate.
    Unchanged,
    /// Annotations added or changed: validate them as CREATE does.
    Changed,
}

/// The `rotor.dev/` annotations fixed at creation.
const FIXED: [&str; 2] = [annotations::INJECT, annotations::STORE];

/// A pod's `rotor.dev/` annotations, except the webhook's own status.
pub fn rotor_annotations(pod: Option<&Pod>) -> BTreeMap<&str, &str> {
    pod.and_then(|p| p.metadata.annotations.as_ref())
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(annotations::PREFIX) && *k != annotations::STATUS)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Every `rotor.dev/` annotation that differs between `old` and `new`.
fn changes<'a>(
    old: &BTreeMap<&'a str, &'a str>,
    new: &BTreeMap<&'a str, &'a str>,
) -> Vec<(&'a str, Change)> {
    let mut out: Vec<(&str, Change)> = new
        .iter()
        .filter_map(|(k, v)| match old.get(k) {
            None => Some((*k, Change::Added)),
            Some(was) if was != v => Some((*k, Change::Changed)),
            Some(_) => None,
        })
        .collect();
    out.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| (*k, Change::Removed)),
    );
    out
}

/// The rules for an UPDATE from `old` (the stored pod; `None` is read as a
/// pod without annotations) to `new`.
pub fn check(old: Option<&Pod>, new: &Pod) -> Result<Allowed, UpdateDenied> {
    let before = rotor_annotations(old);
    let after = rotor_annotations(Some(new));
    let changes = changes(&before, &after);
    if let Some((key, change)) = changes
        .iter()
        .find_map(|(k, c)| FIXED.iter().find(|f| **f == *k).map(|f| (*f, *c)))
    {
        return Err(UpdateDenied::Fixed { key, change });
    }
    let gains_secret = changes
        .iter()
        .find(|(k, c)| k.starts_with(annotations::SECRET_PREFIX) && *c != Change::Removed);
    if let Some((key, change)) = gains_secret
        && old.and_then(injected).is_none()
    {
        return Err(UpdateDenied::SecretWithoutSidecar {
            key: (*key).to_owned(),
            change: *change,
        });
    }
    Ok(if changes.iter().all(|(_, c)| *c == Change::Removed) {
        Allowed::Unchanged
    } else {
        Allowed::Changed
    })
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;
    use crate::pod_injection::tests::{injected_pod, plain};

    fn with(mut pod: Pod, edit: &[(&str, Option<&str>)]) -> Pod {
        let a = pod.metadata.annotations.get_or_insert_default();
        for (k, v) in edit {
            match v {
                Some(v) => a.insert((*k).to_owned(), (*v).to_owned()),
                None => a.remove(*k),
            };
        }
        pod
    }

    #[test]
    fn inject_and_store_never_change_on_any_pod() {
        for old in [injected_pod(true), plain()] {
            for key in FIXED {
                let removed = with(old.clone(), &[(key, None)]);
                assert_eq!(
                    check(Some(&old), &removed),
                    Err(UpdateDenied::Fixed {
                        key,
                        change: Change::Removed
                    })
                );
                let changed = with(old.clone(), &[(key, Some("other"))]);
                assert_eq!(
                    check(Some(&old), &changed).map_err(|e| e.reason()),
                    Err("RotorAnnotationFixed")
                );
            }
        }
        // Added to a pod that had no Rotor annotation: the decoy.
        let bare = Pod {
            metadata: ObjectMeta::default(),
            ..plain()
        };
        let decoy = with(bare.clone(), &[(annotations::INJECT, Some("true"))]);
        let denied = check(Some(&bare), &decoy).unwrap_err();
        assert_eq!(
            denied,
            UpdateDenied::Fixed {
                key: annotations::INJECT,
                change: Change::Added
            }
        );
        assert!(
            denied
                .to_string()
                .starts_with("annotation rotor.dev/inject cannot be added to a running pod")
                && denied
                    .to_string()
                    .contains("the pod's spec cannot change after creation"),
            "{denied}"
        );
    }

    #[test]
    fn secrets_come_only_to_a_pod_with_the_sidecar() {
        let key = "rotor.dev/secret.api";
        let edit = [(key, Some("shop/api"))];
        let old = plain();
        let denied = check(Some(&old), &with(old.clone(), &edit)).unwrap_err();
        assert_eq!(denied.reason(), "RotorNoSidecar");
        assert!(
            denied.to_string().starts_with(
                "annotation rotor.dev/secret.api cannot be added to a pod without Rotor's sidecar"
            ),
            "{denied}"
        );
        let changed = with(old.clone(), &[("rotor.dev/secret.db", Some("shop/x"))]);
        assert!(check(Some(&old), &changed).is_err());
        // Taking one away is fine, and needs no validation.
        let removed = with(old.clone(), &[("rotor.dev/secret.db", None)]);
        assert_eq!(check(Some(&old), &removed), Ok(Allowed::Unchanged));
        // The injected pod may gain one: validated as CREATE would.
        let old = injected_pod(false);
        assert_eq!(
            check(Some(&old), &with(old.clone(), &edit)),
            Ok(Allowed::Changed)
        );
    }

    #[test]
    fn other_updates_and_the_status_annotation_need_nothing() {
        let old = injected_pod(true);
        assert_eq!(check(Some(&old), &old), Ok(Allowed::Unchanged));
        let status = with(old.clone(), &[(annotations::STATUS, None)]);
        assert_eq!(check(Some(&old), &status), Ok(Allowed::Unchanged));
        let other = with(old.clone(), &[("example.com/x", Some("y"))]);
        assert_eq!(check(Some(&old), &other), Ok(Allowed::Unchanged));
        let refresh = with(old.clone(), &[(annotations::REFRESH, Some("10s"))]);
        assert_eq!(check(Some(&old), &refresh), Ok(Allowed::Changed));
    }
}
