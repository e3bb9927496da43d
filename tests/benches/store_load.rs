//! Store load as the number of pods grows: N real `rotor-sidecar`
//! processes sharing 10 KV v2 secrets of one real OpenBao, at a 1 s and a
//! 5 s refresh, in two modes side by side:
//!
//! - `polling`: sidecars without a controller, each polling the store for
//!   every secret at its refresh;
//! - `central`: a `rotor-controller standalone` knowing the OpenBao as
//!   RotorStore `bao`, every sidecar connected to it over the channel
//!   (`--controller-addr`, `rotor.dev/store: bao`), so the controller can
//!   detect changes once per secret and tell the sidecars.
//!
//! Per (mode, N, refresh) one row: OpenBao's requests per hour while idle,
//! counted from its own audit log over an idle window and scaled (beside
//! N × 10 × 3,600 / refresh, what one metadata read per secret per poll
//! per sidecar would be), OpenBao's CPU over that window, one write
//! reaching every sidecar's file (p50, p99, max over every sidecar and
//! every write; each write lands at a uniformly random point of the
//! refresh cycle, and the files are polled every millisecond), and the
//! RSS and CPU of the controller and of one sidecar (`/proc`). Figures,
//! not asserts.
//!
//! ```sh
//! tests/install-tools && cargo build --release --bins
//! cargo bench -p rotor-e2e --bench store_load
//! # a smaller run: the sizes, refreshes (s), modes, idle window (s), writes
//! STORE_LOAD_N=10,50 STORE_LOAD_REFRESH=5 STORE_LOAD_IDLE=30 cargo bench -p rotor-e2e --bench store_load
//! ```
//!
//! The same settings as arguments: `-- --n 10,50 --refresh 1,5 --modes
//! polling,central --idle 30 --writes 5`. The default run (N = 10, 50, 200;
//! 1 s and 5 s; both modes; 30 s idle, at least 10 × refresh so that
//! connected sidecars' safety-net polls fall in it at their rate; 5
//! writes) takes about 15 minutes.
//! At N = 200 the sidecars pass the per-uid inotify instance limit (128 by
//! default) and use the `..data` timer fallback.

use std::path::Path;
use std::time::{Duration, Instant};

use rotor_e2e::figures::{CpuWindow, mb, ms, percentile, uniform};
use rotor_e2e::servers::Bao;
use rotor_e2e::standalone::Standalone;
use rotor_e2e::vault_sidecar::{Launch, VaultSidecar};
use rotor_e2e::wait_until;
use rotor_fixtures::procfs::rss_kib;

/// The secrets every sidecar serves.
const SECRETS: usize = 10;
/// The file each write changes, and its secret.
const WRITTEN: &str = "s0";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Polling,
    Central,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Polling => "polling",
            Mode::Central => "central",
        }
    }
}

/// What to run: from `STORE_LOAD_*` variables, then arguments.
struct Config {
    sizes: Vec<usize>,
    refreshes: Vec<Duration>,
    modes: Vec<Mode>,
    idle: Duration,
    writes: usize,
}

impl Config {
    fn read() -> Self {
        let mut values: Vec<(String, String)> = ["n", "refresh", "modes", "idle", "writes"]
            .iter()
            .filter_map(|k| {
                let v = std::env::var(format!("STORE_LOAD_{}", k.to_uppercase())).ok()?;
                Some((k.to_string(), v))
            })
            .collect();
        let args: Vec<String> = std::env::args().collect();
        for pair in args.windows(2) {
            if let Some(k) = pair[0].strip_prefix("--")
                && ["n", "refresh", "modes", "idle", "writes"].contains(&k)
            {
                values.push((k.to_owned(), pair[1].clone()));
            }
        }
        let get = |k: &str, default: &str| {
            values
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map_or(default.to_owned(), |(_, v)| v.clone())
        };
        let list = |k: &str, default: &str| -> Vec<u64> {
            get(k, default)
                .split(',')
                .map(|v| {
                    v.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{k}: {v:?} is not a whole number"))
                })
                .collect()
        };
        Self {
            sizes: list("n", "10,50,200")
                .into_iter()
                .map(|n| n as usize)
                .collect(),
            refreshes: list("refresh", "1,5")
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            modes: get("modes", "polling,central")
                .split(',')
                .map(|m| match m.trim() {
                    "polling" => Mode::Polling,
                    "central" => Mode::Central,
                    other => panic!("modes: {other:?} is neither polling nor central"),
                })
                .collect(),
            idle: Duration::from_secs(list("idle", "30")[0]),
            writes: list("writes", "5")[0] as usize,
        }
    }
}

