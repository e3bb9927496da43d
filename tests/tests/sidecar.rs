//! `rotor-sidecar` as a real process against the local store.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rotor_e2e::pod::Pod;
use rotor_e2e::{http, http_from, http_to, on_tmpfs, signal, wait_until};
use rotor_store::{LocalStore, WriteAs};

const CANARY: &str = "canary-sidecar-5f0d2a";

/// A pod with a local store.
struct Local {
    pod: Pod,
    store: LocalStore,
}

impl std::ops::Deref for Local {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl std::ops::DerefMut for Local {
    fn deref_mut(&mut self) -> &mut Pod {
        &mut self.pod
    }
}

impl Local {
    fn new() -> Self {
        let mut pod = Pod::new();
        let store = pod.use_local_store();
        Self { pod, store }
    }
}

#[test]
fn delivers_refreshes_and_reconfigures_live_through_inotify() {
    let mut pod = Local::new();
    pod.store.put("a", b"A1", WriteAs::Current).unwrap();
    pod.store
        .put("b", br#"{"user":"app"}"#, WriteAs::Current)
        .unwrap();
    pod.annotate(&[("rotor.dev/secret.a", "a"), ("rotor.dev/refresh", "200ms")]);
    pod.start();
    assert_eq!(pod.read("a").as_deref(), Some("A1"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pod.out.path().join("a"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o400);

    // A new version reaches the file within one interval.
    pod.store.put("a", b"A2", WriteAs::Current).unwrap();
    assert!(wait_until(2, || pod.read("a").as_deref() == Some("A2")));

    // A new annotation adds a file, a removed one deletes its file.
    pod.annotate(&[
        ("rotor.dev/secret.user", "b#user"),
        ("rotor.dev/refresh", "200ms"),
    ]);
    assert!(
        wait_until(5, || pod.read("user").as_deref() == Some("app")),
        "file not added"
    );
    assert!(
        wait_until(5, || pod.read("a").is_none()),
        "file not removed"
    );

    // An invalid change is refused and the running configuration stays.
    pod.annotate(&[
        ("rotor.dev/secret.user", "b#user"),
        ("rotor.dev/refresh", "never"),
    ]);
    // Wait for the refusal to be counted, then check nothing changed.
    assert!(
        wait_until(5, || scrape(&pod).contains("rotor_config_errors_total 1")),
        "the invalid change was never refused: {}",
        scrape(&pod)
    );
    assert_eq!(pod.read("user").as_deref(), Some("app"));
    let (_, metrics) = http(pod.admin, "GET", "/metrics", "").unwrap();
    assert!(metrics.contains("rotor_config_errors_total 1"), "{metrics}");
    assert!(
        std::fs::read_to_string(pod.log())
            .unwrap()
            .contains("annotation rotor.dev/refresh")
    );

    assert!(pod.stop().success());
}

#[test]
fn push_answers_with_the_served_version_after_the_file_is_written() {
    let mut pod = Local::new();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    pod.start();
    pod.store.put("db", b"v2", WriteAs::Pending).unwrap();
    let (status, body) = pod.push_pin("db", 2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        r#"{"ok":true,"secrets":[{"name":"db","version":"2"}]}"#
    );
    assert_eq!(pod.read("db").as_deref(), Some("v2"));
    // Malformed bodies get a 400 naming the problem.
    let (status, body) = http(pod.push, "POST", "/v1/refresh", r#"{"secret":[]}"#).unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("unknown field `secret`"), "{body}");
    // The push endpoint is rate-limited.
    let statuses: Vec<u16> = (0..40)
        .map(|_| http(pod.push, "POST", "/v1/refresh", "").unwrap().0)
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// An app's reload hook on loopback: counts the POSTs the sidecar sends.
/// The count goes up before the hook answers, and the sidecar answers a
/// push only after its reload actions ran, so a push's answer already
/// covers the reload it caused.
struct Hook {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Hook {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/reload", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"POST /reload ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A local store whose secret `db` has an older version 1 (PREVIOUS) and
/// version 2 (CURRENT), and a sidecar serving it with a reload hook.
fn pod_with_history(hook: &Hook) -> Local {
    let mut pod = Local::new();
    pod.store.put("db", b"old-v1", WriteAs::Current).unwrap();
    pod.store.put("db", b"now-v2", WriteAs::Current).unwrap();
    pod.annotate(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "1h"),
        ("rotor.dev/reload", &hook.url),
    ]);
    pod.start();
    assert_eq!(pod.read("db").as_deref(), Some("now-v2"));
    pod
}

/// Pushing an older (possibly revoked) version, or one that never existed,
/// is refused with 409 and changes nothing; the PENDING version still pins,
/// and releasing the pin is the way back to CURRENT.
#[test]
fn a_pin_to_a_version_other_than_pending_is_refused_and_changes_nothing() {
    let hook = Hook::start();
    let pod = pod_with_history(&hook);
    let data = || std::fs::read_link(pod.out.path().join("..data")).unwrap();
    let served = data();
    for asked in ["1", "99"] {
        let (status, body) = pod.push_pin("db", asked);
        assert_eq!(status, 409, "pin to {asked}: {body}");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["ok"], false, "{body}");
        let error = reply["secrets"][0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("version \"{asked}\""))
                && error.contains("secret \"db\"")
                && error.contains("only the store's PENDING version"),
            "{body}"
        );
        assert_eq!(reply["secrets"][0]["version"], "2", "{body}");
        assert_eq!(pod.read("db").as_deref(), Some("now-v2"));
        assert_eq!(data(), served, "..data swapped for a refused pin");
        assert_eq!(hook.hits(), 0, "the app reloaded for a refused pin");
    }
    let (_, metrics) = http(pod.admin, "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains(r#"rotor_secret_served{secret="db",version="2"} 1"#),
        "{metrics}"
    );

    // The rotation target still pins and is acknowledged; the hook is live.
    pod.store.put("db", b"next-v3", WriteAs::Pending).unwrap();
    let (status, body) = pod.push_pin("db", "3");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        r#"{"ok":true,"secrets":[{"name":"db","version":"3"}]}"#
    );
    assert_eq!(pod.read("db").as_deref(), Some("next-v3"));
    assert_eq!(hook.hits(), 1);

    // Rolling back: a push without a version serves CURRENT again.
    let (status, body) = http(
        pod.push,
        "POST",
        "/v1/refresh",
        r#"{"secrets":[{"name":"db"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        r#"{"ok":true,"secrets":[{"name":"db","version":"2"}]}"#
    );
    assert_eq!(pod.read("db").as_deref(), Some("now-v2"));
    assert_eq!(hook.hits(), 2);
}

/// A caller flipping the pin between the older and the current version for
/// 5 s, as fast as the rate limit lets it: no file change, no app reload
/// (before pins were checked against the store: 69 reloads, ~14/s).
#[test]
fn a_pin_flip_flop_forces_no_reloads() {
    let hook = Hook::start();
    let pod = pod_with_history(&hook);
    let started = Instant::now();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut flips = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        // The other version each time the last push got through.
        let version = ["1", "2"][flips % 2];
        let (status, _) = pod.push_pin("db", version);
        *statuses.entry(status).or_default() += 1;
        if status != 429 {
            flips += 1;
        }
        // Paced, so that the attack is many requests and few sockets.
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reloads = hook.hits();
    eprintln!(
        "pin flip-flop for {elapsed:.1} s: answers {statuses:?}; {reloads} app reloads ({:.1}/s)",
        reloads as f64 / elapsed
    );
    assert_eq!(reloads, 0, "answers {statuses:?}");
    assert!(statuses.get(&409).is_some_and(|n| *n > 0), "{statuses:?}");
    assert_eq!(pod.read("db").as_deref(), Some("now-v2"));
}

/// Four callers on 127.0.0.2–5 hammer the push endpoint until each has been
/// rate limited; a caller on 127.0.0.1 still gets every one of its pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_other_callers_leaves_a_legitimate_caller_its_pushes() {
    let mut pod = Local::new();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    pod.start();
    let port = pod.push;
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (2..=5u8)
        .map(|n| {
            let (stop, limited) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
            let counter = limited.clone();
            let task = tokio::spawn(async move {
                let source = Ipv4Addr::new(127, 0, 0, n);
                let mut sent = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let answer = http_from(source, port, "POST", "/v1/refresh", "").await;
                    assert!(answer.is_some(), "no answer to 127.0.0.{n}");
                    if answer.is_some_and(|(status, _)| status == 429) {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    sent += 1;
                }
                sent
            });
            (task, limited)
        })
        .collect();
    // Every attacker has drained its share before the legitimate caller starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while attackers
        .iter()
        .any(|(_, limited)| limited.load(Ordering::SeqCst) == 0)
    {
        assert!(
            Instant::now() < deadline,
            "an attacker was never rate limited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut legitimate = Vec::new();
    for _ in 0..10 {
        let answer = http_from(
            Ipv4Addr::LOCALHOST,
            port,
            "POST",
            "/v1/refresh",
            r#"{"secrets":[{"name":"db"}]}"#,
        )
        .await;
        legitimate.push(answer.map(|(status, _)| status));
    }
    stop.store(true, Ordering::SeqCst);
    let (mut sent, mut limited) = (0, 0);
    for (task, counter) in attackers {
        sent += task.await.unwrap();
        limited += counter.load(Ordering::SeqCst);
    }
    let ok = legitimate.iter().filter(|s| **s == Some(200)).count();
    eprintln!(
        "flood: 4 callers sent {sent} pushes, {limited} answered 429; the legitimate caller got {ok}/10 answered 200 ({legitimate:?})"
    );
    assert_eq!(ok, 10, "{legitimate:?}");
}

#[test]
fn sigterm_with_wipe_on_exit_removes_the_files() {
    let mut pod = Local::new();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "db")]);
    pod.child = Some(pod.command().arg("--wipe-on-exit").spawn().unwrap());
    assert!(wait_until(10, || pod.read("db").is_some()));
    assert!(pod.stop().success());
    assert_eq!(std::fs::read_dir(pod.out.path()).unwrap().count(), 0);
}

#[test]
fn startup_errors_name_the_problem() {
    let pod = Local::new();
    pod.annotate(&[
        ("rotor.dev/secret.../x", "db"),
        ("rotor.dev/refresh", "fast"),
    ]);
    let out = pod.command().stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("annotation rotor.dev/secret.../x: names the file \"../x\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("annotation rotor.dev/refresh: value \"fast\" is not a duration"),
        "{stderr}"
    );

