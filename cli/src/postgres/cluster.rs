//! PostgreSQL's server binaries on this machine, and a throwaway cluster:
//! `initdb` in a temporary directory, `postgres` on a free loopback port,
//! password (SCRAM) logins over TCP, trust only on its own Unix socket in
//! that directory; stopped (fast shutdown) and removed on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The superuser `initdb` creates; it logs in over the Unix socket only
/// (trust), or over TCP with the password [`Cluster::admin_sql`] sets.
pub const SUPERUSER: &str = "pg";

/// The variable `--postgres-bin-dir` reads.
pub const BIN_DIR_ENV: &str = "ROTOR_POSTGRES_BIN_DIR";

/// The server binaries a cluster needs.
const BINARIES: [&str; 2] = ["initdb", "postgres"];

/// Where PostgreSQL's server binaries are: `explicit` when given (it must
/// hold them), else the first of `PATH`, Debian's and Ubuntu's
/// `/usr/lib/postgresql/<version>/bin` and the PGDG packages'
/// `/usr/pgsql-<version>/bin` (highest version first) that holds both
/// `initdb` and `postgres`. The error names what is missing and how to get
/// it.
pub fn find_bin_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let holds = |dir: &Path| BINARIES.iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = explicit {
        let missing: Vec<&str> = BINARIES
            .iter()
            .copied()
            .filter(|b| !dir.join(b).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "--postgres-bin-dir {}: no {} there; expected the directory of PostgreSQL's \
                 server binaries (initdb and postgres), such as /usr/lib/postgresql/15/bin",
                dir.display(),
                missing.join(" or ")
            );
        }
        return Ok(dir.to_owned());
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let version = name.strip_prefix(prefix)?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, dir)| dir));
    }
    candidates.into_iter().find(|d| holds(d)).with_context(|| {
        format!(
            "PostgreSQL's server binaries (initdb and postgres) are not on this machine: none \
             in PATH, /usr/lib/postgresql/*/bin or /usr/pgsql-*/bin. Install the server \
             (Debian, Ubuntu: `apt-get install postgresql`; Fedora, RHEL: `dnf install \
             postgresql-server`), or pass --postgres-bin-dir DIR ({BIN_DIR_ENV}) naming the \
             directory that holds them"
        )
    })
}

/// A server certificate and key for `ssl=on`.
pub struct ServerTls {
    pub cert: String,
    pub key: String,
    /// pg_hba.conf allows TCP logins over TLS only (`hostssl`).
    pub ssl_only: bool,
}

/// A running throwaway cluster.
pub struct Cluster {
    /// The data directory (`data/`), the Unix socket, the log and the TLS
    /// files; removed on drop, after the server stopped.
    dir: tempfile::TempDir,
    port: u16,
    /// `postgres`, or `runuser` running it as the `postgres` user.
    child: Child,
}

