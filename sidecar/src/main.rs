//! The `rotor-sidecar` binary: parses the command line and runs it.

use std::process::ExitCode;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rotor_sidecar::Args::parse_and_run()
}
