//! Rotor's sidecar against OpenBao Agent, side by side in one run, on the
//! same OpenBao dev server and the same KV v2 secrets.
//!
//! ```sh
//! tests/install-tools && cargo build --release --bins
//! cargo bench -p rotor-e2e --bench agent_comparison
//! ```
//!
//! Prints one table: RSS with 1 and [`MANY`] secrets, launch to first
//! render, new KV version → file (min/median/max over 20 changes at 1 s and
//! 5 s intervals), idle CPU seconds per hour with [`MANY`] secrets at 1 s,
//! and Rotor's push path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rotor_e2e::figures::{mb, ms, uniform};
use rotor_e2e::servers::{Bao, venv_bin};
use rotor_e2e::vault_sidecar::{Launch, VaultSidecar};
use rotor_e2e::{http, wait_until};
use rotor_fixtures::procfs::{rss_kib, ticks_per_second};

const CHANGES: usize = 30;

/// As many secrets as one pod may name: the annotation cap, less the
/// `rotor.dev/refresh` annotation.
const MANY: usize = rotor_contract::annotations::MAX_ANNOTATIONS - 1;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built by `cargo test --benches`; only run by `cargo bench`
    }
    let bao = Bao::start();
    let mut rows: Vec<[String; 3]> = Vec::new();
    for n in [1usize, MANY] {
        seed(&bao, n);
        let (agent_start, agent_rss) = measure_start_and_rss(&bao, Tool::Agent, n);
        let (rotor_start, rotor_rss) = measure_start_and_rss(&bao, Tool::Rotor, n);
        rows.push([format!("RSS, {n} secrets"), mb(agent_rss), mb(rotor_rss)]);
        if n == 1 {
            rows.push([
                "launch to first render".into(),
                ms(agent_start),
                ms(rotor_start),
            ]);
        }
    }
    seed(&bao, 1);
    for interval in [Duration::from_secs(1), Duration::from_secs(5)] {
        let a = propagation(&bao, Tool::Agent, interval, false);
        let r = propagation(&bao, Tool::Rotor, interval, false);
        rows.push([
            format!(
                "new KV version → file at {}s (min/median/max)",
                interval.as_secs()
            ),
            stats(&a),
            stats(&r),
        ]);
    }
    let p = propagation(&bao, Tool::Rotor, Duration::from_secs(1), true);
    rows.push([
        "new KV version → file with push (min/median/max)".into(),
        "no push".into(),
        stats(&p),
    ]);
    seed(&bao, MANY);
    let a = idle_cpu(&bao, Tool::Agent);
    let r = idle_cpu(&bao, Tool::Rotor);
    rows.push([
        format!("idle CPU, {MANY} secrets at 1 s, seconds per hour"),
        format!("{a:.0} s"),
        format!("{r:.1} s"),
    ]);
    println!("\n| figure | OpenBao Agent | rotor-sidecar |\n|---|---|---|");
    for [f, a, r] in rows {
        println!("| {f} | {a} | {r} |");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Agent,
    Rotor,
}

