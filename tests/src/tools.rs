//! The packaging tools the image and chart tests run, `crane` and `helm`,
//! and `promtool`, which checks and unit-tests the chart's alert rules,
//! built from their Go modules by `tests/tools/build` into a cache outside
//! the clone (once; later runs find them there).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The directory with `crane`, `helm`, `promtool` and `cargo-cyclonedx`:
/// `ROTOR_TOOLS_DIR` when it holds them, else what `tests/tools/build`
/// prints (building what is missing).
pub fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ROTOR_TOOLS_DIR").map(PathBuf::from)
            && dir.join("crane").exists()
            && dir.join("helm").exists()
            && dir.join("promtool").exists()
        {
            return dir;
        }
        let script = crate::workspace_root().join("tests/tools/build");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/tools/build");
        assert!(
            out.status.success(),
            "{} failed; see its output above",
            script.display()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .expect("tests/tools/build prints the tools' directory")
    })
}

/// The path of `crane`, `helm` or `promtool`.
pub fn tool(name: &str) -> PathBuf {
    let path = dir().join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// `helm` with its config, cache and data under a private directory, so
/// the tests neither read nor write the user's Helm state.
pub fn helm(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(tool("helm"));
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, home.join(sub));
    }
    cmd.env_remove("KUBECONFIG").env_remove("HELM_NAMESPACE");
    cmd
}
