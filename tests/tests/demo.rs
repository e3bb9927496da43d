//! `rotor demo`, the README's main job, as a new user runs it.

use rotor_e2e::{command, text};

#[test]
fn the_demo_rotates_and_the_app_reloads_without_a_restart() {
    let out = command("rotor")
        .args(["demo", "--duration", "6", "--every", "2"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("the sidecar acknowledged version 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SIGHUP: reloaded the secret without a restart"),
        "{stdout}"
    );
    // One app process from start to end: the reloads were not restarts.
    let pids: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("app["))
        .filter_map(|l| l.split(']').next())
        .collect();
    assert_eq!(pids.len(), 1, "{stdout}");
    // The demo cleans up after itself.
    let dir = stdout
        .lines()
        .find_map(|l| l.split(" writes ").nth(1))
        .and_then(|l| l.split(' ').next())
        .unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}
