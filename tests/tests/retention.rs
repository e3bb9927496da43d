//! The local store's retention seen from a `rotor-sidecar` process: a push
//! to a version that retention removed is refused and changes nothing; a
//! pin to a PENDING version that retention later removes ends, and the
//! sidecar follows CURRENT again.

use rotor_e2e::pod::Pod;
use rotor_e2e::{http, wait_until};
use rotor_store::WriteAs;

#[test]
fn a_pin_to_a_version_retention_removed_falls_back_to_current() {
    let mut pod = Pod::new();
    let store = pod.use_local_store();
    for i in 1..=3 {
        store
            .put_with("db", format!("v{i}").as_bytes(), WriteAs::Current, Some(2))
            .unwrap();
    }
    pod.annotate(&[("rotor.dev/secret.db", "db"), ("rotor.dev/refresh", "1h")]);
    pod.start();
    assert_eq!(pod.read("db").as_deref(), Some("v3"));
    // Version 1 went when version 3 was written: a pin to it is refused
    // (only PENDING may be pinned), and nothing changes.
    let (status, body) = pod.push_pin("db", 1);
    assert_eq!(status, 409, "{body}");
    assert_eq!(pod.read("db").as_deref(), Some("v3"));
    // A rotation's PENDING version pins; once a newer PENDING replaces it
    // and retention removes it, the sidecar follows CURRENT again.
    let pending = store
        .put_with("db", b"v4", WriteAs::Pending, Some(2))
        .unwrap();
    let (status, body) = pod.push_pin("db", pending.version);
    assert_eq!(status, 200, "{body}");
    assert_eq!(pod.read("db").as_deref(), Some("v4"));
    for v in ["v5", "v6"] {
        store
            .put_with("db", v.as_bytes(), WriteAs::Pending, Some(2))
            .unwrap();
    }
    assert!(
        store
            .history("db")
            .unwrap()
            .iter()
            .all(|m| m.version != pending.version),
        "retention kept the old pending version"
    );
    let (status, body) = http(pod.push, "POST", "/v1/refresh", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(10, || pod.read("db").as_deref() == Some("v3")),
        "still serving {:?}:\n{}",
        pod.read("db"),
        std::fs::read_to_string(pod.log()).unwrap_or_default()
    );
}
