//! `rotor demo`: the whole loop on one machine, with no external service.
//!
//! A temporary key and local store, a sidecar writing to tmpfs, a small app
//! that reads its secret file and reloads on SIGHUP, and the rotation
//! controller in standalone mode with a policy that rotates every few
//! seconds. The sidecar dials the controller over the channel (TLS with the
//! controller's own CA, a token file they share, both on loopback): the
//! controller generates a new version, stages it as pending, sends it to
//! the sidecar over its stream (the file swaps, the app reloads without a
//! restart), records
//! the sidecar's acknowledgement, promotes the version, and retires the old
//! one after a grace period. The demo prints each phase from the
//! controller's status.
//!
//! With `--postgres` ([`postgres`]) the secret is a real PostgreSQL login
//! rotated with alternating users, under an app holding a connection pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ring::rand::SecureRandom;
use rotor_contract::api::Phase;
use rotor_controller::standalone::State;
use rotor_envelope::{Kek, KeyFileKek};
use rotor_store::{LocalStore, WriteAs};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

mod postgres;

const SECRET: &str = "demo/db-password";
const FILE: &str = "db-password";
/// The pod the demo's sidecar says it is, and the policy waits for.
const POD_NAMESPACE: &str = "demo";
const POD_NAME: &str = "app";

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
    /// Rotate a real PostgreSQL login instead: a throwaway cluster on a
    /// free loopback port, two roles alternating (alternatingUsers), and
    /// an app holding a connection pool that reconnects on each rotation
    /// and counts every failed query. Exits 0 only if none failed.
    #[arg(long, conflicts_with = "duration")]
    postgres: bool,
    /// With --postgres: where PostgreSQL's server binaries (initdb,
    /// postgres) are (default: found in PATH, /usr/lib/postgresql/*/bin or
    /// /usr/pgsql-*/bin); ignored without --postgres.
    #[arg(long, value_name = "DIR", env = "ROTOR_POSTGRES_BIN_DIR")]
    postgres_bin_dir: Option<PathBuf>,
    /// With --postgres: stop after this many rotations [default: 3].
    #[arg(long, value_name = "N", requires = "postgres", value_parser = clap::value_parser!(u32).range(1..=100))]
    rotations: Option<u32>,
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<()> {
        super::block_on(self.run_async())
    }

    /// Runs the demo, then stops every child process and removes every
    /// file it made, on every way out: the duration ends, Ctrl-C or
    /// SIGTERM, stdout closed (`rotor demo | head`), a child that exits,
    /// or a setup step that fails. Killed outright (SIGKILL), it leaves no
    /// process either: each child asked for a parent-death signal
    /// ([`die_with_parent`]), and the app, told the directories, removes
    /// them when it outlives the demo.
    async fn run_async(self) -> anyhow::Result<()> {
        let postgres = self.postgres;
        let mut demo = Demo::default();
        let result = demo.run(self).await;
        // Why a child exited is in its log, which goes with the work
        // directory: read it first.
        let why = match &result {
            Ok(End::Exited(role, _)) => demo
                .log(*role)
                .and_then(|log| last_problem(&log))
                .map(|line| format!(": {line}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        demo.shutdown().await;
        match result {
            Ok(End::Finished | End::Interrupted) => {
                let _ = say(&format!(
                    "stopped; the key, the store{} and the files are removed",
                    if postgres {
                        ", the PostgreSQL cluster"
                    } else {
                        ""
                    }
                ));
                Ok(())
            }
            Ok(End::Exited(role, status)) => bail!("the {} exited ({status}){why}", role.name()),
            // Nobody reads any more: stop quietly, as `head` expects.
            Err(e) if e.is::<OutputClosed>() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The environment variable that asks a child of the demo to die with it:
/// its value is the demo's pid (see [`die_with_parent`]).
pub const PARENT_ENV: &str = "ROTOR_DEMO_PARENT";

/// In a child the demo started (its pid in [`PARENT_ENV`]): asks the kernel
/// for SIGTERM when the demo dies, SIGKILL included, so no sidecar or
/// controller outlives it. A demo already gone before the request is seen
/// through the parent pid, and the child stops at once.
pub fn die_with_parent() -> anyhow::Result<()> {
    let Some(parent) = std::env::var_os(PARENT_ENV) else {
        return Ok(());
    };
    let parent: i32 = parent
        .to_str()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{PARENT_ENV}={parent:?} is not a process id"))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .context("cannot ask for a parent-death signal")?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        bail!("the demo (pid {parent}) is gone; stopping");
    }
    Ok(())
}

/// The demo's child processes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Sidecar,
    App,
    Controller,
    Postgres,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::App => "demo app",
            Role::Controller => "controller",
            Role::Postgres => "PostgreSQL server",
        }
    }
}

/// How the demo's loop ended.
enum End {
    /// `--duration` elapsed.
    Finished,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Interrupted,
    /// A child process exited on its own.
    Exited(Role, std::process::ExitStatus),
}

/// Stdout was closed (a broken pipe): the demo stops and cleans up.
#[derive(Debug, thiserror::Error)]
#[error("stdout is closed")]
struct OutputClosed;

/// What the demo started and made, so that [`Demo::shutdown`] and the
/// drops undo all of it.
#[derive(Default)]
struct Demo {
    /// Stopped in reverse order of start: the app, the sidecar (which
    /// wipes its files on SIGTERM), then the controller.
    children: Vec<(Role, Child)>,
    logs: Vec<(Role, PathBuf)>,
    /// The key, the store, the logs and the controller's state.
    work: Option<tempfile::TempDir>,
    /// The directory under /dev/shm the files go to, unless --dir.
    out: Option<tempfile::TempDir>,
    /// With --postgres: stopped after every child, since they use it.
    postgres: Option<crate::postgres::cluster::Cluster>,
}

impl Demo {
    fn log(&self, role: Role) -> Option<PathBuf> {
        self.logs
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.clone())
    }

    /// Starts a child in its own process group (Ctrl-C reaches only the
    /// demo, which then stops the children in order), logging to `log`.
    fn spawn(&mut self, role: Role, cmd: &mut Command, log: Option<PathBuf>) -> anyhow::Result<()> {
        if let Some(log) = &log {
            cmd.stderr(std::fs::File::create(log)?);
            self.logs.push((role, log.clone()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .env(PARENT_ENV, std::process::id().to_string())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {}", role.name()))?;
        self.children.push((role, child));
        Ok(())
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> std::io::Result<Option<(Role, std::process::ExitStatus)>> {
        for (role, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                return Ok(Some((*role, status)));
            }
        }
        if let Some(pg) = &mut self.postgres
            && let Some(status) = pg.try_wait()?
        {
            return Ok(Some((Role::Postgres, status)));
        }
        Ok(None)
    }

    fn child(&mut self, role: Role) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(r, _)| *r == role)
            .expect("started")
            .1
    }

    /// Stops every child (SIGTERM, then SIGKILL after 5 s) and removes the
    /// directories.
    async fn shutdown(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            terminate(&mut child).await;
        }
        if let Some(pg) = self.postgres.take() {
            // Its drop waits up to 10 s for a fast shutdown.
            let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
        }
        drop(self.out.take());
        drop(self.work.take());
    }

    async fn run(&mut self, args: DemoArgs) -> anyhow::Result<End> {
        let DemoArgs {
            dir,
            duration,
            every,
            postgres,
            postgres_bin_dir,
            rotations,
        } = args;
        // Before anything is made: a missing PostgreSQL is the whole error.
        let postgres_bin = if postgres {
            Some(crate::postgres::cluster::find_bin_dir(
                postgres_bin_dir.as_deref(),
            )?)
        } else {
            None
        };
        // Taken over before the first child starts: a signal during setup
        // stops the demo through its cleanup too. SIGHUP is a closed
        // terminal.
        let mut signals = Signals::new()?;
        let work = self
            .work
            .insert(tempfile::Builder::new().prefix("rotor-demo-").tempdir()?)
            .path()
            .to_owned();
        let out = match dir {
            Some(d) => d,
            None => {
                let shm = Path::new("/dev/shm");
                if !shm.is_dir() {
                    bail!("/dev/shm is not available; pass --dir with a tmpfs directory");
                }
                self.out
                    .insert(
                        tempfile::Builder::new()
                            .prefix("rotor-demo-")
                            .tempdir_in(shm)?,
                    )
                    .path()
                    .to_owned()
            }
        };
        let key_path = work.join("kek.key");
        let kek: Arc<dyn Kek> = Arc::new(KeyFileKek::generate(&key_path, false)?);
        let store_path = work.join("store.rotor");
        let store = LocalStore::new(&store_path, kek.clone());
        if let Some(bin) = postgres_bin {
            let setup = postgres::Setup {
                bin,
                work,
                out,
                store,
                store_path,
                key_path,
                every: every.max(2),
                rotations: rotations.unwrap_or(3),
            };
            return self.run_postgres(setup, &mut signals).await;
        }
        let first = store.put(SECRET, &random_value()?, WriteAs::Current)?;
        say(&format!(
            "local store {} (key {}), secret {SECRET:?} version {}",
            store_path.display(),
            kek.key_id(),
            first.version
        ))?;

        let pid_file = work.join("app.pid");
        let annotations = work.join("annotations");
        let mut pod = BTreeMap::new();
        pod.insert(format!("rotor.dev/secret.{FILE}"), SECRET.to_owned());
        pod.insert("rotor.dev/refresh".to_owned(), "2s".to_owned());
        pod.insert(
            "rotor.dev/reload".to_owned(),
            format!("signal:HUP:{}", pid_file.display()),
        );
        std::fs::write(&annotations, rotor_sidecar::downward::format(&pod))?;

        let exe = std::env::current_exe().context("cannot find the rotor executable")?;
        let policies = work.join("policies");
        std::fs::create_dir_all(&policies)?;
        std::fs::write(
            policies.join("demo.yaml"),
            policy_yaml(&store_path, &key_path, every.max(2)),
        )?;
        let state = work.join("state");
        let channel = work.join("channel");
        let channel_port = match self.start_controller(&exe, &work, &policies).await? {
            Ok(port) => port,
            Err(end) => return Ok(end),
        };
        say(&format!(
            "rotation controller (standalone) rotates {SECRET:?} every {}s; status in {}; \
             sidecars dial it on 127.0.0.1:{channel_port} (TLS, the token in {})",
            every.max(2),
            state.display(),
            channel.join("token").display()
        ))?;

        let sidecar_log = work.join("sidecar.log");
        let sidecar = Sidecar {
            annotations: &annotations,
            out: &out,
            store: &store_path,
            key: &key_path,
            channel_port,
            channel: &channel,
            log: &sidecar_log,
        };
        let admin_port = match self.start_sidecar(&exe, sidecar).await? {
            Ok(port) => port,
            Err(end) => return Ok(end),
        };
        say(&format!(
            "sidecar pid {} writes {} (logs in {}; metrics on http://127.0.0.1:{admin_port}/metrics)",
            self.child(Role::Sidecar).id().unwrap_or(0),
            out.display(),
            sidecar_log.display()
        ))?;
        // The app's lines go through the demo, the one writer of stdout.
        // Its errors go to its log, never to the terminal: a write to a
        // pipe the demo stopped reading is no news to the user.
        let mut app = Command::new(&exe);
        app.arg("demo-app")
            .args(["--file".as_ref(), out.join(FILE).as_os_str()])
            .args(["--pid-file".as_ref(), pid_file.as_os_str()])
            .args(["--remove-if-orphaned".as_ref(), work.as_os_str()])
            .stdout(Stdio::piped());
        if let Some(made) = &self.out {
            app.args(["--remove-if-orphaned".as_ref(), made.path().as_os_str()]);
        }
        self.spawn(Role::App, &mut app, Some(work.join("app.log")))?;
        let mut app_lines =
            BufReader::new(self.child(Role::App).stdout.take().expect("piped")).lines();
        say("the app reads the file and reloads on SIGHUP; press Ctrl-C to stop")?;

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
                () = signals.recv() => return Ok(End::Interrupted),
                () = stop_at => return Ok(End::Finished),
                line = app_lines.next_line() => match line? {
                    Some(line) => say(&line)?,
                    None => {
                        let status = self.child(Role::App).wait().await?;
                        return Ok(End::Exited(Role::App, status));
                    }
                },
                _ = tick.tick() => {
                    if let Some((role, status)) = self.exited()? {
                        return Ok(End::Exited(role, status));
                    }
                    if let Some(line) = describe(&state.join("demo.db-password.json")) && line != last {
                        say(&line)?;
                        last = line;
                    }
                }
            }
        }
    }
}
/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal): each stops the demo.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// What the demo's sidecar is started with.
struct Sidecar<'a> {
    annotations: &'a Path,
    out: &'a Path,
    store: &'a Path,
    key: &'a Path,
    channel_port: u16,
    /// The controller's channel directory: its CA and token.
    channel: &'a Path,
    log: &'a Path,
}

