//! The committed CRD YAML must be what the Rust types generate.

#[test]
fn deploy_crds_match_the_types() {
    let committed = include_str!("../../deploy/crds/crds.yaml");
    let generated = rotor_contract::api::crds_yaml();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!(
            "deploy/crds/crds.yaml drifted from contract/src/api (first difference at line {first}); \
             regenerate it with `cargo run -p rotor -- crds --out deploy/crds`"
        );
    }
}

#[test]
fn every_crd_carries_validation_and_printer_columns() {
    let yaml = rotor_contract::api::crds_yaml();
    for needle in [
        "set exactly one of vault, aws, kubernetes, local",
        "set exactly one of interval and cron",
        "set exactly one of password, randomBytes, keyPair",
        "the per-class minimums add up to more than length",
        "name: Next Rotation",
        "name: Phase",
        "name: Current",
        "name: Degraded",
        "name: Last Rotation",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?}");
    }
}

/// Every Rotor kind is in the `rotor` category (`kubectl get rotor`), and
/// none keeps a name External Secrets Operator also installs.
#[test]
fn every_crd_is_in_the_rotor_category_under_its_own_names() {
    use kube::CustomResourceExt as _;
    use rotor_contract::api::{ClusterRotorStore, RotorStore, SecretRotationPolicy};
    let crds = [
        RotorStore::crd(),
        ClusterRotorStore::crd(),
        SecretRotationPolicy::crd(),
    ];
    let plurals: Vec<&str> = crds.iter().map(|c| c.spec.names.plural.as_str()).collect();
    assert_eq!(
        plurals,
        [
            "rotorstores",
            "clusterrotorstores",
            "secretrotationpolicies"
        ]
    );
    for crd in &crds {
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["rotor".to_owned()][..]),
            "{}",
            crd.spec.names.kind
        );
    }
    let policy = &SecretRotationPolicy::crd().spec.versions[0];
    let columns: Vec<(&str, &str, &str)> = policy
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert!(
        columns.contains(&(
            "Degraded",
            "string",
            ".status.conditions[?(@.type==\"Degraded\")].status"
        )),
        "{columns:?}"
    );
    assert!(
        columns.contains(&("Last Rotation", "date", ".status.lastRotation")),
        "{columns:?}"
    );
}
