//! The channel under load, against the real `rotor-controller standalone`
//! (release build) with a load generator speaking the protocol in place of
//! sidecars (each peer is one TLS connection and one stream, as a sidecar
//! holds):
//!
//! - rotation start to all acknowledged, 100 consumers that acknowledge
//!   each pin at once: from the policy's rotate-now to the status leaving
//!   Propagating, and from the first pin a peer sees to the last ack sent;
//! - 1,000 connected idle streams: the controller's RSS and CPU % over
//!   10 s, then the time for all 1,000 to be connected again after the
//!   controller is restarted (peers re-dial with full jitter from 0.5 s,
//!   doubling, capped at 30 s, as the sidecar does).
//!
//! `cargo build --release --bins -p rotor-controller && cargo bench -p
//! rotor-e2e --bench channel`; prints one table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotor_channel::{Ack, Downstream, ReloadResult, Upstream};
use rotor_e2e::channel_peer::{Stream, frame, hello, tls};
use rotor_e2e::standalone::metric_in;
use rotor_e2e::{free_port, http, wait_until};
use rotor_store::backoff::{Backoff, Retry};
use rotor_store::random::Seeded;

/// The controller next to the bench's profile directory, or in
/// `ROTOR_BENCH_BIN_DIR` (a release build, when the bench itself runs as a
/// debug build: `cargo test --bench channel`).
fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = match std::env::var_os("ROTOR_BENCH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => exe.parent().and_then(Path::parent).unwrap().to_owned(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --release --bins -p rotor-controller` first",
        path.display()
    );
    path
}

