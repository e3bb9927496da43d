//! Real servers for the tests, started on free loopback ports and stopped
//! on drop: OpenBao (`bao server -dev`) and moto (`moto_server`), both from
//! the venv that `tests/install-tools` fills.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

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

/// An OpenBao dev server with root token `root`.
pub struct Bao {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    tls: bool,
    _dir: tempfile::TempDir,
}

impl Bao {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A dev server with TLS (`-dev-tls`); its CA is [`Bao::ca`].
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut bao = Self {
            port: free_port(),
            child: None,
            log: dir.path().join("bao.log"),
            tls,
            _dir: dir,
        };
        bao.spawn();
        bao
    }

    /// The CA of a TLS dev server.
    pub fn ca(&self) -> PathBuf {
        self._dir.path().join("tls").join("vault-ca.pem")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(venv_bin("bao"));
        cmd.args(["server", "-dev", "-dev-root-token-id=root"]);
        if self.tls {
            let certs = self._dir.path().join("tls");
            std::fs::create_dir_all(&certs).unwrap();
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", certs.display()));
        }
        let child = cmd
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .env("HOME", self._dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("start bao");
        self.child = Some(child);
        let port = self.port;
        let ready = if self.tls {
            // The setup client speaks plain HTTP: wait for the port and the CA.
            let ca = self.ca();
            wait_until(30, || {
                ca.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
        } else {
            wait_until(30, || {
                request(
                    port,
                    "GET",
                    "/v1/secret/config",
                    &[("x-vault-token", "root")],
                    "",
                )
                .is_some_and(|(s, _)| s == 200)
            })
        };
        assert!(
            ready,
            "bao did not become ready: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
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

    /// Stops the server (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Starts a fresh dev server on the same port (dev mode keeps no data).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A moto server for AWS Secrets Manager.
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Self {
        let mut moto = Self {
            port: free_port(),
            child: None,
        };
        moto.spawn();
        moto
    }

    fn spawn(&mut self) {
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(30, || request(port, "GET", "/moto-api/", &[], "").is_some()),
            "moto_server did not become ready"
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
