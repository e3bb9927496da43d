use std::process::ExitCode;

fn main() -> ExitCode {
    rotor::Args::parse_and_run()
}
