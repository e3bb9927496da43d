//! Flags that say which store to read and how to reach it.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use rotor_envelope::{Kek, KeyFileKek};
use rotor_store::{
    AwsConfig, AwsStore, LocalStore, RetireMode, Store, VaultAuth, VaultConfig, VaultStore,
};

/// Which store backend the sidecar reads (`--store-kind`). Not the
/// controller's `store_index::StoreKind`, which says whether a store is a
/// RotorStore or a ClusterRotorStore.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    /// The embedded envelope-encrypted store file.
    Local,
    /// HashiCorp Vault or OpenBao, KV v2.
    Vault,
    /// AWS Secrets Manager.
    Aws,
    /// Kubernetes Secrets in the pod's namespace (watched, not polled).
    Kubernetes,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VaultAuthMethod {
    /// A token read from --vault-token-file (re-read when it changes).
    Token,
    /// Kubernetes auth with the pod's service-account token.
    Kubernetes,
    /// AppRole with --vault-role-id and --vault-secret-id-file.
    Approle,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Which kind of store to read.
    #[arg(long, env = "ROTOR_STORE_KIND", value_enum, default_value_t = Backend::Local)]
    pub store_kind: Backend,

    /// The local store file (--store-kind local).
    #[arg(long = "local-store", env = "ROTOR_LOCAL_STORE", value_name = "PATH")]
    pub local_store: Option<PathBuf>,

    /// The key-encryption key file of the local store.
    #[arg(long, env = "ROTOR_KEY", value_name = "KEYFILE")]
    pub key: Option<PathBuf>,

    /// Vault/OpenBao address, e.g. https://vault.vault:8200.
    #[arg(long, env = "ROTOR_VAULT_ADDR", value_name = "URL")]
    pub vault_addr: Option<String>,

    /// The KV v2 mount.
    #[arg(long, env = "ROTOR_VAULT_MOUNT", default_value = rotor_contract::defaults::VAULT_KV_MOUNT)]
    pub vault_mount: String,

    /// How to log in to Vault.
    #[arg(long, env = "ROTOR_VAULT_AUTH", value_enum, default_value_t = VaultAuthMethod::Token)]
    pub vault_auth: VaultAuthMethod,

    /// The token file (--vault-auth token).
    #[arg(
        long,
        env = "ROTOR_VAULT_TOKEN_FILE",
        default_value = "/var/run/secrets/rotor/vault-token"
    )]
    pub vault_token_file: PathBuf,

    /// The auth mount (default: kubernetes or approle).
    #[arg(long, env = "ROTOR_VAULT_AUTH_MOUNT")]
    pub vault_auth_mount: Option<String>,

    /// The Vault role (--vault-auth kubernetes).
    #[arg(long, env = "ROTOR_VAULT_ROLE")]
    pub vault_role: Option<String>,

    /// The projected service-account token (--vault-auth kubernetes).
    #[arg(
        long,
        env = "ROTOR_VAULT_JWT_FILE",
        default_value = rotor_contract::defaults::SERVICE_ACCOUNT_TOKEN
    )]
    pub vault_jwt_file: PathBuf,

    /// The AppRole role id (--vault-auth approle).
    #[arg(long, env = "ROTOR_VAULT_ROLE_ID")]
    pub vault_role_id: Option<String>,

    /// The file holding the AppRole secret id (--vault-auth approle).
    #[arg(long, env = "ROTOR_VAULT_SECRET_ID_FILE")]
    pub vault_secret_id_file: Option<PathBuf>,

    /// A PEM CA bundle for Vault's certificate.
    #[arg(long, env = "ROTOR_VAULT_CA_CERT")]
    pub vault_ca_cert: Option<PathBuf>,

    /// The same CA bundle as PEM text (the webhook passes a RotorStore's
    /// caBundle this way); written to a file under $TMPDIR.
    #[arg(long, env = "ROTOR_VAULT_CA_PEM", hide_env_values = true)]
    pub vault_ca_pem: Option<String>,

    /// AWS region (otherwise the default chain's).
    #[arg(long, env = "ROTOR_AWS_REGION")]
    pub aws_region: Option<String>,

    /// AWS endpoint override (a VPC endpoint, or a test server).
    #[arg(long, env = "ROTOR_AWS_ENDPOINT", value_name = "URL")]
    pub aws_endpoint: Option<String>,

    /// The namespace of the Secrets (--store-kind kubernetes); the webhook
    /// sets the pod's own. Default: the namespace of the pod's service
    /// account. (`--namespace` is an old name of this flag.)
    #[arg(
        long = "kubernetes-namespace",
        alias = "namespace",
        env = "ROTOR_KUBERNETES_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
}

