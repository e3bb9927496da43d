//! The RotorStore and ClusterRotorStore resources: where secrets live and how
//! to reach them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// Where secrets live and how to reach them. Pods name a store; its address
/// and credentials come only from here.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rotor.dev",
    version = "v1alpha1",
    kind = "RotorStore",
    doc = "Where secrets live and how to reach them, for pods in this namespace.",
    namespaced,
    shortname = "rss",
    category = "rotor",
    status = "RotorStoreStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".status.provider"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RotorStoreSpec {
    pub provider: Provider,
    /// Let pods of this store run `exec:` reload actions. An exec action
    /// runs as the sidecar's user in the sidecar's container, so it can
    /// read what the sidecar can: the store credentials and every secret
    /// file. Off unless the store's owner turns it on.
    #[serde(default)]
    pub allow_exec_reload: bool,
    /// How many requests a second the controller may send this store.
    /// Unset: the provider's published quotas (AWS Secrets Manager:
    /// DescribeSecret 40,000, GetSecretValue 10,000, writes 50 a second);
    /// no limit for Vault, Kubernetes and the local store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<StoreBudget>,
}

/// A call budget: a token bucket of `burst` requests refilled at
/// `requestsPerSecond`. It bounds every request the controller sends the
/// store (change checks, rotation); a throttling answer slows it further.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.requestsPerSecond >= 1").message("budget.requestsPerSecond must be at least 1").field_path(".requestsPerSecond"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.burst) || self.burst >= 1").message("budget.burst must be at least 1").field_path(".burst"))]
pub struct StoreBudget {
    /// Requests a second, at least 1.
    pub requests_per_second: u32,
    /// Requests at once after a quiet spell (the bucket's size), at least
    /// 1. Default: requestsPerSecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// A store for many namespaces: those its `allowedNamespaces` selector
/// matches, and only for the secret paths its `paths` allow there.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rotor.dev",
    version = "v1alpha1",
    kind = "ClusterRotorStore",
    doc = "A store for pods in the namespaces and secret paths it allows.",
    shortname = "rcss",
    category = "rotor",
    status = "RotorStoreStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".status.provider"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.provider.vault) || (!has(self.provider.vault.auth.tokenSecretRef) && !has(self.provider.vault.auth.appRole))").message("a ClusterRotorStore cannot use Secret-based Vault auth (tokenSecretRef, appRole): pods in other namespaces cannot mount its Secret; use kubernetes auth").field_path(".provider.vault.auth"))]
pub struct ClusterRotorStoreSpec {
    pub provider: Provider,
    /// Namespaces that may use this store. An empty selector matches none.
    pub allowed_namespaces: LabelSelector,
    /// Which secret paths each namespace may read. A path matches a pattern
    /// where `*` stands for any characters but `/`, `**` for any
    /// characters, and `{namespace}` for the pod's namespace. No pattern,
    /// no access.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, p.patterns.size() > 0)").message("every paths entry needs at least one pattern"))]
    pub paths: Vec<PathRule>,
    /// Let pods of this store run `exec:` reload actions (see RotorStore).
    #[serde(default)]
    pub allow_exec_reload: bool,
    /// How many requests a second the controller may send this store (see
    /// RotorStore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<StoreBudget>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathRule {
    /// A namespace name, or `*` for every allowed namespace.
    pub namespace: String,
    pub patterns: Vec<String>,
}

/// Exactly one provider.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.vault) ? 1 : 0) + (has(self.aws) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) + (has(self.local) ? 1 : 0) == 1").message("set exactly one of vault, aws, kubernetes, local"))]
pub struct Provider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalProvider>,
}

/// The one provider a [`Provider`] sets, borrowed: match on it, and a new
/// provider is a compile error at every place that must handle it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProviderKind<'a> {
    Vault(&'a VaultProvider),
    Aws(&'a AwsProvider),
    Kubernetes(&'a KubernetesProvider),
    Local(&'a LocalProvider),
}

impl ProviderKind<'_> {
    /// `vault`, `aws`, `kubernetes` or `local`: the field's name, as
    /// `status.provider` reports it.
    pub fn name(&self) -> &'static str {
        match self {
            ProviderKind::Vault(_) => "vault",
            ProviderKind::Aws(_) => "aws",
            ProviderKind::Kubernetes(_) => "kubernetes",
            ProviderKind::Local(_) => "local",
        }
    }
}

/// A [`Provider`] that sets no provider or more than one (the CRD's
/// validation refuses both; files read without an API server may not).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "spec.provider sets {set} providers; expected exactly one of vault, aws, kubernetes, local"
)]
pub struct NotOneProvider {
    /// How many it sets.
    pub set: usize,
}

