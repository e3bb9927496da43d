//! Real servers for the tests, started on free loopback ports and stopped
//! on drop: OpenBao (`bao server -dev`) and moto (`moto_server`), both from
//! the venv that `tests/install-tools` fills, each a [`ServerProcess`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{retry_on_addr_in_use, wait_until};

/// The venv with the test tools: `ROTOR_TEST_VENV`, or `.venv-test` at the
/// workspace root.
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("ROTOR_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace root")
                .join(".venv-test")
        });
    let path = venv.join("bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing; run tests/install-tools (tests/run does)",
        path.display()
    );
    path
}

/// Runs checkov's Kubernetes checks on a manifest file, skipping `skip`;
/// panics with its report unless every check passes. Returns the report.
pub fn checkov(file: &std::path::Path, skip: &[&str]) -> String {
    let mut cmd = Command::new(venv_bin("checkov"));
    if !skip.is_empty() {
        cmd.arg("--skip-check").arg(skip.join(","));
    }
    let out = cmd
        .arg("-f")
        .arg(file)
        .args([
            "--framework",
            "kubernetes",
            "--compact",
            "--quiet",
            "--skip-download",
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .output()
        .expect("run checkov");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("Failed checks: 0"),
        "checkov on {}:\n{text}",
        file.display()
    );
    text
}

/// A minimal HTTP/1.1 client for setting servers up: `(status, body)`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).ok()?;
    sock.write_all(body.as_bytes()).ok()?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    // Undo chunked transfer encoding, which Go servers use.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// How to run one server: its command line and readiness check for a port.
type Spawn = Box<dyn Fn(u16) -> Command + Send + Sync>;
type Ready = Box<dyn Fn(u16) -> bool + Send + Sync>;

/// A server process on a loopback port: spawned with its stderr in a log,
/// waited for until ready (on a fresh port when another process took the
/// port first), stopped with SIGTERM by [`stop`](Self::stop) and killed on
/// drop.
pub struct ServerProcess {
    pub port: u16,
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    spawn: Spawn,
    ready: Ready,
}

impl ServerProcess {
    /// Starts `spawn(port)` on a free port, with its stderr in `log`, and
    /// waits up to 30 s for `ready(port)`.
    pub fn start(
        name: &'static str,
        log: PathBuf,
        spawn: impl Fn(u16) -> Command + Send + Sync + 'static,
        ready: impl Fn(u16) -> bool + Send + Sync + 'static,
    ) -> Self {
        let mut server = Self {
            port: 0,
            name,
            child: None,
            log,
            spawn: Box::new(spawn),
            ready: Box::new(ready),
        };
        server.port = retry_on_addr_in_use(|port| server.spawn_on(port).map(|()| port));
        server
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns on `port`; the log of a child that exited before it was ready.
    fn spawn_on(&mut self, port: u16) -> Result<(), String> {
        let mut child = (self.spawn)(port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        let mut exited = false;
        let ready = wait_until(30, || {
            exited = child.try_wait().unwrap().is_some();
            exited || (self.ready)(port)
        });
        if exited {
            return Err(self.log_text());
        }
        self.child = Some(child);
        assert!(
            ready,
            "{} did not become ready: {}",
            self.name,
            self.log_text()
        );
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        if let Err(log) = self.spawn_on(port) {
            panic!("{} did not start again: {log}", self.name);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An OpenBao dev server with root token `root`.
pub struct Bao {
    pub port: u16,
    process: ServerProcess,
    tls: bool,
    dir: tempfile::TempDir,
}

impl Bao {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A dev server whose every request is written to its audit log
    /// ([`Bao::audited_requests`]): what the store saw, counted by the
    /// store. OpenBao enables an audit device through the API only when
    /// its configuration allows it, hence the one-line config file.
    pub fn start_audited() -> Self {
        let bao = Self::start_with_config(false, Some("unsafe_allow_api_audit_creation = true\n"));
        let log = bao.audit_log();
        bao.api(
            "PUT",
            "sys/audit/file",
            &serde_json::json!({"type": "file", "options": {"file_path": log}}).to_string(),
        );
        bao
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// The `(operation, path)` of every request in the audit log so far
    /// (empty without [`Bao::start_audited`]).
    pub fn audited_requests(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "request")
            .map(|e| {
                let op = e["request"]["operation"].as_str().unwrap_or("").to_owned();
                let path = e["request"]["path"].as_str().unwrap_or("").to_owned();
                (op, path)
            })
            .collect()
    }

    /// The audit log's length now: a mark for [`Bao::audited_since`].
    pub fn audit_mark(&self) -> u64 {
        std::fs::metadata(self.audit_log()).map_or(0, |m| m.len())
    }

    /// How many requests the audit log records after `mark`, read as a
    /// stream (a busy server's log grows by hundreds of MB an hour).
    pub fn audited_since(&self, mark: u64) -> u64 {
        use std::io::{BufRead, Seek};
        let Ok(mut file) = std::fs::File::open(self.audit_log()) else {
            return 0;
        };
        if file.seek(std::io::SeekFrom::Start(mark)).is_err() {
            return 0;
        }
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|e| e["type"] == "request")
            .count() as u64
    }

    /// Empties the audit log; OpenBao appends, so it writes on from the
    /// start.
    pub fn truncate_audit(&self) {
        if let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.audit_log())
        {
            let _ = f.set_len(0);
        }
    }

    /// A dev server with TLS (`-dev-tls`); its CA is [`Bao::ca`].
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        Self::start_with_config(tls, None)
    }

    fn start_with_config(tls: bool, config: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_owned();
        let config = config.map(|text| {
            let path = home.join("config.hcl");
            std::fs::write(&path, text).unwrap();
            path
        });
        let certs = home.join("tls");
        let ca = ca_of(&home);
        let spawn = move |port: u16| {
            let mut cmd = Command::new(venv_bin("bao"));
            cmd.args(["server", "-dev", "-dev-root-token-id=root"]);
            if tls {
                std::fs::create_dir_all(&certs).unwrap();
                cmd.arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", certs.display()));
            }
            if let Some(config) = &config {
                cmd.arg(format!("-config={}", config.display()));
            }
            cmd.arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .env("HOME", &home);
            cmd
        };
        let ready = move |port: u16| {
            if tls {
                // The setup client speaks plain HTTP: wait for the port and the CA.
                ca.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                request(
                    port,
                    "GET",
                    "/v1/secret/config",
                    &[("x-vault-token", "root")],
                    "",
                )
                .is_some_and(|(s, _)| s == 200)
            }
        };
        let process = ServerProcess::start("bao", dir.path().join("bao.log"), spawn, ready);
        Self {
            port: process.port,
            process,
            tls,
            dir,
        }
    }

    /// The CA of a TLS dev server.
    pub fn ca(&self) -> PathBuf {
        ca_of(self.dir.path())
    }

    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Calls the API as root; panics unless it answers 2xx.
    pub fn api(&self, method: &str, path: &str, body: &str) -> String {
        let (status, text) = request(
            self.port,
            method,
            &format!("/v1/{path}"),
            &[("x-vault-token", "root")],
            body,
        )
        .unwrap_or_else(|| panic!("bao did not answer {method} {path}"));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status}: {text}"
        );
        text
    }

    /// The process, to stop and restart (dev mode keeps no data over a
    /// restart).
    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

fn ca_of(dir: &Path) -> PathBuf {
    dir.join("tls").join("vault-ca.pem")
}

/// A moto server for AWS Secrets Manager.
pub struct Moto {
    pub port: u16,
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Where moto's request recorder writes, when started.
        let recording = dir.path().join("recording.jsonl");
        let spawn = move |port: u16| {
            let mut cmd = Command::new(venv_bin("moto_server"));
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_RECORDER_FILEPATH", &recording);
            cmd
        };
        let ready = |port: u16| request(port, "GET", "/moto-api/", &[], "").is_some();
        let process =
            ServerProcess::start("moto_server", dir.path().join("moto.log"), spawn, ready);
        Self {
            port: process.port,
            process,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A Secrets Manager store client for this server.
    pub async fn store(&self) -> rotor_store::AwsStore {
        aws_store(self.endpoint()).await
    }

    /// The process, to stop and restart (moto keeps no data over a restart).
    pub fn process(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    /// Starts moto's request recorder: every request from now on, with
    /// its headers and body.
    pub fn start_recording(&self) {
        let reply = request(
            self.port,
            "POST",
            "/moto-api/recorder/start-recording",
            &[],
            "",
        );
        assert_eq!(reply.map(|r| r.0), Some(200), "start moto's recorder");
    }

    /// The requests recorded so far: `{method, url, headers, body,
    /// body_encoded}` each.
    pub fn recording(&self) -> Vec<serde_json::Value> {
        let (status, body) = request(
            self.port,
            "GET",
            "/moto-api/recorder/download-recording",
            &[],
            "",
        )
        .expect("moto's recording");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a recorded request"))
            .collect()
    }
}

/// A request moto recorded ([`Moto::recording`]): its body as text.
pub fn recorded_body(entry: &serde_json::Value) -> String {
    use base64::Engine as _;
    let body = entry["body"].as_str().unwrap_or_default();
    if entry["body_encoded"].as_bool() == Some(true) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        body.to_owned()
    }
}

/// A Secrets Manager store client for `endpoint` in `us-east-1`, with the
/// static credentials moto takes.
pub async fn aws_store(endpoint: String) -> rotor_store::AwsStore {
    rotor_store::AwsStore::new(rotor_store::AwsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        static_credentials: Some(("test".into(), "test".to_owned().into())),
        web_identity: None,
    })
    .await
}
