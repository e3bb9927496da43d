//! The Kubernetes store against the fake API server of `rotor-fixtures`
//! (kube's mocked client), whose in-memory Secret API keeps
//! resourceVersions and refuses stale replaces, as the API server does.
//! The stage model runs against a real kube-apiserver in the conformance
//! suite (tests/tests/store_conformance.rs).

use std::collections::BTreeMap;

use rotor_fixtures::api_server::{self, Scenario};

use super::*;

/// A store over the fake API server's in-memory Secrets in `default`.
fn store() -> KubeStore {
    let (client, server) = api_server::pair("default");
    server.run(Scenario::secrets("default"));
    KubeStore::new(client, "default")
}

#[tokio::test]
async fn errors_and_names() {
    let s = store();
    let err = s.read("nope", &Selector::Current).await.err().unwrap();
    assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");
    assert!(err.to_string().contains("kubernetes:default"), "{err}");
    let err = s.read("Team/DB", &Selector::Current).await.err().unwrap();
    assert!(
        err.to_string().contains("is not a Kubernetes Secret name"),
        "{err}"
    );
    let err = s.write("nope", b"x", WriteAs::Pending).await.unwrap_err();
    assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");
}

#[test]
fn multi_key_secrets_read_as_json() {
    let secret = Secret {
        data: Some(BTreeMap::from([
            ("user".to_owned(), ByteString(b"app".to_vec())),
            ("password".to_owned(), ByteString(b"pw".to_vec())),
        ])),
        ..Secret::default()
    };
    let v: serde_json::Value =
        serde_json::from_slice(&value_of("k", "db", &secret).unwrap()).unwrap();
    assert_eq!(v["password"], "pw");
    let binary = Secret {
        data: Some(BTreeMap::from([
            ("a".to_owned(), ByteString(vec![0xff])),
            ("b".to_owned(), ByteString(vec![])),
        ])),
        ..Secret::default()
    };
    assert!(
        value_of("k", "db", &binary)
            .unwrap_err()
            .to_string()
            .contains("is not UTF-8")
    );
}
