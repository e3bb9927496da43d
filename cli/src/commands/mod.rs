//! The `rotor` subcommands, one module each.

pub mod demo;
pub mod demo_app;
pub mod keygen;
pub mod migrate;
pub mod status;
pub mod store;
