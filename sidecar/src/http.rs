//! The sidecar's HTTP endpoints: `/healthz`, `/readyz` and `/metrics` for
//! the kubelet and Prometheus, and `POST /v1/refresh` for pushes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

use crate::engine::Shared;
use crate::push::{PushBody, PushRequest};

/// `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(shared): State<Arc<Shared>>| async move {
                match shared.not_ready_reason() {
                    None => (StatusCode::OK, "ready\n".to_owned()),
                    Some(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(shared): State<Arc<Shared>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    shared.metrics.encode(),
                )
            }),
        )
        .with_state(shared)
}

/// How many callers [`RateLimit`] tracks at once.
pub const MAX_CALLERS: usize = 1024;

/// A token bucket per caller (peer IP address): `burst` requests at once,
/// refilled at `per_second`, so that one caller's flood leaves the others
/// their share. At most `max_callers` are tracked; a new caller evicts a
/// caller whose bucket is full again, else the one seen longest ago (an
/// evicted caller starts again with a full bucket, so eviction never
/// starves anyone).
pub struct RateLimit {
    burst: f64,
    per_second: f64,
    max_callers: usize,
    callers: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self::with_max_callers(per_second, burst, MAX_CALLERS)
    }

    pub fn with_max_callers(per_second: f64, burst: u32, max_callers: usize) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
            max_callers: max_callers.max(1),
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `caller`'s bucket, if there is one.
    pub fn allow(&self, caller: IpAddr) -> bool {
        let caller = caller.to_canonical();
        let now = tokio::time::Instant::now();
        let mut callers = self.callers.lock().expect("rate limit lock");
        if !callers.contains_key(&caller) && callers.len() >= self.max_callers {
            let full = callers
                .iter()
                .find(|(_, b)| self.refilled(b, now) >= self.burst)
                .map(|(ip, _)| *ip);
            let evict =
                full.or_else(|| callers.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip));
            if let Some(ip) = evict {
                callers.remove(&ip);
            }
        }
        let bucket = callers.entry(caller).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = self.refilled(bucket, now);
        let allowed = tokens >= 1.0;
        *bucket = Bucket {
            tokens: if allowed { tokens - 1.0 } else { tokens },
            at: now,
        };
        allowed
    }

    /// How many callers are tracked now.
    pub fn tracked(&self) -> usize {
        self.callers.lock().expect("rate limit lock").len()
    }

    fn refilled(&self, bucket: &Bucket, now: tokio::time::Instant) -> f64 {
        (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_second)
            .min(self.burst)
    }
}

#[derive(Clone)]
struct PushState {
    engine: mpsc::Sender<PushRequest>,
    limit: Arc<RateLimit>,
}

/// `POST /v1/refresh`: refetch now; answer after the files are written and
/// the reload actions ran, with the version served per secret.
pub fn push_router(engine: mpsc::Sender<PushRequest>, limit: RateLimit) -> Router {
    Router::new()
        .route("/v1/refresh", post(refresh))
        .with_state(PushState {
            engine,
            limit: Arc::new(limit),
        })
}

async fn refresh(
    State(state): State<PushState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let received = tokio::time::Instant::now();
    if !state.limit.allow(peer.ip()) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded; retry shortly".to_owned(),
        );
    }
    let body: PushBody = if body.iter().all(u8::is_ascii_whitespace) {
        PushBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "body: {e}; expected {{\"secrets\": [{{\"name\": \"<secret>\", \"version\": \"<optional>\"}}]}}"
                    ),
                );
            }
        }
    };
    let (reply, answer) = oneshot::channel();
    if state
        .engine
        .send(PushRequest {
            body,
            received,
            reply,
        })
        .await
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    match tokio::time::timeout(Duration::from_secs(60), answer).await {
        Ok(Ok(reply)) => {
            let status = if reply.refused.is_some() {
                tracing::warn!(caller = %peer.ip(), "push refused: a pin named a version that is not PENDING");
                StatusCode::CONFLICT
            } else if reply.ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            (status, Json(reply)).into_response()
        }
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned()),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the refresh did not finish within 60s".to_owned(),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "ok": false, "error": message })),
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves. Handlers see
/// the peer's address (the push rate limit is per caller).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests;
