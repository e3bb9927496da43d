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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Kube(_) => "kube",
            Error::Certs(_) => "certs",
            Error::Store(e) => e.metric_label(),
        }
    }
}
