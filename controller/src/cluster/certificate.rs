//! The self-managed serving certificate: a Secret holds it, every replica
//! writes it into the files its webhook server serves (and reloads), and
//! the leader renews it and keeps the webhook configuration's caBundle.
//!
//! Renewal, decided by [`plan`] from what the Secret says:
//! - the serving certificate is re-issued by the same CA at two-thirds of
//!   its lifetime, or when the names it must cover change; the caBundle
//!   stays as it is, so old and new certificates are both trusted;
//! - the CA is replaced at two-thirds of its lifetime in three steps, each
//!   at least `overlap` after the one before: the new CA joins the caBundle
//!   (staged, not signing); then it signs a new serving certificate while
//!   the old CA stays in the bundle; then the old CA leaves the bundle.
//!
//! The overlap is fixed rather than measured: each replica re-reads the
//! Secret through the API every tick (a tenth of the overlap, at most 30 s)
//! and its server reloads the files within 100 ms of their change, and the
//! API server sees a caBundle change through its own watch within seconds.
//! So an overlap longer than a tick plus a few seconds means every replica
//! serves the new certificate before the old CA goes; a replica cut off
//! from the API server for longer serves a certificate that expires anyway.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::certs::{KeyedCert, Lifetimes, Validity};
use crate::rotation::metrics::RotationMetrics;
use crate::{Error, Result};

/// The annotation on the Secret that records validities and steps.
pub const STATE_ANNOTATION: &str = "rotor.dev/certificates";

/// Validity of a Secret written before certificates had lifetimes: the
/// serving certificate ran to 2028-01-01 and its CA to 2036-01-01.
const LEGACY: State = State {
    serving: Validity {
        issued: 0,
        not_after: 1_830_297_600,
    },
    names: Vec::new(),
    signer: Validity {
        issued: 0,
        not_after: 2_082_758_400,
    },
    next: None,
    previous_until: None,
    bundle_changed: 0,
};

/// What the self-managed certificate is for, and how it renews.
pub struct CertConfig {
    pub namespace: String,
    pub secret: String,
    /// The names the serving certificate must cover.
    pub names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle it sets.
    pub webhook: String,
    /// Where the server reads ca.crt, tls.crt and tls.key.
    pub dir: PathBuf,
    pub owner: Option<OwnerReference>,
    pub lifetimes: Lifetimes,
    /// How long a CA is in the bundle before it signs, and stays after.
    pub overlap: Duration,
}

impl CertConfig {
    /// How often every replica re-reads the Secret and the leader checks
    /// for renewal: a tenth of the overlap or serving lifetime, from
    /// 100 ms to 30 s.
    pub fn tick(&self) -> Duration {
        (self.overlap.min(self.lifetimes.serving) / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// The Secret's record of what it holds (the annotation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub serving: Validity,
    pub names: Vec<String>,
    /// The CA that signs the serving certificate.
    pub signer: Validity,
    /// A new CA in the bundle, not signing yet.
    pub next: Option<Validity>,
    /// The replaced CA stays in the bundle until then (Unix seconds).
    pub previous_until: Option<i64>,
    /// When the bundle last changed (Unix seconds).
    pub bundle_changed: i64,
}

/// The leader's next step with the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No usable Secret, or its CA expired: a new CA and certificate.
    Fresh,
    /// The CA is due: a new CA joins the bundle.
    StageCa,
    /// The staged CA was in the bundle for the overlap: it signs a new
    /// serving certificate; the old CA stays in the bundle for the overlap.
    PromoteCa,
    /// The serving certificate is due or its names changed.
    Reissue,
    /// The replaced CA's overlap is over: it leaves the bundle.
    DropPrevious,
    Nothing,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Fresh => "new CA and serving certificate",
            Step::StageCa => "new CA added to the caBundle",
            Step::PromoteCa => "serving certificate issued by the new CA",
            Step::Reissue => "serving certificate renewed",
            Step::DropPrevious => "old CA removed from the caBundle",
            Step::Nothing => "nothing to do",
        }
    }
}

