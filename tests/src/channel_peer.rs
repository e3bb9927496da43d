//! A peer that speaks the channel's protocol to a real controller, frame
//! by frame, for tests and benchmarks: it stands in for sidecars (a load
//! generator) and for misbehaving ones (huge frames, trickled bytes, many
//! streams). The TLS and HTTP/2 set-up is the sidecar's; what goes into
//! the request body is up to the caller.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rotor_channel::transport::{Deadlines, Reader};
use rotor_channel::{Downstream, Hello, PodClaims, Upstream};
use tokio::sync::mpsc;

/// A body the caller feeds, byte by byte if it likes.
pub struct HandBody(mpsc::Receiver<Bytes>);

impl HandBody {
    /// A body and what feeds it.
    pub fn new() -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(64);
        (tx, Self(rx))
    }
}

impl Body for HandBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }
}

/// One stream to the controller.
pub struct Stream {
    tx: mpsc::Sender<Bytes>,
    reader: Option<Reader>,
    status: hyper::StatusCode,
    connection: tokio::task::JoinHandle<()>,
}

/// A hello for pod `namespace/name` reading `secrets`.
pub fn hello(namespace: &str, name: &str, secrets: &[&str]) -> Upstream {
    Upstream::Hello(Hello {
        pod: PodClaims {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        },
        store: String::new(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        refresh_ms: 0,
    })
}

/// A TLS client trusting the CA in `ca`, as the sidecar's.
pub fn tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    rotor_sidecar::channel::tls_config(ca).expect("the channel's CA")
}

impl Stream {
    /// Dials `addr` (TLS for `localhost`), opens the stream with `token`
    /// (none: no Authorization header) and sends `first` bytes, without
    /// waiting for an answer.
    pub async fn open(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        token: Option<&str>,
        first: Bytes,
    ) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect("localhost".try_into().expect("a name"), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let (tx, body) = HandBody::new();
        let mut request = hyper::Request::post(format!("https://localhost{}", rotor_channel::PATH));
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(body).map_err(|e| e.to_string())?;
        if !first.is_empty() {
            let _ = tx.send(first).await;
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let reader = Reader::new(
            response.into_body(),
            1024 * 1024,
            Deadlines {
                idle: Duration::from_secs(120),
                frame: Duration::from_secs(120),
            },
        );
        Ok(Self {
            tx,
            reader: Some(reader),
            status,
            connection,
        })
    }

    /// Opens a stream and says `hello`.
    pub async fn hello(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        token: Option<&str>,
        hello: &Upstream,
    ) -> Result<Self, String> {
        Self::open(addr, tls, token, frame(hello)).await
    }

    pub fn status(&self) -> hyper::StatusCode {
        self.status
    }

    /// Sends raw bytes into the request body; false once the body is gone.
    pub async fn send_raw(&self, bytes: Bytes) -> bool {
        self.tx.send(bytes).await.is_ok()
    }

    pub async fn send(&self, message: &Upstream) -> bool {
        self.send_raw(frame(message)).await
    }

    /// The controller's next message; `None` when the stream ended or
    /// failed.
    pub async fn next(&mut self) -> Option<Downstream> {
        let reader = self.reader.as_mut()?;
        match reader.next::<Downstream>().await {
            Ok(Some(m)) => Some(m),
            _ => {
                self.reader = None;
                None
            }
        }
    }

    /// The controller's next message other than a ping.
    pub async fn next_not_ping(&mut self) -> Option<Downstream> {
        loop {
            match self.next().await? {
                Downstream::Ping => continue,
                other => return Some(other),
            }
        }
    }

    /// Whether the connection is gone.
    pub fn connection_ended(&self) -> bool {
        self.connection.is_finished()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// One message as a frame.
pub fn frame(message: &Upstream) -> Bytes {
    rotor_channel::encode(message).expect("a message encodes")
}

/// The header of a frame announcing `len` bytes.
pub fn header(len: u32) -> Bytes {
    Bytes::copy_from_slice(&len.to_be_bytes())
}
