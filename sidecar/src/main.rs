use std::process::ExitCode;

fn main() -> ExitCode {
    rotor_sidecar::Args::parse_and_run()
}
