//! The one place a `rotor_store::Store` is built from a RotorStore's
//! provider spec, for both rotation modes. What differs between the modes
//! is what the controller itself can reach, which [`Reach`] says.

use std::path::PathBuf;
use std::sync::Arc;

use rotor_crds::api::{Provider, ProviderKind, VaultProvider};
use rotor_envelope::{Kek, KeyFileKek};
use rotor_store::{AwsConfig, AwsStore, LocalStore, Store, VaultAuth, VaultConfig, VaultStore};

use crate::{Error, Result};

/// The in-pod service-account token, for Vault Kubernetes auth in
/// standalone mode run inside a pod.
const POD_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// What the controller can reach with its own credentials.
#[derive(Clone, Debug)]
pub enum Reach {
    /// Standalone: files on this host (local stores), and Vault with a
    /// token file or, without one, Kubernetes auth with the pod's token.
    Standalone { vault_token_file: Option<PathBuf> },
    /// In a cluster: no Secret or file access, so only Vault with
    /// Kubernetes auth (the controller's own projected token) and AWS.
    Cluster { vault_jwt_file: PathBuf },
}

/// Builds the store `name` with this provider as `reach` allows.
pub async fn build(name: &str, provider: &Provider, reach: &Reach) -> Result<Arc<dyn Store>> {
    let unsupported = |reason: &str| Error::UnsupportedStore {
        store: name.to_owned(),
        reason: reason.to_owned(),
    };
    let kind = provider.view().map_err(|source| Error::Provider {
        store: name.to_owned(),
        source,
    })?;
    match (kind, reach) {
        (ProviderKind::Local(l), Reach::Standalone { .. }) => {
            let kek: Arc<dyn Kek> =
                Arc::new(KeyFileKek::load(std::path::Path::new(&l.key_path)).map_err(
                    |source| Error::KeyFile {
                        store: name.to_owned(),
                        source,
                    },
                )?);
            Ok(Arc::new(LocalStore::new(&l.path, kek)))
        }
        (ProviderKind::Vault(v), _) => {
            let mut config = VaultConfig::new(v.server.clone(), vault_auth(v, reach, unsupported)?);
            config.mount = v.mount.clone();
            Ok(Arc::new(VaultStore::new(config)?))
        }
        (ProviderKind::Aws(a), _) => Ok(Arc::new(
            AwsStore::new(AwsConfig {
                region: Some(a.region.clone()),
                endpoint: a.endpoint.clone(),
                static_credentials: None,
            })
            .await,
        )),
        (ProviderKind::Kubernetes(_), Reach::Standalone { .. }) => Err(unsupported(
            "standalone mode supports local, vault and aws stores",
        )),
        (ProviderKind::Kubernetes(_) | ProviderKind::Local(_), Reach::Cluster { .. }) => {
            Err(unsupported(
                "rotation in a cluster supports vault and aws stores (the controller holds no Secret or file access)",
            ))
        }
    }
}

/// How the controller logs in to a Vault store.
fn vault_auth(
    v: &VaultProvider,
    reach: &Reach,
    unsupported: impl Fn(&str) -> Error,
) -> Result<VaultAuth> {
    let kubernetes = v.auth.kubernetes.as_ref();
    match reach {
        Reach::Standalone {
            vault_token_file: Some(file),
        } => Ok(VaultAuth::TokenFile(file.clone())),
        Reach::Standalone {
            vault_token_file: None,
        } => kubernetes
            .map(|k| VaultAuth::Kubernetes {
                mount: k.mount_path.clone(),
                role: k.role.clone(),
                jwt_path: POD_TOKEN.into(),
            })
            .ok_or_else(|| {
                unsupported(
                    "standalone mode cannot read Kubernetes Secrets; pass --vault-token-file",
                )
            }),
        Reach::Cluster { vault_jwt_file } => kubernetes
            .map(|k| VaultAuth::Kubernetes {
                mount: k.mount_path.clone(),
                role: k.role.clone(),
                jwt_path: vault_jwt_file.clone(),
            })
            .ok_or_else(|| {
                unsupported("rotation in a cluster needs Vault kubernetes auth for the controller")
            }),
    }
}

#[cfg(test)]
mod tests {
    use rotor_crds::api::{
        AwsProvider, KubernetesProvider, LocalProvider, VaultAuthSpec, VaultKubernetesAuth,
    };

    use super::*;

    fn none() -> Provider {
        Provider {
            vault: None,
            aws: None,
            kubernetes: None,
            local: None,
        }
    }

    fn vault(kubernetes: bool) -> Provider {
        Provider {
            vault: Some(VaultProvider {
                server: "http://127.0.0.1:1".into(),
                mount: "secret".into(),
                ca_bundle: None,
                auth: VaultAuthSpec {
                    kubernetes: kubernetes.then(|| VaultKubernetesAuth {
                        role: "r".into(),
                        mount_path: "kubernetes".into(),
                    }),
                    app_role: None,
                    token_secret_ref: None,
                },
            }),
            ..none()
        }
    }

    fn standalone() -> Reach {
        Reach::Standalone {
            vault_token_file: None,
        }
    }

    fn cluster() -> Reach {
        Reach::Cluster {
            vault_jwt_file: "/jwt".into(),
        }
    }

    async fn refusal(provider: Provider, reach: Reach) -> String {
        match build("s", &provider, &reach).await {
            Ok(_) => panic!("built"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn each_mode_refuses_what_it_cannot_reach() {
        let kubernetes = Provider {
            kubernetes: Some(KubernetesProvider {}),
            ..none()
        };
        let local = Provider {
            local: Some(LocalProvider {
                path: "/s".into(),
                key_path: "/k".into(),
                volume: None,
            }),
            ..none()
        };
        assert_eq!(
            refusal(kubernetes.clone(), standalone()).await,
            "store \"s\": standalone mode supports local, vault and aws stores"
        );
        for p in [kubernetes, local] {
            assert!(
                refusal(p, cluster())
                    .await
                    .contains("rotation in a cluster supports vault and aws stores")
            );
        }
        assert!(
            refusal(vault(false), cluster())
                .await
                .contains("needs Vault kubernetes auth")
        );
        assert!(
            refusal(vault(false), standalone())
                .await
                .contains("pass --vault-token-file")
        );
        assert_eq!(
            refusal(none(), standalone()).await,
            "store \"s\": spec.provider sets 0 providers; expected exactly one of vault, aws, kubernetes, local"
        );
    }

    #[tokio::test]
    async fn vault_and_aws_build_in_both_modes() {
        let aws = Provider {
            aws: Some(AwsProvider {
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:1".into()),
                role_arn: None,
            }),
            ..none()
        };
        for reach in [standalone(), cluster()] {
            let store = build("s", &vault(true), &reach).await.unwrap();
            assert!(
                store.describe().contains("127.0.0.1:1"),
                "{}",
                store.describe()
            );
            build("s", &aws, &reach).await.unwrap();
        }
        let token = Reach::Standalone {
            vault_token_file: Some("/token".into()),
        };
        build("s", &vault(false), &token).await.unwrap();
    }
}
