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
//! # Reading: one generation, decoded once, shared
//!
//! A handle (with its clones) keeps the file it last verified open and
//! shares one decoded index of it (an `Arc`): per version its number,
//! created-at, stage labels, size and where its sealed record lies in the
//! file. Verifying streams the file once through SHA-256 and HMAC-SHA256
//! with a fixed 64 KiB buffer; no record is kept in memory. A `get` reads
//! its one sealed record with `pread` from the verified file and opens it.
//! So a reader's memory depends on the number of versions it indexes, not on
//! their sizes, and not on how often the file changes.
//!
//! While the path still names the file the handle holds (same device, inode,
//! size and mtime, from one `stat`), nothing is re-read: a warm version check
//! is a `stat`, a warm `get` a `stat`, a `pread` and one record decryption.
//! Holding the file open also means its inode cannot be reused for another
//! file. A record changed in place after verification fails its AEAD tag.
//!
//! # Retention
//!
//! Each secret keeps at most `max-versions` versions (default
//! [`DEFAULT_MAX_VERSIONS`]), like Vault KV v2's `max_versions`: a store-wide
//! setting in the file, and an optional per-secret override (0 means "the
//! store's setting", and for the store "the default"). Every write removes
//! the oldest versions beyond the limit, except versions labelled CURRENT,
//! PENDING or PREVIOUS, which are never removed by retention (AWS Secrets
//! Manager likewise deletes only unlabelled versions). Version numbers are
//! never reused; each secret records the highest number retention removed, so
//! a read of such a version fails with [`Error::VersionRemoved`], a not-found
//! error that names the version and says that retention removed it.
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
//! # File format, version 2
//!
//! All integers are big-endian; `short`, `medium` and `long` fields carry a
//! u8, u16 or u32 length prefix. Version 1 files (without the fields marked
//! "v2") are read as if every v2 field were 0; writes produce version 2.
//!
//! | field                    | encoding                                   |
//! |--------------------------|--------------------------------------------|
//! | magic                    | 8 bytes, `RTRSTORE`                        |
//! | format version           | u8, `2`                                    |
//! | store id                 | 16 random bytes, fixed at creation         |
//! | KEK id                   | short, UTF-8                               |
//! | wrapped MAC key          | medium: the file's HMAC key, KEK-wrapped   |
//! | generation               | u64, +1 on every write                     |
//! | max versions (v2)        | u32, the store's retention; 0: the default (10) |
//! | secret count             | u32                                        |
//! | per secret, by name      | name (medium, UTF-8), next version (u64), max versions (u32, 0: the store's; v2), removed through (u64, the highest version number retention removed, 0: none; v2), version count (u32) |
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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac};
use rotor_envelope::wire::Writer;
use rotor_envelope::{DataKey, Kek, RecordId};
use zeroize::Zeroizing;

use crate::{
    Error, MAX_VALUE_LEN, Result, SecretSummary, SecretValue, Selector, Stage, Stages, VersionId,
    VersionMeta, WriteAs, validate_secret_name,
};

const MAGIC: &[u8; 8] = b"RTRSTORE";
const FORMAT: u8 = 2;
const HASH_LEN: usize = 32;
/// The buffer that reading and writing stream the file through.
const IO_BUFFER: usize = 64 * 1024;

/// How many versions of a secret the store keeps when neither the store nor
/// the secret sets `max-versions` (as Vault KV v2).
pub const DEFAULT_MAX_VERSIONS: u32 = 10;

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
    /// Held while a changed file is verified and decoded, so that threads
    /// sharing this handle decode one generation once, one at a time.
    decoding: Mutex<()>,
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
    /// The store's retention; 0: [`DEFAULT_MAX_VERSIONS`].
    max_versions: u32,
    secrets: BTreeMap<String, Secret>,
    /// The verified file that [`Sealed::InFile`] records are read from.
    source: Option<Arc<File>>,
}