impl Provider {
    /// Every provider this sets, in the order vault, aws, kubernetes, local
    /// (a valid spec sets one; [`Provider::view`] insists on that).
    pub fn all_set(&self) -> Vec<ProviderKind<'_>> {
        let Provider {
            vault,
            aws,
            kubernetes,
            local,
        } = self;
        [
            vault.as_ref().map(ProviderKind::Vault),
            aws.as_ref().map(ProviderKind::Aws),
            kubernetes.as_ref().map(ProviderKind::Kubernetes),
            local.as_ref().map(ProviderKind::Local),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The one provider this sets, or how many it sets instead.
    pub fn view(&self) -> Result<ProviderKind<'_>, NotOneProvider> {
        match self.all_set()[..] {
            [one] => Ok(one),
            ref set => Err(NotOneProvider { set: set.len() }),
        }
    }
}

/// HashiCorp Vault or OpenBao, KV v2.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultProvider {
    /// `https://vault.vault.svc:8200`
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("server must be an http(s) URL"))]
    pub server: String,
    /// The KV v2 mount.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// PEM CA bundle for the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    pub auth: VaultAuthSpec,
}

fn default_mount() -> String {
    crate::defaults::VAULT_KV_MOUNT.to_owned()
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.kubernetes) ? 1 : 0) + (has(self.appRole) ? 1 : 0) + (has(self.tokenSecretRef) ? 1 : 0) == 1").message("set exactly one of kubernetes, appRole, tokenSecretRef"))]
pub struct VaultAuthSpec {
    /// Kubernetes auth with the pod's projected service-account token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<VaultKubernetesAuth>,
    /// AppRole; the secret id comes from a Secret in the store's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<VaultAppRoleAuth>,
    /// A token in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultKubernetesAuth {
    pub role: String,
    #[serde(default = "default_kubernetes_mount")]
    pub mount_path: String,
    /// The audience of the service-account tokens presented to Vault: the
    /// role's `audience` (default `vault`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl VaultKubernetesAuth {
    /// The tokens' audience: `audience`, else
    /// [`crate::defaults::VAULT_AUDIENCE`].
    pub fn audience(&self) -> &str {
        self.audience
            .as_deref()
            .unwrap_or(crate::defaults::VAULT_AUDIENCE)
    }
}

fn default_kubernetes_mount() -> String {
    crate::defaults::VAULT_KUBERNETES_MOUNT.to_owned()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultAppRoleAuth {
    pub role_id: String,
    pub secret_ref: SecretKeyRef,
    #[serde(default = "default_approle_mount")]
    pub mount_path: String,
}

fn default_approle_mount() -> String {
    crate::defaults::VAULT_APPROLE_MOUNT.to_owned()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// AWS Secrets Manager. The sidecar's credentials come from the default
/// chain (IRSA web identity in EKS); rotation in a cluster assumes
/// `roleArn` with a token of the namespace's rotator ServiceAccount.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsProvider {
    pub region: String,
    /// An endpoint override, e.g. a VPC endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The IAM role to assume through the pod's web identity (IRSA), and
    /// the one rotation in a cluster assumes with a token of the policy's
    /// namespace's rotator ServiceAccount (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// Kubernetes Secrets in the pod's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesProvider {}

/// Rotor's embedded store file, on a volume the pod mounts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalProvider {
    /// The store file, as mounted in the sidecar.
    pub path: String,
    /// The key file, as mounted in the sidecar.
    pub key_path: String,
    /// The volume holding both (a PVC or a Secret), mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<LocalVolume>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub mount_path: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotorStoreStatus {
    /// vault, aws, kubernetes or local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Namespace labels, for matching `allowedNamespaces`.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalProvider {
        LocalProvider {
            path: "/s".into(),
            key_path: "/k".into(),
            volume: None,
        }
    }

    #[test]
    fn view_names_the_one_provider() {
        let p = Provider {
            vault: None,
            aws: None,
            kubernetes: Some(KubernetesProvider {}),
            local: None,
        };
        assert_eq!(p.view().map(|k| k.name()), Ok("kubernetes"));
        let p = Provider {
            vault: None,
            aws: None,
            kubernetes: None,
            local: Some(local()),
        };
        assert_eq!(p.view(), Ok(ProviderKind::Local(&local())));
    }

    #[test]
    fn none_or_two_providers_are_an_error_not_local() {
        let none = Provider {
            vault: None,
            aws: None,
            kubernetes: None,
            local: None,
        };
        assert_eq!(none.view(), Err(NotOneProvider { set: 0 }));
        let two = Provider {
            kubernetes: Some(KubernetesProvider {}),
            local: Some(local()),
            ..none
        };
        let err = two.view().unwrap_err();
        assert_eq!(err, NotOneProvider { set: 2 });
        assert_eq!(
            err.to_string(),
            "spec.provider sets 2 providers; expected exactly one of vault, aws, kubernetes, local"
        );
        assert_eq!(two.all_set().len(), 2);
    }
}
