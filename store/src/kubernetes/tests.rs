//! The Kubernetes store against kube's mocked client (tower-test), with a
//! small in-memory Secret API behind it that keeps resourceVersions and
//! refuses stale replaces, as the API server does.

use std::collections::BTreeMap;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use rotor_envelope::ExposeSecret;

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("fake: {reason}"), "reason": reason, "code": code
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(secret: &Secret, code: StatusCode) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(secret).unwrap()))
        .unwrap()
}

/// Serves Secrets in namespace `default` from memory.
async fn fake_api(mut handle: Handle) {
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    let mut rv = 100u64;
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let rest = path
            .strip_prefix("/api/v1/namespaces/default/secrets")
            .expect("only Secrets in default");
        let name = rest.trim_start_matches('/').to_owned();
        let response = match method.as_str() {
            "GET" => match secrets.get(&name) {
                Some(s) => ok(s, StatusCode::OK),
                None => status(404, "NotFound"),
            },
            "POST" => {
                let mut s: Secret = serde_json::from_slice(&body).unwrap();
                let n = s.metadata.name.clone().unwrap();
                match secrets.entry(n) {
                    std::collections::btree_map::Entry::Occupied(_) => status(409, "AlreadyExists"),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        rv += 1;
                        s.metadata.resource_version = Some(rv.to_string());
                        slot.insert(s.clone());
                        ok(&s, StatusCode::CREATED)
                    }
                }
            }
            "PUT" => {
                let mut s: Secret = serde_json::from_slice(&body).unwrap();
                match secrets.get(&name) {
                    None => status(404, "NotFound"),
                    Some(old) if old.metadata.resource_version != s.metadata.resource_version => {
                        status(409, "Conflict")
                    }
                    Some(_) => {
                        rv += 1;
                        s.metadata.resource_version = Some(rv.to_string());
                        secrets.insert(name, s.clone());
                        ok(&s, StatusCode::OK)
                    }
                }
            }
            "DELETE" => match secrets.remove(&name) {
                Some(s) => ok(&s, StatusCode::OK),
                None => status(404, "NotFound"),
            },
            other => panic!("unexpected {other} {path}"),
        };
        send.send_response(response);
    }
}

fn store() -> KubeStore {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(fake_api(handle));
    KubeStore::new(kube::Client::new(service, "default"), "default")
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
