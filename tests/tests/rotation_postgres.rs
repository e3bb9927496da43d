//! Rotation against a real PostgreSQL (Debian's server, run as the
//! `postgres` user on a free loopback port): `rotor-controller standalone`
//! on the local store with a `postgresql` target, one `rotor-sidecar`, and
//! an app with a pool of connections that re-reads the secret file and
//! reconnects when it changes. Across alternatingUsers rotations the app
//! never fails a login or a query, and a wrong admin credential rolls back
//! with nothing changed.

use std::time::Duration;

use rotor::postgres::pool::PoolApp;
use rotor_e2e::free_port;
use rotor_e2e::postgres::{DbSecret, Rig, ServerTls, alternating, login, wait_for};
use rotor_envelope::ExposeSecret;
use rotor_store::Selector;

/// The app: a pool of two connections, rebuilt when the secret file
/// changes, and a query on each every 20 ms (the app `rotor demo
/// --postgres` runs). Counts every failure and keeps every credential it
/// held.
fn start_app(file: std::path::PathBuf) -> PoolApp {
    PoolApp::start(file, 2, Duration::from_millis(20))
}

/// Alternating-users rotations the pooled app runs through.
const ROTATIONS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_users_rotations_never_fail_a_login_or_a_query() {
    let rig = Rig::start("pg-admin-canary-5d1a").await;
    // Rotation r0 starts as soon as the controller reads the policy.
    let app = start_app(rig.pod.out.path().join("db"));
    let mut currents = Vec::new();
    for n in 0..ROTATIONS {
        if n > 0 {
            rig.rotate(n);
        }
        let before = currents.last().cloned();
        assert!(
            wait_for(60, || {
                let s = rig.status();
                let cur = s["currentVersion"].as_str().map(str::to_owned);
                s["phase"] == "Idle"
                    && s["previousVersion"].is_string()
                    && cur.is_some()
                    && cur != before
            })
            .await,
            "rotation {n} did not finish: {}\n{}",
            rig.status(),
            rig.log()
        );
        currents.push(rig.status()["currentVersion"].as_str().unwrap().to_owned());
        // The app moved to the promoted role.
        let current: DbSecret = serde_json::from_slice(
            rig.store
                .get("app/db", Selector::Current)
                .unwrap()
                .value
                .expose_secret(),
        )
        .unwrap();
        assert!(
            wait_for(10, || app
                .held()
                .last()
                .is_some_and(|h| h.password.expose_secret() == current.password))
            .await,
            "the app never picked up rotation {n}"
        );
        // Idle means Retiring's finish ran: the role not in use has a
        // password nobody holds, so no credential the app (or the store's
        // first value) ever held for it logs in, and of the app's
        // credentials only the current one works.
        let held: Vec<(String, String)> = app
            .held()
            .iter()
            .map(|h| (h.username.clone(), h.password.expose_secret().to_owned()))
            .collect();
        let idle = if current.username == "app_a" {
            "app_b"
        } else {
            "app_a"
        };
        for (user, old) in held.iter().filter(|(u, _)| u == idle) {
            assert!(
                login(rig.pg.port, user, old).await.is_err(),
                "rotation {n}: a password of {idle}, the role not in use, still works"
            );
        }
        let initial = if idle == "app_a" {
            "initial-a-canary-31f0"
        } else {
            "initial-b-canary-8e22"
        };
        assert!(login(rig.pg.port, idle, initial).await.is_err());
        for (user, old) in held
            .iter()
            .filter(|(u, p)| u == &current.username && p != &current.password)
        {
            assert!(
                login(rig.pg.port, user, old).await.is_err(),
                "rotation {n}: an old password of {user} still works"
            );
        }
    }
    app.stop();
    let (failures, queries) = (app.counts().failed, app.counts().queries_ok);
    assert_eq!(
        failures, 0,
        "failed logins or queries across {ROTATIONS} rotations"
    );
    assert!(queries > 0);
    // Canary: no password the app held, nor the admin's, is in any log or
    // in the status.
    let text = format!(
        "{}{}{}",
        rig.log(),
        rig.status(),
        std::fs::read_to_string(rig.pod.log()).unwrap_or_default()
    );
    for h in app.held() {
        assert!(
            !text.contains(h.password.expose_secret()),
            "a password leaked"
        );
    }
    assert!(!text.contains("pg-admin-canary-5d1a"));
    eprintln!("{queries} queries across {ROTATIONS} rotations, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_admin_credential_rolls_back_and_changes_nothing() {
    let rig = Rig::start("not-the-admin-password").await;
    assert!(
        wait_for(60, || rig.status()["conditions"].as_array().is_some_and(
            |c| c
                .iter()
                .any(|c| c["type"] == "Degraded" && c["reason"] == "AdminLoginFailed")
        ))
        .await,
        "no rollback: {}\n{}",
        rig.status(),
        rig.log()
    );
    assert!(wait_for(10, || rig.status()["phase"] == "Idle").await);
    assert!(
        rig.log().contains("AdminLoginFailed"),
        "the failure is logged"
    );
    // Nothing half-done: both roles keep their passwords, the store its value.
    login(rig.pg.port, "app_a", "initial-a-canary-31f0")
        .await
        .unwrap();
    login(rig.pg.port, "app_b", "initial-b-canary-8e22")
        .await
        .unwrap();
    let current = rig.current_text();
    assert!(current.contains("initial-a-canary-31f0"));
    assert!(rig.status()["pendingVersion"].is_null());
    assert!(!rig.log().contains("not-the-admin-password"));
    let _ = rig.pg.log();
}

/// A failure of the target rolls back with its reason in the Degraded
/// condition and the controller's log, the store keeps its CURRENT value
/// and no pending one, and both roles keep their passwords.
async fn rolls_back_with(rig: &Rig, reason: &str) {
    assert!(
        wait_for(60, || rig.status()["conditions"].as_array().is_some_and(
            |c| c
                .iter()
                .any(|c| c["type"] == "Degraded" && c["reason"] == reason)
        ))
        .await,
        "no rollback for {reason}: {}\n{}",
        rig.status(),
        rig.log()
    );
    assert!(wait_for(10, || rig.status()["phase"] == "Idle").await);
    assert!(rig.log().contains(reason), "the failure is logged");
    assert!(rig.status()["pendingVersion"].is_null());
    let current = rig.current_text();
    assert!(current.contains("initial-a-canary-31f0"));
    login(rig.pg.port, "app_a", "initial-a-canary-31f0")
        .await
        .unwrap();
    login(rig.pg.port, "app_b", "initial-b-canary-8e22")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_rolls_back_and_changes_nothing() {
    // A free port nothing listens on.
    let rig = Rig::start_with("pg-admin-canary-5d1a", Some(free_port()), "[app_a, app_b]").await;
    rolls_back_with(&rig, "TargetUnreachable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_exist_rolls_back_and_changes_nothing() {
    let rig = Rig::start_with("pg-admin-canary-5d1a", None, "[app_a, app_missing]").await;
    rolls_back_with(&rig, "NoSuchRole").await;
}

/// A test CA, a server certificate for 127.0.0.1 it signed, and the
/// target's `tls` field trusting `trusted` (PEM).
fn tls_rig_parts(trusted: Option<&str>) -> (ServerTls, String) {
    let (ca, ca_key) = rotor_e2e::cluster::new_ca("rotor postgres test CA");
    let (cert, key) = rotor_e2e::cluster::server_cert(&ca, &ca_key, &["127.0.0.1"]);
    let bundle = trusted.map_or_else(|| ca.pem(), str::to_owned);
    let yaml = format!(
        ", tls: {{mode: Require, caBundle: {}}}",
        serde_json::to_string(&bundle).unwrap()
    );
    (
        ServerTls {
            cert,
            key,
            ssl_only: false,
        },
        yaml,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_over_tls_verifies_the_server_against_the_targets_ca() {
    let (mut tls, yaml) = tls_rig_parts(None);
    // TCP logins without TLS are refused, so a rotation proves TLS.
    tls.ssl_only = true;
    let rig = Rig::start_full(
        "pg-admin-canary-5d1a",
        None,
        &alternating("[app_a, app_b]"),
        Some(&tls),
        &yaml,
    )
    .await;
    assert!(
        wait_for(60, || {
            let s = rig.status();
            s["phase"] == "Idle" && s["previousVersion"].is_string()
        })
        .await,
        "no rotation over TLS: {}\n{}",
        rig.status(),
        rig.log()
    );
    let current: DbSecret = serde_json::from_str(&rig.current_text()).unwrap();
    assert_eq!(current.username, "app_b");
    assert!(
        login(rig.pg.port, "app_b", &current.password)
            .await
            .is_err(),
        "the server refuses logins without TLS"
    );
    assert!(!rig.log().contains(&current.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_rolls_back_naming_tls() {
    let (other, _) = rotor_e2e::cluster::new_ca("not the server's CA");
    let (tls, yaml) = tls_rig_parts(Some(&other.pem()));
    let rig = Rig::start_full(
        "pg-admin-canary-5d1a",
        None,
        &alternating("[app_a, app_b]"),
        Some(&tls),
        &yaml,
    )
    .await;
    rolls_back_with(&rig, "TargetTlsFailed").await;
}
