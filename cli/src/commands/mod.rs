//! The `rotor` subcommands, one module each.

pub mod demo;
pub mod demo_app;
pub mod keygen;
pub mod migrate;
pub mod status;
pub mod store;

/// Runs an async subcommand to its end on a current-thread runtime (the
/// CLI's commands wait on one thing at a time).
fn block_on<T>(command: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(command)
}
