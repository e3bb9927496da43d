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

/// A running `rotor demo` and what it printed so far.
struct Running {
    child: std::process::Child,
    /// `None` once the test closed the demo's stdout.
    lines: Option<std::io::Lines<std::io::BufReader<std::process::ChildStdout>>>,
    seen: Vec<String>,
}

impl Running {
    fn start() -> Self {
        let mut child = command("rotor")
            .args(["demo", "--every", "2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        use std::io::BufRead;
        let mut running = Self {
            child,
            lines: Some(std::io::BufReader::new(stdout).lines()),
            seen: Vec::new(),
        };
        // Up when the app has read its file.
        while !running.seen.iter().any(|l| l.starts_with("app[")) {
            let lines = running.lines.as_mut().unwrap();
            let line = lines.next().expect("the demo stopped early").unwrap();
            running.seen.push(line);
        }
        running
    }

    /// The text after `prefix` up to the next space, in the first line
    /// that holds it.
    fn field(&self, prefix: &str) -> String {
        self.seen
            .iter()
            .find_map(|l| l.split(prefix).nth(1))
            .and_then(|rest| rest.split([' ', ']']).next())
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", self.seen))
            .to_owned()
    }

    /// What the demo made: its processes and its directories.
    fn made(&self) -> (Vec<String>, Vec<std::path::PathBuf>) {
        let store = std::path::PathBuf::from(self.field("local store "));
        let pids = vec![self.field("sidecar pid "), self.field("app[")];
        let dirs = vec![
            store.parent().unwrap().to_owned(),
            self.field(" writes ").into(),
        ];
        (pids, dirs)
    }

    /// Waits (bounded) for the demo to exit; its status and stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }
}

/// Nothing the demo made is left: no process, no directory.
fn nothing_left(pids: &[String], dirs: &[std::path::PathBuf]) {
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left running"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// `rotor demo | head`: stdout closes, the demo stops quietly (no panic)
/// and takes everything with it.
#[test]
fn a_closed_stdout_stops_the_demo_and_it_cleans_up() {
    let mut demo = Running::start();
    let (pids, dirs) = demo.made();
    demo.lines = None;
    let (status, stderr) = demo.wait();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    nothing_left(&pids, &dirs);
}

/// Ctrl-C (SIGINT to the demo alone, as a terminal's process group gets
/// it too) stops the demo cleanly.
#[test]
fn ctrl_c_stops_the_demo_and_it_cleans_up() {
    let demo = Running::start();
    let (pids, dirs) = demo.made();
    rotor_e2e::signal(&demo.child, "INT");
    let (status, stderr) = demo.wait();
    assert!(status.success(), "{status}: {stderr}");
    nothing_left(&pids, &dirs);
}

/// A child that dies takes the demo down with a reason, and the rest is
/// stopped and removed.
#[test]
fn a_child_that_dies_stops_the_demo_with_the_reason() {
    let demo = Running::start();
    let (pids, dirs) = demo.made();
    let kill = std::process::Command::new("kill")
        .args(["-KILL", &pids[0]])
        .status()
        .unwrap();
    assert!(kill.success());
    let (status, stderr) = demo.wait();
    assert!(!status.success());
    assert!(
        stderr.contains("the sidecar exited (signal: 9 (SIGKILL))"),
        "{stderr}"
    );
    nothing_left(&pids, &dirs);
}

/// `--dir` on a disk: the sidecar refuses it, and the demo says why
/// instead of claiming tmpfs.
#[test]
fn a_dir_on_disk_is_refused_with_the_sidecars_reason() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if rotor_e2e::on_tmpfs(dir.path()) {
        panic!("the target directory is on tmpfs; this test needs a disk");
    }
    let out = command("rotor")
        .args(["demo", "--duration", "20", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("(tmpfs)"), "{stdout}");
    assert!(
        stderr.contains("the sidecar exited (exit status: 1)")
            && stderr.contains("is not on tmpfs or ramfs"),
        "{stderr}"
    );
}

/// The pids whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// True once none of `pids` runs and none of `dirs` exists, polled for
/// up to 20 s (a killed demo's children stop on their own).
fn all_gone(pids: &[String], dirs: &[std::path::PathBuf]) -> bool {
    rotor_e2e::wait_until(20, || {
        pids.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            && dirs.iter().all(|d| !d.exists())
    })
}

/// A closed terminal (SIGHUP) stops the demo like Ctrl-C: its sidecar,
/// app and controller stop, and its key, store and files go.
#[test]
fn sighup_stops_the_demo_its_children_and_removes_its_files() {
    let demo = Running::start();
    let (_, dirs) = demo.made();
    let children = children_of(demo.child.id());
    assert_eq!(children.len(), 3, "sidecar, app, controller: {children:?}");
    rotor_e2e::signal(&demo.child, "HUP");
    let (status, stderr) = demo.wait();
    assert!(status.success(), "{status}: {stderr}");
    assert!(all_gone(&children, &dirs), "left: {children:?} {dirs:?}");
}

/// Killed outright, the demo cannot stop anything itself: its children
/// still stop (a parent-death signal), and its key and store still go.
#[test]
fn sigkill_of_the_demo_stops_its_children_and_removes_its_files() {
    let demo = Running::start();
    let (_, dirs) = demo.made();
    let children = children_of(demo.child.id());
    assert_eq!(children.len(), 3, "sidecar, app, controller: {children:?}");
    rotor_e2e::signal(&demo.child, "KILL");
    let (status, _) = demo.wait();
    assert!(!status.success());
    assert!(all_gone(&children, &dirs), "left: {children:?} {dirs:?}");
}

/// `rotor demo | head -5`, 20 times: the closed pipe is a clean exit every
/// time, with nothing on stderr from the demo or its children.
#[test]
fn a_closed_pipe_is_a_clean_exit_twenty_times_out_of_twenty() {
    let rotor = rotor_e2e::bin("rotor");
    let script = format!(
        "{} demo --duration 60 --every 2 | head -5 >/dev/null; echo \"demo exit ${{PIPESTATUS[0]}}\"",
        rotor.display()
    );
    let run = |script: String| {
        std::thread::spawn(move || {
            let out = std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
                .unwrap();
            let (stdout, stderr) = text(&out);
            format!("{stdout}{stderr}")
        })
    };
    let mut failures = Vec::new();
    // Four at a time: the machine is small.
    for _ in 0..5 {
        let batch: Vec<_> = (0..4).map(|_| run(script.clone())).collect();
        for handle in batch {
            let seen = handle.join().unwrap();
            if seen != "demo exit 0\n" {
                failures.push(seen);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 failed: {failures:#?}",
        failures.len()
    );
}

/// `rotor demo --postgres`, as the README shows it: a real PostgreSQL
/// (Debian's, which `tests/install-tools` installs; without it the demo
/// fails, and so does this test), two roles alternating, an app with a
/// pool that never fails a query, and nothing left running afterwards.
#[test]
fn the_postgres_demo_alternates_roles_and_no_query_fails() {
    let out = command("rotor")
        .args(["demo", "--postgres", "--rotations", "3", "--every", "3"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Each rotation moves the app to the other role, with no failure.
    let rotations: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" of 3: version "))
        .collect();
    assert_eq!(rotations.len(), 3, "{stdout}");
    for (line, role) in rotations.iter().zip(["demo_b", "demo_a", "demo_b"]) {
        assert!(
            line.contains(&format!("the app's queries run as {role};")),
            "{line}\n{stdout}"
        );
        assert!(line.ends_with(" 0 failed"), "{line}");
        let ok: u64 = line
            .split("since the last rotation ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no query count in {line:?}"));
        assert!(ok > 0, "{line}");
    }
    // The role left idle takes none of the app's old passwords.
    assert_eq!(
        stdout
            .matches("no password the app held for it logs in any more")
            .count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("the sidecar's SIGUSR1") || stdout.contains("seen changed"),
        "{stdout}"
    );
    assert!(stdout.contains("3 rotations,"), "{stdout}");
    // The cluster is stopped: nothing listens on its port any more.
    let port: u16 = stdout
        .split("PostgreSQL on 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {stdout}"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let out_dir = stdout
        .lines()
        .find_map(|l| l.split(" writes ").nth(1))
        .and_then(|l| l.split(' ').next())
        .unwrap();
    assert!(
        !std::path::Path::new(out_dir).exists(),
        "{out_dir} left behind"
    );
}

/// A directory without PostgreSQL's server binaries: the demo says which
/// are missing and what it expected, and starts nothing.
#[test]
fn the_postgres_demo_names_missing_server_binaries() {
    let empty = tempfile::tempdir().unwrap();
    let out = command("rotor")
        .args(["demo", "--postgres", "--postgres-bin-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("no initdb or postgres there")
            && stderr.contains("PostgreSQL's server binaries"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
}

/// Ctrl-C during `rotor demo --postgres` stops the cluster with the rest:
/// nothing listens on its port afterwards, and the demo exits cleanly.
#[test]
fn ctrl_c_stops_the_postgres_demo_and_its_cluster() {
    use std::io::BufRead;
    let mut child = command("rotor")
        .args(["demo", "--postgres", "--rotations", "100", "--every", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("app: a pool of")) {
        let line = lines.next().expect("the demo stopped early").unwrap();
        seen.push(line);
    }
    let port: u16 = seen
        .iter()
        .find_map(|l| l.split("PostgreSQL on 127.0.0.1:").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {seen:?}"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    rotor_e2e::signal(&child, "INT");
    // Drain stdout so the demo never blocks on a full pipe.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("the PostgreSQL cluster")),
        "{rest:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "PostgreSQL still listens on {port}"
    );
}
