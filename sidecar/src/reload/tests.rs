//! Tests of reload actions: signals to real child processes, HTTP calls and
//! exec.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A child that writes "got" to a file when SIGHUP arrives. Python, not a
/// shell: a shell cannot trap a signal that was ignored when it started
/// (as under `nohup`), while Python's handler always takes over.
fn hup_catcher(dir: &Path, name: Option<&str>) -> (std::process::Child, std::path::PathBuf) {
    let flag = dir.join("flag");
    let ready = dir.join("ready");
    // The optional third argument becomes the process name (comm), set
    // with prctl(PR_SET_NAME).
    let script = "import ctypes, signal, sys, time, pathlib\n\
flag, ready = sys.argv[1], sys.argv[2]\n\
if len(sys.argv) > 3: ctypes.CDLL(None).prctl(15, sys.argv[3].encode(), 0, 0, 0)\n\
signal.signal(signal.SIGHUP, lambda *a: pathlib.Path(flag).write_text('got'))\n\
pathlib.Path(ready).touch()\n\
time.sleep(20)\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(&flag).arg(&ready);
    if let Some(name) = name {
        cmd.arg(name);
    }
    let child = cmd.spawn().unwrap();
    assert!(
        (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            ready.exists()
        }),
        "the test child did not start"
    );
    (child, flag)
}

fn wait_for(path: &Path) -> bool {
    (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        path.exists()
    })
}

#[tokio::test]
async fn a_signal_through_a_pid_file_reaches_a_child_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, flag) = hup_catcher(dir.path(), None);
    let pid_file = dir.path().join("app.pid");
    std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
    let action = ReloadAction::Signal {
        signal: Signal::Hup,
        target: ProcessTarget::PidFile(pid_file),
    };
    Reloader::new(ReloadPolicy::default())
        .run(&action)
        .await
        .unwrap();
    assert!(wait_for(&flag), "the child never saw SIGHUP");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_signal_by_name_finds_the_process_in_proc() {
    let dir = tempfile::tempdir().unwrap();
    // A unique argv[0], so that nothing else matches.
    let name = format!("rtr-hup-{}", std::process::id() % 100000);
    let (mut child, flag) = hup_catcher(dir.path(), Some(&name));
    let pids = find_by_name(Path::new("/proc"), &name).unwrap();
    assert_eq!(pids, vec![child.id() as i32]);
    let action = ReloadAction::Signal {
        signal: Signal::Hup,
        target: ProcessTarget::Name(name),
    };
    Reloader::new(ReloadPolicy::default())
        .run(&action)
        .await
        .unwrap();
    assert!(wait_for(&flag), "the child never saw SIGHUP");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_missing_process_is_a_clear_error() {
    let err = find_by_name(Path::new("/proc"), "no-such-process-xyz").unwrap_err();
    assert!(err.contains("shareProcessNamespace"), "{err}");
}

/// A tiny HTTP server that answers each request with the next status.
async fn hook(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let resp =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (format!("http://127.0.0.1:{}/reload", addr.port()), hits)
}

/// On paused time: the retry delays (200 ms, 400 ms) pass at once, and a
/// hook that never answered would fail on the timeout, not pass.
#[tokio::test(start_paused = true)]
async fn http_hooks_retry_server_errors_but_not_client_errors() {
    let fast = ReloadPolicy {
        http_timeout: Duration::from_secs(2),
        http_attempts: 3,
        exec_timeout: Duration::from_secs(5),
    };
    let (url, hits) = hook(vec![503, 200]).await;
    Reloader::new(fast.clone())
        .run(&ReloadAction::Http { url })
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let (url, hits) = hook(vec![404]).await;
    let err = Reloader::new(fast.clone())
        .run(&ReloadAction::Http { url })
        .await
        .unwrap_err();
    assert!(err.contains("404") && err.contains("not retried"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let (url, hits) = hook(vec![500, 500, 500]).await;
    let err = Reloader::new(fast)
        .run(&ReloadAction::Http { url })
        .await
        .unwrap_err();
    assert!(err.contains("after 3 attempts"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[test]
fn http_hooks_wait_200_ms_then_double_between_attempts() {
    use backon::BackoffBuilder;
    // In whole milliseconds: backon multiplies in f32.
    let waits = |attempts| {
        hook_backoff(attempts)
            .build()
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
            .collect::<Vec<_>>()
    };
    assert_eq!(waits(3), [200, 400]);
    assert_eq!(waits(5), [200, 400, 800, 1600]);
    assert!(waits(1).is_empty());
    assert!(waits(0).is_empty(), "0 attempts is one attempt");
}

#[tokio::test]
async fn exec_runs_with_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ran");
    let argv = vec!["touch".to_owned(), out.display().to_string()];
    Reloader::new(ReloadPolicy::default())
        .run(&ReloadAction::Exec { argv })
        .await
        .unwrap();
    assert!(out.exists());

    let policy = ReloadPolicy {
        exec_timeout: Duration::from_millis(200),
        ..ReloadPolicy::default()
    };
    let argv = vec!["sleep".to_owned(), "5".to_owned()];
    let err = Reloader::new(policy)
        .run(&ReloadAction::Exec { argv })
        .await
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    let err = Reloader::new(ReloadPolicy::default())
        .run(&ReloadAction::Exec {
            argv: vec!["false".into()],
        })
        .await
        .unwrap_err();
    assert!(err.contains("exited with"), "{err}");
}

/// The command writes its whole environment to a file, through `sh`, which
/// adds `PWD` itself.
#[tokio::test]
async fn exec_gets_only_a_fixed_path_and_none_of_the_sidecars_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "env > \"$0\"".to_owned(),
        out.display().to_string(),
    ];
    // The test process has an environment of its own (cargo sets CARGO_*,
    // and PATH differs): none of it may reach the command.
    assert!(std::env::vars().any(|(k, _)| k != "PATH" && k != "PWD"));
    Reloader::new(ReloadPolicy::default())
        .run(&ReloadAction::Exec { argv })
        .await
        .unwrap();
    let env = std::fs::read_to_string(&out).unwrap();
    let mut names: Vec<&str> = env
        .lines()
        .map(|l| l.split_once('=').map_or(l, |(k, _)| k))
        .filter(|k| *k != "PWD")
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["PATH"], "{env}");
    assert!(env.contains(&format!("PATH={EXEC_PATH}\n")), "{env}");
}

/// Descriptors a child would inherit are found by their missing
/// close-on-exec flag; the sidecar's own (close-on-exec) are not listed.
#[test]
fn descriptors_without_close_on_exec_are_named() {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let fd = file.as_raw_fd() as u32;
    assert!(!super::inheritable_descriptors().contains(&fd));
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::empty()).unwrap();
    assert!(super::inheritable_descriptors().contains(&fd));
}