/// One row of the table.
struct Row {
    mode: Mode,
    n: usize,
    refresh: Duration,
    requests_per_hour: f64,
    bao_cpu: f64,
    /// Write → file, every sidecar and every write, sorted.
    arrivals: Vec<Duration>,
    /// Files a write never reached within the bound.
    missed: usize,
    controller: Option<(u64, f64)>,
    sidecar: (u64, f64),
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built by `cargo test --benches`; only run by `cargo bench`
    }
    let config = Config::read();
    let mut bao = Bao::start_audited();
    for i in 0..SECRETS {
        write(&bao, &format!("s{i}"), &format!("initial-{i}"));
    }
    let mut rows = Vec::new();
    for &refresh in &config.refreshes {
        for &n in &config.sizes {
            for &mode in &config.modes {
                let started = Instant::now();
                let row = measure(&mut bao, mode, n, refresh, &config);
                eprintln!(
                    "store_load: {} N={n} refresh={}s done in {:.0} s",
                    mode.name(),
                    refresh.as_secs(),
                    started.elapsed().as_secs_f64()
                );
                rows.push(row);
            }
        }
    }
    println!(
        "\n| mode | N | refresh | OpenBao requests/h, idle | N × {SECRETS} × 3,600 / refresh | OpenBao CPU s/h, idle | write → every file p50 / p99 / max | controller RSS, CPU s/h | one sidecar RSS, CPU s/h |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let model = r.n as f64 * SECRETS as f64 * 3600.0 / r.refresh.as_secs_f64();
        let arrivals = if r.arrivals.is_empty() {
            "none arrived".to_owned()
        } else {
            format!(
                "{} / {} / {}{}",
                ms(percentile(&r.arrivals, 0.5)),
                ms(percentile(&r.arrivals, 0.99)),
                ms(*r.arrivals.last().unwrap()),
                if r.missed > 0 {
                    format!(" ({} files never changed)", r.missed)
                } else {
                    String::new()
                }
            )
        };
        let controller = r.controller.map_or("-".to_owned(), |(rss, cpu)| {
            format!("{}, {cpu:.1} s", mb(rss))
        });
        println!(
            "| {} | {} | {} s | {} | {} | {:.0} s | {arrivals} | {controller} | {}, {:.1} s |",
            r.mode.name(),
            r.n,
            r.refresh.as_secs(),
            thousands(r.requests_per_hour),
            thousands(model),
            r.bao_cpu,
            mb(r.sidecar.0),
            r.sidecar.1
        );
    }
}

/// Writes `value` as the only field of secret `bench/<name>`.
fn write(bao: &Bao, name: &str, value: &str) {
    bao.api(
        "POST",
        &format!("secret/data/bench/{name}"),
        &serde_json::json!({"data": {"value": value}}).to_string(),
    );
}

