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
    curl_timed(port, ca, body, &[]).map(|(status, v, _)| (status, v))
}

/// [`curl`] with more curl flags, also returning curl's total time (s).
fn curl_timed(
    port: u16,
    ca: &Path,
    body: &str,
    extra: &[&str],
) -> Option<(u16, serde_json::Value, f64)> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{time_total}",
        ])
        .args(extra)
        .arg("--cacert")
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
    let (json, tail) = text.rsplit_once('\n')?;
    let (code, time) = tail.trim().split_once(' ')?;
    Some((
        code.parse().ok()?,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        time.parse().ok()?,
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
                        .map(|_| {
                            // Large reviews are decoded one at a time.
                            curl_timed(port, &ca, &body, &["--max-time", "60"])
                                .map(|(status, v, _)| (status, v))
                                .expect("an answer")
                        })
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

/// The webhook with `--metrics-addr`, logging to `dir/webhook.log`;
/// returns it, its port and its metrics port (a different one).
fn start_webhook_with_metrics(dir: &Path) -> (Server, u16, u16) {
    let port = free_port();
    let metrics_port = std::iter::repeat_with(free_port)
        .find(|p| *p != port)
        .unwrap();
    let log = std::fs::File::create(dir.join("webhook.log")).unwrap();
    let server = Server(
        webhook_command(dir, port)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    (server, port, metrics_port)
}

/// The inject fixture with `edit` applied to its pod.
fn review_with_pod(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut review: serde_json::Value = serde_json::from_str(&fixture("inject.json")).unwrap();
    edit(&mut review["request"]["object"]);
    review.to_string()
}

/// The reviews that cost the most before the limits: 161,000 containers
/// (a 30.6 MB answer after 24 s at 1.76 GB), 2 MB of env entries
/// (458 MB), 2 MB of one-letter args (no named cap: the JSON value cap),
/// and the costliest review under every cap: 64 containers of 64 env
/// entries with long values, which is admitted and injected.
fn worst_reviews() -> Vec<(&'static str, String)> {
    let containers = review_with_pod(|pod| {
        pod["spec"]["containers"] = vec![serde_json::json!({"name": "a"}); 161_000].into();
    });
    let env = review_with_pod(|pod| {
        pod["spec"]["containers"][0]["env"] =
            vec![serde_json::json!({"name": "A"}); 160_000].into();
    });
    let args = review_with_pod(|pod| {
        pod["spec"]["containers"][0]["args"] = vec![serde_json::json!("a"); 500_000].into();
    });
    let within = review_with_pod(|pod| {
        let env: Vec<_> = (0..64)
            .map(|i| serde_json::json!({"name": format!("VAR_{i}"), "value": "v".repeat(480)}))
            .collect();
        pod["spec"]["containers"] = (0..64)
            .map(|i| serde_json::json!({"name": format!("app-{i}"), "image": "example/app:1", "env": env}))
            .collect::<Vec<_>>()
            .into();
    });
    vec![
        ("161,000 containers", containers),
        ("160,000 env entries", env),
        ("500,000 args", args),
        ("64 × 64 env entries (within the caps)", within),
    ]
}

#[test]
fn a_review_with_161000_containers_is_refused_at_once_with_a_small_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start_webhook(dir.path(), Stdio::null());
    let ca = dir.path().join("tls").join("ca.crt");
    assert!(
        wait_until(10, || curl(port, &ca, "{}").is_some()),
        "webhook never served HTTPS"
    );
    let (_, body) = worst_reviews().remove(0);
    assert!(body.len() > 2_000_000, "{}", body.len());
    let (status, v, seconds) = curl_timed(port, &ca, &body, &[]).expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(v["response"]["uid"], "uid-inject");
    assert_eq!(v["response"]["allowed"], false, "{v}");
    let message = v["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("161000 containers") && message.contains("at most 64"),
        "{message}"
    );
    let answer = v.to_string().len();
    assert!(answer < 2048, "answer of {answer} bytes");
    eprintln!(
        "161,000 containers ({} KiB): refused in {:.0} ms with {answer} B, peak RSS {} MiB",
        body.len() / 1024,
        seconds * 1000.0,
        peak_rss_kib(server.0.id()) / 1024
    );
}

/// Slow senders: curl uploading a 2 MB review at 200 B/s (it would take
/// three hours). Each is cut off at the body deadline (a 408, or the
/// connection closed under curl while it sends), and none holds a review
/// slot while it trickles. Returns curl's exit code and HTTP status.
fn trickle(port: u16, ca: &Path, body: &Path) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "--limit-rate",
            "200",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://localhost:{port}/mutate"))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// Eight senders flooding the worst reviews, four slow senders and a
/// probe loop at once, for longer than the body deadline: every probe is
/// answered and injected, every worst review is refused (or, within the
/// caps, injected) with a small answer, the slow senders are cut off, and
/// the webhook stays under its Deployment's memory limit. Peak RSS and the
/// probes' latency are printed.
#[test]
fn a_flood_and_slow_senders_leave_valid_reviews_answered() {
    const LIMIT_MIB: u64 = 128; // deploy/base/deployment.yaml
    let dir = tempfile::tempdir().unwrap();
    let (server, port, metrics_port) = start_webhook_with_metrics(dir.path());
    let pid = server.0.id();
    let ca = dir.path().join("tls").join("ca.crt");
    assert!(
        wait_until(10, || curl(port, &ca, "{}").is_some()),
        "webhook never served HTTPS: {}",
        std::fs::read_to_string(dir.path().join("webhook.log")).unwrap_or_default()
    );
    let probe = fixture("inject.json");
    let idle = peak_rss_kib(pid);
    let worst = worst_reviews();
    let slow_body = dir.path().join("slow.json");
    std::fs::write(&slow_body, &worst[1].1).unwrap();
    let attacking = std::sync::atomic::AtomicBool::new(true);
    let (latencies, flood, slow) = std::thread::scope(|s| {
        let slow: Vec<_> = (0..4)
            .map(|_| s.spawn(|| trickle(port, &ca, &slow_body)))
            .collect();
        let flood: Vec<_> = (0..8)
            .map(|i| {
                let (worst, attacking, ca) = (&worst, &attacking, &ca);
                s.spawn(move || {
                    let mut answers = Vec::new();
                    let mut n = i;
                    while attacking.load(std::sync::atomic::Ordering::Relaxed) {
                        let (name, body) = &worst[n % worst.len()];
                        answers.push((*name, curl_timed(port, ca, body, &["--max-time", "30"])));
                        n += 1;
                    }
                    answers
                })
            })
            .collect();
        // Probes until every slow sender is done (cut off), at least 15 s.
        let started = std::time::Instant::now();
        let mut latencies = Vec::new();
        while started.elapsed() < std::time::Duration::from_secs(15)
            || slow.iter().any(|t| !t.is_finished())
        {
            let answer = curl_timed(port, &ca, &probe, &[]);
            let (status, v, seconds) = answer.expect("a probe was not answered under the attack");
            assert_eq!(status, 200, "{v}");
            assert!(v["response"]["patch"].is_string(), "{v}");
            latencies.push(seconds);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        attacking.store(false, std::sync::atomic::Ordering::Relaxed);
        let flood: Vec<_> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let slow: Vec<_> = slow.into_iter().map(|t| t.join().unwrap()).collect();
        (latencies, flood, slow)
    });
    let peak = peak_rss_kib(pid);

    // Cut off by the webhook, not by curl's own 60 s limit (exit 28).
    for (exit, status) in &slow {
        assert!(
            *exit != Some(28) && status != "200",
            "a slow sender was not cut off: {slow:?}"
        );
    }
    let mut largest = 0;
    for (name, answer) in &flood {
        let (status, v, _) = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no answer"));
        assert_eq!(*status, 200, "{name}: {v}");
        let within = name.contains("within");
        assert_eq!(v["response"]["allowed"], within, "{name}: {v}");
        if !within {
            largest = largest.max(v.to_string().len());
        }
    }
    assert!(largest < 2048, "a refusal of {largest} bytes");
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize] * 1000.0;
    eprintln!(
        "flood: {} worst reviews from 8 senders + 4 slow senders (cut off: {slow:?}); {} probes answered: median {:.0} ms, p95 {:.0} ms, max {:.0} ms; peak RSS {} MiB (idle {} MiB, limit {LIMIT_MIB} MiB)",
        flood.len(),
        latencies.len(),
        at(0.5),
        at(0.95),
        at(1.0),
        peak / 1024,
        idle / 1024,
    );
    assert!(peak / 1024 < LIMIT_MIB, "peak RSS {} MiB", peak / 1024);

    // Each refusal was counted, under its reason.
    let metrics = scrape(metrics_port);
    let refused = flood.iter().filter(|(n, _)| !n.contains("within")).count();
    let series = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(
        series(r#"rotor_admission_denials_total{reason="too_large"}"#),
        refused as u64
    );
    assert_eq!(
        series(r#"rotor_admission_requests_total{operation="unknown",result="error"}"#),
        slow.len() as u64
    );
}

/// The text of `/metrics` on `port`; empty when it does not answer.
fn scrape(port: u16) -> String {
    rotor_e2e::servers::request(port, "GET", "/metrics", &[], "")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// `--metrics-addr` serves the admission metrics, every series from 0.
#[test]
fn admission_metrics_start_at_zero_and_count_each_review() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port, metrics_port) = start_webhook_with_metrics(dir.path());
    assert!(wait_until(10, || scrape(metrics_port)
        .contains("rotor_admission_requests_total")));
    let before = scrape(metrics_port);
    for line in [
        r#"rotor_admission_requests_total{operation="create",result="patched"} 0"#,
        r#"rotor_admission_requests_total{operation="update",result="denied"} 0"#,
        r#"rotor_admission_requests_total{operation="unknown",result="error"} 0"#,
        r#"rotor_admission_denials_total{reason="store_not_allowed"} 0"#,
        r#"rotor_admission_denials_total{reason="too_large"} 0"#,
        "rotor_admission_duration_seconds_count 0",
    ] {
        assert!(before.contains(line), "{line} in {before}");
    }
    let ca = dir.path().join("tls").join("ca.crt");
    assert_eq!(curl(port, &ca, &fixture("inject.json")).unwrap().0, 200);
    assert_eq!(
        curl(port, &ca, &fixture("unknown-store.json")).unwrap().0,
        200
    );
    assert_eq!(curl(port, &ca, "{broken").unwrap().0, 400);
    let after = scrape(metrics_port);
    for line in [
        r#"rotor_admission_requests_total{operation="create",result="patched"} 1"#,
        r#"rotor_admission_requests_total{operation="create",result="denied"} 1"#,
        r#"rotor_admission_requests_total{operation="unknown",result="error"} 1"#,
        r#"rotor_admission_denials_total{reason="store_not_allowed"} 1"#,
        "rotor_admission_duration_seconds_count 3",
    ] {
        assert!(after.contains(line), "{line} in {after}");
    }
}
