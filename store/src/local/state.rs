//! The decoded index of one store file (secrets, versions, stage labels,
//! where each sealed record is), the lookups over it, and retention.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use super::{DEFAULT_MAX_VERSIONS, LocalStore};
use crate::{Error, Result, Selector, Stage, Stages, VersionId, VersionMeta};

#[derive(Clone)]
pub(super) struct State {
    pub(super) store_id: [u8; 16],
    pub(super) kek_id: String,
    pub(super) wrapped_mac_key: Vec<u8>,
    pub(super) mac_key: Arc<Zeroizing<[u8; 32]>>,
    pub(super) generation: u64,
    /// The store's retention; 0: [`DEFAULT_MAX_VERSIONS`].
    pub(super) max_versions: u32,
    pub(super) secrets: BTreeMap<String, Secret>,
    /// The verified file that [`Sealed::InFile`] records are read from.
    pub(super) source: Option<Arc<File>>,
}

#[derive(Clone)]
pub(super) struct Secret {
    pub(super) next_version: u64,
    /// This secret's retention; 0: the store's.
    pub(super) max_versions: u32,
    /// The highest version number retention removed; 0: none.
    pub(super) removed_through: u64,
    /// Ascending by number.
    pub(super) versions: Vec<Version>,
}

#[derive(Clone)]
pub(super) struct Version {
    pub(super) number: u64,
    pub(super) created_at_ms: u64,
    pub(super) stages: Stages,
    /// The plaintext's length.
    pub(super) size: usize,
    pub(super) sealed: Sealed,
}

/// Where a version's sealed record is.
#[derive(Clone)]
pub(super) enum Sealed {
    /// In the state's source file.
    InFile { offset: u64, len: u32 },
    /// Sealed or re-wrapped by the write in progress.
    Bytes(Arc<[u8]>),
}

impl LocalStore {
    /// A version's sealed record: read from the verified file, or the bytes
    /// of the write in progress.
    pub(super) fn record<'s>(
        &self,
        source: Option<&File>,
        sealed: &'s Sealed,
    ) -> Result<Cow<'s, [u8]>> {
        match sealed {
            Sealed::Bytes(bytes) => Ok(Cow::Borrowed(bytes)),
            Sealed::InFile { offset, len } => {
                let file = source.ok_or_else(|| self.corrupt("a record has no file"))?;
                let mut buf = vec![0u8; *len as usize];
                file.read_exact_at(&mut buf, *offset)
                    .map_err(self.io("read a record"))?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    pub(super) fn secret<'s>(&self, state: &'s State, name: &str) -> Result<&'s Secret> {
        state.secrets.get(name).ok_or_else(|| self.not_found(name))
    }

    pub(super) fn secret_mut<'s>(
        &self,
        state: &'s mut State,
        name: &str,
    ) -> Result<&'s mut Secret> {
        state
            .secrets
            .get_mut(name)
            .ok_or_else(|| self.not_found(name))
    }

    pub(super) fn not_found(&self, name: &str) -> Error {
        Error::SecretNotFound {
            store: self.label(),
            name: name.to_owned(),
        }
    }

    /// Local version ids are decimal numbers.
    pub(super) fn number(&self, name: &str, secret: &Secret, id: &VersionId) -> Result<u64> {
        id.0.parse().map_err(|_| Error::VersionNotFound {
            store: self.label(),
            name: name.to_owned(),
            version: id.0.clone(),
            available: available(secret),
        })
    }

    pub(super) fn index_of(
        &self,
        name: &str,
        secret: &Secret,
        store_max: u32,
        version: u64,
    ) -> Result<usize> {
        secret
            .versions
            .binary_search_by_key(&version, |v| v.number)
            .map_err(|_| {
                if version <= secret.removed_through {
                    Error::VersionRemoved {
                        store: self.label(),
                        name: name.to_owned(),
                        version,
                        max_versions: effective_max(secret.max_versions, store_max),
                        removed_through: secret.removed_through,
                    }
                } else {
                    Error::VersionNotFound {
                        store: self.label(),
                        name: name.to_owned(),
                        version: version.to_string(),
                        available: available(secret),
                    }
                }
            })
    }

    pub(super) fn find<'s>(
        &self,
        state: &'s State,
        name: &str,
        selector: Selector,
    ) -> Result<&'s Version> {
        let secret = self.secret(state, name)?;
        let stage = match selector {
            Selector::Version(ref id) => {
                let n = self.number(name, secret, id)?;
                return Ok(&secret.versions[self.index_of(name, secret, state.max_versions, n)?]);
            }
            Selector::Current => Stage::Current,
            Selector::Stage(s) => s,
        };
        secret
            .versions
            .iter()
            .find(|v| v.stages.contains(stage))
            .ok_or_else(|| Error::StageNotFound {
                store: self.label(),
                name: name.to_owned(),
                stage,
            })
    }
}

/// The number of versions a secret keeps.
pub(super) fn effective_max(secret: u32, store: u32) -> u32 {
    match (secret, store) {
        (0, 0) => DEFAULT_MAX_VERSIONS,
        (0, store) => store,
        (secret, _) => secret,
    }
}

/// Removes, per secret, the oldest versions beyond its limit that carry no
/// stage label. Returns how many went.
pub(super) fn apply_retention(state: &mut State) -> usize {
    let store_max = state.max_versions;
    let mut removed = 0;
    for secret in state.secrets.values_mut() {
        let max = effective_max(secret.max_versions, store_max) as usize;
        let mut excess = secret.versions.len().saturating_sub(max);
        if excess == 0 {
            continue;
        }
        let mut through = secret.removed_through;
        secret.versions.retain(|v| {
            if excess > 0 && v.stages.is_empty() {
                excess -= 1;
                removed += 1;
                through = through.max(v.number);
                false
            } else {
                true
            }
        });
        secret.removed_through = through;
    }
    removed
}

/// Moves CURRENT to PREVIOUS, dropping the old PREVIOUS label.
pub(super) fn move_current(secret: &mut Secret) {
    clear(secret, Stage::Previous);
    for v in &mut secret.versions {
        if v.stages.contains(Stage::Current) {
            v.stages.remove(Stage::Current);
            v.stages.insert(Stage::Previous);
        }
    }
}

pub(super) fn clear(secret: &mut Secret, stage: Stage) {
    for v in &mut secret.versions {
        v.stages.remove(stage);
    }
}

pub(super) fn available(secret: &Secret) -> String {
    let numbers: Vec<String> = secret
        .versions
        .iter()
        .map(|v| v.number.to_string())
        .collect();
    numbers.join(", ")
}

pub(super) fn meta(name: &str, v: &Version) -> VersionMeta {
    VersionMeta {
        name: name.to_owned(),
        version: v.number,
        created_at: from_ms(v.created_at_ms),
        stages: v.stages,
        size: v.size,
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
