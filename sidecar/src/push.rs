//! The push protocol of `POST /v1/refresh`: the request body, the reply
//! (the version now served per secret), and the request the HTTP handler
//! hands the engine. The handler is in [`crate::http`], the handling in
//! the engine (`engine/push.rs`).

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// `POST /v1/refresh` body: the secrets to refetch now, each optionally
/// pinned to the store's PENDING version (a rotation's target). An empty list
/// refetches every secret.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    #[serde(default)]
    pub secrets: Vec<PushSecret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSecret {
    pub name: String,
    /// Serve this version, which must be the store's PENDING version of the
    /// secret, until it stops being PENDING (promoted to CURRENT or retired),
    /// a later push changes it, or the pin expires. Naming the CURRENT
    /// version is the same as naming none; any other version is refused.
    /// Without a version, CURRENT is served (and a pin released).
    #[serde(default)]
    pub version: Option<String>,
    /// A new CURRENT version the controller announced (the channel's
    /// `versionAvailable`; never from HTTP): read at once without the
    /// version check, unless it is already served.
    #[serde(skip)]
    pub announced: Option<String>,
}

/// The acknowledgement: the version now served for each secret.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushReply {
    pub ok: bool,
    /// Set when the request was refused as a whole and changed nothing (a
    /// pin to a version that is not PENDING): HTTP 409. `secrets` then
    /// lists the refused secrets, each with the version it still serves.
    #[serde(rename = "error", skip_serializing_if = "Option::is_none", default)]
    pub refused: Option<String>,
    pub secrets: Vec<PushAck>,
    /// A digest of the files served after the push
    /// ([`crate::writer::AtomicWriter::digest`]); the channel's ack carries
    /// it, the HTTP reply does not.
    #[serde(skip)]
    pub digest: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushAck {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// A push on its way to the engine, which answers on `reply` once the
/// files are written and the reload actions ran.
pub struct PushRequest {
    pub body: PushBody,
    /// When the HTTP request arrived: the push's change-to-file time
    /// counts from here.
    pub received: Instant,
    pub reply: oneshot::Sender<PushReply>,
}
