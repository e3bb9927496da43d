//! The `rotor` binary: parses the command line and runs it.

use std::process::ExitCode;

fn main() -> ExitCode {
    rotor::Args::parse_and_run()
}
