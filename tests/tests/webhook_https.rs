//! `rotor-controller webhook --stores DIR` as a real process, over real
//! HTTPS (curl with the generated CA), and its certificate reload.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rotor_e2e::{command, free_port, wait_until};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../controller/tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn certs(dir: &Path) {
    let out = command("rotor-controller")
        .args(["certs", "--dns-name", "localhost", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POSTs `body` to /mutate, trusting `ca`; `None` when TLS fails.
fn curl(port: u16, ca: &Path, body: &str) -> Option<(u16, serde_json::Value)> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://localhost:{port}/mutate"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n')?;
    Some((
        code.trim().parse().ok()?,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    ))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mutate_over_https_and_reload_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, stores) = (dir.path().join("tls"), dir.path().join("stores"));
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&stores).unwrap();
    std::fs::write(stores.join("stores.yaml"), fixture("stores.yaml")).unwrap();
    certs(&tls);
    let first_ca = dir.path().join("first-ca.crt");
    std::fs::copy(tls.join("ca.crt"), &first_ca).unwrap();
    let port = free_port();
    let _server = Server(
        command("rotor-controller")
            .args(["webhook", "--stores"])
            .arg(&stores)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--tls-key")
            .arg(tls.join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(10, || curl(port, &first_ca, "{}").is_some()),
        "webhook never served HTTPS"
    );

    let (status, v) = curl(port, &first_ca, &fixture("inject.json")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["response"]["allowed"], true);
    assert!(v["response"]["patch"].is_string());
    let (status, v) = curl(port, &first_ca, &fixture("unknown-store.json")).unwrap();
    assert_eq!(status, 200);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    let (status, _) = curl(port, &first_ca, "{broken").unwrap();
    assert_eq!(status, 400);

    // New certificate from a new CA: the server switches without a restart.
    certs(&tls);
    let second_ca = tls.join("ca.crt");
    assert!(
        wait_until(10, || curl(
            port,
            &second_ca,
            &fixture("no-annotation.json")
        )
        .is_some_and(|(s, _)| s == 200)),
        "the new certificate was never served"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        curl(port, &first_ca, "{}").is_none(),
        "the old certificate is still served"
    );
}
