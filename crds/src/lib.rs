//! The annotation contract and the Kubernetes API types shared by Rotor's
//! sidecar and controller.
//!
//! - [`annotations`]: what a pod may say in its `rotor.dev/*` annotations,
//!   parsed and validated by one parser that the sidecar and the webhook
//!   both use.
//! - [`names`]: the rules for secret names and file names.

pub mod annotations;
pub mod names;
