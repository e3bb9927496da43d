//! The sidecar's performance figures, measured on this machine and printed
//! as a table. Run with `cargo bench -p rotor-sidecar --bench figures`.
//!
//! | figure | target |
//! |---|---|
//! | atomic swap of 10 files on tmpfs | p99 ≤ 500 µs |
//! | start to first complete write, local store | ≤ 50 ms |
//! | push: store change → file → reload | p99 ≤ 50 ms |
//! | poll at interval T: store change → file | max ≤ T + 100 ms |
//! | RSS, as many secrets as a pod may name (`MAX_ANNOTATIONS`), steady | ≤ 9 MB |

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rotor_contract::annotations::MAX_ANNOTATIONS;
use rotor_envelope::KeyFileKek;
use rotor_fixtures::net::{free_port, retry_on_addr_in_use};
use rotor_fixtures::procfs::rss_kib;
use rotor_sidecar::writer::{AtomicWriter, FileSpec, WriterOptions};
use rotor_store::{LocalStore, WriteAs};
use zeroize::Zeroizing;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and only wants this to build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // An optional filter: `cargo bench --bench figures -- swap`.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |key: &str| only.is_empty() || only.iter().any(|o| key.contains(o.as_str()));
    let mut rows: Vec<(String, String, String)> = Vec::new();
    if want("swap") {
        rows.push(swap_10_files());
    }
    if want("start") {
        rows.push(start_to_first_write());
    }
    if want("push") {
        rows.extend(push_latency());
    }
    if want("poll") {
        rows.push(poll_latency(Duration::from_secs(1), 20));
    }
    if want("rss") {
        rows.push(rss_at_the_annotation_cap());
    }
    println!("\n| figure | target | measured |\n|---|---|---|");
    for (figure, target, measured) in rows {
        println!("| {figure} | {target} | {measured} |");
    }
}

