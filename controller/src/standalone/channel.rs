//! Standalone's end of the channel: the stream server with standalone's
//! trust model, and rotation's consumers over it.
//!
//! - **Who is trusted**: whoever holds the token file (`--channel-token`),
//!   shared by the controller and its sidecars ([`SharedToken`]). The
//!   controller creates it (64 hex characters, mode 0640) when it is
//!   missing, and refuses one that others may read or that is too short.
//! - **TLS**: the controller keeps its own CA and serving certificate in
//!   `--channel-dir` (`ca.crt`, public; `tls.crt`; `tls.key`, mode 0600),
//!   made at the first start and kept across restarts, so sidecars that
//!   read `ca.crt` once keep trusting it. They are made again when the
//!   names change or two-thirds of the serving certificate's life is gone.
//! - **Consumers** of a policy: the pods it lists in `spec.sidecars`
//!   (`namespace/name`; one without a stream has not acknowledged) and
//!   every connected stream that serves its secret.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rotor_contract::api::SecretRotationPolicyStatus;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::channel::auth::SharedToken;
use crate::channel::server::tls_acceptor;
use crate::channel::{ChannelMetrics, Hub, Limits, Server, StreamConsumers};
use crate::detect::DetectStores;
use crate::rotation::machine::Phase;
use crate::{Error, Result};

/// Where standalone serves the channel and keeps its token and certificate.
pub struct ChannelOptions {
    /// `--channel-addr`.
    pub addr: SocketAddr,
    /// `--channel-dir`: `ca.crt`, `tls.crt`, `tls.key`, `certificate.json`.
    pub dir: PathBuf,
    /// `--channel-token`: the shared token file.
    pub token: PathBuf,
    /// `--channel-name`: more names for the serving certificate.
    pub names: Vec<String>,
    pub limits: Limits,
}

/// The shortest token accepted from a file the operator wrote.
const MIN_TOKEN: usize = 32;

/// What `certificate.json` records of the certificate in the directory.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    names: Vec<String>,
    validity: crate::certs::Validity,
}

/// The channel, set up: its listener is bound, its token and certificate
/// are on disk.
pub struct Channel {
    pub server: Arc<Server>,
    listener: TcpListener,
    tls: TlsAcceptor,
}

impl Channel {
    /// Reads or makes the token and the certificate, then binds the
    /// address; every failure names its flag.
    /// Streams reading a store `detected` checks are told so in their
    /// welcome.
    pub async fn set_up(
        options: ChannelOptions,
        metrics: ChannelMetrics,
        detected: Arc<dyn DetectStores>,
    ) -> Result<Self> {
        let ChannelOptions {
            addr,
            dir,
            token,
            names,
            limits,
        } = options;
        create_dir(&dir)?;
        let token = shared_token(&token)?;
        let tls = certificate(&dir, &certificate_names(addr, names), crate::certs::now())?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen {
                addr,
                flag: "--channel-addr",
                source,
            })?;
        let server = Arc::new(Server {
            hub: Arc::new(Hub::new(limits.streams_per_pod)),
            authority: Arc::new(SharedToken::new(token).detecting(detected)),
            limits,
            metrics,
            leader: None,
        });
        Ok(Self {
            server,
            listener,
            tls,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves streams until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        self.server.serve(self.listener, self.tls, shutdown).await;
    }
}

/// The names the serving certificate covers: loopback, the address the
/// channel is bound to when it is a specific one, and `extra`.
fn certificate_names(addr: SocketAddr, extra: Vec<String>) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !addr.ip().is_unspecified() && !addr.ip().is_loopback() {
        names.push(addr.ip().to_string());
    }
    for name in extra {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| Error::Channel {
            flag: "--channel-dir",
            problem: format!("{}: cannot create the directory: {e}", dir.display()),
        })
}

/// The shared token: read from `path`, or made there when it is missing.
fn shared_token(path: &Path) -> Result<SecretString> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let bad = |problem: String| Error::Channel {
        flag: "--channel-token",
        problem: format!("{}: {problem}", path.display()),
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o007 != 0 {
                return Err(bad(format!(
                    "mode {:04o} lets every user read the token; expected no access for others (0600 or 0640)",
                    meta.permissions().mode() & 0o7777
                )));
            }
            let raw = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?,
            );
            let token = raw.trim();
            if token.chars().count() < MIN_TOKEN {
                return Err(bad(format!(
                    "holds {} characters; expected a token of at least {MIN_TOKEN} (remove the file to have one made)",
                    token.chars().count()
                )));
            }
            Ok(SecretString::from(token.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes[..])
                .map_err(|_| Error::Random)?;
            let mut token = zeroize::Zeroizing::new(String::with_capacity(64));
            for b in bytes.iter() {
                token.push_str(&format!("{b:02x}"));
            }
            let tmp = path.with_extension("tmp");
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o640)
                .open(&tmp)
                .map_err(|e| bad(format!("cannot create the token file: {e}")))?;
            file.write_all(token.as_bytes())
                .and_then(|()| file.sync_all())
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| bad(format!("cannot write the token file: {e}")))?;
            tracing::info!(path = %path.display(), "channel: made a new shared token file");
            Ok(SecretString::from(token.to_string()))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The serving certificate in `dir` if it covers `names` and is not due