struct Controller {
    child: Child,
    metrics: u16,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_controller(policies: &Path, state: &Path, channel: u16) -> Controller {
    let metrics = free_port();
    let child = Command::new(release_bin("rotor-controller"))
        .args(["standalone", "--policies"])
        .arg(policies)
        .arg("--state")
        .arg(state)
        .args(["--channel-addr", &format!("127.0.0.1:{channel}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .env("ROTOR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let c = Controller { child, metrics };
    assert!(wait_until(30, || state.join("channel/ca.crt").is_file()
        && http(metrics, "GET", "/metrics", "").is_some()));
    c
}

fn streams(c: &Controller) -> f64 {
    http(c.metrics, "GET", "/metrics", "")
        .map(|(_, t)| metric_in(&t, "rotor_channel_streams"))
        .unwrap_or(0.0)
}

/// utime + stime of a process, in clock ticks (100 Hz).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Sidecars' stand-ins: each holds a stream, acknowledges every request
/// at once, and re-dials with full jitter when its stream ends.
struct Load {
    connected: Arc<AtomicUsize>,
    /// When each pin arrived and each ack left.
    first_pin: Arc<Mutex<Option<Instant>>>,
    last_ack: Arc<Mutex<Option<Instant>>>,
}

fn load(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    ca: PathBuf,
    token: String,
    n: usize,
) -> Load {
    let load = Load {
        connected: Arc::new(AtomicUsize::new(0)),
        first_pin: Arc::new(Mutex::new(None)),
        last_ack: Arc::new(Mutex::new(None)),
    };
    let tls = tls(&ca);
    for i in 0..n {
        let (tls, token) = (tls.clone(), token.clone());
        let connected = load.connected.clone();
        let (first_pin, last_ack) = (load.first_pin.clone(), load.last_ack.clone());
        rt.spawn(async move {
            // The sidecar's reconnect backoff (full jitter over 0.5 s
            // doubling, capped at 30 s), each consumer with its own seed.
            let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            let random = Seeded::new(0x9e37_79b9_7f4a_7c15u64 ^ i as u64);
            let mut retry = Retry::default();
            loop {
                if let Ok(mut s) = Stream::hello(
                    addr,
                    tls.clone(),
                    Some(&token),
                    &hello("default", &format!("c-{i}"), &["app/db"]),
                )
                .await
                    && let Some(Downstream::Welcome(_)) = s.next_not_ping().await
                {
                    retry.reset();
                    connected.fetch_add(1, Ordering::SeqCst);
                    while let Some(message) = s.next().await {
                        let (request, secret, version) = match message {
                            Downstream::Pin(p) => {
                                first_pin.lock().unwrap().get_or_insert_with(Instant::now);
                                (p.request, p.secret, Some(p.version))
                            }
                            Downstream::Release(r) => (r.request, r.secret, None),
                            Downstream::VersionAvailable(v) => (v.request, v.secret, None),
                            _ => continue,
                        };
                        let pinned = version.is_some();
                        let ack = Upstream::Ack(Ack {
                            request,
                            secret,
                            version: version.or(Some("current".into())),
                            digest: None,
                            reload: ReloadResult::Reloaded,
                            error: None,
                        });
                        if !s.send_raw(frame(&ack)).await {
                            break;
                        }
                        if pinned {
                            *last_ack.lock().unwrap() = Some(Instant::now());
                        }
                    }
                    connected.fetch_sub(1, Ordering::SeqCst);
                }
                tokio::time::sleep(retry.failed(backoff, &random)).await;
            }
        });
    }
    load
}

fn policy(sidecars: usize, rotate: u32) -> String {
    let names: Vec<String> = (0..sidecars).map(|i| format!("default/c-{i}")).collect();
    format!(
        "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {{name: db, namespace: default, annotations: {{rotor.dev/rotate-now: 'r{rotate}'}}}}\nspec:\n  storeRef: {{name: main}}\n  secretName: app/db\n  schedule: {{interval: 1h}}\n  generator: {{password: {{length: 24, minDigits: 2}}}}\n  strategy: {{staged: {{ackTimeout: 30s, gracePeriod: 1s, onTimeout: Rollback}}}}\n  sidecars: [{}]\n",
        names.join(", ")
    )
}

fn phase(state: &Path) -> String {
    std::fs::read(state.join("default.db.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["status"]["phase"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();

    // Rotation to 100 consumers.
    {
        let work = tempfile::tempdir().unwrap();
        let (policies, state) = fixtures(work.path());
        let port = free_port();
        let controller = start_controller(&policies, &state, port);
        let token = std::fs::read_to_string(state.join("channel/token")).unwrap();
        let load = load(
            &rt,
            SocketAddr::from(([127, 0, 0, 1], port)),
            state.join("channel/ca.crt"),
            token,
            100,
        );
        assert!(wait_until(60, || streams(&controller) == 100.0));
        let (mut whole, mut acks) = (Vec::new(), Vec::new());
        for round in 1..=5 {
            *load.first_pin.lock().unwrap() = None;
            *load.last_ack.lock().unwrap() = None;
            let started = Instant::now();
            std::fs::write(policies.join("policy.yaml"), policy(100, round)).unwrap();
            assert!(wait_until(60, || matches!(
                phase(&state).as_str(),
                "Retiring" | "Promoting"
            ) || (phase(&state) == "Idle"
                && load.last_ack.lock().unwrap().is_some())));
            whole.push(started.elapsed());
            let first = load.first_pin.lock().unwrap().unwrap();
            let last = load.last_ack.lock().unwrap().unwrap();
            acks.push(last.duration_since(first));
            assert!(wait_until(60, || phase(&state) == "Idle"));
        }
        rows.push((
            "rotation, 100 consumers: rotate-now written to all acknowledged (median of 5, includes the controller's 1 s file poll)".into(),
            format!("{:.0} ms", median(whole).as_secs_f64() * 1000.0),
        ));
        rows.push((
            "rotation, 100 consumers: first pin received to last ack sent (median of 5)".into(),
            format!("{:.1} ms", median(acks).as_secs_f64() * 1000.0),
        ));
        drop(controller);
    }

    // 1,000 idle streams, then a restart.
    {
        let work = tempfile::tempdir().unwrap();
        let (policies, state) = fixtures(work.path());
        let port = free_port();
        let controller = start_controller(&policies, &state, port);
        let token = std::fs::read_to_string(state.join("channel/token")).unwrap();
        let started = Instant::now();
        let load = load(
            &rt,
            SocketAddr::from(([127, 0, 0, 1], port)),
            state.join("channel/ca.crt"),
            token,
            1000,
        );
        assert!(wait_until(120, || streams(&controller) == 1000.0));
        rows.push((
            "1,000 streams: all connected from a cold start".into(),
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        ));
        let pid = controller.child.id();
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        std::thread::sleep(Duration::from_secs(10));
        let cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
        rows.push((
            "1,000 idle streams: controller RSS".into(),
            format!("{:.1} MiB", rss_mib(pid)),
        ));
        rows.push((
            "1,000 idle streams: controller CPU over 10 s".into(),
            format!("{cpu:.2} % of a core"),
        ));
        let mut controller = controller;
        rotor_e2e::signal(&controller.child, "TERM");
        let stopping = Instant::now();
        let _ = controller.child.wait();
        rows.push((
            "1,000 streams: controller stopped after SIGTERM".into(),
            format!("{:.0} ms", stopping.elapsed().as_secs_f64() * 1000.0),
        ));
        assert!(wait_until(30, || load.connected.load(Ordering::SeqCst) == 0));
        let restarted = Instant::now();
        let again = start_controller(&policies, &state, port);
        assert!(wait_until(120, || streams(&again) == 1000.0));
        rows.push((
            "1,000 streams: all reconnected after a controller restart".into(),
            format!("{:.1} s", restarted.elapsed().as_secs_f64()),
        ));
        rows.push((
            "1,000 streams: controller RSS after the reconnect storm".into(),
            format!("{:.1} MiB", rss_mib(again.child.id())),
        ));
    }

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!(
        "\n{:width$}  value",
        format!(
            "channel benchmark ({}, load generator peers)",
            release_bin("rotor-controller").display()
        )
    );
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}

/// A local store with `app/db` and its RotorStore file.
fn fixtures(dir: &Path) -> (PathBuf, PathBuf) {
    use rotor_envelope::KeyFileKek;
    let key = dir.join("kek");
    KeyFileKek::generate(&key, false).unwrap();
    let path = dir.join("store.rotor");
    let store = rotor_store::LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
    store
        .put("app/db", b"initial", rotor_store::WriteAs::Current)
        .unwrap();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("store.yaml"),
        format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
            path.display(),
            key.display()
        ),
    )
    .unwrap();
    (policies, dir.join("state"))
}
