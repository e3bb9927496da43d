//! Controller memory with 10,000 SecretRotationPolicies in its reflector
//! cache (target ≤ 64 MiB): the policies, with status and three consumers
//! each, go through the same `reflector::store::Writer` the controller's
//! `Controller` keeps, and the process's RSS is read before and after.
//! Then 10,000 annotated pods go into the consumer index.
//! `cargo bench -p rotor-controller --bench policies_rss`.

use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use rotor_contract::api::{
    ConsumerStatus, Generator, PasswordGenerator, Schedule, SecretRotationPolicy,
    SecretRotationPolicySpec, SecretRotationPolicyStatus, StoreRef, Strategy,
};
use rotor_fixtures::procfs::rss_kib;

fn policy(i: usize) -> SecretRotationPolicy {
    let mut p = SecretRotationPolicy::new(
        &format!("policy-{i}"),
        SecretRotationPolicySpec {
            store_ref: StoreRef {
                name: "vault".into(),
                kind: "RotorStore".into(),
            },
            secret_name: format!("apps/team-{}/db-{i}", i % 50),
            schedule: Schedule {
                interval: Some("720h".into()),
                jitter: Some("30m".into()),
                ..Schedule::default()
            },
            generator: Generator {
                password: Some(PasswordGenerator {
                    length: 32,
                    symbols: "-_".into(),
                    min_lower: 2,
                    min_upper: 2,
                    min_digits: 2,
                    min_symbols: 2,
                }),
                random_bytes: None,
                key_pair: None,
            },
            strategy: Strategy::default(),
            target: None,
            sidecars: vec![],
            paused: false,
        },
    );
    p.metadata.namespace = Some(format!("ns-{}", i % 500));
    p.metadata.uid = Some(format!("00000000-0000-0000-0000-{i:012}"));
    p.metadata.resource_version = Some(i.to_string());
    p.status = Some(SecretRotationPolicyStatus {
        phase: Some(rotor_contract::api::Phase::Idle),
        current_version: Some("12".into()),
        previous_version: Some("11".into()),
        last_rotation: Some("2026-11-01T02:13:00Z".into()),
        next_rotation: Some("2026-12-01T02:41:00Z".into()),
        consumers: (0..3)
            .map(|c| ConsumerStatus {
                name: format!("ns-{}/app-{i}-{c}", i % 500),
                acknowledged_version: Some("12".into()),
                acknowledged_at: Some("2026-11-01T02:13:01Z".into()),
                state: rotor_contract::api::ConsumerState::Acknowledged,
                serving_version: Some("12".into()),
                serving_digest: Some(format!("sha256:{:064x}", i * 3 + c)),
                reported_at: Some("2026-11-01T02:13:01Z".into()),
            })
            .collect(),
        ..SecretRotationPolicyStatus::default()
    });
    p
}

fn pod(i: usize) -> k8s_openapi::api::core::v1::Pod {
    let annotations = [
        ("rotor.dev/inject", "true".to_owned()),
        ("rotor.dev/store", "vault".to_owned()),
        (
            "rotor.dev/secret.db",
            format!("apps/team-{}/db-{}", i % 50, i % 2000),
        ),
    ];
    k8s_openapi::api::core::v1::Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("app-{i}")),
            namespace: Some(format!("ns-{}", i % 500)),
            annotations: Some(
                annotations
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            ),
            ..Default::default()
        },
        status: Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let before = rss_kib(std::process::id());
    let mut writer: Writer<SecretRotationPolicy> = Writer::default();
    let reader = writer.as_reader();
    writer.apply_watcher_event(&Event::Init);
    for i in 0..10_000 {
        writer.apply_watcher_event(&Event::InitApply(policy(i)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    assert_eq!(reader.len(), 10_000);
    let after = rss_kib(std::process::id());
    use rotor_controller::cluster::watch::IndexResource as _;
    let mut index = rotor_controller::rotation::consumers::ConsumerIndex::default();
    for i in 0..10_000 {
        index.apply(&pod(i));
    }
    assert_eq!(index.pods(), 10_000);
    let with_pods = rss_kib(std::process::id());
    println!("\n| figure | target | measured |\n|---|---|---|");
    println!(
        "| controller memory with 10,000 policies cached (process RSS) | ≤ 64 MiB | {:.1} MiB ({:.1} MiB for the cache itself) |",
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0
    );
    println!(
        "| plus 10,000 injected pods in the consumer index | reported | {:.1} MiB ({:.1} MiB for the index) |",
        with_pods as f64 / 1024.0,
        (with_pods - after) as f64 / 1024.0
    );
}
