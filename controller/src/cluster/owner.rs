//! The owner reference that ties what the controller creates in its
//! namespace to its ServiceAccount, so an uninstall removes it.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::Api;

/// The controller's ServiceAccount as the owner of the objects it creates
/// in its namespace (the self-managed certificate's Secret, the leader
/// Lease): when an uninstall deletes the account, the garbage collector
/// deletes them. `None`, with a warning, when the account cannot be read.
pub async fn owner_reference(
    client: Client,
    namespace: &str,
    service_account: &str,
) -> Option<OwnerReference> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
    match accounts.get(service_account).await {
        Ok(sa) => Some(OwnerReference {
            api_version: "v1".to_owned(),
            kind: "ServiceAccount".to_owned(),
            name: service_account.to_owned(),
            uid: sa.metadata.uid?,
            controller: None,
            block_owner_deletion: None,
        }),
        Err(e) => {
            tracing::warn!(error = %e, service_account = %format!("{namespace}/{service_account}"),
                "cannot read the controller's ServiceAccount: the Secret and Lease it creates will outlive an uninstall");
            None
        }
    }
}
