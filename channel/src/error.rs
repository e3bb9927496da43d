//! The channel crate's one error type: what can be wrong with a frame.

/// A frame that cannot be read. None of them holds the frame's bytes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("frame of {size} bytes refused: the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the stream ended {buffered} bytes into a frame")]
    Truncated { buffered: usize },
    #[error("a frame does not hold a channel message: {source}")]
    Malformed {
        #[source]
        source: serde_json::Error,
    },
    #[error("no {what} within {waited:?}")]
    Timeout {
        what: &'static str,
        waited: std::time::Duration,
    },
    #[error("the stream failed: {source}")]
    Transport {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the peer stopped reading")]
    Closed,
    #[error("more than {per_second} messages per second")]
    RateLimited { per_second: u32 },
    #[error("a message cannot be encoded: {source}")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::TooLarge { .. } => "too_large",
            Error::Truncated { .. } => "truncated",
            Error::Malformed { .. } => "malformed",
            Error::Encode { .. } => "encode",
            Error::Timeout { .. } => "timeout",
            Error::Transport { .. } => "transport",
            Error::Closed => "closed",
            Error::RateLimited { .. } => "rate_limited",
        }
    }

    /// The kind of error the peer is told.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            Error::TooLarge { .. } => crate::ErrorKind::TooLarge,
            Error::Truncated { .. } | Error::Malformed { .. } => crate::ErrorKind::Malformed,
            Error::Encode { .. } | Error::Transport { .. } | Error::Closed => {
                crate::ErrorKind::Internal
            }
            Error::Timeout { .. } => crate::ErrorKind::Timeout,
            Error::RateLimited { .. } => crate::ErrorKind::RateLimited,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
