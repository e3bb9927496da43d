//! The identity rotation acts as in a cluster: the policy's namespace's
//! rotator ServiceAccount (`rotor-rotator` unless `--rotator-service-account`
//! says otherwise), never the controller's own.
//!
//! For every store login the controller asks the TokenRequest API
//! (`POST /api/v1/namespaces/<ns>/serviceaccounts/<rotator>/token`) for a
//! short-lived token bound to the store's audience (the Vault role's, or
//! `sts.amazonaws.com`), and the store logs in with it: Vault Kubernetes auth
//! with the store's role, or AWS `AssumeRoleWithWebIdentity` with the store's
//! `roleArn`. So what a policy can write is what the store grants its
//! namespace's rotator, whatever the store's author names. The controller's
//! RBAC allows `create` on `serviceaccounts/token` for that one name only,
//! and it holds no store credential of its own.
//!
//! A namespace opts in by creating the account; without it, every store of
//! the namespace fails to build with [`Error::RotatorMissing`], which says
//! what to create. Tokens are [`SecretString`]s, kept in memory only, for at
//! most half their lifetime, and never logged or put into an error.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use rotor_store::{SourceError, TokenSource};
use secrecy::SecretString;
use tokio::time::Instant;

use crate::{Error, Result};

/// How long a requested token lasts (the TokenRequest API's minimum).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// The rotator accounts of every namespace.
#[derive(Clone)]
pub struct Rotators {
    client: kube::Client,
    service_account: String,
}

impl Rotators {
    /// Rotators named `service_account`, whose tokens `client` requests.
    pub fn new(client: kube::Client, service_account: impl Into<String>) -> Self {
        Self {
            client,
            service_account: service_account.into(),
        }
    }

    /// The rotator of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Rotator {
        Rotator {
            client: self.client.clone(),
            namespace: namespace.to_owned(),
            service_account: self.service_account.clone(),
        }
    }
}

impl std::fmt::Debug for Rotators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotators")
            .field("service_account", &self.service_account)
            .finish_non_exhaustive()
    }
}

/// One namespace's rotator ServiceAccount.
#[derive(Clone)]
pub struct Rotator {
    client: kube::Client,
    namespace: String,
    service_account: String,
}

impl Rotator {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// `system:serviceaccount:<ns>:<name>`: the token's subject.
    pub fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The AWS role session name: `rotor-<namespace>`, at most 64
    /// characters.
    pub fn session_name(&self) -> String {
        format!("rotor-{}", self.namespace)
            .chars()
            .take(64)
            .collect()
    }

    /// Tokens of this account for `audience`.
    pub fn tokens(&self, audience: &str) -> Arc<RotatorTokens> {
        Arc::new(RotatorTokens {
            rotator: self.clone(),
            audience: audience.to_owned(),
            last: tokio::sync::Mutex::new(None),
        })
    }
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("namespace", &self.namespace)
            .field("service_account", &self.service_account)
            .finish_non_exhaustive()
    }
}

/// A [`TokenSource`] of one rotator and audience: a new token from the
/// TokenRequest API when the last one is past half its lifetime.
pub struct RotatorTokens {
    rotator: Rotator,
    audience: String,
    /// The last token and when it was requested.
    last: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
}

impl RotatorTokens {
    /// A token that has at least half its lifetime left.
    pub async fn token_now(&self) -> Result<SecretString> {
        let mut last = self.last.lock().await;
        if let Some((token, at)) = &*last
            && at.elapsed() < TOKEN_LIFETIME / 2
        {
            return Ok(token.clone());
        }
        let at = Instant::now();
        let token = self.request().await?;
        *last = Some((token.clone(), at));
        Ok(token)
    }

    async fn request(&self) -> Result<SecretString> {
        let Rotator {
            client,
            namespace,
            service_account,
        } = &self.rotator;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.audience.clone()],
                expiration_seconds: Some(TOKEN_LIFETIME.as_secs() as i64),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let failed = |problem: String| Error::RotatorToken {
            namespace: namespace.clone(),
            service_account: service_account.clone(),
            audience: self.audience.clone(),
            problem,
        };
        let reply = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .map_err(|e| match e {
                kube::Error::Api(r) if r.code == 404 => Error::RotatorMissing {
                    namespace: namespace.clone(),
                    service_account: service_account.clone(),
                },
                kube::Error::Api(r) if r.code == 403 => failed(format!(
                    "forbidden ({}): the controller's ClusterRole must allow create on \
                     serviceaccounts/token for resourceNames [{service_account}]",
                    r.message
                )),
                other => failed(other.to_string()),
            })?;
        let token = reply
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| failed("the API server returned no token".to_owned()))?;
        tracing::debug!(%namespace, %service_account, audience = %self.audience, "requested a rotator token");
        Ok(SecretString::from(token))
    }
}

impl std::fmt::Debug for RotatorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatorTokens")
            .field("namespace", &self.rotator.namespace)
            .field("service_account", &self.rotator.service_account)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenSource for RotatorTokens {
    async fn token(&self) -> Result<SecretString, SourceError> {
        Ok(self.token_now().await?)
    }
}

