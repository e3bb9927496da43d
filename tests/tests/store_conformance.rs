//! The store conformance suite (`rotor_e2e::conformance`) against every
//! store: the local store, OpenBao (KV v2), moto (AWS Secrets Manager) and
//! Kubernetes Secrets on a real kube-apiserver. After the suite, each test
//! checks what only its store does.

use std::sync::Arc;

use rotor_e2e::cluster::ControlPlane;
use rotor_e2e::conformance::{missing_secret, stages};
use rotor_e2e::servers::{Bao, Moto};
use rotor_envelope::KeyFileKek;
use rotor_store::{
    Error, KubeStore, LocalStore, Selector, Stage, Store, VaultAuth, VaultConfig, VaultStore,
    VersionId, WriteAs,
};

fn numbered(versions: &[VersionId; 3]) -> bool {
    *versions == [1, 2, 3].map(VersionId::from)
}

#[tokio::test]
async fn local_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new(
        dir.path().join("store.rotor"),
        Arc::new(KeyFileKek::from_bytes(&[7; 32])),
    );
    let run = stages(&s, "app/db").await;
    assert!(numbered(&run.versions));
    let err = run.retire_current.to_string();
    assert!(err.contains("is CURRENT and cannot be retired"), "{err}");
    missing_secret(&s, "nope").await;
}

#[tokio::test]
async fn openbao_kv_v2() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "root\n").unwrap();
    let s = VaultStore::new(VaultConfig::new(bao.addr(), VaultAuth::TokenFile(token))).unwrap();
    let run = stages(&s, "app/db").await;
    assert!(numbered(&run.versions));
    // Retire destroys the version itself.
    assert!(
        s.read("app/db", &Selector::Version(2.into()))
            .await
            .is_err()
    );
    let err = run.retire_current.to_string();
    assert!(err.contains("is CURRENT and cannot be retired"), "{err}");
    // A pending version is KV's newest; the stages live in KV metadata.
    let pending = s.write("app/db", b"four", WriteAs::Pending).await.unwrap();
    assert_eq!(pending, VersionId::from(4));
    let meta = bao.api("GET", "secret/metadata/app/db", "");
    assert!(
        meta.contains("\"rotor-pending\":\"4\"") && meta.contains("\"rotor-current\":\"3\""),
        "{meta}"
    );

    missing_secret(&s, "nope").await;
    let err = s.read("nope", &Selector::Current).await.err().unwrap();
    assert!(err.to_string().contains(&bao.addr()), "{err}");
}

#[tokio::test]
async fn moto_secrets_manager() {
    let moto = Moto::start();
    let s = moto.store().await;
    let run = stages(&s, "app/db").await;
    // Retire takes the version's labels: PREVIOUS is gone as a stage.
    let err = s
        .read("app/db", &Selector::Stage(Stage::Previous))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::StageNotFound { .. }), "{err}");
    let err = run.retire_current.to_string();
    assert!(err.contains("is AWSCURRENT and cannot be retired"), "{err}");

    missing_secret(&s, "missing").await;
    let err = s.read("missing", &Selector::Current).await.err().unwrap();
    assert!(err.to_string().contains("aws:us-east-1"), "{err}");
}

#[tokio::test]
async fn kubernetes_secrets() {
    let plane = ControlPlane::shared();
    let namespace = plane.namespace("conformance").await;
    let s = KubeStore::new(plane.client().await, &namespace);
    // Stages live in companion Secrets; versions count from 1.
    let run = stages(&s, "db").await;
    assert!(numbered(&run.versions));
    let err = run.retire_current.to_string();
    assert!(err.contains("is CURRENT"), "{err}");

    missing_secret(&s, "nope").await;
    let err = s.read("nope", &Selector::Current).await.err().unwrap();
    assert!(err.to_string().contains("kubernetes:"), "{err}");
}
