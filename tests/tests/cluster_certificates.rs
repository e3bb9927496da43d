//! The self-managed serving certificate renews on a real API server: with
//! lifetimes of seconds, two replicas (one serving the API server's calls,
//! either one the leader) go through serving-certificate renewals and a CA
//! replacement while a loop creates annotated pods, and not one creation
//! fails. The Secret starts as one written before renewal existed (no CA
//! key, no record), so its migration is on the same path.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use rotor_contract::api::RotorStore;
use rotor_e2e::cluster::{Controller, app_pod, eventually, installed, point_webhook_at};

/// The Secret's record of its certificates (the controller's annotation).
fn record(secret: &Secret) -> Option<serde_json::Value> {
    let text = secret
        .metadata
        .annotations
        .as_ref()?
        .get("rotor.dev/certificates")?;
    serde_json::from_str(text).ok()
}

#[tokio::test]
async fn certificates_renew_twice_and_the_ca_rolls_while_every_pod_is_admitted() {
    let plane = installed();
    let client = plane.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "rotor-system");

    // A Secret as controllers before renewal wrote it: no CA key, no record.
    let legacy = tempfile::tempdir().unwrap();
    let out = rotor_e2e::command("rotor-controller")
        .args(["certs", "--dns-name=127.0.0.1", "--out"])
        .arg(legacy.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let file = |name: &str| format!("--from-file={name}={}", legacy.path().join(name).display());
    plane.kubectl_ok(&[
        "-n",
        "rotor-system",
        "create",
        "secret",
        "generic",
        "rotor-webhook-tls",
        &file("ca.crt"),
        &file("tls.crt"),
        &file("tls.key"),
    ]);

    let port = rotor_e2e::free_port();
    point_webhook_at(plane, port);
    let flags = [
        "--cert-lifetime=6s",
        "--ca-lifetime=15s",
        "--cert-overlap=2s",
        "--lease-duration=3s",
    ];
    let a = Controller::start_at(plane, "replica-a", port, &flags).await;
    let b = Controller::start(plane, "replica-b", &flags).await;
    a.wait_serving();
    b.wait_serving();

    let ns = plane.namespace("renew").await;
    let stores: Api<RotorStore> = Api::namespaced(client.clone(), &ns);
    let store: RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": "local" },
        "spec": { "provider": { "local": { "path": "/var/lib/rotor/store.rotor", "keyPath": "/etc/rotor/key/kek" } } },
    }))
    .unwrap();
    stores.create(&PostParams::default(), &store).await.unwrap();
    let annotations = [
        ("rotor.dev/inject", "true"),
        ("rotor.dev/store", "local"),
        ("rotor.dev/secret.db-password", "app/db#password"),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    // The webhook's store index learns of the store through its watch.
    let mut n = 0;
    let first = eventually(60, || {
        n += 1;
        let pod = app_pod(&format!("warmup-{n}"), &annotations);
        let pods = pods.clone();
        let pp = pp.clone();
        async move { pods.create(&pp, &pod).await.is_ok() }
    })
    .await;
    assert!(first, "no annotated pod was ever admitted: {}", a.log());

    // Pods, one after another, until the Secret went through two serving
    // renewals, a CA replacement and the old CA's removal (bounded).
    let mut failures = Vec::new();
    let mut created = 0;
    let mut servings = BTreeSet::new();
    let mut signers = BTreeSet::new();
    let mut dropped = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        match pods
            .create(&pp, &app_pod(&format!("p-{created}"), &annotations))
            .await
        {
            Ok(_) => {}
            Err(e) => failures.push(format!("p-{created}: {e}")),
        }
        created += 1;
        if let Some(r) = secrets
            .get("rotor-webhook-tls")
            .await
            .ok()
            .as_ref()
            .and_then(record)
        {
            servings.insert(r["serving"]["issued"].as_i64().unwrap());
            signers.insert(r["signer"]["issued"].as_i64().unwrap());
            // A CA replaced, and the old one's overlap over.
            dropped |= signers.len() >= 3 && r["previousUntil"].is_null() && r["next"].is_null();
        }
        if servings.len() >= 4 && dropped {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {created} creations failed: {failures:#?}\n{}",
        failures.len(),
        a.log()
    );
    assert!(
        servings.len() >= 4 && dropped,
        "renewals seen: serving {servings:?}, CA {signers:?} (dropped: {dropped}) in {created} creations\n{}\n{}",
        a.log(),
        b.log()
    );

    // Both replicas serve what the Secret holds (it moves on every few
    // seconds: a moment where they match), and say when it expires.
    for replica in [&a, &b] {
        let follows = eventually(30, || async {
            let Ok(secret) = secrets.get("rotor-webhook-tls").await else {
                return false;
            };
            let tls =
                String::from_utf8(secret.data.as_ref().unwrap()["tls.crt"].0.clone()).unwrap();
            let not_after = record(&secret).unwrap()["serving"]["notAfter"]
                .as_i64()
                .unwrap();
            let metric =
                format!("\nrotor_webhook_certificate_expiry_timestamp_seconds{{}} {not_after}\n");
            replica.serving_cert() == tls
                && rotor_e2e::http(replica.metrics_port, "GET", "/metrics", "")
                    .is_some_and(|(_, text)| text.contains(&metric))
        })
        .await;
        assert!(
            follows,
            "{} does not serve the Secret's certificate: {}",
            replica.identity,
            replica.log()
        );
    }
}
