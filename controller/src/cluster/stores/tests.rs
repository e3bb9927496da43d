//! Resolution on every call and the cache's keys, against an in-memory
//! store index (no API): nothing a policy may not use is ever handed out,
//! whatever the cache holds.

use k8s_openapi::api::core::v1::Namespace;
use rotor_contract::api::{
    ClusterRotorStore, Generator, RotorStore, Schedule, SecretKeyRef, SecretRotationPolicySpec,
    StoreRef,
};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestStatus};
use rotor_fixtures::api_server::{Scenario, pair};

use super::*;
use crate::Error;
use crate::cluster::watch::IndexResource;
use crate::store_index::Refusal;

/// team-a may use the shared store for `team-a/*` only.
fn shared(generation: i64, uid: &str) -> ClusterRotorStore {
    let mut s: ClusterRotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "ClusterRotorStore",
        "metadata": { "name": "shared" },
        "spec": {
            "allowedNamespaces": { "matchLabels": { "rotor.dev/shared": "yes" } },
            "paths": [{ "namespace": "team-a", "patterns": ["team-a/*"] }],
            "provider": { "vault": {
                "server": "http://127.0.0.1:1",
                "auth": { "kubernetes": { "role": "rotor" } },
            } },
        },
    }))
    .unwrap();
    s.metadata.generation = Some(generation);
    s.metadata.uid = Some(uid.into());
    s
}

fn namespace(labels: serde_json::Value) -> Namespace {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "team-a", "labels": labels },
    }))
    .unwrap()
}

fn policy(store: &str, secret: &str) -> SecretRotationPolicy {
    let mut p = SecretRotationPolicy::new(
        "db",
        SecretRotationPolicySpec {
            store_ref: StoreRef {
                name: store.into(),
                kind: "ClusterRotorStore".into(),
            },
            secret_name: secret.into(),
            schedule: Schedule::default(),
            generator: Generator {
                password: None,
                random_bytes: None,
                key_pair: None,
            },
            strategy: Default::default(),
            target: None,
            sidecars: vec![],
            paused: false,
        },
    );
    p.metadata.namespace = Some("team-a".into());
    p
}

fn stores() -> ClusterStores {
    let index = SharedStoreIndex::default();
    {
        let mut i = index.write().unwrap();
        i.apply(&namespace(serde_json::json!({ "rotor.dev/shared": "yes" })));
        i.apply(&shared(1, "u1"));
    }
    // A fake API server that issues every rotator token asked for.
    let (client, server) = pair("default");
    server.run(Scenario::echo(&TokenRequest {
        status: Some(TokenRequestStatus {
            token: "rotator-token".into(),
            expiration_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                chrono::Utc::now(),
            ),
        }),
        ..TokenRequest::default()
    }));
    ClusterStores::new(index, Rotators::new(client, "rotor-rotator"))
}

async fn refusal(stores: &ClusterStores, policy: &SecretRotationPolicy) -> Refusal {
    match stores.store(policy).await {
        Err(Error::StoreRefused(r)) => r,
        Err(e) => panic!("another error: {e}"),
        Ok(s) => panic!("handed out {}", s.describe()),
    }
}

#[tokio::test]
async fn a_forbidden_path_is_refused_whether_or_not_an_allowed_one_filled_the_cache() {
    // Allowed first, then forbidden; and forbidden first, then allowed.
    for allowed_first in [true, false] {
        let stores = stores();
        let allowed = policy("shared", "team-a/db");
        let forbidden = policy("shared", "team-b/db");
        if allowed_first {
            stores.store(&allowed).await.unwrap();
        }
        assert!(
            matches!(
                refusal(&stores, &forbidden).await,
                Refusal::PathNotAllowed { ref secret, .. } if secret == "team-b/db"
            ),
            "allowed first: {allowed_first}"
        );
        stores.store(&allowed).await.unwrap();
        assert!(matches!(
            refusal(&stores, &forbidden).await,
            Refusal::PathNotAllowed { .. }
        ));
    }
}

