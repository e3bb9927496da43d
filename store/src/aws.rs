//! AWS Secrets Manager.
//!
//! # Stages on AWS
//!
//! AWS's own staging labels: CURRENT is `AWSCURRENT`, PENDING is
//! `AWSPENDING`, PREVIOUS is `AWSPREVIOUS`. Versions are AWS version ids
//! (UUIDs). Rotor rotates with `PutSecretValue` (`AWSPENDING`) and
//! `UpdateSecretVersionStage` (moving `AWSCURRENT`, which makes AWS label the
//! old version `AWSPREVIOUS`), never with `RotateSecret`, which needs a
//! Lambda. Reads always name a stage or a version id. Retiring a version
//! removes its labels; AWS deletes unlabelled versions by itself.
//!
//! # Connection
//!
//! Credentials come from the default chain (environment, profile, web
//! identity for IRSA, ECS, IMDS) unless static keys or a [`WebIdentity`]
//! are given. A web identity is IRSA without a file: the role is assumed
//! with `AssumeRoleWithWebIdentity` and a token from a [`TokenSource`],
//! asked for again whenever the credentials are refreshed; the SDK's
//! identity cache keeps the role's credentials until [`REFRESH_BEFORE`]
//! before they expire. STS is reached at the region's endpoint, or at
//! `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` (the SDK's own settings);
//! the store's `endpoint` is for Secrets Manager only, so a store's author
//! never chooses where the token goes. TLS is rustls with ring, like the
//! rest of Rotor. Region and endpoint are settable.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::primitives::Blob;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use ring::rand::SecureRandom;
use secrecy::{ExposeSecret, SecretString};

use crate::token_source::TokenSource;
use crate::{Error, Fetched, Result, Selector, Stage, Store, VersionId, WriteAs};

/// Assumed-role credentials are refreshed this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(120);

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";

fn label(stage: Stage) -> &'static str {
    match stage {
        Stage::Current => CURRENT,
        Stage::Pending => PENDING,
        Stage::Previous => PREVIOUS,
    }
}

/// How to reach Secrets Manager.
#[derive(Default)]
pub struct AwsConfig {
    /// The region; otherwise the default chain's (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// An endpoint override, e.g. a VPC endpoint or a test server.
    pub endpoint: Option<String>,
    /// Static keys instead of the default credential chain.
    pub static_credentials: Option<(String, SecretString)>,
    /// A role assumed with a web identity token instead of the default
    /// credential chain (ignored when static keys are given).
    pub web_identity: Option<WebIdentity>,
}

/// A role to assume with `AssumeRoleWithWebIdentity`, as IRSA does, with
/// the token from a source instead of a file.
#[derive(Debug, Clone)]
pub struct WebIdentity {
    /// `arn:aws:iam::<account>:role/<name>`
    pub role_arn: String,
    /// The session's name, in CloudTrail and in the assumed-role ARN
    /// (at most 64 of `[A-Za-z0-9+=,.@_-]`).
    pub session_name: String,
    /// The web identity token, for audience `sts.amazonaws.com`.
    pub token: Arc<dyn TokenSource>,
}

/// Credentials of the role a [`WebIdentity`] names. Every call assumes the
/// role with a fresh token; the SDK's identity cache decides when to call.
#[derive(Debug)]
struct WebIdentityCredentials {
    sts: aws_sdk_sts::Client,
    identity: WebIdentity,
}

impl WebIdentityCredentials {
    async fn assume(&self) -> aws_credential_types::provider::Result {
        use aws_credential_types::provider::error::CredentialsError;
        let WebIdentity {
            role_arn,
            session_name,
            token,
        } = &self.identity;
        let token = token.token().await.map_err(CredentialsError::not_loaded)?;
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(role_arn)
            .role_session_name(session_name)
            .web_identity_token(token.expose_secret())
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(format!(
                    "AssumeRoleWithWebIdentity {role_arn}: {}",
                    error_chain(&e)
                ))
            })?;
        let c = out.credentials.ok_or_else(|| {
            CredentialsError::unhandled(format!(
                "AssumeRoleWithWebIdentity {role_arn} returned no credentials"
            ))
        })?;
        let expiry = SystemTime::try_from(c.expiration).ok();
        tracing::debug!(role = %role_arn, session = %session_name, "assumed the role with a web identity");
        Ok(aws_sdk_secretsmanager::config::Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            expiry,
            "rotor-web-identity",
        ))
    }
}