impl StoreArgs {
    /// Builds the store the flags describe.
    pub async fn build(&self) -> crate::Result<Arc<dyn Store>> {
        Ok(match self.store_kind {
            Backend::Local => {
                let path = self.local_store.clone().ok_or(crate::Error::MissingFlag {
                    flag: "--local-store (ROTOR_LOCAL_STORE)",
                    when: "with --store-kind local",
                })?;
                let key = self.key.as_ref().ok_or(crate::Error::MissingFlag {
                    flag: "--key (ROTOR_KEY)",
                    when: "with --store-kind local",
                })?;
                let kek: Arc<dyn Kek> = Arc::new(KeyFileKek::load(key)?);
                Arc::new(LocalStore::new(path, kek))
            }
            Backend::Vault => Arc::new(VaultStore::new(self.vault_config()?)?),
            Backend::Kubernetes => {
                let namespace = match &self.namespace {
                    Some(ns) => ns.clone(),
                    None => std::fs::read_to_string(
                        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
                    )
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| crate::Error::MissingFlag {
                        flag: "--kubernetes-namespace (ROTOR_KUBERNETES_NAMESPACE)",
                        when: "outside a pod",
                    })?,
                };
                let client = kube::Client::try_default()
                    .await
                    .map_err(crate::Error::KubeConfig)?;
                Arc::new(rotor_store::KubeStore::new(client, &namespace))
            }
            Backend::Aws => Arc::new(
                AwsStore::new(AwsConfig {
                    region: self.aws_region.clone(),
                    endpoint: self.aws_endpoint.clone(),
                    static_credentials: None,
                    web_identity: None,
                })
                .await,
            ),
        })
    }

    pub fn vault_config(&self) -> crate::Result<VaultConfig> {
        let addr = self.vault_addr.clone().ok_or(crate::Error::MissingFlag {
            flag: "--vault-addr (ROTOR_VAULT_ADDR)",
            when: "with --store-kind vault",
        })?;
        let auth =
            match self.vault_auth {
                VaultAuthMethod::Token => VaultAuth::TokenFile(self.vault_token_file.clone()),
                VaultAuthMethod::Kubernetes => VaultAuth::Kubernetes {
                    mount: self.vault_auth_mount.clone().unwrap_or_else(|| {
                        rotor_contract::defaults::VAULT_KUBERNETES_MOUNT.to_owned()
                    }),
                    role: self.vault_role.clone().ok_or(crate::Error::MissingFlag {
                        flag: "--vault-role (ROTOR_VAULT_ROLE)",
                        when: "with --vault-auth kubernetes",
                    })?,
                    jwt: std::sync::Arc::new(rotor_store::TokenFile::new(&self.vault_jwt_file)),
                },
                VaultAuthMethod::Approle => VaultAuth::AppRole {
                    mount: self.vault_auth_mount.clone().unwrap_or_else(|| {
                        rotor_contract::defaults::VAULT_APPROLE_MOUNT.to_owned()
                    }),
                    role_id: self
                        .vault_role_id
                        .clone()
                        .ok_or(crate::Error::MissingFlag {
                            flag: "--vault-role-id",
                            when: "with --vault-auth approle",
                        })?,
                    secret_id_path: self.vault_secret_id_file.clone().ok_or(
                        crate::Error::MissingFlag {
                            flag: "--vault-secret-id-file",
                            when: "with --vault-auth approle",
                        },
                    )?,
                },
            };
        let mut config = VaultConfig::new(addr, auth);
        config.mount = self.vault_mount.clone();
        config.ca_cert = self.vault_ca_cert.clone();
        if let Some(pem) = &self.vault_ca_pem {
            let path = std::env::temp_dir().join("rotor-vault-ca.pem");
            std::fs::write(&path, pem).map_err(|source| crate::Error::OwnFile {
                what: "the Vault CA bundle",
                path: path.clone(),
                source,
            })?;
            config.ca_cert = Some(path);
        }
        config.retire = RetireMode::Destroy;
        Ok(config)
    }
}
