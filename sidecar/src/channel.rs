//! The sidecar's end of the channel: it dials the controller (TLS verified
//! against the CA the webhook mounts, HTTP/2, IPv4 or IPv6), presents the
//! pod's projected token, says hello, and holds the stream; it re-dials
//! with the engine's jittered exponential backoff when the stream ends.
//!
//! The controller's requests (pin, release, a new version) reach the
//! engine as the same [`PushRequest`]s the loopback push port makes, and
//! the engine's reply goes back as an [`Ack`]. A sidecar that cannot reach
//! the controller keeps serving and polling as without it.
//!
//! The sidecar bounds its side too: frame size, message rate, and a
//! deadline on every read and write.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rotor_channel::transport::{Deadlines, Rate, Reader, Writer};
use rotor_channel::{
    Ack, Downstream, ErrorKind, Hello, PodClaims, Problem, ReloadResult, RequestId, Upstream,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::engine::backoff::{Backoff, Link, Random, Retry, SystemRandom};
use crate::push::{PushBody, PushReply, PushRequest, PushSecret};

/// Where the controller is and how to prove who the pod is.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelArgs {
    /// The controller's stream address, `host:port` (the webhook injects
    /// its Service). Without it the sidecar only polls.
    #[arg(long, env = "ROTOR_CONTROLLER_ADDR")]
    pub controller_addr: Option<String>,

    /// The CA bundle of the controller's serving certificate (PEM).
    #[arg(
        long,
        env = "ROTOR_CONTROLLER_CA",
        default_value = rotor_contract::defaults::CHANNEL_CA_FILE
    )]
    pub controller_ca: PathBuf,

    /// The same CA bundle as PEM text (the webhook injects it this way);
    /// used instead of --controller-ca when set.
    #[arg(long, env = "ROTOR_CONTROLLER_CA_PEM", hide_env_values = true)]
    pub controller_ca_pem: Option<String>,

    /// The token presented to the controller: the projected ServiceAccount
    /// token with Rotor's audience, or standalone's shared token file.
    /// Re-read at every dial.
    #[arg(
        long,
        env = "ROTOR_CHANNEL_TOKEN",
        default_value = rotor_contract::defaults::CHANNEL_TOKEN_FILE
    )]
    pub channel_token: PathBuf,

    /// The pod's name, namespace and uid (downward API), as the hello
    /// claims them.
    #[arg(long, env = "ROTOR_POD_NAME", default_value = "")]
    pub pod_name: String,
    /// The pod's namespace, as the downward API gives it (a claim the
    /// controller checks against the token's review).
    #[arg(long, env = "ROTOR_POD_NAMESPACE", default_value = "")]
    pub pod_namespace: String,
    /// The pod's uid, as the downward API gives it (a claim the controller
    /// checks against the token's review).
    #[arg(long, env = "ROTOR_POD_UID", default_value = "")]
    pub pod_uid: String,
}

/// The channel's bounds and timing on the sidecar's side.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_frame: usize,
    pub messages_per_second: u32,
    pub burst: u32,
    /// Dial, TLS, HTTP/2 and the welcome.
    pub connect: Duration,
    pub heartbeat: Duration,
    pub deadlines: Deadlines,
    pub write: Duration,
    /// How long the engine has to apply one request.
    pub apply: Duration,
    pub backoff: Backoff,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_frame: 64 * 1024,
            messages_per_second: 20,
            burst: 40,
            connect: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            deadlines: Deadlines {
                idle: Duration::from_secs(100),
                frame: Duration::from_secs(10),
            },
            write: Duration::from_secs(10),
            apply: Duration::from_secs(30),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        }
    }
}

/// One sidecar's client.
pub struct Client {
    pub addr: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub token: PathBuf,
    pub hello: Hello,
    pub limits: ClientLimits,
    /// Whether a stream is up and the controller detects changes for it
    /// (the engine polls as a safety net only then).
    pub link: watch::Sender<Link>,
}

