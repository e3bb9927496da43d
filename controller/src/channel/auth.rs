//! Who is on a stream, and what it may ask for.
//!
//! An [`Authority`] turns a bearer token and the sidecar's hello into an
//! [`Admitted`] stream or a refusal ([`Problem`]). In a cluster that is
//! [`ClusterAuthority`]: a TokenReview with Rotor's audience
//! ([`Reviewer`], cached until the token expires by [`CachedReviewer`])
//! gives the pod's name and uid, the pod's own annotations say what it
//! reads, and the store index says whether its namespace may use the store
//! (the webhook's resolution). Standalone uses [`SharedToken`]: one token
//! file shared by the controller and its sidecars.
//!
//! Refusals name the pod and the reason, never the token.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rotor_channel::{ErrorKind, Hello, Problem};
use rotor_contract::annotations::{self, PodSecrets};
use secrecy::{ExposeSecret, SecretString};

use rotor_contract::api::ProviderKind;

use crate::detect::{DetectStores, StoreRef};
use crate::store_index::{SharedStoreIndex, StoreKind};

/// The pod a token was issued for, as the API server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
}

impl Identity {
    /// `namespace/pod`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// A stream allowed in: whose it is, and what it may be asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub identity: Identity,
    pub store: String,
    /// The secrets the stream serves: those the hello named, each declared
    /// by the pod's annotations.
    pub secrets: BTreeSet<String>,
    /// How the pod's namespace reaches `store`: a RotorStore of its own or
    /// a ClusterRotorStore (standalone: always `Namespaced`).
    pub kind: StoreKind,
    /// The pod's refresh interval (`rotor.dev/refresh`): how often the
    /// change detector checks these secrets for it.
    pub refresh: Duration,
    /// Whether the controller checks these secrets for changes and tells
    /// the stream (`crate::detect`); not for Kubernetes Secrets stores,
    /// whose sidecars watch them.
    pub detects: bool,
}

/// Admits or refuses a stream.
#[async_trait]
pub trait Authority: Send + Sync {
    async fn admit(&self, token: &SecretString, hello: &Hello) -> Result<Admitted, Problem>;
}

/// A token's review: whose it is and until when the answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub identity: Identity,
    pub expires: SystemTime,
}

/// Reviews a token (the TokenReview API in a cluster).
#[async_trait]
pub trait Reviewer: Send + Sync {
    async fn review(&self, token: &SecretString) -> Result<Review, Problem>;
}

/// What the controller knows of a pod now.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub uid: String,
    pub secrets: PodSecrets,
}

/// Looks pods up (the API server in a cluster).
#[async_trait]
pub trait Pods: Send + Sync {
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodFacts>, Problem>;
}

/// Admission in a cluster: token review, the pod as it is now, its
/// annotations, and the store index.
pub struct ClusterAuthority<R, P> {
    pub reviewer: R,
    pub pods: P,
    pub stores: SharedStoreIndex,
}

#[async_trait]
impl<R: Reviewer, P: Pods> Authority for ClusterAuthority<R, P> {
    async fn admit(&self, token: &SecretString, hello: &Hello) -> Result<Admitted, Problem> {
        let identity = self.reviewer.review(token).await?.identity;
        let forbidden = |why: String| Problem::new(ErrorKind::Forbidden, why);
        let claimed = &hello.pod;
        if claimed.namespace != identity.namespace || claimed.name != identity.pod {
            return Err(forbidden(format!(
                "the token was issued for pod {}, not {}/{}",
                identity.key(),
                claimed.namespace,
                claimed.name
            )));
        }
        let Some(facts) = self.pods.pod(&identity.namespace, &identity.pod).await? else {
            return Err(forbidden(format!(
                "pod {} no longer exists",
                identity.key()
            )));
        };
        if facts.uid != identity.uid {
            return Err(forbidden(format!(
                "the token was issued for an earlier pod named {} (uid {}), not the one running now",
                identity.key(),
                identity.uid
            )));
        }
        if !facts.secrets.inject {
            return Err(forbidden(format!(
                "pod {} does not ask for injection (rotor.dev/inject)",
                identity.key()
            )));
        }
        if facts.secrets.store.as_deref() != Some(hello.store.as_str()) {
            return Err(forbidden(format!(
                "pod {} does not name store {:?} in rotor.dev/store",
                identity.key(),
                hello.store
            )));
        }
        let declared = facts.secrets.secret_names();
        let undeclared: Vec<&String> = hello
            .secrets
            .iter()
            .filter(|s| !declared.contains(&s.as_str()))
            .collect();
        if !undeclared.is_empty() {
            return Err(Problem::new(
                ErrorKind::UndeclaredSecret,
                format!(
                    "pod {} does not declare {undeclared:?} in its rotor.dev/secret.* annotations",
                    identity.key()
                ),
            ));
        }
        let secrets: Vec<&str> = hello.secrets.iter().map(String::as_str).collect();
        let resolved = self.stores.read().expect("store index lock").resolve(
            &identity.namespace,
            &hello.store,
            &secrets,
        );
        let resolved = resolved.map_err(forbidden)?;
        let detects = !matches!(
            resolved.provider.view(),
            Ok(ProviderKind::Kubernetes(_)) | Err(_)
        );
        Ok(Admitted {
            identity,
            store: hello.store.clone(),
            secrets: hello.secrets.iter().cloned().collect(),
            kind: resolved.kind,
            refresh: facts.secrets.refresh,
            detects,
        })
    }
}

