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
//! # File format
//!
//! Described in [`format`](mod@format).
//!
//! # Layout
//!
//! - `api`: the blocking public API (read, write, promote, retire, rewrap).
//! - `state`: the decoded index and retention.
//! - `cache`: the shared, verified generation and when it is re-read.
//! - `mutate`: the writer lock and the atomic replace.
//! - `format`: the file format, its encoder and its streaming parser.
//! - `adapter`: the async [`Store`](crate::Store) trait over the blocking API.

mod adapter;
mod api;
mod cache;
pub mod format;
mod mutate;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rotor_envelope::Kek;

use crate::Error;

pub use api::StoreInfo;
use cache::Cache;

/// How many versions of a secret the store keeps when neither the store nor
/// the secret sets `max-versions` (as Vault KV v2).
pub const DEFAULT_MAX_VERSIONS: u32 = 10;

/// The embedded local store. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct LocalStore(Arc<Inner>);

/// What the clones of one handle share.
struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
    kek: Arc<dyn Kek>,
    cache: Mutex<Cache>,
    /// Held while a changed file is verified and decoded, so that threads
    /// sharing this handle decode one generation once, one at a time.
    decoding: Mutex<()>,
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
        Self(Arc::new(Inner {
            lock_path: with_suffix(".lock"),
            tmp_path: with_suffix(".tmp"),
            path,
            kek,
            cache: Mutex::default(),
            decoding: Mutex::default(),
        }))
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub(super) fn label(&self) -> String {
        self.0.path.display().to_string()
    }

    pub(super) fn io(&self, operation: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.0.path.clone(),
            operation,
            source,
        }
    }

    pub(super) fn corrupt(&self, problem: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.0.path.clone(),
            problem: problem.into(),
        }
    }

    pub(super) fn envelope(&self, source: rotor_envelope::Error) -> Error {
        Error::Envelope {
            path: self.0.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
