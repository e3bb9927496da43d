//! Self-managed serving certificates: a CA and a serving certificate for
//! the webhook's Service DNS names, generated with rcgen (ring).

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::{Error, Result};

/// PEM-encoded CA certificate, serving certificate and serving key.
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    /// No `Debug`: a private key.
    pub key_pem: String,
}

/// A CA valid for ten years and a serving certificate for `dns_names`.
pub fn generate(dns_names: &[String]) -> Result<Generated> {
    let fail = |e: rcgen::Error| Error::Certs(e.to_string());
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.distinguished_name
        .push(DnType::CommonName, "rotor-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(fail)?;
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.not_after = rcgen::date_time_ymd(2028, 1, 1);
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(fail)?;
    Ok(Generated {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The Service's DNS names, as the API server calls them.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The first of the files [`write`] would replace that already exists in
/// `dir`, if any.
pub fn existing(dir: &Path) -> Option<std::path::PathBuf> {
    FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.symlink_metadata().is_ok())
}

/// The files [`write`] puts in its directory.
const FILES: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, each
/// through a rename so a watching server never reads half a file.
pub fn write(dir: &Path, g: &Generated) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for (name, data, mode) in FILES
        .into_iter()
        .zip([
            (&g.ca_pem, 0o644),
            (&g.cert_pem, 0o644),
            (&g.key_pem, 0o600),
        ])
        .map(|(name, (data, mode))| (name, data, mode))
    {
        let tmp = dir.join(format!(".{name}.tmp"));
        let io = |e: std::io::Error| Error::Certs(format!("{}: {e}", dir.join(name).display()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(data.as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
    }
    Ok(())
}
