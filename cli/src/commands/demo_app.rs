//! `rotor demo-app`: the app in `rotor demo`. It reads its secret file,
//! reloads it on SIGHUP without restarting, and logs only a fingerprint,
//! never the value.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ring::digest;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, clap::Args)]
pub struct DemoAppArgs {
    /// The secret file to read.
    #[arg(long)]
    file: PathBuf,
    /// Where to write this process's pid, for the sidecar's signal.
    #[arg(long)]
    pid_file: PathBuf,
}

impl DemoAppArgs {
    pub fn run(self) -> anyhow::Result<()> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async move {
                let Self { file, pid_file } = self;
                let pid = std::process::id();
                let mut hup = signal(SignalKind::hangup())?;
                let mut term = signal(SignalKind::terminate())?;
                std::fs::write(&pid_file, format!("{pid}\n")).context("cannot write the pid file")?;
                say(&format!("app[{pid}]: started; secret fingerprint {}", fingerprint(&file)?))?;
                loop {
                    tokio::select! {
                        _ = hup.recv() => {
                            // Let a burst of signals settle.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            say(&format!("app[{pid}]: SIGHUP: reloaded the secret without a restart; fingerprint {}", fingerprint(&file)?))?;
                        }
                        _ = term.recv() => {
                            // The demo may have stopped reading already.
                            let _ = say(&format!("app[{pid}]: stopping"));
                            return Ok(());
                        }
                    }
                }
            })
    }
}

/// Writes one line to stdout, an error (not a panic) when it is closed.
fn say(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush())
}

/// The first 12 hex digits of the SHA-256 of the file: enough to see a
/// change, nothing of the value.
fn fingerprint(path: &PathBuf) -> anyhow::Result<String> {
    let data = zeroize::Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let d = digest::digest(&digest::SHA256, &data);
    Ok(d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect())
}
