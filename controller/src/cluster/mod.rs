//! Running in a cluster, one file per job:
//!
//! - [`watch`]: the watches that keep the store index and the consumer
//!   index fresh.
//! - [`certificate`]: the self-managed serving certificate.
//! - [`owner`]: the owner reference for what the controller creates.
//! - [`stores`]: the stores rotation uses, resolved through the store index.
//! - [`identity`]: the namespace's rotator ServiceAccount rotation logs in
//!   to stores as (TokenRequest tokens).
//! - [`rotation`]: the SecretRotationPolicy controller's run loop.
//! - [`metrics_server`]: serves `/metrics`.
//!
//! The RotorStore status reconcilers run from `store_status::run`.

pub mod certificate;
pub mod metrics_server;
pub mod owner;
pub mod rotation;
pub mod stores;
pub mod watch;
