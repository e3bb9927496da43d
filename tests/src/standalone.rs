//! `rotor-controller standalone` under test, with its channel on a free
//! loopback port and its `/metrics`: what sidecars need to dial it, and
//! its counters to wait on.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::{command, free_port, http, retry_on_addr_in_use, wait_until};

/// A running standalone controller; killed on drop.
pub struct Standalone {
    pub child: Child,
    pub channel_port: u16,
    pub metrics_port: u16,
    /// `ca.crt` and `token` are here.
    pub channel_dir: PathBuf,
    pub log: PathBuf,
}

impl Standalone {
    /// Starts the controller on `policies` with its state in `state`,
    /// `args` and `env` added, and waits until its channel is up (CA and
    /// token written, port listening) and `/metrics` answers.
    pub fn start(
        policies: &Path,
        state: &Path,
        log: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Self {
        let channel_dir = state.join("channel");
        retry_on_addr_in_use(|channel_port| {
            let metrics_port = free_port();
            let mut cmd = command("rotor-controller");
            cmd.args(["standalone", "--policies"])
                .arg(policies)
                .arg("--state")
                .arg(state)
                .args(["--channel-addr", &format!("127.0.0.1:{channel_port}")])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
                .args(args)
                .env("ROTOR_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().unwrap();
            let mut exited = false;
            let up = wait_until(20, || {
                exited = child.try_wait().unwrap().is_some();
                exited
                    || (channel_dir.join("ca.crt").is_file()
                        && std::net::TcpStream::connect(("127.0.0.1", channel_port)).is_ok()
                        && http(metrics_port, "GET", "/metrics", "").is_some())
            });
            if exited || !up {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(log).unwrap_or_default());
            }
            Ok(Self {
                child,
                channel_port,
                metrics_port,
                channel_dir: channel_dir.clone(),
                log: log.to_owned(),
            })
        })
    }

    /// The address sidecars dial (a name the certificate covers).
    pub fn addr(&self) -> String {
        format!("localhost:{}", self.channel_port)
    }

    pub fn ca(&self) -> PathBuf {
        self.channel_dir.join("ca.crt")
    }

    pub fn token(&self) -> PathBuf {
        self.channel_dir.join("token")
    }

    /// The environment that makes a sidecar dial this controller as pod
    /// `namespace/name`.
    pub fn sidecar_env(&self, namespace: &str, name: &str) -> Vec<(String, String)> {
        vec![
            ("ROTOR_CONTROLLER_ADDR".into(), self.addr()),
            (
                "ROTOR_CONTROLLER_CA".into(),
                self.ca().display().to_string(),
            ),
            (
                "ROTOR_CHANNEL_TOKEN".into(),
                self.token().display().to_string(),
            ),
            ("ROTOR_POD_NAMESPACE".into(), namespace.into()),
            ("ROTOR_POD_NAME".into(), name.into()),
        ]
    }

    /// `/metrics` as text (empty when it does not answer).
    pub fn metrics(&self) -> String {
        http(self.metrics_port, "GET", "/metrics", "")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of one series, written as `/metrics` writes it
    /// (`rotor_channel_refused_total{reason="tooLarge"}`); 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics(), series)
    }

    /// Waits up to `secs` for `rotor_channel_streams` to be `n`.
    pub fn wait_streams(&self, n: usize, secs: u64) -> bool {
        wait_until(secs, || self.metric("rotor_channel_streams") == n as f64)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The value of `series` in a Prometheus text exposition; 0 when absent.
pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
