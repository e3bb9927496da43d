//! The controller's end of the channel: sidecars dial in over TLS and
//! HTTP/2, each holding one stream (`POST` [`rotor_channel::PATH`]).
//!
//! - [`auth`]: who is on a stream (TokenReview, or standalone's shared
//!   token) and what it may be asked about.
//! - [`server`]: the listener, the connections and the streams, each
//!   bounded in size, rate, count and time.
//! - [`hub`]: the admitted streams by pod; rotation's consumers over them.
//! - [`metrics`]: streams open, refused and cut off.
//! - [`tls`]: the serving certificate, reloaded when it is renewed.
//! - [`fanout`]: the change detector over the streams, announcing each new
//!   version in waves within the store's budget.
//! - [`cluster`]: the server as `rotor-controller run` builds it.

pub mod auth;
pub mod cluster;
pub mod fanout;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod tls;

pub use hub::{Hub, StreamConsumers};
pub use metrics::ChannelMetrics;
pub use server::{Limits, Server};
