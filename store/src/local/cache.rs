//! The verified generation a handle and its clones share: kept while the
//! path still names the same file (one `stat`), re-read and verified once
//! when it changes, refused when it is older than one seen before.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::LocalStore;
use super::state::State;
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct Cache {
    pub(super) loaded: Option<Arc<Loaded>>,
    /// The highest generation read or written through this handle: a file
    /// with a lower one is an older copy put in place.
    pub(super) seen: u64,
}

pub(super) struct Loaded {
    pub(super) stamp: Stamp,
    pub(super) state: State,
}

/// The identity of one file as written: a rename makes a new one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) mtime: i64,
    pub(super) mtime_nsec: i64,
}

impl Stamp {
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

impl LocalStore {
    /// The cached generation while the path still names its file: one
    /// `stat`, no thread hop, no key. `None` when the file changed (or the
    pub(super) fn fresh(&self) -> Option<Arc<Loaded>> {
        let stamp = Stamp::of(&std::fs::metadata(&self.0.path).ok()?);
        let cache = self.0.cache.lock().expect("cache lock");
        cache
            .loaded
            .as_ref()
            .filter(|loaded| loaded.stamp == stamp)
            .cloned()
    }

    /// The decoded file, re-read only when it changed on disk. A file whose
    /// generation is lower than one seen before is refused.
    pub(super) fn snapshot(&self) -> Result<Arc<Loaded>> {
        if let Some(loaded) = self.fresh() {
            return Ok(loaded);
        }
        let _decoding = self.0.decoding.lock().expect("decoding lock");
        // A thread that opened the file just before a writer replaced it
        // decodes an older generation than a thread that opened it just
        // after: no replay, as the path names another file by then. Such a
        // read starts again, a few times at most.
        const ATTEMPTS: u32 = 8;
        let mut attempt = 1;
        loop {
            let file = File::open(&self.0.path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::Missing {
                        path: self.0.path.clone(),
                    }
                } else {
                    self.io("open")(e)
                }
            })?;
            let stamp = Stamp::of(&file.metadata().map_err(self.io("stat"))?);
            if let Some(loaded) = &self.0.cache.lock().expect("cache lock").loaded
                && loaded.stamp == stamp
            {
                return Ok(loaded.clone());
            }
            let state = self.decode(file, stamp.len)?;
            let mut cache = self.0.cache.lock().expect("cache lock");
            if state.generation < cache.seen {
                let replaced =
                    std::fs::metadata(&self.0.path).map(|m| Stamp::of(&m)).ok() != Some(stamp);
                if replaced && attempt < ATTEMPTS {
                    attempt += 1;
                    continue;
                }
                return Err(Error::Replayed {
                    path: self.0.path.clone(),
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
}
