//! HashiCorp Vault / OpenBao KV v2.
//!
//! # Stages on KV v2
//!
//! KV v2 keeps numbered versions but has no stage labels, and its
//! `current_version` is simply the newest write. Rotor keeps the labels in
//! the secret's `custom_metadata`:
//!
//! - `rotor-current`: the CURRENT version. Without it (a secret written by
//!   something other than Rotor), CURRENT is KV's `current_version`.
//! - `rotor-pending`: the PENDING version, written by a rotation and not yet
//!   promoted. Readers that ask for CURRENT do not see it, even though it is
//!   KV's newest version.
//! - `rotor-previous`: the version CURRENT before the last promotion.
//!
//! Writes use check-and-set against the version read just before, so two
//! writers never both succeed on the same base. Retiring a version destroys
//! it (or soft-deletes it, with [`RetireMode::Delete`]).
//!
//! # Values
//!
//! Rotor writes a value as `{"value": "<text>"}` (UTF-8 only). On read, a
//! secret whose data is exactly `{"value": …}` yields that string; any other
//! data yields the whole object as JSON, so `#key` selects one field.
//!
//! # Authentication
//!
//! A token from a file (re-read when the file changes, the last good token
//! kept when a read fails, an empty file refused), Kubernetes auth (a
//! service-account token from a [`TokenSource`], asked for at every login,
//! a role and a mount) or AppRole. Login
//! tokens are renewed at two thirds of their TTL, and a login is repeated
//! after a renewal fails or a request is refused with 403.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use tokio::sync::{Mutex, RwLock};
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::token_source::{TokenSource, read_secret_file};
use crate::{Error, Fetched, Result, Selector, Stage, Store, VersionId, WriteAs};

const CURRENT: &str = "rotor-current";
const PENDING: &str = "rotor-pending";
const PREVIOUS: &str = "rotor-previous";

/// Runs a vaultrs call with a valid token; after a 403 it refreshes the
/// token once and tries again. (A macro rather than a closure, so that the
/// futures stay `Send` without higher-ranked bounds.)
macro_rules! call {
    ($store:expr, $name:expr, |$c:ident| $body:expr) => {{
        $store.ensure_token().await?;
        let first = {
            let guard = $store.client.read().await;
            let $c: &VaultClient = &guard;
            $body.await
        };
        match first {
            Err(ClientError::APIError { code: 403, .. }) => {
                $store.invalidate().await;
                $store.ensure_token().await?;
                let guard = $store.client.read().await;
                let $c: &VaultClient = &guard;
                $body.await.map_err(|e| $store.classify($name, e))
            }
            // A pooled connection the server closed (a restart, an idle
            // timeout) fails once; a fresh connection then works.
            Err(ClientError::RestClientError { .. }) => {
                let guard = $store.client.read().await;
                let $c: &VaultClient = &guard;
                $body.await.map_err(|e| $store.classify($name, e))
            }
            other => other.map_err(|e| $store.classify($name, e)),
        }
    }};
}

/// How a retired version goes away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetireMode {
    /// Destroy it: the data is gone for good.
    #[default]
    Destroy,
    /// Soft-delete it: an operator can still undelete it.
    Delete,
}

/// How Rotor logs in to Vault.
#[derive(Debug, Clone)]
pub enum VaultAuth {
    /// A token read from a file and re-read when the file changes.
    TokenFile(PathBuf),
    /// Kubernetes auth with a service-account token, asked of `jwt` at
    /// every login (a projected file, or a TokenRequest).
    Kubernetes {
        mount: String,
        role: String,
        jwt: Arc<dyn TokenSource>,
    },
    /// AppRole with the role id and the secret id read from files.
    AppRole {
        mount: String,
        role_id: String,
        secret_id_path: PathBuf,
    },
}