/// for renewal; a new CA and certificate otherwise.
fn certificate(dir: &Path, names: &[String], now: i64) -> Result<TlsAcceptor> {
    let bad = |problem: String| Error::Channel {
        flag: "--channel-dir",
        problem: format!("{}: {problem}", dir.display()),
    };
    let record = dir.join("certificate.json");
    let kept = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Recorded>(&b).ok())
        .filter(|r| r.names == names && now < r.validity.renew_at());
    if kept.is_some()
        && let (Ok(cert), Ok(key)) = (
            std::fs::read(dir.join("tls.crt")),
            std::fs::read(dir.join("tls.key")).map(zeroize::Zeroizing::new),
        )
        && dir.join("ca.crt").is_file()
        && let Ok(acceptor) = tls_acceptor(&cert, &key)
    {
        return Ok(acceptor);
    }
    let lifetimes = crate::certs::Lifetimes::default();
    let generated = crate::certs::generate(names, lifetimes, now)?;
    crate::certs::write(dir, &generated)?;
    let validity = crate::certs::Validity {
        issued: now,
        not_after: now
            .saturating_add(i64::try_from(lifetimes.serving.as_secs()).unwrap_or(i64::MAX / 4)),
    };
    let recorded = Recorded {
        names: names.to_vec(),
        validity,
    };
    std::fs::write(
        &record,
        serde_json::to_vec_pretty(&recorded).expect("the record serializes"),
    )
    .map_err(|e| bad(format!("cannot write certificate.json: {e}")))?;
    tracing::info!(dir = %dir.display(), ?names, "channel: made a new CA and serving certificate");
    tls_acceptor(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes()).map_err(bad)
}

/// Checks a policy's `spec.sidecars`: each entry names a pod as
/// `namespace/name`. A push URL (the field's old meaning) is refused with
/// what replaces it.
pub fn check_sidecars(sidecars: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, entry) in sidecars.iter().enumerate() {
        if entry.contains("://") {
            problems.push(format!(
                "spec.sidecars[{i}] {entry:?} is a push URL: standalone no longer pushes to \
                 sidecars; each sidecar dials the controller (--controller-addr, --controller-ca, \
                 --channel-token) and is a consumer while connected. List the pods a rotation \
                 waits for as namespace/name (the sidecar's --pod-namespace and --pod-name), or \
                 remove the entry"
            ));
            continue;
        }
        let valid = entry
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        if !valid {
            problems.push(format!(
                "spec.sidecars[{i}] {entry:?} is not namespace/name: expected the pod a rotation \
                 waits for, as the sidecar's --pod-namespace and --pod-name"
            ));
        }
    }
    problems
}

/// Rotation's consumers of one policy: the pods it lists, and every
/// connected stream that serves `secret` from `store` (or names no store,
/// as sidecars with store flags and no `rotor.dev/store` do).
pub fn consumers<'a>(
    hub: &'a Hub,
    listed: &[String],
    store: &str,
    secret: &str,
    deadline: Duration,
) -> StreamConsumers<'a> {
    let mut pods: BTreeSet<String> = listed.iter().cloned().collect();
    pods.extend(
        hub.pods_where(|a| a.secrets.contains(secret) && (a.store.is_empty() || a.store == store)),
    );
    StreamConsumers {
        hub,
        pods: pods.into_iter().collect(),
        deadline,
    }
}

/// How long a step waits for each consumer's acknowledgement: what is left
/// of the ack timeout while propagating (so the timeout fires on time
/// whatever a consumer does), the ack timeout otherwise, at most 5 s.
pub fn ack_deadline(
    status: &SecretRotationPolicyStatus,
    ack_timeout: Duration,
    now: SystemTime,
) -> Duration {
    const FLOOR: Duration = Duration::from_millis(50);
    if status.phase != Some(Phase::Propagating) {
        return ack_timeout.clamp(FLOOR, Duration::from_secs(5));
    }
    let since = status
        .phase_since
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(SystemTime::from)
        .unwrap_or(now);
    let spent = now.duration_since(since).unwrap_or_default();
    ack_timeout.saturating_sub(spent).max(FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_url_in_sidecars_is_refused_naming_what_replaces_it() {
        let problems = check_sidecars(&[
            "shop/web-1".into(),
            "http://127.0.0.1:9465".into(),
            "web-2".into(),
        ]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("spec.sidecars[1] \"http://127.0.0.1:9465\" is a push URL")
        );
        assert!(problems[0].contains("--controller-addr"));
        assert!(problems[1].starts_with("spec.sidecars[2] \"web-2\" is not namespace/name"));
    }

    #[test]
    fn the_ack_deadline_is_what_is_left_of_the_timeout_while_propagating() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let since = chrono::DateTime::<chrono::Utc>::from(now - Duration::from_secs(2));
        let status = SecretRotationPolicyStatus {
            phase: Some(Phase::Propagating),
            phase_since: Some(since.to_rfc3339()),
            ..Default::default()
        };
        assert_eq!(
            ack_deadline(&status, Duration::from_secs(5), now),
            Duration::from_secs(3)
        );
        assert_eq!(
            ack_deadline(&status, Duration::from_secs(1), now),
            Duration::from_millis(50)
        );
        let idle = SecretRotationPolicyStatus::default();
        assert_eq!(
            ack_deadline(&idle, Duration::from_secs(60), now),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn a_token_is_made_once_and_a_readable_or_short_one_is_refused() {
        use secrecy::ExposeSecret;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let made = shared_token(&path).unwrap();
        assert_eq!(made.expose_secret().len(), 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            shared_token(&path).unwrap().expose_secret(),
            made.expose_secret()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = shared_token(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("--channel-token: ") && err.contains("mode 0644"),
            "{err}"
        );
        assert!(!err.contains(made.expose_secret()));
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = shared_token(&path).unwrap_err().to_string();
        assert!(err.contains("holds 5 characters"), "{err}");
    }

    #[test]
    fn the_certificate_is_kept_across_starts_and_made_again_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let now = crate::certs::now();
        certificate(dir.path(), &names, now).unwrap();
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        certificate(dir.path(), &names, now + 60).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
        certificate(dir.path(), &["rotor.example".to_owned()], now + 60).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca);
    }
}
