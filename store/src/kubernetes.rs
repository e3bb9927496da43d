//! Kubernetes Secrets in one namespace (the pod's own, for the sidecar).
//!
//! # Stages on Kubernetes
//!
//! A Secret has no versions, so Rotor keeps up to three Secrets per name:
//!
//! - `<name>`: CURRENT, what consumers read;
//! - `<name>.rotor-pending`: PENDING, a rotation's new value before
//!   promotion;
//! - `<name>.rotor-previous`: PREVIOUS, the value CURRENT had before the
//!   last promotion.
//!
//! Each carries its version number in the annotation `rotor.dev/version`.
//! A Secret written by something else has no such annotation; its version
//! is then `rv-<resourceVersion>`. Writes replace with the resourceVersion
//! read just before, so a concurrent writer makes the second write fail with
//! a conflict instead of being lost.
//!
//! # Values
//!
//! A Secret whose data is exactly one key `value` yields that key's bytes;
//! any other Secret yields its data as a JSON object of UTF-8 strings, so
//! `#key` selects one key. Rotor writes a single `value` key.
//!
//! # Watching
//!
//! [`Store::changes`] watches the CURRENT Secret (a field-selected watch),
//! so the sidecar hears of a change at once instead of at its next poll.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::watcher;

use crate::{Error, Fetched, Result, Selector, Stage, Store, VersionId, WriteAs};

const VERSION: &str = "rotor.dev/version";
const PENDING_SUFFIX: &str = ".rotor-pending";
const PREVIOUS_SUFFIX: &str = ".rotor-previous";

pub struct KubeStore {
    api: Api<Secret>,
    label: String,
}

impl KubeStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            label: format!("kubernetes:{namespace}"),
        }
    }

    fn object_name(&self, name: &str, stage: Stage) -> Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 253 - PREVIOUS_SUFFIX.len()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(Error::Config {
                store: self.label.clone(),
                detail: format!(
                    "secret name {name:?} is not a Kubernetes Secret name; expected lowercase letters, digits, '-' and '.', at most {} characters",
                    253 - PREVIOUS_SUFFIX.len()
                ),
            });
        }
        Ok(match stage {
            Stage::Current => name.to_owned(),
            Stage::Pending => format!("{name}{PENDING_SUFFIX}"),
            Stage::Previous => format!("{name}{PREVIOUS_SUFFIX}"),
        })
    }

    fn classify(&self, name: &str, e: kube::Error) -> Error {
        let store = self.label.clone();
        let name = name.to_owned();
        match e {
            kube::Error::Api(r) => {
                let detail = format!("{} ({})", r.reason, r.message);
                match r.code {
                    404 => Error::SecretNotFound { store, name },
                    401 | 403 => Error::PermissionDenied {
                        store,
                        name,
                        detail,
                    },
                    409 => Error::Conflict {
                        store,
                        name,
                        version: String::new(),
                        problem: format!("changed by another writer: {detail}"),
                    },
                    429 => Error::Throttled {
                        store,
                        name,
                        detail,
                    },
                    c if c >= 500 => Error::Unreachable { store, detail },
                    _ => Error::Malformed {
                        store,
                        name,
                        detail,
                    },
                }
            }
            kube::Error::SerdeError(e) => Error::Malformed {
                store,
                name,
                detail: format!("undecodable response: {e}"),
            },
            other => Error::Unreachable {
                store,
                detail: other.to_string(),
            },
        }
    }

    async fn get(&self, name: &str, stage: Stage) -> Result<Option<Secret>> {
        let object = self.object_name(name, stage)?;
        self.api
            .get_opt(&object)
            .await
            .map_err(|e| self.classify(name, e))
    }

    /// `version` is none of `all`: the error lists the versions there are.
    fn version_not_found(&self, name: &str, version: &VersionId, all: &[(Stage, Secret)]) -> Error {
        Error::VersionNotFound {
            store: self.label.clone(),
            name: name.to_owned(),
            version: version.0.clone(),
            available: all
                .iter()
                .map(|(_, s)| version_of(s).0)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// All three stages, as (stage, secret).
    async fn all(&self, name: &str) -> Result<Vec<(Stage, Secret)>> {
        let mut out = Vec::new();
        for stage in Stage::ALL {
            if let Some(s) = self.get(name, stage).await? {
                out.push((stage, s));
            }
        }
        Ok(out)
    }

    async fn put(
        &self,
        name: &str,
        stage: Stage,
        existing: Option<&Secret>,
        data: BTreeMap<String, ByteString>,
        version: &str,
    ) -> Result<()> {
        let object = self.object_name(name, stage)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(VERSION.to_owned(), version.to_owned());
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(object.clone()),
                annotations: Some(annotations),
                resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "rotor".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        let result = match existing {
            Some(_) => {
                self.api
                    .replace(&object, &PostParams::default(), &secret)
                    .await
            }
            None => self.api.create(&PostParams::default(), &secret).await,
        };
        result.map(|_| ()).map_err(|e| self.classify(name, e))
    }

    async fn delete(&self, name: &str, stage: Stage) -> Result<()> {
        let object = self.object_name(name, stage)?;
        match self.api.delete(&object, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(r)) if r.code == 404 => Ok(()),
            Err(e) => Err(self.classify(name, e)),
        }
    }
}

/// A Secret's Rotor version.
fn version_of(secret: &Secret) -> VersionId {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VERSION))
        .map(|v| VersionId(v.clone()))
        .unwrap_or_else(|| {
            VersionId(format!(
                "rv-{}",
                secret.metadata.resource_version.clone().unwrap_or_default()
            ))
        })
}

fn number(v: &VersionId) -> u64 {
    v.0.parse().unwrap_or(0)
}

