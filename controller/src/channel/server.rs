//! The stream server: accepts TLS connections (at most
//! [`Limits::max_connections`], each under a handshake deadline), serves
//! HTTP/2 with one stream per connection and small windows, and runs each
//! stream: hello and admission under the handshake deadline, then pings,
//! requests and acknowledgements, every read and write under a deadline
//! and every message under the stream's rate. A stream that breaks a bound
//! is sent an error saying which, closed, and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rotor_channel::transport::{Deadlines, Rate, Reader, Writer};
use rotor_channel::{Downstream, ErrorKind, Hello, Problem, Upstream, Welcome};
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::auth::{Admitted, Authority};
use super::hub::Hub;
use super::metrics::ChannelMetrics;

/// The bounds of the channel.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest frame a sidecar may send.
    pub max_frame: usize,
    /// Messages a second a stream may send, in bursts of `burst`.
    pub messages_per_second: u32,
    pub burst: u32,
    /// Connections open at once, admitted or not.
    pub max_connections: usize,
    /// Streams one pod may hold.
    pub streams_per_pod: usize,
    /// From accepting a connection to admitting its stream.
    pub handshake: Duration,
    /// How often each side pings.
    pub heartbeat: Duration,
    /// Longest silence from a sidecar (a few heartbeats).
    pub idle: Duration,
    /// Longest time from a frame's first byte to its last.
    pub frame: Duration,
    /// Longest wait for room to write.
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 64 * 1024,
            messages_per_second: 20,
            burst: 40,
            max_connections: 10_000,
            streams_per_pod: 2,
            handshake: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            idle: Duration::from_secs(100),
            frame: Duration::from_secs(10),
            write: Duration::from_secs(10),
        }
    }
}

/// The stream server.
pub struct Server {
    pub hub: Arc<Hub>,
    pub authority: Arc<dyn Authority>,
    pub limits: Limits,
    pub metrics: ChannelMetrics,
    /// Whether this replica rotates; a replica that does not refuses
    /// streams with [`ErrorKind::NotLeader`]. `None`: always (standalone).
    pub leader: Option<Arc<AtomicBool>>,
}

type Streams = mpsc::Sender<(Request<Incoming>, Writer)>;

