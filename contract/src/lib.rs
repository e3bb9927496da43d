//! Rotor's contract, compiled by every part: the annotation contract, the
//! Kubernetes API types, the channel's messages and the defaults, each
//! declared once.
//!
//! - [`annotations`]: what a pod may say in its `rotor.dev/*` annotations,
//!   parsed and validated by one parser that the sidecar and the webhook
//!   both use.
//! - [`names`]: the rules for secret names and file names.
//! - [`api`]: the CRDs `RotorStore`, `ClusterRotorStore` and
//!   `SecretRotationPolicy`.
//! - [`durations`]: a rotation policy's durations and their limits, parsed
//!   for the controller and checked by the CRD's CEL from one table.
//! - [`channel`]: the messages of the controller–sidecar channel, its
//!   path, audience and frame limit (`rotor-channel` carries them).
//! - [`defaults`]: the image, paths and ports the webhook and the sidecar
//!   share.
//! - [`vault_injector`]: Vault Agent Injector's annotations, which the
//!   webhook warns about and `rotor migrate vault-injector` translates.

pub mod annotations;
pub mod api;
pub mod channel;
pub mod defaults;
pub mod durations;
pub mod names;
pub mod vault_injector;
