//! The local store's blocking public API: reads, writes, labels, retention
//! and re-wrapping, each one verified read or one locked write.

use rotor_envelope::{DataKey, Kek, RecordId};

use super::LocalStore;
use super::mutate::Create;
use super::state::{
    Sealed, Secret, Version, clear, effective_max, from_ms, meta, move_current, now_ms,
};
use crate::{
    Error, MAX_VALUE_LEN, Result, SecretSummary, SecretValue, Selector, Stage, Stages, VersionMeta,
    WriteAs, validate_secret_name,
};

impl LocalStore {
    /// Reads the value of a secret.
    pub fn get(&self, name: &str, selector: Selector) -> Result<SecretValue> {
        let loaded = self.snapshot()?;
        let state = &loaded.state;
        let version = self.find(state, name, selector)?;
        let sealed = self.record(state.source.as_deref(), &version.sealed)?;
        let value = rotor_envelope::open(
            &*self.0.kek,
            &RecordId {
                store_id: &state.store_id,
                name,
                version: version.number,
            },
            &sealed,
        )
        .map_err(|source| Error::Envelope {
            path: self.0.path.clone(),
            source,
        })?;
        Ok(SecretValue {
            meta: meta(name, version),
            value,
        })
    }

    /// Metadata of one version, without decrypting it.
    pub fn version_meta(&self, name: &str, selector: Selector) -> Result<VersionMeta> {
        let loaded = self.snapshot()?;
        Ok(meta(name, self.find(&loaded.state, name, selector)?))
    }

    /// The cheap change check: the number of the CURRENT version.
    pub fn current_number(&self, name: &str) -> Result<u64> {
        self.version_meta(name, Selector::Current)
            .map(|m| m.version)
    }