/// Where and how to reach a KV v2 mount.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// `https://vault.example:8200`
    pub address: String,
    /// The KV v2 mount, `secret` by default.
    pub mount: String,
    pub auth: VaultAuth,
    /// A PEM CA bundle for the server's certificate.
    pub ca_cert: Option<PathBuf>,
    pub timeout: Duration,
    pub retire: RetireMode,
}

impl VaultConfig {
    pub fn new(address: impl Into<String>, auth: VaultAuth) -> Self {
        Self {
            address: address.into(),
            mount: "secret".to_owned(),
            auth,
            ca_cert: None,
            timeout: Duration::from_secs(10),
            retire: RetireMode::Destroy,
        }
    }
}

/// What the client's token is and when it needs attention.
struct TokenState {
    /// For a token file: the file's length and mtime when last read.
    file_stamp: Option<(u64, SystemTime)>,
    /// For a login token: when to renew, and whether it can be renewed.
    renew_at: Option<Instant>,
    renewable: bool,
    logged_in: bool,
}

/// A Vault/OpenBao KV v2 store. Cheap to share behind an `Arc`.
pub struct VaultStore {
    config: VaultConfig,
    label: String,
    client: RwLock<VaultClient>,
    token: Mutex<TokenState>,
    /// The token may not read `<mount>/metadata/...` (a policy written for
    /// Vault Agent or External Secrets allows only `<mount>/data/...`):
    /// versions and labels then come with the data read.
    metadata_forbidden: std::sync::atomic::AtomicBool,
}

/// One data read: the version, its custom metadata (Rotor's stage labels)
/// and the data. KV v2 returns the version's metadata with the data.
struct DataRead {
    version: u64,
    labels: HashMap<String, String>,
    data: serde_json::Map<String, serde_json::Value>,
}

