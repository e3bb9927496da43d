//! Writes: the exclusive `flock` on `<store>.lock`, the change applied to a
//! fresh copy of the state, retention, and the atomic replace (`.tmp`,
//! `fsync`, `rename`, `fsync` of the directory).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use rotor_envelope::DataKey;
use zeroize::Zeroizing;

use super::LocalStore;
use super::cache::{Loaded, Stamp};
use super::format::IO_BUFFER;
use super::state::{Sealed, State, apply_retention};
use crate::{Error, Result};

/// Whether a write may create the store file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    IfMissing,
    Never,
}

impl LocalStore {
    /// replaces the file. Returns what `change` returned and the number of
    /// versions retention removed. Only a put or a store-wide retention
    /// setting creates a missing store: a promote, retire or rewrap on a
    /// path that holds no store is refused before anything (not even the
    /// lock file) is written.
    pub(super) fn mutate<T>(
        &self,
        create: Create,
        change: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<(T, usize)> {
        let missing = || Error::Missing {
            path: self.0.path.clone(),
        };
        if create == Create::Never && !self.0.path.exists() {
            return Err(missing());
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.0.lock_path)
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
            tracing::debug!(path = %self.0.path.display(), removed, "retention removed old versions");
        }
        state.generation += 1;
        let tmp = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&self.0.tmp_path)
            .map_err(self.io("create its temporary file"))?;
        let places = {
            let mut out = BufWriter::with_capacity(IO_BUFFER, &tmp);
            let places = self.encode(&state, &mut out)?;
            out.flush().map_err(self.io("write"))?;
            places
        };
        tmp.sync_all().map_err(self.io("sync"))?;
        let stamp = Stamp::of(&tmp.metadata().map_err(self.io("stat"))?);
        std::fs::rename(&self.0.tmp_path, &self.0.path).map_err(self.io("rename into place"))?;
        let dir = self
            .0
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
        let mut cache = self.0.cache.lock().expect("cache lock");
        cache.seen = state.generation;
        cache.loaded = Some(Arc::new(Loaded { stamp, state }));
        drop(cache);
        drop(lock);
        Ok((out, removed))
    }

    pub(super) fn new_state(&self) -> Result<State> {
        let rng = SystemRandom::new();
        let mut store_id = [0u8; 16];
        rng.fill(&mut store_id)
            .map_err(|_| self.envelope(rotor_envelope::Error::Random))?;
        let mut mac_key = Zeroizing::new([0u8; 32]);
        rng.fill(&mut mac_key[..])
            .map_err(|_| self.envelope(rotor_envelope::Error::Random))?;
        let wrapped_mac_key = self
            .0
            .kek
            .wrap(&DataKey::from_bytes(*mac_key))
            .map_err(|e| self.envelope(e))?;
        tracing::info!(path = %self.0.path.display(), "creating local store");
        // A store made again by a handle that saw an older one goes on
        // from that one's generation, so that it is not refused as a replay.
        let generation = self.0.cache.lock().expect("cache lock").seen;
        Ok(State {
            store_id,
            kek_id: self.0.kek.key_id().to_owned(),
            wrapped_mac_key,
            mac_key: Arc::new(mac_key),
            generation,
            max_versions: 0,
            secrets: BTreeMap::new(),
            source: None,
        })
    }
}