#[derive(Clone)]
struct Secret {
    next_version: u64,
    /// This secret's retention; 0: the store's.
    max_versions: u32,
    /// The highest version number retention removed; 0: none.
    removed_through: u64,
    /// Ascending by number.
    versions: Vec<Version>,
}

#[derive(Clone)]
struct Version {
    number: u64,
    created_at_ms: u64,
    stages: Stages,
    /// The plaintext's length.
    size: usize,
    sealed: Sealed,
}

/// Where a version's sealed record is.
/// Whether a write may create the store file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    IfMissing,
    Never,
}

#[derive(Clone)]
enum Sealed {
    /// In the state's source file.
    InFile { offset: u64, len: u32 },
    /// Sealed or re-wrapped by the write in progress.
    Bytes(Arc<[u8]>),
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
            decoding: Mutex::default(),
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
        let sealed = self.record(state.source.as_deref(), &version.sealed)?;
        let value = rotor_envelope::open(
            &*self.kek,
            &RecordId {
                store_id: &state.store_id,
                name,
                version: version.number,
            },
            &sealed,
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
        let kek = self.kek.clone();
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
                size: value.len(),
                sealed: Sealed::Bytes(sealed.into()),
            });
            Ok(meta(name, secret.versions.last().expect("just pushed")))
        })
        .map(|(meta, _)| meta)
    }

    /// Makes `version` CURRENT; the old CURRENT becomes PREVIOUS and loses
    /// no data. Promoting the CURRENT version again changes nothing.
    pub fn promote(&self, name: &str, version: u64) -> Result<VersionMeta> {
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
    pub fn retire(&self, name: &str, version: u64) -> Result<()> {
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
        let old = self.kek.clone();
        self.mutate(Create::Never, |state| {
            let envelope = |source| Error::Envelope {
                path: self.path.clone(),
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

    /// A version's sealed record: read from the verified file, or the bytes
    /// of the write in progress.
    fn record<'s>(&self, source: Option<&File>, sealed: &'s Sealed) -> Result<Cow<'s, [u8]>> {
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

    fn index_of(&self, name: &str, secret: &Secret, store_max: u32, version: u64) -> Result<usize> {
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

    fn find<'s>(&self, state: &'s State, name: &str, selector: Selector) -> Result<&'s Version> {
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

    /// The cached generation while the path still names its file: one
    /// `stat`, no thread hop, no key. `None` when the file changed (or the
    /// `stat` failed): [`snapshot`](Self::snapshot) reads it then.
    fn fresh(&self) -> Option<Arc<Loaded>> {
        let stamp = Stamp::of(&std::fs::metadata(&self.path).ok()?);
        let cache = self.cache.lock().expect("cache lock");
        cache
            .loaded
            .as_ref()
            .filter(|loaded| loaded.stamp == stamp)
            .cloned()
    }

    /// The decoded file, re-read only when it changed on disk. A file whose
    /// generation is lower than one seen before is refused.
    fn snapshot(&self) -> Result<Arc<Loaded>> {
        if let Some(loaded) = self.fresh() {
            return Ok(loaded);
        }
        let _decoding = self.decoding.lock().expect("decoding lock");
        // A thread that opened the file just before a writer replaced it
        // decodes an older generation than a thread that opened it just
        // after: no replay, as the path names another file by then. Such a
        // read starts again, a few times at most.
        const ATTEMPTS: u32 = 8;
        let mut attempt = 1;
        loop {
            let file = File::open(&self.path).map_err(|e| {
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
            let state = self.decode(file, stamp.len)?;
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

    /// Applies `change` under the writer lock, applies retention, and
    /// replaces the file. Returns what `change` returned and the number of
    /// versions retention removed. Only a put or a store-wide retention
    /// setting creates a missing store: a promote, retire or rewrap on a
    /// path that holds no store is refused before anything (not even the
    /// lock file) is written.
    fn mutate<T>(
        &self,
        create: Create,
        change: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<(T, usize)> {
        let missing = || Error::Missing {
            path: self.path.clone(),
        };
        if create == Create::Never && !self.path.exists() {
            return Err(missing());
        }
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
            Err(Error::Missing { .. }) if create == Create::IfMissing => self.new_state()?,
            Err(e) => return Err(e),
        };
        let out = change(&mut state)?;
        let removed = apply_retention(&mut state);
        if removed > 0 {
            tracing::debug!(path = %self.path.display(), removed, "retention removed old versions");
        }
        state.generation += 1;
        let tmp = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&self.tmp_path)
            .map_err(self.io("create its temporary file"))?;
        let places = {
            let mut out = BufWriter::with_capacity(IO_BUFFER, &tmp);
            let places = self.encode(&state, &mut out)?;
            out.flush().map_err(self.io("write"))?;
            places
        };
        tmp.sync_all().map_err(self.io("sync"))?;
        let stamp = Stamp::of(&tmp.metadata().map_err(self.io("stat"))?);
        std::fs::rename(&self.tmp_path, &self.path).map_err(self.io("rename into place"))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("sync its directory"))?;
        // The handle now reads from the file it wrote: its records are where
        // `encode` put them, and nothing written stays in memory.
        let mut places = places.into_iter();
        for v in state.secrets.values_mut().flat_map(|s| &mut s.versions) {
            let (offset, len) = places.next().expect("one place per version");
            v.sealed = Sealed::InFile { offset, len };
        }
        state.source = Some(Arc::new(tmp));
        let mut cache = self.cache.lock().expect("cache lock");
        cache.seen = state.generation;
        cache.loaded = Some(Arc::new(Loaded { stamp, state }));
        drop(cache);
        drop(lock);
        Ok((out, removed))
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
            max_versions: 0,
            secrets: BTreeMap::new(),
            source: None,
        })
    }

    fn envelope(&self, source: rotor_envelope::Error) -> Error {
        Error::Envelope {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes `state` to `out` in the current format and returns where each
    /// version's record landed (offset, length), in file order. Records
    /// still in the source file are copied one at a time.
    fn encode(&self, state: &State, out: &mut impl Write) -> Result<Vec<(u64, u32)>> {
        let malformed = |e: rotor_envelope::Error| self.corrupt(e.to_string());
        let write = |e| self.io("write")(e);
        let mut sink = Sink::new(out, &state.mac_key[..]);
        let mut w = Writer::with_capacity(512);
        w.bytes(MAGIC)
            .u8(FORMAT)
            .bytes(&state.store_id)
            .short("kek id", state.kek_id.as_bytes())
            .map_err(malformed)?
            .medium("wrapped MAC key", &state.wrapped_mac_key)
            .map_err(malformed)?
            .u64(state.generation)
            .u32(state.max_versions)
            .u32(u32::try_from(state.secrets.len()).map_err(|_| {
                malformed(rotor_envelope::Error::TooLarge {
                    field: "secret count",
                    len: state.secrets.len(),
                    max: u32::MAX as usize,
                })
            })?);
        sink.put(w.as_slice()).map_err(write)?;
        let mut places = Vec::new();
        for (name, secret) in &state.secrets {
            let mut w = Writer::with_capacity(64 + name.len());
            w.medium("secret name", name.as_bytes())
                .map_err(malformed)?
                .u64(secret.next_version)
                .u32(secret.max_versions)
                .u64(secret.removed_through)
                .u32(secret.versions.len() as u32);
            sink.put(w.as_slice()).map_err(write)?;
            for v in &secret.versions {
                let sealed = self.record(state.source.as_deref(), &v.sealed)?;
                let len = u32::try_from(sealed.len()).map_err(|_| {
                    malformed(rotor_envelope::Error::TooLarge {
                        field: "sealed record",
                        len: sealed.len(),
                        max: u32::MAX as usize,
                    })
                })?;
                let mut w = Writer::with_capacity(32);
                w.u64(v.number)
                    .u64(v.created_at_ms)
                    .u8(v.stages.bits())
                    .u32(len);
                sink.put(w.as_slice()).map_err(write)?;
                places.push((sink.written, len));
                sink.put(&sealed).map_err(write)?;
            }
        }
        sink.finish().map_err(write)?;
        Ok(places)
    }

    /// Verifies and decodes one file, streaming it once: the checksum and
    /// the MAC are computed over the very bytes the index is parsed from, so
    /// nothing can change between checking and parsing. Records are not
    /// kept; the index says where they are in `file`, which the state keeps.
    fn decode(&self, file: File, len: u64) -> Result<State> {
        let bad_magic = || self.corrupt("not a Rotor store file (bad magic bytes)");
        if len < MAGIC.len() as u64 {
            return Err(bad_magic());
        }
        let mut src = Source::new(&file, len.saturating_sub(2 * HASH_LEN as u64));
        let mut magic = [0u8; 8];
        src.inner.read_exact(&mut magic).map_err(self.io("read"))?;
        if magic != *MAGIC {
            return Err(bad_magic());
        }
        if len < (MAGIC.len() + 1 + 2 * HASH_LEN) as u64 {
            return Err(self.corrupt(format!("file is truncated ({len} bytes)")));
        }
        src.hash(&magic);
        // Structural problems found while parsing are reported after the
        // checksum and the MAC, which say more: "damaged" or "edited".
        let parsed = self.parse(&mut src);
        if let Err(e @ Error::Io { .. }) = parsed {
            return Err(e);
        }
        let (checksum_ok, mac_ok) = src.finish().map_err(|e| match e {
            Short::Io(e) => self.io("read")(e),
            Short::Truncated(_) => self.corrupt(format!("file is truncated ({len} bytes)")),
        })?;
        if !checksum_ok {
            return Err(
                self.corrupt("checksum mismatch: the file was truncated, damaged or edited")
            );
        }
        if mac_ok == Some(false) {
            return Err(self.corrupt(
                "authentication failed: the contents were changed without the store's key \
                 (edited, reordered, or records pasted from another store)",
            ));
        }
        let mut state = parsed?;
        if mac_ok.is_none() {
            return Err(self.corrupt("the file's MAC key was never read"));
        }
        state.source = Some(Arc::new(file));
        Ok(state)
    }

    fn short(&self, e: Short) -> Error {
        match e {
            Short::Io(e) => self.io("read")(e),
            Short::Truncated(field) => self.corrupt(format!("field `{field}` is truncated")),
        }
    }

    /// Parses the body after the magic bytes, keying the MAC as soon as
    /// its key is read.
    fn parse(&self, src: &mut Source<'_>) -> Result<State> {
        let short = |e| self.short(e);
        let utf8 = |field: &str, b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| self.corrupt(format!("{field} is not valid UTF-8")))
        };
        let format = src.u8("format version").map_err(short)?;
        if format != 1 && format != FORMAT {
            return Err(self.corrupt(format!(
                "unsupported store format version {format} (this build reads versions 1 and {FORMAT})"
            )));
        }
        let v2 = format >= 2;
        let store_id: [u8; 16] = src.array("store id").map_err(short)?;
        let n = src.u8("kek id").map_err(short)? as usize;
        let kek_id = utf8("kek id", src.vec(n, "kek id").map_err(short)?)?;
        let n = src.u16("wrapped MAC key").map_err(short)? as usize;
        let wrapped_mac_key = src.vec(n, "wrapped MAC key").map_err(short)?;
        let mac_key = self
            .kek
            .unwrap(&kek_id, &wrapped_mac_key)
            .map_err(|e| self.envelope(e))?;
        src.key(mac_key.expose());
        let generation = src.u64("generation").map_err(short)?;
        let max_versions = if v2 {
            src.u32("max versions").map_err(short)?
        } else {
            0
        };
        let count = src.u32("secret count").map_err(short)?;
        let mut secrets = BTreeMap::new();
        let mut last_name: Option<String> = None;
        let mut scratch = Vec::new();
        for _ in 0..count {
            let n = src.u16("secret name").map_err(short)? as usize;
            let name = utf8("secret name", src.vec(n, "secret name").map_err(short)?)?;
            validate_secret_name(&name).map_err(|e| self.corrupt(e.to_string()))?;
            if last_name.as_ref().is_some_and(|last| *last >= name) {
                return Err(self.corrupt(format!("secret {name:?} is out of order")));
            }
            let next_version = src.u64("next version").map_err(short)?;
            let (secret_max, removed_through) = if v2 {
                (
                    src.u32("max versions").map_err(short)?,
                    src.u64("removed through").map_err(short)?,
                )
            } else {
                (0, 0)
            };
            let n = src.u32("version count").map_err(short)?;
            let mut versions: Vec<Version> = Vec::with_capacity(n.min(1024) as usize);
            let mut seen = Stages::NONE;
            for _ in 0..n {
                let number = src.u64("version number").map_err(short)?;
                let created_at_ms = src.u64("created-at").map_err(short)?;
                let bits = src.u8("stages").map_err(short)?;
                let stages = Stages::from_bits(bits).ok_or_else(|| {
                    self.corrupt(format!("secret {name:?}: bad stage bits {bits}"))
                })?;
                let len = src.u32("sealed record").map_err(short)?;
                let offset = src.pos;
                src.fill_vec(&mut scratch, len as usize, "sealed record")
                    .map_err(short)?;
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
                    size: rotor_envelope::plaintext_len(&scratch).unwrap_or(0),
                    sealed: Sealed::InFile { offset, len },
                });
            }
            last_name = Some(name.clone());
            secrets.insert(
                name,
                Secret {
                    next_version,
                    max_versions: secret_max,
                    removed_through,
                    versions,
                },
            );
        }
        if src.pos != src.body_end {
            return Err(self.corrupt(format!(
                "{} unexpected bytes after the last secret",
                src.body_end - src.pos
            )));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        if mac_key.expose().len() != raw.len() {
            return Err(self.corrupt("the file's MAC key has the wrong length"));
        }
        raw.copy_from_slice(mac_key.expose());
        Ok(State {
            store_id,
            kek_id,
            wrapped_mac_key,
            mac_key: Arc::new(raw),
            generation,
            max_versions,
            secrets,
            source: None,
        })
    }
}

/// Why a read of the body stopped.
enum Short {
    /// The field would run into the trailer or past the end.
    Truncated(&'static str),
    Io(std::io::Error),
}

/// The store file read front to back through one buffer, every byte of the
/// body fed to the checksum and (once its key is known) the MAC.
struct Source<'f> {
    inner: BufReader<&'f File>,
    /// Bytes consumed so far.
    pos: u64,
    /// Where the body ends and the MAC and checksum begin.
    body_end: u64,
    sum: digest::Context,
    mac: Option<hmac::Context>,
    /// Body bytes read before the MAC key was known.
    unkeyed: Vec<u8>,
}

impl<'f> Source<'f> {
    fn new(file: &'f File, body_end: u64) -> Self {
        Self {
            inner: BufReader::with_capacity(IO_BUFFER, file),
            pos: 0,
            body_end,
            sum: digest::Context::new(&digest::SHA256),
            mac: None,
            unkeyed: Vec::new(),
        }
    }

    fn hash(&mut self, bytes: &[u8]) {
        self.pos += bytes.len() as u64;
        self.sum.update(bytes);
        match &mut self.mac {
            Some(mac) => mac.update(bytes),
            None => self.unkeyed.extend_from_slice(bytes),
        }
    }

    fn key(&mut self, key: &[u8]) {
        let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
        mac.update(&std::mem::take(&mut self.unkeyed));
        self.mac = Some(mac);
    }

    fn fill(&mut self, buf: &mut [u8], field: &'static str) -> Result<(), Short> {
        if self.pos + buf.len() as u64 > self.body_end {
            return Err(Short::Truncated(field));
        }
        read_exact(&mut self.inner, buf, field)?;
        self.hash(buf);
        Ok(())
    }

    fn fill_vec(&mut self, buf: &mut Vec<u8>, n: usize, field: &'static str) -> Result<(), Short> {
        if self.pos + n as u64 > self.body_end {
            return Err(Short::Truncated(field));
        }
        buf.clear();
        buf.resize(n, 0);
        self.fill(buf, field)
    }

    fn vec(&mut self, n: usize, field: &'static str) -> Result<Vec<u8>, Short> {
        let mut buf = Vec::new();
        self.fill_vec(&mut buf, n, field)?;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Short> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, field)?;
        Ok(buf)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Short> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, Short> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads what is left of the body and the trailer; says whether the
    /// checksum and (when keyed) the MAC match.
    fn finish(mut self) -> Result<(bool, Option<bool>), Short> {
        let mut buf = vec![0u8; IO_BUFFER];
        while self.pos < self.body_end {
            let n = (self.body_end - self.pos).min(IO_BUFFER as u64) as usize;
            self.fill(&mut buf[..n], "body")?;
        }
        let mut mac = [0u8; HASH_LEN];
        let mut checksum = [0u8; HASH_LEN];
        for (buf, field) in [(&mut mac, "MAC"), (&mut checksum, "checksum")] {
            read_exact(&mut self.inner, buf, field)?;
        }
        self.sum.update(&mac);
        let checksum_ok = equal(self.sum.finish().as_ref(), &checksum);
        let mac_ok = self.mac.map(|m| equal(m.sign().as_ref(), &mac));
        Ok((checksum_ok, mac_ok))
    }
}

/// Compares in time that depends only on the length.
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the file is written: every byte also goes to the MAC and the
/// checksum, which `finish` appends.
struct Sink<'w, W: Write> {
    out: &'w mut W,
    written: u64,
    sum: digest::Context,
    mac: hmac::Context,
}

impl<'w, W: Write> Sink<'w, W> {
    fn new(out: &'w mut W, mac_key: &[u8]) -> Self {
        Self {
            out,
            written: 0,
            sum: digest::Context::new(&digest::SHA256),
            mac: hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, mac_key)),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.sum.update(bytes);
        self.mac.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let mac = self.mac.sign();
        self.out.write_all(mac.as_ref())?;
        self.sum.update(mac.as_ref());
        self.out.write_all(self.sum.finish().as_ref())
    }
}

