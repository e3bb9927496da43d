//! The controller's one error type, with a `metric_label()` per kind.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the controller. None carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The webhook's certificate directory cannot be watched.
    #[error("cannot watch the TLS certificate's directory: {0}")]
    Watch(#[source] rotor_watch::Error),

    #[error(transparent)]
    Kube(#[from] kube::Error),

    /// rcgen could not build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    CertGeneration(#[source] rcgen::Error),
    /// A certificate validity bound no certificate can hold.
    #[error("certificate generation failed: date {unix}: {source}")]
    CertDate {
        unix: i64,
        #[source]
        source: time::error::ComponentRange,
    },
    /// A certificate or key file cannot be written.
    #[error("certificate generation failed: {}: {source}", path.display())]
    CertFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `certs` would replace a CA that clients may trust.
    #[error(
        "{} already exists: replacing it breaks every client that trusts the CA in use; pass --force to replace it, or choose another --out",
        path.display()
    )]
    CertsExist { path: PathBuf },
    /// A CA promotion with no staged CA.
    #[error("certificate generation failed: no staged CA to promote")]
    NoStagedCa,
    /// The CA Secret holds the CA's certificate but not its key.
    #[error("certificate generation failed: the CA's key is not in the Secret")]
    CaKeyMissing,
    /// The CA Secret lacks a certificate or key Rotor wrote there.
    #[error("certificate generation failed: Secret {namespace}/{name} is incomplete")]
    CertSecretIncomplete { namespace: String, name: String },
    /// The patch of the webhook configuration's CA bundle cannot be built.
    #[error("certificate generation failed: the webhook's CA bundle patch: {0}")]
    CaBundlePatch(#[source] serde_json::Error),

    #[error(transparent)]
    Store(#[from] rotor_store::Error),

    // Rotation (`rotation/`).
    /// A SecretRotationPolicy spec with these problems, each naming its
    /// field path and what is expected.
    #[error("{}", .0.join("; "))]
    InvalidPolicy(Vec<String>),
    /// A status in a phase that needs a pending version without one.
    #[error("{0} without a pending version")]
    NoPendingVersion(crate::rotation::machine::Phase),
    #[error("the system random number generator failed")]
    Random,
    /// A rotation target's secret value (or its absence) that the target
    /// cannot work with; never quotes the value.
    #[error("target secret value: {0}")]
    TargetValue(String),
    /// Rolling a target back failed; the step is retried.
    #[error("rolling back the target failed: {0}")]
    TargetRollback(crate::rotation::target::TargetFailure),
    /// Key pair generation failed; says which step.
    #[error("{0}")]
    KeyGeneration(&'static str),
    /// A directory of YAML files (`--stores`, `--policies`) or one of its
    /// documents cannot be read or parsed.
    #[error("{document}: {problem}")]
    Manifest { document: String, problem: String },

    /// `--policies` holds invalid policies or stores; nothing acted on any.
    #[error(
        "{} has {} problem{}, nothing was done: {}",
        dir.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.join("; ")
    )]
    InvalidManifests { dir: PathBuf, problems: Vec<String> },

    /// A store spec that sets no provider or several.
    #[error("store {store:?}: {source}")]
    Provider {
        store: String,
        #[source]
        source: rotor_contract::api::NotOneProvider,
    },

    /// A store's `spec.budget` that cannot be used; the problem names the
    /// field and what is expected.
    #[error("store {store:?}: {problem}")]
    InvalidBudget { store: String, problem: String },

    /// A store this mode cannot build (a provider it cannot reach, or
    /// credentials it does not hold).
    #[error("store {store:?}: {reason}")]
    UnsupportedStore { store: String, reason: String },

    /// The policy's namespace has no rotator ServiceAccount, the identity
    /// rotation acts as there (`identity`).
    #[error(
        "namespace {namespace:?} has no ServiceAccount {service_account:?}, the identity rotation \
         acts as in a namespace: create it (kubectl -n {namespace} create serviceaccount \
         {service_account}) and let it into the store (README: \"Identities: whose credentials \
         rotation uses\")"
    )]
    RotatorMissing {
        namespace: String,
        service_account: String,
    },

    /// The TokenRequest API gave no token for the rotator account.
    #[error(
        "cannot request a token for ServiceAccount {namespace}/{service_account} (audience \
         {audience:?}): {problem}"
    )]
    RotatorToken {
        namespace: String,
        service_account: String,
        audience: String,
        problem: String,
    },

    /// An AWS store without `roleArn`: rotation in a cluster has no
    /// credentials of its own to use instead.
    #[error(
        "store {store:?}: rotation in a cluster assumes spec.provider.aws.roleArn with a token of \
         {subject}, and the store sets no roleArn; set it to a role whose trust policy admits \
         that subject"
    )]
    AwsRoleMissing { store: String, subject: String },

    /// A local store's key file cannot be loaded.
    #[error("store {store:?}: {source}")]
    KeyFile {
        store: String,
        #[source]
        source: rotor_envelope::Error,
    },

    /// A standalone policy names a store its manifests do not define.
    #[error("policy {policy}: store {store:?} is not defined in {}", manifests.display())]
    StoreNotDefined {
        policy: String,
        store: String,
        manifests: PathBuf,
    },

    /// A sidecar's stream reads a store the standalone policy files do
    /// not define, so the controller has nothing to check it with.
    #[error("store {store:?} is not defined in the policy files")]
    StoreNotInPolicies { store: String },

    /// A policy in a cluster names a store that is missing or does not
    /// allow its namespace or secret, as the store index has it now.
    #[error(transparent)]
    StoreRefused(#[from] crate::store_index::Refusal),

    /// A file or directory the controller reads or writes.
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The async runtime cannot start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `--kubeconfig` cannot be read or used.
    #[error("--kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Standalone's channel cannot be set up: the flag and what is wrong.
    #[error("{flag}: {problem}")]
    Channel { flag: &'static str, problem: String },

    /// A listening address that cannot be bound.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Listen {
        addr: SocketAddr,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A server that stopped with an error.
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The webhook's serving certificate or key cannot be loaded.
    #[error("TLS certificate {} / key {}: {source}", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The labels [`Error::metric_label`] returns itself; with those of
    /// the errors it wraps ([`Error::metric_labels`]), every one.
    const OWN_METRIC_LABELS: [&'static str; 18] = [
        "kube",
        "certs",
        "runtime",
        "invalid_policy",
        "no_pending_version",
        "random",
        "target_value",
        "target_rollback",
        "key_generation",
        "manifest",
        "store_spec",
        "rotator_missing",
        "rotator_token",
        "store_not_resolved",
        "file",
        "listen",
        "tls",
        "channel",
    ];

    /// Every label [`Error::metric_label`] returns, those of the watcher,
    /// the stores and the envelope included: a counter by error kind starts
    /// at 0 for each, so an `increase()` alert sees the first one.
    pub fn metric_labels() -> std::collections::BTreeSet<&'static str> {
        let mut all = rotor_store::Error::metric_labels();
        all.extend(Self::OWN_METRIC_LABELS);
        all.extend(rotor_watch::Error::METRIC_LABELS);
        all
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Watch(e) => e.metric_label(),
            Error::Kube(_) => "kube",
            Error::CertGeneration(_)
            | Error::CertDate { .. }
            | Error::CertFile { .. }
            | Error::NoStagedCa
            | Error::CaKeyMissing
            | Error::CertSecretIncomplete { .. }
            | Error::CaBundlePatch(_)
            | Error::CertsExist { .. } => "certs",
            Error::Runtime(_) => "runtime",
            Error::Kubeconfig { .. } => "kube",
            Error::Store(e) => e.metric_label(),
            Error::InvalidPolicy(_) => "invalid_policy",
            Error::NoPendingVersion(_) => "no_pending_version",
            Error::Random => "random",
            Error::TargetValue(_) => "target_value",
            Error::TargetRollback(_) => "target_rollback",
            Error::KeyGeneration(_) => "key_generation",
            Error::Manifest { .. } | Error::InvalidManifests { .. } => "manifest",
            Error::Provider { .. }
            | Error::UnsupportedStore { .. }
            | Error::InvalidBudget { .. } => "store_spec",
            Error::KeyFile { source, .. } => source.metric_label(),
            Error::RotatorMissing { .. } => "rotator_missing",
            Error::RotatorToken { .. } => "rotator_token",
            Error::AwsRoleMissing { .. } => "store_spec",
            Error::StoreNotDefined { .. }
            | Error::StoreNotInPolicies { .. }
            | Error::StoreRefused(_) => "store_not_resolved",
            Error::File { .. } => "file",
            Error::Channel { .. } => "channel",
            Error::Listen { .. } | Error::Serve { .. } => "listen",
            Error::Tls { .. } => "tls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn metric_labels_lists_every_label() {
        rotor_fixtures::metric_labels::assert_lists_every_label(
            &Error::OWN_METRIC_LABELS,
            include_str!("error.rs"),
        );
        let all = Error::metric_labels();
        assert!(
            all.contains("inotify") && all.contains("unreachable") && all.contains("key_file"),
            "{all:?}"
        );
    }
}