    // Something under the writer's own names that the writer did not make.
    pod.annotate(&[("rotor.dev/secret.db", "db")]);
    let stray = pod.out.path().join("..tmp.db");
    std::fs::create_dir(&stray).unwrap();
    let out = pod.command().stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "{} is a directory, where rotor-sidecar leaves only a symlink",
            stray.display()
        )),
        "{stderr}"
    );
    std::fs::remove_dir(&stray).unwrap();

    let disk = tempfile::tempdir().unwrap();
    if !on_tmpfs(disk.path()) {
        pod.annotate(&[("rotor.dev/secret.db", "db")]);
        let out = pod
            .command_to(disk.path())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("is not on tmpfs or ramfs"), "{stderr}");
    }
}

#[test]
fn a_canary_never_appears_in_logs_metrics_or_errors() {
    let mut pod = Local::new();
    pod.store
        .put("db", CANARY.as_bytes(), WriteAs::Current)
        .unwrap();
    // A JSON field asked of a non-JSON value: a render error about the canary's secret.
    pod.store
        .put("blob", CANARY.as_bytes(), WriteAs::Current)
        .unwrap();
    pod.annotate(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    pod.start();
    pod.annotate(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/secret.field", "blob#key"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    // The new annotations are in force once the render error is logged.
    assert!(
        wait_until(5, || std::fs::read_to_string(pod.log())
            .unwrap()
            .contains("is not a JSON object")),
        "the render error was not logged"
    );
    pod.store
        .put("db", format!("{CANARY}-2").as_bytes(), WriteAs::Current)
        .unwrap();
    let (_, push) = http(pod.push, "POST", "/v1/refresh", "").unwrap();
    let (_, metrics) = http(pod.admin, "GET", "/metrics", "").unwrap();
    assert!(pod.stop().success());
    let log = std::fs::read_to_string(pod.log()).unwrap();
    assert!(
        log.contains("is not a JSON object"),
        "the render error was not logged:\n{log}"
    );
    for (what, text) in [("log", &log), ("metrics", &metrics), ("push reply", &push)] {
        assert!(!text.contains(CANARY), "canary in {what}:\n{text}");
    }
}

/// One sample of the Prometheus text, by its series (`name{labels}`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn scrape(pod: &Pod) -> String {
    http(pod.admin, "GET", "/metrics", "").unwrap().1
}

/// Puts a saved copy in place of the store file, as `cp` to the same
/// directory and `mv` over it would.
fn put_back(saved: &Path, store: &Path) {
    let tmp = store.with_extension("incoming");
    std::fs::copy(saved, &tmp).unwrap();
    std::fs::rename(tmp, store).unwrap();
}

/// An older copy of the local store put back over a newer one: the running
/// sidecar refuses it, keeps the newer file, logs why, and its staleness
/// grows until the newest copy is back.
#[test]
fn an_older_copy_of_the_store_put_back_is_refused_and_the_newer_file_stays() {
    let mut pod = Local::new();
    let (v1, v2, v3) = (
        format!("{CANARY}-one"),
        format!("{CANARY}-two"),
        format!("{CANARY}-three"),
    );
    pod.store
        .put("db", v1.as_bytes(), WriteAs::Current)
        .unwrap();
    let generation_1 = pod.work.path().join("store.rotor.gen1");
    std::fs::copy(pod.store.path(), &generation_1).unwrap();
    pod.annotate(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    pod.start();
    assert_eq!(pod.read("db"), Some(v1.clone()));
    pod.store
        .put("db", v2.as_bytes(), WriteAs::Current)
        .unwrap();
    assert!(wait_until(5, || pod.read("db") == Some(v2.clone())));
    let generation_2 = pod.work.path().join("store.rotor.gen2");
    std::fs::copy(pod.store.path(), &generation_2).unwrap();

    put_back(&generation_1, pod.store.path());
    const REFUSED: &str = "rotor_secret_fetch_errors_total{secret=\"db\",reason=\"replayed\"}";
    const LAST_SUCCESS: &str = "rotor_secret_last_success_timestamp_seconds{secret=\"db\"}";
    const STALENESS: &str = "rotor_secret_staleness_seconds{secret=\"db\"}";
    assert!(
        wait_until(10, || sample(&scrape(&pod), REFUSED).is_some()),
        "the older copy was not refused: {}",
        std::fs::read_to_string(pod.log()).unwrap_or_default()
    );
    let first = scrape(&pod);
    let refused = sample(&first, REFUSED).unwrap();
    // Three more refused polls: no success in between, staleness grew, and
    // the file still holds the newer version.
    let mut later = String::new();
    assert!(wait_until(10, || {
        later = scrape(&pod);
        sample(&later, REFUSED).is_some_and(|n| n >= refused + 3.0)
    }));
    assert_eq!(sample(&later, LAST_SUCCESS), sample(&first, LAST_SUCCESS));
    let (stale_before, stale_after) = (
        sample(&first, STALENESS).unwrap(),
        sample(&later, STALENESS).unwrap(),
    );
    assert!(
        stale_after >= stale_before + 0.15,
        "staleness {stale_before} -> {stale_after}"
    );
    assert_eq!(pod.read("db"), Some(v2.clone()));
    assert_eq!(
        sample(&later, "rotor_secret_served{secret=\"db\",version=\"2\"}"),
        Some(1.0)
    );
    let log = std::fs::read_to_string(pod.log()).unwrap();
    assert!(
        log.contains(&format!(
            "store file {} went back from generation 2 to 1: an older copy was put in place",
            pod.store.path().display()
        )),
        "{log}"
    );
    // The test's handle, a running writer, does not write over it either.
    assert!(matches!(
        pod.store.put("db", v3.as_bytes(), WriteAs::Current),
        Err(rotor_store::Error::Replayed {
            seen: 2,
            found: 1,
            ..
        })
    ));

    // The newest copy back: the sidecar follows the store again.
    put_back(&generation_2, pod.store.path());
    pod.store
        .put("db", v3.as_bytes(), WriteAs::Current)
        .unwrap();
    assert!(wait_until(5, || pod.read("db") == Some(v3.clone())));
    let metrics = scrape(&pod);
    assert!(sample(&metrics, LAST_SUCCESS) > sample(&first, LAST_SUCCESS));
    assert!(pod.stop().success());
    let log = std::fs::read_to_string(pod.log()).unwrap();
    for (what, text) in [("log", &log), ("metrics", &metrics)] {
        assert!(!text.contains(CANARY), "canary in {what}:\n{text}");
    }
}

/// An `exec:` action runs with none of the sidecar's environment, which can
/// hold store credentials: canaries in the sidecar's environment never reach
/// the command, which writes its whole environment to a file.
#[test]
fn an_exec_action_sees_none_of_the_sidecars_environment() {
    let mut pod = Local::new();
    let canaries = [
        ("VAULT_TOKEN", format!("{CANARY}-vault-token")),
        ("ROTOR_VAULT_TOKEN", format!("{CANARY}-rotor-vault-token")),
        ("ROTOR_VAULT_ROLE_ID", format!("{CANARY}-role-id")),
        ("AWS_SECRET_ACCESS_KEY", format!("{CANARY}-aws-secret")),
    ];
    pod.envs = canaries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let out = pod.work.path().join("exec-env");
    let script = pod.work.path().join("reload.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {out}.tmp && mv {out}.tmp {out}\n",
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    let reload = format!("exec:{}", script.display());
    pod.annotate(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
        ("rotor.dev/reload", &reload),
    ]);
    pod.start();
    // Reload actions run after a change, not after the first write.
    pod.store.put("db", b"v2", WriteAs::Current).unwrap();
    assert!(
        wait_until(10, || out.exists()),
        "the exec action did not run: {}",
        std::fs::read_to_string(pod.log()).unwrap_or_default()
    );
    let env = std::fs::read_to_string(&out).unwrap();
    for (name, value) in &canaries {
        assert!(
            !env.contains(value.as_str()),
            "{name} reached the command:\n{env}"
        );
        assert!(
            !env.contains(&format!("{name}=")),
            "{name} reached the command:\n{env}"
        );
    }
    // Only PATH, plus the PWD that `sh` sets itself.
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| *k != "PWD")
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["PATH"], "{env}");
    assert!(
        env.lines()
            .any(|l| l == "PATH=/usr/local/bin:/usr/bin:/bin"),
        "{env}"
    );
    assert!(
        wait_until(5, || http(pod.admin, "GET", "/metrics", "").is_some_and(
            |(_, m)| m.contains("rotor_reload_total{action=\"exec\",result=\"success\"} 1")
        )),
        "the exec action was not counted as a success"
    );
    assert!(pod.stop().success());
}

