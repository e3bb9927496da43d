//! The channel's messages. [`Upstream`] goes from the sidecar to the
//! controller, [`Downstream`] the other way. Every request the controller
//! sends carries a [`RequestId`] that the sidecar's [`Ack`] repeats.
//!
//! On the wire each message is a JSON object with a `type` field naming the
//! variant; unknown types and unknown fields of a message with fields are
//! refused, so both sides
//! must run the same contract version (the path names it).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The request path of the stream.
pub const PATH: &str = "/rotor.dev/channel/v1/stream";

/// The largest frame either side accepts by default: a hello names at most
/// a pod's annotations' worth of secrets (the API server caps annotations
/// at 256 KiB in total).
pub const MAX_FRAME: usize = 256 * 1024;

/// The audience of the projected ServiceAccount token a sidecar presents.
pub const AUDIENCE: &str = "rotor.dev/channel";

/// The controller's default stream port.
pub const PORT: u16 = crate::defaults::CHANNEL_PORT;

/// Which controller request an [`Ack`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Sidecar → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Upstream {
    /// The first message of every stream: who the sidecar says it is and
    /// what it reads. The controller checks each claim against the token's
    /// review and the pod's own annotations.
    Hello(Hello),
    /// The answer to one request.
    Ack(Ack),
    /// Keeps the stream's read deadline from firing while idle.
    Ping,
    /// The sidecar refuses the stream (a message it cannot read, say) and
    /// closes it.
    Error(Problem),
}

/// Controller → sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Downstream {
    /// The hello was accepted: the stream serves `pod`.
    Welcome(Welcome),
    /// Serve this PENDING version of a secret (a rotation's target) until
    /// it is released, promoted or retired.
    Pin(Pin),
    /// Drop any pin of this secret and serve CURRENT.
    Release(Release),
    /// A new CURRENT version of a secret exists: fetch it now.
    VersionAvailable(VersionAvailable),
    /// Keeps the stream's read deadline from firing while idle.
    Ping,
    /// The stream is refused or cut off, and why; the controller closes it
    /// after this.
    Error(Problem),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    pub pod: PodClaims,
    /// The `rotor.dev/store` the pod names.
    pub store: String,
    /// The store paths of the secrets the pod reads (its
    /// `rotor.dev/secret.*` annotations).
    pub secrets: Vec<String>,
    /// The sidecar's refresh interval in milliseconds (its
    /// `rotor.dev/refresh`): how often the controller checks these secrets
    /// for it. A cluster controller takes it from the pod's annotation
    /// instead; standalone refuses one outside `rotor.dev/refresh`'s
    /// bounds (100 ms to 24 h). 0: not said (the default, 30 s).
    #[serde(default)]
    pub refresh_ms: u64,
}

/// The pod a sidecar says it runs in. Claims only: the controller takes
/// the pod's identity from the token's review and refuses a mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodClaims {
    pub namespace: String,
    pub name: String,
    /// Empty when the sidecar does not know it (standalone).
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Welcome {
    /// `namespace/name` of the pod the stream was accepted for.
    pub pod: String,
    /// How often the controller pings; the sidecar's read deadline is a
    /// few of these.
    pub heartbeat_secs: u64,
    /// Whether the controller checks this stream's secrets for changes and
    /// sends `versionAvailable` when one changes. Only then may the sidecar
    /// poll them at its safety-net interval while the stream is up.
    #[serde(default)]
    pub detects: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pin {
    pub request: RequestId,
    pub secret: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Release {
    pub request: RequestId,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionAvailable {
    pub request: RequestId,
    pub secret: String,
    pub version: String,
}

/// What the sidecar did with one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ack {
    pub request: RequestId,
    pub secret: String,
    /// The version the pod now serves, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A digest of the files as written (not of the value alone), when the
    /// sidecar reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub reload: ReloadResult,
    /// Why the request was not done; `None` when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// Whether the files stand as the request asked and the app was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReloadResult {
    /// The files are written as the request asked, and the reload actions
    /// ran if they changed.
    Reloaded,
    /// Writing the files or a reload action failed, or the request was
    /// not applied.
    Failed,
}

/// An error a peer reports, with a typed kind to act on and a message for
/// people. Messages name secrets, versions and pods, never values or
/// tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Problem {
    pub kind: ErrorKind,
    pub message: String,
}

impl Problem {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// What went wrong, for the peer to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// No token, or the token's review failed (wrong audience, expired,
    /// unknown).
    Unauthenticated,
    /// The token is valid but does not allow this stream: its pod is gone,
    /// is another pod than the hello claims, or may not use the store.
    Forbidden,
    /// The hello names a secret the pod's annotations do not.
    UndeclaredSecret,
    /// This controller replica does not rotate: dial again (the Service
    /// routes to the leader).
    NotLeader,
    /// A frame over the size limit.
    TooLarge,
    /// More messages per second than allowed.
    RateLimited,
    /// Too many streams for this pod, or in total.
    TooManyStreams,
    /// A read or write missed its deadline.
    Timeout,
    /// A frame that is not a channel message, or a message out of order.
    Malformed,
    /// A pin to a version that is not the store's PENDING version.
    PinRefused,
    /// The sidecar could not apply a request (its store unreachable, the
    /// version not fetched, the pod not reading the secret): the message
    /// says which.
    NotApplied,
    /// The controller is stopping.
    ShuttingDown,
    Internal,
}

impl ErrorKind {
    /// Every kind, for counters that start at 0 for each.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::UndeclaredSecret,
        ErrorKind::NotLeader,
        ErrorKind::TooLarge,
        ErrorKind::RateLimited,
        ErrorKind::TooManyStreams,
        ErrorKind::Timeout,
        ErrorKind::Malformed,
        ErrorKind::PinRefused,
        ErrorKind::NotApplied,
        ErrorKind::ShuttingDown,
        ErrorKind::Internal,
    ];

    /// The kind as the wire, logs and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::UndeclaredSecret => "undeclaredSecret",
            ErrorKind::NotLeader => "notLeader",
            ErrorKind::TooLarge => "tooLarge",
            ErrorKind::RateLimited => "rateLimited",
            ErrorKind::TooManyStreams => "tooManyStreams",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Malformed => "malformed",
            ErrorKind::PinRefused => "pinRefused",
            ErrorKind::NotApplied => "notApplied",
            ErrorKind::ShuttingDown => "shuttingDown",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether the sidecar should dial again soon (with backoff) rather
    /// than wait out a long backoff: the refusal may pass on another try.
    pub fn retry_soon(self) -> bool {
        matches!(
            self,
            ErrorKind::NotLeader | ErrorKind::ShuttingDown | ErrorKind::Timeout
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    /// Where `kind` is in [`ErrorKind::ALL`]: an exhaustive match, so a new
    /// kind does not compile until it is listed.
    fn position(kind: ErrorKind) -> usize {
        match kind {
            ErrorKind::Unauthenticated => 0,
            ErrorKind::Forbidden => 1,
            ErrorKind::UndeclaredSecret => 2,
            ErrorKind::NotLeader => 3,
            ErrorKind::TooLarge => 4,
            ErrorKind::RateLimited => 5,
            ErrorKind::TooManyStreams => 6,
            ErrorKind::Timeout => 7,
            ErrorKind::Malformed => 8,
            ErrorKind::PinRefused => 9,
            ErrorKind::NotApplied => 10,
            ErrorKind::ShuttingDown => 11,
            ErrorKind::Internal => 12,
        }
    }

    #[test]
    fn all_lists_every_kind_once() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(position(*kind), i, "{kind}");
        }
        let names: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
