//! `/mutate` over HTTPS, every request bounded in memory and time.
//!
//! A connection takes one of [`MAX_CONNECTIONS`] places (over them it is
//! closed at once), finishes its TLS handshake within
//! [`TLS_HANDSHAKE_DEADLINE`] and sends its headers within
//! [`HEADER_DEADLINE`]; hyper buffers at most [`MAX_CONNECTION_BUFFER`] of
//! it. A review's body is read within [`BODY_DEADLINE`], at most
//! [`MAX_REVIEW_BYTES`], out of a budget of [`MAX_BODY_BYTES_HELD`] shared by
//! every body held at once; only then does it wait for one of
//! [`MAX_CONCURRENT_REVIEWS`] slots, where `review::answer` runs on a
//! blocking thread within the bounds of `limits`. A slow sender therefore
//! holds bytes of the budget, never a slot, and never for longer than the
//! deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::InjectConfig;
use super::metrics::{AdmissionMetrics, Operation, Outcome};
use crate::store_index::SharedStoreIndex;
use crate::{Error, Result};

/// The largest AdmissionReview read: the API server's own request limit
/// is 3 MiB, and a review carries the object once (twice for UPDATE).
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;
/// Bytes of review bodies held at once, over all requests (being read,
/// or waiting for a slot): room for three of the largest reviews, or
/// thousands of ordinary ones (a few KiB each).
pub const MAX_BODY_BYTES_HELD: usize = 24 * 1024 * 1024;
/// A review's body arrives within this from its headers (the API server
/// sends it at once, and gives up on the webhook after at most 30 s).
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// A request's headers arrive within this.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// A TLS handshake finishes within this.
pub const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections open at once; more are closed as they arrive. The API
/// servers keep a few each.
pub const MAX_CONNECTIONS: usize = 256;
/// What hyper buffers per connection.
pub const MAX_CONNECTION_BUFFER: usize = 64 * 1024;
/// Reviews decoded at once, each on a blocking thread; the others wait
/// with their body read.
pub const MAX_CONCURRENT_REVIEWS: usize = 2;

/// What the webhook needs: the store index (kept fresh by watches or
/// loaded from files) and the injection settings.
pub struct WebhookState {
    pub stores: SharedStoreIndex,
    pub config: InjectConfig,
    /// Bounds the reviews in memory at once.
    pub reviews: Semaphore,
    /// The budget of body bytes held at once, in bytes.
    pub bodies: Arc<Semaphore>,
    /// The admission metrics.
    pub metrics: AdmissionMetrics,
}

impl WebhookState {
    pub fn new(stores: SharedStoreIndex, config: InjectConfig) -> Self {
        Self {
            stores,
            config,
            reviews: Semaphore::new(MAX_CONCURRENT_REVIEWS),
            bodies: Arc::new(Semaphore::new(MAX_BODY_BYTES_HELD)),
            metrics: AdmissionMetrics::default(),
        }
    }
}

/// `POST /mutate` and `GET /healthz`.
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

