//! `rotor-sidecar`: delivers a pod's secrets as files on tmpfs, keeps them
//! fresh, and tells the app when they change.
//!
//! - [`writer`]: the atomic writer (kubelet layout, `..data` swap).
//! - [`engine`]: the refresh loop: fetch, poll with a cheap version check,
//!   back off on errors, write, reload; pushes and annotation changes.
//! - [`render`]: secret values and templates into file contents.
//! - [`reload`]: signal, HTTP and exec actions.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `POST /v1/refresh`.
//! - [`push`]: the push protocol's body, reply and engine request.
//! - [`channel`]: the stream to the controller, which pins, releases and
//!   collects acknowledgements through the same engine requests.
//! - [`watch`]: the annotations file, watched with inotify.
//! - [`downward`]: the downward-API file format.
//! - [`flags`]: the sidecar's command line as a typed value, rendered into argv.

mod args;
pub mod channel;
pub mod downward;
pub mod engine;
mod error;
pub mod flags;
pub mod http;
pub mod metrics;
pub mod push;
pub mod reload;
pub mod render;
pub mod store_args;
pub mod watch;
pub mod writer;

pub use args::Args;
pub use error::{Error, OnceProblem, Result};