impl Server {
    /// Serves `listener` until `shutdown` resolves; then every connection
    /// is dropped at once.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: TlsAcceptor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next() => {}
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors, say: wait a little.
                            tracing::warn!(error = %e, "channel: cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        self.metrics.refused(ErrorKind::TooManyStreams);
                        tracing::warn!(%peer, limit = self.limits.max_connections, "channel: connection refused: too many connections");
                        continue;
                    };
                    let (server, tls) = (self.clone(), tls.clone());
                    connections.spawn(async move {
                        server.connection(tcp, peer, tls).await;
                        drop(permit);
                    });
                }
            }
        }
        connections.shutdown().await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, tls: TlsAcceptor) {
        let tls = match tokio::time::timeout(self.limits.handshake, tls.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "channel: TLS handshake failed");
                self.metrics.refused(ErrorKind::Unauthenticated);
                return;
            }
            Err(_) => {
                self.metrics.refused(ErrorKind::Timeout);
                return;
            }
        };
        // The service hands each stream to this task, which runs one at a
        // time (HTTP/2 allows one stream per connection here).
        let (streams, mut incoming): (Streams, _) = mpsc::channel(1);
        let write = self.limits.write;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let streams = streams.clone();
            async move {
                let (writer, body) = Writer::new(write);
                let mut response = Response::new(body);
                if request.method() != hyper::Method::POST
                    || request.uri().path() != rotor_channel::PATH
                {
                    *response.status_mut() = StatusCode::NOT_FOUND;
                } else if streams.try_send((request, writer)).is_err() {
                    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(1)
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024)
            .max_frame_size(16 * 1024)
            .max_header_list_size(16 * 1024)
            .max_send_buf_size(64 * 1024)
            .keep_alive_interval(Some(self.limits.heartbeat))
            .keep_alive_timeout(self.limits.write);
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        let sessions = async {
            while let Some((request, writer)) = incoming.recv().await {
                self.stream(request, writer, peer).await;
            }
        };
        // Whichever ends first ends the other: a stream's task never
        // outlives its connection.
        tokio::select! {
            _ = connection => {}
            () = sessions => {}
        }
    }

    /// Runs one stream to its end.
    async fn stream(&self, request: Request<Incoming>, writer: Writer, peer: SocketAddr) {
        let token = bearer(&request);
        let mut reader = Reader::new(
            request.into_body(),
            self.limits.max_frame,
            Deadlines {
                idle: self.limits.handshake,
                frame: self.limits.frame,
            },
        );
        let admitted = match tokio::time::timeout(
            self.limits.handshake,
            self.admit(token, &mut reader),
        )
        .await
        .unwrap_or_else(|_| {
            Err((
                None,
                Problem::new(ErrorKind::Timeout, "no hello admitted in time"),
            ))
        }) {
            Ok(a) => a,
            Err((hello, problem)) => {
                let (namespace, pod) = hello
                    .map(|h| (h.pod.namespace, h.pod.name))
                    .unwrap_or_default();
                tracing::warn!(%peer, namespace, pod, reason = %problem.kind, message = %problem.message, "channel: stream refused");
                self.metrics.refused(problem.kind);
                let _ = writer.send(&Downstream::Error(problem)).await;
                return;
            }
        };
        let pod = admitted.identity.key();
        let detects = admitted.detects;
        let (requests_tx, requests) = mpsc::channel(8);
        let registration = match self.hub.register(admitted, requests_tx) {
            Ok(r) => r,
            Err(problem) => {
                tracing::warn!(%peer, pod, reason = %problem.kind, message = %problem.message, "channel: stream refused");
                self.metrics.refused(problem.kind);
                let _ = writer.send(&Downstream::Error(problem)).await;
                return;
            }
        };
        let open = self.metrics.opened();
        tracing::info!(%peer, pod, "channel: stream admitted");
        let ended = self
            .run(
                registration.id(),
                &pod,
                detects,
                &mut reader,
                &writer,
                requests,
            )
            .await;
        drop(registration);
        drop(open);
        match ended {
            Ok(()) => tracing::info!(pod, "channel: stream ended"),
            Err(CutOff(problem)) => {
                tracing::warn!(pod, reason = %problem.kind, message = %problem.message, "channel: stream cut off");
                self.metrics.cut_off(problem.kind);
                let _ = writer.send(&Downstream::Error(problem)).await;
            }
        }
    }

    /// Reads the hello and admits the stream, or says why not (with the
    /// hello, if one came, for the log).
    async fn admit(
        &self,
        token: Option<SecretString>,
        reader: &mut Reader,
    ) -> Result<Admitted, (Option<Box<Hello>>, Problem)> {
        if let Some(leader) = &self.leader
            && !leader.load(Ordering::Acquire)
        {
            return Err((None, not_leader()));
        }
        let Some(token) = token else {
            return Err((
                None,
                Problem::new(
                    ErrorKind::Unauthenticated,
                    "no bearer token in the Authorization header",
                ),
            ));
        };
        let hello = match reader.next::<Upstream>().await {
            Ok(Some(Upstream::Hello(hello))) => hello,
            Ok(Some(_)) => {
                return Err((
                    None,
                    Problem::new(ErrorKind::Malformed, "the first message must be a hello"),
                ));
            }
            Ok(None) => {
                return Err((
                    None,
                    Problem::new(ErrorKind::Malformed, "the stream ended before a hello"),
                ));
            }
            Err(e) => return Err((None, Problem::new(e.kind(), e.to_string()))),
        };
        match self.authority.admit(&token, &hello).await {
            Ok(admitted) => Ok(admitted),
            Err(problem) => Err((Some(Box::new(hello)), problem)),
        }
    }

    /// An admitted stream: welcome, then pings, requests and acks until
    /// the sidecar ends it or breaks a bound.
    async fn run(
        &self,
        stream: u64,
        pod: &str,
        detects: bool,
        reader: &mut Reader,
        writer: &Writer,
        mut requests: mpsc::Receiver<Downstream>,
    ) -> Result<(), CutOff> {
        writer
            .send(&Downstream::Welcome(Welcome {
                pod: pod.to_owned(),
                heartbeat_secs: self.limits.heartbeat.as_secs(),
                detects,
            }))
            .await?;
        reader.set_idle(self.limits.idle);
        let mut rate = Rate::new(self.limits.messages_per_second, self.limits.burst);
        let mut ping = tokio::time::interval(self.limits.heartbeat);
        ping.tick().await;
        loop {
            tokio::select! {
                message = reader.next::<Upstream>() => {
                    let Some(message) = message? else { return Ok(()) };
                    rate.take()?;
                    match message {
                        Upstream::Ping => {}
                        Upstream::Ack(ack) => {
                            let (request, secret) = (ack.request, ack.secret.clone());
                            if !self.hub.complete(stream, ack) {
                                tracing::debug!(pod, %request, secret, "channel: acknowledgement of no waiting request");
                            }
                        }
                        Upstream::Hello(_) => {
                            return Err(CutOff(Problem::new(
                                ErrorKind::Malformed,
                                "a second hello on an admitted stream",
                            )));
                        }
                        Upstream::Error(problem) => {
                            tracing::info!(pod, reason = %problem.kind, message = %problem.message, "channel: the sidecar ended the stream");
                            return Ok(());
                        }
                    }
                }
                Some(request) = requests.recv() => writer.send(&request).await?,
                _ = ping.tick() => {
                    if let Some(leader) = &self.leader
                        && !leader.load(Ordering::Acquire)
                    {
                        return Err(CutOff(not_leader()));
                    }
                    writer.send(&Downstream::Ping).await?;
                }
            }
        }
    }
}

/// A TLS acceptor for the stream port from a PEM certificate chain and
/// key, speaking HTTP/2 only.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn not_leader() -> Problem {
    Problem::new(
        ErrorKind::NotLeader,
        "this controller replica does not rotate; dial again to reach the leader",
    )
}

/// Why a stream ended early: told to the peer, logged and counted.
struct CutOff(Problem);

impl From<rotor_channel::Error> for CutOff {
    fn from(e: rotor_channel::Error) -> Self {
        CutOff(Problem::new(e.kind(), e.to_string()))
    }
}

/// The bearer token of a request.
fn bearer(request: &Request<Incoming>) -> Option<SecretString> {
    let value = request.headers().get(hyper::header::AUTHORIZATION)?;
    let token = value.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| SecretString::from(token.to_owned()))
}

#[cfg(test)]
mod tests;
