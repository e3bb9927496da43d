//! Soak: memory and threads of the release binaries under sustained churn,
//! sampled every 10 s and printed as tables.
//!
//! ```sh
//! cargo build --release --bins
//! ROTOR_SOAK_MINUTES=3 cargo bench -p rotor-e2e --bench soak -- local openbao webhook standalone
//! ```
//!
//! - `local`: `rotor-sidecar` on the local store holding 100 secrets of
//!   4 KiB, one of them (at random) changed every 100 ms (10 changes a
//!   second); the sidecar reads 60 of them (a pod has at most 64 `rotor.dev/`
//!   annotations) at a 200 ms refresh, and re-verifies the whole store file
//!   after every change.
//! - `openbao`: the same on an OpenBao dev server (KV v2).
//! - `webhook`: `rotor-controller webhook --stores DIR` answering about 100
//!   AdmissionReviews a second over HTTPS (curl, one TLS connection a
//!   second, the fixtures of `controller/tests/fixtures` in turn).
//! - `standalone`: `rotor-controller standalone` rotating a secret on the
//!   local store every second, with one sidecar acknowledging each version.
//!
//! `ROTOR_SOAK_MINUTES` sets each run's length (default 10; fractions are
//! fine). `ROTOR_SOAK_SIDECAR` measures another sidecar binary (one built
//! with another allocator, say). The target: flat after the first minute and
//! under 16 MiB for the whole run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rotor_e2e::servers::Bao;
use rotor_e2e::{free_port, http, tmpfs_dir, wait_until};
use rotor_envelope::KeyFileKek;
use rotor_fixtures::procfs;
use rotor_store::random::Seeded;
use rotor_store::{LocalStore, WriteAs};

const SECRETS: usize = 100;
/// The secrets the sidecar reads: a pod may set at most 64 `rotor.dev/`
/// annotations, one of them the refresh interval.
const READ: usize = 60;
const VALUE_LEN: usize = 4096;
const CHANGE_EVERY: Duration = Duration::from_millis(100);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const TARGET_MIB: f64 = 16.0;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built by `cargo test --benches`; only run by `cargo bench`
    }
    let minutes: f64 = std::env::var("ROTOR_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10.0);
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |key: &str| only.is_empty() || only.iter().any(|o| o == key);
    let mut summaries = Vec::new();
    if want("local") {
        summaries.extend(sidecar_soak(Backend::Local, duration));
    }
    if want("openbao") {
        summaries.extend(sidecar_soak(Backend::OpenBao, duration));
    }
    if want("webhook") {
        summaries.extend(webhook_soak(duration));
    }
    if want("standalone") {
        summaries.extend(standalone_soak(duration));
    }
    println!(
        "\n| run | process | length | RSS at 1 min | RSS after 1 min (min–max) | RSS at the end | RssAnon at the end | threads (max) | CPU after 1 min (mean, of one core) | flat and < {TARGET_MIB} MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in summaries {
        println!("{s}");
    }
}

