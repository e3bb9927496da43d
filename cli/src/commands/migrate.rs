//! `rotor migrate`: manifests written for another secrets injector,
//! rewritten for Rotor.

mod consul_template;
mod manifest;
mod vault_injector;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

/// The exit status when the output was written but some annotations were
/// not translated (listed on stderr). 1 is an error (nothing written), 2 a
/// usage error.
pub const EXIT_NOT_TRANSLATED: u8 = 3;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    command: MigrateCommand,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Rewrite manifests that use Vault Agent Injector's annotations
    /// (vault.hashicorp.com/agent-inject-*) with Rotor's, on stdout. What
    /// cannot be translated is kept, listed on stderr, and makes the exit
    /// status 3.
    VaultInjector(VaultInjectorArgs),
}

#[derive(Debug, Args)]
struct VaultInjectorArgs {
    /// Manifest files (YAML, several documents each); none or `-` reads stdin.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The RotorStore or ClusterRotorStore the pods will read from (a Vault
    /// store): the value of rotor.dev/store.
    #[arg(long, value_name = "NAME")]
    store: String,
    /// The store's KV v2 mount: Vault paths on it become Rotor secret names
    /// (`secret/data/db-creds` is `db-creds`); other paths are not translated.
    #[arg(long, value_name = "MOUNT", default_value = rotor_contract::defaults::VAULT_KV_MOUNT)]
    mount: String,
}

impl MigrateArgs {
    pub fn run(self) -> ExitCode {
        let Self { command } = self;
        match command {
            MigrateCommand::VaultInjector(args) => match args.run() {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("error: {}", rotor_telemetry::Chain(err.as_ref()));
                    ExitCode::FAILURE
                }
            },
        }
    }
}

impl VaultInjectorArgs {
    fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            files,
            store,
            mount,
        } = self;
        if let Err(e) = rotor_contract::annotations::parse([(
            rotor_contract::annotations::STORE,
            store.as_str(),
        )]) {
            anyhow::bail!("--store: {e}");
        }
        let mount = mount.trim_matches('/').to_owned();
        if mount.is_empty() {
            anyhow::bail!("--mount: the mount is empty; expected a KV v2 mount such as \"secret\"");
        }
        let options = vault_injector::Options { store, mount };
        let inputs: Vec<Option<PathBuf>> = if files.is_empty() {
            vec![None]
        } else {
            files
                .into_iter()
                .map(|f| (f.as_os_str() != "-").then_some(f))
                .collect()
        };
        // Everything is read and translated before anything is written.
        let mut documents = Vec::new();
        let mut report = manifest::Report::default();
        for input in inputs {
            let (text, source) = match &input {
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("read stdin")?;
                    (text, "stdin".to_owned())
                }
                Some(path) => (
                    std::fs::read_to_string(path)
                        .with_context(|| format!("read {}", path.display()))?,
                    path.display().to_string(),
                ),
            };
            documents.extend(
                manifest::migrate(&text, &source, &options, &mut report)
                    .with_context(|| format!("{source} is not valid YAML"))?,
            );
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(documents.join("---\n").as_bytes())
            .and_then(|()| stdout.flush())
            .context("write stdout")?;
        for line in &report.lines {
            eprintln!("{line}");
        }
        if report.kept == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} Vault annotation{} not translated (kept in the output, listed above)",
            report.kept,
            if report.kept == 1 { " was" } else { "s were" }
        );
        Ok(ExitCode::from(EXIT_NOT_TRANSLATED))
    }
}