impl Cluster {
    /// Runs `initdb` with the binaries in `bin`, then starts `postgres` on
    /// a free loopback port (again on a fresh one when another process
    /// took it first) and waits up to 30 s until it listens.
    pub fn start(bin: &Path, tls: Option<&ServerTls>) -> anyhow::Result<Self> {
        let as_root = rustix::process::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("rotor-postgres-")
            .tempdir()
            .context("cannot create the cluster's directory")?;
        if as_root {
            // PostgreSQL refuses root: the directory belongs to postgres.
            run(
                Command::new("chown").arg("postgres").arg(dir.path()),
                "chown postgres (PostgreSQL refuses to run as root, and runs as the postgres \
                 user; is there one?)",
            )?;
        }
        let data = dir.path().join("data");
        run(
            server_command(as_root, &bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"]),
            "initdb",
        )?;
        let mut ssl: Vec<String> = Vec::new();
        if let Some(t) = tls {
            if t.ssl_only {
                let hba = data.join("pg_hba.conf");
                let text = std::fs::read_to_string(&hba)?;
                let text: String = text
                    .lines()
                    .map(|l| match l.strip_prefix("host ") {
                        Some(rest) => format!("hostssl {rest}\n"),
                        None => format!("{l}\n"),
                    })
                    .collect();
                std::fs::write(&hba, text)?;
            }
            // The key must belong to the server's user, mode 0600.
            for (name, pem) in [("server.crt", &t.cert), ("server.key", &t.key)] {
                let path = dir.path().join(name);
                std::fs::write(&path, pem)?;
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
                if as_root {
                    run(Command::new("chown").arg("postgres").arg(&path), "chown")?;
                }
            }
            ssl = vec![
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", dir.path().join("server.crt").display()),
                "-c".into(),
                format!("ssl_key_file={}", dir.path().join("server.key").display()),
            ];
        }
        let log = dir.path().join("postgres.log");
        for attempt in 1.. {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut child = dies_with_starter(server_command(as_root, &bin.join("postgres")))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(&ssl)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                // Ctrl-C reaches its starter only, which stops it in turn.
                .process_group(0)
                .spawn()
                .context("cannot start postgres")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Self { dir, port, child });
                }
                if let Some(status) = child.try_wait()? {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if attempt < 5 && text.contains("already in use") {
                        break;
                    }
                    bail!(
                        "postgres exited ({status}): {}",
                        text.lines().last().unwrap_or("no log")
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("postgres did not listen on 127.0.0.1:{port} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("the loop returns or fails")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`postmaster.pid` is in it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the server logs.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The exit status of the server's process, once it exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Runs `sql` (statements separated by `;`, one at a time: `CREATE
    /// DATABASE` refuses an implicit transaction) as the superuser over the
    /// Unix socket, once the server accepts logins (it refuses them while
    /// it starts up), within 30 s.
    pub async fn admin_sql(&self, sql: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let attempt = tokio_postgres::Config::new()
                .host_path(self.dir.path())
                .port(self.port)
                .user(SUPERUSER)
                .dbname("postgres")
                .connect(tokio_postgres::NoTls)
                .await;
            match attempt {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    break client;
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).context("postgres never accepted the superuser's login");
                }
            }
        };
        let statements = sql.split(';').filter(|s| !s.trim().is_empty());
        for (i, statement) in statements.enumerate() {
            // The statements may carry passwords: the error says which
            // statement failed by its position, never its text.
            client
                .batch_execute(statement)
                .await
                .with_context(|| format!("statement {} of the cluster's setup failed", i + 1))?;
        }
        Ok(())
    }

    /// The postmaster's pid, from its `postmaster.pid`.
    fn postmaster(&self) -> Option<rustix::process::Pid> {
        postmaster_pid(&self.data_dir())
    }
}

/// The pid in `<data>/postmaster.pid`, while the server runs.
pub fn postmaster_pid(data: &Path) -> Option<rustix::process::Pid> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    rustix::process::Pid::from_raw(text.lines().next()?.trim().parse().ok()?)
}

/// Asks the postmaster in `data` for a fast shutdown (SIGINT: sessions
/// are ended, not waited for).
pub fn stop_postmaster(data: &Path) {
    if let Some(pid) = postmaster_pid(data) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = self.postmaster() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program`, as the `postgres` user when this process is root.
fn server_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// `cmd` under util-linux `setpriv --pdeathsig TERM` when it is on this
/// machine: the server (or `runuser`, which passes the signal on) stops
/// when the process that started it dies, even killed outright, so no
/// cluster outlives a killed demo or test. TERM is a smart shutdown,
/// which completes once the clients (gone with the starter) are.
fn dies_with_starter(cmd: Command) -> Command {
    let setpriv_found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("setpriv").is_file()));
    if !setpriv_found {
        return cmd;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(["--pdeathsig", "TERM", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

/// Runs `cmd` to completion; its stderr's last line in the error.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{what} failed ({}): {}",
            out.status,
            stderr.lines().last().unwrap_or("no output")
        );
    }
    Ok(())
}