    /// Every version of a secret the store keeps, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<VersionMeta>> {
        let loaded = self.snapshot()?;
        let secret = self.secret(&loaded.state, name)?;
        Ok(secret.versions.iter().map(|v| meta(name, v)).collect())
    }

    /// Every secret, by name.
    pub fn list(&self) -> Result<Vec<SecretSummary>> {
        let loaded = self.snapshot()?;
        Ok(loaded
            .state
            .secrets
            .iter()
            .map(|(name, s)| {
                let with = |stage| {
                    s.versions
                        .iter()
                        .find(|v| v.stages.contains(stage))
                        .map(|v| v.number)
                };
                SecretSummary {
                    name: name.clone(),
                    current: with(Stage::Current),
                    pending: with(Stage::Pending),
                    previous: with(Stage::Previous),
                    versions: s.versions.len(),
                    updated_at: s.versions.last().map(|v| from_ms(v.created_at_ms)),
                }
            })
            .collect())
    }

    /// What the file is: its id, key id, generation, retention and size.
    /// For audits: a generation lower than one recorded earlier means an
    /// older copy.
    pub fn info(&self) -> Result<StoreInfo> {
        let loaded = self.snapshot()?;
        let state = &loaded.state;
        Ok(StoreInfo {
            store_id: state.store_id.iter().map(|b| format!("{b:02x}")).collect(),
            kek_id: state.kek_id.clone(),
            generation: state.generation,
            secrets: state.secrets.len(),
            versions: state.secrets.values().map(|s| s.versions.len()).sum(),
            max_versions: effective_max(0, state.max_versions),
            bytes: loaded.stamp.len,
        })
    }

    /// How many versions of `name` the store keeps, and whether that is the
    /// secret's own setting (`true`) or the store's (`false`).
    pub fn max_versions(&self, name: &str) -> Result<(u32, bool)> {
        let loaded = self.snapshot()?;
        let secret = self.secret(&loaded.state, name)?;
        Ok((
            effective_max(secret.max_versions, loaded.state.max_versions),
            secret.max_versions != 0,
        ))
    }

    /// Sets the store's retention (`secret: None`) or one secret's override;
    /// 0 means the default for the store and the store's setting for a
    /// secret. Versions beyond the new limit that carry no label are removed
    /// at once. Returns the number of versions removed.
    pub fn set_max_versions(&self, secret: Option<&str>, max_versions: u32) -> Result<usize> {
        self.mutate(Create::IfMissing, |state| {
            match secret {
                None => state.max_versions = max_versions,
                Some(name) => self.secret_mut(state, name)?.max_versions = max_versions,
            }
            Ok(())
        })
        .map(|((), removed)| removed)
    }

    /// Writes a new version. With [`WriteAs::Current`] it becomes CURRENT
    /// and the old CURRENT becomes PREVIOUS; with [`WriteAs::Pending`] it
    /// becomes PENDING (taking the label from any older pending version).
    /// The oldest unlabelled versions beyond the secret's retention go.
    pub fn put(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionMeta> {
        self.put_with(name, value, write_as, None)
    }

    /// [`put`](Self::put), also setting the secret's `max-versions` (0: the
    /// store's setting again) when given.
    pub fn put_with(
        &self,
        name: &str,
        value: &[u8],
        write_as: WriteAs,
        max_versions: Option<u32>,
    ) -> Result<VersionMeta> {
        validate_secret_name(name)?;
        if value.is_empty() || value.len() > MAX_VALUE_LEN {
            return Err(Error::BadValue {
                name: name.to_owned(),
                len: value.len(),
                problem: format!("expected 1 to {MAX_VALUE_LEN} bytes"),
            });
        }
        let kek = self.0.kek.clone();
        self.mutate(Create::IfMissing, |state| {
            let store_id = state.store_id;
            let secret = state.secrets.entry(name.to_owned()).or_insert(Secret {
                next_version: 1,
                max_versions: 0,
                removed_through: 0,
                versions: Vec::new(),
            });
            if let Some(max) = max_versions {
                secret.max_versions = max;
            }
            let number = secret.next_version;
            let sealed = rotor_envelope::seal(
                &*kek,
                &RecordId {
                    store_id: &store_id,
                    name,
                    version: number,
                },
                value,
            )
            .map_err(|source| Error::Envelope {
                path: self.0.path.clone(),
                source,
            })?;
            let mut stages = Stages::NONE;
            match write_as {
                WriteAs::Current => {
                    move_current(secret);
                    stages.insert(Stage::Current);
                }
                WriteAs::Pending => {
                    clear(secret, Stage::Pending);
                    stages.insert(Stage::Pending);
                }
            }
            secret.next_version = number + 1;
            secret.versions.push(Version {
                number,
                created_at_ms: now_ms(),
                stages,
                size: value.len(),
                sealed: Sealed::Bytes(sealed.into()),
            });
            Ok(meta(name, secret.versions.last().expect("just pushed")))
        })
        .map(|(meta, _)| meta)
    }

    /// Makes `version` CURRENT; the old CURRENT becomes PREVIOUS and loses
    /// no data. Promoting the CURRENT version again changes nothing.
    pub fn promote_number(&self, name: &str, version: u64) -> Result<VersionMeta> {
        self.mutate(Create::Never, |state| {
            let store_max = state.max_versions;
            let secret = self.secret_mut(state, name)?;
            let index = self.index_of(name, secret, store_max, version)?;
            if !secret.versions[index].stages.contains(Stage::Current) {
                move_current(secret);
                let v = &mut secret.versions[index];
                v.stages.remove(Stage::Pending);
                v.stages.remove(Stage::Previous);
                v.stages.insert(Stage::Current);
            }
            Ok(meta(name, &secret.versions[index]))
        })
        .map(|(meta, _)| meta)
    }

    /// Removes `version` and its data for good. The CURRENT version cannot
    /// be retired.
    pub fn retire_number(&self, name: &str, version: u64) -> Result<()> {
        self.mutate(Create::Never, |state| {
            let store_max = state.max_versions;
            let secret = self.secret_mut(state, name)?;
            let index = self.index_of(name, secret, store_max, version)?;
            if secret.versions[index].stages.contains(Stage::Current) {
                return Err(Error::Conflict {
                    store: self.label(),
                    name: name.to_owned(),
                    version: version.to_string(),
                    problem: "is CURRENT and cannot be retired; promote another version first"
                        .to_owned(),
                });
            }
            secret.versions.remove(index);
            Ok(())
        })
        .map(|((), _)| ())
    }

    /// Re-wraps every data key (and the file's MAC key) under `new`, without
    /// re-encrypting any value. Returns the number of records re-wrapped.
    /// This handle keeps using its old KEK; open a new one with `new`.
    pub fn rewrap(&self, new: &dyn Kek) -> Result<usize> {
        let old = self.0.kek.clone();
        self.mutate(Create::Never, |state| {
            let envelope = |source| Error::Envelope {
                path: self.0.path.clone(),
                source,
            };
            let source = state.source.clone();
            let mut count = 0;
            for secret in state.secrets.values_mut() {
                for v in &mut secret.versions {
                    let sealed = self.record(source.as_deref(), &v.sealed)?;
                    let rewrapped =
                        rotor_envelope::rewrap(&*old, new, &sealed).map_err(envelope)?;
                    v.sealed = Sealed::Bytes(rewrapped.into());
                    count += 1;
                }
            }
            state.wrapped_mac_key = new
                .wrap(&DataKey::from_bytes(**state.mac_key))
                .map_err(envelope)?;
            state.kek_id = new.key_id().to_owned();
            Ok(count)
        })
        .map(|(count, _)| count)
    }
}

/// What `rotor store info` shows of a store file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    /// The random id fixed at creation, in hex.
    pub store_id: String,
    pub kek_id: String,
    /// One more on every write.
    pub generation: u64,
    pub secrets: usize,
    pub versions: usize,
    /// How many versions a secret keeps unless it sets its own limit.
    pub max_versions: u32,
    /// The file's size.
    pub bytes: u64,
}