/// The number of versions a secret keeps.
fn effective_max(secret: u32, store: u32) -> u32 {
    match (secret, store) {
        (0, 0) => DEFAULT_MAX_VERSIONS,
        (0, store) => store,
        (secret, _) => secret,
    }
}

/// Removes, per secret, the oldest versions beyond its limit that carry no
/// stage label. Returns how many went.
fn apply_retention(state: &mut State) -> usize {
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
        size: v.size,
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
    /// How many versions a secret keeps unless it sets its own limit.
    pub max_versions: u32,
    /// The file's size.
    pub bytes: u64,
}

/// The local store behind the shared trait. The version check runs inline
/// while the file is unchanged (one `stat`); everything else, and a check
/// that finds a changed file, runs on tokio's blocking pool: verifying a
/// file reads all of it and calls the KEK (maybe over the network), and
/// writes `fsync`.
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
        if let Some(loaded) = self.fresh() {
            return self
                .find(&loaded.state, name, Selector::Current)
                .map(|v| v.number.into());
        }
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

/// Fills `buf` from `from`; the end of the file is `Short::Truncated`
/// naming the `field` being read.
fn read_exact(from: &mut impl Read, buf: &mut [u8], field: &'static str) -> Result<(), Short> {
    from.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Short::Truncated(field)
        } else {
            Short::Io(e)
        }
    })
}

#[cfg(test)]
mod tests;