impl aws_sdk_secretsmanager::config::ProvideCredentials for WebIdentityCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.assume())
    }
}

pub struct AwsStore {
    client: Client,
    label: String,
}

impl AwsStore {
    pub async fn new(config: AwsConfig) -> Self {
        let AwsConfig {
            region,
            endpoint,
            static_credentials,
            web_identity,
        } = config;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // Callers (the sidecar's engine, the rotation controller) have their
        // own backoff; the SDK only smooths over one transient failure and
        // never holds a call for long.
        let retry = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_millis(500));
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .build();
        let base = || {
            let loader = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http.clone())
                .retry_config(retry.clone())
                .timeout_config(timeouts.clone());
            match &region {
                Some(r) => loader.region(aws_config::Region::new(r.clone())),
                None => loader,
            }
        };
        let mut loader = base().identity_cache(
            aws_sdk_secretsmanager::config::IdentityCache::lazy()
                .buffer_time(REFRESH_BEFORE)
                .build(),
        );
        if let Some(identity) = web_identity.filter(|_| static_credentials.is_none()) {
            // STS without the store's endpoint: see the module docs.
            let sts = aws_sdk_sts::Client::new(&base().load().await);
            loader = loader.credentials_provider(WebIdentityCredentials { sts, identity });
        }
        if let Some(e) = &endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        if let Some((id, secret)) = static_credentials {
            loader = loader.credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                id,
                secret.expose_secret().to_owned(),
                None,
                None,
                "rotor-static",
            ));
        }
        let sdk = loader.load().await;
        let label = format!(
            "aws:{}{}",
            sdk.region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "(no region)".to_owned()),
            endpoint.map(|e| format!("@{e}")).unwrap_or_default()
        );
        Self {
            client: Client::new(&sdk),
            label,
        }
    }

    fn classify<E, R>(&self, name: &str, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let store = self.label.clone();
        let name = name.to_owned();
        match &e {
            SdkError::DispatchFailure(f) => Error::Unreachable {
                store,
                detail: format!(
                    "request not sent: {:?}",
                    f.as_connector_error().map(|c| c.to_string())
                ),
            },
            SdkError::TimeoutError(_) => Error::Unreachable {
                store,
                detail: "timed out".to_owned(),
            },
            SdkError::ServiceError(se) => {
                let err = se.err();
                let code = err.code().unwrap_or("Unknown");
                let detail = format!("{code}: {}", err.message().unwrap_or(""));
                match code {
                    "ResourceNotFoundException" => Error::SecretNotFound { store, name },
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException"
                    | "DecryptionFailure" => Error::PermissionDenied {
                        store,
                        name,
                        detail,
                    },
                    "ThrottlingException"
                    | "TooManyRequestsException"
                    | "LimitExceededException" => Error::Throttled {
                        store,
                        name,
                        detail,
                    },
                    "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
                        Error::Unreachable { store, detail }
                    }
                    _ => Error::Malformed {
                        store,
                        name,
                        detail,
                    },
                }
            }
            other => Error::Malformed {
                store,
                name,
                detail: format!("unexpected response: {}", error_chain(other)),
            },
        }
    }

    /// Version id → its stage labels.
    async fn stages(&self, name: &str) -> Result<Vec<(String, Vec<String>)>> {
        let out = self
            .client
            .describe_secret()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| self.classify(name, e))?;
        Ok(out
            .version_ids_to_stages()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn with_label<'a>(stages: &'a [(String, Vec<String>)], l: &str) -> Option<&'a str> {
        stages
            .iter()
            .find(|(_, labels)| labels.iter().any(|x| x == l))
            .map(|(v, _)| v.as_str())
    }

    async fn move_label(
        &self,
        name: &str,
        l: &str,
        to: Option<&str>,
        from: Option<&str>,
    ) -> Result<()> {
        let mut req = self
            .client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(l);
        if let Some(to) = to {
            req = req.move_to_version_id(to);
        }
        if let Some(from) = from {
            req = req.remove_from_version_id(from);
        }
        req.send().await.map_err(|e| self.classify(name, e))?;
        Ok(())
    }

    fn unknown_version(
        &self,
        name: &str,
        version: &VersionId,
        stages: &[(String, Vec<String>)],
    ) -> Error {
        Error::VersionNotFound {
            store: self.label.clone(),
            name: name.to_owned(),
            version: version.0.clone(),
            available: stages
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A random UUID v4, for idempotent writes.
fn request_token() -> Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Config {
            store: "aws".to_owned(),
            detail: "the random number generator failed".to_owned(),
        })?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[async_trait]
impl Store for AwsStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn read(&self, name: &str, selector: &Selector) -> Result<Fetched> {
        let mut req = self.client.get_secret_value().secret_id(name);
        req = match selector {
            Selector::Current => req.version_stage(CURRENT),
            Selector::Stage(s) => req.version_stage(label(*s)),
            Selector::Version(v) => req.version_id(&v.0),
        };
        let out = req.send().await.map_err(|e| match self.classify(name, e) {
            // A missing stage or version reads as "not found" on AWS.
            Error::SecretNotFound { store, name } => match selector {
                Selector::Stage(stage) => Error::StageNotFound {
                    store,
                    name,
                    stage: *stage,
                },
                Selector::Version(v) => Error::VersionNotFound {
                    store,
                    name,
                    version: v.0.clone(),
                    available: "see DescribeSecret".to_owned(),
                },
                Selector::Current => Error::SecretNotFound { store, name },
            },
            other => other,
        })?;
        let value = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => b.as_ref().to_vec(),
            (None, None) => {
                return Err(Error::Malformed {
                    store: self.label.clone(),
                    name: name.to_owned(),
                    detail: "the version has no value".to_owned(),
                });
            }
        };
        Ok(Fetched {
            version: VersionId(out.version_id().unwrap_or_default().to_owned()),
            created_at: out
                .created_date()
                .and_then(|d| SystemTime::try_from(*d).ok()),
            value: value.into(),
        })
    }

    async fn current_version(&self, name: &str) -> Result<VersionId> {
        let stages = self.stages(name).await?;
        Self::with_label(&stages, CURRENT)
            .map(|v| VersionId(v.to_owned()))
            .ok_or_else(|| Error::SecretNotFound {
                store: self.label.clone(),
                name: name.to_owned(),
            })
    }

    async fn write(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionId> {
        crate::validate_secret_name(name)?;
        let token = request_token()?;
        let text = std::str::from_utf8(value).ok();
        let mut put = self
            .client
            .put_secret_value()
            .secret_id(name)
            .client_request_token(&token)
            .version_stages(match write_as {
                WriteAs::Current => CURRENT,
                WriteAs::Pending => PENDING,
            });
        put = match text {
            Some(t) => put.secret_string(t),
            None => put.secret_binary(Blob::new(value)),
        };
        match put.send().await.map_err(|e| self.classify(name, e)) {
            Ok(out) => Ok(VersionId(out.version_id().unwrap_or(&token).to_owned())),
            Err(Error::SecretNotFound { .. }) if write_as == WriteAs::Current => {
                let mut create = self
                    .client
                    .create_secret()
                    .name(name)
                    .client_request_token(&token);
                create = match text {
                    Some(t) => create.secret_string(t),
                    None => create.secret_binary(Blob::new(value)),
                };
                let out = create.send().await.map_err(|e| self.classify(name, e))?;
                Ok(VersionId(out.version_id().unwrap_or(&token).to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    async fn promote(&self, name: &str, version: &VersionId) -> Result<()> {
        let stages = self.stages(name).await?;
        let Some((_, labels)) = stages.iter().find(|(v, _)| *v == version.0) else {
            return Err(self.unknown_version(name, version, &stages));
        };
        let has_pending = labels.iter().any(|l| l == PENDING);
        let current = Self::with_label(&stages, CURRENT);
        if current != Some(version.0.as_str()) {
            self.move_label(name, CURRENT, Some(&version.0), current)
                .await?;
        }
        if has_pending {
            self.move_label(name, PENDING, None, Some(&version.0))
                .await?;
        }
        Ok(())
    }

    async fn retire(&self, name: &str, version: &VersionId) -> Result<()> {
        let stages = self.stages(name).await?;
        let Some((_, labels)) = stages.iter().find(|(v, _)| *v == version.0) else {
            return Err(self.unknown_version(name, version, &stages));
        };
        if labels.iter().any(|l| l == CURRENT) {
            return Err(Error::Conflict {
                store: self.label.clone(),
                name: name.to_owned(),
                version: version.0.clone(),
                problem: "is AWSCURRENT and cannot be retired; promote another version first"
                    .to_owned(),
            });
        }
        for l in labels.clone() {
            self.move_label(name, &l, None, Some(&version.0)).await?;
        }
        Ok(())
    }
}