fn shm() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("/dev/shm is needed for these figures")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn swap_10_files() -> (String, String, String) {
    let dir = shm();
    // The sidecar's default grace: superseded directories go 2 s later.
    let mut writer = AtomicWriter::open(
        dir.path(),
        WriterOptions {
            default_mode: 0o400,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let files = |g: u32| -> Vec<FileSpec> {
        (0..10)
            .map(|i| FileSpec {
                name: format!("file-{i}"),
                data: Zeroizing::new(format!("{g:08}").repeat(128).into_bytes()),
                mode: 0o400,
            })
            .collect()
    };
    let mut times = Vec::new();
    for g in 0..5000 {
        let f = files(g);
        let t = Instant::now();
        writer.write(&f).unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (
        "atomic swap of 10 × 1 KiB files on tmpfs (5,000 swaps)".into(),
        "p99 ≤ 500 µs".into(),
        format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            pct(&times, 0.5).as_secs_f64() * 1e6,
            pct(&times, 0.99).as_secs_f64() * 1e6,
            times.last().unwrap().as_secs_f64() * 1e6
        ),
    )
}

struct Pod {
    _work: tempfile::TempDir,
    out: tempfile::TempDir,
    store: LocalStore,
    key: PathBuf,
    annotations: PathBuf,
    admin: u16,
    push: u16,
}

impl Pod {
    fn new(secrets: usize, extra: &[(&str, String)]) -> Self {
        let work = shm();
        let key = work.path().join("kek");
        KeyFileKek::generate(&key, false).unwrap();
        let store = LocalStore::new(
            work.path().join("store.rotor"),
            Arc::new(KeyFileKek::load(&key).unwrap()),
        );
        let mut map = BTreeMap::new();
        for i in 0..secrets {
            store
                .put(
                    &format!("app/s{i:03}"),
                    format!("value-{i}").as_bytes(),
                    WriteAs::Current,
                )
                .unwrap();
            map.insert(format!("rotor.dev/secret.s{i:03}"), format!("app/s{i:03}"));
        }
        for (k, v) in extra {
            map.insert(k.to_string(), v.clone());
        }
        let annotations = work.path().join("annotations");
        std::fs::write(&annotations, rotor_sidecar::downward::format(&map)).unwrap();
        Self {
            _work: work,
            out: shm(),
            store,
            key,
            annotations,
            admin: free_port(),
            push: free_port(),
        }
    }

    fn spawn(&self) -> Child {
        self.command(self.admin, self.push)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts the sidecar and waits until it is ready; when another process
    /// took one of its ports first, starts it again on fresh ports.
    fn spawn_ready(&mut self) -> Child {
        let log = self._work.path().join("sidecar.log");
        let (child, admin, push) = retry_on_addr_in_use(|admin| {
            let push = free_port();
            let mut child = self
                .command(admin, push)
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            if wait_ready_or_exit(admin, &mut child) {
                Ok((child, admin, push))
            } else {
                Err(std::fs::read_to_string(&log).unwrap_or_default())
            }
        });
        (self.admin, self.push) = (admin, push);
        child
    }

    fn command(&self, admin: u16, push: u16) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rotor-sidecar"));
        cmd.arg("--annotations")
            .arg(&self.annotations)
            .arg("--out-dir")
            .arg(self.out.path())
            .arg("--local-store")
            .arg(self.store.path())
            .arg("--key")
            .arg(&self.key)
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--push-addr", &format!("127.0.0.1:{push}")])
            .env("ROTOR_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.out.path().join(name)).ok()
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn start_to_first_write() -> (String, String, String) {
    let mut times = Vec::new();
    for _ in 0..15 {
        let pod = Pod::new(1, &[]);
        let t = Instant::now();
        let child = pod.spawn();
        let data = pod.out.path().join("..data");
        while std::fs::symlink_metadata(&data).is_err() {
            std::thread::sleep(Duration::from_micros(200));
            assert!(t.elapsed() < Duration::from_secs(10));
        }
        times.push(t.elapsed());
        stop(child);
    }
    times.sort();
    (
        "process start to first complete write, local store (15 starts)".into(),
        "≤ 50 ms".into(),
        format!(
            "median {}, max {}",
            ms(pct(&times, 0.5)),
            ms(*times.last().unwrap())
        ),
    )
}

fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        sock,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).unwrap();
    let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
    (status, resp.split_once("\r\n\r\n").unwrap().1.to_owned())
}

/// Waits until the sidecar on admin `port` is ready (true) or has exited
/// (false).
fn wait_ready_or_exit(port: u16, child: &mut Child) -> bool {
    let t = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", "").0 == 200
        {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "sidecar not ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A reload hook that reports when each POST arrives.
fn hook() -> (u16, mpsc::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let mut sock = sock.unwrap();
            let mut buf = [0u8; 2048];
            let _ = sock.read(&mut buf);
            let _ = tx.send(Instant::now());
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, rx)
}

fn push_latency() -> Vec<(String, String, String)> {
    let (hook_port, hits) = hook();
    let mut pod = Pod::new(
        1,
        &[
            ("rotor.dev/refresh", "1h".into()),
            (
                "rotor.dev/reload",
                format!("http://127.0.0.1:{hook_port}/reload"),
            ),
        ],
    );
    let child = pod.spawn_ready();
    let mut to_reload = Vec::new();
    let mut to_ack = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        pod.store
            .put("app/s000", format!("v{i}").as_bytes(), WriteAs::Current)
            .unwrap();
        let (status, _) = http(
            pod.push,
            "POST",
            "/v1/refresh",
            r#"{"secrets":[{"name":"app/s000"}]}"#,
        );
        assert_eq!(status, 200);
        to_ack.push(t.elapsed());
        let reloaded = hits
            .recv_timeout(Duration::from_secs(5))
            .expect("reload hook not called");
        to_reload.push(reloaded - t);
        // Stay under the push rate limit (10/s, bursts of 20).
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child);
    to_reload.sort();
    to_ack.sort();
    vec![
        (
            "push: store change → file → reload hook called (300 changes)".into(),
            "p99 ≤ 50 ms".into(),
            format!(
                "p50 {}, p99 {}, max {}",
                ms(pct(&to_reload, 0.5)),
                ms(pct(&to_reload, 0.99)),
                ms(*to_reload.last().unwrap())
            ),
        ),
        (
            "push: store change → acknowledgement received".into(),
            String::new(),
            format!(
                "p50 {}, p99 {}",
                ms(pct(&to_ack, 0.5)),
                ms(pct(&to_ack, 0.99))
            ),
        ),
    ]
}

fn poll_latency(interval: Duration, changes: u32) -> (String, String, String) {
    let mut pod = Pod::new(
        1,
        &[(
            "rotor.dev/refresh",
            humantime::format_duration(interval).to_string(),
        )],
    );
    let child = pod.spawn_ready();
    let mut times = Vec::new();
    for i in 0..changes {
        // Changes land at varying points of the poll cycle.
        std::thread::sleep(interval.mul_f64(0.37 * f64::from(i % 3 + 1)));
        let want = format!("poll-{i}");
        let t = Instant::now();
        pod.store
            .put("app/s000", want.as_bytes(), WriteAs::Current)
            .unwrap();
        while pod.file("s000").as_deref() != Some(want.as_str()) {
            std::thread::sleep(Duration::from_micros(500));
            assert!(t.elapsed() < interval * 5, "change never arrived");
        }
        times.push(t.elapsed());
    }
    stop(child);
    times.sort();
    (
        format!(
            "poll at T = {}: store change → file ({changes} changes)",
            humantime::format_duration(interval)
        ),
        format!(
            "max ≤ T + 100 ms = {}",
            ms(interval + Duration::from_millis(100))
        ),
        format!(
            "median {}, max {}",
            ms(pct(&times, 0.5)),
            ms(*times.last().unwrap())
        ),
    )
}

/// RSS with as many secrets as one pod may name: the annotation cap, less
/// the `rotor.dev/refresh` annotation.
fn rss_at_the_annotation_cap() -> (String, String, String) {
    let extra = [("rotor.dev/refresh", "1s".to_owned())];
    let secrets = MAX_ANNOTATIONS - extra.len();
    let mut pod = Pod::new(secrets, &extra);
    let child = pod.spawn_ready();
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_kib(child.id());
    stop(child);
    (
        format!("sidecar RSS, {secrets} secrets at a 1 s interval, after 5 s"),
        "≤ 9 MB".into(),
        format!("{:.1} MB", rss as f64 / 1024.0),
    )
}
