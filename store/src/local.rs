//! The embedded local store: named, versioned, envelope-encrypted secrets in
//! one file.
//!
//! # Concurrency and crash safety
//!
//! Readers never lock: they open the file, and every write replaces it with
//! `rename(2)`, so a reader sees the old file or the new one. Writers take an
//! exclusive `flock` on `<store>.lock`, re-read the file under the lock,
//! write `<store>.tmp`, `fsync` it, rename it over the store and `fsync` the
//! directory. A writer killed at any point leaves the old file or the new
//! one, never a mix; a stale `.tmp` is overwritten by the next writer.
//!
//! A reader caches the decoded file and re-reads it only when the file's
//! identity (device, inode, size, mtime) changes, which makes a warm `get` an
//! `open` + `fstat` + one record decryption.
//!
//! # Replayed copies
//!
//! Every write adds one to the file's generation. A handle (with its clones)
//! remembers the highest generation it has read or written, and refuses a
//! file whose generation is lower with [`Error::Replayed`]: an older copy of
//! the store was put in place. It serves nothing from that file, and a
//! writer does not write over it, until a file at least as new is back. A
//! process that starts fresh against an older copy cannot tell; the
//! generation is shown by `rotor store info` for audits.
//!
//! # File format, version 1
//!
//! All integers are big-endian; `short`, `medium` and `long` fields carry a
//! u8, u16 or u32 length prefix.
//!
//! | field                    | encoding                                   |
//! |--------------------------|--------------------------------------------|
//! | magic                    | 8 bytes, `RTRSTORE`                        |
//! | format version           | u8, `1`                                    |
//! | store id                 | 16 random bytes, fixed at creation         |
//! | KEK id                   | short, UTF-8                               |
//! | wrapped MAC key          | medium: the file's HMAC key, KEK-wrapped   |
//! | generation               | u64, +1 on every write                     |
//! | secret count             | u32                                        |
//! | per secret, by name      | name (medium, UTF-8), next version (u64), version count (u32) |
//! | per version, ascending   | number (u64), created-at (u64, Unix ms), stage bits (u8: 1 CURRENT, 2 PENDING, 4 PREVIOUS), sealed record (long, see `rotor_envelope`) |
//! | MAC                      | 32 bytes, HMAC-SHA256 over all of the above |
//! | checksum                 | 32 bytes, SHA-256 over all of the above, MAC included |
//!
//! The checksum catches any accidental change (a flipped bit, truncation)
//! before a key is needed. The MAC, under a random key that only the KEK can
//! unwrap, catches deliberate edits: reordering, truncation at a record
//! boundary, or a record pasted from another store. Each sealed record is
//! also bound to the store id, its secret's name and its version by its AAD.
//! The format alone cannot detect a rollback of the whole file to an older
//! copy made under the same key: a running handle refuses one (see above),
//! and the generation counter lets an operator see one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use rotor_envelope::wire::{Reader, Writer};
use rotor_envelope::{DataKey, Kek, RecordId};
use zeroize::Zeroizing;

use crate::{
    Error, MAX_VALUE_LEN, Result, SecretSummary, SecretValue, Selector, Stage, Stages, VersionId,
    VersionMeta, WriteAs, validate_secret_name,
};

const MAGIC: &[u8; 8] = b"RTRSTORE";
const FORMAT: u8 = 1;
const HASH_LEN: usize = 32;

/// The embedded local store. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct LocalStore(Arc<Shared>);

#[doc(hidden)]
pub struct Shared {
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
    kek: Arc<dyn Kek>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    loaded: Option<Arc<Loaded>>,
    /// The highest generation read or written through this handle: a file
    /// with a lower one is an older copy put in place.
    seen: u64,
}

struct Loaded {
    stamp: Stamp,
    state: State,
}

/// The identity of one file as written: a rename makes a new one.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

#[derive(Clone)]
struct State {
    store_id: [u8; 16],
    kek_id: String,
    wrapped_mac_key: Vec<u8>,
    mac_key: Arc<Zeroizing<[u8; 32]>>,
    generation: u64,
    secrets: BTreeMap<String, Secret>,
}