#[tokio::test]
async fn a_label_removed_or_a_store_deleted_refuses_the_next_step() {
    let stores = stores();
    let p = policy("shared", "team-a/db");
    stores.store(&p).await.unwrap();
    assert_eq!(stores.cached().await, 1);

    stores
        .index
        .write()
        .unwrap()
        .apply(&namespace(serde_json::json!({})));
    assert!(matches!(
        refusal(&stores, &p).await,
        Refusal::NamespaceNotAllowed { .. }
    ));
    assert_eq!(stores.cached().await, 0, "a refusal drops the built store");

    let relabelled = namespace(serde_json::json!({ "rotor.dev/shared": "yes" }));
    stores.index.write().unwrap().apply(&relabelled);
    stores.store(&p).await.unwrap();
    stores.index.write().unwrap().delete(&shared(1, "u1"));
    assert!(matches!(
        refusal(&stores, &p).await,
        Refusal::NotFound { .. }
    ));
}

#[tokio::test]
async fn a_built_store_is_reused_only_for_the_same_revision_and_provider() {
    let stores = stores();
    let p = policy("shared", "team-a/db");
    let first = stores.store(&p).await.unwrap();
    let again = stores.store(&p).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "same revision: reused");

    // The same name, created again (another uid): built again.
    stores.index.write().unwrap().apply(&shared(1, "u2"));
    let recreated = stores.store(&p).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &recreated));

    // A new generation with another server: built again, for that server.
    let mut moved = shared(2, "u2");
    moved.spec.provider.vault.as_mut().unwrap().server = "http://127.0.0.1:2".into();
    stores.index.write().unwrap().apply(&moved);
    let rebuilt = stores.store(&p).await.unwrap();
    assert!(!Arc::ptr_eq(&recreated, &rebuilt));
    assert!(
        rebuilt.describe().contains("127.0.0.1:2"),
        "{}",
        rebuilt.describe()
    );
    assert_eq!(
        stores.cached().await,
        1,
        "one entry per namespace and store"
    );
}

#[tokio::test]
async fn kinds_rotation_cannot_reach_are_unsupported() {
    let stores = stores();
    for provider in [
        serde_json::json!({ "kubernetes": {} }),
        serde_json::json!({ "local": { "path": "/s", "keyPath": "/k" } }),
    ] {
        let store: RotorStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1",
            "kind": "RotorStore",
            "metadata": { "name": "own", "namespace": "team-a" },
            "spec": { "provider": provider },
        }))
        .unwrap();
        stores.index.write().unwrap().apply(&store);
        match stores.store(&policy("own", "anything")).await {
            Err(e @ Error::UnsupportedStore { .. }) => {
                assert!(e.to_string().contains("vault and aws"), "{e}")
            }
            Err(e) => panic!("another error: {e}"),
            Ok(s) => panic!("handed out {}", s.describe()),
        }
    }
    // A ClusterRotorStore with Secret-based auth is refused by the index.
    let mut secret_auth = shared(3, "u1");
    let vault = secret_auth.spec.provider.vault.as_mut().unwrap();
    vault.auth.kubernetes = None;
    vault.auth.token_secret_ref = Some(SecretKeyRef {
        name: "vault-token".into(),
        key: "token".into(),
    });
    stores.index.write().unwrap().apply(&secret_auth);
    assert!(matches!(
        refusal(&stores, &policy("shared", "team-a/db")).await,
        Refusal::SecretAuth { .. }
    ));
}

/// One limiter per store object: reused while its revision holds (every
/// namespace of a ClusterRotorStore shares its budget), new with a new
/// revision; a budget that cannot work is refused naming its field.
#[tokio::test]
async fn the_limiter_is_the_store_objects_and_follows_its_revision() {
    let stores = stores();
    let resolved = |budget: Option<rotor_contract::api::StoreBudget>| Resolved {
        kind: StoreKind::Cluster,
        name: "shared".into(),
        provider: shared(1, "u1").spec.provider,
        allow_exec_reload: false,
        budget,
    };
    let revision = |generation| Revision {
        uid: Some("u1".into()),
        generation: Some(generation),
    };
    let first = stores.limiter(&resolved(None), &revision(1)).unwrap();
    let again = stores.limiter(&resolved(None), &revision(1)).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let budget = rotor_contract::api::StoreBudget {
        requests_per_second: 5,
        burst: None,
    };
    let next = stores
        .limiter(&resolved(Some(budget.clone())), &revision(2))
        .unwrap();
    assert!(!Arc::ptr_eq(&first, &next));
    let zero = rotor_contract::api::StoreBudget {
        requests_per_second: 0,
        ..budget
    };
    let err = stores
        .limiter(&resolved(Some(zero)), &revision(3))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("spec.budget.requestsPerSecond is 0"),
        "{err}"
    );
}
