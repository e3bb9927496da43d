//! The Vault/OpenBao KV v2 store and the Transit KEK against a real
//! OpenBao dev server on a loopback port. The stage model and not-found
//! errors: the conformance suite (store_conformance.rs).

use std::sync::Arc;
use std::time::Duration;

use rotor_e2e::conformance::text;
use rotor_e2e::servers::{Bao, request};
use rotor_envelope::ExposeSecret;
use rotor_store::{
    Error, LocalStore, Selector, Store, TransitKek, VaultAuth, VaultConfig, VaultStore, VersionId,
    WriteAs,
};

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

fn store(bao: &Bao, dir: &tempfile::TempDir) -> VaultStore {
    VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::TokenFile(token_file(dir, "root")),
    ))
    .unwrap()
}

#[tokio::test]
async fn secrets_written_by_others_read_as_json_and_current_is_kv_current() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    bao.api(
        "POST",
        "secret/data/ext",
        r#"{"data":{"user":"app","password":"pw"}}"#,
    );
    let s = store(&bao, &dir);
    let v: serde_json::Value =
        serde_json::from_str(&text(&s, "ext", Selector::Current).await).unwrap();
    assert_eq!(v["password"], "pw");
    assert_eq!(s.current_version("ext").await.unwrap(), VersionId::from(1));
    bao.api("POST", "secret/data/ext", r#"{"data":{"value":"plain"}}"#);
    assert_eq!(s.current_version("ext").await.unwrap(), VersionId::from(2));
    assert_eq!(text(&s, "ext", Selector::Current).await, "plain");
}

#[tokio::test]
async fn errors_are_classified_and_name_the_store_and_secret() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    // Not found: the conformance suite (store_conformance.rs).
    // A token without a policy for the path.
    bao.api(
        "POST",
        "sys/policy/none",
        r#"{"policy":"path \"sys/nothing\" { capabilities = [\"read\"] }"}"#,
    );
    let created = bao.api(
        "POST",
        "auth/token/create",
        r#"{"policies":["none"],"ttl":"1h"}"#,
    );
    let token =
        serde_json::from_str::<serde_json::Value>(&created).unwrap()["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned();
    let weak = VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::TokenFile(token_file(&dir, &token)),
    ))
    .unwrap();
    let err = weak.read("app/x", &Selector::Current).await.err().unwrap();
    assert!(
        matches!(err, Error::PermissionDenied { .. }) && !err.is_retryable(),
        "{err}"
    );

    // Nobody listening.
    let port = rotor_e2e::free_port();
    let gone = VaultStore::new(VaultConfig::new(
        format!("http://127.0.0.1:{port}"),
        VaultAuth::TokenFile(token_file(&dir, "root")),
    ))
    .unwrap();
    let err = gone.current_version("x").await.err().unwrap();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_retryable(),
        "{err}"
    );
}

#[tokio::test]
async fn a_changed_token_file_is_read_again_and_an_empty_one_is_refused() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(&dir, "wrong-token");
    let s = VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::TokenFile(path.clone()),
    ))
    .unwrap();
    assert!(matches!(
        s.current_version("x").await.unwrap_err(),
        Error::PermissionDenied { .. }
    ));
    std::fs::write(&path, "root").unwrap();
    s.write("x", b"v", WriteAs::Current).await.unwrap();
    // An empty file later: the last good token stays.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, "").unwrap();
    assert_eq!(s.current_version("x").await.unwrap(), VersionId::from(1));
    // An empty file at first: a clear error.
    std::fs::write(&path, "  \n").unwrap();
    let fresh = VaultStore::new(VaultConfig::new(bao.addr(), VaultAuth::TokenFile(path))).unwrap();
    let err = fresh.current_version("x").await.unwrap_err().to_string();
    assert!(err.contains("is empty; expected a token"), "{err}");
}

fn kv_policy(bao: &Bao) {
    bao.api(
        "POST",
        "sys/policy/app",
        r#"{"policy":"path \"secret/*\" { capabilities = [\"create\",\"read\",\"update\",\"delete\",\"list\",\"patch\"] }"}"#,
    );
}

