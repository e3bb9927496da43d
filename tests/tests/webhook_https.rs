//! `rotor-controller webhook --stores DIR` as a real process, over real
//! HTTPS (curl with the generated CA), and its certificate reload.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use rotor_e2e::{command, free_port, wait_until};
use rotor_fixtures::procfs::peak_rss_kib;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../controller/tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn certs(dir: &Path, extra: &[&str]) {
    let out = command("rotor-controller")
        .args(["certs", "--dns-name", "localhost", "--out"])
        .arg(dir)
        .args(extra)
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

/// `rotor-controller webhook` on `port` with the fixture stores and new
/// certificates in `dir/tls`.
fn webhook_command(dir: &Path, port: u16) -> Command {
    let (tls, stores) = (dir.join("tls"), dir.join("stores"));
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&stores).unwrap();
    std::fs::write(stores.join("stores.yaml"), fixture("stores.yaml")).unwrap();
    certs(&tls, &[]);
    let mut cmd = command("rotor-controller");
    cmd.args(rotor_fixtures::webhook::args(&stores, port, &tls))
        .stdout(Stdio::null());
    cmd
}

/// The webhook on a free port, logging to `log`; returns it and its port.
fn start_webhook(dir: &Path, log: Stdio) -> (Server, u16) {
    let port = free_port();
    let server = Server(webhook_command(dir, port).stderr(log).spawn().unwrap());
    (server, port)
}

#[test]
fn mutate_over_https_and_reload_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_webhook(dir.path(), Stdio::null());
    let tls = dir.path().join("tls");
    let first_ca = dir.path().join("first-ca.crt");
    std::fs::copy(tls.join("ca.crt"), &first_ca).unwrap();
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

    // Running `certs` again does not replace the CA in use by accident...
    let again = command("rotor-controller")
        .args(["certs", "--out"])
        .arg(&tls)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("ca.crt already exists") && stderr.contains("pass --force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(tls.join("ca.crt")).unwrap(),
        std::fs::read(&first_ca).unwrap()
    );
    // ...only with --force. New certificate from a new CA: the server
    // switches without a restart.
    certs(&tls, &["--force"]);
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
    // The new certificate is served (waited for above): the old one is not.
    assert!(
        curl(port, &first_ca, "{}").is_none(),
        "the old certificate is still served"
    );
}

/// The worst-case review: 2 MB of bad reload actions plus hundreds of
/// unknown annotations. Once it cost a 27.7 MB response, a 27 MB log line
/// and 179 MiB of RSS, and the deployment's 128 MiB limit OOM-killed the
/// webhook. A flood of them (a bounded count, 8 at a time) now gets small
/// answers, short log lines, and stays under the limit.
#[test]
fn a_flood_of_worst_case_reviews_stays_under_the_memory_limit() {
    const LIMIT_MIB: u64 = 128; // deploy/base/deployment.yaml
    const REVIEWS: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("webhook.log");
    let (server, port) = start_webhook(dir.path(), std::fs::File::create(&log).unwrap().into());
    let tls = dir.path().join("tls");
    let ca = tls.join("ca.crt");
    assert!(
        wait_until(10, || curl(port, &ca, "{}").is_some()),
        "webhook never served HTTPS"
    );
    let mut review: serde_json::Value = serde_json::from_str(&fixture("inject.json")).unwrap();
    let a = &mut review["request"]["object"]["metadata"]["annotations"];
    a["rotor.dev/reload"] = "signal:X:y,".repeat(190_000).into();
    for i in 0..500 {
        a[format!("rotor.dev/unknown-{i}")] = "x".into();
    }
    let body = review.to_string();
    assert!(body.len() > 2_000_000);
    let before = peak_rss_kib(server.0.id());

    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..REVIEWS / 8)
                        .map(|_| curl(port, &ca, &body).expect("an answer"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(answers.len(), REVIEWS);
    let mut largest = 0;
    for (status, v) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(v["response"]["allowed"], false);
        largest = largest.max(v.to_string().len());
    }
    let peak = peak_rss_kib(server.0.id());
    let longest_line = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::len)
        .max()
        .unwrap_or(0);
    eprintln!(
        "flood of {REVIEWS} × {} KiB reviews: peak RSS {} MiB (idle {} MiB, limit {LIMIT_MIB} MiB), largest answer {largest} B, longest log line {longest_line} B",
        body.len() / 1024,
        peak / 1024,
        before / 1024
    );
    assert!(peak / 1024 < LIMIT_MIB, "peak RSS {} MiB", peak / 1024);
    assert!(largest < 8 * 1024, "answer of {largest} bytes");
    assert!(
        longest_line <= rotor_telemetry::MAX_LOG_LINE + 64,
        "{longest_line}"
    );
}

/// The same webhook configured only through the environment: each of its
/// flags reads the variable named after it.
#[test]
fn the_webhook_reads_each_flag_from_the_variable_named_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let with_flags = webhook_command(dir.path(), port);
    let mut cmd = command("rotor-controller");
    cmd.arg("webhook")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let flags: Vec<_> = with_flags.get_args().skip(1).collect();
    assert_eq!(flags.len(), 8, "--stores, --listen, --tls-cert, --tls-key");
    for pair in flags.chunks(2) {
        let flag = pair[0].to_str().unwrap().strip_prefix("--").unwrap();
        cmd.env(rotor_telemetry::flags::env_name(flag), pair[1]);
    }
    let _server = Server(cmd.spawn().unwrap());
    let ca = dir.path().join("tls").join("ca.crt");
    assert!(
        wait_until(10, || curl(port, &ca, "{}").is_some()),
        "webhook never served HTTPS on ROTOR_LISTEN's port"
    );
    let (status, v) = curl(port, &ca, &fixture("inject.json")).unwrap();
    assert_eq!(status, 200);
    assert!(v["response"]["patch"].is_string(), "{v}");
}

/// A port in use is the error, and "listening" is never logged before it.
#[test]
fn a_port_in_use_is_the_error_not_a_listening_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = webhook_command(dir.path(), port).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} (--listen)")),
        "{stderr}"
    );
    assert!(!stderr.contains("webhook listening"), "{stderr}");
}
