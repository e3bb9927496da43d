//! Which pod serves which version: the last version and digest each pod's
//! sidecar acknowledged for each secret, and when ([`Served`], kept by the
//! channel's hub from every answered request), merged into a policy's
//! `status.consumers` and counted into `status.serving` ([`fill`]). A
//! change of what a pod serves wakes the policies of its namespace and
//! secret ([`Served::changes`]), so the counts stay current between
//! rotations too, not only while one asks the consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::SystemTime;

use rotor_crds::api::{ConsumerStatus, Phase, SecretRotationPolicyStatus};
use tokio::sync::Notify;

use crate::rotation::machine::rfc3339;

/// What one pod last said it serves of one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub version: Option<String>,
    pub digest: Option<String>,
    pub at: SystemTime,
}

/// (namespace, secret): the policies a change concerns.
pub type Concerned = (String, String);

#[derive(Default)]
struct Inner {
    /// `namespace/pod` → secret → its last report. Bounded by the
    /// connected pods (a pod's reports go with its last stream) and the
    /// secrets each was admitted for.
    by_pod: BTreeMap<String, BTreeMap<String, Report>>,
    /// Changed since [`Served::changes`] last took them.
    dirty: BTreeSet<Concerned>,
}

/// The last acknowledged version, digest and time per pod and secret.
#[derive(Default)]
pub struct Served {
    inner: Mutex<Inner>,
    changed: Notify,
}

fn namespace_of(pod: &str) -> &str {
    pod.split_once('/').map_or("", |(ns, _)| ns)
}

impl Served {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("served index lock")
    }

    /// Records `pod`'s answer about `secret`. A different version or
    /// digest than before marks the secret's policies as changed.
    pub fn record(
        &self,
        pod: &str,
        secret: &str,
        version: Option<String>,
        digest: Option<String>,
        at: SystemTime,
    ) {
        let mut inner = self.lock();
        let reports = inner.by_pod.entry(pod.to_owned()).or_default();
        let changed = reports
            .get(secret)
            .is_none_or(|r| r.version != version || r.digest != digest);
        reports.insert(
            secret.to_owned(),
            Report {
                version,
                digest,
                at,
            },
        );
        if changed {
            inner
                .dirty
                .insert((namespace_of(pod).to_owned(), secret.to_owned()));
            drop(inner);
            self.changed.notify_one();
        }
    }

    /// Drops `pod`'s reports (its last stream ended); a policy's status
    /// keeps what the pod last reported.
    pub fn forget(&self, pod: &str) {
        self.lock().by_pod.remove(pod);
    }

    /// What `pod` last reported about `secret`.
    pub fn report(&self, pod: &str, secret: &str) -> Option<Report> {
        self.lock().by_pod.get(pod)?.get(secret).cloned()
    }

    /// Waits for changes, then takes every (namespace, secret) changed
    /// since the last call.
    pub async fn changes(&self) -> BTreeSet<Concerned> {
        loop {
            let dirty = std::mem::take(&mut self.lock().dirty);
            if !dirty.is_empty() {
                return dirty;
            }
            self.changed.notified().await;
        }
    }
}

