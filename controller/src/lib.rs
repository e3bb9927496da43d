//! `rotor-controller`: the mutating admission webhook that injects the
//! sidecar, the index of stores it resolves against, and the serving
//! certificates.
//!
//! - [`webhook`]: AdmissionReview in, patch or denial out; served over HTTPS.
//! - [`store_index`]: SecretStores, ClusterSecretStores and namespace labels.
//! - [`certs`]: self-managed CA and serving certificate.

mod args;
pub mod certs;
pub mod cluster;
mod error;
pub mod manifests;
pub mod reconcile;
pub mod rotation;
pub mod standalone;
pub mod store_index;
pub mod webhook;

pub use args::Args;
pub use error::{Error, Result};
