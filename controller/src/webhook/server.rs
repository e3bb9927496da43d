use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;

use super::InjectConfig;
use crate::store_index::SharedStoreIndex;
use crate::{Error, Result};

/// The largest AdmissionReview read: the API server's own request limit
/// is 3 MiB, and a review carries the object once (twice for UPDATE).
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;
/// Reviews decoded at once; others wait before their body is read, so
/// memory stays bounded under any flood.
pub const MAX_CONCURRENT_REVIEWS: usize = 4;

/// What the webhook needs: the store index (kept fresh by watches or
/// loaded from files) and the injection settings.
pub struct WebhookState {
    pub stores: SharedStoreIndex,
    pub config: InjectConfig,
    /// Bounds the reviews in memory at once.
    pub reviews: tokio::sync::Semaphore,
}

impl WebhookState {
    pub fn new(stores: SharedStoreIndex, config: InjectConfig) -> Self {
        Self {
            stores,
            config,
            reviews: tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS),
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

async fn mutate(State(state): State<Arc<WebhookState>>, body: Body) -> impl IntoResponse {
    let _permit = state.reviews.acquire().await;
    let body = match axum::body::to_bytes(body, MAX_REVIEW_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({
                    "error": format!("the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes or could not be read")
                })
                .to_string(),
            );
        }
    };
    let (status, reply) = {
        let stores = state.stores.read().expect("store index lock");
        super::review::handle(&body, &stores, &state.config)
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_string(),
    )
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
    axum_server::from_tcp_rustls(listener, tls)
        .serve(router.into_make_service())
        .await
        .map_err(|source| Error::Serve { addr, source })
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