/// What to do at `now` with a Secret recording `state` (`None`: no usable
/// Secret); `signer_key` tells whether the Secret holds the CA's key (one
/// written before renewal existed does not).
pub fn plan(
    state: Option<&State>,
    signer_key: bool,
    now: i64,
    names: &[String],
    overlap: Duration,
) -> Step {
    let Some(s) = state else {
        return Step::Fresh;
    };
    let overlap = i64::try_from(overlap.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX / 4);
    if now >= s.signer.not_after {
        return Step::Fresh;
    }
    if s.next.is_some() && now >= s.bundle_changed + overlap {
        return Step::PromoteCa;
    }
    if s.previous_until.is_some_and(|until| now >= until) {
        return Step::DropPrevious;
    }
    let signer_due = !signer_key || now >= s.signer.renew_at();
    if signer_due && s.next.is_none() && s.previous_until.is_none() {
        return Step::StageCa;
    }
    if signer_key && (now >= s.serving.renew_at() || s.names != names) {
        return Step::Reissue;
    }
    Step::Nothing
}

/// What the Secret holds. No `Debug`: private keys.
struct Material {
    state: State,
    serving: KeyedCert,
    signer_cert: String,
    signer_key: Option<Zeroizing<String>>,
    next: Option<KeyedCert>,
    previous: Option<String>,
}

impl Material {
    /// The CAs the webhook configuration trusts: the signer, a staged CA
    /// and a replaced one still in its overlap.
    fn bundle(&self) -> String {
        let mut bundle = self.signer_cert.clone();
        for extra in [
            self.next.as_ref().map(|n| &n.cert_pem),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(extra);
        }
        bundle
    }

    fn files(&self) -> crate::certs::Generated {
        crate::certs::Generated {
            ca_pem: self.bundle(),
            cert_pem: self.serving.cert_pem.clone(),
            key_pem: self.serving.key_pem.to_string(),
        }
    }

    fn read(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let recorded = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATE_ANNOTATION))
            .and_then(|s| serde_json::from_str::<State>(s).ok());
        let serving_cert = text("tls.crt")?;
        let serving_key = Zeroizing::new(text("tls.key")?);
        match recorded {
            Some(state) => Some(Self {
                serving: KeyedCert {
                    cert_pem: serving_cert,
                    key_pem: serving_key,
                    validity: state.serving,
                },
                signer_cert: text("signer.crt")?,
                signer_key: Some(Zeroizing::new(text("signer.key")?)),
                next: match state.next {
                    Some(validity) => Some(KeyedCert {
                        cert_pem: text("next.crt")?,
                        key_pem: Zeroizing::new(text("next.key")?),
                        validity,
                    }),
                    None => None,
                },
                previous: match state.previous_until {
                    Some(_) => Some(text("previous.crt")?),
                    None => None,
                },
                state,
            }),
            // Written before renewal existed: the CA's key is gone.
            None => Some(Self {
                serving: KeyedCert {
                    cert_pem: serving_cert,
                    key_pem: serving_key,
                    validity: LEGACY.serving,
                },
                signer_cert: text("ca.crt")?,
                signer_key: None,
                next: None,
                previous: None,
                state: LEGACY,
            }),
        }
    }

    fn fresh(cfg: &CertConfig, now: i64) -> Result<Self> {
        let ca = crate::certs::new_ca(now, cfg.lifetimes.ca)?;
        let serving = issue_serving(cfg, &ca.key_pem, ca.validity, now)?;
        Ok(Self {
            state: State {
                serving: serving.validity,
                names: cfg.names.clone(),
                signer: ca.validity,
                next: None,
                previous_until: None,
                bundle_changed: now,
            },
            serving,
            signer_cert: ca.cert_pem,
            signer_key: Some(ca.key_pem),
            next: None,
            previous: None,
        })
    }

    /// Applies `step` at `now`.
    fn apply(mut self, step: Step, cfg: &CertConfig, now: i64) -> Result<Self> {
        let overlap = i64::try_from(cfg.overlap.as_secs_f64().ceil() as u64).unwrap_or(0);
        match step {
            Step::Fresh => return Self::fresh(cfg, now),
            Step::Nothing => {}
            Step::StageCa => {
                let next = crate::certs::new_ca(now, cfg.lifetimes.ca)?;
                self.state.next = Some(next.validity);
                self.next = Some(next);
                self.state.bundle_changed = now;
            }
            Step::PromoteCa => {
                let next = self.next.take().ok_or(Error::NoStagedCa)?;
                self.previous = Some(std::mem::replace(&mut self.signer_cert, next.cert_pem));
                self.signer_key = Some(next.key_pem);
                self.state.signer = next.validity;
                self.state.next = None;
                self.state.previous_until = Some(now + overlap);
                self.state.bundle_changed = now;
                self.reissue(cfg, now)?;
            }
            Step::Reissue => self.reissue(cfg, now)?,
            Step::DropPrevious => {
                self.previous = None;
                self.state.previous_until = None;
                self.state.bundle_changed = now;
            }
        }
        Ok(self)
    }

    fn reissue(&mut self, cfg: &CertConfig, now: i64) -> Result<()> {
        let key = self.signer_key.as_ref().ok_or(Error::CaKeyMissing)?;
        self.serving = issue_serving(cfg, key, self.state.signer, now)?;
        self.state.serving = self.serving.validity;
        self.state.names = cfg.names.clone();
        Ok(())
    }

    /// The Secret holding this, for `create` or `replace`.
    fn to_secret(&self, cfg: &CertConfig, base: Option<&Secret>) -> Secret {
        let mut data = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        };
        put("ca.crt", &self.bundle());
        put("tls.crt", &self.serving.cert_pem);
        put("tls.key", &self.serving.key_pem);
        put("signer.crt", &self.signer_cert);
        if let Some(key) = &self.signer_key {
            put("signer.key", key);
        }
        if let Some(next) = &self.next {
            put("next.crt", &next.cert_pem);
            put("next.key", &next.key_pem);
        }
        if let Some(previous) = &self.previous {
            put("previous.crt", previous);
        }
        let mut metadata = base.map(|b| b.metadata.clone()).unwrap_or(ObjectMeta {
            name: Some(cfg.secret.clone()),
            namespace: Some(cfg.namespace.clone()),
            owner_references: cfg.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        });
        metadata.annotations.get_or_insert_default().insert(
            STATE_ANNOTATION.to_owned(),
            serde_json::to_string(&self.state).expect("state serializes"),
        );
        metadata.managed_fields = None;
        Secret {
            metadata,
            // The type is immutable: an existing Secret keeps its own.
            type_: base
                .and_then(|b| b.type_.clone())
                .or_else(|| Some("kubernetes.io/tls".to_owned())),
            data: Some(data),
            ..Secret::default()
        }
    }
}