/// Kills the sidecar with SIGKILL at many points while it swaps a set of
/// ten 64 KiB files cut from one JSON secret; after each kill every file is
/// complete and all of them come from one version.
#[test]
fn kill_9_during_writes_leaves_the_old_set_or_the_new_one() {
    let mut pod = Local::new();
    let bundle = |generation: u32| {
        let fields: BTreeMap<String, String> = (0..10)
            .map(|k| (format!("k{k}"), format!("{generation:08}").repeat(8192)))
            .collect();
        serde_json_like(&fields)
    };
    pod.store
        .put("bundle", &bundle(0), WriteAs::Current)
        .unwrap();
    let pairs: Vec<(String, String)> = (0..10)
        .map(|k| (format!("rotor.dev/secret.f{k}"), format!("bundle#k{k}")))
        .chain([("rotor.dev/refresh".to_owned(), "100ms".to_owned())])
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    pod.annotate(&refs);
    let mut generation = 0;
    let mut checked = 0;
    for round in 0..12u64 {
        pod.child = Some(pod.command().spawn().unwrap());
        for _ in 0..4 {
            generation += 1;
            pod.store
                .put("bundle", &bundle(generation), WriteAs::Current)
                .unwrap();
            std::thread::sleep(Duration::from_millis(40 + (round * 37) % 90));
        }
        let mut child = pod.child.take().unwrap();
        signal(&child, "KILL");
        child.wait().unwrap();
        checked += usize::from(check_one_generation(pod.out.path(), round));
    }
    assert!(checked > 0, "every round was killed before the first write");
}

