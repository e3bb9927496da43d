//! Harness for Rotor's end-to-end tests: finds the workspace's binaries and
//! runs them as real processes. `tests/run` builds the binaries first.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of a binary built from this workspace, next to the test
/// executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first (tests/run does)",
        path.display()
    );
    path
}

/// A command for a workspace binary with a clean, predictable environment.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    for var in [
        "ROTOR_STORE",
        "ROTOR_KEY",
        "ROTOR_LOG",
        "ROTOR_LOG_FORMAT",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Both output streams, lossily decoded, for assertions.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
