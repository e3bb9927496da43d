//! The self-managed serving certificate: reuse or create the Secret that
//! holds it, write the files the webhook server reads, and put the CA into
//! the webhook configuration's caBundle.

use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::{Error, Result};

/// Self-managed certificates: reuse the Secret `secret` in `namespace` or
/// create it with a new CA and serving certificate, write the files the
/// server reads, and put the CA into the webhook configuration's caBundle.
pub async fn self_managed_certs(
    client: Client,
    namespace: &str,
    secret: &str,
    names: &[String],
    webhook: &str,
    dir: &Path,
    owner: Option<&OwnerReference>,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = secrets.get_opt(secret).await?;
    let generated = match existing.as_ref().and_then(read_tls) {
        Some(g) => g,
        None => {
            let g = crate::certs::generate(names)?;
            let data = [
                ("ca.crt", g.ca_pem.as_bytes()),
                ("tls.crt", g.cert_pem.as_bytes()),
                ("tls.key", g.key_pem.as_bytes()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
            .collect();
            let object = Secret {
                metadata: ObjectMeta {
                    name: Some(secret.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(data),
                ..Secret::default()
            };
            match secrets.create(&PostParams::default(), &object).await {
                Ok(_) => g,
                // Another replica won the race: use its certificate.
                Err(kube::Error::Api(r)) if r.code == 409 => secrets
                    .get(secret)
                    .await
                    .ok()
                    .as_ref()
                    .and_then(read_tls)
                    .ok_or_else(|| {
                        Error::Certs(format!("Secret {namespace}/{secret} is incomplete"))
                    })?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    crate::certs::write(dir, &generated)?;
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(&generated.ca_pem);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client);
    let current = webhooks.get(webhook).await?;
    let patch: Vec<serde_json::Value> = current
        .webhooks
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, _)| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca}))
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(patch))
        .map_err(|e| Error::Certs(e.to_string()))?;
    webhooks
        .patch(webhook, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    tracing::info!(secret = %format!("{namespace}/{secret}"), webhook, "serving certificate ready; caBundle set");
    Ok(())
}

fn read_tls(secret: &Secret) -> Option<crate::certs::Generated> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(crate::certs::Generated {
        ca_pem: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}
