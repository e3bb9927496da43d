//! `rotor-channel`: the contract of the channel between Rotor's controller
//! and its sidecars, typed once for both sides.
//!
//! The sidecar dials the controller and holds one full-duplex HTTP/2
//! request open (`POST` [`PATH`]): the request body carries the sidecar's
//! messages ([`Upstream`]), the response body the controller's
//! ([`Downstream`]). Both bodies are a sequence of frames ([`codec`]): a
//! 4-byte big-endian length, then that many bytes of one JSON message. A
//! frame longer than the receiver's limit is refused from its header,
//! before its body is buffered.
//!
//! - [`message`]: what each side says (`rotor_contract::channel`).
//! - [`codec`]: frames in and out, with a hard size limit.
//! - [`transport`]: frames over an HTTP/2 body, every read and write under
//!   a deadline and every peer under a message rate.
//!
//! No message holds a secret value: the channel carries names, versions and
//! digests; each sidecar reads values from its store with its own identity.

pub mod codec;
mod error;
pub mod transport;

pub use codec::{Decoder, encode};
pub use error::{Error, Result};
/// The messages, the stream's path and its limits live in the contract
/// crate (`rotor_contract::channel`), which both sides compile; this crate
/// carries them.
pub use rotor_contract::channel as message;
pub use rotor_contract::channel::*;
