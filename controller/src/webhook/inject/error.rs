//! Why a pod cannot be injected: one variant per refusal, each naming the
//! field or object, its value and what is expected, counted by
//! [`InjectReason`] in `rotor_admission_inject_denials_total{reason}`.

use std::path::PathBuf;

use rotor_contract::api::NotOneProvider;

use super::SECRETS_VOLUME;

/// A refused injection; its text is the message `kubectl` shows.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the pod has no spec")]
    NoSpec,
    #[error("annotation rotor.dev/file-owner: uid 0 is root; expected a non-root uid")]
    RootFileOwner,
    #[error(
        "the app runs as root (runAsUser: 0) and Rotor's sidecar never does; run the app as a non-root user, or set rotor.dev/file-owner to a non-root uid:gid"
    )]
    AppRunsAsRoot,
    #[error(
        "container {container:?} already mounts a volume named {SECRETS_VOLUME:?} differently from what Rotor injects (read-only at {mount_path}); Rotor's volume names are reserved: rename that mount"
    )]
    MountConflict {
        container: String,
        mount_path: String,
    },
    #[error(
        "the pod already has a volume named {volume:?} that is not the one Rotor injects; Rotor's volume names are reserved: rename that volume"
    )]
    VolumeConflict { volume: String },
    #[error(
        "the pod already has an {what} named {name:?}, a name Rotor reserves for its own; rename it"
    )]
    ReservedContainer { what: &'static str, name: String },
    #[error(
        "the pod already has an {what} named {name:?} that differs from the one Rotor injects (image, args, env, securityContext, mounts); Rotor's container names are reserved: rename it"
    )]
    ContainerDiffers { what: &'static str, name: String },
    /// `store` is the store's kind and quoted name.
    #[error("{store}: {source}")]
    NotOneProvider {
        store: String,
        source: NotOneProvider,
    },
    #[error("{store} has no Vault auth")]
    NoVaultAuth { store: String },
    #[error(
        "the controller cannot read its CA bundle {} for the sidecar's channel: {source}",
        path.display()
    )]
    CaUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{origin}: {problem}; expected the PEM CA bundle of the controller's serving certificate"
    )]
    CaInvalid { origin: String, problem: PemProblem },
}

/// What is wrong with a PEM bundle.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    #[error("not a PEM certificate: {0}")]
    NotCertificate(rustls::pki_types::pem::Error),
    #[error("holds no certificate")]
    Empty,
}

/// The kind of a refused injection, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectReason {
    NoSpec,
    RootFileOwner,
    AppRunsAsRoot,
    MountConflict,
    VolumeConflict,
    ReservedContainer,
    ContainerDiffers,
    NotOneProvider,
    NoVaultAuth,
    CaUnreadable,
    CaInvalid,
}

impl InjectReason {
    /// Every reason, for counters that start at 0 for each.
    pub const ALL: [Self; 11] = [
        Self::NoSpec,
        Self::RootFileOwner,
        Self::AppRunsAsRoot,
        Self::MountConflict,
        Self::VolumeConflict,
        Self::ReservedContainer,
        Self::ContainerDiffers,
        Self::NotOneProvider,
        Self::NoVaultAuth,
        Self::CaUnreadable,
        Self::CaInvalid,
    ];

    /// The reason as metrics and the audit annotation spell it.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoSpec => "no_spec",
            Self::RootFileOwner => "root_file_owner",
            Self::AppRunsAsRoot => "app_runs_as_root",
            Self::MountConflict => "mount_conflict",
            Self::VolumeConflict => "volume_conflict",
            Self::ReservedContainer => "reserved_container",
            Self::ContainerDiffers => "container_differs",
            Self::NotOneProvider => "not_one_provider",
            Self::NoVaultAuth => "no_vault_auth",
            Self::CaUnreadable => "ca_unreadable",
            Self::CaInvalid => "ca_invalid",
        }
    }
}

impl InjectError {
    /// Which kind of refusal this is.
    pub fn reason(&self) -> InjectReason {
        match self {
            Self::NoSpec => InjectReason::NoSpec,
            Self::RootFileOwner => InjectReason::RootFileOwner,
            Self::AppRunsAsRoot => InjectReason::AppRunsAsRoot,
            Self::MountConflict { .. } => InjectReason::MountConflict,
            Self::VolumeConflict { .. } => InjectReason::VolumeConflict,
            Self::ReservedContainer { .. } => InjectReason::ReservedContainer,
            Self::ContainerDiffers { .. } => InjectReason::ContainerDiffers,
            Self::NotOneProvider { .. } => InjectReason::NotOneProvider,
            Self::NoVaultAuth { .. } => InjectReason::NoVaultAuth,
            Self::CaUnreadable { .. } => InjectReason::CaUnreadable,
            Self::CaInvalid { .. } => InjectReason::CaInvalid,
        }
    }

    /// The reason's metric label.
    pub fn metric_label(&self) -> &'static str {
        self.reason().label()
    }
}

#[cfg(test)]
mod tests {
    use super::InjectReason;

    /// Where `reason` is in [`InjectReason::ALL`]: an exhaustive match, so
    /// a new reason does not compile until it is listed.
    fn position(reason: InjectReason) -> usize {
        match reason {
            InjectReason::NoSpec => 0,
            InjectReason::RootFileOwner => 1,
            InjectReason::AppRunsAsRoot => 2,
            InjectReason::MountConflict => 3,
            InjectReason::VolumeConflict => 4,
            InjectReason::ReservedContainer => 5,
            InjectReason::ContainerDiffers => 6,
            InjectReason::NotOneProvider => 7,
            InjectReason::NoVaultAuth => 8,
            InjectReason::CaUnreadable => 9,
            InjectReason::CaInvalid => 10,
        }
    }

    #[test]
    fn all_lists_every_reason_once() {
        for (i, reason) in InjectReason::ALL.iter().enumerate() {
            assert_eq!(position(*reason), i, "{reason:?}");
        }
        let labels: std::collections::BTreeSet<_> =
            InjectReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), InjectReason::ALL.len());
    }
}
