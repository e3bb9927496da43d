//! The window of failed logins a PostgreSQL rotation causes, singleUser
//! beside alternatingUsers, measured on a real server (Debian's
//! PostgreSQL 15), `rotor-controller standalone` and one `rotor-sidecar`.
//!
//! The app opens a new connection every 10 ms with the credential in its
//! secret file, re-reading the file before each login (an app that
//! reconnects on reload as fast as it can). With singleUser the password
//! changes in `Setting`, and every login between that and the app reading
//! the new file fails; with alternatingUsers the app's role is never
//! changed under it. A window runs from a failed login to the next one
//! that works (its resolution is one login, printed). Printed
//! beside the window the controller reports (`SingleUserWindow`: from the
//! change to the last acknowledgement). Figures, not asserts.
//!
//! Run: `cargo bench -p rotor-e2e --bench single_user_window`
//! (after building the binaries; `ROTATIONS` to change the count).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rotor_e2e::postgres::{DbSecret, Rig, alternating, login, wait_for};

const TICK: Duration = Duration::from_millis(10);

/// Logins the app made: when, and whether each worked.
struct Logins {
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
}

fn start_app(port: u16, file: std::path::PathBuf) -> Logins {
    let logins = Logins {
        log: Arc::default(),
        stop: Arc::default(),
    };
    let (log, stop) = (logins.log.clone(), logins.stop.clone());
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let read = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<DbSecret>(&b).ok());
            if let Some(s) = read {
                let ok = login(port, &s.username, &s.password).await.is_ok();
                log.lock().unwrap().push((Instant::now(), ok));
            }
            tokio::time::sleep(TICK).await;
        }
    });
    logins
}

struct Figures {
    logins: usize,
    /// Mean time from one login to the next: the resolution.
    login_ms: u64,
    failed: usize,
    windows_ms: Vec<u64>,
    reported_ms: Vec<u64>,
}

async fn run(strategy: &str, rotations: u32) -> Figures {
    let rig = Rig::start_full("pg-admin-canary-5d1a", None, strategy, None, "").await;
    let app = start_app(rig.pg.port, rig.pod.out.path().join("db"));
    let mut before: Option<String> = None;
    for n in 0..rotations {
        if n > 0 {
            rig.rotate(n);
        }
        let done = wait_for(120, || {
            let s = rig.status();
            let cur = s["currentVersion"].as_str().map(str::to_owned);
            s["phase"] == "Idle"
                && s["previousVersion"].is_string()
                && cur.is_some()
                && cur != before
        })
        .await;
        assert!(
            done,
            "rotation {n} did not finish: {}\n{}",
            rig.status(),
            rig.log()
        );
        before = rig.status()["currentVersion"].as_str().map(str::to_owned);
    }
    // The app's last logins after the last rotation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop.store(true, Ordering::Relaxed);
    let log = app.log.lock().unwrap().clone();
    let failed = log.iter().filter(|(_, ok)| !ok).count();
    // A window: from a failed login to the next login that works.
    let mut windows_ms = Vec::new();
    let mut open: Option<Instant> = None;
    for (t, ok) in &log {
        match (open, ok) {
            (None, false) => open = Some(*t),
            (Some(first), true) => {
                windows_ms.push(t.duration_since(first).as_millis() as u64);
                open = None;
            }
            _ => {}
        }
    }
    let elapsed = match (log.first(), log.last()) {
        (Some(a), Some(b)) => b.0.duration_since(a.0),
        _ => Duration::ZERO,
    };
    let login_ms = elapsed.as_millis() as u64 / (log.len().max(1) as u64);
    let reported_ms = rig
        .log()
        .lines()
        .filter_map(|l| {
            let rest = l.split("role app_a: ").nth(1)?;
            rest.split(" ms").next()?.parse().ok()
        })
        .collect();
    Figures {
        logins: log.len(),
        login_ms,
        failed,
        windows_ms,
        reported_ms,
    }
}

fn summary(ms: &[u64]) -> String {
    if ms.is_empty() {
        return "-".to_owned();
    }
    let mut v = ms.to_vec();
    v.sort_unstable();
    format!("median {} ms, max {} ms", v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rotations: u32 = std::env::var("ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("# failed logins of an app reconnecting on reload, {rotations} rotations each");
    println!(
        "| strategy | logins (one per) | failed | windows (app side) | reported (SingleUserWindow) |"
    );
    println!("|---|---|---|---|---|");
    for (name, strategy) in [
        ("alternatingUsers", alternating("[app_a, app_b]")),
        ("singleUser", "{singleUser: {role: app_a}}".to_owned()),
    ] {
        let f = run(&strategy, rotations).await;
        println!(
            "| {name} | {} ({} ms) | {} | {} in {} windows | {} |",
            f.logins,
            f.login_ms,
            f.failed,
            summary(&f.windows_ms),
            f.windows_ms.len(),
            summary(&f.reported_ms)
        );
    }
}
