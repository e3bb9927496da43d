//! `rotor`, the operator's CLI: key generation and local store admin.

mod args;
mod commands;
pub mod postgres;
mod table;

pub use args::Args;
