//! The `rotor-controller` binary: parses the command line and runs it.

use std::process::ExitCode;

fn main() -> ExitCode {
    rotor_controller::Args::parse_and_run()
}
