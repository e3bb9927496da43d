//! `rotor demo`: the whole loop on one machine, with no external service.
//!
//! A temporary key and local store, a sidecar writing to tmpfs, a small app
//! that reads its secret file and reloads on SIGHUP, and the rotation
//! controller in standalone mode with a policy that rotates every few
//! seconds: it generates a new version, stages it as pending, pushes it to
//! the sidecar (the file swaps, the app reloads without a restart), records
//! the sidecar's acknowledgement, promotes the version, and retires the old
//! one after a grace period. The demo prints each phase from the
//! controller's status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ring::rand::SecureRandom;
use rotor_envelope::{Kek, KeyFileKek};
use rotor_store::{LocalStore, WriteAs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const SECRET: &str = "demo/db-password";
const FILE: &str = "db-password";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Write the files here (must be tmpfs) instead of a fresh directory
    /// under /dev/shm.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
    /// Seconds between rotations.
    #[arg(long, default_value_t = 5)]
    every: u64,
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<()> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.run_async())
    }

    async fn run_async(self) -> anyhow::Result<()> {
        let Self {
            dir,
            duration,
            every,
        } = self;
        let work = tempfile::Builder::new().prefix("rotor-demo-").tempdir()?;
        let (out_holder, out) = match dir {
            Some(d) => (None, d),
            None => {
                let shm = Path::new("/dev/shm");
                if !shm.is_dir() {
                    bail!("/dev/shm is not available; pass --dir with a tmpfs directory");
                }
                let t = tempfile::Builder::new()
                    .prefix("rotor-demo-")
                    .tempdir_in(shm)?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let key_path = work.path().join("kek.key");
        let kek: Arc<dyn Kek> = Arc::new(KeyFileKek::generate(&key_path, false)?);
        let store_path = work.path().join("store.rotor");
        let store = LocalStore::new(&store_path, kek.clone());
        let first = store.put(SECRET, &random_value()?, WriteAs::Current)?;
        say(&format!(
            "local store {} (key {}), secret {SECRET:?} version {}",
            store_path.display(),
            kek.key_id(),
            first.version
        ));

        let pid_file = work.path().join("app.pid");
        let annotations = work.path().join("annotations");
        let mut pod = BTreeMap::new();
        pod.insert(format!("rotor.dev/secret.{FILE}"), SECRET.to_owned());
        pod.insert("rotor.dev/refresh".to_owned(), "2s".to_owned());
        pod.insert(
            "rotor.dev/reload".to_owned(),
            format!("signal:HUP:{}", pid_file.display()),
        );
        std::fs::write(&annotations, rotor_sidecar::downward::format(&pod))?;

        let exe = std::env::current_exe().context("cannot find the rotor executable")?;
        let sidecar_log = work.path().join("sidecar.log");
        // The ports are picked here and bound by the sidecar: when another
        // process takes one in between, the sidecar exits saying so, and it
        // starts again on fresh ports.
        let mut attempts = 0;
        let (mut sidecar, admin_port, push_port) = loop {
            attempts += 1;
            let admin_port = free_port()?;
            let push_port = free_port()?;
            let mut sidecar = Command::new(&exe)
                .arg("sidecar")
                .args(["--annotations".as_ref(), annotations.as_os_str()])
                .args(["--out-dir".as_ref(), out.as_os_str()])
                .args(["--local-store".as_ref(), store_path.as_os_str()])
                .args(["--key".as_ref(), key_path.as_os_str()])
                .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
                .args(["--push-addr", &format!("127.0.0.1:{push_port}")])
                .arg("--wipe-on-exit")
                .env_remove("ROTOR_LOG_FORMAT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&sidecar_log)?)
                .kill_on_drop(true)
                .spawn()
                .context("cannot start the sidecar")?;
            match wait_ready(admin_port, &mut sidecar).await {
                Ok(()) => break (sidecar, admin_port, push_port),
                Err(_) if attempts < 5 && port_taken(&sidecar_log) => continue,
                Err(e) => return Err(e),
            }
        };
        say(&format!(
            "sidecar pid {} writes {} (tmpfs); logs in {}; metrics on http://127.0.0.1:{admin_port}/metrics",
            sidecar.id().unwrap_or(0),
            out.display(),
            sidecar_log.display()
        ));
        let mut app = Command::new(&exe)
            .arg("demo-app")
            .args(["--file".as_ref(), out.join(FILE).as_os_str()])
            .args(["--pid-file".as_ref(), pid_file.as_os_str()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the demo app")?;
        say("the app reads the file and reloads on SIGHUP; press Ctrl-C to stop");

        let policies = work.path().join("policies");
        std::fs::create_dir_all(&policies)?;
        let yaml = [
            "apiVersion: rotor.dev/v1alpha1".to_owned(),
            "kind: SecretStore".to_owned(),
            "metadata: {name: demo}".to_owned(),
            "spec:".to_owned(),
            "  provider:".to_owned(),
            format!(
                "    local: {{path: {}, keyPath: {}}}",
                store_path.display(),
                key_path.display()
            ),
            "---".to_owned(),
            "apiVersion: rotor.dev/v1alpha1".to_owned(),
            "kind: SecretRotationPolicy".to_owned(),
            "metadata: {name: db-password, namespace: demo}".to_owned(),
            "spec:".to_owned(),
            "  storeRef: {name: demo}".to_owned(),
            format!("  secretName: {SECRET}"),
            format!("  schedule: {{interval: {}s}}", every.max(2)),
            "  generator: {password: {length: 24, minUpper: 2, minDigits: 2, minSymbols: 2}}"
                .to_owned(),
            "  strategy: {staged: {ackTimeout: 10s, gracePeriod: 2s, onTimeout: Rollback}}"
                .to_owned(),
            format!("  sidecars: [\"http://127.0.0.1:{push_port}\"]"),
        ];
        std::fs::write(policies.join("demo.yaml"), yaml.join("\n") + "\n")?;
        let state = work.path().join("state");
        let controller_log = work.path().join("controller.log");
        let mut controller = Command::new(&exe)
            .args(["controller", "standalone", "--policies"])
            .arg(&policies)
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&controller_log)?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the controller")?;
        say(&format!(
            "rotation controller (standalone) rotates {SECRET:?} every {}s; status in {}",
            every.max(2),
            state.display()
        ));

        let deadline = duration.map(|s| Instant::now() + Duration::from_secs(s));
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last = String::new();
        loop {
            let stop_at = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = stop_at => break,
                status = sidecar.wait() => bail!("the sidecar exited ({}); see {}", status?, sidecar_log.display()),
                status = app.wait() => bail!("the demo app exited ({})", status?),
                status = controller.wait() => bail!("the controller exited ({}); see {}", status?, controller_log.display()),
                _ = tick.tick() => {
                    if let Some(line) = describe(&state.join("demo.db-password.json")) && line != last {
                        say(&line);
                        last = line;
                    }
                }
            }
        }
        terminate(&mut controller).await;
        say("stopping");
        terminate(&mut app).await;
        terminate(&mut sidecar).await;
        drop(out_holder);
        Ok(())
    }
}

fn say(line: &str) {
    println!("rotor demo: {line}");
}

fn random_value() -> anyhow::Result<Vec<u8>> {
    let mut bytes = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the random number generator failed"))?;
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

/// A loopback port that was free a moment ago; the sidecar binds it, and
/// [`port_taken`] tells when another process was quicker.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// True when the sidecar's log says one of its ports was taken.
fn port_taken(log: &std::path::Path) -> bool {
    std::fs::read_to_string(log)
        .is_ok_and(|text| text.to_ascii_lowercase().contains("address already in use"))
}

async fn wait_ready(port: u16, sidecar: &mut Child) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok((200, _)) = http(port, "GET", "/readyz", "").await {
            return Ok(());
        }
        if let Some(status) = sidecar.try_wait()? {
            bail!("the sidecar exited before it was ready ({status})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the sidecar was not ready within 5 s")
}

/// One line about the rotation's state, from the controller's status file.
fn describe(path: &Path) -> Option<String> {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let s = &state["status"];
    let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
    let acks: Vec<String> = s["consumers"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| {
                    format!(
                        "the sidecar acknowledged version {}",
                        c["acknowledgedVersion"].as_str().unwrap_or("nothing yet")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(match s["phase"].as_str()? {
        "Generating" => "rotation due: generating a new value".to_owned(),
        "Propagating" => format!(
            "version {} staged as PENDING; pushing it to the sidecar",
            text("pendingVersion")
        ),
        "Promoting" => format!("{}; promoting", acks.join(", ")),
        "Retiring" => format!(
            "version {} promoted to CURRENT ({}); version {} stays PREVIOUS for the grace period",
            text("currentVersion"),
            acks.join(", "),
            text("previousVersion")
        ),
        "RollingBack" => "the sidecar did not acknowledge in time: rolling back".to_owned(),
        _ => format!(
            "version {} is CURRENT; version {} retired; next rotation at {}",
            text("currentVersion"),
            text("previousVersion"),
            text("nextRotation")
        ),
    })
}

/// A minimal HTTP/1.1 exchange with a loopback server.
async fn http(port: u16, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    sock.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| rustix_pid(p as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

fn rustix_pid(p: i32) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(p)
}