/// A serving certificate for `cfg.names`, valid for the serving lifetime
/// but never past its CA.
fn issue_serving(cfg: &CertConfig, ca_key: &str, ca: Validity, now: i64) -> Result<KeyedCert> {
    let lifetime = i64::try_from(cfg.lifetimes.serving.as_secs()).unwrap_or(i64::MAX / 4);
    let not_after = now.saturating_add(lifetime).min(ca.not_after);
    crate::certs::issue(ca_key, &cfg.names, now, not_after)
}

/// At start, in every replica: reuse the Secret or create it, write the
/// files, and set the caBundle when it does not trust the Secret's CA yet
/// (later changes are the leader's, in [`keep_fresh`]).
pub async fn self_managed_certs(
    client: Client,
    cfg: &CertConfig,
    metrics: &RotationMetrics,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let material = match secrets
        .get_opt(&cfg.secret)
        .await?
        .as_ref()
        .and_then(Material::read)
    {
        Some(m) => m,
        None => {
            let m = Material::fresh(cfg, crate::certs::now())?;
            match secrets
                .create(&PostParams::default(), &m.to_secret(cfg, None))
                .await
            {
                Ok(_) => m,
                // Another replica won the race: use its certificate.
                Err(kube::Error::Api(r)) if r.code == 409 => secrets
                    .get(&cfg.secret)
                    .await
                    .ok()
                    .as_ref()
                    .and_then(Material::read)
                    .ok_or_else(|| Error::CertSecretIncomplete {
                        namespace: cfg.namespace.clone(),
                        name: cfg.secret.clone(),
                    })?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    crate::certs::write(&cfg.dir, &material.files())?;
    metrics.serving_certificate_expires(material.state.serving.not_after);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client);
    let current = webhooks.get(&cfg.webhook).await?;
    if !trusts(&current, &material.signer_cert) {
        set_ca_bundle(&webhooks, cfg, &current, &material.bundle()).await?;
    }
    tracing::info!(
        secret = %format!("{}/{}", cfg.namespace, cfg.secret),
        webhook = %cfg.webhook,
        serving_not_after = material.state.serving.not_after,
        "serving certificate ready; caBundle set"
    );
    Ok(())
}

/// True when every webhook of the configuration trusts `ca`.
fn trusts(config: &MutatingWebhookConfiguration, ca: &str) -> bool {
    let ca = ca.trim();
    config
        .webhooks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .all(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .and_then(|b| std::str::from_utf8(&b.0).ok())
                .is_some_and(|b| b.contains(ca))
        })
}

async fn set_ca_bundle(
    webhooks: &Api<MutatingWebhookConfiguration>,
    cfg: &CertConfig,
    current: &MutatingWebhookConfiguration,
    bundle: &str,
) -> Result<()> {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(bundle);
    let patch: Vec<serde_json::Value> = current
        .webhooks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, _)| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca}))
        .collect();
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(patch)).map_err(Error::CaBundlePatch)?;
    webhooks
        .patch(
            &cfg.webhook,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    Ok(())
}

