//! The checked swap of a link (`..data` or a file's): a symlink under a
//! fresh random name exchanged in with `renameat2(RENAME_EXCHANGE)`, then
//! checked, undone and retried when another process raced it; each fix
//! counted as a repair (see the parent module's docs).

use std::sync::atomic::Ordering;

use ring::rand::SecureRandom;
use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

use super::names::{DATA, DATA_TMP, LINK_TMP, is_data_dir_name};
use super::{AtomicWriter, Result};

/// How many times a swap is tried when the link does not end up pointing
/// where it was just swapped to.
pub(super) const SWAP_ATTEMPTS: u32 = 3;

impl AtomicWriter {
    /// The data directory now served: where `..data` points, or, when
    /// something else changed `..data` to point elsewhere, the directory it
    /// should point to, which it then points to again.
    pub(super) fn served_dir(&mut self) -> Result<Option<String>> {
        let target = match rustix::fs::readlinkat(&self.dir, DATA, Vec::new()) {
            Ok(target) => target.to_string_lossy().into_owned(),
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::INVAL) => return Err(self.fail("..data is not a symlink; refusing".into())),
            Err(e) => return Err(self.io("read ..data")(e)),
        };
        if self.served.as_deref() == Some(target.as_str())
            || (self.served.is_none() && is_data_dir_name(&target))
        {
            self.served = Some(target.clone());
            return Ok(Some(target));
        }
        let Some(served) = self
            .served
            .clone()
            .filter(|dir| self.open_subdir(dir).is_ok())
        else {
            return Err(self.fail(format!(
                "..data points to {target:?}, which is not a directory this writer makes; refusing"
            )));
        };
        tracing::warn!(
            path = %self.path.display(),
            found = target,
            expected = served,
            "..data was changed behind the writer's back; pointing it back"
        );
        self.swap_link(DATA, &served, None)?;
        self.repaired();
        Ok(Some(served))
    }

    /// Points `..data` at the data directory `dir` (see [`Self::swap_link`]).
    pub(super) fn point_data_at(&self, dir: &str) -> Result<()> {
        self.swap_link(DATA, dir, self.served.as_deref())
    }

    /// Points the link `name` at `target`: a symlink made under a fresh
    /// random name (`symlinkat` refuses a name that exists, so nothing
    /// planted is reused), exchanged with `name` (`renameat2` with
    /// `RENAME_EXCHANGE`; `RENAME_NOREPLACE` when `name` does not exist
    /// yet), then checked: `name` must point at `target`. When it does not,
    /// another process replaced the link before the swap; the exchange is
    /// undone, which puts back what `name` held (`previous`, when the
    /// caller knows it), and the swap is tried again, [`SWAP_ATTEMPTS`]
    /// times in all. The temporary name, which holds the entry swapped out,
    /// is removed.
    ///
    /// Repairs are counted once checked: an undone swap once `name` points
    /// at `previous` again; a swap that succeeds after a lost one, or that
    /// swapped out something other than `previous`.
    pub(super) fn swap_link(&self, name: &str, target: &str, previous: Option<&str>) -> Result<()> {
        let prefix = if name == DATA {
            DATA_TMP.to_owned()
        } else {
            format!("{LINK_TMP}{name}")
        };
        // A lost swap whose fix is not counted yet.
        let mut uncounted = false;
        for attempt in 1..=SWAP_ATTEMPTS {
            let tmp = self.fresh_link(&prefix, target)?;
            #[cfg(test)]
            if name == DATA
                && let Some(race) = &self.before_swap
            {
                race(&self.path, &tmp);
            }
            let exchanged = match self.install(&tmp, name) {
                Ok(Some(exchanged)) => exchanged,
                Ok(None) => {
                    // The temporary link went, or `name` appeared: raced.
                    uncounted = true;
                    let _ = self.unlink_if_present(&tmp);
                    tracing::warn!(path = %self.path.display(), link = name, attempt,
                        "the temporary link changed before the swap; swapping again");
                    continue;
                }
                Err(e) => {
                    let _ = self.unlink_if_present(&tmp);
                    return Err(e);
                }
            };
            if self.link_is(name, target) {
                let foreign =
                    exchanged && previous.is_some_and(|previous| !self.link_is(&tmp, previous));
                if exchanged {
                    self.drop_swapped_out(&tmp);
                }
                if uncounted || foreign {
                    self.repaired();
                }
                return Ok(());
            }
            uncounted = true;
            tracing::warn!(
                path = %self.path.display(),
                link = name,
                attempt,
                expected = target,
                "the link does not point where it was just swapped to; undoing the swap and swapping again"
            );
            if exchanged {
                // Put back what `name` held; the temporary name gets the
                // foreign link, which goes.
                let _ = rustix::fs::renameat_with(
                    &self.dir,
                    &tmp,
                    &self.dir,
                    name,
                    RenameFlags::EXCHANGE,
                );
                self.drop_swapped_out(&tmp);
                if previous.is_some_and(|previous| self.link_is(name, previous)) {
                    uncounted = false;
                    self.repaired();
                }
            }
        }
        Err(self.fail(format!(
            "{name} does not point to {target:?} after {SWAP_ATTEMPTS} swaps: another process \
             changes the links in this directory; the writer must be the only one writing here"
        )))
    }

    pub(super) fn repaired(&self) {
        self.repairs.fetch_add(1, Ordering::SeqCst);
    }

    /// A symlink to `target` under `<prefix>.<16 random hex digits>`, a
    /// name no other process can know in advance.
    pub(super) fn fresh_link(&self, prefix: &str, target: &str) -> Result<String> {
        let random = ring::rand::SystemRandom::new();
        for _ in 0..SWAP_ATTEMPTS {
            let mut bytes = [0u8; 8];
            random
                .fill(&mut bytes)
                .map_err(|_| self.fail("the system's random source failed".into()))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = format!("{prefix}.{hex}");
            match rustix::fs::symlinkat(target, &self.dir, tmp.as_str()) {
                Ok(()) => return Ok(tmp),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.io("create a temporary link")(e)),
            }
        }
        Err(self.fail(format!(
            "cannot create a temporary link {prefix}.*: every random name drawn exists"
        )))
    }

    /// Swaps `tmp` in as `name`: `Some(true)` when exchanged (`tmp` now
    /// holds what `name` held), `Some(false)` when `name` did not exist,
    /// `None` when another process removed `tmp` or created `name` in
    /// between. A filesystem without `renameat2` flags gets a plain rename.
    pub(super) fn install(&self, tmp: &str, name: &str) -> Result<Option<bool>> {
        let dir = &self.dir;
        let swap_failed = |e: Errno| {
            self.fail(format!(
                "cannot swap {name} ({e}); is {name} something other than a symlink?"
            ))
        };
        match rustix::fs::renameat_with(dir, tmp, dir, name, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(Some(true)),
            Err(Errno::NOENT) => {
                match rustix::fs::renameat_with(dir, tmp, dir, name, RenameFlags::NOREPLACE) {
                    Ok(()) => Ok(Some(false)),
                    Err(Errno::NOENT | Errno::EXIST) => Ok(None),
                    Err(e) => Err(swap_failed(e)),
                }
            }
            Err(Errno::INVAL | Errno::NOSYS) => rustix::fs::renameat(dir, tmp, dir, name)
                .map(|()| Some(false))
                .map_err(swap_failed),
            Err(e) => Err(swap_failed(e)),
        }
    }

    /// Whether the link `name` points at `target`.
    pub(super) fn link_is(&self, name: &str, target: &str) -> bool {
        rustix::fs::readlinkat(&self.dir, name, Vec::new())
            .is_ok_and(|t| t.to_bytes() == target.as_bytes())
    }

    /// Removes the temporary name after an exchange: it holds the entry
    /// swapped out. Anything but a directory goes; a directory (planted
    /// in a race) is left and named in the log.
    pub(super) fn drop_swapped_out(&self, tmp: &str) {
        if let Err(e) = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty())
            && e != Errno::NOENT
        {
            tracing::warn!(path = %self.path.display(), entry = tmp, error = %e,
                "cannot remove the entry swapped out");
        }
    }
}
