//! Tests of the store index: which store a pod or policy resolves to, from
//! namespaces and stores given as YAML.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use k8s_openapi::api::core::v1::Namespace;
use serde::Deserialize as _;

use super::*;

const STORES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {rotor.dev/clusterstore: "shared", team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b, labels: {team: b}}
---
apiVersion: rotor.dev/v1alpha1
kind: RotorStore
metadata: {name: local, namespace: team-b}
spec:
  provider:
    local: {path: /var/lib/rotor/store.rotor, keyPath: /var/lib/rotor/kek}
---
apiVersion: rotor.dev/v1alpha1
kind: ClusterRotorStore
metadata: {name: shared-vault}
spec:
  allowedNamespaces:
    matchLabels: {rotor.dev/clusterstore: shared}
  paths:
    - namespace: "*"
      patterns: ["shared/*"]
    - namespace: team-a
      patterns: ["apps/{namespace}/**"]
  provider:
    vault:
      server: https://vault.vault.svc:8200
      auth: {kubernetes: {role: rotor}}
"#;

fn index() -> StoreIndex {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stores.yaml"), STORES).unwrap();
    StoreIndex::from_dir(dir.path()).unwrap()
}

#[test]
fn namespaced_stores_resolve_only_in_their_namespace() {
    let i = index();
    let r = i.resolve("team-b", "local", &["anything"]).unwrap();
    assert_eq!(
        (r.kind.as_str(), r.provider.view().map(|k| k.name())),
        ("RotorStore", Ok("local"))
    );
    let err = i.resolve("team-a", "local", &["x"]).unwrap_err();
    assert!(
        err.contains("no RotorStore \"local\" in namespace \"team-a\""),
        "{err}"
    );
}

#[test]
fn cluster_stores_check_namespace_labels_and_paths() {
    let i = index();
    i.resolve("team-a", "shared-vault", &["shared/db", "apps/team-a/x/y"])
        .unwrap();
    let err = i
        .resolve("team-b", "shared-vault", &["shared/db"])
        .unwrap_err();
    assert!(err.contains("does not allow namespace \"team-b\""), "{err}");
    let err = i
        .resolve("team-a", "shared-vault", &["apps/team-b/db"])
        .unwrap_err();
    // The rules themselves stay out of the message: whoever reaches the
    // webhook could otherwise read any namespace's patterns.
    assert!(
        err.contains("does not allow secret \"apps/team-b/db\"") && !err.contains("shared/*"),
        "{err}"
    );
    let err = i
        .resolve("team-a", "shared-vault", &["shared/a/b"])
        .unwrap_err();
    assert!(err.contains("does not allow secret"), "{err}");
}

#[test]
fn apply_delete_and_reset() {
    let mut i = index();
    assert_eq!(i.len(), 2);
    i.delete_store("team-b", "local");
    assert!(i.resolve("team-b", "local", &[]).is_err());
    i.apply_namespace(
        "team-b",
        [("rotor.dev/clusterstore".to_owned(), "shared".to_owned())].into(),
    );
    i.resolve("team-b", "shared-vault", &["shared/x"]).unwrap();
    i.delete_cluster_store("shared-vault");
    assert!(i.is_empty());
    i.reset(&[] as &[RotorStore]);
    i.reset(&[] as &[ClusterRotorStore]);
    assert!(i.is_empty());
}

/// The objects of `STORES`, as a watch would list them.
fn listed() -> (Vec<RotorStore>, Vec<ClusterRotorStore>, Vec<Namespace>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for doc in serde_yaml_ng::Deserializer::from_str(STORES) {
        let value = serde_yaml_ng::Value::deserialize(doc).unwrap();
        match value["kind"].as_str().unwrap() {
            "RotorStore" => out.0.push(serde_yaml_ng::from_value(value).unwrap()),
            "ClusterRotorStore" => out.1.push(serde_yaml_ng::from_value(value).unwrap()),
            _ => out.2.push(serde_yaml_ng::from_value(value).unwrap()),
        }
    }
    out
}

#[test]
fn a_relist_replaces_only_its_own_kind() {
    let (stores, cluster, namespaces) = listed();
    let mut i = StoreIndex::default();
    i.reset(&stores);
    i.reset(&cluster);
    i.reset(&namespaces);
    i.resolve("team-b", "local", &[]).unwrap();
    i.resolve("team-a", "shared-vault", &["shared/x"]).unwrap();
    // A RotorStore deleted while the watch was down is gone after the
    // relist; the ClusterRotorStore and the labels are untouched.
    i.reset(&[] as &[RotorStore]);
    assert!(i.resolve("team-b", "local", &[]).is_err());
    i.resolve("team-a", "shared-vault", &["shared/x"]).unwrap();
    // A namespace relisted without its label no longer matches.
    let mut relabelled = namespaces.clone();
    relabelled[0].metadata.labels = Some([("team".to_owned(), "a".to_owned())].into());
    i.reset(&relabelled);
    let err = i
        .resolve("team-a", "shared-vault", &["shared/x"])
        .unwrap_err();
    assert!(err.contains("does not allow namespace"), "{err}");
    i.reset(&[] as &[ClusterRotorStore]);
    assert!(i.is_empty());
}

#[test]
fn watch_events_apply_and_delete_one_object() {
    let (stores, cluster, namespaces) = listed();
    let mut i = StoreIndex::default();
    i.apply(&namespaces[0]);
    i.apply(&cluster[0]);
    i.resolve("team-a", "shared-vault", &["shared/x"]).unwrap();
    i.delete(&namespaces[0]);
    assert!(i.resolve("team-a", "shared-vault", &["shared/x"]).is_err());
    i.apply(&stores[0]);
    assert_eq!(i.len(), 2);
    i.delete(&stores[0]);
    i.delete(&cluster[0]);
    assert!(i.is_empty());
}

