//! Admission with a fake reviewer and fake pods: each refusal case once.

use std::sync::{Arc, RwLock};

use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use rotor_channel::PodClaims;

use super::*;
use crate::store_index::StoreIndex;

struct FakeReviewer(Result<Review, Problem>);

#[async_trait]
impl Reviewer for FakeReviewer {
    async fn review(&self, _: &SecretString) -> Result<Review, Problem> {
        self.0.clone()
    }
}

struct FakePods(Option<PodFacts>);

#[async_trait]
impl Pods for FakePods {
    async fn pod(&self, _: &str, _: &str) -> Result<Option<PodFacts>, Problem> {
        Ok(self.0.clone())
    }
}

fn identity() -> Identity {
    Identity {
        namespace: "shop".into(),
        pod: "web-1".into(),
        uid: "uid-1".into(),
    }
}

fn facts(uid: &str) -> PodFacts {
    let secrets = annotations::parse([
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "vault"),
        ("rotor.dev/secret.db", "shop/db"),
    ])
    .unwrap();
    PodFacts {
        uid: uid.into(),
        secrets,
    }
}

fn stores() -> SharedStoreIndex {
    let store: rotor_contract::api::RotorStore = serde_yaml_ng::from_str(
        "apiVersion: rotor.dev/v1alpha1\nkind: RotorStore\nmetadata: {name: vault, namespace: shop}\nspec:\n  provider:\n    local: {path: /x, keyPath: /k}\n",
    )
    .unwrap();
    let mut index = StoreIndex::default();
    index.apply_store(&store);
    Arc::new(RwLock::new(index))
}

fn hello(name: &str, secrets: &[&str]) -> Hello {
    Hello {
        pod: PodClaims {
            namespace: "shop".into(),
            name: name.into(),
            uid: "uid-1".into(),
        },
        store: "vault".into(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        refresh_ms: 0,
    }
}

async fn admit(
    review: Result<Review, Problem>,
    pod: Option<PodFacts>,
    hello: &Hello,
) -> Result<Admitted, Problem> {
    let authority = ClusterAuthority {
        reviewer: FakeReviewer(review),
        pods: FakePods(pod),
        stores: stores(),
    };
    authority
        .admit(&SecretString::from("canary-token-value"), hello)
        .await
}

fn reviewed() -> Result<Review, Problem> {
    Ok(Review {
        identity: identity(),
        expires: SystemTime::now() + Duration::from_secs(600),
    })
}

#[tokio::test]
async fn the_pod_of_the_token_reading_what_it_declares_is_admitted() {
    let admitted = admit(
        reviewed(),
        Some(facts("uid-1")),
        &hello("web-1", &["shop/db"]),
    )
    .await
    .unwrap();
    assert_eq!(admitted.identity, identity());
    assert!(admitted.secrets.contains("shop/db"));
    // The pod's own refresh (its annotation's default here), whatever the
    // hello says; the store as the index resolved it, detected (local).
    assert_eq!(admitted.refresh, annotations::DEFAULT_REFRESH);
    assert_eq!(admitted.kind, StoreKind::Namespaced);
    assert!(admitted.detects);
    let mut claims = hello("web-1", &["shop/db"]);
    claims.refresh_ms = 100;
    let admitted = admit(reviewed(), Some(facts("uid-1")), &claims)
        .await
        .unwrap();
    assert_eq!(admitted.refresh, annotations::DEFAULT_REFRESH);
}

#[tokio::test]
async fn each_refusal_has_its_kind_and_never_the_token() {
    let cases = [
        (
            Err(Problem::new(ErrorKind::Unauthenticated, "wrong audience")),
            Some(facts("uid-1")),
            hello("web-1", &["shop/db"]),
            ErrorKind::Unauthenticated,
        ),
        // Another pod's token.
        (
            reviewed(),
            Some(facts("uid-1")),
            hello("web-2", &["shop/db"]),
            ErrorKind::Forbidden,
        ),
        // A deleted pod, and one re-created under the same name.
        (
            reviewed(),
            None,
            hello("web-1", &["shop/db"]),
            ErrorKind::Forbidden,
        ),
        (
            reviewed(),
            Some(facts("uid-2")),
            hello("web-1", &["shop/db"]),
            ErrorKind::Forbidden,
        ),
        (
            reviewed(),
            Some(facts("uid-1")),
            hello("web-1", &["shop/db", "team-b/db"]),
            ErrorKind::UndeclaredSecret,
        ),
    ];
    for (review, pod, hello, kind) in cases {
        let problem = admit(review, pod, &hello).await.unwrap_err();
        assert_eq!(problem.kind, kind, "{problem}");
        assert!(!problem.message.contains("canary-token-value"), "{problem}");
    }
}

#[test]
fn a_review_gives_the_pod_from_its_extra_fields() {
    let status = |audiences: &[&str], extra: bool| TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        user: Some(UserInfo {
            username: Some("system:serviceaccount:shop:web".into()),
            extra: extra.then(|| {
                [
                    (POD_NAME.to_owned(), vec!["web-1".to_owned()]),
                    (POD_UID.to_owned(), vec!["uid-1".to_owned()]),
                ]
                .into()
            }),
            ..UserInfo::default()
        }),
        ..TokenReviewStatus::default()
    };
    let at = SystemTime::UNIX_EPOCH;
    let review = review_of(
        status(&[rotor_channel::AUDIENCE], true),
        rotor_channel::AUDIENCE,
        at,
    )
    .unwrap();
    assert_eq!(review.identity, identity());
    let wrong = review_of(status(&["vault"], true), rotor_channel::AUDIENCE, at).unwrap_err();
    assert_eq!(wrong.kind, ErrorKind::Unauthenticated);
    let unbound = review_of(
        status(&[rotor_channel::AUDIENCE], false),
        rotor_channel::AUDIENCE,
        at,
    )
    .unwrap_err();
    assert!(unbound.message.contains("not bound to a pod"), "{unbound}");
    let refused = review_of(TokenReviewStatus::default(), rotor_channel::AUDIENCE, at).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Unauthenticated);
}

