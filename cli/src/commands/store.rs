//! `rotor store`: administers the embedded local store (put, get, list,
//! promote, retire, rewrap, retention).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rotor_envelope::{ExposeSecret, Kek, KeyFileKek};
use rotor_store::{LocalStore, MAX_VALUE_LEN, Selector, Stage, WriteAs};
use zeroize::Zeroizing;

use crate::table;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The local store file. Created by the first `put`.
    #[arg(long, env = "ROTOR_STORE", value_name = "PATH", global = true)]
    store: Option<PathBuf>,

    /// The key-encryption key file, as written by `rotor keygen`.
    #[arg(long, env = "ROTOR_KEY", value_name = "KEYFILE", global = true)]
    key: Option<PathBuf>,

    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Write a new version of a secret. The value is read from --from-file
    /// or from stdin, never from the command line (argv shows in `ps`).
    /// Bytes are stored exactly as read, trailing newline included.
    Put {
        /// The secret's name: letters, digits, '.', '_', '-' and '/'.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Label the new version PENDING instead of CURRENT.
        #[arg(long)]
        pending: bool,
        /// Keep at most N versions of this secret from now on (0: follow
        /// the store's setting again). Versions labelled CURRENT, PENDING
        /// or PREVIOUS are always kept.
        #[arg(long, value_name = "N")]
        max_versions: Option<u32>,
    },
    /// Show a version's metadata; with --reveal, write its value to stdout.
    Get {
        /// The secret's name.
        name: String,
        /// A version number.
        #[arg(long, conflicts_with = "stage")]
        version: Option<u64>,
        /// A stage label: CURRENT, PENDING or PREVIOUS.
        #[arg(long)]
        stage: Option<Stage>,
        /// Write the value itself to stdout, and nothing else.
        #[arg(long)]
        reveal: bool,
    },
    /// List every secret with its stage labels (metadata only).
    List,
    /// Show the store file's id, key id and generation (one more on every
    /// write). Record the generation to audit later: a lower one means an
    /// older copy of the file was put in place.
    Info,
    /// Show every version of a secret the store keeps (metadata only).
    History {
        /// The secret's name.
        name: String,
    },
    /// Show or set retention: how many versions of each secret the store
    /// keeps (default 10). The oldest versions beyond it go on the next
    /// write, except those labelled CURRENT, PENDING or PREVIOUS; reading a
    /// removed version fails naming it.
    Config {
        /// Set the store's limit (0: the default, 10), or with --secret
        /// that secret's own (0: follow the store's).
        #[arg(long, value_name = "N")]
        max_versions: Option<u32>,
        /// Show or set one secret's limit instead of the store's.
        #[arg(long, value_name = "NAME")]
        secret: Option<String>,
    },
    /// Make a version CURRENT; the old CURRENT becomes PREVIOUS.
    Promote {
        /// The secret's name.
        name: String,
        /// The version to make CURRENT.
        #[arg(long)]
        version: u64,
    },
    /// Delete a version and its data for good (not the CURRENT one).
    Retire {
        /// The secret's name.
        name: String,
        /// The version to delete.
        #[arg(long)]
        version: u64,
    },
    /// Re-wrap every data key under a new key-encryption key, without
    /// re-encrypting any value. --key must hold the store's current key.
    Rewrap {
        /// The new key file, as written by `rotor keygen`.
        #[arg(long, value_name = "KEYFILE")]
        new_key: PathBuf,
    },
}

