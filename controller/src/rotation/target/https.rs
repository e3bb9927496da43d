//! The HTTPS target, for systems Rotor does not know: each step POSTs one
//! [`RotationCall`] (AWS's rotation contract: `Step`, `SecretId`,
//! `ClientRequestToken` = the version, `SecretString` = the value for
//! `setSecret`/`testSecret`) as JSON to the policy's URL, with
//! `Authorization: Bearer <token>` from a [`CallerToken`] whose audience is
//! that URL, so the receiver can check who calls with a TokenReview. The
//! server is verified by [`super::tls`]; each call is bounded by the
//! policy's timeout, and at most [`MAX_REPLY`] bytes of the answer are
//! read. Any answer but 2xx is [`TargetFailure::Rejected`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use rotor_contract::api::HttpsTarget;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::TargetFailure;
use super::tls::{HandshakeFailed, client_config, parse_bundle};
use crate::{Error, Result};

/// The default bound on one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a receiver's answer is read (it is only logged by size).
pub const MAX_REPLY: usize = 64 * 1024;

/// A checked `spec.target.https`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsSpec {
    pub url: String,
    pub ca_bundle: Option<String>,
    pub timeout: Duration,
}

impl HttpsSpec {
    /// The checked target, or every problem, each naming its field.
    pub fn check(t: &HttpsTarget, out: &mut Vec<String>) -> Option<Self> {
        let f = "spec.target.https";
        let before = out.len();
        match t.url.parse::<Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("https")
                    && uri.host().is_some_and(|h| !h.is_empty())
                    && !uri.authority().is_some_and(|a| a.as_str().contains('@'))
                    && t.url.len() <= 2048 => {}
            _ => out.push(format!(
                "{f}.url {:?}: expected an https:// URL with a host and no user info, at most 2048 characters",
                t.url
            )),
        }
        if let Some(pem) = &t.ca_bundle
            && let Err(e) = parse_bundle(&format!("{f}.caBundle"), pem)
        {
            out.push(e);
        }
        let timeout = match &t.timeout {
            None => Some(DEFAULT_TIMEOUT),
            Some(s) => humantime::parse_duration(s)
                .ok()
                .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(60)).contains(d)),
        };
        if timeout.is_none() {
            out.push(format!(
                "{f}.timeout {:?}: expected a duration from 1s to 60s",
                t.timeout.as_deref().unwrap_or_default()
            ));
        }
        (out.len() == before).then(|| Self {
            url: t.url.clone(),
            ca_bundle: t.ca_bundle.clone(),
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }
}

/// AWS's rotation steps, as they go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationStep {
    #[serde(rename = "setSecret")]
    Set,
    #[serde(rename = "testSecret")]
    Test,
    #[serde(rename = "finishSecret")]
    Finish,
}

/// The body of one call, the receiver's contract. No `Debug`: it holds
/// the value, which is zeroized on drop.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationCall {
    pub step: RotationStep,
    pub secret_id: String,
    /// The version the step is about (AWS's ClientRequestToken).
    pub client_request_token: String,
    /// The value, for `setSecret` and `testSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_string: Option<String>,
}

