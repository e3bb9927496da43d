//! Tests of the refresh engine over a local store and a tmpfs directory, with a
//! seeded random source.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rotor_envelope::KeyFileKek;
use rotor_store::{LocalStore, WriteAs};
use tokio::sync::oneshot;

use super::backoff::Seeded;
use super::*;
use crate::push::{PushAck, PushBody, PushReply, PushSecret};
use crate::reload::ReloadPolicy;
use crate::writer::WriterOptions;

const CANARY: &str = "canary-engine-71c2";

struct Fixture {
    _dir: tempfile::TempDir,
    out: tempfile::TempDir,
    store: LocalStore,
    shared: Arc<Shared>,
}

fn tmpfs_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(
        dir.path().join("s.rotor"),
        Arc::new(KeyFileKek::from_bytes(&[3; 32])),
    );
    Fixture {
        _dir: dir,
        out: tmpfs_dir(),
        store,
        shared: Arc::new(Shared::default()),
    }
}

fn contract(pairs: &[(&str, &str)]) -> PodSecrets {
    rotor_contract::annotations::parse(pairs.iter().copied()).unwrap()
}

impl Fixture {
    fn engine(&self, c: PodSecrets) -> Engine {
        let writer = AtomicWriter::open(
            self.out.path(),
            WriterOptions {
                allow_disk: !Path::new("/dev/shm").is_dir(),
                owner: None,
                grace: Duration::ZERO,
                default_mode: 0o400,
            },
        )
        .unwrap();
        Engine::new(
            Arc::new(self.store.clone()),
            writer,
            c,
            Reloader::new(ReloadPolicy::default()),
            self.shared.clone(),
            EngineOptions {
                backoff_base: Duration::from_millis(20),
                ..EngineOptions::default()
            },
        )
        .with_random(Seeded::new(7))
    }
    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.out.path().join(file)).ok()
    }
}

/// A loopback reload hook counting its POSTs.
async fn hook() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/reload",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/reload"), hits)
}

/// Waits until `n` more poll rounds have finished than `since`: every
/// check they made, the write and the reload actions are done. What a
/// negative check waits for, so that it cannot pass because the engine
/// never looked.
async fn polls(f: &Fixture, since: u64, n: u64) {
    until(&format!("{n} poll rounds"), || {
        f.shared.polls() >= since + n
    })
    .await;
}