/// Checks that the files are one complete version; false when there were
/// none yet (killed before the first write).
fn check_one_generation(dir: &Path, round: u64) -> bool {
    if std::fs::symlink_metadata(dir.join("..data")).is_err() {
        return false; // killed before the first write
    }
    let mut seen = None;
    for k in 0..10 {
        let text = std::fs::read_to_string(dir.join(format!("f{k}")))
            .unwrap_or_else(|e| panic!("round {round}: f{k} missing: {e}"));
        assert_eq!(text.len(), 65536, "round {round}: f{k} is partial");
        let generation = &text[..8];
        assert_eq!(text, generation.repeat(8192), "round {round}: f{k} is torn");
        match &seen {
            None => seen = Some(generation.to_owned()),
            Some(g) => assert_eq!(g, generation, "round {round}: files from two versions"),
        }
    }
    true
}

/// A JSON object of string fields (values need no escaping here).
fn serde_json_like(fields: &BTreeMap<String, String>) -> Vec<u8> {
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    format!("{{{}}}", parts.join(",")).into_bytes()
}

/// Every flag reads the variable named after it: the store, the key and
/// `--once` given only through the environment fetch, write and exit.
#[test]
fn store_flags_and_once_read_the_variables_named_after_them() {
    let mut pod = Local::new();
    pod.store.put("db", b"from-env", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "db")]);
    let [_, store, _, key] = std::mem::take(&mut pod.store_args)
        .try_into()
        .expect("--local-store PATH --key KEYFILE");
    let mut cmd = pod.command();
    cmd.env("ROTOR_LOCAL_STORE", store)
        .env("ROTOR_KEY", key)
        .env("ROTOR_ONCE", "true")
        .stderr(Stdio::piped());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("exiting (--once)"), "{stderr}");
    assert_eq!(pod.read("db").as_deref(), Some("from-env"));
}