impl StoreArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            store,
            key,
            command,
        } = self;
        let Some(store) = store else {
            bail!("no store given: pass --store PATH or set ROTOR_STORE");
        };
        let Some(key) = key else {
            bail!(
                "no key given: pass --key KEYFILE or set ROTOR_KEY (create one with `rotor keygen --out KEYFILE`)"
            );
        };
        let kek: Arc<dyn Kek> = Arc::new(KeyFileKek::load(&key)?);
        let store = LocalStore::new(store, kek);
        match command {
            StoreCommand::Put {
                name,
                from_file,
                pending,
                max_versions,
            } => {
                rotor_store::validate_secret_name(&name)?;
                let value = read_value(from_file.as_deref())?;
                let write_as = if pending {
                    WriteAs::Pending
                } else {
                    WriteAs::Current
                };
                let meta = store.put_with(&name, &value, write_as, max_versions)?;
                println!(
                    "stored {:?} version {} ({}, {} bytes)",
                    meta.name, meta.version, meta.stages, meta.size
                );
            }
            StoreCommand::Get {
                name,
                version,
                stage,
                reveal,
            } => {
                let selector = match (version, stage) {
                    (Some(v), _) => Selector::Version(v.into()),
                    (None, Some(s)) => Selector::Stage(s),
                    (None, None) => Selector::Current,
                };
                if reveal {
                    let secret = store.get(&name, selector)?;
                    let mut out = std::io::stdout().lock();
                    out.write_all(secret.value.expose_secret())
                        .and_then(|()| out.flush())
                        .context("cannot write the value to stdout")?;
                } else {
                    // Decrypt anyway, so that `get` proves the value is intact.
                    let meta = store.get(&name, selector)?.meta;
                    table::print(
                        &["NAME", "VERSION", "STAGES", "CREATED", "SIZE"],
                        &[vec![
                            meta.name,
                            meta.version.to_string(),
                            meta.stages.to_string(),
                            table::time(meta.created_at),
                            meta.size.to_string(),
                        ]],
                    );
                }
            }
            StoreCommand::List => {
                let rows: Vec<Vec<String>> = store
                    .list()?
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.name,
                            table::opt(s.current),
                            table::opt(s.pending),
                            table::opt(s.previous),
                            s.versions.to_string(),
                            s.updated_at.map_or_else(|| "-".to_owned(), table::time),
                        ]
                    })
                    .collect();
                table::print(
                    &[
                        "NAME", "CURRENT", "PENDING", "PREVIOUS", "VERSIONS", "UPDATED",
                    ],
                    &rows,
                );
            }
            StoreCommand::Info => {
                let info = store.info()?;
                let rows = [
                    ("path", store.path().display().to_string()),
                    ("store id", info.store_id),
                    ("key id", info.kek_id),
                    ("generation", info.generation.to_string()),
                    ("secrets", info.secrets.to_string()),
                    ("versions", info.versions.to_string()),
                    ("max versions", info.max_versions.to_string()),
                    ("size", format!("{} bytes", info.bytes)),
                ];
                for (field, value) in rows {
                    println!("{field:<12}  {value}");
                }
            }
            StoreCommand::Config {
                max_versions,
                secret,
            } => {
                if let Some(n) = max_versions {
                    let removed = store.set_max_versions(secret.as_deref(), n)?;
                    if removed > 0 {
                        println!("removed {removed} old versions");
                    }
                }
                match &secret {
                    Some(name) => {
                        let (n, own) = store.max_versions(name)?;
                        let from = if own { "its own" } else { "the store's" };
                        println!("{name:?} keeps {n} versions ({from} setting)");
                    }
                    None => println!("max versions  {}", store.info()?.max_versions),
                }
            }
            StoreCommand::History { name } => {
                let rows: Vec<Vec<String>> = store
                    .history(&name)?
                    .into_iter()
                    .map(|m| {
                        vec![
                            m.version.to_string(),
                            m.stages.to_string(),
                            table::time(m.created_at),
                            m.size.to_string(),
                        ]
                    })
                    .collect();
                table::print(&["VERSION", "STAGES", "CREATED", "SIZE"], &rows);
            }
            StoreCommand::Promote { name, version } => {
                let meta = store.promote_number(&name, version)?;
                println!(
                    "promoted {:?} version {} ({})",
                    meta.name, meta.version, meta.stages
                );
            }
            StoreCommand::Retire { name, version } => {
                store.retire_number(&name, version)?;
                println!("retired {name:?} version {version}");
            }
            StoreCommand::Rewrap { new_key } => {
                let new = KeyFileKek::load(&new_key)?;
                let count = store.rewrap(&new)?;
                println!(
                    "re-wrapped {count} records of {} under key {}; use --key {} from now on",
                    store.path().display(),
                    new.key_id(),
                    new_key.display()
                );
            }
        }
        Ok(())
    }
}

/// Reads a value from a file or stdin, at most `MAX_VALUE_LEN` bytes.
fn read_value(from_file: Option<&Path>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(Vec::new());
    let limit = MAX_VALUE_LEN as u64 + 1;
    match from_file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("--from-file {}: cannot open", path.display()))?;
            file.take(limit)
                .read_to_end(&mut value)
                .with_context(|| format!("--from-file {}: cannot read", path.display()))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("reading the value from stdin; end it with Ctrl-D");
            }
            stdin
                .lock()
                .take(limit)
                .read_to_end(&mut value)
                .context("cannot read the value from stdin")?;
        }
    }
    let source = from_file.map_or_else(
        || "stdin".to_owned(),
        |p| format!("--from-file {}", p.display()),
    );
    if value.is_empty() {
        bail!("{source}: the value is empty; expected 1 to {MAX_VALUE_LEN} bytes");
    }
    if value.len() > MAX_VALUE_LEN {
        bail!("{source}: the value is larger than {MAX_VALUE_LEN} bytes");
    }
    Ok(value)
}