/// Why a stream could not be set up or ended.
#[derive(Debug)]
pub enum Ended {
    /// Dialing, TLS, HTTP/2 or the request failed.
    Unreachable(String),
    /// The controller refused or cut off the stream.
    Refused(Problem),
    /// The stream broke a bound or failed.
    Broken(rotor_channel::Error),
    /// The controller closed the stream.
    Closed,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Unreachable(why) => write!(f, "unreachable: {why}"),
            Ended::Refused(p) => write!(f, "refused: {p}"),
            Ended::Broken(e) => write!(f, "{e}"),
            Ended::Closed => f.write_str("closed by the controller"),
        }
    }
}

impl From<rotor_channel::Error> for Ended {
    fn from(e: rotor_channel::Error) -> Self {
        Ended::Broken(e)
    }
}

impl Client {
    /// The client `args` describe for a pod reading `secrets` from
    /// `store` every `refresh`; `None` without `--controller-addr`.
    pub fn from_args(
        args: &ChannelArgs,
        store: String,
        secrets: Vec<String>,
        refresh: Duration,
    ) -> crate::Result<Option<Self>> {
        let Some(addr) = args.controller_addr.clone() else {
            return Ok(None);
        };
        let tls = match &args.controller_ca_pem {
            Some(pem) => tls_config_pem(pem.as_bytes(), "--controller-ca-pem")?,
            None => tls_config(&args.controller_ca)?,
        };
        Ok(Some(Self {
            addr,
            tls,
            token: args.channel_token.clone(),
            hello: Hello {
                pod: PodClaims {
                    namespace: args.pod_namespace.clone(),
                    name: args.pod_name.clone(),
                    uid: args.pod_uid.clone(),
                },
                store,
                secrets,
                refresh_ms: u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX),
            },
            limits: ClientLimits::default(),
            link: watch::Sender::new(Link::Down),
        }))
    }

    /// Holds a stream until `shutdown`, re-dialing with backoff.
    pub async fn run(
        self,
        push: mpsc::Sender<PushRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        self.run_with(push, shutdown, &mut SystemRandom).await
    }

    /// [`Client::run`] drawing its jitter from `random`.
    pub async fn run_with(
        self,
        push: mpsc::Sender<PushRequest>,
        shutdown: impl std::future::Future<Output = ()>,
        random: &mut dyn Random,
    ) {
        tokio::pin!(shutdown);
        let mut retry = Retry::default();
        loop {
            let mut welcomed = false;
            let ended = tokio::select! {
                () = &mut shutdown => return,
                ended = self.stream(&push, &mut welcomed) => ended,
            };
            self.link.send_replace(Link::Down);
            if welcomed {
                retry.reset();
            }
            let delay = retry.failed(self.limits.backoff, random);
            tracing::warn!(addr = self.addr, error = %ended, retry_in = ?delay, "channel: stream to the controller ended; serving and polling meanwhile");
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream, from dialing to its end.
    pub async fn stream(&self, push: &mpsc::Sender<PushRequest>, welcomed: &mut bool) -> Ended {
        let token = match read_token(&self.token) {
            Ok(t) => t,
            Err(why) => return Ended::Unreachable(why),
        };
        let (writer, body) = Writer::new(self.limits.write);
        let setup = async {
            let tls = self.dial().await?;
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .initial_stream_window_size(64 * 1024)
                    .initial_connection_window_size(64 * 1024)
                    .max_frame_size(16 * 1024)
                    .max_header_list_size(16 * 1024)
                    .keep_alive_interval(self.limits.heartbeat)
                    .keep_alive_timeout(self.limits.write)
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| Ended::Unreachable(format!("HTTP/2: {e}")))?;
            let request =
                hyper::Request::post(format!("https://{}{}", self.addr, rotor_channel::PATH))
                    .header(
                        hyper::header::AUTHORIZATION,
                        format!("Bearer {}", secrecy::ExposeSecret::expose_secret(&token)),
                    )
                    .body(body)
                    .map_err(|e| Ended::Unreachable(format!("request: {e}")))?;
            writer.send(&Upstream::Hello(self.hello.clone())).await?;
            let mut connection = Box::pin(connection);
            let response = tokio::select! {
                r = sender.send_request(request) => r.map_err(|e| Ended::Unreachable(format!("request: {e}")))?,
                c = &mut connection => return Err(connection_ended(c)),
            };
            Ok::<_, Ended>((response, sender, connection))
        };
        let (response, _sender, mut connection) =
            match tokio::time::timeout(self.limits.connect, setup).await {
                Ok(Ok(r)) => r,
                Ok(Err(ended)) => return ended,
                Err(_) => return Ended::Unreachable("no answer in time".to_owned()),
            };
        if response.status() != hyper::StatusCode::OK {
            return Ended::Unreachable(format!("HTTP status {}", response.status()));
        }
        let mut reader = Reader::new(
            response.into_body(),
            self.limits.max_frame,
            Deadlines {
                idle: self.limits.connect,
                ..self.limits.deadlines
            },
        );
        // The connection is driven here, so it ends with the stream.
        let session = async { self.session(&mut reader, &writer, push, welcomed).await };
        tokio::select! {
            ended = session => ended,
            c = &mut connection => connection_ended(c),
        }
    }

    /// The welcome, then requests until the stream ends.
    async fn session(
        &self,
        reader: &mut Reader,
        writer: &Writer,
        push: &mpsc::Sender<PushRequest>,
        welcomed: &mut bool,
    ) -> Ended {
        match reader.next::<Downstream>().await {
            Ok(Some(Downstream::Welcome(welcome))) => {
                tracing::info!(
                    addr = self.addr,
                    pod = welcome.pod,
                    detects = welcome.detects,
                    "channel: connected to the controller"
                );
                *welcomed = true;
                self.link.send_replace(Link::Up {
                    detects: welcome.detects,
                });
            }
            Ok(Some(Downstream::Error(problem))) => return Ended::Refused(problem),
            Ok(Some(_)) => {
                return Ended::Broken(rotor_channel::Error::Truncated { buffered: 0 });
            }
            Ok(None) => return Ended::Closed,
            Err(e) => return e.into(),
        }
        reader.set_idle(self.limits.deadlines.idle);
        match self.serve(reader, writer, push).await {
            Ok(()) => Ended::Closed,
            Err(ended) => ended,
        }
    }

    /// Connects to each address the name resolves to (IPv6 or IPv4) in
    /// turn, then TLS.
    async fn dial(&self) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Ended> {
        let host = host_of(&self.addr);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Ended::Unreachable(format!("server name {host:?}: {e}")))?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| Ended::Unreachable(format!("{}: {e}", self.addr)))?
            .collect();
        let mut last = format!("{} resolves to no address", self.addr);
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return tokio_rustls::TlsConnector::from(self.tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| Ended::Unreachable(format!("TLS with {addr}: {e}")));
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(Ended::Unreachable(last))
    }

    /// An admitted stream: requests in, acks and pings out.
    async fn serve(
        &self,
        reader: &mut Reader,
        writer: &Writer,
        push: &mpsc::Sender<PushRequest>,
    ) -> Result<(), Ended> {
        let mut rate = Rate::new(self.limits.messages_per_second, self.limits.burst);
        let mut ping = tokio::time::interval(self.limits.heartbeat);
        ping.tick().await;
        loop {
            tokio::select! {
                message = reader.next::<Downstream>() => {
                    let Some(message) = message? else { return Ok(()) };
                    rate.take()?;
                    let (request, secret, version) = match message {
                        Downstream::Ping => continue,
                        Downstream::Error(problem) => return Err(Ended::Refused(problem)),
                        Downstream::Welcome(_) => {
                            let problem = Problem::new(ErrorKind::Malformed, "a second welcome");
                            let _ = writer.send(&Upstream::Error(problem.clone())).await;
                            return Err(Ended::Refused(problem));
                        }
                        Downstream::Pin(p) => (p.request, p.secret, Some(p.version)),
                        Downstream::Release(r) => (r.request, r.secret, None),
                        Downstream::VersionAvailable(v) => {
                            let ack = self.apply(push, Asked { request: v.request, secret: v.secret, version: None, announced: Some(v.version) }).await;
                            writer.send(&Upstream::Ack(ack)).await?;
                            continue;
                        }
                    };
                    let ack = self.apply(push, Asked { request, secret, version, announced: None }).await;
                    writer.send(&Upstream::Ack(ack)).await?;
                }
                _ = ping.tick() => writer.send(&Upstream::Ping).await?,
            }
        }
    }

    /// Hands one request to the engine, as a push, and turns its reply
    /// into an acknowledgement.
    async fn apply(&self, push: &mpsc::Sender<PushRequest>, asked: Asked) -> Ack {
        let Asked {
            request,
            secret,
            version,
            announced,
        } = asked;
        let (reply, answer) = oneshot::channel();
        let push_request = PushRequest {
            body: PushBody {
                secrets: vec![PushSecret {
                    name: secret.clone(),
                    version,
                    announced,
                }],
            },
            received: Instant::now(),
            reply,
        };
        let replied = tokio::time::timeout(self.limits.apply, async {
            push.send(push_request).await.ok()?;
            answer.await.ok()
        })
        .await;
        match replied {
            Ok(Some(reply)) => ack_of(request, secret, reply),
            Ok(None) => not_applied(request, secret, "the sidecar is stopping"),
            Err(_) => not_applied(request, secret, "the request was not applied in time"),
        }
    }
}

