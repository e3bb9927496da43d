//! `rotor-sidecar` processes serving KV v2 secrets of an OpenBao, as the
//! benches run them: warnings only in their logs, a fresh tmpfs output
//! directory each, admin and push ports picked here. Stopped (SIGTERM,
//! then reaped) on drop.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin, free_port};

/// What a sidecar serves and where it reads it.
pub struct Launch<'a> {
    /// The OpenBao's address and a token for it (written to a file the
    /// sidecar reads).
    pub addr: &'a str,
    pub token: &'a str,
    /// `(file, secret)`: `rotor.dev/secret.<file>` is `<secret>`.
    pub secrets: &'a [(String, String)],
    pub refresh: Duration,
    /// `rotor.dev/store`, which a sidecar on the channel names in its hello.
    pub store: Option<&'a str>,
    /// Added to the environment (the channel's `ROTOR_CONTROLLER_ADDR` …).
    pub env: &'a [(String, String)],
}

pub struct VaultSidecar {
    pub child: Child,
    pub out: tempfile::TempDir,
    pub push_port: u16,
    pub admin_port: u16,
    work: tempfile::TempDir,
}

impl VaultSidecar {
    /// Starts one; it may exit at once when another process took one of
    /// its ports (see [`VaultSidecar::exited`]), so callers start another.
    pub fn launch(l: &Launch) -> Self {
        let work = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut map: BTreeMap<String, String> = l
            .secrets
            .iter()
            .map(|(file, secret)| (format!("rotor.dev/secret.{file}"), secret.clone()))
            .collect();
        map.insert(
            "rotor.dev/refresh".into(),
            humantime::format_duration(l.refresh).to_string(),
        );
        if let Some(store) = l.store {
            map.insert("rotor.dev/store".into(), store.into());
        }
        let token = work.path().join("token");
        std::fs::write(&token, l.token).unwrap();
        let annotations = work.path().join("annotations");
        std::fs::write(&annotations, rotor_sidecar::downward::format(&map)).unwrap();
        let (admin_port, push_port) = (free_port(), free_port());
        let mut cmd = Command::new(bin("rotor-sidecar"));
        cmd.arg("--annotations")
            .arg(&annotations)
            .arg("--out-dir")
            .arg(out.path())
            .args(["--store-kind", "vault", "--vault-addr", l.addr])
            .arg("--vault-token-file")
            .arg(&token)
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--push-addr", &format!("127.0.0.1:{push_port}")])
            .env("ROTOR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("sidecar.log")).unwrap());
        for (k, v) in l.env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            out,
            push_port,
            admin_port,
            work,
        }
    }

    /// True once the process exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The content of one of its files, if written.
    pub fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.out.path().join(file)).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("sidecar.log")).unwrap_or_default()
    }
}

impl Drop for VaultSidecar {
    fn drop(&mut self) {
        if !self.exited() {
            crate::signal(&self.child, "TERM");
        }
        let _ = self.child.wait();
    }
}
