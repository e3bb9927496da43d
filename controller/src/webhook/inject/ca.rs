//! The controller's CA bundle as the sidecar receives it: read at each
//! injection, in one canonical PEM form so a second pass changes nothing.

use super::error::{InjectError, PemProblem};

/// How injected sidecars reach the controller's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInjection {
    /// `host:port` the sidecar dials (the controller Service's DNS name).
    pub controller_addr: String,
    /// The CA bundle of the controller's serving certificate.
    pub ca: CaSource,
}

/// Where the controller's CA bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Read at each injection (it changes when the CA is replaced).
    File(std::path::PathBuf),
    /// Fixed PEM text (tests).
    Pem(String),
}

impl CaSource {
    /// The bundle in canonical PEM (each certificate re-encoded, in order),
    /// so that the same certificates are always the same text and a
    /// second pass over a pod changes nothing.
    pub fn canonical(&self) -> Result<String, InjectError> {
        let (pem, origin) = match self {
            CaSource::File(path) => (
                std::fs::read(path).map_err(|source| InjectError::CaUnreadable {
                    path: path.clone(),
                    source,
                })?,
                path.display().to_string(),
            ),
            CaSource::Pem(pem) => (pem.as_bytes().to_vec(), "the CA bundle".to_owned()),
        };
        canonical_pem(&pem).map_err(|problem| InjectError::CaInvalid { origin, problem })
    }
}

/// `pem`'s certificates, each as 64-column base64 between PEM markers.
pub fn canonical_pem(pem: &[u8]) -> Result<String, PemProblem> {
    use base64::Engine as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut out = String::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(PemProblem::NotCertificate)?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    if out.is_empty() {
        return Err(PemProblem::Empty);
    }
    Ok(out)
}