impl Demo {
    /// Starts `rotor controller standalone` on `<work>/policies`, its state
    /// in `<work>/state` and its channel's CA and token in
    /// `<work>/channel`, and waits for its channel: the port, or how the
    /// demo ends when the controller exited.
    async fn start_controller(
        &mut self,
        exe: &Path,
        work: &Path,
        policies: &Path,
    ) -> anyhow::Result<Result<u16, End>> {
        let (state, channel) = (work.join("state"), work.join("channel"));
        // Started first: it makes the CA and the token the sidecar reads.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let log = work.join("controller.log");
            self.spawn(
                Role::Controller,
                Command::new(exe)
                    .args(["controller", "standalone", "--policies"])
                    .arg(policies)
                    .arg("--state")
                    .arg(&state)
                    .args(["--channel-addr", &format!("127.0.0.1:{port}")])
                    .arg("--channel-dir")
                    .arg(&channel)
                    .stdout(Stdio::null()),
                Some(log.clone()),
            )?;
            match wait_channel(port, &channel, self.child(Role::Controller)).await? {
                None => return Ok(Ok(port)),
                Some(_) if attempt < 5 && port_taken(&log) => {
                    self.children.retain(|(role, _)| *role != Role::Controller);
                    self.logs.retain(|(role, _)| *role != Role::Controller);
                }
                Some(status) => return Ok(Err(End::Exited(Role::Controller, status))),
            }
        }
    }

    /// Starts the sidecar dialing the controller, and waits until it is
    /// ready: its admin port, or how the demo ends when it exited.
    async fn start_sidecar(
        &mut self,
        exe: &Path,
        s: Sidecar<'_>,
    ) -> anyhow::Result<Result<u16, End>> {
        // The ports are picked here and bound by the sidecar: when another
        // process takes one in between, the sidecar exits saying so, and it
        // starts again on fresh ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (admin_port, push_port) = (free_port()?, free_port()?);
            self.spawn(
                Role::Sidecar,
                Command::new(exe)
                    .arg("sidecar")
                    .args(["--annotations".as_ref(), s.annotations.as_os_str()])
                    .args(["--out-dir".as_ref(), s.out.as_os_str()])
                    .args(["--local-store".as_ref(), s.store.as_os_str()])
                    .args(["--key".as_ref(), s.key.as_os_str()])
                    .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
                    .args(["--push-addr", &format!("127.0.0.1:{push_port}")])
                    .args([
                        "--controller-addr",
                        &format!("localhost:{}", s.channel_port),
                    ])
                    .arg("--controller-ca")
                    .arg(s.channel.join("ca.crt"))
                    .arg("--channel-token")
                    .arg(s.channel.join("token"))
                    .args(["--pod-namespace", POD_NAMESPACE, "--pod-name", POD_NAME])
                    .arg("--wipe-on-exit")
                    .env_remove("ROTOR_LOG_FORMAT")
                    .stdout(Stdio::null()),
                Some(s.log.to_owned()),
            )?;
            match wait_ready(admin_port, self.child(Role::Sidecar)).await? {
                None => return Ok(Ok(admin_port)),
                Some(_) if attempt < 5 && port_taken(s.log) => {
                    self.children.retain(|(role, _)| *role != Role::Sidecar);
                    self.logs.retain(|(role, _)| *role != Role::Sidecar);
                }
                Some(status) => return Ok(Err(End::Exited(Role::Sidecar, status))),
            }
        }
    }
}