/// `--once` (the classic init container) never hangs: a failure no retry
/// can fix exits non-zero at once with its cause; an unreachable store is
/// retried a bounded number of times, then exits non-zero with its cause.
#[test]
fn once_exits_with_the_cause_instead_of_hanging() {
    let run = |pod: &Pod, extra: &[&str]| {
        let out = pod
            .command()
            .arg("--once")
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A missing secret: permanent.
    let pod = Local::new();
    pod.store.put("present", b"x", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "missing")]);
    let (status, stderr) = run(&pod, &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("--once: secret \"missing\"") && stderr.contains("not found"),
        "{stderr}"
    );
    // A template error: permanent.
    pod.annotate(&[
        ("rotor.dev/secret.db", "present"),
        (
            "rotor.dev/template.url",
            "x={{ secrets['db'] | nosuchfilter }}",
        ),
    ]);
    let (status, stderr) = run(&pod, &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("--once: file \"url\"") && stderr.contains("nosuchfilter"),
        "{stderr}"
    );
    // A template naming a path: one message, saying it is not a file name.
    pod.annotate(&[
        ("rotor.dev/secret.db", "present"),
        ("rotor.dev/template.url", "x={{ secrets['../db'] }}"),
    ]);
    let (status, stderr) = run(&pod, &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("refers to secrets[\"../db\"], which is not a file name")
            && !stderr.contains("rotor.dev/secret.../db"),
        "{stderr}"
    );
    // An unreachable store: retried, then the cause.
    let mut pod = Pod::new();
    let token = pod.work.path().join("token");
    std::fs::write(&token, "t").unwrap();
    pod.use_vault(
        &format!("http://127.0.0.1:{}", rotor_e2e::free_port()),
        &token,
    );
    pod.annotate(&[("rotor.dev/secret.db", "app/db")]);
    let (status, stderr) = run(&pod, &["--once-attempts", "3"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--once: gave up after 3 attempts: secret \"app/db\""),
        "{stderr}"
    );
    // And the files come when all is well.
    let pod = Local::new();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "db")]);
    let (status, stderr) = run(&pod, &[]);
    assert!(status.success(), "{stderr}");
    assert_eq!(pod.read("db").as_deref(), Some("v1"));
    // Logs into a pipe are plain text: colour is for terminals only.
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI codes in piped logs: {stderr:?}"
    );
    // A log filter that does not parse is refused before anything runs,
    // instead of silently logging nothing.
    let (status, stderr) = run(&pod, &["--log", "rotor=verbose!!"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'--log <LOG>'")
            && stderr.contains("expected comma-separated directives in RUST_LOG syntax"),
        "{stderr}"
    );
}