fn seed(bao: &Bao, n: usize) {
    for i in 0..n {
        bao.api(
            "POST",
            &format!("secret/data/bench/s{i:03}"),
            &format!(r#"{{"data":{{"value":"initial-{i}"}}}}"#),
        );
    }
}

/// A running OpenBao Agent or rotor-sidecar; stopped on drop.
enum Running {
    Agent {
        child: Child,
        out: tempfile::TempDir,
        _work: tempfile::TempDir,
    },
    Rotor(VaultSidecar),
}

impl Running {
    fn out(&self) -> &Path {
        match self {
            Running::Agent { out, .. } => out.path(),
            Running::Rotor(s) => s.out.path(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Agent { child, .. } => child.id(),
            Running::Rotor(s) => s.child.id(),
        }
    }

    fn push_port(&self) -> u16 {
        match self {
            Running::Agent { .. } => unreachable!("OpenBao Agent has no push"),
            Running::Rotor(s) => s.push_port,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Agent { child, .. } = self {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn launch(bao: &Bao, tool: Tool, n: usize, interval: Duration) -> Running {
    match tool {
        Tool::Agent => {
            let work = tempfile::tempdir().unwrap();
            let token = work.path().join("token");
            std::fs::write(&token, "root").unwrap();
            let out = tempfile::tempdir_in("/dev/shm").unwrap();
            let mut hcl = format!(
                "vault {{ address = \"{}\" }}\nauto_auth {{ method \"token_file\" {{ config = {{ token_file_path = \"{}\" }} }} }}\ntemplate_config {{ static_secret_render_interval = \"{}s\" }}\n",
                bao.addr(),
                token.display(),
                interval.as_secs_f64()
            );
            for i in 0..n {
                hcl.push_str(&format!(
                    "template {{\n  destination = \"{}/s{i:03}\"\n  perms = \"0400\"\n  contents = \"{{{{ with secret \\\"secret/data/bench/s{i:03}\\\" }}}}{{{{ .Data.data.value }}}}{{{{ end }}}}\"\n}}\n",
                    out.path().display()
                ));
            }
            let config = work.path().join("agent.hcl");
            std::fs::write(&config, hcl).unwrap();
            let child = Command::new(venv_bin("bao"))
                .args(["agent", &format!("-config={}", config.display())])
                .env("HOME", work.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Running::Agent {
                child,
                out,
                _work: work,
            }
        }
        Tool::Rotor => {
            let secrets: Vec<(String, String)> = (0..n)
                .map(|i| (format!("s{i:03}"), format!("bench/s{i:03}")))
                .collect();
            let sidecar = VaultSidecar::launch(&Launch {
                addr: &bao.addr(),
                token: "root",
                secrets: &secrets,
                refresh: interval,
                store: None,
                env: &[],
            });
            Running::Rotor(sidecar)
        }
    }
}

fn all_rendered(dir: &Path, n: usize) -> bool {
    (0..n).all(|i| {
        std::fs::read_to_string(dir.join(format!("s{i:03}")))
            .is_ok_and(|s| s.starts_with("initial-") || s.starts_with("v"))
    })
}

fn measure_start_and_rss(bao: &Bao, tool: Tool, n: usize) -> (Duration, u64) {
    let t = Instant::now();
    let run = launch(bao, tool, n, Duration::from_secs(1));
    assert!(
        wait_until(30, || all_rendered(run.out(), n)),
        "first render never happened"
    );
    let start = t.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    (start, rss_kib(run.pid()))
}

fn propagation(bao: &Bao, tool: Tool, interval: Duration, push: bool) -> Vec<Duration> {
    let run = launch(bao, tool, 1, interval);
    assert!(wait_until(30, || all_rendered(run.out(), 1)));
    let file: PathBuf = run.out().join("s000");
    let mut times = Vec::new();
    for i in 0..CHANGES {
        // Land each change at a uniformly random point of the poll cycle,
        // independent of when the last one was seen: a fixed pattern would
        // lock onto one tool's phase and favour it.
        std::thread::sleep(interval.mul_f64(uniform()));
        let want = format!("v{i}-{}", std::process::id());
        let t = Instant::now();
        bao.api(
            "POST",
            "secret/data/bench/s000",
            &format!(r#"{{"data":{{"value":"{want}"}}}}"#),
        );
        if push {
            let (status, _) = http(run.push_port(), "POST", "/v1/refresh", "").unwrap();
            assert_eq!(status, 200);
        }
        while std::fs::read_to_string(&file).ok().as_deref() != Some(want.as_str()) {
            std::thread::sleep(Duration::from_micros(500));
            assert!(t.elapsed() < interval * 10, "change never arrived");
        }
        times.push(t.elapsed());
        if push {
            std::thread::sleep(Duration::from_millis(120)); // stay under the push rate limit
        }
    }
    times.sort();
    times
}

fn idle_cpu(bao: &Bao, tool: Tool) -> f64 {
    let run = launch(bao, tool, MANY, Duration::from_secs(1));
    assert!(wait_until(30, || all_rendered(run.out(), MANY)));
    std::thread::sleep(Duration::from_secs(3));
    let window = Duration::from_secs(20);
    let cpu_ticks = |pid| rotor_fixtures::procfs::cpu_ticks(pid).expect("a running tool");
    let before = cpu_ticks(run.pid());
    std::thread::sleep(window);
    let used = (cpu_ticks(run.pid()) - before) as f64 / ticks_per_second();
    used * 3600.0 / window.as_secs_f64()
}

fn stats(t: &[Duration]) -> String {
    format!(
        "{} / {} / {}",
        ms(t[0]),
        ms(t[t.len() / 2]),
        ms(t[t.len() - 1])
    )
}
