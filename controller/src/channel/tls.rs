//! The stream port's TLS in a cluster: the controller's serving
//! certificate (the webhook's, from the same files), reloaded when the
//! files change, as the webhook's is, so a renewal needs no restart.
//! Connections already open keep the certificate they were accepted with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The certificate handed to every new connection; replaced on reload.
#[derive(Debug)]
pub struct Reloading {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloading {
    /// The certificate chain and key in `cert` and `key` (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = certified(&provider, cert, key)?;
        Ok(Arc::new(Self {
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again; on a failure the certificate in use stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let fresh = certified(&self.provider, cert, key)?;
        *self.current.write().expect("channel certificate lock") = fresh;
        Ok(())
    }

    /// An HTTP/2-only acceptor serving the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads the certificate whenever a file in `cert`'s directory
    /// changes (a kubelet Secret volume's swap, or the self-managed
    /// certificate's write).
    pub fn spawn_reloader(self: &Arc<Self>, cert: PathBuf, key: PathBuf) -> crate::Result<()> {
        use rotor_watch::WatchMask as M;
        let mut changes = rotor_watch::DirWatch::parent_of(
            &cert,
            M::CREATE | M::MOVED_TO | M::CLOSE_WRITE | M::DELETE,
            Duration::from_millis(100),
        )
        .map_err(crate::Error::Watch)?;
        let this = self.clone();
        tokio::spawn(async move {
            while changes.settled().await.is_some() {
                match this.reload(&cert, &key) {
                    Ok(()) => {
                        tracing::info!(cert = %cert.display(), "channel: TLS certificate reloaded")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "channel: TLS certificate reload failed; keeping the old one")
                    }
                }
            }
        });
        Ok(())
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("channel certificate lock")
                .clone(),
        )
    }
}

fn certified(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, names: &[&str]) -> crate::certs::Generated {
        let generated = crate::certs::generate(
            &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            crate::certs::Lifetimes::default(),
            crate::certs::now(),
        )
        .unwrap();
        crate::certs::write(dir, &generated).unwrap();
        generated
    }

    fn served_names(reloading: &Reloading) -> Vec<u8> {
        reloading.current.read().unwrap().cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write(dir.path(), &["a.example"]);
        let reloading = Reloading::load(&cert, &key).unwrap();
        reloading.acceptor().unwrap();
        let first = served_names(&reloading);
        write(dir.path(), &["b.example"]);
        reloading.reload(&cert, &key).unwrap();
        let second = served_names(&reloading);
        assert_ne!(first, second);
        std::fs::write(&key, "not a key").unwrap();
        let err = reloading.reload(&cert, &key).unwrap_err();
        assert!(err.contains("tls.key"), "{err}");
        assert_eq!(served_names(&reloading), second);
    }
}
