//! The webhook's admission metrics: `rotor_admission_requests_total
//! {operation,result}`, `rotor_admission_duration_seconds` and
//! `rotor_admission_denials_total{reason}`, and for refused injections
//! `rotor_admission_inject_denials_total{reason}` (an [`InjectReason`]).
//! Every label value is known in
//! advance and exported from the start at 0, so an `increase()` alert
//! catches the first failure.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use super::inject::InjectReason;

type Labels = Vec<(&'static str, &'static str)>;

/// The operation of a review (`unknown` when it could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    Unknown,
}

impl Operation {
    pub const ALL: [Self; 5] = [
        Self::Create,
        Self::Update,
        Self::Delete,
        Self::Connect,
        Self::Unknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Connect => "connect",
            Self::Unknown => "unknown",
        }
    }

    /// From a review's `request.operation`.
    pub fn of(text: Option<&str>) -> Self {
        match text {
            Some("CREATE") => Self::Create,
            Some("UPDATE") => Self::Update,
            Some("DELETE") => Self::Delete,
            Some("CONNECT") => Self::Connect,
            _ => Self::Unknown,
        }
    }
}

/// How a review was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed unchanged.
    Allowed,
    /// Allowed with a patch (injected).
    Patched,
    /// Refused; the reason is counted in the denials.
    Denied(Denial),
    /// A review that could not be read as one (`allowed: false`, 400).
    Invalid,
    /// No review answer at all: the body was too large, not JSON, or not
    /// read in time.
    Error,
}

impl Outcome {
    pub const RESULTS: [&'static str; 5] = ["allowed", "patched", "denied", "invalid", "error"];

    pub fn result(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Patched => "patched",
            Self::Denied(_) => "denied",
            Self::Invalid => "invalid",
            Self::Error => "error",
        }
    }
}

/// Why a pod was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A `rotor.dev/` annotation is invalid.
    InvalidAnnotations,
    /// `rotor.dev/inject` or `rotor.dev/store` changed after injection.
    AnnotationChanged,
    /// The store does not exist or may not be used from the namespace.
    StoreNotAllowed,
    /// An `exec:` reload on a store that has not allowed them.
    ExecNotAllowed,
    /// The pod cannot be injected as it is (a reserved name, root user…);
    /// counted by reason in the inject denials too.
    CannotInject(InjectReason),
    /// The review is over one of the webhook's limits (`limits`).
    TooLarge,
    /// The answer would be larger than `server::MAX_ANSWER_BYTES`.
    AnswerTooLarge,
    /// The patch could not be built.
    Internal,
}

impl Denial {
    /// Every denial but [`Denial::CannotInject`], which [`Denial::all`]
    /// adds once per [`InjectReason`].
    const OTHERS: [Self; 7] = [
        Self::InvalidAnnotations,
        Self::AnnotationChanged,
        Self::StoreNotAllowed,
        Self::ExecNotAllowed,
        Self::TooLarge,
        Self::AnswerTooLarge,
        Self::Internal,
    ];

    /// Every denial, a refused injection once per reason.
    pub fn all() -> impl Iterator<Item = Self> {
        Self::OTHERS
            .into_iter()
            .chain(InjectReason::ALL.map(Self::CannotInject))
    }

    /// Why an injection was refused, for [`Denial::CannotInject`].
    pub fn inject_reason(self) -> Option<InjectReason> {
        match self {
            Self::CannotInject(reason) => Some(reason),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidAnnotations => "invalid_annotations",
            Self::AnnotationChanged => "annotation_changed",
            Self::StoreNotAllowed => "store_not_allowed",
            Self::ExecNotAllowed => "exec_not_allowed",
            Self::CannotInject(_) => "cannot_inject",
            Self::TooLarge => "too_large",
            Self::AnswerTooLarge => "answer_too_large",
            Self::Internal => "internal",
        }
    }
}

/// The admission metrics; clones share the series.
#[derive(Clone)]
pub struct AdmissionMetrics {
    requests: Family<Labels, Counter>,
    duration: Histogram,
    denials: Family<Labels, Counter>,
    inject_denials: Family<Labels, Counter>,
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        let requests = Family::<Labels, Counter>::default();
        let denials = Family::<Labels, Counter>::default();
        let inject_denials = Family::<Labels, Counter>::default();
        for op in Operation::ALL {
            for result in Outcome::RESULTS {
                let _ =
                    requests.get_or_create(&vec![("operation", op.label()), ("result", result)]);
            }
        }
        for d in Denial::all() {
            let _ = denials.get_or_create(&vec![("reason", d.label())]);
        }
        for r in InjectReason::ALL {
            let _ = inject_denials.get_or_create(&vec![("reason", r.label())]);
        }
        Self {
            requests,
            // 1 ms to about 16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            denials,
            inject_denials,
        }
    }
}

impl AdmissionMetrics {
    /// Registers the series under `registry` (prefixed `rotor_` there).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "admission_requests",
            "AdmissionReviews answered, by operation and result (allowed, patched, denied, invalid, error)",
            self.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "From a review's arrival to its answer, body read included",
            self.duration.clone(),
        );
        registry.register(
            "admission_denials",
            "Refused pods, by reason",
            self.denials.clone(),
        );
        registry.register(
            "admission_inject_denials",
            "Pods refused because they cannot be injected as they are, by reason",
            self.inject_denials.clone(),
        );
    }

    /// Counts one answered review.
    pub fn observe(&self, operation: Operation, outcome: Outcome, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("operation", operation.label()),
                ("result", outcome.result()),
            ])
            .inc();
        if let Outcome::Denied(d) = outcome {
            self.denials
                .get_or_create(&vec![("reason", d.label())])
                .inc();
            if let Some(r) = d.inject_reason() {
                self.inject_denials
                    .get_or_create(&vec![("reason", r.label())])
                    .inc();
            }
        }
        self.duration.observe(seconds);
    }

    /// The metrics alone, with the build and process metrics, for the
    /// `webhook` command's `/metrics`.
    pub fn encode_alone(&self) -> String {
        let mut root = Registry::default();
        rotor_telemetry::metrics::register(&mut root, "rotor-controller");
        self.register(root.sub_registry_with_prefix("rotor"));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &root).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_starts_at_zero() {
        let m = AdmissionMetrics::default();
        let text = m.encode_alone();
        assert!(
            text.contains(r#"rotor_admission_requests_total{operation="create",result="error"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rotor_admission_denials_total{reason="too_large"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("rotor_admission_duration_seconds_count 0"),
            "{text}"
        );
        m.observe(Operation::Create, Outcome::Denied(Denial::TooLarge), 0.01);
        let text = m.encode_alone();
        assert!(
            text.contains(
                r#"rotor_admission_requests_total{operation="create",result="denied"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"rotor_admission_denials_total{reason="too_large"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rotor_admission_inject_denials_total{reason="volume_conflict"} 0"#),
            "{text}"
        );
        m.observe(
            Operation::Create,
            Outcome::Denied(Denial::CannotInject(InjectReason::VolumeConflict)),
            0.01,
        );
        let text = m.encode_alone();
        assert!(
            text.contains(r#"rotor_admission_inject_denials_total{reason="volume_conflict"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rotor_admission_denials_total{reason="cannot_inject"} 1"#),
            "{text}"
        );
        assert_eq!(
            text.matches("rotor_admission_inject_denials_total{")
                .count(),
            InjectReason::ALL.len()
        );
        let series = Operation::ALL.len() * Outcome::RESULTS.len();
        assert_eq!(
            text.matches("rotor_admission_requests_total{").count(),
            series
        );
    }
}
