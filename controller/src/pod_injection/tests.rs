//! The injected-pod test against pods the webhook's own `inject` built,
//! in both layouts, and against look-alikes that miss one piece each.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use kube::api::ObjectMeta;
use rotor_contract::annotations;
use rotor_contract::api::{LocalProvider, Provider};

use super::*;
use crate::store_index::{Resolved, StoreKind};
use crate::webhook::InjectConfig;
use crate::webhook::inject::inject;

/// [`plain`] as the webhook injects it, in either layout.
pub(crate) fn injected_pod(native_sidecar: bool) -> Pod {
    let pod = plain();
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    let contract = annotations::parse(ann.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
    let store = Resolved {
        kind: StoreKind::Namespaced,
        name: "local".into(),
        provider: Provider {
            vault: None,
            aws: None,
            kubernetes: None,
            local: Some(LocalProvider {
                path: "/store/s.rotor".into(),
                key_path: "/store/key".into(),
                volume: None,
            }),
        },
        allow_exec_reload: false,
        budget: None,
    };
    let config = InjectConfig {
        native_sidecar,
        ..InjectConfig::default()
    };
    inject(&pod, &contract, &store, &config).unwrap().pod
}

/// A pod asking for injection, as its owner writes it.
pub(crate) fn plain() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("app".into()),
            namespace: Some("shop".into()),
            annotations: Some(
                [
                    ("rotor.dev/inject", "true"),
                    ("rotor.dev/store", "local"),
                    ("rotor.dev/secret.db", "shop/db"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("example/app:1".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn spec(pod: &mut Pod) -> &mut PodSpec {
    pod.spec.as_mut().unwrap()
}

/// The native sidecar of an injected pod.
fn sidecar(pod: &mut Pod) -> &mut Container {
    spec(pod)
        .init_containers
        .iter_mut()
        .flatten()
        .find(|c| c.name == SIDECAR)
        .unwrap()
}

fn volume<'a>(pod: &'a mut Pod, name: &str) -> &'a mut Volume {
    spec(pod)
        .volumes
        .iter_mut()
        .flatten()
        .find(|v| v.name == name)
        .unwrap()
}

#[test]
fn pods_the_webhook_injected_pass_in_either_layout() {
    assert_eq!(injected(&injected_pod(true)), Some(Layout::Native));
    assert_eq!(injected(&injected_pod(false)), Some(Layout::Classic));
}

#[test]
fn a_pod_without_the_sidecar_does_not_pass_whatever_its_annotations_say() {
    let mut pod = plain();
    pod.metadata
        .annotations
        .get_or_insert_default()
        .insert(annotations::STATUS.into(), "injected".into());
    assert_eq!(injected(&pod), None);
    assert_eq!(injected(&Pod::default()), None);
}

/// Each piece of the sidecar the test relies on, taken away once.
#[test]
fn a_look_alike_missing_one_piece_does_not_pass() {
    type Edit = fn(&mut Pod);
    let cases: [(&str, Edit); 8] = [
        ("a decoy container under the sidecar's name", |p| {
            let s = sidecar(p);
            s.args = Some(vec!["sleep".into(), "infinity".into()]);
        }),
        ("the native sidecar without restartPolicy: Always", |p| {
            sidecar(p).restart_policy = None;
        }),
        ("the podinfo volume from a ConfigMap", |p| {
            let v = volume(p, PODINFO_VOLUME);
            v.downward_api = None;
            v.config_map = Some(Default::default());
        }),
        ("the podinfo volume with another field", |p| {
            let v = volume(p, PODINFO_VOLUME);
            let items = v.downward_api.as_mut().unwrap().items.as_mut().unwrap();
            items[0].field_ref.as_mut().unwrap().field_path = "metadata.labels".into();
        }),
        ("the podinfo mount writable", |p| {
            let s = sidecar(p);
            for m in s.volume_mounts.iter_mut().flatten() {
                if m.name == PODINFO_VOLUME {
                    m.read_only = Some(false);
                }
            }
        }),
        ("the secrets volume on disk", |p| {
            volume(p, SECRETS_VOLUME).empty_dir.as_mut().unwrap().medium = None;
        }),
        ("the secrets mount read-only in the sidecar", |p| {
            let s = sidecar(p);
            for m in s.volume_mounts.iter_mut().flatten() {
                if m.name == SECRETS_VOLUME {
                    m.read_only = Some(true);
                }
            }
        }),
        ("no volumes at all", |p| spec(p).volumes = None),
    ];
    for (what, edit) in cases {
        let mut pod = injected_pod(true);
        edit(&mut pod);
        assert_eq!(injected(&pod), None, "{what}");
    }
}

#[test]
fn the_classic_layout_needs_its_init_container() {
    let mut pod = injected_pod(false);
    spec(&mut pod).init_containers = None;
    assert_eq!(injected(&pod), None);
}

/// The subresource policy in `deploy/` protects Rotor's containers and
/// volumes by this prefix: everything Rotor adds carries it.
#[test]
fn everything_rotor_injects_is_named_with_its_prefix() {
    for native in [true, false] {
        let before = plain();
        let after = injected_pod(native);
        let names = |p: &Pod| -> Vec<String> {
            let spec = p.spec.as_ref().unwrap();
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .map(|c| c.name.clone())
                .chain(spec.volumes.iter().flatten().map(|v| v.name.clone()))
                .collect()
        };
        let old = names(&before);
        let added: Vec<String> = names(&after)
            .into_iter()
            .filter(|n| !old.contains(n))
            .collect();
        assert!(added.len() >= 4, "{added:?}");
        for name in added {
            assert!(name.starts_with(RESERVED_PREFIX), "{name}");
        }
    }
}
