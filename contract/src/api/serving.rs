//! Which pod serves which version of a rotated secret. Each consumer's
//! version comes from its sidecar's last acknowledgement over the channel
//! (`status.consumers[].servingVersion`); [`classify`] places it against
//! the policy's CURRENT, PENDING and PREVIOUS versions, and
//! [`ServingCounts::of`] counts the consumers of each class for
//! `status.serving` and the `SERVING` column (`status.servingSummary`).

use serde::{Deserialize, Serialize};

use super::{ConsumerStatus, SecretRotationPolicyStatus};

/// Where the version a consumer serves stands in the policy's rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VersionClass {
    /// The policy's `currentVersion`.
    Current,
    /// The version being rolled out (`pendingVersion`).
    Pending,
    /// The version before the current one (`previousVersion`).
    Previous,
    /// Any other version.
    Older,
    /// The consumer has not reported a version since the controller
    /// started (or serves none).
    Unknown,
}

impl VersionClass {
    pub const ALL: [VersionClass; 5] = [
        VersionClass::Current,
        VersionClass::Pending,
        VersionClass::Previous,
        VersionClass::Older,
        VersionClass::Unknown,
    ];

    /// The `version_class` label of `rotor_consumers_serving`.
    pub fn label(self) -> &'static str {
        match self {
            VersionClass::Current => "current",
            VersionClass::Pending => "pending",
            VersionClass::Previous => "previous",
            VersionClass::Older => "older",
            VersionClass::Unknown => "unknown",
        }
    }

    /// As `rotor status` prints it.
    pub fn heading(self) -> &'static str {
        match self {
            VersionClass::Current => "CURRENT",
            VersionClass::Pending => "PENDING",
            VersionClass::Previous => "PREVIOUS",
            VersionClass::Older => "OLDER",
            VersionClass::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for VersionClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.heading())
    }
}

/// The class of `version` in a policy whose status is `status`.
pub fn classify(version: Option<&str>, status: &SecretRotationPolicyStatus) -> VersionClass {
    let Some(version) = version else {
        return VersionClass::Unknown;
    };
    let is = |v: &Option<String>| v.as_deref() == Some(version);
    if is(&status.current_version) {
        VersionClass::Current
    } else if is(&status.pending_version) {
        VersionClass::Pending
    } else if is(&status.previous_version) {
        VersionClass::Previous
    } else {
        VersionClass::Older
    }
}

impl ConsumerStatus {
    /// The class of the version this consumer last reported serving.
    pub fn class(&self, status: &SecretRotationPolicyStatus) -> VersionClass {
        classify(self.serving_version.as_deref(), status)
    }
}

/// How many consumers serve each class of version (`status.serving`).
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ServingCounts {
    pub current: u32,
    pub pending: u32,
    pub previous: u32,
    /// Versions older than previous (or otherwise not one of the three).
    pub older: u32,
    /// Consumers that have reported no version yet.
    pub unknown: u32,
    /// Every consumer.
    pub total: u32,
}

impl ServingCounts {
    /// Counts `status.consumers` by the class of the version each serves.
    pub fn of(status: &SecretRotationPolicyStatus) -> Self {
        let mut counts = Self::default();
        for c in &status.consumers {
            *counts.get_mut(c.class(status)) += 1;
            counts.total += 1;
        }
        counts
    }

    /// The number of consumers serving `class`.
    pub fn get(&self, class: VersionClass) -> u32 {
        match class {
            VersionClass::Current => self.current,
            VersionClass::Pending => self.pending,
            VersionClass::Previous => self.previous,
            VersionClass::Older => self.older,
            VersionClass::Unknown => self.unknown,
        }
    }

    fn get_mut(&mut self, class: VersionClass) -> &mut u32 {
        match class {
            VersionClass::Current => &mut self.current,
            VersionClass::Pending => &mut self.pending,
            VersionClass::Previous => &mut self.previous,
            VersionClass::Older => &mut self.older,
            VersionClass::Unknown => &mut self.unknown,
        }
    }

    /// `current/total`, as the `SERVING` column shows it.
    pub fn summary(&self) -> String {
        format!("{}/{}", self.current, self.total)
    }
}

impl SecretRotationPolicyStatus {
    /// Sets `serving` and `servingSummary` from `consumers`.
    pub fn count_serving(&mut self) {
        let counts = ServingCounts::of(self);
        self.serving_summary = Some(counts.summary());
        self.serving = Some(counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(consumers: &[Option<&str>]) -> SecretRotationPolicyStatus {
        SecretRotationPolicyStatus {
            current_version: Some("3".into()),
            pending_version: Some("4".into()),
            previous_version: Some("2".into()),
            consumers: consumers
                .iter()
                .enumerate()
                .map(|(i, v)| ConsumerStatus {
                    name: format!("shop/pod-{i}"),
                    serving_version: v.map(str::to_owned),
                    ..ConsumerStatus::default()
                })
                .collect(),
            ..SecretRotationPolicyStatus::default()
        }
    }

    #[test]
    fn versions_are_classed_against_current_pending_and_previous() {
        let s = status(&[]);
        assert_eq!(classify(Some("3"), &s), VersionClass::Current);
        assert_eq!(classify(Some("4"), &s), VersionClass::Pending);
        assert_eq!(classify(Some("2"), &s), VersionClass::Previous);
        assert_eq!(classify(Some("1"), &s), VersionClass::Older);
        assert_eq!(classify(None, &s), VersionClass::Unknown);
        // Without a rotation in flight nothing is pending, and a policy
        // that never rotated has no previous version.
        let idle = SecretRotationPolicyStatus {
            current_version: Some("1".into()),
            ..SecretRotationPolicyStatus::default()
        };
        assert_eq!(classify(Some("1"), &idle), VersionClass::Current);
        assert_eq!(classify(Some("0"), &idle), VersionClass::Older);
    }

    #[test]
    fn consumers_are_counted_by_class_and_summarised_as_current_over_total() {
        let mut s = status(&[Some("3"), Some("4"), Some("3"), Some("2"), Some("1"), None]);
        s.count_serving();
        let counts = s.serving.unwrap();
        assert_eq!(
            counts,
            ServingCounts {
                current: 2,
                pending: 1,
                previous: 1,
                older: 1,
                unknown: 1,
                total: 6,
            }
        );
        let by_class: u32 = VersionClass::ALL.iter().map(|c| counts.get(*c)).sum();
        assert_eq!(by_class, counts.total, "every consumer is in one class");
        assert_eq!(s.serving_summary.as_deref(), Some("2/6"));
        let mut none = status(&[]);
        none.count_serving();
        assert_eq!(none.serving_summary.as_deref(), Some("0/0"));
    }

    #[test]
    fn labels_and_headings_are_distinct() {
        let labels: std::collections::BTreeSet<_> =
            VersionClass::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), VersionClass::ALL.len());
        for c in VersionClass::ALL {
            assert_eq!(c.heading(), c.label().to_uppercase());
        }
    }
}
