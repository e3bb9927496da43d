//! The stores' one error type, with a `metric_label()` per kind; errors name
//! the store and the secret, never a value.

use std::path::PathBuf;

use crate::Stage;

/// Errors of the stores. They name the store and the secret, never a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "store file {} does not exist; `rotor store put` creates it, or check --store / ROTOR_STORE",
        path.display()
    )]
    Missing { path: PathBuf },

    #[error("store file {}: cannot {operation}", path.display())]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("store file {} failed its integrity check: {problem}", path.display())]
    Corrupt { path: PathBuf, problem: String },

    #[error(
        "store file {} went back from generation {seen} to {found}: an older copy was put in place; \
         refusing it and keeping the last good data (put the newest copy back; a restarted process \
         would accept this one)",
        path.display()
    )]
    Replayed {
        path: PathBuf,
        seen: u64,
        found: u64,
    },

    #[error("store file {}", path.display())]
    Envelope {
        path: PathBuf,
        #[source]
        source: rotor_envelope::Error,
    },

    #[error("secret {name:?} not found in store {store}")]
    SecretNotFound { store: String, name: String },

    #[error("secret {name:?} in store {store} has no version {version} (versions: {available})")]
    VersionNotFound {
        store: String,
        name: String,
        version: String,
        available: String,
    },

    #[error(
        "secret {name:?} in store {store} no longer has version {version}: retention removed it \
         (the secret keeps its newest {max_versions} versions and every version labelled CURRENT, \
         PENDING or PREVIOUS; unlabelled versions up to {removed_through} are gone)"
    )]
    VersionRemoved {
        store: String,
        name: String,
        version: u64,
        max_versions: u32,
        removed_through: u64,
    },

    #[error("secret {name:?} in store {store} has no version labelled {stage}")]
    StageNotFound {
        store: String,
        name: String,
        stage: Stage,
    },

    #[error(transparent)]
    InvalidName(#[from] rotor_contract::names::InvalidName),

    #[error("secret {name:?} version {version} in store {store}: {problem}")]
    Conflict {
        store: String,
        name: String,
        version: String,
        problem: String,
    },

    #[error("{store}: secret {name:?}: permission denied: {detail}")]
    PermissionDenied {
        store: String,
        name: String,
        detail: String,
    },

    #[error("{store}: authentication failed: {detail}")]
    Auth { store: String, detail: String },

    /// The token source has no token to log in with (see
    /// [`crate::TokenSource`]); its error says what is missing.
    #[error("{store}: no token to log in with: {source}")]
    Token {
        store: String,
        #[source]
        source: crate::token_source::SourceError,
    },

    #[error("{store}: unreachable: {detail}")]
    Unreachable { store: String, detail: String },

    #[error("{store}: secret {name:?}: throttled: {detail}")]
    Throttled {
        store: String,
        name: String,
        detail: String,
    },

    #[error("{store}: secret {name:?}: malformed: {detail}")]
    Malformed {
        store: String,
        name: String,
        detail: String,
    },

    #[error("{store}: configuration: {detail}")]
    Config { store: String, detail: String },

    #[error("value for secret {name:?} is {len} bytes; {problem}")]
    BadValue {
        name: String,
        len: usize,
        problem: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The labels [`Error::metric_label`] returns itself; with the
    /// envelope's ([`Error::metric_labels`]), every one it can return.
    const OWN_METRIC_LABELS: [&'static str; 14] = [
        "store_missing",
        "io",
        "corrupt",
        "replayed",
        "not_found",
        "invalid_input",
        "conflict",
        "permission_denied",
        "auth",
        "token",
        "unreachable",
        "throttled",
        "malformed",
        "config",
    ];

    /// Every label [`Error::metric_label`] returns, the envelope's
    /// included: a counter by reason starts at 0 for each, so an
    /// `increase()` alert sees the first one.
    pub fn metric_labels() -> std::collections::BTreeSet<&'static str> {
        Self::OWN_METRIC_LABELS
            .into_iter()
            .chain(rotor_envelope::Error::METRIC_LABELS)
            .collect()
    }

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Missing { .. } => "store_missing",
            Error::Io { .. } => "io",
            Error::Corrupt { .. } => "corrupt",
            Error::Replayed { .. } => "replayed",
            Error::Envelope { source, .. } => source.metric_label(),
            Error::SecretNotFound { .. }
            | Error::VersionNotFound { .. }
            | Error::VersionRemoved { .. }
            | Error::StageNotFound { .. } => "not_found",
            Error::InvalidName(_) | Error::BadValue { .. } => "invalid_input",
            Error::Conflict { .. } => "conflict",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Auth { .. } => "auth",
            Error::Token { .. } => "token",
            Error::Unreachable { .. } => "unreachable",
            Error::Throttled { .. } => "throttled",
            Error::Malformed { .. } => "malformed",
            Error::Config { .. } => "config",
        }
    }

    /// True when trying again later can succeed: the store was unreachable,
    /// throttled us, or had a transient I/O problem. Not found, permission
    /// denied, malformed data and bad input are not retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::Throttled { .. }
                | Error::Io { .. }
                | Error::Missing { .. }
        )
    }

    /// True when the secret, version or stage asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::SecretNotFound { .. }
                | Error::VersionNotFound { .. }
                | Error::VersionRemoved { .. }
                | Error::StageNotFound { .. }
        )
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
            all.contains("unreachable") && all.contains("integrity"),
            "{all:?}"
        );
    }
}
