//! Runs a pod's reload actions after its files changed: a signal to a
//! process, an HTTP POST to a loopback hook, or a command.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rotor_contract::annotations::{ProcessTarget, ReloadAction, Signal};

/// The whole environment of an `exec:` action. The sidecar's own
/// environment can hold store credentials (AWS keys, Vault settings), so a
/// command gets none of it: only this `PATH`, which also finds its program.
pub const EXEC_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The descriptors above stderr that an `exec:` child would inherit: those
/// without close-on-exec (`O_CLOEXEC` in `/proc/self/fdinfo/<fd>`).
///
/// Every descriptor the sidecar opens is close-on-exec (Rust's standard
/// library, tokio and mio, inotify, and the writer's `rustix` calls all
/// set it), and an `exec:` child gets `/dev/null` as stdin, stdout and
/// stderr, so a child holds no descriptor of the sidecar's. What this can
/// still find are descriptors the sidecar's own parent left open: a
/// container runtime starts a container's process with stdin, stdout and
/// stderr only, so in a pod there are none. Closing them before each
/// `exec` would take a `pre_exec` hook, which is `unsafe` (the workspace
/// forbids it); the sidecar names them in a warning at start instead.
pub fn inheritable_descriptors() -> Vec<u32> {
    const O_CLOEXEC: u32 = 0o2_000_000;
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    let mut fds: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|fd| *fd > 2)
        .filter(|fd| {
            std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).is_ok_and(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                    .is_some_and(|flags| flags & O_CLOEXEC == 0)
            })
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// Timeouts and retries of the actions.
#[derive(Debug, Clone)]
pub struct ReloadPolicy {
    pub http_timeout: Duration,
    pub http_attempts: u32,
    pub exec_timeout: Duration,
}

impl Default for ReloadPolicy {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(5),
            http_attempts: 3,
            exec_timeout: Duration::from_secs(30),
        }
    }
}

/// Why one attempt of an HTTP hook failed: worth another attempt or not.
enum HookError {
    Retry(String),
    Final(String),
}

pub struct Reloader {
    http: Client<HttpConnector, Empty<Bytes>>,
    policy: ReloadPolicy,
}

impl Reloader {
    pub fn new(policy: ReloadPolicy) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            policy,
        }
    }

    /// Runs one action. The error says what failed; it never holds output
    /// of the app, which could echo a secret.
    pub async fn run(&self, action: &ReloadAction) -> Result<(), String> {
        match action {
            ReloadAction::Signal { signal, target } => send_signal(*signal, target),
            ReloadAction::Http { url } => self.post(url).await,
            ReloadAction::Exec { argv } => self.exec(argv).await,
        }
    }

    /// POSTs to `url`, retrying server errors, transport errors and
    /// timeouts up to `http_attempts` times in all, 200 ms then doubling
    /// between attempts; a client error (4xx) is not retried.
    async fn post(&self, url: &str) -> Result<(), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let backoff = hook_backoff(self.policy.http_attempts);
        let attempt = || async {
            let request = hyper::Request::post(uri.clone())
                .header("user-agent", "rotor-sidecar")
                .body(Empty::<Bytes>::new())
                .map_err(|e| HookError::Final(e.to_string()))?;
            match tokio::time::timeout(self.policy.http_timeout, self.http.request(request)).await {
                Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                Ok(Ok(resp)) if resp.status().is_client_error() => Err(HookError::Final(format!(
                    "HTTP {} (not retried)",
                    resp.status()
                ))),
                Ok(Ok(resp)) => Err(HookError::Retry(format!("HTTP {}", resp.status()))),
                Ok(Err(e)) => Err(HookError::Retry(format!("request failed: {e}"))),
                Err(_) => Err(HookError::Retry(format!(
                    "timed out after {:?}",
                    self.policy.http_timeout
                ))),
            }
        };
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, HookError::Retry(_)))
            .await
            .map_err(|e| match e {
                HookError::Final(why) => why,
                HookError::Retry(last) => {
                    format!("{last} after {} attempts", self.policy.http_attempts)
                }
            })
    }

    async fn exec(&self, argv: &[String]) -> Result<(), String> {
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", EXEC_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", argv[0]))?;
        match tokio::time::timeout(self.policy.exec_timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("{:?} exited with {status}", argv[0])),
            Ok(Err(e)) => Err(format!("waiting for {:?} failed: {e}", argv[0])),
            Err(_) => {
                let _ = child.kill().await;
                Err(format!(
                    "{:?} timed out after {:?} and was killed",
                    argv[0], self.policy.exec_timeout
                ))
            }
        }
    }
}

/// The waits between an HTTP hook's `attempts`: 200 ms, then doubling.
fn hook_backoff(attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_factor(2.0)
        .without_max_delay()
        .with_max_times(attempts.max(1) as usize - 1)
}

fn rustix_signal(signal: Signal) -> rustix::process::Signal {
    use rustix::process::Signal as S;
    match signal {
        Signal::Hup => S::HUP,
        Signal::Usr1 => S::USR1,
        Signal::Usr2 => S::USR2,
        Signal::Term => S::TERM,
        Signal::Int => S::INT,
        Signal::Quit => S::QUIT,
        Signal::Winch => S::WINCH,
    }
}

fn send_signal(signal: Signal, target: &ProcessTarget) -> Result<(), String> {
    let pids = match target {
        ProcessTarget::PidFile(path) => vec![read_pid_file(path)?],
        ProcessTarget::Name(name) => find_by_name(Path::new("/proc"), name)?,
    };
    for pid in &pids {
        let p = rustix::process::Pid::from_raw(*pid).ok_or(format!("bad pid {pid}"))?;
        rustix::process::kill_process(p, rustix_signal(signal))
            .map_err(|e| format!("kill -{} {pid} failed: {e}", signal.name()))?;
    }
    Ok(())
}

fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("pid file {} does not hold a pid", path.display()))
}

/// The processes named `name` whose parent is not also named `name`: the
/// master of a pre-forking server, not its workers. Matches
/// `/proc/<pid>/comm` (cut to 15 bytes by the kernel) or the base name of
/// `argv[0]`.
pub fn find_by_name(proc: &Path, name: &str) -> Result<Vec<i32>, String> {
    let me = std::process::id() as i32;
    let mut matches: Vec<(i32, i32)> = Vec::new();
    let entries =
        std::fs::read_dir(proc).map_err(|e| format!("cannot list {}: {e}", proc.display()))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if process_name_matches(&entry.path(), name) {
            matches.push((pid, parent_of(&entry.path()).unwrap_or(0)));
        }
    }
    let pids: Vec<i32> = matches.iter().map(|(p, _)| *p).collect();
    let tops: Vec<i32> = matches
        .iter()
        .filter(|(_, parent)| !pids.contains(parent))
        .map(|(p, _)| *p)
        .collect();
    if tops.is_empty() {
        return Err(format!(
            "no process named {name:?} is visible; signals by name need shareProcessNamespace: true (or use a pid file)"
        ));
    }
    Ok(tops)
}

fn process_name_matches(dir: &Path, name: &str) -> bool {
    let comm_name: String = name.chars().take(15).collect();
    if std::fs::read_to_string(dir.join("comm"))
        .is_ok_and(|c| c.trim_end_matches('\n') == comm_name)
    {
        return true;
    }
    std::fs::read(dir.join("cmdline")).is_ok_and(|c| {
        let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
        let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
        base == name.as_bytes()
    })
}

fn parent_of(dir: &Path) -> Option<i32> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests;
