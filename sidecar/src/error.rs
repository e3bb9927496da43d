use std::path::PathBuf;

/// Errors of the sidecar. They name files, secrets and stores, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("output directory {}: {problem}", path.display())]
    Target { path: PathBuf, problem: String },

    #[error("annotations file {}: {problem}", path.display())]
    Annotations { path: PathBuf, problem: String },

    #[error(transparent)]
    Contract(#[from] rotor_crds::annotations::AnnotationErrors),

    #[error(transparent)]
    Store(#[from] rotor_store::Error),

    #[error("file {file:?}: {problem}")]
    Render { file: String, problem: String },

    #[error("{0}")]
    Config(String),

    /// The controller's CA bundle (`--controller-ca` or
    /// `--controller-ca-pem`) cannot be used; `origin` names which.
    #[error("{origin}: {problem}")]
    Channel { origin: String, problem: String },

    /// `--once` could not write the files: the cause, after a bounded
    /// retry of retryable failures, or at once for a permanent one.
    #[error("--once: {0}")]
    Once(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Target { .. } => "target",
            Error::Annotations { .. } | Error::Contract(_) => "annotations",
            Error::Store(e) => e.metric_label(),
            Error::Render { .. } => "render",
            Error::Config(_) => "config",
            Error::Channel { .. } => "channel",
            Error::Once(_) => "once",
        }
    }
}