/// Whether the metrics say `secret` is served at `version`.
fn serves(f: &Fixture, secret: &str, version: &str) -> bool {
    f.shared.metrics.encode().contains(&format!(
        "rotor_secret_served{{secret=\"{secret}\",version=\"{version}\"}} 1"
    ))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

type Running = (
    tokio::task::JoinHandle<AtomicWriter>,
    watch::Sender<PodSecrets>,
    mpsc::Sender<PushRequest>,
    oneshot::Sender<()>,
);

fn start(engine: Engine, c: PodSecrets) -> Running {
    let (config_tx, config_rx) = watch::channel(c);
    let (push_tx, push_rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(engine.run(Some(config_rx), push_rx, async {
        let _ = stop_rx.await;
    }));
    (handle, config_tx, push_tx, stop_tx)
}

async fn push(tx: &mpsc::Sender<PushRequest>, secrets: Vec<PushSecret>) -> PushReply {
    let (reply, rx) = oneshot::channel();
    tx.send(PushRequest {
        body: PushBody { secrets },
        received: Instant::now(),
        reply,
    })
    .await
    .unwrap();
    rx.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn first_write_then_one_reload_per_change_and_none_when_unchanged() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let (url, hits) = hook().await;
    let c = contract(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
        ("rotor.dev/reload", &url),
    ]);
    assert!(!f.shared.is_ready());
    let (task, _cfg, _push, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").as_deref() == Some("v1")).await;
    assert!(f.shared.is_ready());
    // Several polls with nothing new: no reload.
    polls(&f, f.shared.polls(), 3).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "reloaded with no change");
    f.store.put("db", b"v2", WriteAs::Current).unwrap();
    until("second version", || f.read("db").as_deref() == Some("v2")).await;
    until("reload", || hits.load(Ordering::SeqCst) == 1).await;
    // Same content written again as a new version: the file is unchanged.
    f.store.put("db", b"v2", WriteAs::Current).unwrap();
    until("the new version seen", || serves(&f, "db", "3")).await;
    polls(&f, f.shared.polls(), 3).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "reloaded for unchanged content"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn an_outage_keeps_the_files_and_readiness_and_staleness_grows() {
    let f = fixture();
    f.store
        .put("db", CANARY.as_bytes(), WriteAs::Current)
        .unwrap();
    let c = contract(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    let (task, _cfg, _push, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").is_some()).await;
    // The store goes away.
    let moved = f.store.path().with_extension("away");
    std::fs::rename(f.store.path(), &moved).unwrap();
    // Staleness is wall-clock time, so this test runs on real time: it
    // waits for polls that failed and for the staleness they leave.
    let since = f.shared.polls();
    until("failed polls and staleness", || {
        f.shared.polls() >= since + 3 && f.shared.metrics.staleness_of("db").unwrap() >= 0.4
    })
    .await;
    assert_eq!(f.read("db").as_deref(), Some(CANARY));
    assert!(f.shared.is_ready());
    let stale = f.shared.metrics.staleness_of("db").unwrap();
    assert!(stale >= 0.4, "staleness {stale}");
    let metrics = f.shared.metrics.encode();
    assert!(
        metrics.contains("rotor_secret_fetch_errors_total{secret=\"db\",reason=\"store_missing\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(CANARY));
    // It comes back with a new version: picked up within an interval or so.
    std::fs::rename(&moved, f.store.path()).unwrap();
    f.store.put("db", b"back", WriteAs::Current).unwrap();
    until("recovery", || f.read("db").as_deref() == Some("back")).await;
    assert!(f.shared.metrics.staleness_of("db").unwrap() < 0.5);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn push_pins_a_pending_version_and_acknowledges_it() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let c = contract(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    let (task, _cfg, tx, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").is_some()).await;
    let pending = f.store.put("db", b"v2", WriteAs::Pending).unwrap();
    let reply = push(
        &tx,
        vec![PushSecret {
            name: "db".into(),
            version: Some(pending.version.to_string()),
            announced: None,
        }],
    )
    .await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(
        reply.secrets,
        vec![PushAck {
            name: "db".into(),
            version: Some("2".into()),
            error: None
        }]
    );
    assert_eq!(
        f.read("db").as_deref(),
        Some("v2"),
        "answered before the file was written"
    );
    // A plain push (no version) after a rollback returns to CURRENT.
    f.store.retire_number("db", 2).unwrap();
    let reply = push(
        &tx,
        vec![PushSecret {
            name: "db".into(),
            version: None,
            announced: None,
        }],
    )
    .await;
    assert_eq!(reply.secrets[0].version.as_deref(), Some("1"));
    assert_eq!(f.read("db").as_deref(), Some("v1"));
    // Unknown secrets are refused, not fetched.
    let reply = push(
        &tx,
        vec![PushSecret {
            name: "other".into(),
            version: None,
            announced: None,
        }],
    )
    .await;
    assert!(
        !reply.ok
            && reply.secrets[0].error.as_deref() == Some("this pod does not read this secret")
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// What a file served holds, as a peer computes the files' digest.
fn served_file(f: &Fixture, name: &str) -> (String, u32, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let path = f.out.path().join(name);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    (name.to_owned(), mode, std::fs::read(&path).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_push_reply_carries_the_digest_of_the_files_it_serves() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let c = contract(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    let (task, _cfg, tx, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").is_some()).await;
    let before = crate::writer::digest_of_served(&[served_file(&f, "db")]);
    let pending = f.store.put("db", b"v2", WriteAs::Pending).unwrap();
    let reply = push(&tx, vec![pin("db", &pending.version.to_string())]).await;
    assert!(reply.ok, "{reply:?}");
    let after = crate::writer::digest_of_served(&[served_file(&f, "db")]);
    assert_eq!(reply.digest.as_deref(), Some(after.as_str()));
    assert_ne!(before, after, "the digest follows the files");
    assert!(after.starts_with("sha256:") && after.len() == 7 + 64);
    // A refused pin still says what is served.
    let reply = push(&tx, vec![pin("db", "7")]).await;
    assert_eq!(reply.digest.as_deref(), Some(after.as_str()));
    stop.send(()).unwrap();
    task.await.unwrap();
}

fn pin(name: &str, version: &str) -> PushSecret {
    PushSecret {
        name: name.into(),
        version: Some(version.into()),
        announced: None,
    }
}

fn follow(name: &str) -> PushSecret {
    PushSecret {
        name: name.into(),
        version: None,
        announced: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_pin_to_anything_but_the_pending_version_is_refused_and_changes_nothing() {
    let f = fixture();
    for secret in ["db", "api"] {
        f.store.put(secret, b"old", WriteAs::Current).unwrap(); // 1
        f.store.put(secret, b"now", WriteAs::Current).unwrap(); // 2
    }
    let pending = f.store.put("db", b"next", WriteAs::Pending).unwrap(); // 3
    let (url, hits) = hook().await;
    let c = contract(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/secret.api", "api"),
        ("rotor.dev/refresh", "1h"),
        ("rotor.dev/reload", &url),
    ]);
    let (task, _cfg, tx, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").is_some()).await;
    let data = || std::fs::read_link(f.out.path().join("..data")).unwrap();
    let served = data();
    for (secrets, refused) in [
        (vec![pin("db", "1")], vec!["db"]),   // older: PREVIOUS
        (vec![pin("db", "9")], vec!["db"]),   // never existed
        (vec![pin("api", "3")], vec!["api"]), // another secret's PENDING
        // One refused pin refuses the whole request, valid pins included.
        (vec![pin("db", "3"), pin("api", "1")], vec!["api"]),
    ] {
        let asked: Vec<_> = secrets.iter().map(|s| s.version.clone()).collect();
        let reply = push(&tx, secrets).await;
        assert!(!reply.ok, "{reply:?}");
        assert!(
            reply
                .refused
                .as_deref()
                .is_some_and(|r| r.contains("nothing was changed")),
            "{reply:?}"
        );
        let names: Vec<&str> = reply.secrets.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, refused, "{asked:?}");
        for ack in &reply.secrets {
            assert_eq!(ack.version.as_deref(), Some("2"), "{reply:?}");
            let error = ack.error.as_deref().unwrap();
            assert!(
                error.contains(&format!("of secret {:?}", ack.name))
                    && error.contains(
                        "only the store's PENDING version (the rotation target) may be pinned"
                    )
                    && error.contains("push without a version"),
                "{error}"
            );
        }
        assert_eq!(f.read("db").as_deref(), Some("now"));
        assert_eq!(f.read("api").as_deref(), Some("now"));
        assert_eq!(data(), served, "..data swapped for a refused push");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "reloaded for a refused push"
        );
    }
    // Naming CURRENT is naming no version: acknowledged, nothing changes.
    let reply = push(&tx, vec![pin("db", "2")]).await;
    assert!(reply.ok && reply.refused.is_none(), "{reply:?}");
    assert_eq!(reply.secrets[0].version.as_deref(), Some("2"));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // The PENDING version pins.
    let reply = push(&tx, vec![pin("db", &pending.version.to_string())]).await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(f.read("db").as_deref(), Some("next"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pin_ends_when_its_version_stops_being_pending() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let c = contract(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    let (task, _cfg, tx, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").is_some()).await;

    // Retired (a rollback): CURRENT again at the next poll.
    f.store.put("db", b"v2", WriteAs::Pending).unwrap();
    assert!(push(&tx, vec![pin("db", "2")]).await.ok);
    assert_eq!(f.read("db").as_deref(), Some("v2"));
    f.store.retire_number("db", 2).unwrap();
    until("retired pin ends", || f.read("db").as_deref() == Some("v1")).await;

    // Replaced by a newer PENDING version: the pin does not follow it.
    f.store.put("db", b"v3", WriteAs::Pending).unwrap();
    assert!(push(&tx, vec![pin("db", "3")]).await.ok);
    assert_eq!(f.read("db").as_deref(), Some("v3"));
    f.store.put("db", b"v4", WriteAs::Pending).unwrap();
    until("replaced pin ends", || {
        f.read("db").as_deref() == Some("v1")
    })
    .await;

    // Promoted: the pin ends, and later versions are followed.
    f.store.put("db", b"v5", WriteAs::Pending).unwrap();
    assert!(push(&tx, vec![pin("db", "5")]).await.ok);
    f.store.promote_number("db", 5).unwrap();
    f.store.put("db", b"v6", WriteAs::Current).unwrap();
    until("promoted pin ends", || {
        f.read("db").as_deref() == Some("v6")
    })
    .await;

    // A pushed rollback releases the pin at once.
    f.store.put("db", b"v7", WriteAs::Pending).unwrap();
    assert!(push(&tx, vec![pin("db", "7")]).await.ok);
    let reply = push(&tx, vec![follow("db")]).await;
    assert_eq!(reply.secrets[0].version.as_deref(), Some("6"));
    assert_eq!(f.read("db").as_deref(), Some("v6"));
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A process racing the writer's swap makes every write fail: readiness
/// turns false, and true again once a retried write works.
#[tokio::test(start_paused = true)]
async fn readiness_turns_false_while_the_files_cannot_be_written() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let c = contract(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    let mut engine = f.engine(c.clone());
    let outside = tmpfs_dir();
    let racing = Arc::new(AtomicBool::new(false));
    let (flag, away) = (racing.clone(), outside.path().to_owned());
    engine.writer.before_swap = Some(Box::new(move |target: &Path, tmp: &str| {
        if flag.load(Ordering::SeqCst) {
            let tmp = target.join(tmp);
            std::fs::remove_file(&tmp).unwrap();
            std::os::unix::fs::symlink(&away, &tmp).unwrap();
        }
    }));
    let (task, _cfg, _push, stop) = start(engine, c);
    until("first write", || f.shared.is_ready()).await;
    assert_eq!(f.read("db").as_deref(), Some("v1"));

    racing.store(true, Ordering::SeqCst);
    f.store.put("db", b"v2", WriteAs::Current).unwrap();
    until("not ready", || !f.shared.is_ready()).await;
    assert_eq!(
        f.shared.not_ready_reason(),
        Some("the files cannot be written (see the log); retrying")
    );
    assert!(
        f.shared.metrics.encode().contains("rotor_sidecar_ready 0"),
        "{}",
        f.shared.metrics.encode()
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    racing.store(false, Ordering::SeqCst);
    until("ready again", || {
        f.shared.is_ready() && f.read("db").as_deref() == Some("v2")
    })
    .await;
    assert!(f.shared.metrics.encode().contains("rotor_sidecar_ready 1"));
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn annotation_changes_add_and_remove_files_live() {
    let f = fixture();
    f.store.put("a", b"A", WriteAs::Current).unwrap();
    f.store
        .put("b", br#"{"user":"u"}"#, WriteAs::Current)
        .unwrap();
    let c = contract(&[("rotor.dev/secret.a", "a"), ("rotor.dev/refresh", "1h")]);
    let (task, cfg, _push, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("a").is_some()).await;
    cfg.send(contract(&[
        ("rotor.dev/secret.user", "b#user"),
        ("rotor.dev/refresh", "1h"),
    ]))
    .unwrap();
    until("new file", || f.read("user").as_deref() == Some("u")).await;
    assert!(f.read("a").is_none(), "removed file still there");
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_secret_deleted_from_the_store_is_kept_or_removed_as_configured() {
    for (policy, kept) in [("keep", true), ("delete", false)] {
        let f = fixture();
        f.store.put("a", b"A", WriteAs::Current).unwrap();
        f.store.put("gone", b"G", WriteAs::Current).unwrap();
        let c = contract(&[
            ("rotor.dev/secret.a", "a"),
            ("rotor.dev/secret.gone", "gone"),
            ("rotor.dev/refresh", "100ms"),
            ("rotor.dev/on-missing", policy),
        ]);
        let (task, _cfg, _push, stop) = start(f.engine(c.clone()), c);
        until("first write", || f.read("gone").is_some()).await;
        // The local store never drops a CURRENT version, so replace the
        // file with a store that lacks the secret, at a later generation
        // than the engine read (2): a lower one is refused as a replay.
        let fresh = LocalStore::new(
            f.store.path().with_extension("new"),
            Arc::new(KeyFileKek::from_bytes(&[3; 32])),
        );
        for _ in 0..3 {
            fresh.put("a", b"A", WriteAs::Current).unwrap();
        }
        std::fs::rename(fresh.path(), f.store.path()).unwrap();
        until("the new store file read", || serves(&f, "a", "3")).await;
        polls(&f, f.shared.polls(), 3).await;
        assert_eq!(f.read("gone").is_some(), kept, "policy {policy}");
        assert_eq!(f.read("a").as_deref(), Some("A"));
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}

/// A local store that also announces changes, like a watching store.
struct Watched {
    inner: LocalStore,
    changes: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

#[async_trait::async_trait]
impl Store for Watched {
    fn describe(&self) -> String {
        "watched".into()
    }
    async fn read(
        &self,
        name: &str,
        selector: &rotor_store::Selector,
    ) -> rotor_store::Result<rotor_store::Fetched> {
        self.inner.read(name, selector).await
    }
    async fn current_version(&self, name: &str) -> rotor_store::Result<VersionId> {
        Store::current_version(&self.inner, name).await
    }
    async fn write(&self, name: &str, value: &[u8], w: WriteAs) -> rotor_store::Result<VersionId> {
        Store::write(&self.inner, name, value, w).await
    }
    async fn promote(&self, name: &str, v: &VersionId) -> rotor_store::Result<()> {
        Store::promote(&self.inner, name, v).await
    }
    async fn retire(&self, name: &str, v: &VersionId) -> rotor_store::Result<()> {
        Store::retire(&self.inner, name, v).await
    }
    fn changes(&self, _name: &str) -> Option<futures_util::stream::BoxStream<'static, ()>> {
        let rx = self.changes.lock().unwrap().take()?;
        Some(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
        )))
    }
}

#[tokio::test(start_paused = true)]
async fn a_watching_store_delivers_changes_without_waiting_for_the_poll() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let store = Arc::new(Watched {
        inner: f.store.clone(),
        changes: std::sync::Mutex::new(Some(rx)),
    });
    let c = contract(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    let writer = AtomicWriter::open(
        f.out.path(),
        WriterOptions {
            allow_disk: !Path::new("/dev/shm").is_dir(),
            owner: None,
            grace: Duration::ZERO,
            default_mode: 0o400,
        },
    )
    .unwrap();
    let engine = Engine::new(
        store,
        writer,
        c.clone(),
        Reloader::new(ReloadPolicy::default()),
        f.shared.clone(),
        EngineOptions::default(),
    )
    .with_random(Seeded::new(11));
    let (task, _cfg, _push, stop) = start(engine, c);
    until("first write", || f.read("db").as_deref() == Some("v1")).await;
    f.store.put("db", b"v2", WriteAs::Current).unwrap();
    tx.send(()).await.unwrap();
    until("watched change", || f.read("db").as_deref() == Some("v2")).await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// `rotor_secret_not_current` is 1 while the store cannot be read (what is
/// served may lag behind CURRENT), 0 once it can, and its series goes with
/// the annotation.
#[tokio::test(start_paused = true)]
async fn not_current_while_the_store_cannot_be_read_and_gone_with_the_annotation() {
    let f = fixture();
    f.store.put("db", b"v1", WriteAs::Current).unwrap();
    f.store.put("other", b"o", WriteAs::Current).unwrap();
    let c = contract(&[
        ("rotor.dev/secret.db", "db"),
        ("rotor.dev/refresh", "100ms"),
    ]);
    let (task, cfg, _push, stop) = start(f.engine(c.clone()), c);
    let series = "rotor_secret_not_current{secret=\"db\"}";
    let exported = |v: u8| {
        f.shared
            .metrics
            .encode()
            .contains(&format!("{series} {v}\n"))
    };
    until("served at CURRENT", || {
        f.read("db").is_some() && exported(0)
    })
    .await;
    let moved = f.store.path().with_extension("away");
    std::fs::rename(f.store.path(), &moved).unwrap();
    until("lagging", || exported(1)).await;
    std::fs::rename(&moved, f.store.path()).unwrap();
    until("current again", || exported(0)).await;
    cfg.send(contract(&[
        ("rotor.dev/secret.o", "other"),
        ("rotor.dev/refresh", "1h"),
    ]))
    .unwrap();
    until("the series gone with the annotation", || {
        f.read("o").is_some() && !f.shared.metrics.encode().contains(series)
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A store in memory: one secret whose CURRENT version the test sets,
/// counting version checks and reads.
#[derive(Default)]
struct Counting {
    version: std::sync::Mutex<u64>,
    checks: AtomicUsize,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Counting {
    fn describe(&self) -> String {
        "counting".into()
    }
    async fn read(&self, _: &str, _: &Selector) -> rotor_store::Result<Fetched> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let v = *self.version.lock().unwrap();
        Ok(Fetched {
            version: VersionId::from(v),
            created_at: None,
            value: Plaintext::from(format!("{CANARY}-{v}").into_bytes()),
        })
    }
    async fn current_version(&self, _: &str) -> rotor_store::Result<VersionId> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        Ok(VersionId::from(*self.version.lock().unwrap()))
    }
    async fn write(&self, _: &str, _: &[u8], _: WriteAs) -> rotor_store::Result<VersionId> {
        unreachable!()
    }
    async fn promote(&self, _: &str, _: &VersionId) -> rotor_store::Result<()> {
        unreachable!()
    }
    async fn retire(&self, _: &str, _: &VersionId) -> rotor_store::Result<()> {
        unreachable!()
    }
}

/// While the controller detects changes (`Link::Up { detects: true }`) a
/// 1 s refresh is checked once when the link comes up (a change made before
/// the controller's first look), then every 10 s; when the stream drops,
/// the poll the safety net held back is due at once, then every second.
#[tokio::test(start_paused = true)]
async fn a_detected_secret_is_polled_as_a_safety_net_and_at_its_refresh_when_the_link_drops() {
    let f = fixture();
    let store = Arc::new(Counting::default());
    *store.version.lock().unwrap() = 1;
    let c = contract(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1s")]);
    let mut engine = f.engine(c.clone());
    engine.store = store.clone();
    let (link_tx, link) = watch::channel(Link::Down);
    let (task, _cfg, _tx, stop) = start(engine.with_link(link), c);
    // The first fetch reads; no check before it.
    polls(&f, 0, 1).await;
    let start = Instant::now();
    assert_eq!(store.reads.load(Ordering::SeqCst), 1);
    link_tx.send_replace(Link::Up { detects: true });
    let checks = || store.checks.load(Ordering::SeqCst);
    let at = |ms: u64| tokio::time::sleep_until(start + Duration::from_millis(ms));
    until("the check on connecting", || checks() == 1).await;
    assert!(Instant::now() - start < Duration::from_millis(100));
    // Then none for 9 s (10 s less the spread).
    at(8_950).await;
    assert_eq!(checks(), 1, "polled while the controller detects");
    at(10_150).await;
    assert_eq!(checks(), 2, "the safety-net poll");
    // 5 s after it, the stream drops: its held-back poll is due now.
    at(15_050).await;
    assert_eq!(checks(), 2);
    link_tx.send_replace(Link::Down);
    until("the re-armed poll", || checks() == 3).await;
    assert!(Instant::now() - start < Duration::from_millis(15_200));
    // Then at the refresh again.
    at(16_150).await;
    assert_eq!(checks(), 4);
    assert!(
        f.shared
            .metrics
            .encode()
            .contains("rotor_sidecar_polls_total{interval=\"safety_net\"} 2"),
        "{}",
        f.shared.metrics.encode()
    );
    let _ = stop.send(());
    task.await.unwrap();
}

/// An announced version is read at once, without a version check; one
/// already served costs nothing.
#[tokio::test]
async fn an_announced_version_is_fetched_with_one_read() {
    let f = fixture();
    let store = Arc::new(Counting::default());
    *store.version.lock().unwrap() = 1;
    let c = contract(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    let mut engine = f.engine(c.clone());
    engine.store = store.clone();
    let (task, _cfg, tx, stop) = start(engine, c);
    until("first write", || f.read("db").is_some()).await;
    *store.version.lock().unwrap() = 2;
    let announce = |v: &str| PushSecret {
        name: "db".into(),
        version: None,
        announced: Some(v.into()),
    };
    let reply = push(&tx, vec![announce("2")]).await;
    assert!(reply.ok);
    assert_eq!(reply.secrets[0].version.as_deref(), Some("2"));
    assert_eq!(f.read("db").unwrap(), format!("{CANARY}-2"));
    assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    assert_eq!(store.checks.load(Ordering::SeqCst), 0);
    let reply = push(&tx, vec![announce("2")]).await;
    assert!(reply.ok);
    assert_eq!(store.reads.load(Ordering::SeqCst), 2);
    assert_eq!(store.checks.load(Ordering::SeqCst), 0);
    let _ = stop.send(());
    task.await.unwrap();
}

/// An announcement of CURRENT does not undo a rotation's pin: the pod
/// keeps serving PENDING until the rotation releases it.
#[tokio::test]
async fn an_announcement_leaves_a_pin_in_place() {
    let f = fixture();
    let v1 = f.store.put("db", b"v1", WriteAs::Current).unwrap();
    let c = contract(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    let (task, _cfg, tx, stop) = start(f.engine(c.clone()), c);
    until("first write", || f.read("db").is_some()).await;
    let pending = f.store.put("db", b"v2", WriteAs::Pending).unwrap();
    assert!(
        push(&tx, vec![pin("db", &pending.version.to_string())])
            .await
            .ok
    );
    assert_eq!(f.read("db").as_deref(), Some("v2"));
    let reply = push(
        &tx,
        vec![PushSecret {
            name: "db".into(),
            version: None,
            announced: Some(v1.version.to_string()),
        }],
    )
    .await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.secrets[0].version.as_deref(), Some("2"));
    assert_eq!(f.read("db").as_deref(), Some("v2"));
    // A release returns to CURRENT.
    assert!(push(&tx, vec![follow("db")]).await.ok);
    assert_eq!(f.read("db").as_deref(), Some("v1"));
    let _ = stop.send(());
    task.await.unwrap();
}
