//! The flags the webhook writes into the sidecar container, parsed by the
//! sidecar's own argument parser: a flag the sidecar does not know, or a
//! value it cannot parse, fails here rather than in a pod.

use clap::Parser as _;
use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, PodSpec};
use kube::api::ObjectMeta;
use rotor_contract::api::Provider;
use rotor_contract::defaults;
use rotor_controller::store_index::{self, Resolved};
use rotor_controller::webhook::InjectConfig;
use rotor_controller::webhook::inject::{
    CaSource, ChannelInjection, INIT, SIDECAR, canonical_pem, inject,
};
use rotor_sidecar::store_args::{Backend, VaultAuthMethod};

/// A CA bundle as the controller holds it (one per test run).
fn ca_pem() -> String {
    static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        rcgen::generate_simple_self_signed(vec!["rotor-webhook.rotor-system.svc".to_owned()])
            .unwrap()
            .cert
            .pem()
    })
    .clone()
}

/// The default settings, with the channel as `run` injects it.
fn with_channel() -> InjectConfig {
    InjectConfig {
        channel: Some(ChannelInjection {
            controller_addr: "rotor-webhook.rotor-system.svc:9466".into(),
            ca: CaSource::Pem(ca_pem()),
        }),
        ..InjectConfig::default()
    }
}

