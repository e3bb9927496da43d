//! Logging setup shared by Rotor's binaries: structured `tracing` logs on
//! stderr, as text or JSON.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The logging flags every Rotor binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `rotor_store=debug`).
    /// Default: `warn` for `rotor`, `info` for the sidecar and controller.
    #[arg(long, env = "ROTOR_LOG", global = true)]
    pub log: Option<String>,

    /// Log line format on stderr.
    #[arg(
        long,
        env = "ROTOR_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the subscriber, with `default_filter` when `--log` is unset.
    pub fn init(&self, default_filter: &str) {
        init(
            self.log_format,
            self.log.as_deref().unwrap_or(default_filter),
        );
    }
}

/// Installs the global `tracing` subscriber. `filter` uses `RUST_LOG`
/// syntax, e.g. `info` or `rotor_store=debug`.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
