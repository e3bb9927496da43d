//! The one place a `rotor_store::Store` is built from a RotorStore's
//! provider spec, for both rotation modes. What differs between the modes
//! is what the controller itself can reach, which [`Reach`] says.

use std::path::PathBuf;
use std::sync::Arc;

use rotor_contract::api::{Provider, ProviderKind, VaultProvider};
use rotor_envelope::{Kek, KeyFileKek};
use rotor_store::{
    AwsConfig, AwsStore, LocalStore, Store, TokenFile, VaultAuth, VaultConfig, VaultStore,
    WebIdentity,
};

use crate::identity::Rotator;
use crate::{Error, Result};

/// What the controller can reach, and as whom.
#[derive(Clone, Debug)]
pub enum Reach {
    /// Standalone: files on this host (local stores), Vault with a token
    /// file or, without one, Kubernetes auth with the pod's token, and AWS
    /// with the default credential chain.
    Standalone { vault_token_file: Option<PathBuf> },
    /// In a cluster: no Secret or file access and no store credential of
    /// its own. Vault (Kubernetes auth) and AWS (web identity) only, as the
    /// policy's namespace's rotator ServiceAccount.
    Cluster(Rotator),
}

/// Builds the store `name` with this provider as `reach` allows. In a
/// cluster it requests the rotator's first token now, so a namespace
/// without the account fails here, with [`Error::RotatorMissing`].
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
            let auth = vault_auth(v, reach, unsupported).await?;
            let mut config = VaultConfig::new(v.server.clone(), auth);
            config.mount = v.mount.clone();
            Ok(Arc::new(VaultStore::new(config)?))
        }
        (ProviderKind::Aws(a), _) => {
            let web_identity = match reach {
                Reach::Standalone { .. } => None,
                Reach::Cluster(rotator) => {
                    let role_arn = a.role_arn.clone().ok_or_else(|| Error::AwsRoleMissing {
                        store: name.to_owned(),
                        subject: rotator.subject(),
                    })?;
                    let tokens = rotator.tokens(rotor_contract::defaults::STS_AUDIENCE);
                    tokens.token_now().await?;
                    Some(WebIdentity {
                        role_arn,
                        session_name: rotator.session_name(),
                        token: tokens,
                    })
                }
            };
            Ok(Arc::new(
                AwsStore::new(AwsConfig {
                    region: Some(a.region.clone()),
                    endpoint: a.endpoint.clone(),
                    static_credentials: None,
                    web_identity,
                })
                .await,
            ))
        }
        (ProviderKind::Kubernetes(_), Reach::Standalone { .. }) => Err(unsupported(
            "standalone mode supports local, vault and aws stores",
        )),
        (ProviderKind::Kubernetes(_) | ProviderKind::Local(_), Reach::Cluster(_)) => {
            Err(unsupported(
                "rotation in a cluster supports vault and aws stores (the controller holds no Secret or file access)",
            ))
        }
    }
}