/// Writes one line for the user. A closed stdout (`rotor demo | head`) is
/// [`OutputClosed`], which stops the demo cleanly instead of a panic.
fn say(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = if line.starts_with("app[") {
        writeln!(out, "{line}")
    } else {
        writeln!(out, "rotor demo: {line}")
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        other => Ok(other?),
    }
}

/// The last error or warning a child logged (else its last line), cut
/// to 1 KiB: why it exited, since its log goes with the work directory.
fn last_problem(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("ERROR") || l.contains("WARN"))
        .or(lines.last())?;
    let mut line = line.trim().to_owned();
    if line.len() > 1024 {
        let mut cut = 1024;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    Some(line)
}

/// The demo's store and rotation policy, as `rotor-controller standalone`
/// reads them.
fn policy_yaml(store: &Path, key: &Path, every: u64) -> String {
    [
        "apiVersion: rotor.dev/v1alpha1".to_owned(),
        "kind: RotorStore".to_owned(),
        "metadata: {name: demo}".to_owned(),
        "spec:".to_owned(),
        "  provider:".to_owned(),
        format!(
            "    local: {{path: {}, keyPath: {}}}",
            store.display(),
            key.display()
        ),
        "---".to_owned(),
        "apiVersion: rotor.dev/v1alpha1".to_owned(),
        "kind: SecretRotationPolicy".to_owned(),
        "metadata: {name: db-password, namespace: demo}".to_owned(),
        "spec:".to_owned(),
        "  storeRef: {name: demo}".to_owned(),
        format!("  secretName: {SECRET}"),
        format!("  schedule: {{interval: {every}s}}"),
        "  generator: {password: {length: 24, minUpper: 2, minDigits: 2, minSymbols: 2}}"
            .to_owned(),
        // A policy's waits are at most its interval.
        format!(
            "  strategy: {{staged: {{ackTimeout: {}s, gracePeriod: 2s, onTimeout: Rollback}}}}",
            every.min(10)
        ),
        // The pod a rotation waits for: the sidecar's stream.
        format!("  sidecars: [\"{POD_NAMESPACE}/{POD_NAME}\"]"),
    ]
    .join("\n")
        + "\n"
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
fn port_taken(log: &Path) -> bool {
    std::fs::read_to_string(log)
        .is_ok_and(|text| text.to_ascii_lowercase().contains("address already in use"))
}

/// Waits for the sidecar's /readyz: `None` when ready, the exit status if
/// it exited first.
async fn wait_ready(
    port: u16,
    sidecar: &mut Child,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    for _ in 0..200 {
        if let Ok((200, _)) = http(port, "GET", "/readyz", "").await {
            return Ok(None);
        }
        if let Some(status) = sidecar.try_wait()? {
            return Ok(Some(status));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the sidecar was not ready within 5 s")
}

/// Waits for the controller's channel: its CA and token written and its
/// port listening. `None` when ready, the exit status if it exited first.
async fn wait_channel(
    port: u16,
    dir: &Path,
    controller: &mut Child,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    for _ in 0..400 {
        if dir.join("ca.crt").is_file()
            && dir.join("token").is_file()
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            return Ok(None);
        }
        if let Some(status) = controller.try_wait()? {
            return Ok(Some(status));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the controller's channel was not up within 10 s")
}

/// One line about the rotation's state, from the controller's status file.
fn describe(path: &Path) -> Option<String> {
    let state: State = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let s = &state.status;
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let acks: Vec<String> = s
        .consumers
        .iter()
        .map(|c| {
            format!(
                "the sidecar acknowledged version {}",
                c.acknowledged_version.as_deref().unwrap_or("nothing yet")
            )
        })
        .collect();
    Some(match s.phase? {
        Phase::Generating => "rotation due: generating a new value".to_owned(),
        Phase::Propagating => format!(
            "version {} staged as PENDING; sending it to the sidecar over its stream",
            text(&s.pending_version)
        ),
        Phase::Promoting => format!("{}; promoting", acks.join(", ")),
        Phase::Retiring => format!(
            "version {} promoted to CURRENT ({}); version {} stays PREVIOUS for the grace period",
            text(&s.current_version),
            acks.join(", "),
            text(&s.previous_version)
        ),
        Phase::Setting => {
            "setting the new password on the target's role (ALTER ROLE, as the admin)".to_owned()
        }
        Phase::Testing => "testing a login with the new password".to_owned(),
        Phase::RollingBack => "the sidecar did not acknowledge in time: rolling back".to_owned(),
        Phase::Idle => format!(
            "version {} is CURRENT; version {} retired; next rotation at {}",
            text(&s.current_version),
            text(&s.previous_version),
            text(&s.next_rotation)
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