#[derive(Clone)]
struct Secret {
    next_version: u64,
    /// Ascending by number.
    versions: Vec<Version>,
}

#[derive(Clone)]
struct Version {
    number: u64,
    created_at_ms: u64,
    stages: Stages,
    sealed: Arc<[u8]>,
}

impl std::ops::Deref for LocalStore {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl LocalStore {
    /// A handle on the store at `path`. Nothing is read until the first
    /// call; the first write creates the file.
    pub fn new(path: impl Into<PathBuf>, kek: Arc<dyn Kek>) -> Self {
        let path = path.into();
        let with_suffix = |suffix: &str| {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            path.with_file_name(name)
        };
        Self(Arc::new(Shared {
            lock_path: with_suffix(".lock"),
            tmp_path: with_suffix(".tmp"),
            path,
            kek,
            cache: Mutex::default(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn label(&self) -> String {
        self.path.display().to_string()
    }

    fn io(&self, operation: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.clone(),
            operation,
            source,
        }
    }

    fn corrupt(&self, problem: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    /// Reads the value of a secret.
    pub fn get(&self, name: &str, selector: Selector) -> Result<SecretValue> {
        let loaded = self.snapshot()?;
        let state = &loaded.state;
        let version = self.find(state, name, selector)?;
        let value = rotor_envelope::open(
            &*self.kek,
            &RecordId {
                store_id: &state.store_id,
                name,
                version: version.number,
            },
            &version.sealed,
        )
        .map_err(|source| Error::Envelope {
            path: self.path.clone(),
            source,
        })?;
        Ok(SecretValue {
            meta: meta(name, version),
            value,
        })
    }

    /// Metadata of one version, without decrypting it.
    pub fn describe(&self, name: &str, selector: Selector) -> Result<VersionMeta> {
        let loaded = self.snapshot()?;
        Ok(meta(name, self.find(&loaded.state, name, selector)?))
    }

    /// The cheap change check: the number of the CURRENT version.
    pub fn current_version(&self, name: &str) -> Result<u64> {
        self.describe(name, Selector::Current).map(|m| m.version)
    }

    /// Every version of a secret, oldest first.
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

    /// What the file is: its id, key id, generation and size. For audits:
    /// a generation lower than one recorded earlier means an older copy.
    pub fn info(&self) -> Result<StoreInfo> {
        let loaded = self.snapshot()?;
        let state = &loaded.state;
        Ok(StoreInfo {
            store_id: state.store_id.iter().map(|b| format!("{b:02x}")).collect(),
            kek_id: state.kek_id.clone(),
            generation: state.generation,
            secrets: state.secrets.len(),
            versions: state.secrets.values().map(|s| s.versions.len()).sum(),
        })
    }

    /// Writes a new version. With [`WriteAs::Current`] it becomes CURRENT
    /// and the old CURRENT becomes PREVIOUS; with [`WriteAs::Pending`] it
    /// becomes PENDING (taking the label from any older pending version).
    pub fn put(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionMeta> {
        validate_secret_name(name)?;
        if value.is_empty() || value.len() > MAX_VALUE_LEN {
            return Err(Error::BadValue {
                name: name.to_owned(),
                len: value.len(),
                problem: format!("expected 1 to {MAX_VALUE_LEN} bytes"),
            });
        }
        let kek = self.kek.clone();
        self.mutate(|state| {
            let store_id = state.store_id;
            let secret = state.secrets.entry(name.to_owned()).or_insert(Secret {
                next_version: 1,
                versions: Vec::new(),
            });
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
                path: self.path.clone(),
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
                sealed: sealed.into(),
            });
            Ok(meta(name, secret.versions.last().expect("just pushed")))
        })
    }

    /// Makes `version` CURRENT; the old CURRENT becomes PREVIOUS and loses
    /// no data. Promoting the CURRENT version again changes nothing.
    pub fn promote(&self, name: &str, version: u64) -> Result<VersionMeta> {
        self.mutate(|state| {
            let secret = self.secret_mut(state, name)?;
            let index = self.index_of(name, secret, version)?;
            if !secret.versions[index].stages.contains(Stage::Current) {
                move_current(secret);
                let v = &mut secret.versions[index];
                v.stages.remove(Stage::Pending);
                v.stages.remove(Stage::Previous);
                v.stages.insert(Stage::Current);
            }
            Ok(meta(name, &secret.versions[index]))
        })
    }

    /// Removes `version` and its data for good. The CURRENT version cannot
    /// be retired.
    pub fn retire(&self, name: &str, version: u64) -> Result<()> {
        self.mutate(|state| {
            let secret = self.secret_mut(state, name)?;
            let index = self.index_of(name, secret, version)?;
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
    }

    /// Re-wraps every data key (and the file's MAC key) under `new`, without
    /// re-encrypting any value. Returns the number of records re-wrapped.
    /// This handle keeps using its old KEK; open a new one with `new`.
    pub fn rewrap(&self, new: &dyn Kek) -> Result<usize> {
        let old = self.kek.clone();
        self.mutate(|state| {
            let envelope = |source| Error::Envelope {
                path: self.path.clone(),
                source,
            };
            let mut count = 0;
            for secret in state.secrets.values_mut() {
                for v in &mut secret.versions {
                    v.sealed = rotor_envelope::rewrap(&*old, new, &v.sealed)
                        .map_err(envelope)?
                        .into();
                    count += 1;
                }
            }
            state.wrapped_mac_key = new
                .wrap(&DataKey::from_bytes(**state.mac_key))
                .map_err(envelope)?;
            state.kek_id = new.key_id().to_owned();
            Ok(count)
        })
    }

    fn secret<'s>(&self, state: &'s State, name: &str) -> Result<&'s Secret> {
        state.secrets.get(name).ok_or_else(|| self.not_found(name))
    }

    fn secret_mut<'s>(&self, state: &'s mut State, name: &str) -> Result<&'s mut Secret> {
        state
            .secrets
            .get_mut(name)
            .ok_or_else(|| self.not_found(name))
    }

    fn not_found(&self, name: &str) -> Error {
        Error::SecretNotFound {
            store: self.label(),
            name: name.to_owned(),
        }
    }

    /// Local version ids are decimal numbers.
    fn number(&self, name: &str, secret: &Secret, id: &VersionId) -> Result<u64> {
        id.0.parse().map_err(|_| Error::VersionNotFound {
            store: self.label(),
            name: name.to_owned(),
            version: id.0.clone(),
            available: available(secret),
        })
    }

    fn index_of(&self, name: &str, secret: &Secret, version: u64) -> Result<usize> {
        secret
            .versions
            .binary_search_by_key(&version, |v| v.number)
            .map_err(|_| Error::VersionNotFound {
                store: self.label(),
                name: name.to_owned(),
                version: version.to_string(),
                available: available(secret),
            })
    }

    fn find<'s>(&self, state: &'s State, name: &str, selector: Selector) -> Result<&'s Version> {
        let secret = self.secret(state, name)?;
        let stage = match selector {
            Selector::Version(ref id) => {
                let n = self.number(name, secret, id)?;
                return Ok(&secret.versions[self.index_of(name, secret, n)?]);
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

    /// The decoded file, re-read only when it changed on disk. A file whose
    /// generation is lower than one seen before is refused.
    fn snapshot(&self) -> Result<Arc<Loaded>> {
        // A thread that opened the file just before a writer replaced it
        // decodes an older generation than a thread that opened it just
        // after: no replay, as the path names another file by then. Such a
        // read starts again, a few times at most.
        const ATTEMPTS: u32 = 8;
        let mut attempt = 1;
        loop {
            let mut file = File::open(&self.path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::Missing {
                        path: self.path.clone(),
                    }
                } else {
                    self.io("open")(e)
                }
            })?;
            let stamp = Stamp::of(&file.metadata().map_err(self.io("stat"))?);
            if let Some(loaded) = &self.cache.lock().expect("cache lock").loaded
                && loaded.stamp == stamp
            {
                return Ok(loaded.clone());
            }
            let mut bytes = Vec::with_capacity(stamp.len as usize);
            file.read_to_end(&mut bytes).map_err(self.io("read"))?;
            let state = self.decode(&bytes)?;
            let mut cache = self.cache.lock().expect("cache lock");
            if state.generation < cache.seen {
                let replaced =
                    std::fs::metadata(&self.path).map(|m| Stamp::of(&m)).ok() != Some(stamp);
                if replaced && attempt < ATTEMPTS {
                    attempt += 1;
                    continue;
                }
                return Err(Error::Replayed {
                    path: self.path.clone(),
                    seen: cache.seen,
                    found: state.generation,
                });
            }
            cache.seen = state.generation;
            let loaded = Arc::new(Loaded { stamp, state });
            cache.loaded = Some(loaded.clone());
            return Ok(loaded);
        }
    }

    /// Applies `change` under the writer lock and replaces the file.
    fn mutate<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(self.io("create its lock file"))?;
        lock.lock().map_err(self.io("lock"))?;
        let mut state = match self.snapshot() {
            Ok(loaded) => loaded.state.clone(),
            Err(Error::Missing { .. }) => self.new_state()?,
            Err(e) => return Err(e),
        };
        let out = change(&mut state)?;
        state.generation += 1;
        let bytes = encode(&state).map_err(|e| self.corrupt(e.to_string()))?;
        let mut tmp = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.tmp_path)
            .map_err(self.io("create its temporary file"))?;
        tmp.write_all(&bytes).map_err(self.io("write"))?;
        tmp.sync_all().map_err(self.io("sync"))?;
        let stamp = Stamp::of(&tmp.metadata().map_err(self.io("stat"))?);
        drop(tmp);
        std::fs::rename(&self.tmp_path, &self.path).map_err(self.io("rename into place"))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("sync its directory"))?;
        let mut cache = self.cache.lock().expect("cache lock");
        cache.seen = state.generation;
        cache.loaded = Some(Arc::new(Loaded { stamp, state }));
        drop(cache);
        drop(lock);
        Ok(out)
    }

    fn new_state(&self) -> Result<State> {
        let rng = SystemRandom::new();
        let mut store_id = [0u8; 16];
        rng.fill(&mut store_id)
            .map_err(|_| self.envelope(rotor_envelope::Error::Random))?;
        let mut mac_key = Zeroizing::new([0u8; 32]);
        rng.fill(&mut mac_key[..])
            .map_err(|_| self.envelope(rotor_envelope::Error::Random))?;
        let wrapped_mac_key = self
            .kek
            .wrap(&DataKey::from_bytes(*mac_key))
            .map_err(|e| self.envelope(e))?;
        tracing::info!(path = %self.path.display(), "creating local store");
        // A store made again by a handle that saw an older one goes on
        // from that one's generation, so that it is not refused as a replay.
        let generation = self.cache.lock().expect("cache lock").seen;
        Ok(State {
            store_id,
            kek_id: self.kek.key_id().to_owned(),
            wrapped_mac_key,
            mac_key: Arc::new(mac_key),
            generation,
            secrets: BTreeMap::new(),
        })
    }

    fn envelope(&self, source: rotor_envelope::Error) -> Error {
        Error::Envelope {
            path: self.path.clone(),
            source,
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<State> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(self.corrupt("not a Rotor store file (bad magic bytes)"));
        }
        if bytes.len() < MAGIC.len() + 1 + 2 * HASH_LEN {
            return Err(self.corrupt(format!("file is truncated ({} bytes)", bytes.len())));
        }
        let (authenticated, trailer) = bytes.split_at(bytes.len() - 2 * HASH_LEN);
        let (mac, checksum) = trailer.split_at(HASH_LEN);
        let expected = digest::digest(&digest::SHA256, &bytes[..bytes.len() - HASH_LEN]);
        if expected.as_ref() != checksum {
            return Err(
                self.corrupt("checksum mismatch: the file was truncated, damaged or edited")
            );
        }
        let format = bytes[MAGIC.len()];
        if format != FORMAT {
            return Err(self.corrupt(format!(
                "unsupported store format version {format} (this build reads version {FORMAT})"
            )));
        }
        let malformed = |e: rotor_envelope::Error| self.corrupt(e.to_string());
        let mut r = Reader::new(&authenticated[MAGIC.len() + 1..]);
        let store_id: [u8; 16] = r.array("store id").map_err(malformed)?;
        let kek_id = r.short_str("kek id").map_err(malformed)?.to_owned();
        let wrapped_mac_key = r.medium("wrapped MAC key").map_err(malformed)?.to_vec();
        let mac_key = self
            .kek
            .unwrap(&kek_id, &wrapped_mac_key)
            .map_err(|e| self.envelope(e))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, mac_key.expose());
        if hmac::verify(&key, authenticated, mac).is_err() {
            return Err(self.corrupt(
                "authentication failed: the contents were changed without the store's key \
                 (edited, reordered, or records pasted from another store)",
            ));
        }
        let generation = r.u64("generation").map_err(malformed)?;
        let count = r.u32("secret count").map_err(malformed)?;
        let mut secrets = BTreeMap::new();
        let mut last_name: Option<String> = None;
        for _ in 0..count {
            let name = r.medium_str("secret name").map_err(malformed)?.to_owned();
            validate_secret_name(&name).map_err(|e| self.corrupt(e.to_string()))?;
            if last_name.as_ref().is_some_and(|last| *last >= name) {
                return Err(self.corrupt(format!("secret {name:?} is out of order")));
            }
            let next_version = r.u64("next version").map_err(malformed)?;
            let n = r.u32("version count").map_err(malformed)?;
            let mut versions: Vec<Version> = Vec::with_capacity(n.min(1024) as usize);
            let mut seen = Stages::NONE;
            for _ in 0..n {
                let number = r.u64("version number").map_err(malformed)?;
                let created_at_ms = r.u64("created-at").map_err(malformed)?;
                let bits = r.u8("stages").map_err(malformed)?;
                let stages = Stages::from_bits(bits).ok_or_else(|| {
                    self.corrupt(format!("secret {name:?}: bad stage bits {bits}"))
                })?;
                let sealed = r.long("sealed record").map_err(malformed)?;
                if versions.last().is_some_and(|v| v.number >= number) || number >= next_version {
                    return Err(
                        self.corrupt(format!("secret {name:?}: version {number} is out of order"))
                    );
                }
                if seen.bits() & stages.bits() != 0 {
                    return Err(self.corrupt(format!(
                        "secret {name:?}: a stage label is on more than one version"
                    )));
                }
                seen = Stages::from_bits(seen.bits() | stages.bits()).expect("valid bits");
                versions.push(Version {
                    number,
                    created_at_ms,
                    stages,
                    sealed: sealed.into(),
                });
            }
            last_name = Some(name.clone());
            secrets.insert(
                name,
                Secret {
                    next_version,
                    versions,
                },
            );
        }
        if r.remaining() != 0 {
            return Err(self.corrupt(format!(
                "{} unexpected bytes after the last secret",
                r.remaining()
            )));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(mac_key.expose());
        Ok(State {
            store_id,
            kek_id,
            wrapped_mac_key,
            mac_key: Arc::new(raw),
            generation,
            secrets,
        })
    }
}