/// Standalone's trust model: whoever holds the token file shared by the
/// controller and its sidecars is trusted to say which pod it is, what it
/// reads and how often (its refresh, within `rotor.dev/refresh`'s bounds).
pub struct SharedToken {
    token: SecretString,
    /// The stores the controller checks for changes, by name; `None`: none.
    detected: Option<Arc<dyn DetectStores>>,
}

impl SharedToken {
    pub fn new(token: SecretString) -> Self {
        Self {
            token,
            detected: None,
        }
    }

    /// Streams reading a store `stores` can check are told the controller
    /// detects their changes ([`Admitted::detects`]).
    pub fn detecting(mut self, stores: Arc<dyn DetectStores>) -> Self {
        self.detected = Some(stores);
        self
    }
}

/// A hello's refresh interval: 0 is the default, else within
/// `rotor.dev/refresh`'s bounds.
pub fn hello_refresh(hello: &Hello) -> Result<Duration, Problem> {
    if hello.refresh_ms == 0 {
        return Ok(annotations::DEFAULT_REFRESH);
    }
    let refresh = Duration::from_millis(hello.refresh_ms);
    if !(annotations::MIN_REFRESH..=annotations::MAX_REFRESH).contains(&refresh) {
        return Err(Problem::new(
            ErrorKind::Malformed,
            format!(
                "the hello's refreshMs is {}; expected {} to {} (rotor.dev/refresh's bounds)",
                hello.refresh_ms,
                annotations::MIN_REFRESH.as_millis(),
                annotations::MAX_REFRESH.as_millis()
            ),
        ));
    }
    Ok(refresh)
}

#[async_trait]
impl Authority for SharedToken {
    async fn admit(&self, token: &SecretString, hello: &Hello) -> Result<Admitted, Problem> {
        // Digests compared, so the time taken says nothing of the token.
        let digest = |t: &SecretString| {
            ring::digest::digest(&ring::digest::SHA256, t.expose_secret().as_bytes())
                .as_ref()
                .to_vec()
        };
        if self.token.expose_secret().is_empty() || digest(token) != digest(&self.token) {
            return Err(Problem::new(
                ErrorKind::Unauthenticated,
                "the token is not the controller's shared token",
            ));
        }
        if hello.pod.namespace.is_empty() || hello.pod.name.is_empty() {
            return Err(Problem::new(
                ErrorKind::Malformed,
                "the hello names no pod: start the sidecar with --pod-namespace and --pod-name",
            ));
        }
        let refresh = hello_refresh(hello)?;
        let identity = Identity {
            namespace: hello.pod.namespace.clone(),
            pod: hello.pod.name.clone(),
            uid: hello.pod.uid.clone(),
        };
        let store = StoreRef {
            namespace: identity.namespace.clone(),
            kind: StoreKind::Namespaced,
            name: hello.store.clone(),
        };
        let detects = self.detected.as_ref().is_some_and(|d| d.detects(&store));
        Ok(Admitted {
            identity,
            store: hello.store.clone(),
            secrets: hello.secrets.iter().cloned().collect(),
            kind: StoreKind::Namespaced,
            refresh,
            detects,
        })
    }
}

/// A [`Reviewer`] whose answers are kept until the token expires (at most
/// `max_entries` of them; past that, answers are not kept). Keyed by the
/// token's SHA-256, so the cache holds no token. Refusals are not kept.
pub struct CachedReviewer<R> {
    inner: R,
    max_entries: usize,
    cache: Mutex<HashMap<[u8; 32], Review>>,
    now: fn() -> SystemTime,
}

