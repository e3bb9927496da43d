//! A node's inotify limits: more sidecars of one uid than
//! `fs.inotify.max_user_instances` allows all start and serve, those past
//! the limit by checking their annotations file on a timer.
//!
//! The limit is per uid and machine-wide, so lowering it would change it
//! for every process of the machine. Instead the sidecars run as a uid no
//! other test uses, and a helper process of that uid takes every inotify
//! instance the limit allows but a few, then releases them when the test
//! ends (its stdin closes, or it is killed).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rotor_e2e::pod::Pod;
use rotor_e2e::{http, wait_until};
use rotor_store::{LocalStore, WriteAs};

/// A uid no other test runs as: its inotify instances are this test's.
const UID: u32 = 61_022;

/// Holds every inotify instance of `UID` but `free`; prints how many it
/// took, then waits for its stdin to close. It raises its descriptor limit
/// first, so that the loop ends at `max_user_instances`, not at the
/// descriptor limit.
const HOG: &str = r#"
import ctypes, os, resource, sys
limit = int(open("/proc/sys/fs/inotify/max_user_instances").read())
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < limit:
    fd = libc.inotify_init()
    if fd < 0:
        break
    fds.append(fd)
errno = ctypes.get_errno()
for fd in fds[: int(sys.argv[1])]:
    os.close(fd)
print(len(fds), limit, errno, flush=True)
sys.stdin.read()
"#;

/// The helper process; killed on drop, which releases its instances.
struct Hog(Child);

impl Hog {
    /// Takes every instance of `UID` but `free`; returns it once it holds
    /// them, with how many it took and the limit it read.
    fn start(free: usize) -> (Self, usize, usize) {
        let mut child = Command::new("setpriv")
            .args(["--reuid", &UID.to_string(), "--regid", &UID.to_string()])
            .args(["--clear-groups", "--", "/usr/bin/python3", "-c", HOG])
            .arg(free.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the inotify helper");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let figures: Vec<usize> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(figures.len(), 3, "the helper said {line:?}");
        (Self(child), figures[0], figures[1])
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Sidecar {
    pod: Pod,
    store: LocalStore,
}

impl Sidecar {
    fn new() -> Self {
        let mut pod = Pod::new();
        let store = pod.use_local_store();
        pod.run_as = Some((UID, UID));
        store.put("db", b"v1", WriteAs::Current).unwrap();
        pod.annotate(&[
            ("rotor.dev/secret.db", "db"),
            ("rotor.dev/refresh", "200ms"),
        ]);
        pod.give_files_to(UID, UID);
        Self { pod, store }
    }

    fn fallbacks(&self) -> Option<f64> {
        let metrics = http(self.pod.admin, "GET", "/metrics", "")?.1;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("rotor_inotify_fallbacks_total "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.pod.log()).unwrap_or_default()
    }
}

#[test]
fn more_sidecars_than_the_inotify_limit_all_serve() {
    assert!(
        Path::new("/usr/bin/setpriv").exists() && Path::new("/usr/bin/python3").exists(),
        "util-linux setpriv and python3 are needed to exhaust another uid's inotify instances"
    );
    const FREE: usize = 2;
    const SIDECARS: usize = 5;
    let (hog, taken, limit) = Hog::start(FREE);
    assert_eq!(
        taken, limit,
        "the helper took {taken} of {limit} instances: another process of uid {UID} holds some"
    );

    let mut sidecars: Vec<Sidecar> = (0..SIDECARS).map(|_| Sidecar::new()).collect();
    for sidecar in &mut sidecars {
        sidecar.pod.start();
    }
    // Every one serves, and exactly those past the limit poll.
    for (i, sidecar) in sidecars.iter().enumerate() {
        assert_eq!(sidecar.pod.read("db").as_deref(), Some("v1"), "sidecar {i}");
    }
    let fallbacks: Vec<f64> = sidecars
        .iter()
        .map(|s| s.fallbacks().expect("the metric is exported"))
        .collect();
    let polling: Vec<&Sidecar> = sidecars
        .iter()
        .zip(&fallbacks)
        .filter(|(_, f)| **f == 1.0)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        polling.len(),
        SIDECARS - FREE,
        "fallbacks per sidecar: {fallbacks:?}"
    );
    assert!(
        fallbacks.iter().all(|f| *f == 0.0 || *f == 1.0),
        "{fallbacks:?}"
    );
    for sidecar in &polling {
        let log = sidecar.log();
        let warnings = log
            .lines()
            .filter(|l| l.contains("checking the annotations file's ..data link on a timer"))
            .count();
        assert_eq!(warnings, 1, "said once:\n{log}");
        assert!(log.contains("Too many open files"), "{log}");
    }

    // A new version reaches every one of them.
    for sidecar in &sidecars {
        sidecar.store.put("db", b"v2", WriteAs::Current).unwrap();
        sidecar.pod.give_files_to(UID, UID);
    }
    for (i, sidecar) in sidecars.iter().enumerate() {
        assert!(
            wait_until(10, || sidecar.pod.read("db").as_deref() == Some("v2")),
            "sidecar {i} did not refresh:\n{}",
            sidecar.log()
        );
    }

    // A polling sidecar still follows its annotations: a second secret,
    // then the first one removed.
    let sidecar = polling[0];
    sidecar.store.put("api", b"a1", WriteAs::Current).unwrap();
    sidecar.pod.give_files_to(UID, UID);
    sidecar.pod.annotate(&[
        ("rotor.dev/secret.api", "api"),
        ("rotor.dev/refresh", "200ms"),
    ]);
    sidecar.pod.give_files_to(UID, UID);
    assert!(
        wait_until(10, || sidecar.pod.read("api").as_deref() == Some("a1")
            && sidecar.pod.read("db").is_none()),
        "the annotation change was not applied:\n{}",
        sidecar.log()
    );
    drop(hog);
    for sidecar in &mut sidecars {
        assert!(sidecar.pod.stop().success(), "{}", sidecar.log());
    }
}