/// How the controller logs in to a Vault store.
async fn vault_auth(
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
                jwt: Arc::new(TokenFile::new(
                    rotor_contract::defaults::SERVICE_ACCOUNT_TOKEN,
                )),
            })
            .ok_or_else(|| {
                unsupported(
                    "standalone mode cannot read Kubernetes Secrets; pass --vault-token-file",
                )
            }),
        Reach::Cluster(rotator) => {
            let k = kubernetes.ok_or_else(|| {
                unsupported(
                    "rotation in a cluster needs Vault kubernetes auth (it logs in as the namespace's rotator ServiceAccount)",
                )
            })?;
            let tokens = rotator.tokens(k.audience());
            tokens.token_now().await?;
            Ok(VaultAuth::Kubernetes {
                mount: k.mount_path.clone(),
                role: k.role.clone(),
                jwt: tokens,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestStatus};
    use rotor_contract::api::{
        AwsProvider, KubernetesProvider, LocalProvider, VaultAuthSpec, VaultKubernetesAuth,
    };
    use rotor_fixtures::api_server::{Exchange, Recorded, Reply, Scenario, pair};

    use super::*;
    use crate::identity::Rotators;

    const TOKEN_PATH: &str = "/api/v1/namespaces/team-a/serviceaccounts/rotor-rotator/token";

    fn issued() -> TokenRequest {
        TokenRequest {
            status: Some(TokenRequestStatus {
                token: "canary-rotator-token".into(),
                expiration_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    chrono::Utc::now(),
                ),
            }),
            ..TokenRequest::default()
        }
    }

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
                        audience: None,
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

    /// Cluster mode in namespace team-a, against a fake API server.
    fn cluster_with(scenario: Scenario) -> (Reach, Recorded) {
        let (client, server) = pair("default");
        let seen = server.run(scenario);
        let rotator = Rotators::new(client, "rotor-rotator").in_namespace("team-a");
        (Reach::Cluster(rotator), seen)
    }

    fn cluster() -> Reach {
        cluster_with(Scenario::echo(&issued())).0
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

    fn aws(role_arn: Option<&str>) -> Provider {
        Provider {
            aws: Some(AwsProvider {
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:1".into()),
                role_arn: role_arn.map(str::to_owned),
            }),
            ..none()
        }
    }

    #[tokio::test]
    async fn vault_and_aws_build_in_both_modes() {
        let role = Some("arn:aws:iam::123456789012:role/team-a");
        for reach in [standalone(), cluster()] {
            let store = build("s", &vault(true), &reach).await.unwrap();
            assert!(
                store.describe().contains("127.0.0.1:1"),
                "{}",
                store.describe()
            );
            build("s", &aws(role), &reach).await.unwrap();
        }
        build("s", &aws(None), &standalone()).await.unwrap();
        let token = Reach::Standalone {
            vault_token_file: Some("/token".into()),
        };
        build("s", &vault(false), &token).await.unwrap();
    }

    #[tokio::test]
    async fn in_a_cluster_tokens_are_the_namespaces_rotators_for_the_stores_audience() {
        let script = (0..3)
            .map(|_| Exchange::expect(Method::POST, TOKEN_PATH).reply(Reply::created(&issued())))
            .collect();
        let (reach, seen) = cluster_with(Scenario::Script(script));
        build("s", &vault(true), &reach).await.unwrap();
        let mut custom = vault(true);
        if let Some(k) = custom.vault.as_mut().unwrap().auth.kubernetes.as_mut() {
            k.audience = Some("bao.example".into());
        }
        build("s", &custom, &reach).await.unwrap();
        build("s", &aws(Some("arn:aws:iam::1:role/r")), &reach)
            .await
            .unwrap();
        let audiences: Vec<_> = seen
            .finished()
            .await
            .iter()
            .map(|r| r.body["spec"]["audiences"].clone())
            .collect();
        assert_eq!(
            audiences,
            [
                serde_json::json!(["vault"]),
                serde_json::json!(["bao.example"]),
                serde_json::json!(["sts.amazonaws.com"])
            ]
        );
    }

    #[tokio::test]
    async fn in_a_cluster_a_missing_rotator_or_role_arn_is_a_typed_error() {
        let (reach, _seen) = cluster_with(Scenario::Script(vec![
            Exchange::expect(Method::POST, TOKEN_PATH).reply(Reply::not_found()),
        ]));
        let err = build("s", &vault(true), &reach).await.err().unwrap();
        assert!(matches!(err, Error::RotatorMissing { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("kubectl -n team-a create serviceaccount rotor-rotator"),
            "{err}"
        );
        let err = build("s", &aws(None), &cluster()).await.err().unwrap();
        assert!(matches!(err, Error::AwsRoleMissing { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("system:serviceaccount:team-a:rotor-rotator"),
            "{err}"
        );
    }
}
