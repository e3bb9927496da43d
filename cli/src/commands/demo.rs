//! `rotor demo`: the whole loop on one machine, with no external service.
//!
//! A temporary key and local store, a sidecar writing to tmpfs, and a small
//! app that reads its secret file and reloads on SIGHUP. Every few seconds
//! the demo writes a new version and pushes it to the sidecar; the file
//! swaps, the app reloads without a restart, and the sidecar acknowledges
//! the version it now serves.

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
    /// Seconds between new versions.
    #[arg(long, default_value_t = 3)]
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
        let admin_port = free_port()?;
        let push_port = free_port()?;
        let sidecar_log = work.path().join("sidecar.log");
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
        say(&format!(
            "sidecar pid {} writes {} (tmpfs); logs in {}; metrics on http://127.0.0.1:{admin_port}/metrics",
            sidecar.id().unwrap_or(0),
            out.display(),
            sidecar_log.display()
        ));
        wait_ready(admin_port, &mut sidecar).await?;
        let mut app = Command::new(&exe)
            .arg("demo-app")
            .args(["--file".as_ref(), out.join(FILE).as_os_str()])
            .args(["--pid-file".as_ref(), pid_file.as_os_str()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the demo app")?;
        say("the app reads the file and reloads on SIGHUP; press Ctrl-C to stop");

        let deadline = duration.map(|s| Instant::now() + Duration::from_secs(s));
        let mut tick = tokio::time::interval(Duration::from_secs(every.max(1)));
        tick.tick().await;
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
                _ = tick.tick() => {
                    let meta = store.put(SECRET, &random_value()?, WriteAs::Current)?;
                    let started = Instant::now();
                    let ack = push(push_port, SECRET).await?;
                    say(&format!(
                        "wrote version {} of {SECRET:?}; the sidecar acknowledged version {} in {:.1} ms",
                        meta.version,
                        ack,
                        started.elapsed().as_secs_f64() * 1000.0
                    ));
                }
            }
        }
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

/// Pushes a refresh and returns the acknowledged version.
async fn push(port: u16, secret: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({ "secrets": [{ "name": secret }] }).to_string();
    let (status, reply) = http(port, "POST", "/v1/refresh", &body).await?;
    let reply: serde_json::Value =
        serde_json::from_str(&reply).context("the sidecar's reply is not JSON")?;
    if status != 200 {
        bail!("the sidecar refused the refresh (HTTP {status}): {reply}");
    }
    Ok(reply["secrets"][0]["version"]
        .as_str()
        .unwrap_or("?")
        .to_owned())
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
