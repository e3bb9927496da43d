//! The channel's bounds through the real binaries: `rotor-controller
//! standalone` against peers that speak the protocol with the valid token
//! and misbehave (huge frames, trickled bytes, many connections and
//! streams, an ack that never completes), and a real `rotor-sidecar`
//! against a fake controller doing the same. Each side cuts the other off
//! and counts it; memory stays bounded, a rotation's ack timeout fires on
//! time, SIGTERM still stops the controller, and no secret value appears
//! in logs or in the stream's error messages. Every wait is on a counter,
//! a log line or a status, never a fixed sleep.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rotor_channel::{Downstream, ErrorKind, Upstream};
use rotor_e2e::channel_peer::{Stream, frame, header, hello, tls};
use rotor_e2e::pod::Pod;
use rotor_e2e::standalone::Standalone;
use rotor_e2e::wait_until;
use rotor_envelope::KeyFileKek;
use rotor_store::{LocalStore, WriteAs};

/// A value that must never appear in a log or an error message.
const CANARY: &str = "canary-8f41c2-never-logged";

struct Rig {
    controller: Standalone,
    policies: PathBuf,
    state: PathBuf,
    token: String,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("kek");
        KeyFileKek::generate(&key, false).unwrap();
        let path = dir.path().join("store.rotor");
        let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
        store
            .put("app/db", CANARY.as_bytes(), WriteAs::Current)
            .unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(
            policies.join("store.yaml"),
            format!(
                "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {{name: main}}\nspec:\n  provider:\n    local: {{path: {}, keyPath: {}}}\n",
                path.display(),
                key.display()
            ),
        )
        .unwrap();
        let state = dir.path().join("state");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let controller = Standalone::start(
            &policies,
            &state,
            &dir.path().join("controller.log"),
            &args,
            &[],
        );
        let token = std::fs::read_to_string(controller.token()).unwrap();
        Self {
            controller,
            policies,
            state,
            token,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.controller.channel_port))
    }

    async fn stream(&self, pod: &str) -> Stream {
        let mut s = Stream::hello(
            self.addr(),
            tls(&self.controller.ca()),
            Some(&self.token),
            &hello("default", pod, &["app/db"]),
        )
        .await
        .unwrap();
        match s.next_not_ping().await {
            Some(Downstream::Welcome(w)) => assert_eq!(w.pod, format!("default/{pod}")),
            other => panic!("no welcome: {other:?}"),
        }
        s
    }

    fn refused(&self, reason: &str) -> f64 {
        self.controller.metric(&format!(
            "rotor_channel_refused_total{{reason=\"{reason}\"}}"
        ))
    }

    fn cut_off(&self, reason: &str) -> f64 {
        self.controller.metric(&format!(
            "rotor_channel_cut_off_total{{reason=\"{reason}\"}}"
        ))
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read(self.state.join("default.db.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| v["status"].clone())
            .unwrap_or_default()
    }

    fn no_canary_in_log(&self) {
        let log = self.controller.log_text();
        assert!(
            !log.contains(CANARY),
            "the controller logged a secret value"
        );
        assert!(
            !log.contains(self.token.trim()),
            "the controller logged the token"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn problem_of(message: Option<Downstream>) -> rotor_channel::Problem {
    match message {
        Some(Downstream::Error(p)) => p,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn without_the_token_a_peer_gets_nothing() {
    let rig = Rig::start(&[]);
    // The start-up probe's bare TCP connection counts as a failed TLS
    // handshake: count from here.
    let before = rig.refused("unauthenticated");
    runtime().block_on(async {
        for token in [None, Some("guessed-token-of-the-right-shape-0123456789")] {
            let mut s = Stream::hello(
                rig.addr(),
                tls(&rig.controller.ca()),
                token,
                &hello("default", "web", &["app/db"]),
            )
            .await
            .unwrap();
            let problem = problem_of(s.next().await);
            assert_eq!(problem.kind, ErrorKind::Unauthenticated);
            assert!(!problem.message.contains(CANARY));
            assert!(s.next().await.is_none(), "more than the refusal");
        }
    });
    assert!(wait_until(10, || rig.refused("unauthenticated") == before + 2.0));
    assert_eq!(rig.controller.metric("rotor_channel_streams"), 0.0);
    // A peer that does not trust the controller's CA, or speaks no TLS,
    // gets nowhere either.
    assert!(
        rig.controller
            .log_text()
            .contains("channel: stream refused")
    );
    rig.no_canary_in_log();
}

#[test]
fn huge_frames_are_refused_or_cut_off_and_memory_stays_bounded() {
    let rig = Rig::start(&[]);
    let pid = rig.controller.child.id();
    let before = rss_kib(pid);
    let peers = 16;
    runtime().block_on(async {
        let mut held = Vec::new();
        for i in 0..peers {
            // Half announce a 1 GiB hello, half a 1 GiB frame once admitted;
            // each sends 256 KiB of it.
            let mut s = if i % 2 == 0 {
                Stream::open(
                    rig.addr(),
                    tls(&rig.controller.ca()),
                    Some(&rig.token),
                    header(1 << 30),
                )
                .await
                .unwrap()
            } else {
                let s = rig.stream(&format!("big-{i}")).await;
                s.send_raw(header(1 << 30)).await;
                s
            };
            for _ in 0..16 {
                if !s.send_raw(Bytes::from(vec![b'x'; 16 * 1024])).await {
                    break;
                }
            }
            let problem = problem_of(s.next_not_ping().await);
            assert_eq!(problem.kind, ErrorKind::TooLarge, "{problem:?}");
            held.push(s);
        }
    });
    assert!(wait_until(10, || rig.refused("tooLarge")
        == f64::from(peers / 2)
        && rig.cut_off("tooLarge") == f64::from(peers / 2)));
    let after = rss_kib(pid);
    eprintln!(
        "controller RSS {before} KiB before, {after} KiB after {peers} peers announcing 1 GiB frames"
    );
    // Generous: the frames announced add up to 16 GiB.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(rig.controller.wait_streams(0, 10));
    rig.no_canary_in_log();
}

#[test]
fn a_trickling_peer_is_cut_off_at_the_frame_deadline() {
    let rig = Rig::start(&["--channel-frame-timeout", "1s"]);
    runtime().block_on(async {
        let mut s = rig.stream("slow").await;
        let message = frame(&Upstream::Ping);
        let started = Instant::now();
        // One byte at a time, never the whole frame within a second.
        let trickle = async {
            for byte in message.iter().cycle() {
                if !s.send_raw(Bytes::copy_from_slice(&[*byte])).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        tokio::select! {
            () = trickle => {}
            () = async {
                while rig.cut_off("timeout") < 1.0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => {}
        }
        eprintln!("cut off after {:?}", started.elapsed());
        let problem = problem_of(s.next_not_ping().await);
        assert_eq!(problem.kind, ErrorKind::Timeout);
        assert!(!problem.message.contains(CANARY));
    });
    assert!(rig.controller.wait_streams(0, 10));
}

#[test]
fn connections_and_streams_beyond_the_limits_are_refused_and_counted() {
    let rig = Rig::start(&["--channel-max-connections", "6"]);
    runtime().block_on(async {
        // Two streams per pod; a third is refused.
        let first = rig.stream("web").await;
        let second = rig.stream("web").await;
        let mut third = Stream::hello(
            rig.addr(),
            tls(&rig.controller.ca()),
            Some(&rig.token),
            &hello("default", "web", &["app/db"]),
        )
        .await
        .unwrap();
        assert_eq!(
            problem_of(third.next_not_ping().await).kind,
            ErrorKind::TooManyStreams
        );
        drop(third);
        // Plain TCP connections up to the limit (two held by the streams),
        // then more: each refused at once.
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(tokio::net::TcpStream::connect(rig.addr()).await.unwrap());
        }
        while rig.refused("tooManyStreams") < 16.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The streams admitted before are still served.
        drop(idle);
        drop((first, second));
    });
    assert!(rig.controller.wait_streams(0, 10));
    // Once the connections are gone, a stream is admitted again.
    runtime().block_on(async {
        let again = rig.stream("web").await;
        drop(again);
    });
    assert!(rig.refused("tooManyStreams") >= 17.0);
}

#[test]
fn the_ack_timeout_fires_on_time_whatever_the_consumer_does_and_sigterm_stops_it() {
    let mut rig = Rig::start(&[]);
    let rt = runtime();
    let answered = Arc::new(AtomicUsize::new(0));
    // A consumer that starts an ack for each pin and trickles it, and one
    // that holds half a frame: neither ever acknowledges.
    let (mut slow, stuck) =
        rt.block_on(async { (rig.stream("slow").await, rig.stream("stuck").await) });
    stuck_half_frame(&rt, &stuck);
    let seen = answered.clone();
    rt.spawn(async move {
        while let Some(message) = slow.next().await {
            if let Downstream::Pin(pin) = message {
                seen.fetch_add(1, Ordering::SeqCst);
                assert!(!pin.version.contains(CANARY));
                let ack = frame(&Upstream::Ack(rotor_channel::Ack {
                    request: pin.request,
                    secret: pin.secret,
                    version: Some(pin.version),
                    digest: None,
                    reload: rotor_channel::ReloadResult::Reloaded,
                    error: None,
                }));
                for byte in &ack {
                    if !slow.send_raw(Bytes::copy_from_slice(&[*byte])).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    std::fs::write(
        rig.policies.join("policy.yaml"),
        "apiVersion: rotor.dev/v1alpha1\nkind: SecretRotationPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  storeRef: {name: main}\n  secretName: app/db\n  schedule: {interval: 1h}\n  generator: {password: {length: 24, minDigits: 2}}\n  strategy: {staged: {ackTimeout: 2s, gracePeriod: 1s, onTimeout: Rollback}}\n  sidecars: [default/slow, default/stuck]\n",
    )
    .unwrap();
    assert!(
        wait_until(20, || rig.status()["phase"] == "Propagating"),
        "{}",
        rig.status()
    );
    let propagating = Instant::now();
    let degraded = wait_until(30, || {
        rig.status()["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "True")
        })
    });
    let took = propagating.elapsed();
    eprintln!("ack timeout 2 s: rolled back {took:?} after Propagating was seen");
    assert!(degraded, "{}", rig.status());
    // On time: the 2 s timeout plus a step, not the consumers' pace.
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(
        answered.load(Ordering::SeqCst) >= 1,
        "no pin reached the consumer"
    );
    let message = rig.status()["conditions"].to_string();
    assert!(
        message.contains("default/slow") && message.contains("default/stuck"),
        "{message}"
    );
    // SIGTERM with both still connected and mid-frame.
    let stopping = Instant::now();
    rotor_e2e::signal(&rig.controller.child, "TERM");
    assert!(
        wait_until(10, || rig.controller.child.try_wait().unwrap().is_some()),
        "SIGTERM did not stop the controller"
    );
    eprintln!("stopped {:?} after SIGTERM", stopping.elapsed());
    rig.no_canary_in_log();
    assert!(!rig.status().to_string().contains(CANARY));
    drop(stuck);
    let _ = &mut rig;
}

/// Sends the first bytes of a frame on `stream` and nothing more.
fn stuck_half_frame(rt: &tokio::runtime::Runtime, stream: &Stream) {
    rt.block_on(async {
        stream.send_raw(header(100)).await;
        stream.send_raw(Bytes::from_static(b"{\"ty")).await;
    });
}

mod against_a_real_sidecar {
    //! A fake controller: TLS with its own CA, HTTP/2, and on each stream
    //! a welcome followed by what the test asks: a huge frame, or bytes
    //! trickled. The real sidecar must cut it off, keep serving its files
    //! and dial again.

    use super::*;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rotor_e2e::channel_peer::HandBody;
    use tokio::sync::mpsc;

    #[derive(Clone, Copy)]
    enum Misbehave {
        HugeFrame,
        Trickle,
    }

    struct Fake {
        addr: SocketAddr,
        ca: tempfile::NamedTempFile,
        streams: Arc<AtomicUsize>,
    }

    fn fake(rt: &tokio::runtime::Runtime, how: Misbehave) -> Fake {
        let generated = rotor_controller::certs::generate(
            &["localhost".into()],
            rotor_controller::certs::Lifetimes::default(),
            rotor_controller::certs::now(),
        )
        .unwrap();
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), &generated.ca_pem).unwrap();
        let acceptor = rotor_controller::channel::server::tls_acceptor(
            generated.cert_pem.as_bytes(),
            generated.key_pem.as_bytes(),
        )
        .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(AtomicUsize::new(0));
        let counted = streams.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let (writer, body) = HandBody::new();
                        tokio::spawn(misbehave(writer, how, request));
                        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Fake { addr, ca, streams }
    }

    /// Welcomes the sidecar, then misbehaves; keeps the request body (the
    /// sidecar's frames) until the stream ends.
    async fn misbehave(
        writer: mpsc::Sender<Bytes>,
        how: Misbehave,
        request: hyper::Request<Incoming>,
    ) {
        let _body = request.into_body();
        let welcome = Downstream::Welcome(rotor_channel::Welcome {
            pod: "default/app".into(),
            heartbeat_secs: 30,
            detects: false,
        });
        if writer
            .send(rotor_channel::encode(&welcome).unwrap())
            .await
            .is_err()
        {
            return;
        }
        let raw = |bytes: Bytes| {
            let writer = writer.clone();
            async move { writer.send(bytes).await.is_ok() }
        };
        match how {
            Misbehave::HugeFrame => {
                if !raw(header(1 << 30)).await {
                    return;
                }
                for _ in 0..1024 {
                    if !raw(Bytes::from(vec![b'x'; 64 * 1024])).await {
                        return;
                    }
                }
            }
            Misbehave::Trickle => {
                let ping = rotor_channel::encode(&Downstream::Ping).unwrap();
                // A byte a second: a whole ping takes ~19 s, past the
                // sidecar's 10 s frame deadline.
                for byte in ping.iter().cycle() {
                    if !raw(Bytes::copy_from_slice(&[*byte])).await {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        std::future::pending::<()>().await;
    }

    fn sidecar_against(fake: &Fake) -> (Pod, tempfile::TempDir) {
        let token = tempfile::tempdir().unwrap();
        std::fs::write(
            token.path().join("token"),
            "fake-controller-token-0123456789abcdef",
        )
        .unwrap();
        let mut pod = Pod::new();
        let store = pod.use_local_store();
        store
            .put("app/db", CANARY.as_bytes(), WriteAs::Current)
            .unwrap();
        pod.annotate(&[
            ("rotor.dev/secret.db", "app/db"),
            ("rotor.dev/refresh", "1h"),
        ]);
        pod.envs = vec![
            (
                "ROTOR_CONTROLLER_ADDR".into(),
                format!("localhost:{}", fake.addr.port()),
            ),
            (
                "ROTOR_CONTROLLER_CA".into(),
                fake.ca.path().display().to_string(),
            ),
            (
                "ROTOR_CHANNEL_TOKEN".into(),
                token.path().join("token").display().to_string(),
            ),
            ("ROTOR_POD_NAMESPACE".into(), "default".into()),
            ("ROTOR_POD_NAME".into(), "app".into()),
        ];
        pod.start();
        (pod, token)
    }

    fn check(how: Misbehave, cut_off: &str, within: u64) {
        let rt = runtime();
        let fake = fake(&rt, how);
        let (pod, _token) = sidecar_against(&fake);
        let log = || std::fs::read_to_string(pod.log()).unwrap_or_default();
        // Cut off, then dialed again: a second stream reaches the fake.
        assert!(
            wait_until(within, || fake.streams.load(Ordering::SeqCst) >= 2),
            "the sidecar did not dial again: {}",
            log()
        );
        assert!(log().contains(cut_off), "{}", log());
        // It kept serving its files and stays ready.
        assert_eq!(pod.read("db").as_deref(), Some(CANARY));
        assert!(rotor_e2e::http(pod.admin, "GET", "/readyz", "").is_some_and(|(s, _)| s == 200));
        assert!(!log().contains(CANARY), "the sidecar logged a secret value");
    }

    #[test]
    fn a_sidecar_cuts_off_a_controller_sending_a_huge_frame() {
        check(
            Misbehave::HugeFrame,
            "frame of 1073741824 bytes refused",
            30,
        );
    }

    #[test]
    fn a_sidecar_cuts_off_a_controller_trickling_bytes() {
        // The sidecar's frame deadline is 10 s.
        check(Misbehave::Trickle, "no whole frame within 10s", 40);
    }
}
