//! The controller's metrics: rotations by result, rotation duration, time
//! until every consumer acknowledged, consumers still pending, consumers
//! by the class of the version they serve, each
//! policy's next rotation, and failed reconciles by controller and error
//! kind (`Error::metric_label`); beside them, the build and process
//! metrics every Rotor binary exports. The counters start at 0 for every
//! result, and for every error kind of each reconciler the process runs
//! ([`RotationMetrics::with_reconcilers`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct RotationMetrics {
    registry: Registry,
    rotations: Family<Labels, Counter>,
    duration: Histogram,
    ack_time: Histogram,
    pending: Family<Labels, Gauge>,
    serving: Family<Labels, Gauge>,
    next_rotation: Family<Labels, Gauge>,
    failures: Family<Labels, Counter>,
    /// No labels; present once the controller manages the certificate.
    certificate_expiry: Family<Labels, Gauge>,
    single_user_window: Histogram,
    /// Requests to stores and their throttling (`crate::budget`).
    pub stores: crate::budget::StoreMetrics,
}

/// The reconcilers whose failures are counted, by their `controller`
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciler {
    SecretRotationPolicy,
    ClusterRotorStore,
    RotorStore,
    /// `rotor-controller standalone`: a policy file's rotation.
    Standalone,
}

impl Reconciler {
    /// The reconcilers `rotor-controller run` starts.
    pub const CLUSTER: [Self; 3] = [
        Self::SecretRotationPolicy,
        Self::ClusterRotorStore,
        Self::RotorStore,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::SecretRotationPolicy => "secretrotationpolicy",
            Self::ClusterRotorStore => "clusterrotorstore",
            Self::RotorStore => "rotorstore",
            Self::Standalone => "standalone",
        }
    }
}

/// Every result [`RotationMetrics::finished`] counts: each starts at 0, so
/// an `increase()` alert sees the first one.
pub const RESULTS: [&str; 3] = ["success", "degraded", "rolled_back"];

impl Default for RotationMetrics {
    fn default() -> Self {
        let mut root = Registry::default();
        rotor_telemetry::metrics::register(&mut root, "rotor-controller");
        let registry = root.sub_registry_with_prefix("rotor");
        let rotations = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        let ack_time = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let pending = Family::<Labels, Gauge>::default();
        let serving = Family::<Labels, Gauge>::default();
        let next_rotation = Family::<Labels, Gauge>::default();
        let failures = Family::<Labels, Counter>::default();
        let certificate_expiry = Family::<Labels, Gauge>::default();
        for result in RESULTS {
            let _ = rotations.get_or_create(&vec![("result".to_owned(), result.to_owned())]);
        }
        let single_user_window = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "rotation_single_user_window_seconds",
            "singleUser targets: from the password change to promotion, while consumers hold a dead password",
            single_user_window.clone(),
        );
        registry.register(
            "rotations",
            "Finished rotations by result: success, degraded, rolled_back",
            rotations.clone(),
        );
        registry.register(
            "rotation_duration_seconds",
            "From a rotation's due time to its promotion",
            duration.clone(),
        );
        registry.register(
            "rotation_ack_seconds",
            "From staging a version to every consumer acknowledging it",
            ack_time.clone(),
        );
        registry.register(
            "rotation_consumers_pending",
            "Consumers that have not acknowledged the pending version, per policy",
            pending.clone(),
        );
        registry.register(
            "consumers_serving",
            "Consumers by the class of the version they serve (current, pending, previous, older, \
             unknown), per policy",
            serving.clone(),
        );
        registry.register(
            "rotation_next_timestamp_seconds",
            "When each policy's next rotation is due (Unix seconds); in the past while a rotation \
             is due or in flight",
            next_rotation.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciles by controller and error kind",
            failures.clone(),
        );
        registry.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the self-managed serving certificate this replica serves expires (Unix seconds)",
            certificate_expiry.clone(),
        );
        let stores = crate::budget::StoreMetrics::default();
        stores.register(registry);
        Self {
            stores,
            certificate_expiry,
            registry: root,
            rotations,
            duration,
            ack_time,
            pending,
            serving,
            next_rotation,
            failures,
            single_user_window,
        }
    }
}

fn failure_labels(controller: Reconciler, kind: &str) -> Labels {
    vec![
        ("controller".to_owned(), controller.label().to_owned()),
        ("error".to_owned(), kind.to_owned()),
    ]
}

/// Metrics of a part above rotation served in the same exposition (the
/// channel's): rotation owns the trait, the part implements it.
pub trait Exposed {
    fn register(&self, registry: &mut Registry);
}

impl RotationMetrics {
    pub fn finished(&self, result: &str, seconds: f64) {
        self.rotations
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc();
        if result != "rolled_back" {
            self.duration.observe(seconds);
        }
    }

    /// The serving certificate this replica serves expires at `unix`.
    pub fn serving_certificate_expires(&self, unix: i64) {
        self.certificate_expiry.get_or_create(&vec![]).set(unix);
    }

    pub fn single_user_window(&self, seconds: f64) {
        self.single_user_window.observe(seconds);
    }

    pub fn acknowledged(&self, seconds: f64) {
        self.ack_time.observe(seconds);
    }

    pub fn pending(&self, policy: &str, count: usize) {
        self.pending
            .get_or_create(&vec![("policy".to_owned(), policy.to_owned())])
            .set(count as i64);
    }