/// One request of the controller, as the engine takes it.
struct Asked {
    request: RequestId,
    secret: String,
    /// A pin (`None`: serve CURRENT).
    version: Option<String>,
    /// A new CURRENT version announced.
    announced: Option<String>,
}

fn connection_ended(result: Result<(), hyper::Error>) -> Ended {
    Ended::Unreachable(match result {
        Ok(()) => "the connection closed".to_owned(),
        Err(e) => format!("the connection failed: {e}"),
    })
}

fn not_applied(request: RequestId, secret: String, why: &str) -> Ack {
    Ack {
        request,
        secret,
        version: None,
        digest: None,
        reload: ReloadResult::Failed,
        error: Some(Problem::new(ErrorKind::NotApplied, why)),
    }
}

/// The engine's reply to a one-secret push as an acknowledgement.
fn ack_of(request: RequestId, secret: String, reply: PushReply) -> Ack {
    let digest = reply.digest;
    let served = reply.secrets.into_iter().find(|s| s.name == secret);
    let (version, error) = served.map(|s| (s.version, s.error)).unwrap_or_default();
    let error = match (reply.refused, error) {
        (Some(why), _) => Some(Problem::new(ErrorKind::PinRefused, why)),
        (None, Some(why)) => Some(Problem::new(ErrorKind::NotApplied, why)),
        (None, None) if !reply.ok => Some(Problem::new(
            ErrorKind::NotApplied,
            "the files could not be written or a reload action failed",
        )),
        (None, None) => None,
    };
    Ack {
        request,
        secret,
        version,
        digest,
        reload: if error.is_none() {
            ReloadResult::Reloaded
        } else {
            ReloadResult::Failed
        },
        error,
    }
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The token file, trimmed; an empty or unreadable file is an error naming
/// the path.
fn read_token(path: &std::path::Path) -> Result<secrecy::SecretString, String> {
    let raw =
        std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(secrecy::SecretString::from(token.to_owned()))
}

/// A TLS client trusting only the CAs in `ca` (PEM), speaking HTTP/2.
pub fn tls_config(ca: &std::path::Path) -> crate::Result<Arc<rustls::ClientConfig>> {
    let origin = format!("--controller-ca {}", ca.display());
    let pem = std::fs::read(ca).map_err(|e| crate::Error::Channel {
        origin: origin.clone(),
        problem: e.to_string(),
    })?;
    tls_config_pem(&pem, &origin)
}

/// A TLS client trusting only the CAs in `pem`, which `origin` names in
/// errors, speaking HTTP/2.
pub fn tls_config_pem(pem: &[u8], origin: &str) -> crate::Result<Arc<rustls::ClientConfig>> {
    let bad = |problem: String| crate::Error::Channel {
        origin: origin.to_owned(),
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(
            "holds no certificate; expected a PEM CA bundle".to_owned()
        ));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_v4_v6_and_names() {
        assert_eq!(host_of("10.0.0.1:9466"), "10.0.0.1");
        assert_eq!(host_of("[::1]:9466"), "::1");
        assert_eq!(
            host_of("rotor.rotor-system.svc:9466"),
            "rotor.rotor-system.svc"
        );
    }

    #[test]
    fn an_engine_reply_becomes_a_typed_ack() {
        use crate::push::PushAck;
        let ok = PushReply {
            digest: Some("sha256:ab".into()),
            ok: true,
            refused: None,
            secrets: vec![PushAck {
                name: "db".into(),
                version: Some("4".into()),
                error: None,
            }],
        };
        let ack = ack_of(RequestId(3), "db".into(), ok);
        assert_eq!(ack.version.as_deref(), Some("4"));
        assert_eq!(ack.digest.as_deref(), Some("sha256:ab"));
        assert_eq!(ack.reload, ReloadResult::Reloaded);
        assert!(ack.error.is_none());
        let refused = PushReply {
            digest: None,
            ok: false,
            refused: Some("only PENDING".into()),
            secrets: vec![PushAck {
                name: "db".into(),
                version: Some("3".into()),
                error: Some("x".into()),
            }],
        };
        let ack = ack_of(RequestId(4), "db".into(), refused);
        assert_eq!(ack.error.unwrap().kind, ErrorKind::PinRefused);
        assert_eq!(ack.reload, ReloadResult::Failed);
        let failed = PushReply {
            digest: None,
            ok: false,
            refused: None,
            secrets: vec![],
        };
        let ack = ack_of(RequestId(5), "db".into(), failed);
        assert_eq!(ack.error.unwrap().kind, ErrorKind::NotApplied);
    }

    #[test]
    fn the_ca_as_pem_text_is_used_and_a_bad_one_names_its_flag() {
        let generated = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        let pem = generated.cert.pem();
        let args = |pem: Option<&str>| ChannelArgs {
            controller_addr: Some("rotor.rotor-system.svc:9466".into()),
            controller_ca: "/nonexistent/ca.crt".into(),
            controller_ca_pem: pem.map(str::to_owned),
            channel_token: "/nonexistent/token".into(),
            pod_name: "a".into(),
            pod_namespace: "shop".into(),
            pod_uid: "u".into(),
        };
        // The PEM text wins over the (missing) file.
        assert!(
            Client::from_args(
                &args(Some(&pem)),
                "s".into(),
                vec![],
                Duration::from_secs(30)
            )
            .unwrap()
            .is_some()
        );
        let err = Client::from_args(
            &args(Some("no certificate")),
            "s".into(),
            vec![],
            Duration::from_secs(30),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.starts_with("--controller-ca-pem: "), "{err}");
        let err = Client::from_args(&args(None), "s".into(), vec![], Duration::from_secs(30))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("--controller-ca /nonexistent/ca.crt: "),
            "{err}"
        );
    }

    #[test]
    fn an_empty_token_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("is empty"));
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&read_token(&path).unwrap()),
            "abc"
        );
    }
}