/// Rotor's value from a Secret's data.
fn value_of(store: &str, name: &str, secret: &Secret) -> Result<Vec<u8>> {
    let data = secret.data.clone().unwrap_or_default();
    if data.len() == 1
        && let Some(v) = data.get("value")
    {
        return Ok(v.0.clone());
    }
    let mut object = serde_json::Map::new();
    for (k, v) in data {
        let text = String::from_utf8(v.0).map_err(|_| Error::Malformed {
            store: store.to_owned(),
            name: name.to_owned(),
            detail: format!(
                "key {k:?} is not UTF-8; binary data needs a single key named \"value\""
            ),
        })?;
        object.insert(k, serde_json::Value::String(text));
    }
    Ok(serde_json::Value::Object(object).to_string().into_bytes())
}

#[async_trait]
impl Store for KubeStore {
    fn describe(&self) -> String {
        self.label.clone()
    }

    async fn read(&self, name: &str, selector: &Selector) -> Result<Fetched> {
        let secret = match selector {
            Selector::Current => {
                self.get(name, Stage::Current)
                    .await?
                    .ok_or_else(|| Error::SecretNotFound {
                        store: self.label.clone(),
                        name: name.to_owned(),
                    })?
            }
            Selector::Stage(stage) => {
                self.get(name, *stage)
                    .await?
                    .ok_or_else(|| Error::StageNotFound {
                        store: self.label.clone(),
                        name: name.to_owned(),
                        stage: *stage,
                    })?
            }
            Selector::Version(v) => {
                let all = self.all(name).await?;
                let available = all
                    .iter()
                    .map(|(_, s)| version_of(s).0)
                    .collect::<Vec<_>>()
                    .join(", ");
                all.into_iter()
                    .map(|(_, s)| s)
                    .find(|s| version_of(s) == *v)
                    .ok_or_else(|| Error::VersionNotFound {
                        store: self.label.clone(),
                        name: name.to_owned(),
                        version: v.0.clone(),
                        available,
                    })?
            }
        };
        Ok(Fetched {
            version: version_of(&secret),
            created_at: None,
            value: value_of(&self.label, name, &secret)?.into(),
        })
    }

    async fn current_version(&self, name: &str) -> Result<VersionId> {
        self.get(name, Stage::Current)
            .await?
            .map(|s| version_of(&s))
            .ok_or_else(|| Error::SecretNotFound {
                store: self.label.clone(),
                name: name.to_owned(),
            })
    }

    async fn write(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionId> {
        let all = self.all(name).await?;
        let next = all
            .iter()
            .map(|(_, s)| number(&version_of(s)))
            .max()
            .unwrap_or(0)
            + 1;
        let version = next.to_string();
        let data = BTreeMap::from([("value".to_owned(), ByteString(value.to_vec()))]);
        let find = |stage| all.iter().find(|(s, _)| *s == stage).map(|(_, x)| x);
        match write_as {
            WriteAs::Pending => {
                if find(Stage::Current).is_none() {
                    return Err(Error::SecretNotFound {
                        store: self.label.clone(),
                        name: name.to_owned(),
                    });
                }
                self.put(name, Stage::Pending, find(Stage::Pending), data, &version)
                    .await?;
            }
            WriteAs::Current => {
                if let Some(current) = find(Stage::Current) {
                    let old = current.data.clone().unwrap_or_default();
                    let old_version = version_of(current).0;
                    self.put(
                        name,
                        Stage::Previous,
                        find(Stage::Previous),
                        old,
                        &old_version,
                    )
                    .await?;
                }
                self.put(name, Stage::Current, find(Stage::Current), data, &version)
                    .await?;
            }
        }
        Ok(VersionId(version))
    }

    async fn promote(&self, name: &str, version: &VersionId) -> Result<()> {
        let all = self.all(name).await?;
        let find = |stage| all.iter().find(|(s, _)| *s == stage).map(|(_, x)| x);
        let current = find(Stage::Current);
        if current.is_some_and(|c| version_of(c) == *version) {
            return Ok(());
        }
        let Some(source) = all
            .iter()
            .map(|(_, s)| s)
            .find(|s| version_of(s) == *version)
        else {
            return Err(self.version_not_found(name, version, &all));
        };
        let new_data = source.data.clone().unwrap_or_default();
        if let Some(c) = current {
            self.put(
                name,
                Stage::Previous,
                find(Stage::Previous),
                c.data.clone().unwrap_or_default(),
                &version_of(c).0,
            )
            .await?;
        }
        self.put(name, Stage::Current, current, new_data, &version.0)
            .await?;
        if find(Stage::Pending).is_some_and(|p| version_of(p) == *version) {
            self.delete(name, Stage::Pending).await?;
        }
        Ok(())
    }

    async fn retire(&self, name: &str, version: &VersionId) -> Result<()> {
        let all = self.all(name).await?;
        match all.iter().find(|(_, s)| version_of(s) == *version) {
            Some((Stage::Current, _)) => Err(Error::Conflict {
                store: self.label.clone(),
                name: name.to_owned(),
                version: version.0.clone(),
                problem: "is CURRENT and cannot be retired; promote another version first"
                    .to_owned(),
            }),
            Some((stage, _)) => self.delete(name, *stage).await,
            None => Err(self.version_not_found(name, version, &all)),
        }
    }

    fn changes(&self, name: &str) -> Option<BoxStream<'static, ()>> {
        let object = self.object_name(name, Stage::Current).ok()?;
        let config = watcher::Config::default().fields(&format!("metadata.name={object}"));
        Some(
            watcher(self.api.clone(), config)
                .filter_map(|event| async move {
                    match event {
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => Some(()),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::debug!(error = %e, "secret watch interrupted; it resumes by itself");
                            None
                        }
                    }
                })
                .boxed(),
        )
    }
}

#[cfg(test)]
mod tests;
