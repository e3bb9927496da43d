//! The sidecar's HTTP endpoints: `/healthz`, `/readyz` and `/metrics` for
//! the kubelet and Prometheus, and `POST /v1/refresh` for pushes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::Quota;
use governor::nanos::Nanos;
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
/// their share. The buckets are `governor`'s keyed GCRA limiter over
/// `Callers`, which tracks at most `max_callers`: a new caller past the
/// bound first drops the callers whose bucket is full again (governor's
/// `retain_recent`: such a bucket is the same as a fresh one), else evicts
/// the caller seen longest ago (an evicted caller starts again with a full
/// bucket, so eviction never starves anyone). A rate of 0 refuses every
/// request.
pub struct RateLimit {
    limiter: Option<(Limiter, Callers)>,
}

type Limiter = governor::RateLimiter<
    IpAddr,
    Callers,
    TokioClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

impl RateLimit {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self::with_max_callers(per_second, burst, MAX_CALLERS)
    }

    pub fn with_max_callers(per_second: f64, burst: u32, max_callers: usize) -> Self {
        let quota = NonZeroU32::new(burst)
            .filter(|_| per_second > 0.0)
            .and_then(|burst| {
                Quota::with_period(Duration::from_secs_f64(1.0 / per_second))
                    .map(|q| q.allow_burst(burst))
            });
        Self {
            limiter: quota.map(|quota| {
                let callers = Callers::new(max_callers);
                let limiter = governor::RateLimiter::new(quota, callers.clone(), TokioClock::new());
                (limiter, callers)
            }),
        }
    }

    /// Takes one token from `caller`'s bucket, if there is one.
    pub fn allow(&self, caller: IpAddr) -> bool {
        let Some((limiter, callers)) = &self.limiter else {
            return false;
        };
        let caller = caller.to_canonical();
        // Full buckets go before a caller is evicted; what is left past the
        // bound is evicted by `Callers` itself, under its lock.
        if callers.must_make_room(&caller) {
            limiter.retain_recent();
        }
        limiter.check_key(&caller).is_ok()
    }

    /// How many callers are tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |(l, _)| l.len())
    }
}

/// The rate limiter's clock: tokio's, so that tests on paused time see
/// buckets refill as time is advanced.
struct TokioClock {
    base: tokio::time::Instant,
}

impl TokioClock {
    fn new() -> Self {
        Self {
            base: tokio::time::Instant::now(),
        }
    }
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.base.elapsed()
    }
}

/// The buckets of at most `max` callers, a governor state store: each
/// caller's theoretical arrival time and when it was last seen (an access
/// count, for eviction). Clones share the buckets.
#[derive(Clone)]
struct Callers {
    max: usize,
    map: Arc<Mutex<CallerMap>>,
}

#[derive(Default)]
struct CallerMap {
    seen: u64,
    callers: HashMap<IpAddr, Caller>,
}

struct Caller {
    tat: Nanos,
    seen: u64,
}

impl Callers {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: Arc::default(),
        }
    }

    /// Whether `caller` is new and the bound is reached.
    fn must_make_room(&self, caller: &IpAddr) -> bool {
        let map = self.map.lock().expect("rate limit lock");
        !map.callers.contains_key(caller) && map.callers.len() >= self.max
    }
}

impl governor::state::StateStore for Callers {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map.lock().expect("rate limit lock");
        map.seen += 1;
        let seen = map.seen;
        if !map.callers.contains_key(key) && map.callers.len() >= self.max {
            let oldest = map
                .callers
                .iter()
                .min_by_key(|(_, c)| c.seen)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                map.callers.remove(&ip);
            }
        }
        let old = map.callers.get(key).map(|c| c.tat);
        let result = f(old);
        let tat = match &result {
            Ok((_, tat)) => *tat,
            Err(_) => old.unwrap_or_default(),
        };
        map.callers.insert(*key, Caller { tat, seen });
        result.map(|(outcome, _)| outcome)
    }
}

impl governor::state::keyed::ShrinkableKeyedStateStore<IpAddr> for Callers {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map
            .lock()
            .expect("rate limit lock")
            .callers
            .retain(|_, c| c.tat > drop_below);
    }

    fn len(&self) -> usize {
        self.map.lock().expect("rate limit lock").callers.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
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
