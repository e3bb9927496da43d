//! The sidecar's command line and its `run`: the engine, the writer, the HTTP
//! listeners and the channel, started and stopped together.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rotor_contract::defaults;
use rotor_telemetry::LogArgs;
use tokio::sync::mpsc;

use crate::Error;
use crate::engine::{Engine, EngineOptions, Shared};
use crate::http::{self, RateLimit};
use crate::reload::{ReloadPolicy, Reloader};
use crate::store_args::StoreArgs;
use crate::writer::{AtomicWriter, WriterOptions};

/// The most threads the sidecar's blocking pool runs at once.
pub const MAX_BLOCKING_THREADS: usize = 2;

/// Rotor's sidecar: reads which secrets the pod wants from its annotations,
/// writes them as files on tmpfs with an atomic `..data` swap, keeps them
/// fresh, and tells the app after a change.
#[derive(Debug, Parser)]
#[command(name = "rotor-sidecar", version, about, long_about = None)]
pub struct Args {
    /// The downward-API file of the pod's metadata.annotations. Watched
    /// with inotify: changes apply without a restart.
    #[arg(
        long,
        env = "ROTOR_ANNOTATIONS",
        default_value = "/etc/rotor/pod/annotations"
    )]
    annotations: PathBuf,

    /// Where the files go. Must be tmpfs or ramfs unless --allow-disk.
    #[arg(long, env = "ROTOR_OUT_DIR", default_value = defaults::MOUNT_PATH)]
    out_dir: PathBuf,

    /// Accept an output directory that is not in memory.
    #[arg(long, env = "ROTOR_ALLOW_DISK")]
    allow_disk: bool,

    #[command(flatten)]
    store: StoreArgs,

    /// Address of /healthz, /readyz and /metrics: `IP:PORT`, an IPv6
    /// address in brackets (`[fd00::10]:9464`) or bare (`fd00::10:9464`,
    /// the last colon before the port).
    #[arg(long, env = "ROTOR_ADMIN_ADDR", default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, defaults::ADMIN_PORT)), value_parser = parse_socket_addr)]
    admin_addr: SocketAddr,

    /// Address of POST /v1/refresh, written as --admin-addr is: a
    /// loopback address (127.0.0.1 or [::1]) only, since the port is not
    /// authenticated; the controller reaches the sidecar over the channel
    /// (--controller-addr). Another address is refused at start.
    #[arg(long, env = "ROTOR_PUSH_ADDR", default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, defaults::PUSH_PORT)), value_parser = parse_socket_addr)]
    push_addr: SocketAddr,

    /// Push requests allowed per second from each caller (peer IP address),
    /// in bursts of twice as many.
    #[arg(long, env = "ROTOR_PUSH_RATE", default_value_t = 10)]
    push_rate: u32,

    /// Label /metrics with secret names and versions. Off by default: the
    /// admin port answers the kubelet's probes on the pod IP, where any pod
    /// can scrape it; without the flag secrets are labelled #1, #2, … (in
    /// order of first use) and versions "-".
    #[arg(long, env = "ROTOR_METRICS_SECRET_NAMES")]
    metrics_secret_names: bool,

    /// Remove the files on shutdown.
    #[arg(long, env = "ROTOR_WIPE_ON_EXIT")]
    wipe_on_exit: bool,

    /// Fetch and write once, then exit (the init-container mode). Exits
    /// non-zero with the cause at once on a failure no retry can fix, and
    /// after --once-attempts tries with backoff on retryable ones.
    #[arg(long, env = "ROTOR_ONCE")]
    once: bool,

    /// How many times --once tries when the store is unreachable or
    /// throttles (backoff from 100 ms, doubling).
    #[arg(long, env = "ROTOR_ONCE_ATTEMPTS", default_value_t = 8)]
    once_attempts: u32,

    /// The files' mode when the pod sets no rotor.dev/file-mode: octal,
    /// no execute bits, no write for group or others. The webhook sets
    /// 0440 (or 0444) when it cannot run the sidecar as the app's user.
    #[arg(
        long,
        env = "ROTOR_DEFAULT_FILE_MODE",
        default_value_t = FileMode(rotor_contract::annotations::DEFAULT_FILE_MODE),
        value_parser = parse_file_mode
    )]
    default_file_mode: FileMode,

    /// How long a superseded data directory stays for readers mid-lookup.
    #[arg(long, env = "ROTOR_KEEP_OLD", default_value_t = crate::writer::KEEP_OLD.into())]
    keep_old: humantime::Duration,

    #[command(flatten)]
    channel: crate::channel::ChannelArgs,

    #[command(flatten)]
    log: LogArgs,
}