    /// How many of the policy's consumers serve each class of version
    /// (`status.serving`); every class is set, 0 included.
    pub fn serving(&self, policy: &str, counts: &rotor_contract::api::ServingCounts) {
        for class in rotor_contract::api::VersionClass::ALL {
            let labels = vec![
                ("policy".to_owned(), policy.to_owned()),
                ("version_class".to_owned(), class.label().to_owned()),
            ];
            self.serving
                .get_or_create(&labels)
                .set(i64::from(counts.get(class)));
        }
    }

    /// The policy's next rotation as its status says (`nextRotation`);
    /// nothing while it has none.
    pub fn next_rotation(
        &self,
        policy: &str,
        status: &rotor_contract::api::SecretRotationPolicyStatus,
    ) {
        let labels = vec![("policy".to_owned(), policy.to_owned())];
        let unix = status
            .next_rotation
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        match unix {
            Some(unix) => {
                let secs = i64::try_from(unix.as_secs()).unwrap_or(i64::MAX);
                self.next_rotation.get_or_create(&labels).set(secs);
            }
            None => {
                self.next_rotation.remove(&labels);
            }
        }
    }

    /// Counts a failed reconcile of `controller` by the error's kind.
    pub fn reconcile_failed(&self, controller: Reconciler, error: &crate::Error) {
        self.failures
            .get_or_create(&failure_labels(controller, error.metric_label()))
            .inc();
    }

    /// Exports the failure counters of `controllers` at 0 for every error
    /// kind ([`crate::Error::metric_labels`]), so an `increase()` alert
    /// sees the first failure.
    pub fn with_reconcilers(self, controllers: &[Reconciler]) -> Self {
        for &controller in controllers {
            for kind in crate::Error::metric_labels() {
                let _ = self
                    .failures
                    .get_or_create(&failure_labels(controller, kind));
            }
        }
        self
    }

    /// Adds the webhook's admission metrics to this exposition.
    pub fn with_admission(mut self, admission: &crate::webhook::metrics::AdmissionMetrics) -> Self {
        admission.register(self.registry.sub_registry_with_prefix("rotor"));
        self
    }

    /// Adds another part's metrics (the channel's `rotor_channel_*`).
    pub fn with(mut self, part: &dyn Exposed) -> Self {
        part.register(self.registry.sub_registry_with_prefix("rotor"));
        self
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_are_counted_by_controller_and_error_kind() {
        let metrics = RotationMetrics::default();
        let error = crate::Error::StoreNotDefined {
            policy: "db".into(),
            store: "no-such-store".into(),
            manifests: "/etc/rotor".into(),
        };
        metrics.reconcile_failed(Reconciler::RotorStore, &error);
        metrics.reconcile_failed(Reconciler::RotorStore, &error);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"rotor_reconcile_failures_total{controller="rotorstore",error="store_not_resolved"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn every_rotation_result_starts_at_zero_and_the_expiry_appears_once_set() {
        let metrics = RotationMetrics::default();
        let text = metrics.encode();
        for result in RESULTS {
            assert!(
                text.contains(&format!("rotor_rotations_total{{result=\"{result}\"}} 0\n")),
                "{text}"
            );
        }
        assert!(
            !text.contains("certificate_expiry_timestamp_seconds "),
            "{text}"
        );
        metrics.serving_certificate_expires(1_900_000_000);
        assert!(
            metrics
                .encode()
                .contains("\nrotor_webhook_certificate_expiry_timestamp_seconds{} 1900000000\n"),
            "{}",
            metrics.encode()
        );
    }

    #[test]
    fn every_error_kind_of_each_reconciler_started_starts_at_zero() {
        let text = RotationMetrics::default()
            .with_reconcilers(&[Reconciler::Standalone])
            .encode();
        for kind in crate::Error::metric_labels() {
            let series = format!(
                "rotor_reconcile_failures_total{{controller=\"standalone\",error=\"{kind}\"}} 0\n"
            );
            assert!(text.contains(&series), "{series} missing in {text}");
        }
        assert!(!text.contains("controller=\"rotorstore\""), "{text}");
    }

    #[test]
    fn the_build_and_process_metrics_sit_beside_the_rotation_ones() {
        let text = RotationMetrics::default().encode();
        assert!(text.contains("rotor_build_info{version=\""), "{text}");
        assert!(text.contains("binary=\"rotor-controller\"} 1\n"), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(
            text.contains("\nrotor_rotation_duration_seconds_count 0\n"),
            "{text}"
        );
    }

    #[test]
    fn the_next_rotation_is_exported_per_policy_while_the_status_has_one() {
        let m = RotationMetrics::default();
        let mut status = rotor_contract::api::SecretRotationPolicyStatus {
            next_rotation: Some("2030-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        m.next_rotation("app/db", &status);
        let text = m.encode();
        assert!(
            text.contains(
                "\nrotor_rotation_next_timestamp_seconds{policy=\"app/db\"} 1893456000\n"
            ),
            "{text}"
        );
        status.next_rotation = None;
        m.next_rotation("app/db", &status);
        assert!(!m.encode().contains("policy=\"app/db\""), "{}", m.encode());
    }

    #[test]
    fn the_single_user_window_is_a_histogram() {
        let m = RotationMetrics::default();
        m.single_user_window(0.25);
        let text = m.encode();
        assert!(
            text.contains("\nrotor_rotation_single_user_window_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nrotor_rotation_single_user_window_seconds_sum 0.25\n"),
            "{text}"
        );
    }
}