fn measure(bao: &mut Bao, mode: Mode, n: usize, refresh: Duration, config: &Config) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let controller = (mode == Mode::Central).then(|| controller(bao, dir.path()));
    let sidecars = start_sidecars(bao, n, refresh, controller.as_ref());
    if let Some(c) = &controller {
        assert!(
            c.wait_streams(n, 120),
            "{} of {n} sidecars connected: {}",
            c.metric("rotor_channel_streams"),
            c.log_text()
        );
    }
    // The start's fetches and the first polls are over.
    std::thread::sleep(refresh * 2 + Duration::from_secs(2));

    // Idle: nothing changes in the store.
    bao.truncate_audit();
    let mark = bao.audit_mark();
    let started = Instant::now();
    let bao_pid = bao.process().pid().expect("OpenBao runs");
    let bao_cpu = CpuWindow::start(bao_pid);
    let controller_cpu = controller.as_ref().map(|c| CpuWindow::start(c.child.id()));
    let sidecar_cpu = CpuWindow::start(sidecars[0].child.id());
    // At least one safety-net cycle of connected sidecars (10 × refresh),
    // so that their polls are in the window at their rate.
    std::thread::sleep(config.idle.max(refresh * 10));
    let requests = bao.audited_since(mark);
    let elapsed = started.elapsed().as_secs_f64();
    let row_controller = controller.as_ref().zip(controller_cpu).map(|(c, cpu)| {
        (
            rss_kib(c.child.id()),
            cpu.per_hour().expect("the controller runs"),
        )
    });
    let sidecar = (
        rss_kib(sidecars[0].child.id()),
        sidecar_cpu.per_hour().expect("the sidecar runs"),
    );
    let bao_cpu = bao_cpu.per_hour().expect("OpenBao runs");

    // Writes: each reaches every sidecar's file.
    let mut arrivals = Vec::with_capacity(n * config.writes);
    let mut missed = 0;
    let bound = refresh * 10 + Duration::from_secs(30);
    for w in 0..config.writes {
        std::thread::sleep(refresh.mul_f64(uniform()));
        let want = format!("{}-{n}-{}-w{w}", mode.name(), refresh.as_secs());
        let t = Instant::now();
        write(bao, WRITTEN, &want);
        let mut pending: Vec<usize> = (0..n).collect();
        while !pending.is_empty() && t.elapsed() < bound {
            pending.retain(|&i| {
                if sidecars[i].read(WRITTEN).as_deref() == Some(want.as_str()) {
                    arrivals.push(t.elapsed());
                    false
                } else {
                    true
                }
            });
            std::thread::sleep(Duration::from_millis(1));
        }
        missed += pending.len();
    }
    arrivals.sort();
    Row {
        mode,
        n,
        refresh,
        requests_per_hour: requests as f64 * 3600.0 / elapsed,
        bao_cpu,
        arrivals,
        missed,
        controller: row_controller,
        sidecar,
    }
}

/// `rotor-controller standalone` with the OpenBao as RotorStore `bao` and
/// no rotation policy: its channel is what the sidecars connect to.
fn controller(bao: &Bao, dir: &Path) -> Standalone {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("store.yaml"),
        format!(
            "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: bao}}\nspec:\n  provider:\n    vault:\n      server: {}\n      auth: {{tokenSecretRef: {{name: unused, key: token}}}}\n",
            bao.addr()
        ),
    )
    .unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "root").unwrap();
    Standalone::start(
        &policies,
        &dir.join("state"),
        &dir.join("controller.log"),
        &[format!("--vault-token-file={}", token.display())],
        &[("ROTOR_LOG".into(), "info".into())],
    )
}

/// `n` sidecars, each serving every secret, all of them written: those
/// that exited at start (another process took a port) start again.
fn start_sidecars(
    bao: &Bao,
    n: usize,
    refresh: Duration,
    controller: Option<&Standalone>,
) -> Vec<VaultSidecar> {
    let secrets: Vec<(String, String)> = (0..SECRETS)
        .map(|i| (format!("s{i}"), format!("bench/s{i}")))
        .collect();
    let addr = bao.addr();
    let launch = |i: usize| {
        let env = controller
            .map(|c| c.sidecar_env("bench", &format!("pod-{i}")))
            .unwrap_or_default();
        VaultSidecar::launch(&Launch {
            addr: &addr,
            token: "root",
            secrets: &secrets,
            refresh,
            store: Some("bao"),
            env: &env,
        })
    };
    let mut sidecars: Vec<VaultSidecar> = (0..n).map(launch).collect();
    let written = |s: &VaultSidecar| (0..SECRETS).all(|i| s.read(&format!("s{i}")).is_some());
    for _ in 0..3 {
        wait_until(120, || {
            sidecars.iter_mut().all(|s| s.exited() || written(s))
        });
        let mut again = false;
        for (i, sidecar) in sidecars.iter_mut().enumerate() {
            if sidecar.exited() {
                assert!(
                    sidecar.log().contains("already in use"),
                    "sidecar {i} exited: {}",
                    sidecar.log()
                );
                *sidecar = launch(i);
                again = true;
            }
        }
        if !again {
            break;
        }
    }
    for (i, s) in sidecars.iter().enumerate() {
        assert!(written(s), "sidecar {i} never wrote its files: {}", s.log());
    }
    sidecars
}

/// `1234567` as `1,234,567`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
