//! The sidecar's one error type, with a `metric_label()` per kind; errors name
//! files, secrets and stores, never values.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the sidecar. They name files, secrets and stores, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("output directory {}: {problem}", path.display())]
    Target { path: PathBuf, problem: String },

    #[error("annotations file {}: {problem}", path.display())]
    Annotations { path: PathBuf, problem: String },

    #[error(transparent)]
    Contract(#[from] rotor_contract::annotations::AnnotationErrors),

    #[error(transparent)]
    Store(#[from] rotor_store::Error),

    #[error("file {file:?}: {problem}")]
    Render { file: String, problem: String },

    /// A store flag is missing for the store kind asked for.
    #[error("{flag} is required {when}")]
    MissingFlag {
        flag: &'static str,
        when: &'static str,
    },

    /// The store's key file cannot be used.
    #[error(transparent)]
    Key(#[from] rotor_envelope::Error),

    /// The Kubernetes API cannot be configured (no in-cluster config and
    /// no kubeconfig).
    #[error("cannot reach the Kubernetes API (in-cluster config or kubeconfig): {0}")]
    KubeConfig(#[source] kube::Error),

    /// A file the sidecar writes for itself (not a secret's) cannot be
    /// written.
    #[error("cannot write {what} to {}: {source}", path.display())]
    OwnFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The controller's CA bundle (`--controller-ca` or
    /// `--controller-ca-pem`) cannot be used; `origin` names which.
    #[error("{origin}: {problem}")]
    Channel { origin: String, problem: String },

    /// `--once` met a problem no retry fixes (a template that does not
    /// render, a secret the store refuses): it stops at once.
    #[error("--once: {0}")]
    Once(OnceProblem),

    /// `--once` retried retryable failures (a store unreachable or
    /// throttled) `attempts` times and gave up.
    #[error("--once: gave up after {attempts} attempts: {problem}")]
    OnceGaveUp { attempts: u32, problem: OnceProblem },

    /// A listener the sidecar opens cannot bind.
    #[error("{flag} {addr}: cannot listen")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// `--push-addr` off loopback: the push port is not authenticated.
    #[error(
        "--push-addr {addr}: {} is not a loopback address, and the push port is not authenticated; expected 127.0.0.1:PORT or [::1]:PORT (the controller reaches the sidecar over the channel it dials, --controller-addr)",
        addr.ip()
    )]
    PushNotLoopback { addr: SocketAddr },
}

/// Why `--once` could not write the files: the secret concerned, when one
/// is, and the problem, which names no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnceProblem {
    pub secret: Option<String>,
    pub problem: String,
}

impl std::fmt::Display for OnceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.secret {
            Some(secret) => write!(f, "secret {secret:?}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Target { .. } => "target",
            Error::Annotations { .. } | Error::Contract(_) => "annotations",
            Error::Store(e) => e.metric_label(),
            Error::Render { .. } => "render",
            Error::MissingFlag { .. } => "config",
            Error::Key(_) => "key",
            Error::KubeConfig(_) => "kube_config",
            Error::OwnFile { .. } => "own_file",
            Error::Channel { .. } => "channel",
            Error::Once(_) => "once",
            Error::OnceGaveUp { .. } => "once_gave_up",
            Error::Listen { .. } => "listen",
            Error::PushNotLoopback { .. } => "config",
        }
    }
}
