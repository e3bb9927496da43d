//! Self-managed serving certificates: a CA and a serving certificate for
//! the webhook's Service DNS names, generated with rcgen (ring), each valid
//! for a lifetime counted from now and renewed at two-thirds of it.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The serving certificate's default lifetime: one year.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The CA's default lifetime: ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back `notBefore` is set, for clocks a little behind this one.
const CLOCK_SKEW: i64 = 60;

/// How long new certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub serving: Duration,
    pub ca: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            serving: SERVING_LIFETIME,
            ca: CA_LIFETIME,
        }
    }
}

/// When a certificate was issued and when it expires, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validity {
    pub issued: i64,
    pub not_after: i64,
}

impl Validity {
    /// Two-thirds of the way from issue to expiry: when it is renewed.
    pub fn renew_at(&self) -> i64 {
        self.issued + (self.not_after - self.issued) * 2 / 3
    }
}

/// A certificate and its private key, PEM. No `Debug`: a private key.
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub validity: Validity,
}

/// PEM-encoded CA bundle, serving certificate and serving key: what the
/// webhook server reads.
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    /// No `Debug`: a private key.
    pub key_pem: String,
}

fn fail(e: rcgen::Error) -> Error {
    Error::CertGeneration(e)
}

fn date(unix: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|source| Error::CertDate { unix, source })
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// The CA's parameters; the same for every CA, so a CA can be rebuilt
/// from its key alone to sign with.
fn ca_params(validity: Validity) -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.distinguished_name
        .push(DnType::CommonName, "rotor-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date(validity.issued - CLOCK_SKEW)?;
    ca.not_after = date(validity.not_after)?;
    Ok(ca)
}

/// A new CA, valid from `now` for `lifetime`.
pub fn new_ca(now: i64, lifetime: Duration) -> Result<KeyedCert> {
    let key = KeyPair::generate().map_err(fail)?;
    let validity = Validity {
        issued: now,
        not_after: now.saturating_add(seconds(lifetime)),
    };
    let cert = ca_params(validity)?.self_signed(&key).map_err(fail)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        validity,
    })
}

/// A serving certificate for `dns_names` (IP addresses become IP SANs)
/// signed by the CA whose key is `ca_key_pem`, valid from `now` until
/// `not_after`.
pub fn issue(
    ca_key_pem: &str,
    dns_names: &[String],
    now: i64,
    not_after: i64,
) -> Result<KeyedCert> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(fail)?;
    // Only the issuer's name and key go into what it signs.
    let issuer = ca_params(Validity {
        issued: now,
        not_after,
    })?
    .self_signed(&ca_key)
    .map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(fail)?;
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    let validity = Validity {
        issued: now,
        not_after,
    };
    params.not_before = date(now - CLOCK_SKEW)?;
    params.not_after = date(not_after)?;
    let cert = params.signed_by(&key, &issuer, &ca_key).map_err(fail)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        validity,
    })
}

/// A CA and a serving certificate for `dns_names`, valid from `now`.
pub fn generate(dns_names: &[String], lifetimes: Lifetimes, now: i64) -> Result<Generated> {
    let ca = new_ca(now, lifetimes.ca)?;
    let not_after = now
        .saturating_add(seconds(lifetimes.serving))
        .min(ca.validity.not_after);
    let serving = issue(&ca.key_pem, dns_names, now, not_after)?;
    Ok(Generated {
        ca_pem: ca.cert_pem,
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem.to_string(),
    })
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(seconds)
        .unwrap_or(0)
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

/// The first of the files [`write()`] would replace that already exists in
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
        let io = |source: std::io::Error| Error::CertFile {
            path: dir.join(name),
            source,
        };
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
