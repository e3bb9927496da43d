//! The Kubernetes store against the fake API server of `rotor-fixtures`
//! (kube's mocked client), whose in-memory Secret API keeps
//! resourceVersions and refuses stale replaces, as the API server does.

use std::collections::BTreeMap;

use rotor_envelope::ExposeSecret;
use rotor_fixtures::api_server::{self, Scenario};

use super::*;

/// A store over the fake API server's in-memory Secrets in `default`.
fn store() -> KubeStore {
    let (client, server) = api_server::pair("default");
    server.run(Scenario::secrets("default"));
    KubeStore::new(client, "default")
}

async fn text(s: &KubeStore, name: &str, sel: Selector) -> String {
    String::from_utf8(
        s.read(name, &sel)
            .await
            .unwrap()
            .value
            .expose_secret()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn stages_live_in_companion_secrets() {
    let s = store();
    assert_eq!(
        s.write("db", b"one", WriteAs::Current).await.unwrap(),
        VersionId::from(1)
    );
    assert_eq!(
        s.write("db", b"two", WriteAs::Current).await.unwrap(),
        VersionId::from(2)
    );
    assert_eq!(text(&s, "db", Selector::Current).await, "two");
    assert_eq!(
        text(&s, "db", Selector::Stage(Stage::Previous)).await,
        "one"
    );
    let pending = s.write("db", b"three", WriteAs::Pending).await.unwrap();
    assert_eq!(pending, VersionId::from(3));
    assert_eq!(s.current_version("db").await.unwrap(), VersionId::from(2));
    assert_eq!(text(&s, "db", Selector::Version(3.into())).await, "three");
    s.promote("db", &pending).await.unwrap();
    s.promote("db", &pending).await.unwrap();
    assert_eq!(s.current_version("db").await.unwrap(), VersionId::from(3));
    assert_eq!(
        text(&s, "db", Selector::Stage(Stage::Previous)).await,
        "two"
    );
    assert!(matches!(
        s.read("db", &Selector::Stage(Stage::Pending))
            .await
            .err()
            .unwrap(),
        Error::StageNotFound { .. }
    ));
    s.retire("db", &VersionId::from(2)).await.unwrap();
    assert!(
        s.read("db", &Selector::Stage(Stage::Previous))
            .await
            .is_err()
    );
    let err = s.retire("db", &VersionId::from(3)).await.unwrap_err();
    assert!(err.to_string().contains("is CURRENT"), "{err}");
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
