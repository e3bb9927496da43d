//! Which pod serves which version: the last version and digest each pod's
//! sidecar acknowledged for each secret, and when ([`Served`], kept by the
//! channel's hub from every answered request), merged into a policy's
//! `status.consumers` and counted into `status.serving` ([`fill`]). A
//! change of what a pod serves wakes the policies of its namespace and
//! secret ([`Served::changes`]), so the counts stay current between
//! rotations too, not only while one asks the consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rotor_contract::api::{ConsumerStatus, Phase, SecretRotationPolicyStatus};
use tokio::sync::Notify;

use rotor_contract::api::rfc3339;

impl Inner {
    /// `pod` is connected: no longer among the gone.
    fn back(&mut self, pod: &str) {
        if let Some(since) = self.by_pod.get_mut(pod).and_then(|p| p.gone_since.take()) {
            self.gone.remove(&(since, pod.to_owned()));
        }
    }
}

/// What one pod last said it serves of one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub version: Option<String>,
    pub digest: Option<String>,
    pub at: SystemTime,
}

/// (namespace, secret): the policies a change concerns.
pub type Concerned = (String, String);

/// How long the reports of a pod whose last stream ended are kept: the
/// pod still serves what it last wrote, and a rotation that starts
/// meanwhile shows it so.
pub const KEEP_DISCONNECTED: Duration = Duration::from_secs(3600);

/// The most disconnected pods whose reports are kept; the longest gone
/// are dropped first.
pub const MAX_DISCONNECTED: usize = 10_000;

#[derive(Default)]
struct Pod {
    /// Secret → its last report.
    reports: BTreeMap<String, Report>,
    /// When its last stream ended; `None` while connected.
    gone_since: Option<SystemTime>,
}

#[derive(Default)]
struct Inner {
    /// `namespace/pod` → its reports. Bounded by the connected pods, the
    /// secrets each was admitted for, and [`MAX_DISCONNECTED`] pods gone
    /// for less than [`KEEP_DISCONNECTED`].
    by_pod: BTreeMap<String, Pod>,
    /// (gone since, pod) of each disconnected pod in `by_pod`, oldest
    /// first.
    gone: BTreeSet<(SystemTime, String)>,
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
        inner.back(pod);
        let reports = &mut inner.by_pod.entry(pod.to_owned()).or_default().reports;
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

    /// `pod` holds a stream again.
    pub fn connected(&self, pod: &str) {
        self.lock().back(pod);
    }

    /// `pod`'s last stream ended at `now`: its reports are kept for
    /// [`KEEP_DISCONNECTED`], and those of pods gone longer (or beyond
    /// [`MAX_DISCONNECTED`]) are dropped.
    pub fn disconnected(&self, pod: &str, now: SystemTime) {
        let mut inner = self.lock();
        inner.back(pod);
        if let Some(p) = inner.by_pod.get_mut(pod) {
            p.gone_since = Some(now);
            inner.gone.insert((now, pod.to_owned()));
        }
        let cutoff = now
            .checked_sub(KEEP_DISCONNECTED)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while let Some((since, _)) = inner.gone.first() {
            if *since >= cutoff && inner.gone.len() <= MAX_DISCONNECTED {
                break;
            }
            if let Some((_, name)) = inner.gone.pop_first() {
                inner.by_pod.remove(&name);
            }
        }
    }

    /// What `pod` last reported about `secret`.
    pub fn report(&self, pod: &str, secret: &str) -> Option<Report> {
        self.lock().by_pod.get(pod)?.reports.get(secret).cloned()
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
/// the serving fields change. A consumer without a report here (its
/// stream ended, or the controller restarted) keeps what it last reported
/// in `before`, the status as it was read (a rotation's start empties the
/// list).
pub fn fill(
    status: &mut SecretRotationPolicyStatus,
    before: &[ConsumerStatus],
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
        } else if c.reported_at.is_none()
            && let Some(was) = before.iter().find(|b| b.name == c.name)
        {
            c.serving_version.clone_from(&was.serving_version);
            c.serving_digest.clone_from(&was.serving_digest);
            c.reported_at.clone_from(&was.reported_at);
        }
    }
    status.count_serving();
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use rotor_contract::api::{ServingCounts, VersionClass};

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
        fill(&mut s, &[], &pods(&["a", "b", "c"]), "shop/db", &served);
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
            &[],
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
        fill(&mut r, &[], &pods(&["new"]), "shop/db", &served);
        assert_eq!(r.consumers.len(), 1);
        assert_eq!(r.serving_summary.as_deref(), Some("0/1"));
    }

    /// A rotation's start empties `status.consumers`; a pod whose stream
    /// has ended since it last answered keeps that answer.
    #[test]
    fn a_disconnected_pod_keeps_what_it_last_reported() {
        let served = Served::default();
        served.record("shop/on", "shop/db", Some("4".into()), None, at(9));
        let before = vec![ConsumerStatus {
            name: "shop/off".into(),
            serving_version: Some("3".into()),
            serving_digest: Some("d3".into()),
            reported_at: Some(rfc3339(at(1))),
            ..ConsumerStatus::default()
        }];
        let mut s = rotating(Phase::Propagating);
        s.consumers = pods(&["on", "off"])
            .into_iter()
            .map(|name| ConsumerStatus {
                name,
                ..ConsumerStatus::default()
            })
            .collect();
        fill(&mut s, &before, &pods(&["on", "off"]), "shop/db", &served);
        assert_eq!(s.consumers[1].serving_digest.as_deref(), Some("d3"));
        assert_eq!(s.serving_summary.as_deref(), Some("1/2"));
        assert_eq!(s.serving.unwrap().pending, 1);
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
    }

    #[test]
    fn a_disconnected_pods_reports_are_kept_for_a_while_and_bounded() {
        let served = Served::default();
        served.record("shop/a", "shop/db", Some("3".into()), None, at(0));
        served.record("shop/b", "shop/db", Some("3".into()), None, at(0));
        served.disconnected("shop/a", at(10));
        assert!(
            served.report("shop/a", "shop/db").is_some(),
            "kept at first"
        );
        // Another pod leaving an hour later sweeps it out; a connected one
        // stays however old its report.
        served.disconnected(
            "shop/c",
            at(10) + KEEP_DISCONNECTED + Duration::from_secs(1),
        );
        assert_eq!(served.report("shop/a", "shop/db"), None);
        assert!(served.report("shop/b", "shop/db").is_some());
        // Back before the sweep: kept.
        served.disconnected("shop/b", at(20));
        served.connected("shop/b");
        served.disconnected("shop/x", at(20) + KEEP_DISCONNECTED * 2);
        assert!(served.report("shop/b", "shop/db").is_some());
        // At most MAX_DISCONNECTED gone pods, the longest gone dropped.
        for i in 0..=MAX_DISCONNECTED as u64 {
            let pod = format!("shop/p{i}");
            served.record(&pod, "shop/db", None, None, at(0));
            served.disconnected(&pod, at(100) + Duration::from_millis(i));
        }
        assert_eq!(served.report("shop/p0", "shop/db"), None);
        assert!(served.report("shop/p1", "shop/db").is_some());
        assert!(served.report("shop/b", "shop/db").is_some());
    }
}