#[tokio::test]
async fn approle_login_with_short_ttl_tokens_renews_and_logs_in_again() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    kv_policy(&bao);
    bao.api("POST", "sys/auth/approle", r#"{"type":"approle"}"#);
    bao.api(
        "POST",
        "auth/approle/role/app",
        r#"{"token_policies":["app"],"token_ttl":"2s","token_max_ttl":"4s"}"#,
    );
    let role_id = serde_json::from_str::<serde_json::Value>(&bao.api(
        "GET",
        "auth/approle/role/app/role-id",
        "",
    ))
    .unwrap()["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = serde_json::from_str::<serde_json::Value>(&bao.api(
        "POST",
        "auth/approle/role/app/secret-id",
        "",
    ))
    .unwrap()["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id_path = dir.path().join("secret-id");
    std::fs::write(&secret_id_path, secret_id).unwrap();
    let s = VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id,
            secret_id_path,
        },
    ))
    .unwrap();
    s.write("app/db", b"v1", WriteAs::Current).await.unwrap();
    // Outlive the token's TTL and its max TTL: renewal, then a new login.
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(
            s.current_version("app/db").await.unwrap(),
            VersionId::from(1)
        );
    }
}

// Kubernetes auth runs against a real API server's TokenReview: see
// tests/tests/cluster_stores.rs.

#[tokio::test(flavor = "multi_thread")]
async fn transit_wraps_data_keys_and_rewraps_after_a_key_rotation() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    bao.api("POST", "sys/mounts/transit", r#"{"type":"transit"}"#);
    bao.api("POST", "transit/keys/rotor", r#"{"type":"aes256-gcm96"}"#);
    let token = token_file(&dir, "root");
    let addr = bao.addr();
    let store_path = dir.path().join("s.rotor");
    let handle = tokio::task::spawn_blocking(move || {
        let kek = Arc::new(
            TransitKek::new(
                VaultConfig::new(addr, VaultAuth::TokenFile(token)),
                "transit",
                "rotor",
            )
            .unwrap(),
        );
        let local = LocalStore::new(&store_path, kek.clone());
        local
            .put("db", b"sealed-by-transit", WriteAs::Current)
            .unwrap();
        let raw = std::fs::read(&store_path).unwrap();
        assert!(
            raw.windows(9).any(|w| w == b"vault:v1:"),
            "wrapped by key version 1"
        );
        (kek, store_path)
    });
    let (kek, store_path) = handle.await.unwrap();
    bao.api("POST", "transit/keys/rotor/rotate", "");
    tokio::task::spawn_blocking(move || {
        let local = LocalStore::new(&store_path, kek.clone());
        assert_eq!(
            local
                .get("db", Selector::Current)
                .unwrap()
                .value
                .expose_secret(),
            b"sealed-by-transit"
        );
        assert_eq!(local.rewrap(&*kek).unwrap(), 1);
        let raw = std::fs::read(&store_path).unwrap();
        assert!(
            raw.windows(9).any(|w| w == b"vault:v2:") && !raw.windows(9).any(|w| w == b"vault:v1:")
        );
        let again = LocalStore::new(&store_path, kek);
        assert_eq!(
            again
                .get("db", Selector::Current)
                .unwrap()
                .value
                .expose_secret(),
            b"sealed-by-transit"
        );
    })
    .await
    .unwrap();
    let _ = request(bao.port, "GET", "/v1/sys/health", &[], "");
}

#[tokio::test]
async fn tls_with_a_ca_bundle() {
    let bao = Bao::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let mut config = VaultConfig::new(bao.addr(), VaultAuth::TokenFile(token_file(&dir, "root")));
    config.ca_cert = Some(bao.ca());
    let s = VaultStore::new(config).unwrap();
    // The KV mount may need a moment after the listener is up.
    let mut written = None;
    for _ in 0..50 {
        match s.write("tls/db", b"over-tls", WriteAs::Current).await {
            Ok(v) => {
                written = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(written, Some(VersionId::from(1)));
    assert_eq!(text(&s, "tls/db", Selector::Current).await, "over-tls");
    // Without the CA the server's certificate is not trusted.
    let untrusted = VaultStore::new(VaultConfig::new(
        bao.addr(),
        VaultAuth::TokenFile(token_file(&dir, "root")),
    ))
    .unwrap();
    let err = untrusted.current_version("tls/db").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}
