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
    /// A directory of the demo's to remove when the demo died without
    /// cleaning up (killed outright): this app then outlives it, until the
    /// parent-death signal.
    #[arg(long, value_name = "DIR")]
    remove_if_orphaned: Vec<PathBuf>,
}

impl DemoAppArgs {
    pub fn run(self) -> anyhow::Result<()> {
        super::block_on(async move {
            let Self {
                file,
                pid_file,
                remove_if_orphaned,
            } = self;
            let pid = std::process::id();
            let mut hup = signal(SignalKind::hangup())?;
            let mut term = signal(SignalKind::terminate())?;
            std::fs::write(&pid_file, format!("{pid}\n")).context("cannot write the pid file")?;
            say(&format!(
                "app[{pid}]: started; secret fingerprint {}",
                fingerprint(&file)?
            ))?;
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        // Let a burst of signals settle.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let line = format!("app[{pid}]: SIGHUP: reloaded the secret without a restart; fingerprint {}", fingerprint(&file)?);
                        match say(&line) {
                            // The demo stopped reading: it is stopping.
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                            other => other?,
                        }
                    }
                    _ = term.recv() => {
                        if orphaned() {
                            for dir in &remove_if_orphaned {
                                let _ = std::fs::remove_dir_all(dir);
                            }
                        }
                        // The demo may have stopped reading already.
                        let _ = say(&format!("app[{pid}]: stopping"));
                        return Ok(());
                    }
                }
            }
        })
    }
}

/// True when the demo that started this app is gone (its pid, in
/// [`super::demo::PARENT_ENV`], is no longer the parent).
fn orphaned() -> bool {
    let parent = std::env::var(super::demo::PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    parent.is_some() && rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != parent
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
