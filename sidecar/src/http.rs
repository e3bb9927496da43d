//! The sidecar's HTTP endpoints: `/healthz`, `/readyz` and `/metrics` for
//! the kubelet and Prometheus, and `POST /v1/refresh` for pushes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{PushBody, PushRequest, Shared};

/// `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(shared): State<Arc<Shared>>| async move {
                if shared.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for the first complete write\n",
                    )
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

/// A token bucket: `burst` requests at once, refilled at `per_second`.
pub struct RateLimit {
    burst: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    fn allow(&self) -> bool {
        let mut state = self.state.lock().expect("rate limit lock");
        let (tokens, at) = *state;
        let now = Instant::now();
        let tokens =
            (tokens + now.duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
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

async fn refresh(State(state): State<PushState>, body: axum::body::Bytes) -> Response {
    let received = Instant::now();
    if !state.limit.allow() {
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
            let status = if reply.ok {
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

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