fn refusal(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

async fn mutate(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let read = tokio::time::timeout(BODY_DEADLINE, read_body(&headers, body, &state.bodies)).await;
    let (bytes, held) = match read {
        Ok(Ok(read)) => read,
        Ok(Err((status, message))) => {
            state.metrics.observe(
                Operation::Unknown,
                Outcome::Error,
                started.elapsed().as_secs_f64(),
            );
            return refusal(status, message);
        }
        Err(_) => {
            tracing::info!(deadline = ?BODY_DEADLINE, "review body not read in time");
            state.metrics.observe(
                Operation::Unknown,
                Outcome::Error,
                started.elapsed().as_secs_f64(),
            );
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the AdmissionReview was not received within {} s",
                    BODY_DEADLINE.as_secs()
                ),
            );
        }
    };
    // The slot is taken only now, with the whole body here: a slow sender
    // never holds one.
    let Ok(_slot) = state.reviews.acquire().await else {
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    };
    let worker = state.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let answer = {
            let stores = worker.stores.read().expect("store index lock");
            super::review::answer(&bytes, &stores, &worker.config)
        };
        drop((bytes, held));
        answer
    })
    .await;
    let answer = match answered {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "review task failed");
            state.metrics.observe(
                Operation::Unknown,
                Outcome::Error,
                started.elapsed().as_secs_f64(),
            );
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the review could not be answered".to_owned(),
            );
        }
    };
    state.metrics.observe(
        answer.operation,
        answer.outcome,
        started.elapsed().as_secs_f64(),
    );
    (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

/// The body, at most [`MAX_REVIEW_BYTES`], each chunk paid for out of the
/// shared budget before it is kept; the permit holds the bytes until the
/// review is answered.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    budget: &Arc<Semaphore>,
) -> std::result::Result<(Vec<u8>, Option<OwnedSemaphorePermit>), (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_REVIEW_BYTES) {
        return Err(too_large());
    }
    // The buffer grows by doubling as data arrives (never to a declared
    // length a slow sender might not send), and each growth is paid for.
    let mut bytes: Vec<u8> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the AdmissionReview could not be read: {e}"),
            )
        })?;
        let wanted = bytes.len() + chunk.len();
        if wanted > MAX_REVIEW_BYTES {
            return Err(too_large());
        }
        if wanted > bytes.capacity() {
            let capacity = (bytes.capacity() * 2)
                .max(wanted)
                .max(4096)
                .min(MAX_REVIEW_BYTES);
            let grow = capacity - bytes.capacity();
            let paid = budget
                .clone()
                .acquire_many_owned(u32::try_from(grow).unwrap_or(u32::MAX))
                .await
                .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned()))?;
            match held.as_mut() {
                Some(h) => h.merge(paid),
                None => held = Some(paid),
            }
            bytes.reserve_exact(capacity - bytes.len());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, held))
}

/// Serves `router` over HTTPS with the PEM certificate and key at the given
/// paths, reloading them when their directory changes (a cert-manager or
/// self-managed Secret update).
pub async fn serve_tls(
    addr: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    router: Router,
) -> Result<()> {
    let tls = RustlsConfig::from_pem_file(&cert, &key)
        .await
        .map_err(|source| Error::Tls {
            cert: cert.clone(),
            key: key.clone(),
            source,
        })?;
    // Bind first, so that a port in use is the error, never a
    // "listening" line followed by one.
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| Error::Listen {
            addr,
            flag: "--listen",
            source,
        })?;
    spawn_reloader(tls.clone(), cert, key)?;
    tracing::info!(%addr, "webhook listening (HTTPS)");
    let acceptor = RustlsAcceptor::new(tls)
        .handshake_timeout(TLS_HANDSHAKE_DEADLINE)
        .acceptor(Limited(Arc::new(Semaphore::new(MAX_CONNECTIONS))));
    let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .max_buf_size(MAX_CONNECTION_BUFFER);
    server
        .serve(router.into_make_service())
        .await
        .map_err(|source| Error::Serve { addr, source })
}

/// Gives each connection one of a fixed number of places, closing it at
/// once when none is free; the place is held as long as the stream.
#[derive(Clone)]
struct Limited(Arc<Semaphore>);

impl<S> Accept<TcpStream, S> for Limited {
    type Stream = Counted;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Counted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(match self.0.clone().try_acquire_owned() {
            Ok(place) => Ok((
                Counted {
                    stream,
                    _place: place,
                },
                service,
            )),
            Err(_) => {
                tracing::warn!(max = MAX_CONNECTIONS, "connection refused: too many open");
                Err(std::io::Error::other("too many connections"))
            }
        })
    }
}

/// A connection holding its place.
struct Counted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Reloads the certificate and key after each settled burst of changes in
/// the certificate's directory (a Secret volume's `..data` swap).
fn spawn_reloader(tls: RustlsConfig, cert: PathBuf, key: PathBuf) -> Result<()> {
    use rotor_watch::WatchMask as M;
    let mut changes = rotor_watch::DirWatch::parent_of(
        &cert,
        M::CREATE | M::MOVED_TO | M::CLOSE_WRITE | M::DELETE,
        Duration::from_millis(100),
    )
    .map_err(Error::Watch)?;
    tokio::spawn(async move {
        while changes.settled().await.is_some() {
            match tls.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!(cert = %cert.display(), "TLS certificate reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate reload failed; keeping the old one")
                }
            }
        }
    });
    Ok(())
}
