use std::process::ExitCode;

fn main() -> ExitCode {
    rotor_controller::Args::parse_and_run()
}
