//! `rotor-sidecar` as a real process reading real servers: OpenBao (KV v2)
//! and moto (AWS Secrets Manager). For each: delivery into tmpfs, a new
//! version reaching the file within one interval, files and readiness kept
//! while the server is down, and recovery within one interval after it
//! comes back (dev OpenBao and moto keep no data over a restart, so the
//! secret is written again).

use std::time::{Duration, Instant};

use rotor_e2e::pod::Pod;
use rotor_e2e::servers::{Bao, Moto, ServerProcess};
use rotor_e2e::{http, wait_until};
use rotor_store::{Store, VaultAuth, VaultConfig, VaultStore, WriteAs};

const INTERVAL: Duration = Duration::from_millis(500);

/// Waits for `file` to read `want`; returns how long it took.
fn arrives(pod: &Pod, file: &str, want: &str) -> Duration {
    let t = Instant::now();
    assert!(
        wait_until(10, || pod.read(file).as_deref() == Some(want)),
        "{file} never became {want:?}; log:\n{}",
        std::fs::read_to_string(pod.log()).unwrap_or_default()
    );
    t.elapsed()
}

fn ready(pod: &Pod) -> bool {
    http(pod.admin, "GET", "/readyz", "").is_some_and(|(s, _)| s == 200)
}

/// The lifecycle shared by both stores.
async fn lifecycle(mut pod: Pod, write: impl AsyncFn(&[u8]), server: &mut ServerProcess) {
    write(b"v1").await;
    pod.annotate(&[
        ("rotor.dev/secret.db", "app/db"),
        ("rotor.dev/refresh", "500ms"),
    ]);
    pod.start();
    assert_eq!(pod.read("db").as_deref(), Some("v1"));

    write(b"v2").await;
    let took = arrives(&pod, "db", "v2");
    // "Within one interval", with slack for a loaded machine; the bench
    // measures the real figure.
    assert!(
        took <= INTERVAL * 2 + Duration::from_millis(500),
        "took {took:?}"
    );

    server.stop();
    // Wait until the outage has been seen twice, then check nothing was lost.
    let fetch_errors = "rotor_secret_fetch_errors_total{secret=\"app/db\",reason=\"unreachable\"}";
    assert!(
        wait_until(30, || {
            let (_, metrics) = http(pod.admin, "GET", "/metrics", "").unwrap();
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(fetch_errors)?.trim().parse::<f64>().ok())
                .is_some_and(|n| n >= 2.0)
        }),
        "the outage was never seen"
    );
    assert_eq!(
        pod.read("db").as_deref(),
        Some("v2"),
        "files lost during the outage"
    );
    assert!(ready(&pod), "readiness lost during the outage");
    let (_, metrics) = http(pod.admin, "GET", "/metrics", "").unwrap();
    assert!(
        metrics
            .contains("rotor_secret_fetch_errors_total{secret=\"app/db\",reason=\"unreachable\"}"),
        "{metrics}"
    );

    server.restart();
    write(b"v3").await;
    let took = arrives(&pod, "db", "v3");
    assert!(
        took <= INTERVAL * 2 + Duration::from_millis(500),
        "recovery took {took:?}"
    );
    assert!(pod.stop().success());
}

#[tokio::test]
async fn the_sidecar_delivers_from_openbao_and_survives_an_outage() {
    let mut bao = Bao::start();
    let mut pod = Pod::new();
    let token = pod.work.path().join("vault-token");
    std::fs::write(&token, "root").unwrap();
    pod.use_vault(&bao.addr(), &token);
    let store = VaultStore::new(VaultConfig::new(bao.addr(), VaultAuth::TokenFile(token))).unwrap();
    let write = async |v: &[u8]| {
        store.write("app/db", v, WriteAs::Current).await.unwrap();
    };
    lifecycle(pod, write, bao.process()).await;
}

#[tokio::test]
async fn the_sidecar_delivers_from_moto_and_survives_an_outage() {
    let mut moto = Moto::start();
    let mut pod = Pod::new();
    pod.store_args = vec![
        "--store-kind".into(),
        "aws".into(),
        "--aws-region".into(),
        "us-east-1".into(),
        "--aws-endpoint".into(),
        moto.endpoint().into(),
    ];
    pod.envs = vec![
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    let store = moto.store().await;
    let write = async |v: &[u8]| {
        store.write("app/db", v, WriteAs::Current).await.unwrap();
    };
    lifecycle(pod, write, moto.process()).await;
}

/// A token whose policy reads only `secret/data/app/*`, as Vault Agent and
/// External Secrets users write them: the sidecar renders, follows a new
/// version by polling and a pushed PENDING version, and says once how to
/// allow the cheaper metadata check.
#[tokio::test]
async fn a_data_only_policy_written_for_vault_agent_just_works() {
    let bao = Bao::start();
    bao.api(
        "PUT",
        "sys/policies/acl/agent-style",
        r#"{"policy":"path \"secret/data/app/*\" { capabilities = [\"read\"] }"}"#,
    );
    let created: serde_json::Value = serde_json::from_str(&bao.api(
        "POST",
        "auth/token/create",
        r#"{"policies":["agent-style"],"ttl":"1h","no_default_policy":true}"#,
    ))
    .unwrap();
    let mut pod = Pod::new();
    let data_only = pod.work.path().join("data-only-token");
    std::fs::write(
        &data_only,
        created["auth"]["client_token"].as_str().unwrap(),
    )
    .unwrap();
    let root = pod.work.path().join("root-token");
    std::fs::write(&root, "root").unwrap();
    let admin = VaultStore::new(VaultConfig::new(bao.addr(), VaultAuth::TokenFile(root))).unwrap();
    // The data-only token really cannot read metadata.
    let (status, _) = rotor_e2e::servers::request(
        bao.port,
        "GET",
        "/v1/secret/metadata/app/db",
        &[(
            "x-vault-token",
            created["auth"]["client_token"].as_str().unwrap(),
        )],
        "",
    )
    .unwrap();
    assert_eq!(status, 403);

    admin
        .write("app/db", b"v1", WriteAs::Current)
        .await
        .unwrap();
    pod.use_vault(&bao.addr(), &data_only);
    pod.annotate(&[
        ("rotor.dev/secret.db", "app/db"),
        ("rotor.dev/refresh", "500ms"),
    ]);
    pod.start();
    assert_eq!(pod.read("db").as_deref(), Some("v1"));

    // Polling follows CURRENT.
    admin
        .write("app/db", b"v2", WriteAs::Current)
        .await
        .unwrap();
    arrives(&pod, "db", "v2");

    // A pushed PENDING version (a rotation's), read with the data policy.
    let pending = admin
        .write("app/db", b"v3", WriteAs::Pending)
        .await
        .unwrap();
    let (status, body) = pod.push_pin("app/db", &pending.0);
    assert_eq!(status, 200, "{body}");
    assert_eq!(pod.read("db").as_deref(), Some("v3"));
    // CURRENT stays v2 for readers that were not pushed.
    assert_eq!(
        admin.current_version("app/db").await.unwrap().0,
        "2",
        "the pending version was promoted by a read"
    );

    assert!(pod.stop().success());
    let log = std::fs::read_to_string(pod.log()).unwrap();
    let hints = log.matches("may not read secret/metadata").count();
    assert_eq!(hints, 1, "the hint should be logged once:\n{log}");
    assert!(log.contains("secret/metadata/<path>/*"), "{log}");
}