#[test]
fn selectors_and_globs() {
    let labels: Labels = [("a".to_owned(), "1".to_owned())].into();
    assert!(
        !selector_matches(&LabelSelector::default(), &labels),
        "empty selector matches nothing"
    );
    let expr = |op: &str, values: Option<Vec<&str>>| LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "a".into(),
            operator: op.into(),
            values: values.map(|v| v.into_iter().map(String::from).collect()),
        }]),
        ..LabelSelector::default()
    };
    assert!(selector_matches(&expr("In", Some(vec!["1", "2"])), &labels));
    assert!(!selector_matches(&expr("NotIn", Some(vec!["1"])), &labels));
    assert!(selector_matches(&expr("Exists", None), &labels));
    assert!(!selector_matches(&expr("DoesNotExist", None), &labels));
    assert!(path_matches("a/*", "a/b", "ns"));
    assert!(!path_matches("a/*", "a/b/c", "ns"));
    assert!(path_matches("a/**", "a/b/c", "ns"));
    assert!(path_matches("{namespace}/*", "ns/db", "ns"));
    assert!(!path_matches("{namespace}/*", "other/db", "ns"));
    assert!(path_matches("db-*-prod", "db-x-prod", "ns"));
}

/// The error `from_dir` gives for a directory holding `x.yaml` = `yaml`.
fn from_dir_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.yaml"), yaml).unwrap();
    StoreIndex::from_dir(dir.path()).unwrap_err().to_string()
}

#[test]
fn bad_files_name_the_document() {
    let err = from_dir_error("kind: Pod\nmetadata: {name: p}\n");
    assert!(
        err.contains("x.yaml document 1") && err.contains("\"Pod\" is not one of"),
        "{err}"
    );
}

#[test]
fn an_old_store_kind_is_refused_naming_its_new_kind() {
    let err = from_dir_error(
        "apiVersion: rotor.dev/v1alpha1\nkind: ClusterSecretStore\nmetadata: {name: s}\n",
    );
    assert!(
        err.contains("x.yaml document 1")
            && err.contains(
                "kind ClusterSecretStore was renamed ClusterRotorStore in rotor.dev/v1alpha1"
            ),
        "{err}"
    );
    // Another project's SecretStore is just a kind this does not take.
    let err = from_dir_error(
        "apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: {name: s}\n",
    );
    assert!(err.contains("\"SecretStore\" is not one of"), "{err}");
}

#[test]
fn store_kinds_are_the_crds_kinds() {
    use kube::Resource as _;
    assert_eq!(StoreKind::Namespaced.as_str(), RotorStore::kind(&()));
    assert_eq!(StoreKind::Cluster.as_str(), ClusterRotorStore::kind(&()));
    assert_eq!(StoreKind::Cluster.to_string(), "ClusterRotorStore");
}

#[test]
fn every_change_that_can_alter_a_resolution_is_touched_once() {
    let (stores, cluster, namespaces) = listed();
    let mut i = StoreIndex::default();
    i.reset(&stores);
    i.reset(&cluster);
    i.reset(&namespaces);
    let all = i.take_touched();
    assert_eq!(all.len(), 4, "every listed object: {all:?}");
    assert!(i.take_touched().is_empty(), "taken");

    // The same objects again, as a relist or a no-op update: nothing.
    i.reset(&cluster);
    i.apply(&namespaces[0]);
    i.apply(&stores[0]);
    assert!(i.take_touched().is_empty());

    // A new generation of the cluster store, a label change, a deletion.
    let mut changed = cluster[0].clone();
    changed.metadata.generation = Some(2);
    i.apply(&changed);
    let mut relabelled = namespaces[1].clone();
    relabelled.metadata.labels = Some([("team".to_owned(), "b2".to_owned())].into());
    i.apply(&relabelled);
    i.delete(&stores[0]);
    i.delete(&stores[0]);
    assert_eq!(
        i.take_touched(),
        [
            Touched::Store {
                namespace: "team-b".into(),
                name: "local".into()
            },
            Touched::ClusterStore {
                name: "shared-vault".into()
            },
            Touched::Namespace {
                name: "team-b".into()
            },
        ]
        .into()
    );

    // A relist that misses a store deleted while the watch was down.
    i.reset(&[] as &[ClusterRotorStore]);
    assert_eq!(
        i.take_touched(),
        [Touched::ClusterStore {
            name: "shared-vault".into()
        }]
        .into()
    );
}

#[test]
fn lookup_gives_the_revision_and_a_typed_refusal() {
    let (_, cluster, namespaces) = listed();
    let mut i = StoreIndex::default();
    let mut store = cluster[0].clone();
    store.metadata.uid = Some("u1".into());
    store.metadata.generation = Some(7);
    i.apply(&store);
    i.apply(&namespaces[0]);
    let (resolved, revision) = i.lookup("team-a", "shared-vault", &["shared/x"]).unwrap();
    assert_eq!(resolved.kind, StoreKind::Cluster);
    assert_eq!(
        revision,
        Revision {
            uid: Some("u1".into()),
            generation: Some(7)
        }
    );
    assert!(matches!(
        i.lookup("team-a", "shared-vault", &["other/x"]),
        Err(Refusal::PathNotAllowed { .. })
    ));
    assert!(matches!(
        i.lookup("team-b", "shared-vault", &["shared/x"]),
        Err(Refusal::NamespaceNotAllowed { .. })
    ));
    assert!(matches!(
        i.lookup("team-a", "nothing", &[]),
        Err(Refusal::NotFound { .. })
    ));
}
