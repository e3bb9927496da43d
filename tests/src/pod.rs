//! A sidecar under test, as a real process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::{
    command, free_port, http, http_to, retry_on_addr_in_use, signal, tmpfs_dir, wait_until,
};

/// Closes every descriptor above stderr, then runs its arguments.
const CLOSE_INHERITED: &str = r#"for p in /proc/$$/fd/*; do n=${p##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done; exec "$@""#;

/// A sidecar process with its annotations file, output directory (tmpfs)
/// and ports; killed on drop.
pub struct Pod {
    pub work: tempfile::TempDir,
    pub out: tempfile::TempDir,
    pub admin: u16,
    pub push: u16,
    pub child: Option<Child>,
    /// The store flags: `--local-store …`, `--store-kind vault …`.
    pub store_args: Vec<std::ffi::OsString>,
    pub envs: Vec<(String, String)>,
    /// The host part of `--admin-addr` and `--push-addr`: `127.0.0.1`, or
    /// IPv6 loopback as `[::1]` or bare `::1` (what `$(POD_IP):PORT` gives).
    pub admin_host: String,
    pub push_host: String,
    /// Where the sidecar's stderr goes: the work directory, or next to the
    /// annotations file (in the directory the sidecar watches).
    pub log_beside_annotations: bool,
    /// Run the sidecar as this uid and gid (through util-linux `setpriv`)
    /// instead of the test's own; see [`Pod::give_files_to`].
    pub run_as: Option<(u32, u32)>,
}

impl Pod {
    pub fn new() -> Self {
        Self {
            work: tempfile::tempdir().unwrap(),
            out: tmpfs_dir(),
            admin: free_port(),
            push: free_port(),
            child: None,
            store_args: Vec::new(),
            envs: Vec::new(),
            admin_host: "127.0.0.1".into(),
            push_host: "127.0.0.1".into(),
            log_beside_annotations: false,
            run_as: None,
        }
    }

    /// Points the sidecar at a new local store in the work directory (with
    /// its key) and returns a handle on that store for the test to write.
    pub fn use_local_store(&mut self) -> rotor_store::LocalStore {
        use rotor_envelope::KeyFileKek;
        let key = self.work.path().join("kek");
        KeyFileKek::generate(&key, false).unwrap();
        let path = self.work.path().join("store.rotor");
        let store = rotor_store::LocalStore::new(
            &path,
            std::sync::Arc::new(KeyFileKek::load(&key).unwrap()),
        );
        self.store_args = vec![
            "--local-store".into(),
            path.into(),
            "--key".into(),
            key.into(),
        ];
        store
    }

    /// Points the sidecar at the Vault (or OpenBao) at `addr`, logging in
    /// with the token in `token_file`.
    pub fn use_vault(&mut self, addr: &str, token_file: &Path) {
        self.store_args = vec![
            "--store-kind".into(),
            "vault".into(),
            "--vault-addr".into(),
            addr.into(),
            "--vault-token-file".into(),
            token_file.into(),
        ];
    }

    pub fn annotations_path(&self) -> PathBuf {
        self.work.path().join("podinfo").join("annotations")
    }

    /// Writes the annotations file the way the kubelet does: a new file
    /// renamed into place.
    pub fn annotate(&self, pairs: &[(&str, &str)]) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let path = self.annotations_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, rotor_sidecar::downward::format(&map)).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    pub fn command(&self) -> std::process::Command {
        self.command_to(self.out.path())
    }

    pub fn command_to(&self, out_dir: &Path) -> std::process::Command {
        let mut cmd = command("rotor-sidecar");
        if let Some((uid, gid)) = self.run_as {
            let sidecar = cmd.get_program().to_owned();
            cmd = command("rotor-sidecar");
            // Started as a container runtime starts it, with stdin, stdout
            // and stderr only: bash closes what the test harness left open
            // (cargo's jobserver pipe, say).
            let mut setpriv = std::process::Command::new("bash");
            setpriv
                .args(["-c", CLOSE_INHERITED, "bash", "setpriv"])
                .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
                .args(["--clear-groups", "--"])
                .arg(sidecar);
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => setpriv.env(k, v),
                    None => setpriv.env_remove(k),
                };
            }
            cmd = setpriv;
        }
        cmd.arg("--annotations")
            .arg(self.annotations_path())
            .arg("--out-dir")
            .arg(out_dir)
            .args(&self.store_args)
            .args([
                "--admin-addr",
                &format!("{}:{}", self.admin_host, self.admin),
            ])
            .args(["--push-addr", &format!("{}:{}", self.push_host, self.push)])
            // The tests read series by secret name.
            .arg("--metrics-secret-names")
            .env("ROTOR_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap());
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn log(&self) -> PathBuf {
        if self.log_beside_annotations {
            self.annotations_path().with_file_name("sidecar.log")
        } else {
            self.work.path().join("sidecar.log")
        }
    }

    /// Gives the work and output directories, and everything in them, to
    /// `uid`:`gid`, for a sidecar run as that user ([`Pod::run_as`]). Call
    /// again after the test writes the store.
    pub fn give_files_to(&self, uid: u32, gid: u32) {
        fn walk(path: &Path, uid: u32, gid: u32) {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
            if path.is_dir() && !path.is_symlink() {
                for entry in std::fs::read_dir(path).unwrap() {
                    walk(&entry.unwrap().path(), uid, gid);
                }
            }
        }
        walk(self.work.path(), uid, gid);
        walk(self.out.path(), uid, gid);
    }

    /// The host to connect to for the admin port.
    pub fn admin_connect_host(&self) -> &str {
        self.admin_host
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// Starts the sidecar and waits until it is ready; when another process
    /// took its admin or push port first, starts it on fresh ports.
    pub fn start(&mut self) {
        let (mut admin, mut push) = (self.admin, self.push);
        let mut first = true;
        retry_on_addr_in_use(|fresh| {
            if !std::mem::take(&mut first) {
                (admin, push) = (fresh, free_port());
            }
            (self.admin, self.push) = (admin, push);
            let mut child = self.command().spawn().unwrap();
            let mut exited = false;
            let ready = wait_until(10, || {
                exited = child.try_wait().unwrap().is_some();
                exited
                    || http_to(self.admin_connect_host(), self.admin, "GET", "/readyz", "")
                        .is_some_and(|(s, _)| s == 200)
            });
            self.child = Some(child);
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            assert!(ready, "not ready: {log}");
            if exited { Err(log) } else { Ok(()) }
        });
    }

    /// Asks the sidecar through its push API to serve `version` of secret
    /// `name`: `(status, body)`.
    pub fn push_pin(&self, name: &str, version: impl std::fmt::Display) -> (u16, String) {
        let body = format!(r#"{{"secrets":[{{"name":"{name}","version":"{version}"}}]}}"#);
        http(self.push, "POST", "/v1/refresh", &body).expect("the push port answers")
    }

    pub fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.out.path().join(file)).ok()
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, "TERM");
        child.wait().unwrap()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Default for Pod {
    fn default() -> Self {
        Self::new()
    }
}
