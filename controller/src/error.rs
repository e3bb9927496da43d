/// Errors of the controller. None carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),

    #[error(transparent)]
    Kube(#[from] kube::Error),

    #[error("certificate generation failed: {0}")]
    Certs(String),

    #[error(transparent)]
    Store(#[from] rotor_store::Error),

    // Rotation (`rotation/`).
    /// A SecretRotationPolicy spec with these problems, each naming its
    /// field path and what is expected.
    #[error("{}", .0.join("; "))]
    InvalidPolicy(Vec<String>),
    /// A `status.phase` this controller does not know (say, written by a
    /// newer one): the step leaves the status alone and retries.
    #[error("status.phase {0:?} is not a known phase")]
    UnknownPhase(String),
    /// A status in a phase that needs a pending version without one.
    #[error("{0} without a pending version")]
    NoPendingVersion(crate::rotation::machine::Phase),
    #[error("the system random number generator failed")]
    Random,
    /// Key pair generation failed; says which step.
    #[error("{0}")]
    KeyGeneration(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Kube(_) => "kube",
            Error::Certs(_) => "certs",
            Error::Store(e) => e.metric_label(),
            Error::InvalidPolicy(_) => "invalid_policy",
            Error::UnknownPhase(_) => "unknown_phase",
            Error::NoPendingVersion(_) => "no_pending_version",
            Error::Random => "random",
            Error::KeyGeneration(_) => "key_generation",
        }
    }
}