/// What a parsed command line says, for callers that check the flags they
/// generate (the webhook's tests) without running the sidecar.
impl Args {
    pub fn annotations(&self) -> &Path {
        &self.annotations
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    pub fn store(&self) -> &StoreArgs {
        &self.store
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn push_addr(&self) -> SocketAddr {
        self.push_addr
    }

    pub fn channel(&self) -> &crate::channel::ChannelArgs {
        &self.channel
    }

    pub fn once(&self) -> bool {
        self.once
    }

    pub fn default_file_mode(&self) -> u32 {
        self.default_file_mode.0
    }
}

impl Args {
    pub fn parse_and_run() -> ExitCode {
        Self::run_from(std::env::args_os())
    }

    /// Parses `argv` (program name first) and runs; `rotor sidecar` uses it.
    pub fn run_from<I, T>(argv: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Self::parse_from(argv);
        args.log.init("info");
        if let Err(e) = not_dumpable() {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        // One thread runs everything async. The blocking pool serves the
        // local store's file verification and reads, and DNS lookups; the
        // engine waits for each call, so a few threads are plenty, and a
        // bound keeps a burst from growing the process (tokio's default
        // is 512 threads).
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(args.run()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let chain = rotor_telemetry::Chain(&e).to_string();
                tracing::error!(error = %chain, kind = e.metric_label(), "rotor-sidecar failed");
                eprintln!("error: {chain}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run(self) -> crate::Result<()> {
        let Self {
            annotations,
            out_dir,
            allow_disk,
            store,
            admin_addr,
            push_addr,
            push_rate,
            metrics_secret_names,
            wipe_on_exit,
            once,
            once_attempts,
            keep_old,
            default_file_mode,
            channel,
            log: _,
        } = self;
        check_push_addr(push_addr)?;
        let inherited = crate::reload::inheritable_descriptors();
        if !inherited.is_empty() {
            tracing::warn!(
                descriptors = ?inherited,
                "descriptors left open by the sidecar's parent would reach exec: reload commands; \
                 start the sidecar with stdin, stdout and stderr only (a container runtime does)"
            );
        }
        let contract = crate::watch::load(&annotations)?;
        let store = store.build().await?;
        let writer = AtomicWriter::open(
            &out_dir,
            WriterOptions {
                allow_disk,
                owner: contract.file_owner,
                grace: keep_old.into(),
                default_mode: default_file_mode.0,
            },
        )?;
        let shared = Arc::new(Shared::with_metrics(crate::metrics::Metrics::new(
            metrics_secret_names,
        )));
        tracing::info!(
            store = %store.describe(),
            out_dir = %out_dir.display(),
            files = contract.files.len(),
            refresh = ?contract.refresh,
            "starting"
        );
        let mut engine = Engine::new(
            store,
            writer,
            contract.clone(),
            Reloader::new(ReloadPolicy::default()),
            shared.clone(),
            EngineOptions {
                default_file_mode: default_file_mode.0,
                ..EngineOptions::default()
            },
        );
        if once {
            engine.run_once(once_attempts).await?;
            tracing::info!("files written; exiting (--once)");
            return Ok(());
        }

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let (push_tx, push_rx) = mpsc::channel(16);
        let push_tx_channel = push_tx.clone();
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .map_err(|source| Error::Listen {
                flag: "--admin-addr",
                addr: admin_addr,
                source,
            })?;
        let push_router =
            http::push_router(push_tx, RateLimit::new(f64::from(push_rate), push_rate * 2));
        let admin_router = http::admin_router(shared.clone());
        let mut servers = Vec::new();
        if admin_addr == push_addr {
            servers.push(tokio::spawn(http::serve(
                admin,
                admin_router.merge(push_router),
                stopped(),
            )));
        } else {
            let push = tokio::net::TcpListener::bind(push_addr)
                .await
                .map_err(|source| Error::Listen {
                    flag: "--push-addr",
                    addr: push_addr,
                    source,
                })?;
            servers.push(tokio::spawn(http::serve(admin, admin_router, stopped())));
            servers.push(tokio::spawn(http::serve(push, push_router, stopped())));
        }
        let client = crate::channel::Client::from_args(
            &channel,
            contract.store.clone().unwrap_or_default(),
            contract
                .secret_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            contract.refresh,
        )?;
        if let Some(client) = &client {
            engine = engine.with_link(client.link.subscribe());
        }
        if let Some(client) = client {
            let stop = stopped();
            servers.push(tokio::spawn(async move {
                client.run(push_tx_channel, stop).await;
                Ok(())
            }));
        }
        let config = crate::watch::spawn(
            annotations,
            contract,
            shared.clone(),
            Duration::from_millis(50),
        )?;
        let mut writer = engine.run(Some(config), push_rx, shutdown_signal()).await;
        let _ = stop_tx.send(true);
        for server in servers {
            let _ = server.await;
        }
        if wipe_on_exit {
            writer.wipe()?;
            tracing::info!("files removed (--wipe-on-exit)");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Makes the process not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): the
/// kernel then refuses `/proc/<pid>/environ`, `/proc/<pid>/mem` and
/// `ptrace` to any process without `CAP_SYS_PTRACE`, a process of the same
/// uid included (an `exec:` reload child, whatever the app container runs
/// with a shared process namespace), and writes no core dump. The
/// environment can hold store credentials, the memory holds secret values.
/// A child gets the flag back at `execve` (it is reset for a program that
/// is not set-uid), so it does not limit what a reload command can do with
/// its own process. Done before anything is read from the environment's
/// credentials or the store.
fn not_dumpable() -> std::result::Result<(), String> {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
        format!(
            "cannot make the process not dumpable (prctl PR_SET_DUMPABLE: {e}); \
             refusing to run with secrets readable through /proc"
        )
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or an IPv6 address without brackets followed
/// by `:PORT` (what `$(POD_IP):PORT` expands to with an IPv6 pod IP): the
/// last colon separates the port.
pub fn parse_socket_addr(value: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected IP:PORT, such as 0.0.0.0:9465, [fd00::10]:9465 or fd00::10:9465";
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} has no port; {expected}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{value:?}: {port:?} is not a port (0 to 65535); {expected}"))?;
    let ip: std::net::Ipv6Addr = host
        .parse()
        .map_err(|_| format!("{value:?}: {host:?} is not an IP address; {expected}"))?;
    Ok(SocketAddr::from((ip, port)))
}

/// A file mode as the command line writes it: octal, four digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileMode(u32);

impl std::fmt::Display for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

fn parse_file_mode(value: &str) -> std::result::Result<FileMode, String> {
    rotor_contract::annotations::parse_mode(value)
        .map(FileMode)
        .map_err(|problem| {
            format!("{value:?} {problem}; expected an octal mode such as 0400, 0440 or 0444")
        })
}

/// The push port is not authenticated: it listens on loopback only.
fn check_push_addr(addr: SocketAddr) -> crate::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(Error::PushNotLoopback { addr })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    /// An IPv6 pod IP expanded into `$(ROTOR_POD_IP):9465` has no
    /// brackets: the last colon is the port's.
    #[test]
    fn addresses_take_ipv6_with_or_without_brackets() {
        use std::net::SocketAddr;
        for (value, expected) in [
            ("127.0.0.1:9465", "127.0.0.1:9465"),
            ("0.0.0.0:9464", "0.0.0.0:9464"),
            ("[fd00::10]:9465", "[fd00::10]:9465"),
            ("fd00::10:9465", "[fd00::10]:9465"),
            ("::1:9465", "[::1]:9465"),
            ("[::]:9464", "[::]:9464"),
            ("::ffff:10.0.0.1:9465", "[::ffff:10.0.0.1]:9465"),
        ] {
            let args = Args::try_parse_from([
                "rotor-sidecar",
                "--local-store=/s",
                "--key=/k",
                &format!("--push-addr={value}"),
                &format!("--admin-addr={value}"),
            ])
            .unwrap_or_else(|e| panic!("{value}: {e}"));
            let expected: SocketAddr = expected.parse().unwrap();
            assert_eq!(args.push_addr(), expected, "{value}");
            assert_eq!(args.admin_addr(), expected, "{value}");
        }
        for (value, problem) in [
            ("fd00::10", "is not an IP address"),
            ("10.0.0.1", "has no port"),
            ("10.0.0.1:99999", "is not a port"),
            ("pod.example:9465", "is not an IP address"),
        ] {
            let err = Args::try_parse_from(["rotor-sidecar", &format!("--push-addr={value}")])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(problem) && err.contains("[fd00::10]:9465"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn a_push_addr_beyond_loopback_is_refused_naming_the_flag() {
        for ok in ["127.0.0.1:9465", "[::1]:9465", "127.0.0.2:1"] {
            super::check_push_addr(ok.parse().unwrap()).unwrap();
        }
        for bad in [
            "0.0.0.0:9465",
            "10.0.0.1:9465",
            "[::]:9465",
            "[fd00::10]:9465",
        ] {
            let err = super::check_push_addr(bad.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("--push-addr {bad}: "))
                    && err.contains("is not a loopback address")
                    && err.contains("expected 127.0.0.1:PORT or [::1]:PORT"),
                "{err}"
            );
        }
    }

    /// Pods injected by an older controller pass `--namespace`.
    #[test]
    fn namespace_is_an_old_name_of_kubernetes_namespace() {
        for flag in ["--kubernetes-namespace=shop", "--namespace=shop"] {
            let args = Args::try_parse_from(["rotor-sidecar", "--store-kind=kubernetes", flag])
                .unwrap_or_else(|e| panic!("{flag}: {e}"));
            assert_eq!(args.store().namespace.as_deref(), Some("shop"), "{flag}");
        }
    }
}
