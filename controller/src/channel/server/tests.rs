//! The server and the sidecar's client over real TLS on loopback, with
//! standalone's shared token and an engine that answers push requests.

use std::sync::Arc;
use std::time::Duration;

use rotor_channel::{ErrorKind, Hello, PodClaims};
use rotor_sidecar::channel::{Client, ClientLimits, Ended};
use rotor_sidecar::push::{PushAck, PushReply, PushRequest};
use secrecy::SecretString;
use tokio::sync::mpsc;

use super::*;
use crate::channel::StreamConsumers;
use crate::channel::auth::SharedToken;
use crate::rotation::machine::Consumers;

struct Running {
    server: Arc<Server>,
    addr: SocketAddr,
    ca: tempfile::NamedTempFile,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits) -> Running {
    let generated = crate::certs::generate(
        &["localhost".into()],
        crate::certs::Lifetimes::default(),
        crate::certs::now(),
    )
    .unwrap();
    let tls = tls_acceptor(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes()).unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &generated.ca_pem).unwrap();
    let server = Arc::new(Server {
        hub: Arc::new(Hub::new(limits.streams_per_pod)),
        authority: Arc::new(SharedToken::new(SecretString::from("shared-token"))),
        limits,
        metrics: ChannelMetrics::default(),
        leader: None,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server.clone().serve(listener, tls, async move {
        let _ = stopped.await;
    }));
    Running {
        server,
        addr,
        ca,
        stop,
        task,
    }
}

fn client(
    running: &Running,
    token: &str,
    pod: &str,
    secrets: &[&str],
) -> (Client, tempfile::NamedTempFile) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), token).unwrap();
    let client = Client {
        addr: format!("localhost:{}", running.addr.port()),
        tls: rotor_sidecar::channel::tls_config(running.ca.path()).unwrap(),
        token: file.path().to_owned(),
        hello: Hello {
            pod: PodClaims {
                namespace: "shop".into(),
                name: pod.into(),
                uid: String::new(),
            },
            store: "vault".into(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            refresh_ms: 0,
        },
        limits: ClientLimits::default(),
        link: tokio::sync::watch::Sender::new(Default::default()),
    };
    (client, file)
}