/// Runs forever in every replica: re-reads the Secret every tick and
/// rewrites the server's files when it changed (the server reloads them);
/// the leader renews what is due and keeps the caBundle equal to the
/// Secret's.
pub async fn keep_fresh(
    client: Client,
    cfg: Arc<CertConfig>,
    leader: Arc<AtomicBool>,
    metrics: Arc<RotationMetrics>,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client);
    // What the files hold now (a private key: zeroized on drop).
    let mut written: Option<Zeroizing<String>> = None;
    let mut ticks = tokio::time::interval(cfg.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = once(&secrets, &webhooks, &cfg, &leader, &metrics, &mut written).await {
            tracing::warn!(%error, "serving certificate check failed; trying again");
        }
    }
}

async fn once(
    secrets: &Api<Secret>,
    webhooks: &Api<MutatingWebhookConfiguration>,
    cfg: &CertConfig,
    leader: &AtomicBool,
    metrics: &RotationMetrics,
    written: &mut Option<Zeroizing<String>>,
) -> Result<()> {
    let secret = secrets.get_opt(&cfg.secret).await?;
    let mut material = secret.as_ref().and_then(Material::read);
    if leader.load(Ordering::Relaxed) {
        let now = crate::certs::now();
        let step = plan(
            material.as_ref().map(|m| &m.state),
            material.as_ref().is_some_and(|m| m.signer_key.is_some()),
            now,
            &cfg.names,
            cfg.overlap,
        );
        if step != Step::Nothing {
            let next = match material.take() {
                Some(m) => m.apply(step, cfg, now)?,
                None => Material::fresh(cfg, now)?,
            };
            let object = next.to_secret(cfg, secret.as_ref());
            match &secret {
                // resourceVersion rides along: a concurrent change is a
                // conflict, tried again next tick.
                Some(_) => {
                    secrets
                        .replace(&cfg.secret, &PostParams::default(), &object)
                        .await?;
                }
                None => {
                    secrets.create(&PostParams::default(), &object).await?;
                }
            }
            tracing::info!(
                step = step.as_str(),
                serving_not_after = next.state.serving.not_after,
                ca_not_after = next.state.signer.not_after,
                "serving certificate: {}",
                step.as_str()
            );
            material = Some(next);
        }
        if let Some(m) = &material {
            let current = webhooks.get(&cfg.webhook).await?;
            let bundle = m.bundle();
            let same = current
                .webhooks
                .as_deref()
                .unwrap_or_default()
                .iter()
                .all(|w| {
                    w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice())
                        == Some(bundle.as_bytes())
                });
            if !same {
                set_ca_bundle(webhooks, cfg, &current, &bundle).await?;
                tracing::info!(webhook = %cfg.webhook, "caBundle updated");
            }
        }
    }
    if let Some(m) = &material {
        let files = m.files();
        let now_files = Zeroizing::new(format!(
            "{}{}{}",
            files.ca_pem, files.cert_pem, files.key_pem
        ));
        if written.as_deref() != Some(&*now_files) {
            crate::certs::write(&cfg.dir, &files)?;
            metrics.serving_certificate_expires(m.state.serving.not_after);
            if written.is_some() {
                tracing::info!(
                    serving_not_after = m.state.serving.not_after,
                    "serving certificate files rewritten from the Secret"
                );
            }
            *written = Some(now_files);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
