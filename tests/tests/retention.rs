//! The local store's retention seen from a `rotor-sidecar` process: a push
//! pinned to a version that retention removed is refused with a clear
//! answer, the sidecar keeps serving CURRENT, and its log names why.

use std::sync::Arc;

use rotor_e2e::pod::Pod;
use rotor_e2e::{http, wait_until};
use rotor_envelope::KeyFileKek;
use rotor_store::{LocalStore, WriteAs};

#[test]
fn a_pin_to_a_version_retention_removed_falls_back_to_current() {
    let mut pod = Pod::new();
    let key = pod.work.path().join("kek");
    KeyFileKek::generate(&key, false).unwrap();
    let path = pod.work.path().join("store.rotor");
    let store = LocalStore::new(&path, Arc::new(KeyFileKek::load(&key).unwrap()));
    pod.store_args = vec![
        "--local-store".into(),
        path.into(),
        "--key".into(),
        key.into(),
    ];
    for i in 1..=3 {
        store
            .put_with("db", format!("v{i}").as_bytes(), WriteAs::Current, Some(2))
            .unwrap();
    }
    pod.annotate(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    pod.start();
    assert_eq!(pod.read("db").as_deref(), Some("v3"));
    // Version 2 is PREVIOUS: kept, and a pin to it is served.
    let (status, body) = http(
        pod.push,
        "POST",
        "/v1/refresh",
        r#"{"secrets":[{"name":"db","version":"2"}]}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        r#"{"ok":true,"secrets":[{"name":"db","version":"2"}]}"#
    );
    assert_eq!(pod.read("db").as_deref(), Some("v2"));
    // Version 1 went when version 3 was written.
    let (_, body) = http(
        pod.push,
        "POST",
        "/v1/refresh",
        r#"{"secrets":[{"name":"db","version":"1"}]}"#,
    )
    .unwrap();
    assert_eq!(
        body,
        r#"{"ok":false,"secrets":[{"name":"db","version":"3","error":"the requested version could not be fetched"}]}"#
    );
    assert_eq!(pod.read("db").as_deref(), Some("v3"));
    let log = pod.log();
    assert!(
        wait_until(10, || std::fs::read_to_string(&log).is_ok_and(|l| l
            .contains("pinned version is gone; following CURRENT again")
            && l.contains("no longer has version 1: retention removed it"))),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
