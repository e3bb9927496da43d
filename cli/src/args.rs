//! The `rotor` command line: its flags and subcommands, and how each runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use rotor_telemetry::LogArgs;

/// Rotor's operator CLI: generate key-encryption keys and administer the
/// embedded, envelope-encrypted local store.
#[derive(Debug, Parser)]
#[command(name = "rotor", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new random 32-byte key-encryption key, mode 0600.
    Keygen {
        /// Where to write the key.
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
        /// Replace an existing key file. Data sealed under the old key
        /// becomes unreadable unless it was re-wrapped first.
        #[arg(long)]
        force: bool,
    },
    /// Administer a local store file.
    Store(commands::store::StoreArgs),
    /// Print the CRD YAML generated from Rotor's API types, or write it to
    /// `<DIR>/crds.yaml` (the repository keeps it in deploy/crds/).
    Crds {
        /// Write `<DIR>/crds.yaml` instead of printing to stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Show which version each consumer pod of each SecretRotationPolicy
    /// serves: the version and digest its sidecar acknowledged, the
    /// version's class (CURRENT, PENDING, PREVIOUS, OLDER) and how long
    /// ago; read through the API with the kubeconfig.
    Status(commands::status::StatusArgs),
    /// Run the whole loop on this machine: a local store, a sidecar writing
    /// to tmpfs, and an app that reloads on SIGHUP while versions rotate.
    Demo(commands::demo::DemoArgs),
    /// Rewrite manifests written for another secrets injector with Rotor's
    /// annotations.
    Migrate(commands::migrate::MigrateArgs),
    /// The demo's app (used by `rotor demo`).
    #[command(hide = true)]
    DemoApp(commands::demo_app::DemoAppArgs),
    /// Run the controller; the same as `rotor-controller` (see `rotor controller --help`).
    #[command(disable_help_flag = true)]
    Controller {
        /// The controller's command and flags, as `rotor-controller` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run the sidecar; the same as `rotor-sidecar` (see `rotor sidecar --help`).
    #[command(disable_help_flag = true)]
    Sidecar {
        /// The sidecar's flags, as `rotor-sidecar` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

impl Args {
    /// Parses the command line, runs the command and maps any error to a
    /// message on stderr and exit code 1.
    pub fn parse_and_run() -> ExitCode {
        // A child of `rotor demo` dies with it.
        if let Err(err) = commands::demo::die_with_parent() {
            eprintln!("error: {}", rotor_telemetry::Chain(err.as_ref()));
            return ExitCode::FAILURE;
        }
        // `rotor sidecar …` hands its arguments to the sidecar untouched.
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if argv.get(1).is_some_and(|a| a == "sidecar") {
            let rest = std::iter::once("rotor sidecar".into()).chain(argv[2..].iter().cloned());
            return rotor_sidecar::Args::run_from(rest);
        }
        if argv.get(1).is_some_and(|a| a == "controller") {
            let rest = std::iter::once("rotor controller".into()).chain(argv[2..].iter().cloned());
            return rotor_controller::Args::run_from(rest);
        }
        let Self { log, command } = Self::parse();
        log.init("warn");
        let result = match command {
            Command::Keygen { out, force } => commands::keygen::run(&out, force),
            Command::Store(args) => args.run(),
            Command::Demo(args) => args.run(),
            Command::Status(args) => args.run(),
            Command::Crds { out } => write_crds(out.as_deref()),
            Command::DemoApp(args) => args.run(),
            Command::Migrate(args) => return args.run(),
            Command::Controller { args } => {
                let argv = std::iter::once("rotor controller".into()).chain(args);
                return rotor_controller::Args::run_from(argv);
            }
            Command::Sidecar { args } => {
                let argv = std::iter::once("rotor sidecar".into()).chain(args);
                return rotor_sidecar::Args::run_from(argv);
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}", rotor_telemetry::Chain(err.as_ref()));
                ExitCode::FAILURE
            }
        }
    }
}

fn write_crds(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let yaml = rotor_contract::api::crds_yaml();
    match out {
        None => print!("{yaml}"),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let path = dir.join("crds.yaml");
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `rotor sidecar` and `rotor controller` hand their arguments on, so
    /// the other two binaries' flags are checked here as well.
    #[test]
    fn every_flag_of_every_binary_is_described_and_reads_the_env_var_named_after_it() {
        for command in [
            super::Args::command(),
            rotor_sidecar::Args::command(),
            rotor_controller::Args::command(),
        ] {
            let problems = rotor_telemetry::flags::problems(&command);
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }
}