impl<R> CachedReviewer<R> {
    pub fn new(inner: R, max_entries: usize) -> Self {
        Self {
            inner,
            max_entries,
            cache: Mutex::new(HashMap::new()),
            now: SystemTime::now,
        }
    }

    fn key(token: &SecretString) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.expose_secret().as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }
}

#[async_trait]
impl<R: Reviewer> Reviewer for CachedReviewer<R> {
    async fn review(&self, token: &SecretString) -> Result<Review, Problem> {
        let key = Self::key(token);
        let now = (self.now)();
        if let Some(hit) = self.cache.lock().expect("review cache lock").get(&key)
            && hit.expires > now
        {
            return Ok(hit.clone());
        }
        let review = self.inner.review(token).await?;
        let mut cache = self.cache.lock().expect("review cache lock");
        cache.retain(|_, r| r.expires > now);
        if cache.len() < self.max_entries {
            cache.insert(key, review.clone());
        }
        Ok(review)
    }
}

/// The TokenReview API, asked for Rotor's audience.
pub struct TokenReviewer {
    pub client: kube::Client,
    pub audience: String,
}

/// The extra fields a pod-bound token's review carries.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

#[async_trait]
impl Reviewer for TokenReviewer {
    async fn review(&self, token: &SecretString) -> Result<Review, Problem> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.expose_secret().to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = api
            .create(&kube::api::PostParams::default(), &request)
            .await
            .map_err(|e| {
                // The error is the API server's; it never echoes the token.
                Problem::new(
                    ErrorKind::Internal,
                    format!("the token could not be reviewed: {e}"),
                )
            })?;
        review_of(
            reviewed.status.unwrap_or_default(),
            &self.audience,
            expiry(token),
        )
    }
}

/// What a TokenReview's status says about a sidecar's token.
pub fn review_of(
    status: k8s_openapi::api::authentication::v1::TokenReviewStatus,
    audience: &str,
    expires: SystemTime,
) -> Result<Review, Problem> {
    let unauthenticated = |why: String| Problem::new(ErrorKind::Unauthenticated, why);
    if status.authenticated != Some(true) {
        return Err(unauthenticated(format!(
            "the token is not valid for audience {audience:?}: {}",
            status
                .error
                .as_deref()
                .unwrap_or("the API server did not accept it")
        )));
    }
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == audience)
    {
        return Err(unauthenticated(format!(
            "the token is not for audience {audience:?}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some(namespace) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_owned())
    else {
        return Err(unauthenticated(format!(
            "the token is {username:?}'s, not a pod's ServiceAccount token"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(pod), Some(uid)) = (first(POD_NAME), first(POD_UID)) else {
        return Err(unauthenticated(format!(
            "the token of {username:?} is not bound to a pod (a projected token is)"
        )));
    };
    Ok(Review {
        identity: Identity {
            namespace,
            pod,
            uid,
        },
        expires,
    })
}

/// When a reviewed JWT expires, from its `exp` claim (read only after the
/// API server accepted it); at most ten minutes from now when it does not
/// say.
pub fn expiry(token: &SecretString) -> SystemTime {
    use base64::Engine as _;
    let fallback = SystemTime::now() + Duration::from_secs(600);
    let Some(payload) = token.expose_secret().split('.').nth(1) else {
        return fallback;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return fallback;
    };
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    match serde_json::from_slice::<Claims>(&bytes) {
        Ok(Claims { exp: Some(exp) }) => SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        _ => fallback,
    }
}

/// Pods from the API server.
pub struct ApiPods {
    pub client: kube::Client,
}

#[async_trait]
impl Pods for ApiPods {
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodFacts>, Problem> {
        use k8s_openapi::api::core::v1::Pod;
        use kube::ResourceExt;
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), namespace);
        let pod = api.get_opt(name).await.map_err(|e| {
            Problem::new(
                ErrorKind::Internal,
                format!("pod {namespace}/{name} could not be read: {e}"),
            )
        })?;
        let Some(pod) = pod else { return Ok(None) };
        let uid = pod.uid().unwrap_or_default();
        let ann = pod.annotations();
        let secrets = annotations::parse(ann.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| {
                Problem::new(
                    ErrorKind::Forbidden,
                    format!("pod {namespace}/{name}'s annotations are not valid: {e}"),
                )
            })?;
        Ok(Some(PodFacts { uid, secrets }))
    }
}

#[cfg(test)]
mod tests;