fn encode(state: &State) -> rotor_envelope::Result<Vec<u8>> {
    let mut w = Writer::with_capacity(
        256 + state
            .secrets
            .values()
            .flat_map(|s| &s.versions)
            .map(|v| v.sealed.len() + 64)
            .sum::<usize>(),
    );
    w.bytes(MAGIC)
        .u8(FORMAT)
        .bytes(&state.store_id)
        .short("kek id", state.kek_id.as_bytes())?
        .medium("wrapped MAC key", &state.wrapped_mac_key)?
        .u64(state.generation)
        .u32(
            u32::try_from(state.secrets.len()).map_err(|_| rotor_envelope::Error::TooLarge {
                field: "secret count",
                len: state.secrets.len(),
                max: u32::MAX as usize,
            })?,
        );
    for (name, secret) in &state.secrets {
        w.medium("secret name", name.as_bytes())?
            .u64(secret.next_version)
            .u32(secret.versions.len() as u32);
        for v in &secret.versions {
            w.u64(v.number)
                .u64(v.created_at_ms)
                .u8(v.stages.bits())
                .long("sealed record", &v.sealed)?;
        }
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &state.mac_key[..]);
    let mac = hmac::sign(&key, w.as_slice());
    w.bytes(mac.as_ref());
    let checksum = digest::digest(&digest::SHA256, w.as_slice());
    w.bytes(checksum.as_ref());
    Ok(w.into_vec())
}

