//! `/mutate` over HTTPS, every request bounded in memory and time.
//!
//! A connection takes one of [`MAX_CONNECTIONS`] places (over them it is
//! closed at once), finishes its TLS handshake within
//! [`TLS_HANDSHAKE_DEADLINE`] and sends its headers within
//! [`HEADER_DEADLINE`]; hyper buffers at most [`MAX_CONNECTION_BUFFER`] of
//! it. A review's body is read within [`BODY_DEADLINE`], at most
//! [`MAX_REVIEW_BYTES`], paid for out of byte budgets shared by every body
//! held at once ([`SMALL_BODY_BUDGET`], [`LARGE_BODY_BUDGET`]); only then
//! does it wait for a slot ([`MAX_SMALL_REVIEWS`] for reviews up to
//! [`SMALL_REVIEW_BYTES`], [`MAX_LARGE_REVIEWS`] for larger ones), where
//! `review::answer` runs on a blocking thread within the bounds of
//! `limits`. A slow sender holds the bytes it sent, never a slot, and
//! never for longer than the deadline; large reviews never delay small
//! ones.

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

/// The largest AdmissionReview read: etcd stores objects of at most
/// 1.5 MiB by default, and a review carries the object once (twice for
/// UPDATE).
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// A review up to this size is small: every ordinary pod (a few KiB), and
/// one with hundreds of env entries. Small reviews have their own slots
/// and body budget, so a flood of large ones never delays them.
pub const SMALL_REVIEW_BYTES: usize = 64 * 1024;
/// Bytes of the first [`SMALL_REVIEW_BYTES`] of bodies held at once.
pub const SMALL_BODY_BUDGET: usize = 8 * 1024 * 1024;
/// Bytes beyond the first [`SMALL_REVIEW_BYTES`] of bodies held at once
/// (being read, or waiting for the large slot): three of the largest.
pub const LARGE_BODY_BUDGET: usize = 12 * 1024 * 1024;
/// Small reviews decoded at once, each on a blocking thread.
pub const MAX_SMALL_REVIEWS: usize = 4;
/// Large reviews decoded at once: one, the review whose decoding costs
/// the most memory (about 13 times its size at every cap of `limits`).
pub const MAX_LARGE_REVIEWS: usize = 1;
/// A review's body arrives within this from its headers, not counting
/// waits for the body budget (the API server sends it at once, and gives
/// up on the webhook after at most 30 s).
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// A request's headers arrive within this.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// A TLS handshake finishes within this.
pub const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections open at once; more are closed as they arrive. The API
/// servers keep a few each.
pub const MAX_CONNECTIONS: usize = 128;
/// What hyper buffers per connection.
pub const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// What the webhook needs: the store index (kept fresh by watches or
/// loaded from files) and the injection settings.
pub struct WebhookState {
    pub stores: SharedStoreIndex,
    pub config: InjectConfig,
    /// The slots of small and large reviews.
    small_reviews: Semaphore,
    large_reviews: Semaphore,
    /// The body budgets, in bytes.
    small_bodies: Arc<Semaphore>,
    large_bodies: Arc<Semaphore>,
    /// The admission metrics.
    pub metrics: AdmissionMetrics,
    /// The one thread large reviews run on.
    large_thread: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Starts the thread that runs large reviews, one at a time.
fn large_review_thread() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("rotor-large-reviews".to_owned())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
            }
        });
    if let Err(e) = spawned {
        // Sends then fail, and large reviews get a 500 each.
        tracing::error!(error = %e, "cannot start the large review thread");
    }
    tx
}

impl WebhookState {
    pub fn new(stores: SharedStoreIndex, config: InjectConfig) -> Self {
        Self {
            stores,
            config,
            small_reviews: Semaphore::new(MAX_SMALL_REVIEWS),
            large_reviews: Semaphore::new(MAX_LARGE_REVIEWS),
            small_bodies: Arc::new(Semaphore::new(SMALL_BODY_BUDGET)),
            large_bodies: Arc::new(Semaphore::new(LARGE_BODY_BUDGET)),
            metrics: AdmissionMetrics::default(),
            large_thread: std::sync::Mutex::new(large_review_thread()),
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
    let (bytes, held) = match read_body(&headers, body, &state).await {
        Ok(read) => read,
        Err((status, message)) => {
            state.metrics.observe(
                Operation::Unknown,
                Outcome::Error,
                started.elapsed().as_secs_f64(),
            );
            return refusal(status, message);
        }
    };
    // The slot is taken only now, with the whole body here: a slow sender
    // never holds one.
    let large = bytes.len() > SMALL_REVIEW_BYTES;
    let slots = if large {
        &state.large_reviews
    } else {
        &state.small_reviews
    };
    let Ok(_slot) = slots.acquire().await else {
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    };
    let worker = state.clone();
    let job = move || {
        let answer = {
            let stores = worker.stores.read().expect("store index lock");
            super::review::answer(&bytes, &stores, &worker.config)
        };
        drop((bytes, held));
        answer
    };
    // Large reviews all run on one thread, so their memory is reused
    // there rather than kept by the allocator of each blocking thread.
    let answered = if large {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = state
            .large_thread
            .lock()
            .expect("large review thread")
            .send(Box::new(move || {
                let _ = tx.send(job());
            }));
        match sent {
            Ok(()) => rx.await.map_err(|e| e.to_string()),
            Err(_) => Err("the large review thread is gone".to_owned()),
        }
    } else {
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| e.to_string())
    };
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

/// The body, at most [`MAX_REVIEW_BYTES`], each growth of its buffer paid
/// for out of the budgets before data is kept (its first
/// [`SMALL_REVIEW_BYTES`] from the small one, the rest from the large
/// one); the permits hold the bytes until the review is answered.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    state: &WebhookState,
) -> std::result::Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), (StatusCode, String)> {
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
    // The buffer grows by doubling as data arrives, up to the declared
    // length: never reserved ahead for data a slow sender has not sent.
    let mut bytes: Vec<u8> = Vec::new();
    let mut held = Vec::new();
    let mut stream = body.into_data_stream();
    // The deadline counts the time spent waiting for the sender, not for
    // the budget (which a flood of others may hold).
    let mut left = BODY_DEADLINE;
    loop {
        let waiting = Instant::now();
        let Ok(next) = tokio::time::timeout(left, stream.next()).await else {
            tracing::info!(deadline = ?BODY_DEADLINE, "review body not received in time");
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the AdmissionReview was not received within {} s",
                    BODY_DEADLINE.as_secs()
                ),
            ));
        };
        left = left.saturating_sub(waiting.elapsed());
        let Some(chunk) = next else { break };
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
                .max(4096)
                .min(declared.unwrap_or(MAX_REVIEW_BYTES))
                .max(wanted);
            let old = bytes.capacity();
            let small = capacity.min(SMALL_REVIEW_BYTES) - old.min(SMALL_REVIEW_BYTES);
            let large = (capacity - old) - small;
            for (budget, n) in [(&state.small_bodies, small), (&state.large_bodies, large)] {
                if n > 0 {
                    held.push(
                        budget
                            .clone()
                            .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
                            .await
                            .map_err(|_| {
                                (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned())
                            })?,
                    );
                }
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
