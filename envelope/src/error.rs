//! The envelope crate's one error type; it never carries key material or
//! plaintext.

use std::path::PathBuf;

/// Errors of the envelope library. None of them ever carries key material or
/// plaintext: they name fields, key ids and record identities only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "sealed record is truncated: field `{field}` needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },

    #[error("not a Rotor sealed record: bad magic bytes (expected \"RTRE\")")]
    BadMagic,

    #[error(
        "unsupported sealed-record format version {found} (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u8, supported: u8 },

    #[error("malformed sealed record: field `{field}` {problem}")]
    Malformed {
        field: &'static str,
        problem: String,
    },

    #[error("key id {key_id:?} not available (loaded key ids: {loaded})")]
    KeyUnavailable { key_id: String, loaded: String },

    #[error(
        "data key wrapped under key id {key_id:?} could not be unwrapped: the wrapped key is corrupt or was not made by this key"
    )]
    UnwrapFailed { key_id: String },

    #[error(
        "integrity check failed for {record}: the ciphertext, nonce or record identity (store, name, version) does not match"
    )]
    IntegrityFailed { record: String },

    #[error("key file {}: {problem}", path.display())]
    KeyFile {
        path: PathBuf,
        problem: String,
        #[source]
        source: Option<std::io::Error>,
    },

    #[error("the key-encryption key {key_id:?} failed: {problem}")]
    Kek { key_id: String, problem: String },

    #[error("the system random number generator failed")]
    Random,

    #[error("record too large: field `{field}` is {len} bytes, at most {max} allowed")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Every label [`Error::metric_label`] returns: a counter by reason
    /// starts at 0 for each, so an `increase()` alert sees the first one.
    pub const METRIC_LABELS: [&'static str; 9] = [
        "malformed",
        "unsupported_version",
        "key_unavailable",
        "unwrap_failed",
        "integrity",
        "key_file",
        "kek",
        "random",
        "too_large",
    ];

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Truncated { .. } | Error::BadMagic | Error::Malformed { .. } => "malformed",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::KeyUnavailable { .. } => "key_unavailable",
            Error::UnwrapFailed { .. } => "unwrap_failed",
            Error::IntegrityFailed { .. } => "integrity",
            Error::KeyFile { .. } => "key_file",
            Error::Kek { .. } => "kek",
            Error::Random => "random",
            Error::TooLarge { .. } => "too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn metric_labels_lists_every_label() {
        rotor_fixtures::metric_labels::assert_lists_every_label(
            &Error::METRIC_LABELS,
            include_str!("error.rs"),
        );
    }
}
