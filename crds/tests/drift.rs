//! The committed CRD YAML must be what the Rust types generate.

#[test]
fn deploy_crds_match_the_types() {
    let committed = include_str!("../../deploy/crds/crds.yaml");
    let generated = rotor_crds::api::crds_yaml();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(0, |i| i + 1);
        panic!(
            "deploy/crds/crds.yaml drifted from crds/src/api (first difference at line {first}); \
             regenerate it with `cargo run -p rotor -- crds --out deploy/crds`"
        );
    }
}

#[test]
fn every_crd_carries_validation_and_printer_columns() {
    let yaml = rotor_crds::api::crds_yaml();
    for needle in [
        "set exactly one of vault, aws, kubernetes, local",
        "set exactly one of interval and cron",
        "set exactly one of password, randomBytes, keyPair",
        "the per-class minimums add up to more than length",
        "name: Next Rotation",
        "name: Phase",
        "name: Current",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?}");
    }
}
