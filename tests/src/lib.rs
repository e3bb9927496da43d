//! Harness for Rotor's end-to-end tests: finds the workspace's binaries and
//! runs them as real processes. `tests/run` builds the binaries first.

pub mod channel_peer;
pub mod cluster;
pub mod conformance;
pub mod figures;
pub mod help;
pub mod kubelet;
pub mod pod;
pub mod policy;
pub mod postgres;
pub mod servers;
pub mod standalone;
pub mod tools;
pub mod vault_sidecar;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of a binary built from this workspace, next to the test
/// executable's `deps/` directory, or in `ROTOR_BIN_DIR` when set (a copy
/// of the binaries, when several clones share one target directory and
/// overwrite each other's).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = match std::env::var_os("ROTOR_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target dir")
            .to_owned(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --bins -p rotor -p rotor-sidecar -p rotor-controller` first (tests/run does)",
        path.display()
    );
    path
}

/// The workspace's root directory (the clone).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// A command for a workspace binary with a clean, predictable environment.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    for var in [
        "ROTOR_STORE",
        "ROTOR_LOCAL_STORE",
        "ROTOR_KEY",
        "ROTOR_LOG",
        "ROTOR_LOG_FORMAT",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    // `rotor-controller standalone` serves the channel on a fixed port by
    // default; tests run side by side, so theirs take a free one unless a
    // test names it (`--channel-addr` wins over the variable).
    cmd.env("ROTOR_CHANNEL_ADDR", "127.0.0.1:0");
    cmd
}

/// Runs `cmd` with `input` on its stdin and both outputs captured.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    // A command that exits without reading its input is not our failure.
    let _ = child.stdin.take().expect("stdin").write_all(input);
    child.wait_with_output().expect("wait for the command")
}

/// Runs `cmd` (`what` names it in the panic); panics with both outputs
/// unless it succeeds. Returns stdout.
pub fn stdout_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{what}: {stderr}{stdout}");
    stdout
}

/// Both output streams, lossily decoded, for assertions.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub use rotor_fixtures::net::{free_port, loopback_listener, retry_on_addr_in_use};
pub use rotor_fixtures::tmpfs_dir;

/// A minimal blocking HTTP/1.1 exchange with a loopback server:
/// `(status, body)`, or `None` when nothing answers.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_to("127.0.0.1", port, method, path, body)
}

/// The same with a server on another loopback address (`127.0.0.N`).
pub fn http_to(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect((host, port)).ok()?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    sock.write_all(request_text(method, path, body).as_bytes())
        .ok()?;
    let mut response = String::new();
    sock.read_to_string(&mut response).ok()?;
    parse_response(&response)
}

/// The same exchange with a loopback server, sent from the source address
/// `source` (any of 127/8): std cannot bind a client socket before
/// connecting, tokio's `TcpSocket` can. Tells callers apart by address.
pub async fn http_from(
    source: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    let exchange = async {
        let mut sock = socket
            .connect((std::net::Ipv4Addr::LOCALHOST, port).into())
            .await
            .ok()?;
        sock.write_all(request_text(method, path, body).as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        sock.read_to_string(&mut response).await.ok()?;
        parse_response(&response)
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .ok()?
}

fn request_text(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn parse_response(response: &str) -> Option<(u16, String)> {
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `cond` every 10 ms for up to `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// True when `path` is on tmpfs or ramfs.
pub fn on_tmpfs(path: &std::path::Path) -> bool {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output();
    out.is_ok_and(|o| {
        let t = String::from_utf8_lossy(&o.stdout);
        t.trim() == "tmpfs" || t.trim() == "ramfs"
    })
}

/// Sends SIGTERM (or SIGKILL) to a child.
pub fn signal(child: &std::process::Child, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status();
}