/// Brings `status.consumers` up to date with `served` for `secret` and
/// counts `status.serving`. Between rotations (`Idle`) the list becomes
/// exactly `pods`, the policy's consumers now (a new pod is added, a gone
/// one dropped); during one, the state machine owns the list and only
/// the serving fields change. A consumer without a report keeps what it
/// last reported.
pub fn fill(
    status: &mut SecretRotationPolicyStatus,
    pods: &[String],
    secret: &str,
    served: &Served,
) {
    if Phase::of(status) == Phase::Idle {
        let wanted: BTreeSet<&str> = pods.iter().map(String::as_str).collect();
        status
            .consumers
            .retain(|c| wanted.contains(c.name.as_str()));
        for pod in pods {
            if !status.consumers.iter().any(|c| &c.name == pod) {
                status.consumers.push(ConsumerStatus {
                    name: pod.clone(),
                    ..ConsumerStatus::default()
                });
            }
        }
    }
    for c in &mut status.consumers {
        if let Some(report) = served.report(&c.name, secret) {
            c.serving_version = report.version;
            c.serving_digest = report.digest;
            c.reported_at = Some(rfc3339(report.at));
        }
    }
    status.count_serving();
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rotor_crds::api::{ServingCounts, VersionClass};

    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn rotating(phase: Phase) -> SecretRotationPolicyStatus {
        SecretRotationPolicyStatus {
            phase: Some(phase),
            current_version: Some("3".into()),
            pending_version: (phase != Phase::Idle).then(|| "4".into()),
            previous_version: Some("2".into()),
            ..SecretRotationPolicyStatus::default()
        }
    }

    fn pods(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("shop/{n}")).collect()
    }

    #[test]
    fn one_pod_on_pending_is_counted_as_pending_while_propagating() {
        let served = Served::default();
        for pod in ["a", "b", "c"] {
            served.record(
                &format!("shop/{pod}"),
                "shop/db",
                Some("3".into()),
                Some("d3".into()),
                at(0),
            );
        }
        served.record(
            "shop/b",
            "shop/db",
            Some("4".into()),
            Some("d4".into()),
            at(5),
        );
        // Served for another secret: not counted for this one.
        served.record("shop/c", "shop/api", Some("4".into()), None, at(5));
        let mut s = rotating(Phase::Propagating);
        s.consumers = pods(&["a", "b", "c"])
            .into_iter()
            .map(|name| ConsumerStatus {
                name,
                ..ConsumerStatus::default()
            })
            .collect();
        fill(&mut s, &pods(&["a", "b", "c"]), "shop/db", &served);
        assert_eq!(
            s.serving,
            Some(ServingCounts {
                current: 2,
                pending: 1,
                total: 3,
                ..ServingCounts::default()
            })
        );
        assert_eq!(s.serving_summary.as_deref(), Some("2/3"));
        let b = s.consumers.iter().find(|c| c.name == "shop/b").unwrap();
        assert_eq!(b.class(&s), VersionClass::Pending);
        assert_eq!(b.serving_digest.as_deref(), Some("d4"));
        assert_eq!(b.reported_at.as_deref(), Some(rfc3339(at(5)).as_str()));
    }

    #[test]
    fn between_rotations_the_list_follows_the_consumers_and_keeps_old_reports() {
        let served = Served::default();
        let mut s = rotating(Phase::Idle);
        s.consumers = vec![
            ConsumerStatus {
                name: "shop/gone".into(),
                serving_version: Some("3".into()),
                ..ConsumerStatus::default()
            },
            ConsumerStatus {
                name: "shop/kept".into(),
                serving_version: Some("2".into()),
                ..ConsumerStatus::default()
            },
        ];
        served.record("shop/new", "shop/db", Some("1".into()), None, at(1));
        fill(
            &mut s,
            &pods(&["kept", "new", "silent"]),
            "shop/db",
            &served,
        );
        let names: Vec<&str> = s.consumers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["shop/kept", "shop/new", "shop/silent"]);
        assert_eq!(
            s.serving,
            Some(ServingCounts {
                previous: 1,
                older: 1,
                unknown: 1,
                total: 3,
                ..ServingCounts::default()
            })
        );
        // During a rotation the machine's list stays as it is.
        let mut r = rotating(Phase::Promoting);
        r.consumers = vec![ConsumerStatus {
            name: "shop/gone".into(),
            ..ConsumerStatus::default()
        }];
        fill(&mut r, &pods(&["new"]), "shop/db", &served);
        assert_eq!(r.consumers.len(), 1);
        assert_eq!(r.serving_summary.as_deref(), Some("0/1"));
    }

    #[tokio::test]
    async fn only_a_changed_version_or_digest_wakes_the_policies() {
        let served = Served::default();
        served.record(
            "shop/a",
            "shop/db",
            Some("3".into()),
            Some("d".into()),
            at(0),
        );
        served.record("other/b", "other/db", None, None, at(0));
        assert_eq!(
            served.changes().await,
            BTreeSet::from([
                ("other".to_owned(), "other/db".to_owned()),
                ("shop".to_owned(), "shop/db".to_owned())
            ])
        );
        // The same answer again (a rotation asking once more) is no change.
        served.record(
            "shop/a",
            "shop/db",
            Some("3".into()),
            Some("d".into()),
            at(1),
        );
        assert!(served.lock().dirty.is_empty(), "no change marked");
        assert_eq!(served.report("shop/a", "shop/db").unwrap().at, at(1));
        served.record(
            "shop/a",
            "shop/db",
            Some("3".into()),
            Some("e".into()),
            at(2),
        );
        assert_eq!(
            served.changes().await,
            BTreeSet::from([("shop".to_owned(), "shop/db".to_owned())])
        );
        served.forget("shop/a");
        assert_eq!(served.report("shop/a", "shop/db"), None);
    }
}