impl Drop for RotationCall {
    fn drop(&mut self) {
        if let Some(s) = &mut self.secret_string {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

/// Who the controller is to a receiver: a bearer token for an audience.
#[async_trait]
pub trait CallerToken: Send + Sync {
    /// A short-lived token whose audience is `audience`.
    async fn token(&self, audience: &str) -> Result<SecretString, TargetFailure>;
}

/// Who the controller is in each namespace: in a cluster, the namespace's
/// rotator ([`crate::identity::Rotators`]). Rotation owns the trait, its
/// implementation lives above it.
pub trait Callers: Send + Sync {
    fn in_namespace(&self, namespace: &str) -> Box<dyn CallerToken>;
}

/// Standalone mode: the token in a file (a projected ServiceAccount token
/// whose audience is the receiver's URL, which the kubelet refreshes), re-read
/// for every call; the audience is the file's business.
#[async_trait]
impl CallerToken for rotor_store::TokenFile {
    async fn token(&self, _audience: &str) -> Result<SecretString, TargetFailure> {
        rotor_store::TokenSource::token(self)
            .await
            .map_err(|_| TargetFailure::NoIdentity)
    }
}

/// A receiver of rotation calls.
#[async_trait]
pub trait Receiver: Send + Sync {
    /// The URL, for Events.
    fn url(&self) -> &str;
    /// Delivers `call`; `Ok` on a 2xx answer.
    async fn call(&self, call: &RotationCall) -> Result<(), TargetFailure>;
}

/// The real receiver over HTTPS.
pub struct Https<'a> {
    spec: HttpsSpec,
    uri: Uri,
    tls: Arc<rustls::ClientConfig>,
    caller: Option<&'a dyn CallerToken>,
}

impl<'a> Https<'a> {
    /// A receiver for `spec`, calling as `caller` (none: every call fails
    /// with [`TargetFailure::NoIdentity`]).
    pub fn new(spec: &HttpsSpec, caller: Option<&'a dyn CallerToken>) -> Result<Self> {
        let tls = client_config("spec.target.https.caBundle", spec.ca_bundle.as_deref())
            .map_err(Error::TargetValue)?;
        let uri = spec
            .url
            .parse()
            .map_err(|_| Error::TargetValue("spec.target.https.url: not a URL".to_owned()))?;
        Ok(Self {
            spec: spec.clone(),
            uri,
            tls,
            caller,
        })
    }

    async fn post(
        &self,
        token: &SecretString,
        body: Zeroizing<Vec<u8>>,
    ) -> Result<(), TargetFailure> {
        let host = self.uri.host().ok_or(TargetFailure::Unreachable)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|_| TargetFailure::Unreachable)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| TargetFailure::Unreachable)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                tracing::debug!(error = %HandshakeFailed(e), url = %self.spec.url, "https target");
                TargetFailure::TlsFailed
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|_| TargetFailure::Unreachable)?;
        tokio::spawn(connection);
        let mut bearer = Zeroizing::new(String::from("Bearer "));
        bearer.push_str(token.expose_secret());
        let mut auth =
            hyper::header::HeaderValue::from_str(&bearer).map_err(|_| TargetFailure::NoIdentity)?;
        auth.set_sensitive(true);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = hyper::Request::post(path)
            .header(
                hyper::header::HOST,
                self.uri.authority().map_or(host, |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, auth)
            .body(Full::new(bytes::Bytes::from(body.to_vec())))
            .map_err(|_| TargetFailure::Other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| TargetFailure::Unreachable)?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection ends cleanly.
        let read = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await;
        tracing::debug!(url = %self.spec.url, status = status.as_u16(), bytes = read.map(|b| b.to_bytes().len()).unwrap_or(MAX_REPLY), "https target answered");
        if status.is_success() {
            Ok(())
        } else {
            Err(TargetFailure::Rejected(status.as_u16()))
        }
    }
}

#[async_trait]
impl Receiver for Https<'_> {
    fn url(&self) -> &str {
        &self.spec.url
    }

    async fn call(&self, call: &RotationCall) -> Result<(), TargetFailure> {
        let caller = self.caller.ok_or(TargetFailure::NoIdentity)?;
        let body = Zeroizing::new(serde_json::to_vec(call).map_err(|_| TargetFailure::Other)?);
        tokio::time::timeout(self.spec.timeout, async {
            let token = caller.token(&self.spec.url).await?;
            self.post(&token, body).await
        })
        .await
        .unwrap_or(Err(TargetFailure::TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, timeout: Option<&str>) -> HttpsTarget {
        HttpsTarget {
            url: url.into(),
            ca_bundle: None,
            timeout: timeout.map(str::to_owned),
        }
    }

    #[test]
    fn urls_and_timeouts_are_checked_naming_the_field() {
        let mut out = Vec::new();
        let ok = HttpsSpec::check(&target("https://rotate.example:8443/hook", None), &mut out);
        assert_eq!(ok.map(|s| s.timeout), Some(DEFAULT_TIMEOUT));
        assert!(out.is_empty());
        for (url, timeout, field) in [
            ("http://rotate.example/", None, "spec.target.https.url"),
            (
                "https://user:pw@rotate.example/",
                None,
                "spec.target.https.url",
            ),
            (
                "https://rotate.example/",
                Some("2m"),
                "spec.target.https.timeout",
            ),
            (
                "https://rotate.example/",
                Some("soon"),
                "spec.target.https.timeout",
            ),
        ] {
            let mut out = Vec::new();
            assert!(HttpsSpec::check(&target(url, timeout), &mut out).is_none());
            assert!(out[0].starts_with(field), "{out:?}");
        }
    }

    #[test]
    fn calls_go_on_the_wire_in_aws_names() {
        let call = RotationCall {
            step: RotationStep::Set,
            secret_id: "app/key".into(),
            client_request_token: "v2".into(),
            secret_string: Some("s3cret".into()),
        };
        let v: serde_json::Value = serde_json::to_value(&call).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Step": "setSecret", "SecretId": "app/key", "ClientRequestToken": "v2", "SecretString": "s3cret"})
        );
    }
}
