use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use rotor_telemetry::LogFormat;

/// Rotor's operator CLI: generate key-encryption keys and administer the
/// embedded, envelope-encrypted local store.
#[derive(Debug, Parser)]
#[command(name = "rotor", version, about, long_about = None)]
pub struct Args {
    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `rotor_store=debug`).
    #[arg(long, env = "ROTOR_LOG", default_value = "warn", global = true)]
    log: String,

    /// Log line format on stderr.
    #[arg(
        long,
        env = "ROTOR_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: LogFormat,

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
}

impl Args {
    /// Parses the command line, runs the command and maps any error to a
    /// message on stderr and exit code 1.
    pub fn parse_and_run() -> ExitCode {
        let Self {
            log,
            log_format,
            command,
        } = Self::parse();
        rotor_telemetry::init(log_format, &log);
        let result = match command {
            Command::Keygen { out, force } => commands::keygen::run(&out, force),
            Command::Store(args) => args.run(),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}