/// Moves CURRENT to PREVIOUS, dropping the old PREVIOUS label.
fn move_current(secret: &mut Secret) {
    clear(secret, Stage::Previous);
    for v in &mut secret.versions {
        if v.stages.contains(Stage::Current) {
            v.stages.remove(Stage::Current);
            v.stages.insert(Stage::Previous);
        }
    }
}

fn clear(secret: &mut Secret, stage: Stage) {
    for v in &mut secret.versions {
        v.stages.remove(stage);
    }
}

fn available(secret: &Secret) -> String {
    let numbers: Vec<String> = secret
        .versions
        .iter()
        .map(|v| v.number.to_string())
        .collect();
    numbers.join(", ")
}

fn meta(name: &str, v: &Version) -> VersionMeta {
    VersionMeta {
        name: name.to_owned(),
        version: v.number,
        created_at: from_ms(v.created_at_ms),
        stages: v.stages,
        size: rotor_envelope::plaintext_len(&v.sealed).unwrap_or(0),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
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
}

/// The local store behind the shared trait. Each call runs on tokio's
/// blocking pool: reads are microseconds, but writes `fsync`.
#[async_trait::async_trait]
impl crate::Store for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.path.display())
    }

    async fn read(&self, name: &str, selector: &Selector) -> Result<crate::Fetched> {
        let (store, name, selector) = (self.clone(), name.to_owned(), selector.clone());
        blocking(move || store.get(&name, selector))
            .await
            .map(|v| crate::Fetched {
                version: v.meta.version.into(),
                created_at: Some(v.meta.created_at),
                value: v.value,
            })
    }

    async fn current_version(&self, name: &str) -> Result<VersionId> {
        // On the pool too: a changed file is re-verified, which calls the
        // KEK, and a network KEK must not run inside an async task.
        let (store, name) = (self.clone(), name.to_owned());
        blocking(move || LocalStore::current_version(&store, &name))
            .await
            .map(VersionId::from)
    }

    async fn write(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionId> {
        let (store, name) = (self.clone(), name.to_owned());
        let value = Zeroizing::new(value.to_vec());
        blocking(move || store.put(&name, &value, write_as))
            .await
            .map(|m| m.version.into())
    }

    async fn promote(&self, name: &str, version: &VersionId) -> Result<()> {
        let (store, name, version) = (self.clone(), name.to_owned(), version.clone());
        blocking(move || {
            let n = store.version_number(&name, &version)?;
            store.promote(&name, n).map(|_| ())
        })
        .await
    }

    async fn retire(&self, name: &str, version: &VersionId) -> Result<()> {
        let (store, name, version) = (self.clone(), name.to_owned(), version.clone());
        blocking(move || {
            let n = store.version_number(&name, &version)?;
            store.retire(&name, n)
        })
        .await
    }
}

impl LocalStore {
    fn version_number(&self, name: &str, id: &VersionId) -> Result<u64> {
        let loaded = self.snapshot()?;
        let secret = self.secret(&loaded.state, name)?;
        self.number(name, secret, id)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("local store task panicked")
}

#[cfg(test)]
mod tests;