/// An engine that serves whatever version it is asked for (3 otherwise).
fn engine() -> mpsc::Sender<PushRequest> {
    let (tx, mut rx) = mpsc::channel::<PushRequest>(16);
    tokio::spawn(async move {
        while let Some(request) = rx.recv().await {
            let secrets = request
                .body
                .secrets
                .iter()
                .map(|s| PushAck {
                    name: s.name.clone(),
                    version: Some(s.version.clone().unwrap_or_else(|| "3".into())),
                    error: None,
                })
                .collect();
            let _ = request.reply.send(PushReply {
                digest: Some("sha256:served".into()),
                ok: true,
                refused: None,
                secrets,
            });
        }
    });
    tx
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_connected_sidecar_acknowledges_pins_and_releases_over_its_stream() {
    let running = start(Limits::default()).await;
    let (c, _token) = client(&running, "shared-token", "web-1", &["shop/db"]);
    let stream = tokio::spawn(c.run(engine(), std::future::pending()));
    let hub = running.server.hub.clone();
    eventually("the stream to be admitted", || {
        hub.connected().contains("shop/web-1")
    })
    .await;
    assert_eq!(running.server.metrics.open_streams(), 1);
    assert_eq!(hub.consumers_of("vault", "shop/db"), ["shop/web-1"]);
    let consumers = StreamConsumers {
        hub: &hub,
        pods: vec!["shop/web-1".into(), "shop/gone".into()],
        deadline: Duration::from_secs(5),
    };
    let acks = consumers.refresh("shop/db", Some("4")).await;
    assert_eq!(acks[0].consumer, "shop/web-1");
    assert_eq!(acks[0].version.as_deref(), Some("4"));
    assert_eq!(acks[0].error, None);
    // A pod without a stream has not acknowledged.
    assert_eq!(acks[1].version, None);
    assert!(
        acks[1]
            .error
            .as_deref()
            .unwrap()
            .starts_with("not connected")
    );
    let acks = consumers.refresh("shop/db", None).await;
    assert_eq!(acks[0].version.as_deref(), Some("3"));
    // A secret the stream did not declare is never asked for.
    let acks = consumers.refresh("shop/other", Some("4")).await;
    assert!(acks[0].error.is_some() && acks[0].version.is_none());
    // Stopping the server ends the stream and unregisters it.
    let _ = running.stop.send(());
    running.task.await.unwrap();
    eventually("the stream to close", || hub.connected().is_empty()).await;
    stream.abort();
}

#[tokio::test]
async fn a_wrong_token_is_refused_counted_and_never_registered() {
    let running = start(Limits::default()).await;
    let (c, _token) = client(&running, "guessed", "web-1", &["shop/db"]);
    let ended = c.stream(&engine(), &mut false).await;
    assert!(
        matches!(&ended, Ended::Refused(p) if p.kind == ErrorKind::Unauthenticated),
        "{ended}"
    );
    assert!(!ended.to_string().contains("guessed"));
    assert_eq!(
        running
            .server
            .metrics
            .refused_count(ErrorKind::Unauthenticated),
        1
    );
    assert!(running.server.hub.connected().is_empty());
}

#[tokio::test]
async fn a_hello_over_the_frame_limit_is_refused() {
    let running = start(Limits {
        max_frame: 1024,
        ..Limits::default()
    })
    .await;
    let many: Vec<String> = (0..1000).map(|i| format!("shop/secret-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (c, _token) = client(&running, "shared-token", "web-1", &many);
    let ended = c.stream(&engine(), &mut false).await;
    assert!(
        matches!(&ended, Ended::Refused(p) if p.kind == ErrorKind::TooLarge),
        "{ended}"
    );
    assert_eq!(running.server.metrics.refused_count(ErrorKind::TooLarge), 1);
}

#[tokio::test]
async fn a_pod_holds_at_most_its_streams() {
    let running = start(Limits {
        streams_per_pod: 2,
        ..Limits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (c, token) = client(&running, "shared-token", "web-1", &["shop/db"]);
        held.push((tokio::spawn(c.run(engine(), std::future::pending())), token));
    }
    let server = running.server.clone();
    eventually("two streams", || server.metrics.open_streams() == 2).await;
    let (c, _token) = client(&running, "shared-token", "web-1", &["shop/db"]);
    let ended = c.stream(&engine(), &mut false).await;
    assert!(
        matches!(&ended, Ended::Refused(p) if p.kind == ErrorKind::TooManyStreams),
        "{ended}"
    );
    // Another pod is not affected.
    let (c, _token) = client(&running, "shared-token", "web-2", &["shop/db"]);
    tokio::spawn(c.run(engine(), std::future::pending()));
    eventually("the other pod's stream", || {
        server.hub.connected().contains("shop/web-2")
    })
    .await;
    // Stopping the server ends every stream at once.
    let _ = running.stop.send(());
    tokio::time::timeout(Duration::from_secs(5), running.task)
        .await
        .expect("the server stops at once")
        .unwrap();
    for (h, _) in held {
        h.abort();
    }
}

#[tokio::test]
async fn a_non_leader_refuses_streams_with_a_typed_error() {
    let mut running = start(Limits::default()).await;
    let leader = Arc::new(AtomicBool::new(false));
    // A second server on the same CA file, whose replica does not lead.
    let generated = crate::certs::generate(
        &["localhost".into()],
        crate::certs::Lifetimes::default(),
        crate::certs::now(),
    )
    .unwrap();
    let tls = tls_acceptor(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes()).unwrap();
    std::fs::write(running.ca.path(), &generated.ca_pem).unwrap();
    let server = Arc::new(Server {
        hub: Arc::new(Hub::new(2)),
        authority: Arc::new(SharedToken::new(SecretString::from("shared-token"))),
        limits: Limits::default(),
        metrics: ChannelMetrics::default(),
        leader: Some(leader),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    running.addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server.clone().serve(listener, tls, std::future::pending()));
    let (c, _token) = client(&running, "shared-token", "web-1", &["shop/db"]);
    let ended = c.stream(&engine(), &mut false).await;
    assert!(
        matches!(&ended, Ended::Refused(p) if p.kind == ErrorKind::NotLeader),
        "{ended}"
    );
    task.abort();
    let _ = running.stop.send(());
}

#[tokio::test]
async fn a_sidecar_that_aborts_its_stream_is_dropped_promptly() {
    let running = start(Limits::default()).await;
    let (c, _token) = client(&running, "shared-token", "web-1", &["shop/db"]);
    let stream = tokio::spawn(c.run(engine(), std::future::pending()));
    let hub = running.server.hub.clone();
    eventually("the stream to be admitted", || {
        hub.connected().contains("shop/web-1")
    })
    .await;
    // The ack carries the digest of the files the sidecar serves.
    let ack = hub
        .ask(
            "shop/web-1",
            crate::channel::hub::Request::Pin {
                secret: "shop/db".into(),
                version: "4".into(),
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(ack.digest.as_deref(), Some("sha256:served"));
    stream.abort();
    // Well within the idle deadline (100 s) and the keep-alive (30 s).
    tokio::time::timeout(
        Duration::from_secs(3),
        eventually("the aborted stream to be dropped", || {
            hub.connected().is_empty()
        }),
    )
    .await
    .expect("dropped promptly");
    assert_eq!(running.server.metrics.open_streams(), 0);
}

/// A request body a test feeds by hand: frames, or an error that makes
/// the client reset the stream while its connection stays up.
struct HandBody(mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl hyper::body::Body for HandBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|f| f.map(|r| r.map(hyper::body::Frame::data)))
    }
}

#[tokio::test]
async fn a_sidecar_that_resets_its_stream_is_dropped_promptly() {
    let running = start(Limits::default()).await;
    let tls = rotor_sidecar::channel::tls_config(running.ca.path()).unwrap();
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let (tx, rx) = mpsc::channel(4);
    let hello = Upstream::Hello(Hello {
        pod: PodClaims {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: String::new(),
        },
        store: "vault".into(),
        secrets: vec!["shop/db".into()],
        refresh_ms: 0,
    });
    tx.send(Ok(rotor_channel::encode(&hello).unwrap()))
        .await
        .unwrap();
    let request = hyper::Request::post(format!("https://localhost{}", rotor_channel::PATH))
        .header(hyper::header::AUTHORIZATION, "Bearer shared-token")
        .body(HandBody(rx))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let hub = running.server.hub.clone();
    eventually("the stream to be admitted", || {
        hub.connected().contains("shop/web-1")
    })
    .await;
    tx.send(Err(std::io::Error::other("abort"))).await.unwrap();
    drop(response);
    tokio::time::timeout(
        Duration::from_secs(3),
        eventually("the reset stream to be dropped", || {
            hub.connected().is_empty()
        }),
    )
    .await
    .expect("dropped promptly");
    assert!(!connection.is_finished(), "the connection stays up");
    connection.abort();
}
