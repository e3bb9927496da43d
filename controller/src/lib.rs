//! `rotor-controller`: the mutating admission webhook that injects the
//! sidecar, the index of stores it resolves against, the store status
//! reconcilers, scheduled rotation, and the serving certificates.
//!
//! - [`webhook`]: AdmissionReview in, patch or denial out; served over HTTPS.
//! - [`pod_injection`]: the names Rotor reserves in a pod, and whether a
//!   pod holds the sidecar as the webhook injects it.
//! - [`index`]: the trait of the indexes the watches feed.
//! - [`store_index`]: RotorStores, ClusterRotorStores and namespace labels,
//!   shared by the webhook and rotation.
//! - [`store_status`]: the RotorStore and ClusterRotorStore status
//!   reconcilers.
//! - [`budget`]: a call budget per store (token buckets, throttling
//!   backoff, request metrics).
//! - [`detect`]: change detection once per (store, secret), for the
//!   channel's hub.
//! - [`store_from_spec`]: a store built from a provider spec, for rotation.
//! - [`rotation`]: generators, schedules, the state machine, the
//!   SecretRotationPolicy reconciler.
//! - [`channel`]: the sidecars' authenticated streams, and rotation's
//!   consumers over them.
//! - [`serving`]: which pod serves which version, from the sidecars'
//!   acknowledgements; a policy's `status.serving`.
//! - [`standalone`]: rotation without Kubernetes.
//! - [`cluster`]: the in-cluster jobs (watches, certificate, metrics).
//! - [`certs`]: self-managed CA and serving certificate.

mod args;
pub mod budget;
pub mod certs;
pub mod channel;
pub mod cluster;
pub mod detect;
mod error;
pub mod identity;
pub mod index;
pub mod manifests;
pub mod pod_injection;
pub mod rotation;
pub mod serving;
pub mod standalone;
pub mod store_from_spec;
pub mod store_index;
pub mod store_status;
pub mod webhook;

pub use args::Args;
pub use error::{Error, Result};