struct Counting(std::sync::atomic::AtomicUsize, SystemTime);

#[async_trait]
impl Reviewer for Counting {
    async fn review(&self, _: &SecretString) -> Result<Review, Problem> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Review {
            identity: identity(),
            expires: self.1,
        })
    }
}

#[tokio::test]
async fn reviews_are_cached_until_the_token_expires() {
    let live = CachedReviewer::new(
        Counting(0.into(), SystemTime::now() + Duration::from_secs(600)),
        16,
    );
    let token = SecretString::from("t");
    for _ in 0..3 {
        live.review(&token).await.unwrap();
    }
    assert_eq!(live.inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    let expired = CachedReviewer::new(Counting(0.into(), SystemTime::UNIX_EPOCH), 16);
    for _ in 0..3 {
        expired.review(&token).await.unwrap();
    }
    assert_eq!(expired.inner.0.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// The fake clock of [`an_expired_token_is_refused_once_its_review_lapses`],
/// in seconds since the epoch.
static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);

fn fake_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(CLOCK.load(std::sync::atomic::Ordering::SeqCst))
}

/// The API server as it treats a token that expires at `exp`: accepted
/// before, refused after (as TokenReview answers an expired token).
struct ExpiringAt(u64);

#[async_trait]
impl Reviewer for ExpiringAt {
    async fn review(&self, _: &SecretString) -> Result<Review, Problem> {
        let now = CLOCK.load(std::sync::atomic::Ordering::SeqCst);
        let status = if now < self.0 {
            TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec![rotor_channel::AUDIENCE.to_owned()]),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:shop:app".into()),
                    extra: Some(
                        [
                            (POD_NAME.to_owned(), vec!["app-1".to_owned()]),
                            (POD_UID.to_owned(), vec!["uid-1".to_owned()]),
                        ]
                        .into(),
                    ),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }
        } else {
            TokenReviewStatus {
                authenticated: Some(false),
                error: Some("[invalid bearer token, service account token has expired]".into()),
                ..TokenReviewStatus::default()
            }
        };
        review_of(
            status,
            rotor_channel::AUDIENCE,
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.0),
        )
    }
}

/// An expired token: admitted while it is valid (and cached until its
/// `exp`), refused once the clock passes `exp`, because the cached answer
/// lapses and the API server refuses the token; the refusal says why and
/// never holds the token.
#[tokio::test]
async fn an_expired_token_is_refused_once_its_review_lapses() {
    let exp = CLOCK.load(std::sync::atomic::Ordering::SeqCst) + 600;
    let authority = ClusterAuthority {
        reviewer: CachedReviewer {
            now: fake_now,
            ..CachedReviewer::new(ExpiringAt(exp), 16)
        },
        pods: FakePods(Some(facts("uid-1"))),
        stores: stores(),
    };
    let token = SecretString::from("header.payload-canary.signature");
    let hello = hello("app-1", &["shop/db"]);
    authority.admit(&token, &hello).await.unwrap();
    CLOCK.store(exp - 1, std::sync::atomic::Ordering::SeqCst);
    authority.admit(&token, &hello).await.unwrap();
    CLOCK.store(exp + 1, std::sync::atomic::Ordering::SeqCst);
    let refused = authority.admit(&token, &hello).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Unauthenticated);
    assert!(refused.message.contains("expired"), "{refused}");
    assert!(!refused.message.contains("payload-canary"), "{refused}");
}

/// Standalone trusts the hello's refresh within `rotor.dev/refresh`'s
/// bounds, and says a store it detects in the admission.
#[tokio::test]
async fn the_shared_token_takes_a_bounded_refresh_and_says_what_it_detects() {
    struct Detects;
    #[async_trait]
    impl DetectStores for Detects {
        async fn store_for(
            &self,
            _: &StoreRef,
            _: &str,
        ) -> crate::Result<Arc<dyn rotor_store::Store>> {
            unreachable!()
        }
        fn detects(&self, store: &StoreRef) -> bool {
            store.name == "vault"
        }
    }
    let token = SecretString::from("t".repeat(40));
    let authority = SharedToken::new(token.clone()).detecting(Arc::new(Detects));
    let mut h = hello("a", &["db"]);
    let admitted = authority.admit(&token, &h).await.unwrap();
    assert_eq!(admitted.refresh, annotations::DEFAULT_REFRESH);
    assert!(admitted.detects);
    h.refresh_ms = 5_000;
    let admitted = authority.admit(&token, &h).await.unwrap();
    assert_eq!(admitted.refresh, Duration::from_secs(5));
    h.store = "k8s".into();
    assert!(!authority.admit(&token, &h).await.unwrap().detects);
    for bad in [50, 25 * 3600 * 1000] {
        h.refresh_ms = bad;
        let problem = authority.admit(&token, &h).await.unwrap_err();
        assert_eq!(problem.kind, ErrorKind::Malformed);
        assert!(problem.message.contains("refreshMs"), "{problem}");
    }
    // Without detection, nothing is detected.
    h = hello("a", &["db"]);
    assert!(
        !SharedToken::new(token.clone())
            .admit(&token, &h)
            .await
            .unwrap()
            .detects
    );
}
