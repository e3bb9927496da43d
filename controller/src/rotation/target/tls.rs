//! TLS to rotation targets, over the workspace's one stack (rustls with
//! ring): [`client_config`] builds a verifying client configuration from a
//! target's `caBundle` (or the public web's roots, as `webpki-roots` ships
//! them), and [`MakeRustls`] is tokio-postgres's `MakeTlsConnect` over it.
//! A failed handshake (an unknown CA, a name the certificate does not
//! cover) surfaces as a [`HandshakeFailed`] in the error's source chain,
//! which the targets classify as [`super::TargetFailure::TlsFailed`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

/// The certificates of a PEM bundle, or what is wrong with it (for
/// `field`), in terms a spec's author can act on.
pub fn parse_bundle(field: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!("{field}: not PEM ({e}); expected -----BEGIN CERTIFICATE----- blocks")
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{field}: no certificate found; expected one or more -----BEGIN CERTIFICATE----- blocks"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 || ignored > 0 {
        return Err(format!(
            "{field}: {ignored} of {} certificates are not valid X.509 CA certificates",
            certs.len()
        ));
    }
    Ok(certs)
}

/// A client configuration that verifies the server against `ca_bundle`
/// (`field` names it in errors), or the public web's roots without one.
pub fn client_config(
    field: &str,
    ca_bundle: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle {
        Some(pem) => {
            roots.add_parsable_certificates(parse_bundle(field, pem)?);
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("{field}: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS handshake failed: the certificate did not verify, or the
/// server broke off. Carries rustls's reason, never any payload.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {0}")]
pub struct HandshakeFailed(#[source] pub io::Error);

/// Whether `error`'s source chain holds a [`HandshakeFailed`].
pub fn is_handshake_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<HandshakeFailed>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// tokio-postgres's TLS over rustls.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<rustls::ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One connection's handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = HandshakeFailed;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, HandshakeFailed>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
                .map_err(HandshakeFailed)
        })
    }
}

/// A TLS connection to the server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No SCRAM channel binding (tls-server-end-point needs the
    /// certificate's signature hash): the verified handshake already
    /// authenticates the server.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_bundle_is_refused_naming_the_field() {
        let e = parse_bundle("spec.target.https.caBundle", "not a certificate").unwrap_err();
        assert!(
            e.starts_with("spec.target.https.caBundle: no certificate"),
            "{e}"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = parse_bundle("f", garbage).unwrap_err();
        assert!(e.contains("not valid X.509"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        assert_eq!(parse_bundle("f", &ca.cert.pem()).unwrap().len(), 1);
        assert!(client_config("f", Some(&ca.cert.pem())).is_ok());
        assert!(client_config("f", None).is_ok());
    }
}
