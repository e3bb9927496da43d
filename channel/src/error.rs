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
        }
    }

    /// The kind of error the peer is told.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            Error::TooLarge { .. } => crate::ErrorKind::TooLarge,
            Error::Truncated { .. } | Error::Malformed { .. } => crate::ErrorKind::Malformed,
            Error::Encode { .. } => crate::ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