/// The release build of a workspace binary: `target/release/NAME`, whichever
/// profile this bench was built in.
fn release_bin(name: &str) -> PathBuf {
    if name == "rotor-sidecar"
        && let Some(path) = std::env::var_os("ROTOR_SOAK_SIDECAR")
    {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.parent().unwrap().join("release").join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --release --bins` first",
        path.display()
    );
    path
}

/// One process's figures at one moment.
#[derive(Clone, Copy, Default)]
struct Proc {
    rss_kib: u64,
    anon_kib: u64,
    threads: u64,
    /// User and system CPU time so far, in clock ticks.
    cpu_ticks: u64,
}

fn proc_status(pid: u32) -> Proc {
    let field = |key: &str| procfs::status_field(pid, key).unwrap_or(0);
    Proc {
        rss_kib: field("VmRSS"),
        anon_kib: field("RssAnon"),
        threads: field("Threads"),
        cpu_ticks: procfs::cpu_ticks(pid).unwrap_or(0),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples `watched` every 10 s for `duration`, printing a row each time;
/// `extra` adds the run's own columns (work done, file sizes). Returns one
/// summary line per watched process.
fn sample(
    run: &str,
    watched: &[(&str, u32)],
    extra_heads: &[&str],
    duration: Duration,
    mut extra: impl FnMut() -> Vec<String>,
) -> Vec<String> {
    let mut head = String::from("| t |");
    let mut rule = String::from("|---|");
    for (label, _) in watched {
        head.push_str(&format!(
            " {label} RSS | {label} RssAnon | {label} threads | {label} CPU |"
        ));
        rule.push_str("---|---|---|---|");
    }
    for h in extra_heads {
        head.push_str(&format!(" {h} |"));
        rule.push_str("---|");
    }
    println!(
        "\n{run}, {} s, sampled every {} s:\n\n{head}\n{rule}",
        duration.as_secs(),
        SAMPLE_EVERY.as_secs()
    );
    let start = Instant::now();
    let hz = procfs::ticks_per_second();
    let mut series: Vec<Vec<(Duration, Proc)>> = vec![Vec::new(); watched.len()];
    let mut next = start;
    loop {
        let t = start.elapsed();
        let mut row = format!("| {:.0} s |", t.as_secs_f64());
        for (i, (_, pid)) in watched.iter().enumerate() {
            let p = proc_status(*pid);
            assert!(p.rss_kib > 0, "{run}: process {pid} is gone");
            // CPU over the last interval, as a share of one core.
            let cpu = series[i].last().map_or(0.0, |(t0, p0)| {
                (p.cpu_ticks - p0.cpu_ticks) as f64 / hz / (t - *t0).as_secs_f64() * 100.0
            });
            series[i].push((t, p));
            row.push_str(&format!(
                " {:.1} MiB | {:.1} MiB | {} | {cpu:.1} % |",
                mib(p.rss_kib),
                mib(p.anon_kib),
                p.threads
            ));
        }
        for e in extra() {
            row.push_str(&format!(" {e} |"));
        }
        println!("{row}");
        let _ = std::io::stdout().flush();
        if t >= duration {
            break;
        }
        next += SAMPLE_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    watched
        .iter()
        .zip(series)
        .map(|((label, _), s)| summarize(run, label, duration, hz, &s))
        .collect()
}

fn summarize(
    run: &str,
    label: &str,
    duration: Duration,
    hz: f64,
    s: &[(Duration, Proc)],
) -> String {
    let minute = Duration::from_secs(60);
    let (t_minute, at_minute) = *s.iter().find(|(t, _)| *t >= minute).unwrap_or(&s[0]);
    let after: Vec<u64> = s
        .iter()
        .filter(|(t, _)| *t >= minute)
        .map(|(_, p)| p.rss_kib)
        .collect();
    let (lo, hi) = (
        after.iter().copied().min().unwrap_or(0),
        after.iter().copied().max().unwrap_or(0),
    );
    let peak = s.iter().map(|(_, p)| p.rss_kib).max().unwrap_or(0);
    let (t_end, end) = *s.last().unwrap();
    let cpu = (end.cpu_ticks - at_minute.cpu_ticks) as f64
        / hz
        / (t_end - t_minute).as_secs_f64().max(1.0)
        * 100.0;
    let threads = s.iter().map(|(_, p)| p.threads).max().unwrap_or(0);
    // Flat: after the first minute RSS moves by at most 1 MiB.
    let flat = hi.saturating_sub(lo) <= 1024;
    let under = mib(peak) < TARGET_MIB;
    format!(
        "| {run} | {label} | {:.1} min | {:.1} MiB | {:.1}–{:.1} MiB | {:.1} MiB | {:.1} MiB | {threads} | {cpu:.1} % | {} |",
        duration.as_secs_f64() / 60.0,
        mib(at_minute.rss_kib),
        mib(lo),
        mib(hi),
        mib(end.rss_kib),
        mib(end.anon_kib),
        match (flat, under) {
            (true, true) => "yes".to_owned(),
            (f, u) => format!(
                "no ({}{})",
                if f { "" } else { "grows " },
                if u {
                    String::new()
                } else {
                    format!("peak {:.1} MiB", mib(peak))
                }
            ),
        }
    )
}

/// A child killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A printable 4 KiB value that differs for every `n`.
fn value(n: u64) -> String {
    let unit = format!("{n:016x}-");
    unit.repeat(VALUE_LEN / unit.len() + 1)[..VALUE_LEN].to_owned()
}

/// Runs `step` every `every` on a thread until the returned flag is set;
/// the counter says how many steps ran.
fn load(
    every: Duration,
    mut step: impl FnMut(u64) + Send + 'static,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s, c) = (stop.clone(), count.clone());
    let handle = std::thread::spawn(move || {
        let mut next = Instant::now();
        while !s.load(Ordering::Acquire) {
            step(c.load(Ordering::Relaxed));
            c.fetch_add(1, Ordering::Relaxed);
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    (stop, count, handle)
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Local,
    OpenBao,
}

/// A counter from the sidecar's /metrics.
fn metric(admin: u16, name: &str) -> u64 {
    http(admin, "GET", "/metrics", "")
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .unwrap_or(0)
}

fn sidecar_soak(backend: Backend, duration: Duration) -> Vec<String> {
    let work = tmpfs_dir();
    let out = tmpfs_dir();
    let mut bao = None;
    let mut args: Vec<String> = Vec::new();
    let mut local = None;
    match backend {
        Backend::Local => {
            let key = work.path().join("kek");
            KeyFileKek::generate(&key, false).unwrap();
            let path = work.path().join("store.rotor");
            let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
            for i in 0..SECRETS {
                store
                    .put(
                        &format!("bench/s{i:03}"),
                        value(i as u64).as_bytes(),
                        WriteAs::Current,
                    )
                    .unwrap();
            }
            args.extend([
                format!("--local-store={}", path.display()),
                format!("--key={}", key.display()),
            ]);
            local = Some(store);
        }
        Backend::OpenBao => {
            let b = Bao::start();
            for i in 0..SECRETS {
                b.api(
                    "POST",
                    &format!("secret/data/bench/s{i:03}"),
                    &format!(r#"{{"data":{{"value":"{}"}}}}"#, value(i as u64)),
                );
            }
            let token = work.path().join("token");
            std::fs::write(&token, "root").unwrap();
            args.extend([
                "--store-kind=vault".to_owned(),
                format!("--vault-addr={}", b.addr()),
                format!("--vault-token-file={}", token.display()),
            ]);
            bao = Some(Arc::new(b));
        }
    }
    let mut map = BTreeMap::new();
    for i in 0..READ {
        map.insert(
            format!("rotor.dev/secret.s{i:03}"),
            format!("bench/s{i:03}"),
        );
    }
    map.insert("rotor.dev/refresh".into(), "200ms".into());
    let annotations = work.path().join("annotations");
    std::fs::write(&annotations, rotor_sidecar::downward::format(&map)).unwrap();
    let admin = free_port();
    let child = Killed(
        Command::new(release_bin("rotor-sidecar"))
            .arg("--annotations")
            .arg(&annotations)
            .arg("--out-dir")
            .arg(out.path())
            .args(&args)
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--push-addr", &format!("127.0.0.1:{}", free_port())])
            .env("ROTOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("sidecar.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(30, || http(admin, "GET", "/readyz", "")
            .is_some_and(|(s, _)| s == 200)),
        "sidecar not ready: {}",
        std::fs::read_to_string(work.path().join("sidecar.log")).unwrap_or_default()
    );
    let rng = Seeded::new(42);
    let (stop, changes, loader) = {
        let (local, bao) = (local.clone(), bao.clone());
        load(CHANGE_EVERY, move |n| {
            let i = rng.below(SECRETS as u64);
            let v = value(1_000_000 + n);
            match (&local, &bao) {
                (Some(store), _) => {
                    store
                        .put(&format!("bench/s{i:03}"), v.as_bytes(), WriteAs::Current)
                        .unwrap();
                }
                (None, Some(bao)) => {
                    bao.api(
                        "POST",
                        &format!("secret/data/bench/s{i:03}"),
                        &format!(r#"{{"data":{{"value":"{v}"}}}}"#),
                    );
                }
                (None, None) => unreachable!(),
            }
        })
    };
    let store_file = work.path().join("store.rotor");
    let (run, heads): (&str, &[&str]) = match backend {
        Backend::Local => (
            "local store",
            &[
                "changes made",
                "directory swaps",
                "fetch errors",
                "store file",
            ],
        ),
        Backend::OpenBao => (
            "OpenBao",
            &["changes made", "directory swaps", "fetch errors"],
        ),
    };
    let summaries = sample(run, &[("sidecar", child.0.id())], heads, duration, || {
        let mut cols = vec![
            changes.load(Ordering::Relaxed).to_string(),
            metric(admin, "rotor_files_swaps").to_string(),
            metric(admin, "rotor_secret_fetch_errors").to_string(),
        ];
        if backend == Backend::Local {
            let len = std::fs::metadata(&store_file).map(|m| m.len()).unwrap_or(0);
            cols.push(format!("{:.2} MiB", mib(len / 1024)));
        }
        cols
    });
    stop.store(true, Ordering::Release);
    loader.join().unwrap();
    drop(child);
    summaries
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../controller/tests/fixtures")
}

fn webhook_soak(duration: Duration) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (tls, stores) = (dir.path().join("tls"), dir.path().join("stores"));
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&stores).unwrap();
    let controller = release_bin("rotor-controller");
    let ok = Command::new(&controller)
        .args(["certs", "--dns-name", "localhost", "--out"])
        .arg(&tls)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::copy(
        fixtures_dir().join("stores.yaml"),
        stores.join("stores.yaml"),
    )
    .unwrap();
    let port = free_port();
    let child = Killed(
        Command::new(&controller)
            .args(rotor_fixtures::webhook::args(&stores, port, &tls))
            .env("ROTOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(30, || std::net::TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));
    // Copied once, so that the run does not depend on the checkout.
    let bodies = dir.path().join("bodies");
    std::fs::create_dir_all(&bodies).unwrap();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let copy = bodies.join(p.file_name().unwrap());
            std::fs::copy(&p, &copy).unwrap();
            copy
        })
        .collect();
    fixtures.sort();
    let ca = tls.join("ca.crt");
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // One curl a second, 100 requests on one TLS connection.
    let (stop, _, loader) = {
        let (answered, failed) = (answered.clone(), failed.clone());
        load(Duration::from_secs(1), move |_| {
            let mut cmd = Command::new("curl");
            for (i, body) in fixtures.iter().cycle().take(100).enumerate() {
                if i > 0 {
                    cmd.arg("--next");
                }
                cmd.args(["-sS", "--max-time", "10", "-o", "/dev/null"])
                    .args(["-w", "%{http_code}\\n", "--cacert"])
                    .arg(&ca)
                    .args(["-H", "content-type: application/json", "--data-binary"])
                    .arg(format!("@{}", body.display()))
                    .arg(format!("https://localhost:{port}/mutate"));
            }
            let out = cmd.stderr(Stdio::null()).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            for code in text.lines() {
                if code.trim() == "200" {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let summaries = sample(
        "webhook",
        &[("webhook", child.0.id())],
        &["reviews answered", "failed"],
        duration,
        || {
            vec![
                answered.load(Ordering::Relaxed).to_string(),
                failed.load(Ordering::Relaxed).to_string(),
            ]
        },
    );
    stop.store(true, Ordering::Release);
    loader.join().unwrap();
    summaries
}

fn standalone_soak(duration: Duration) -> Vec<String> {
    let work = tmpfs_dir();
    let out = tmpfs_dir();
    let key = work.path().join("kek");
    KeyFileKek::generate(&key, false).unwrap();
    let path = work.path().join("store.rotor");
    let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
    store
        .put("app/db", b"initial-value", WriteAs::Current)
        .unwrap();
    let annotations = work.path().join("annotations");
    let map: BTreeMap<String, String> = [
        ("rotor.dev/secret.db".to_owned(), "app/db".to_owned()),
        ("rotor.dev/refresh".to_owned(), "1h".to_owned()),
    ]
    .into();
    std::fs::write(&annotations, rotor_sidecar::downward::format(&map)).unwrap();
    let policies = work.path().join("policies");
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
    // The controller first: the sidecar reads its channel's CA and token.
    let channel_port = free_port();
    let channel = work.path().join("state/channel");
    let controller = Killed(
        Command::new(release_bin("rotor-controller"))
            .args(["standalone", "--policies"])
            .arg(&policies)
            .arg("--state")
            .arg(work.path().join("state"))
            .args(["--channel-addr", &format!("127.0.0.1:{channel_port}")])
            .env("ROTOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(30, || channel.join("ca.crt").is_file()
        && std::net::TcpStream::connect(("127.0.0.1", channel_port))
            .is_ok()));
    let (admin, push) = (free_port(), free_port());
    let sidecar = Killed(
        Command::new(release_bin("rotor-sidecar"))
            .arg("--annotations")
            .arg(&annotations)
            .arg("--out-dir")
            .arg(out.path())
            .arg(format!("--local-store={}", path.display()))
            .arg(format!("--key={}", key.display()))
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--push-addr", &format!("127.0.0.1:{push}")])
            .args(["--controller-addr", &format!("localhost:{channel_port}")])
            .arg("--controller-ca")
            .arg(channel.join("ca.crt"))
            .arg("--channel-token")
            .arg(channel.join("token"))
            .args(["--pod-namespace", "default", "--pod-name", "soak"])
            .env("ROTOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(30, || http(admin, "GET", "/readyz", "")
        .is_some_and(|(s, _)| s == 200)));
    std::fs::write(
        policies.join("policy.yaml"),
        "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  storeRef: {name: main}\n  secretName: app/db\n  schedule: {interval: 1s}\n  generator: {password: {length: 24, minDigits: 2}}\n  strategy: {staged: {ackTimeout: 1s, gracePeriod: 1s, onTimeout: Rollback}}\n  sidecars: [default/soak]\n",
    )
    .unwrap();
    let first = store.current_number("app/db").unwrap();
    assert!(
        wait_until(30, || store.current_number("app/db").unwrap() > first),
        "no rotation: {}",
        std::fs::read_to_string(work.path().join("controller.log")).unwrap_or_default()
    );
    let summaries = sample(
        "standalone rotation every 1 s",
        &[
            ("controller", controller.0.id()),
            ("sidecar", sidecar.0.id()),
        ],
        &["CURRENT version", "versions kept", "store file"],
        duration,
        || {
            let info = store.info();
            vec![
                store
                    .current_number("app/db")
                    .map_or_else(|e| e.to_string(), |v| v.to_string()),
                info.as_ref()
                    .map_or_else(|e| e.to_string(), |i| i.versions.to_string()),
                info.map_or_else(|e| e.to_string(), |i| format!("{} B", i.bytes)),
            ]
        },
    );
    drop(controller);
    drop(sidecar);
    summaries
}
