//! The controller's `/metrics`, on plain HTTP. Bound before anything else
//! starts, so an address in use fails `run` at once.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::rotation::metrics::RotationMetrics;
use crate::{Error, Result};

/// Binds `--metrics-addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            addr,
            flag: "--metrics-addr",
            source,
        })
}

/// Serves `/metrics` on `listener` (bound to `addr`) until it fails.
pub async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    metrics: Arc<RotationMetrics>,
) -> Result<()> {
    serve_with(listener, addr, move || metrics.encode()).await
}

/// Serves `/metrics` on `listener` with the text `encode` returns.
pub async fn serve_with(
    listener: TcpListener,
    addr: SocketAddr,
    encode: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let encode = encode.clone();
            async move { encode() }
        }),
    );
    axum::serve(listener, router)
        .await
        .map_err(|source| Error::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_the_flag() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = super::bind(addr).await.unwrap_err();
        assert_eq!(err.metric_label(), "listen");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr} (--metrics-addr)")),
            "{err}"
        );
    }
}