/// The build and the process metrics, under the names Prometheus client
/// libraries use: memory and CPU are what the sidecar is judged by.
#[test]
fn metrics_show_the_build_and_the_process() {
    let hook = Hook::start();
    let pod = pod_with_history(&hook);
    let metrics = scrape(&pod);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &metrics,
            &format!(r#"rotor_build_info{{version="{version}",binary="rotor-sidecar"}}"#)
        ),
        Some(1.0),
        "{metrics}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(
            sample(&metrics, name).is_some_and(|v| v > 0.0),
            "{name}: {metrics}"
        );
    }
    assert!(
        sample(&metrics, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0),
        "{metrics}"
    );
}

/// `rotor_secret_not_current` is 1 while a push pins PENDING, and 0 again
/// once the pinned version is promoted and served as CURRENT.
#[test]
fn not_current_is_exported_while_a_pin_holds() {
    const NOT_CURRENT: &str = r#"rotor_secret_not_current{secret="db"}"#;
    let hook = Hook::start();
    let pod = pod_with_history(&hook);
    let waits_for = |want: f64| {
        let mut last = String::new();
        let moved = wait_until(10, || {
            last = scrape(&pod);
            sample(&last, NOT_CURRENT) == Some(want)
        });
        assert!(moved, "{NOT_CURRENT} never became {want}: {last}");
    };
    waits_for(0.0);

    pod.store.put("db", b"next-v3", WriteAs::Pending).unwrap();
    let (status, body) = pod.push_pin("db", 3);
    assert_eq!(status, 200, "{body}");
    waits_for(1.0);

    pod.store.promote_number("db", 3).unwrap();
    let (status, body) = http(pod.push, "POST", "/v1/refresh", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(pod.read("db").as_deref(), Some("next-v3"));
    waits_for(0.0);
}

/// The push port listens on loopback only; IPv6 loopback is taken bare
/// (`::1:9465`, as an expanded `$(VAR):PORT` gives it) or bracketed.
#[test]
fn listens_on_ipv6_loopback_with_or_without_brackets() {
    let mut pod = Local::new();
    pod.admin_host = "[::1]".into();
    pod.push_host = "::1".into();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    pod.annotate(&[("rotor.dev/secret.db", "db")]);
    pod.start();
    assert_eq!(pod.read("db").as_deref(), Some("v1"));
    pod.store.put("db", b"v2", WriteAs::Current).unwrap();
    let (status, body) = http_to("::1", pod.push, "POST", "/v1/refresh", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""version":"2""#), "{body}");
    assert_eq!(pod.read("db").as_deref(), Some("v2"));
    // Bound to IPv6 loopback only.
    assert!(http(pod.push, "POST", "/v1/refresh", "").is_none());
    assert!(http(pod.admin, "GET", "/readyz", "").is_none());
    assert!(pod.stop().success());
}

/// The webhook no longer injects `--push-addr=$(ROTOR_POD_IP):9465`, and
/// a push address beyond loopback (a pod IP, bare IPv6 as the expansion
/// gives it, or every address) is refused at start, naming the flag, what
/// is wrong and what is expected, before the store is read.
#[test]
fn a_push_addr_beyond_loopback_is_refused_at_start() {
    for host in ["fd00::10", "10.0.0.7", "0.0.0.0"] {
        let mut pod = Local::new();
        pod.push_host = host.into();
        let status = pod.command().status().unwrap();
        assert!(!status.success(), "{host}");
        let log = std::fs::read_to_string(pod.log()).unwrap();
        assert!(
            log.contains("--push-addr ")
                && log.contains(&format!("{host} is not a loopback address"))
                && log.contains("expected 127.0.0.1:PORT or [::1]:PORT"),
            "{host}: {log}"
        );
        assert!(pod.read("db").is_none(), "{host}: files written");
    }
}

/// The number of lines of `log` reporting invalid annotations.
fn invalid_edits_logged(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("the new annotations are invalid")
        .count()
}

/// The annotation watcher reacts only to the annotations file's own
/// updates: with the sidecar's log and another file written again and
/// again in the same directory, one invalid edit is logged and counted
/// once. A later valid edit is the sync point: when it is applied, every
/// event before it was seen.
#[test]
fn files_beside_the_annotations_cause_no_reload_and_one_invalid_edit_one_error() {
    let mut pod = Local::new();
    pod.log_beside_annotations = true;
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    let valid = [
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ];
    pod.annotate(&valid);
    pod.start();
    let noise = pod.annotations_path().with_file_name("app.log");
    let podinfo_noise = |rounds: usize| {
        for i in 0..rounds {
            std::fs::write(&noise, format!("line {i}\n")).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for (round, (bad, file)) in [("bogus", "db2"), ("also-bogus", "db3")]
        .into_iter()
        .enumerate()
    {
        pod.annotate(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", bad)]);
        assert!(
            wait_until(5, || invalid_edits_logged(&pod.log()) > round),
            "the invalid edit was not logged"
        );
        // The sidecar's own log (trace level) and the app's grow meanwhile.
        podinfo_noise(25);
        let key = format!("rotor.dev/secret.{file}");
        pod.annotate(&[(valid[0]), (valid[1]), (key.as_str(), "db")]);
        assert!(
            wait_until(5, || pod.read(file).is_some()),
            "the valid edit was not applied"
        );
        let logged = invalid_edits_logged(&pod.log());
        assert_eq!(
            logged,
            round + 1,
            "one invalid edit, {logged} errors logged"
        );
        assert_eq!(
            sample(&scrape(&pod), "rotor_config_errors_total"),
            Some((round + 1) as f64)
        );
    }
    assert!(pod.stop().success());
}

/// The uid and gid the sidecar runs as in [`an_exec_child_cannot_read_the_sidecars_environment_memory_or_descriptors`]:
/// `nobody`, as a pod's non-root user.
const NOBODY: (u32, u32) = (65534, 65534);

/// An `exec:` child runs as the sidecar's uid, so file permissions never
/// keep it out of `/proc/<sidecar>`; the sidecar is not dumpable, so the
/// kernel does: the child's attempts to read `/proc/$PPID/environ` (which
/// holds a canary credential) and to open `/proc/$PPID/mem` are refused.
/// The sidecar runs as `nobody` here: the test runs as root, and root's
/// `CAP_SYS_PTRACE` passes the check whatever the flag says. The child
/// inherits no descriptor of the sidecar: every one it holds is its
/// stdin/stdout/stderr (`/dev/null`), its own output or its script.
#[test]
fn an_exec_child_cannot_read_the_sidecars_environment_memory_or_descriptors() {
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "util-linux setpriv is needed to run the sidecar as another user"
    );
    let mut pod = Local::new();
    pod.run_as = Some(NOBODY);
    let canary = format!("{CANARY}-aws-secret");
    pod.envs = vec![("AWS_SECRET_ACCESS_KEY".into(), canary.clone())];
    let out = pod.work.path().join("exec-probe");
    let script = pod.work.path().join("probe.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
out={out}
{{
  echo "uid=$(id -u) parent-uid=$(stat -c %u /proc/$PPID/status)"
  echo "environ:"; cat /proc/$PPID/environ 2>&1 | tr '\0' '\n'
  echo "mem:"; (: < /proc/$PPID/mem) 2>&1; echo "mem-open=$?"
  echo "fds:"; ls -l /proc/$$/fd 2>&1
}} > $out.tmp 2>&1
mv $out.tmp $out
"#,
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    pod.store.put("db", b"v1", WriteAs::Current).unwrap();
    let reload = format!("exec:{}", script.display());
    pod.annotate(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
        ("rotor.dev/reload", &reload),
    ]);
    pod.give_files_to(NOBODY.0, NOBODY.1);
    pod.start();
    pod.store.put("db", b"v2", WriteAs::Current).unwrap();
    pod.give_files_to(NOBODY.0, NOBODY.1);
    assert!(
        wait_until(10, || out.exists()),
        "the exec action did not run: {}",
        std::fs::read_to_string(pod.log()).unwrap_or_default()
    );
    let probe = std::fs::read_to_string(&out).unwrap();
    assert!(
        !probe.contains(&canary),
        "the child read the sidecar's environment:\n{probe}"
    );
    assert!(probe.contains("uid=65534 "), "{probe}");
    let section = |name: &str| -> String {
        let start = probe.find(&format!("{name}:\n")).unwrap() + name.len() + 2;
        let rest = &probe[start..];
        rest[..rest
            .find(":\n")
            .map_or(rest.len(), |end| rest[..end].rfind('\n').unwrap_or(0))]
            .to_owned()
    };
    let environ = section("environ");
    assert!(
        environ.contains("Permission denied"),
        "environ: {environ}\n{probe}"
    );
    let mem = section("mem");
    assert!(
        mem.contains("Permission denied") && !mem.contains("mem-open=0"),
        "mem: {mem}\n{probe}"
    );
    let allowed = [
        "/dev/null".to_owned(),
        format!("{}.tmp", out.display()),
        script.display().to_string(),
    ];
    let fd_section = section("fds");
    let fds: Vec<&str> = fd_section
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(_, target)| target))
        .collect();
    assert!(fds.len() >= 3, "{probe}");
    for target in &fds {
        assert!(
            allowed.iter().any(|a| a == target),
            "the child holds a descriptor it did not open ({target}):\n{probe}"
        );
    }
    // Not dumpable, the sidecar still reads its own /proc for its metrics.
    let metrics = scrape(&pod);
    assert!(
        sample(&metrics, "process_open_fds").is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    assert!(pod.stop().success());
}