fn provider(yaml: &str) -> Provider {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn pod(run_as_user: Option<i64>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("app".into()),
            namespace: Some("shop".into()),
            annotations: Some(
                [
                    ("rotor.dev/inject", "true"),
                    ("rotor.dev/store", "s"),
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
                ..Container::default()
            }],
            security_context: Some(PodSecurityContext {
                run_as_user,
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The sidecar containers the webhook injects for `provider`, their
/// args parsed.
fn injected(
    provider: Provider,
    config: &InjectConfig,
    run_as_user: Option<i64>,
) -> Vec<(Container, rotor_sidecar::Args)> {
    let pod = pod(run_as_user);
    let annotations = pod.metadata.annotations.clone().unwrap();
    let contract = rotor_contract::annotations::parse(
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap();
    let store = Resolved {
        kind: store_index::StoreKind::Namespaced,
        name: "s".into(),
        provider,
        allow_exec_reload: false,
        budget: None,
    };
    let injected = inject(&pod, &contract, &store, config).unwrap().pod;
    let spec = injected.spec.unwrap();
    spec.init_containers
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers)
        .filter(|c| c.name == SIDECAR || c.name == INIT)
        .map(|c| {
            let argv = c.args.iter().flatten().cloned();
            let parsed = rotor_sidecar::Args::try_parse_from(
                std::iter::once("rotor-sidecar".to_owned()).chain(argv),
            )
            .unwrap_or_else(|e| panic!("{:?}: {e}", c.args));
            (c, parsed)
        })
        .collect()
}

/// Every file flag names a path inside one of the container's mounts.
fn assert_mounted(container: &Container, path: &std::path::Path) {
    let mounts = container.volume_mounts.as_ref().unwrap();
    assert!(
        mounts.iter().any(|m| path.starts_with(&m.mount_path)),
        "{} is not under any mount of {}",
        path.display(),
        container.name
    );
}

#[test]
fn the_common_flags_parse_to_the_shared_defaults() {
    let config = InjectConfig::default();
    let provider = provider("kubernetes: {}");
    for (user, mode) in [(Some(1000), 0o400), (None, 0o444)] {
        let parsed = injected(provider.clone(), &config, user);
        assert_eq!(parsed.len(), 1, "one native sidecar");
        let (container, args) = &parsed[0];
        assert_eq!(
            args.out_dir(),
            std::path::Path::new(defaults::MOUNT_PATH),
            "the sidecar writes where the app containers mount"
        );
        assert_mounted(container, args.out_dir());
        assert_mounted(container, args.annotations());
        assert_eq!(args.admin_addr().port(), defaults::ADMIN_PORT);
        // No --push-addr: the push port is the sidecar's loopback default.
        assert!(args.push_addr().ip().is_loopback());
        assert_eq!(args.default_file_mode(), mode);
        assert!(!args.once());
    }
}

/// The channel's flags parse, the token file is on a mounted projected
/// token of Rotor's audience, and every env var the webhook adds for it is
/// one the sidecar reads (the CA bundle, the pod's name, namespace, uid).
#[test]
fn the_channel_flags_and_env_are_the_sidecars() {
    use clap::CommandFactory as _;
    let parsed = injected(provider("kubernetes: {}"), &with_channel(), Some(1000));
    let (container, args) = &parsed[0];
    let channel = args.channel();
    assert_eq!(
        channel.controller_addr.as_deref(),
        Some("rotor-webhook.rotor-system.svc:9466")
    );
    assert_mounted(container, &channel.channel_token);
    let sidecar_env: Vec<String> = rotor_sidecar::Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let env = container.env.as_ref().unwrap();
    for (name, field) in [
        ("ROTOR_CONTROLLER_CA_PEM", None),
        ("ROTOR_POD_NAME", Some("metadata.name")),
        ("ROTOR_POD_NAMESPACE", Some("metadata.namespace")),
        ("ROTOR_POD_UID", Some("metadata.uid")),
    ] {
        assert!(sidecar_env.iter().any(|e| e == name), "{name}");
        let var = env.iter().find(|e| e.name == name).expect(name);
        assert_eq!(
            var.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            field,
            "{name}"
        );
    }
    let ca = env
        .iter()
        .find(|e| e.name == "ROTOR_CONTROLLER_CA_PEM")
        .unwrap();
    assert_eq!(
        ca.value.as_deref(),
        Some(canonical_pem(ca_pem().as_bytes()).unwrap().as_str())
    );
    // The sidecar accepts the injected bundle.
    rotor_sidecar::channel::tls_config_pem(ca.value.as_ref().unwrap().as_bytes(), "env").unwrap();
}

#[test]
fn the_classic_layout_adds_an_init_container_that_runs_once() {
    let config = InjectConfig {
        native_sidecar: false,
        mount_path: "/etc/app/secrets".into(),
        ..InjectConfig::default()
    };
    let parsed = injected(provider("kubernetes: {}"), &config, Some(1000));
    let once: Vec<bool> = parsed.iter().map(|(_, a)| a.once()).collect();
    assert_eq!(once, vec![true, false]);
    for (_, args) in &parsed {
        assert_eq!(args.out_dir(), std::path::Path::new("/etc/app/secrets"));
    }
}

#[test]
fn each_providers_store_flags_parse_into_a_store_config() {
    let config = InjectConfig::default();
    let vault = |auth: &str| {
        provider(&format!(
            "vault: {{server: 'https://vault:8200', mount: kv, auth: {auth}}}"
        ))
    };
    // Vault with Kubernetes auth: the projected token's path is mounted.
    let (container, args) = injected(
        vault("{kubernetes: {role: shop, mountPath: k8s}}"),
        &config,
        Some(1000),
    )
    .remove(0);
    let store = args.store();
    assert!(matches!(store.store_kind, Backend::Vault));
    assert!(matches!(store.vault_auth, VaultAuthMethod::Kubernetes));
    assert_eq!(store.vault_addr.as_deref(), Some("https://vault:8200"));
    assert_eq!(store.vault_mount, "kv");
    assert_eq!(store.vault_role.as_deref(), Some("shop"));
    assert_eq!(store.vault_auth_mount.as_deref(), Some("k8s"));
    assert_mounted(&container, &store.vault_jwt_file);
    store.vault_config().unwrap();

    // AppRole: the secret id file is mounted.
    let (container, args) = injected(
        vault("{appRole: {roleId: r1, secretRef: {name: approle, key: id}}}"),
        &config,
        Some(1000),
    )
    .remove(0);
    let store = args.store();
    assert!(matches!(store.vault_auth, VaultAuthMethod::Approle));
    assert_eq!(store.vault_role_id.as_deref(), Some("r1"));
    assert_eq!(store.vault_auth_mount.as_deref(), Some("approle"));
    assert_mounted(&container, store.vault_secret_id_file.as_ref().unwrap());
    store.vault_config().unwrap();

    // A token from a Secret: the token file is mounted.
    let (container, args) = injected(
        vault("{tokenSecretRef: {name: t, key: token}}"),
        &config,
        Some(1000),
    )
    .remove(0);
    let store = args.store();
    assert!(matches!(store.vault_auth, VaultAuthMethod::Token));
    assert_mounted(&container, &store.vault_token_file);
    store.vault_config().unwrap();

    // AWS.
    let (_, args) = injected(
        provider("aws: {region: eu-west-1, endpoint: 'https://vpce.example'}"),
        &config,
        Some(1000),
    )
    .remove(0);
    let store = args.store();
    assert!(matches!(store.store_kind, Backend::Aws));
    assert_eq!(store.aws_region.as_deref(), Some("eu-west-1"));
    assert_eq!(store.aws_endpoint.as_deref(), Some("https://vpce.example"));

    // Kubernetes: the pod's own namespace.
    let (_, args) = injected(provider("kubernetes: {}"), &config, Some(1000)).remove(0);
    let store = args.store();
    assert!(matches!(store.store_kind, Backend::Kubernetes));
    assert_eq!(store.namespace.as_deref(), Some("shop"));

    // Local: the store and key files on the mounted volume.
    let (container, args) = injected(
        provider(
            "local: {path: /var/lib/rotor/s.rotor, keyPath: /var/lib/rotor/kek, volume: {secret: store, mountPath: /var/lib/rotor}}",
        ),
        &config,
        Some(1000),
    )
    .remove(0);
    let store = args.store();
    assert!(matches!(store.store_kind, Backend::Local));
    let path = store.local_store.as_ref().unwrap();
    assert_eq!(path, std::path::Path::new("/var/lib/rotor/s.rotor"));
    assert_mounted(&container, path);
    assert_mounted(&container, store.key.as_ref().unwrap());
}
