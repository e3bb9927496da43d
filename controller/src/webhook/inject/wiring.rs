//! What the store's provider and the channel add to the sidecar: its
//! flags (typed, rendered by the sidecar's own [`SidecarFlags`]), env,
//! volumes and mounts.
//!
//! [`SidecarFlags`]: rotor_sidecar::flags::SidecarFlags

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, EnvVar, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, ProjectedVolumeSource,
    SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use rotor_contract::api::ProviderKind;
use rotor_sidecar::flags::{ChannelFlags, StoreFlags, VaultAuthFlags};

use super::error::InjectError;
use super::objects::{field_env, mount, plain_env, secret_volume, token_volume};
use super::{
    CHANNEL_TOKEN_PATH, CHANNEL_TOKEN_SECONDS, CHANNEL_TOKEN_VOLUME, CONTROLLER_CA_ENV, CREDS_PATH,
    ChannelInjection,
};
use crate::store_index::Resolved;

/// The store's sidecar flags, env, volumes and mounts.
pub(super) type Wiring = (StoreFlags, Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>);

/// Sidecar flags, env, volumes and mounts for the store's provider.
pub(super) fn store_wiring(store: &Resolved, namespace: &str) -> Result<Wiring, InjectError> {
    let provider = store
        .provider
        .view()
        .map_err(|source| InjectError::NotOneProvider {
            store: format!("{} {:?}", store.kind, store.name),
            source,
        })?;
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let flags = match provider {
        ProviderKind::Vault(v) => {
            if let Some(ca) = &v.ca_bundle {
                env.push(plain_env("ROTOR_VAULT_CA_PEM", ca));
            }
            let auth = if let Some(k) = &v.auth.kubernetes {
                volumes.push(token_volume("rotor-sa-token", k.audience(), 3600));
                mounts.push(mount("rotor-sa-token", &format!("{CREDS_PATH}/sa"), true));
                VaultAuthFlags::Kubernetes {
                    role: k.role.clone(),
                    mount: k.mount_path.clone(),
                    jwt_file: format!("{CREDS_PATH}/sa/token"),
                }
            } else if let Some(a) = &v.auth.app_role {
                volumes.push(secret_volume(
                    "rotor-approle",
                    &a.secret_ref.name,
                    &a.secret_ref.key,
                    "secret-id",
                ));
                mounts.push(mount(
                    "rotor-approle",
                    &format!("{CREDS_PATH}/approle"),
                    true,
                ));
                VaultAuthFlags::AppRole {
                    role_id: a.role_id.clone(),
                    mount: a.mount_path.clone(),
                    secret_id_file: format!("{CREDS_PATH}/approle/secret-id"),
                }
            } else if let Some(t) = &v.auth.token_secret_ref {
                volumes.push(secret_volume("rotor-vault-token", &t.name, &t.key, "token"));
                mounts.push(mount(
                    "rotor-vault-token",
                    &format!("{CREDS_PATH}/vault-token"),
                    true,
                ));
                VaultAuthFlags::Token {
                    token_file: format!("{CREDS_PATH}/vault-token/token"),
                }
            } else {
                return Err(InjectError::NoVaultAuth {
                    store: format!("{} {:?}", store.kind, store.name),
                });
            };
            StoreFlags::Vault {
                addr: v.server.clone(),
                mount: v.mount.clone(),
                auth,
            }
        }
        ProviderKind::Aws(a) => {
            if let Some(role) = &a.role_arn {
                env.push(plain_env("AWS_ROLE_ARN", role));
                env.push(plain_env(
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    &format!("{CREDS_PATH}/aws/token"),
                ));
                volumes.push(token_volume("rotor-aws-token", "sts.amazonaws.com", 3600));
                mounts.push(mount("rotor-aws-token", &format!("{CREDS_PATH}/aws"), true));
            }
            StoreFlags::Aws {
                region: a.region.clone(),
                endpoint: a.endpoint.clone(),
            }
        }
        ProviderKind::Kubernetes(_) => {
            // Injected after the ServiceAccount admission plugin ran, so the
            // sidecar gets its own API credentials, where kube looks for them.
            volumes.push(Volume {
                name: "rotor-kube-api".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![
                        VolumeProjection {
                            service_account_token: Some(ServiceAccountTokenProjection {
                                path: "token".into(),
                                expiration_seconds: Some(3600),
                                ..ServiceAccountTokenProjection::default()
                            }),
                            ..VolumeProjection::default()
                        },
                        VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: "kube-root-ca.crt".into(),
                                items: Some(vec![KeyToPath {
                                    key: "ca.crt".into(),
                                    path: "ca.crt".into(),
                                    mode: None,
                                }]),
                                optional: None,
                            }),
                            ..VolumeProjection::default()
                        },
                        VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(vec![DownwardAPIVolumeFile {
                                    path: "namespace".into(),
                                    field_ref: Some(ObjectFieldSelector {
                                        field_path: "metadata.namespace".into(),
                                        ..ObjectFieldSelector::default()
                                    }),
                                    ..DownwardAPIVolumeFile::default()
                                }]),
                            }),
                            ..VolumeProjection::default()
                        },
                    ]),
                    ..ProjectedVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(mount(
                "rotor-kube-api",
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ));
            StoreFlags::Kubernetes {
                namespace: namespace.to_owned(),
            }
        }
        ProviderKind::Local(l) => {
            if let Some(v) = &l.volume {
                let mut volume = Volume {
                    name: "rotor-local-store".into(),
                    ..Volume::default()
                };
                if let Some(claim) = &v.persistent_volume_claim {
                    volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.clone(),
                        read_only: Some(true),
                    });
                } else if let Some(secret) = &v.secret {
                    volume.secret = Some(SecretVolumeSource {
                        secret_name: Some(secret.clone()),
                        default_mode: Some(0o400),
                        ..SecretVolumeSource::default()
                    });
                }
                volumes.push(volume);
                mounts.push(mount("rotor-local-store", &v.mount_path, true));
            }
            StoreFlags::Local {
                path: l.path.clone(),
                key: l.key_path.clone(),
            }
        }
    };
    Ok((flags, env, volumes, mounts))
}

/// The channel's flags, env, token volume and its mount: the controller's
/// address and CA bundle, the pod's name, namespace and uid from the
/// downward API (claims the controller checks against the token's
/// review), and a projected ServiceAccount token for Rotor's audience.
pub(super) fn channel_wiring(
    channel: &ChannelInjection,
) -> Result<(ChannelFlags, Vec<EnvVar>, Volume, VolumeMount), InjectError> {
    let ca = channel.ca.canonical()?;
    let flags = ChannelFlags {
        controller_addr: channel.controller_addr.clone(),
        token_file: rotor_contract::defaults::CHANNEL_TOKEN_FILE.to_owned(),
    };
    let env = vec![
        plain_env(CONTROLLER_CA_ENV, &ca),
        field_env("ROTOR_POD_NAME", "metadata.name"),
        field_env("ROTOR_POD_NAMESPACE", "metadata.namespace"),
        field_env("ROTOR_POD_UID", "metadata.uid"),
    ];
    let volume = token_volume(
        CHANNEL_TOKEN_VOLUME,
        rotor_channel::AUDIENCE,
        CHANNEL_TOKEN_SECONDS,
    );
    Ok((
        flags,
        env,
        volume,
        mount(CHANNEL_TOKEN_VOLUME, CHANNEL_TOKEN_PATH, true),
    ))
}