/// An https rotation target receives a token of the rotator whose audience
/// is the target's URL.
#[async_trait::async_trait]
impl crate::rotation::target::https::CallerToken for Rotator {
    async fn token(
        &self,
        audience: &str,
    ) -> Result<SecretString, crate::rotation::target::TargetFailure> {
        self.tokens(audience).token_now().await.map_err(|error| {
            tracing::warn!(namespace = %self.namespace, %audience, %error, "no rotator token for an https target");
            crate::rotation::target::TargetFailure::NoIdentity
        })
    }
}

impl crate::rotation::target::https::Callers for Rotators {
    fn in_namespace(
        &self,
        namespace: &str,
    ) -> Box<dyn crate::rotation::target::https::CallerToken> {
        Box::new(Rotators::in_namespace(self, namespace))
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use k8s_openapi::api::authentication::v1::TokenRequestStatus;
    use rotor_fixtures::api_server::{Exchange, Reply, Scenario, pair};
    use secrecy::ExposeSecret;

    use super::*;

    const PATH: &str = "/api/v1/namespaces/team-a/serviceaccounts/rotor-rotator/token";

    fn issued(token: &str) -> Reply {
        Reply::created(&TokenRequest {
            status: Some(TokenRequestStatus {
                token: token.to_owned(),
                expiration_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    chrono::Utc::now(),
                ),
            }),
            ..TokenRequest::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_requested_for_the_audience_and_renewed_at_half_its_life() {
        let (client, server) = pair("default");
        let seen = server.run(Scenario::Script(vec![
            Exchange::expect(Method::POST, PATH).reply(issued("canary-token-1")),
            Exchange::expect(Method::POST, PATH).reply(issued("canary-token-2")),
        ]));
        let rotator = Rotators::new(client, "rotor-rotator").in_namespace("team-a");
        assert_eq!(
            rotator.subject(),
            "system:serviceaccount:team-a:rotor-rotator"
        );
        let tokens = rotator.tokens("vault");
        assert_eq!(
            tokens.token().await.unwrap().expose_secret(),
            "canary-token-1"
        );
        tokio::time::advance(TOKEN_LIFETIME / 2 - Duration::from_secs(1)).await;
        assert_eq!(
            tokens.token().await.unwrap().expose_secret(),
            "canary-token-1"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            tokens.token().await.unwrap().expose_secret(),
            "canary-token-2"
        );
        let debug = format!("{tokens:?} {rotator:?}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(
            debug.contains("team-a") && debug.contains("vault"),
            "{debug}"
        );
        let seen = seen.finished().await;
        assert_eq!(seen.len(), 2);
        for request in seen {
            assert_eq!(
                request.body["spec"]["audiences"],
                serde_json::json!(["vault"])
            );
            assert_eq!(request.body["spec"]["expirationSeconds"], 600);
            assert!(request.body["spec"]["boundObjectRef"].is_null());
        }
    }

    #[tokio::test]
    async fn a_missing_account_says_what_to_create() {
        let (client, server) = pair("default");
        let _seen = server.run(Scenario::Script(vec![
            Exchange::expect(Method::POST, PATH).reply(Reply::not_found()),
        ]));
        let tokens = Rotators::new(client, "rotor-rotator")
            .in_namespace("team-a")
            .tokens("sts.amazonaws.com");
        let err = tokens.token_now().await.unwrap_err();
        assert!(matches!(err, Error::RotatorMissing { .. }), "{err}");
        assert_eq!(err.metric_label(), "rotator_missing");
        let text = err.to_string();
        for part in [
            "namespace \"team-a\" has no ServiceAccount \"rotor-rotator\"",
            "kubectl -n team-a create serviceaccount rotor-rotator",
        ] {
            assert!(text.contains(part), "{text}");
        }
        // Through the store's trait, the same text.
        let (client, server) = pair("default");
        let _seen = server.run(Scenario::Script(vec![
            Exchange::expect(Method::POST, PATH).reply(Reply::not_found()),
        ]));
        let tokens = Rotators::new(client, "rotor-rotator")
            .in_namespace("team-a")
            .tokens("vault");
        assert_eq!(tokens.token().await.unwrap_err().to_string(), text);
    }

    #[tokio::test]
    async fn a_refusal_names_the_rule_the_controller_needs() {
        let (client, server) = pair("default");
        let _seen = server.run(Scenario::Script(vec![
            Exchange::expect(Method::POST, PATH).reply(Reply::failure(403, "Forbidden")),
            Exchange::expect(Method::POST, PATH).reply(issued("")),
        ]));
        let tokens = Rotators::new(client, "rotor-rotator")
            .in_namespace("team-a")
            .tokens("vault");
        let err = tokens.token_now().await.unwrap_err().to_string();
        assert!(
            err.contains("ServiceAccount team-a/rotor-rotator (audience \"vault\")")
                && err.contains("resourceNames [rotor-rotator]"),
            "{err}"
        );
        let err = tokens.token_now().await.unwrap_err().to_string();
        assert!(err.contains("returned no token"), "{err}");
    }
}
