//! `rotor-sidecar`: delivers a pod's secrets as files on tmpfs, keeps them
//! fresh, and tells the app when they change.

mod error;
pub mod writer;

pub use error::{Error, Result};
