//! Rotor's secret stores.
//!
//! This crate holds the embedded local store ([`LocalStore`]): one
//! envelope-encrypted file of named secrets, each with a history of versions
//! and the stage labels CURRENT, PENDING and PREVIOUS, which mean what
//! AWS Secrets Manager's AWSCURRENT, AWSPENDING and AWSPREVIOUS mean:
//!
//! - **CURRENT**: the version consumers should use. Exactly one version of a
//!   secret that has any version is CURRENT.
//! - **PENDING**: a version written by a rotation that has not been promoted
//!   yet. At most one.
//! - **PREVIOUS**: the version that was CURRENT before the last promotion,
//!   kept so that consumers still holding it keep working until it is
//!   retired. At most one.
//!
//! The file format is documented in [`local::format`].

pub mod aws;
mod backend;
pub mod backoff;
mod error;
pub mod kubernetes;
pub mod local;
mod model;
pub mod random;
pub mod token_source;
pub mod transit;
pub mod vault;

pub use aws::{AwsConfig, AwsStore, WebIdentity};
pub use backend::{Fetched, Store};
pub use error::{Error, Result};
pub use kubernetes::KubeStore;
pub use local::{DEFAULT_MAX_VERSIONS, LocalStore, StoreInfo};
pub use model::{
    SecretSummary, SecretValue, Selector, Stage, Stages, VersionId, VersionMeta, WriteAs,
};
pub use rotor_contract::names::validate_secret_name;
pub use token_source::{SourceError, TokenFile, TokenSource};
pub use transit::TransitKek;
pub use vault::{RetireMode, VaultAuth, VaultConfig, VaultStore};

/// The largest value a store accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