impl VaultStore {
    /// Builds the client; authentication happens on first use.
    pub fn new(config: VaultConfig) -> Result<Self> {
        let label = format!(
            "vault:{}/{}",
            config.address.trim_end_matches('/'),
            config.mount
        );
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&config.address)
            .timeout(Some(config.timeout))
            .token("");
        if let Some(ca) = &config.ca_cert {
            settings.ca_certs(vec![ca.display().to_string()]);
        }
        let settings = settings.build().map_err(|e| Error::Config {
            store: label.clone(),
            detail: format!("address {:?}: {e}", config.address),
        })?;
        let client = VaultClient::new(settings).map_err(|e| Error::Config {
            store: label.clone(),
            detail: format!("cannot build the client: {e}"),
        })?;
        Ok(Self {
            config,
            label,
            client: RwLock::new(client),
            token: Mutex::new(TokenState {
                file_stamp: None,
                renew_at: None,
                renewable: false,
                logged_in: false,
            }),
            metadata_forbidden: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Makes sure the client holds a usable token: re-reads a changed token
    /// file, logs in, or renews.
    async fn ensure_token(&self) -> Result<()> {
        let mut state = self.token.lock().await;
        match &self.config.auth {
            VaultAuth::TokenFile(path) => {
                let meta = tokio::fs::metadata(path).await;
                let stamp = meta
                    .as_ref()
                    .ok()
                    .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                if stamp.is_some() && stamp == state.file_stamp {
                    return Ok(());
                }
                match read_secret_file(path).await {
                    Ok(token) => {
                        self.client.write().await.set_token(token.expose_secret());
                        state.file_stamp = stamp;
                        state.logged_in = true;
                    }
                    Err(detail) if state.logged_in => {
                        tracing::warn!(store = %self.label, %detail, "token file unreadable; keeping the last good token");
                    }
                    Err(detail) => {
                        return Err(Error::Auth {
                            store: self.label.clone(),
                            detail,
                        });
                    }
                }
            }
            VaultAuth::Kubernetes { .. } | VaultAuth::AppRole { .. } => {
                let now = Instant::now();
                if state.logged_in && state.renew_at.is_none_or(|at| now < at) {
                    return Ok(());
                }
                if state.logged_in && state.renewable {
                    let renewed = {
                        let client = self.client.read().await;
                        vaultrs::token::renew_self(&*client, None).await
                    };
                    match renewed {
                        Ok(auth) => {
                            state.renew_at = renew_time(auth.lease_duration);
                            tracing::debug!(store = %self.label, ttl = auth.lease_duration, "token renewed");
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::warn!(store = %self.label, error = %describe(&e), "token renewal failed; logging in again")
                        }
                    }
                }
                self.login(&mut state).await?;
            }
        }
        Ok(())
    }

    async fn login(&self, state: &mut TokenState) -> Result<()> {
        let auth_error = |detail: String| Error::Auth {
            store: self.label.clone(),
            detail,
        };
        let auth = match &self.config.auth {
            VaultAuth::Kubernetes { mount, role, jwt } => {
                let jwt = jwt.token().await.map_err(|source| Error::Token {
                    store: self.label.clone(),
                    source,
                })?;
                let client = self.client.read().await;
                vaultrs::auth::kubernetes::login(&*client, mount, role, jwt.expose_secret())
                    .await
                    .map_err(|e| {
                        auth_error(format!(
                            "kubernetes login (mount {mount:?}, role {role:?}): {}",
                            describe(&e)
                        ))
                    })?
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id_path,
            } => {
                let secret_id = read_secret_file(secret_id_path).await.map_err(auth_error)?;
                let client = self.client.read().await;
                vaultrs::auth::approle::login(&*client, mount, role_id, secret_id.expose_secret())
                    .await
                    .map_err(|e| {
                        auth_error(format!("approle login (mount {mount:?}): {}", describe(&e)))
                    })?
            }
            VaultAuth::TokenFile(_) => return Ok(()),
        };
        self.client.write().await.set_token(&auth.client_token);
        state.logged_in = true;
        state.renewable = auth.renewable;
        state.renew_at = renew_time(auth.lease_duration);
        tracing::info!(store = %self.label, ttl = auth.lease_duration, renewable = auth.renewable, "logged in");
        Ok(())
    }

    /// Forgets the token so the next call logs in or re-reads the file.
    async fn invalidate(&self) {
        let mut state = self.token.lock().await;
        state.logged_in = false;
        state.file_stamp = None;
    }

    /// Runs a Transit call with the store's auth (token refresh, one retry
    /// after a 403).
    pub(crate) async fn transit<T, F>(&self, op: F) -> Result<T>
    where
        F: AsyncFn(&VaultClient) -> Result<T, ClientError>,
    {
        self.ensure_token().await?;
        let first = {
            let guard = self.client.read().await;
            op(&guard).await
        };
        match first {
            Err(ClientError::APIError { code: 403, .. }) => {
                self.invalidate().await;
                self.ensure_token().await?;
                let guard = self.client.read().await;
                op(&guard).await.map_err(|e| self.classify("(transit)", e))
            }
            other => other.map_err(|e| self.classify("(transit)", e)),
        }
    }

    fn classify(&self, name: &str, e: ClientError) -> Error {
        let store = self.label.clone();
        let name = name.to_owned();
        let detail = describe(&e);
        match e {
            ClientError::APIError { code: 404, .. } => Error::SecretNotFound { store, name },
            ClientError::APIError {
                code: 401 | 403, ..
            } => Error::PermissionDenied {
                store,
                name,
                detail,
            },
            ClientError::APIError { code: 429, .. } => Error::Throttled {
                store,
                name,
                detail,
            },
            ClientError::APIError { code, .. } if code >= 500 => {
                Error::Unreachable { store, detail }
            }
            ClientError::APIError { .. }
            | ClientError::JsonParseError { .. }
            | ClientError::ResponseEmptyError
            | ClientError::ResponseDataEmptyError => Error::Malformed {
                store,
                name,
                detail,
            },
            _ => Error::Unreachable { store, detail },
        }
    }

    async fn metadata(&self, name: &str) -> Result<(u64, HashMap<String, String>, Vec<u64>)> {
        let mount = self.config.mount.as_str();
        let meta = call!(self, name, |c| vaultrs::kv2::read_metadata(c, mount, name))?;
        let mut live: Vec<u64> = meta
            .versions
            .iter()
            .filter(|(_, v)| v.deletion_time.is_empty() && !v.destroyed)
            .filter_map(|(k, _)| k.parse().ok())
            .collect();
        live.sort_unstable();
        Ok((
            meta.current_version,
            meta.custom_metadata.unwrap_or_default(),
            live,
        ))
    }

    /// Reads `version` (the newest when `None`) with its metadata.
    async fn read_data(&self, name: &str, version: Option<u64>) -> Result<DataRead> {
        let mount = self.config.mount.as_str();
        let response = call!(self, name, |c| {
            let endpoint = vaultrs::api::kv2::requests::ReadSecretRequest::builder()
                .mount(mount)
                .path(name)
                .version(version)
                .build()
                .expect("mount and path are set");
            vaultrs::api::exec_with_result(c, endpoint)
        })?;
        let serde_json::Value::Object(data) = response.data else {
            return Err(Error::Malformed {
                store: self.label.clone(),
                name: name.to_owned(),
                detail: "the KV v2 data is not a JSON object".to_owned(),
            });
        };
        Ok(DataRead {
            version: response.metadata.version,
            labels: response.metadata.custom_metadata.unwrap_or_default(),
            data,
        })
    }

    /// KV's newest version and Rotor's labels: from the metadata endpoint,
    /// or, when the token may read only data, from a data read (returned
    /// too, so that a read of the newest version costs one request).
    async fn labels(&self, name: &str) -> Result<(u64, HashMap<String, String>, Option<DataRead>)> {
        use std::sync::atomic::Ordering;
        if !self.metadata_forbidden.load(Ordering::Relaxed) {
            match self.metadata(name).await {
                Ok((current, labels, _)) => return Ok((current, labels, None)),
                Err(Error::PermissionDenied { .. }) => {
                    if !self.metadata_forbidden.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            store = %self.label,
                            secret = %name,
                            "the token may not read {mount}/metadata/{name}; reading versions from {mount}/data instead (one request per check). \
                             For the cheaper check, also allow: path \"{mount}/metadata/<path>/*\" {{ capabilities = [\"read\"] }}",
                            mount = self.config.mount,
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let latest = self.read_data(name, None).await?;
        Ok((latest.version, latest.labels.clone(), Some(latest)))
    }

    fn stage_of(
        &self,
        current_version: u64,
        labels: &HashMap<String, String>,
        stage: Stage,
    ) -> Option<u64> {
        let key = match stage {
            Stage::Current => CURRENT,
            Stage::Pending => PENDING,
            Stage::Previous => PREVIOUS,
        };
        match labels.get(key).and_then(|v| v.parse().ok()) {
            Some(v) => Some(v),
            None if stage == Stage::Current => Some(current_version).filter(|v| *v > 0),
            None => None,
        }
    }

    async fn set_labels(&self, name: &str, labels: HashMap<String, String>) -> Result<()> {
        let mount = self.config.mount.as_str();
        let mut builder = vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder();
        builder.custom_metadata(labels);
        call!(self, name, |c| vaultrs::kv2::set_metadata(
            c,
            mount,
            name,
            Some(&mut builder.clone())
        ))
    }

    fn number(&self, name: &str, id: &VersionId) -> Result<u64> {
        id.0.parse().map_err(|_| Error::VersionNotFound {
            store: self.label.clone(),
            name: name.to_owned(),
            version: id.0.clone(),
            available: "numeric KV v2 versions".to_owned(),
        })
    }
}

/// Renew at two thirds of the TTL; a TTL of 0 never expires.
fn renew_time(ttl_secs: u64) -> Option<Instant> {
    (ttl_secs > 0).then(|| Instant::now() + Duration::from_secs(ttl_secs * 2 / 3))
}

/// At most this many of the server's errors are kept in an error's text.
const MAX_SERVER_ERRORS: usize = 3;
/// Each kept to this many characters.
const MAX_SERVER_ERROR_CHARS: usize = 120;

/// The server's error list, bounded, or the client error's own text.
/// Vault's errors describe requests, not data, but they are text from the
/// response body, which a proxy in front of Vault (or a server that echoes
/// a request) fills as it likes: only the first [`MAX_SERVER_ERRORS`] are
/// kept, each cut to [`MAX_SERVER_ERROR_CHARS`] characters, control
/// characters replaced, so that a log line stays one bounded line.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } if errors.is_empty() => format!("HTTP {code}"),
        ClientError::APIError { code, errors } => {
            let mut kept: Vec<String> = errors
                .iter()
                .take(MAX_SERVER_ERRORS)
                .map(|e| {
                    let mut cut: String = e
                        .chars()
                        .take(MAX_SERVER_ERROR_CHARS)
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    if e.chars().count() > MAX_SERVER_ERROR_CHARS {
                        cut.push('…');
                    }
                    cut.trim().to_owned()
                })
                .collect();
            if errors.len() > MAX_SERVER_ERRORS {
                kept.push(format!("{} more", errors.len() - MAX_SERVER_ERRORS));
            }
            format!("HTTP {code}: {}", kept.join("; "))
        }
        ClientError::RestClientError { source } => format!("request failed: {source}"),
        other => other.to_string(),
    }
}

/// Rotor's value from a KV v2 data object.
fn value_of(data: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    if data.len() == 1
        && let Some(serde_json::Value::String(s)) = data.get("value")
    {
        return s.clone().into_bytes();
    }
    serde_json::Value::Object(data).to_string().into_bytes()
}

#[async_trait]
impl Store for VaultStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn read(&self, name: &str, selector: &Selector) -> Result<Fetched> {
        let version = match selector {
            Selector::Version(id) => self.number(name, id)?,
            Selector::Current | Selector::Stage(_) => {
                let stage = match selector {
                    Selector::Stage(s) => *s,
                    _ => Stage::Current,
                };
                let (current, labels, latest) = self.labels(name).await?;
                let version =
                    self.stage_of(current, &labels, stage)
                        .ok_or_else(|| Error::StageNotFound {
                            store: self.label.clone(),
                            name: name.to_owned(),
                            stage,
                        })?;
                if let Some(latest) = latest.filter(|l| l.version == version) {
                    return Ok(Fetched {
                        version: version.into(),
                        created_at: None,
                        value: value_of(latest.data).into(),
                    });
                }
                version
            }
        };
        let mount = self.config.mount.as_str();
        let data: serde_json::Map<String, serde_json::Value> =
            call!(self, name, |c| vaultrs::kv2::read_version(
                c, mount, name, version
            ))
            .map_err(|e| match e {
                Error::SecretNotFound { store, name }
                    if matches!(selector, Selector::Version(_)) =>
                {
                    Error::VersionNotFound {
                        store,
                        name,
                        version: version.to_string(),
                        available: "see the secret's metadata".to_owned(),
                    }
                }
                other => other,
            })?;
        Ok(Fetched {
            version: version.into(),
            created_at: None,
            value: value_of(data).into(),
        })
    }

    async fn current_version(&self, name: &str) -> Result<VersionId> {
        let (current, labels, _) = self.labels(name).await?;
        self.stage_of(current, &labels, Stage::Current)
            .map(VersionId::from)
            .ok_or_else(|| Error::SecretNotFound {
                store: self.label.clone(),
                name: name.to_owned(),
            })
    }

    async fn write(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionId> {
        crate::validate_secret_name(name)?;
        let text = std::str::from_utf8(value).map_err(|_| Error::BadValue {
            name: name.to_owned(),
            len: value.len(),
            problem: "Vault KV stores text; expected UTF-8".to_owned(),
        })?;
        let (base, mut labels) = match self.metadata(name).await {
            Ok((current, labels, _)) => (current, labels),
            Err(Error::SecretNotFound { .. }) => (0, HashMap::new()),
            Err(e) => return Err(e),
        };
        let current = self.stage_of(base, &labels, Stage::Current);
        let mount = self.config.mount.as_str();
        let data = zeroize::Zeroizing::new(text.to_owned());
        let body = serde_json::json!({ "value": data.as_str() });
        let options = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas: base as u32 };
        let written = call!(self, name, |c| vaultrs::kv2::set_with_options(
            c,
            mount,
            name,
            &body,
            options.clone()
        ))
        .map_err(|e| match e {
            Error::Malformed {
                store,
                name,
                detail,
            } if detail.contains("check-and-set") => Error::Conflict {
                store,
                name,
                version: (base + 1).to_string(),
                problem: format!("another writer got there first ({detail})"),
            },
            other => other,
        })?;
        let new = written.version;
        match write_as {
            WriteAs::Current => {
                if let Some(c) = current {
                    labels.insert(PREVIOUS.to_owned(), c.to_string());
                }
                labels.insert(CURRENT.to_owned(), new.to_string());
            }
            WriteAs::Pending => {
                // Pin CURRENT explicitly: KV's own current_version is now the pending one.
                if let Some(c) = current {
                    labels.insert(CURRENT.to_owned(), c.to_string());
                }
                labels.insert(PENDING.to_owned(), new.to_string());
            }
        }
        self.set_labels(name, labels).await?;
        Ok(new.into())
    }

    async fn promote(&self, name: &str, version: &VersionId) -> Result<()> {
        let n = self.number(name, version)?;
        let (current_version, mut labels, live) = self.metadata(name).await?;
        if !live.contains(&n) {
            return Err(Error::VersionNotFound {
                store: self.label.clone(),
                name: name.to_owned(),
                version: n.to_string(),
                available: live
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let current = self.stage_of(current_version, &labels, Stage::Current);
        if current == Some(n) {
            return Ok(());
        }
        match current {
            Some(c) => labels.insert(PREVIOUS.to_owned(), c.to_string()),
            None => labels.remove(PREVIOUS),
        };
        labels.insert(CURRENT.to_owned(), n.to_string());
        if labels.get(PENDING).is_some_and(|p| *p == n.to_string()) {
            labels.remove(PENDING);
        }
        self.set_labels(name, labels).await
    }

    async fn retire(&self, name: &str, version: &VersionId) -> Result<()> {
        let n = self.number(name, version)?;
        let (current_version, mut labels, _) = self.metadata(name).await?;
        if self.stage_of(current_version, &labels, Stage::Current) == Some(n) {
            return Err(Error::Conflict {
                store: self.label.clone(),
                name: name.to_owned(),
                version: n.to_string(),
                problem: "is CURRENT and cannot be retired; promote another version first"
                    .to_owned(),
            });
        }
        let mount = self.config.mount.as_str();
        let mode = self.config.retire;
        match mode {
            RetireMode::Destroy => call!(self, name, |c| vaultrs::kv2::destroy_versions(
                c,
                mount,
                name,
                vec![n]
            ))?,
            RetireMode::Delete => call!(self, name, |c| vaultrs::kv2::delete_versions(
                c,
                mount,
                name,
                vec![n]
            ))?,
        }
        let before = labels.len();
        labels.retain(|k, v| !(matches!(k.as_str(), PENDING | PREVIOUS) && *v == n.to_string()));
        if labels.len() != before {
            self.set_labels(name, labels).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod describe_tests {
    use super::*;

    /// A body full of errors (a proxy's page, a server echoing a request)
    /// becomes one bounded line.
    #[test]
    fn the_servers_error_text_is_bounded() {
        let canary_tail = "canary-vault-body-tail";
        let long = format!("{}{canary_tail}", "x".repeat(10_000));
        let errors = vec![
            "permission denied".to_owned(),
            format!("line one\nline two\t{long}"),
            "third".to_owned(),
            "fourth".to_owned(),
            "fifth".to_owned(),
        ];
        let text = describe(&ClientError::APIError { code: 400, errors });
        assert!(
            text.starts_with("HTTP 400: permission denied; line one line two"),
            "{text}"
        );
        assert!(text.ends_with("; third; 2 more"), "{text}");
        assert!(
            !text.contains(canary_tail) && !text.contains('\n'),
            "{text}"
        );
        assert!(
            text.chars().count() < 4 * MAX_SERVER_ERROR_CHARS,
            "{}",
            text.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rotor_fixtures::http_recorder::HttpRecorder;
    use secrecy::SecretString;

    use super::*;
    use crate::token_source::SourceError;

    /// Hands out `jwt-1`, `jwt-2`, ... and counts the calls.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl TokenSource for Counting {
        async fn token(&self) -> Result<SecretString, SourceError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(SecretString::from(format!("jwt-{n}")))
        }
    }

    /// A Vault that logs `jwt-N` in as `t-N`, refuses `t-1` (an expired
    /// login) and answers 404 to `t-2`.
    fn fake_vault() -> HttpRecorder {
        HttpRecorder::start(|request| {
            if request.path.contains("/auth/kubernetes/login") {
                let token = request.json()["jwt"].as_str().unwrap().replace("jwt", "t");
                return (
                    200,
                    serde_json::json!({
                        "request_id": "", "lease_id": "", "lease_duration": 0,
                        "renewable": false, "data": null,
                        "auth": {
                            "client_token": token, "accessor": "", "policies": [],
                            "token_policies": [], "metadata": null,
                            "lease_duration": 3600, "renewable": false,
                            "entity_id": "", "token_type": "service", "orphan": true,
                        },
                    }),
                );
            }
            match request.header("x-vault-token") {
                Some("t-1") => (403, serde_json::json!({"errors": ["permission denied"]})),
                _ => (404, serde_json::json!({"errors": []})),
            }
        })
    }

    #[tokio::test]
    async fn a_login_after_a_refusal_asks_the_source_for_a_new_token() {
        let vault = fake_vault();
        let source = Arc::new(Counting::default());
        let auth = VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "app".into(),
            jwt: source.clone(),
        };
        let store = VaultStore::new(VaultConfig::new(vault.url(), auth)).unwrap();
        let err = store.current_version("db").await.unwrap_err();
        assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");
        let logins: Vec<_> = vault
            .requests()
            .iter()
            .filter(|r| r.path.contains("/login"))
            .map(|r| r.json()["jwt"].clone())
            .collect();
        assert_eq!(logins, ["jwt-1", "jwt-2"]);
        assert_eq!(source.0.load(Ordering::SeqCst), 2);
        // A token is never in the store's Debug output.
        assert!(!format!("{:?}", store.config).contains("jwt-"));
    }

    #[derive(Debug)]
    struct Missing;

    #[async_trait]
    impl TokenSource for Missing {
        async fn token(&self) -> Result<SecretString, SourceError> {
            Err("namespace \"team-a\" has no ServiceAccount \"rotor-rotator\"".into())
        }
    }

    #[tokio::test]
    async fn a_source_without_a_token_is_a_token_error_naming_why() {
        let auth = VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "app".into(),
            jwt: Arc::new(Missing),
        };
        let store = VaultStore::new(VaultConfig::new("http://127.0.0.1:1", auth)).unwrap();
        let err = store.current_version("db").await.unwrap_err();
        assert!(matches!(err, Error::Token { .. }), "{err}");
        assert_eq!(err.metric_label(), "token");
        assert!(
            err.to_string()
                .contains("has no ServiceAccount \"rotor-rotator\""),
            "{err}"
        );
    }
}
