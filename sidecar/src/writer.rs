//! The atomic writer: the kubelet's layout, which apps already know.
//!
//! ```text
//! <target>/
//!   ..2026_11_24_03_55_00.123456789/   the files of one change (0700, or 0750 for group-readable files)
//!     db-password                      mode 0400 by default
//!   ..data -> ..2026_11_24_03_55_00.123456789
//!   db-password -> ..data/db-password  what the app opens
//! ```
//!
//! A change is written into a fresh timestamped directory, then a symlink
//! to it, made under a fresh random name (`..data_tmp.<16 hex>`), is
//! exchanged with `..data` (`renameat2(RENAME_EXCHANGE)`): one call
//! switches every file at once. A reader that opens `<target>/<file>` gets a
//! complete old file or a complete new one; a reader that needs several files
//! as one set opens `..data` once as a directory and opens every file
//! relative to that handle (`openat`): opening `..data/a` and `..data/b` by
//! path follows the link twice, and a swap in between tears the set.
//! Superseded directories are kept for a grace period, so a reader in the
//! middle of a path lookup, or holding a `..data` handle, never finds its
//! file gone.
//!
//! Every operation works relative to the target directory's handle with
//! no-follow semantics, and every name is a validated file name, so no write
//! can leave the target directory.
//!
//! A process of the sidecar's uid (an `exec:` reload child, say) can still
//! write the target directory, so it can replace the temporary link between
//! its creation and the swap, or `..data` itself. The random name means it
//! cannot prepare the link in advance; what it can still do is race the
//! swap, so every swap is checked: `..data` must then name the directory
//! just written. When it does not, the exchange is undone (the previous
//! link, which the exchange moved to the temporary name, goes back) and the
//! swap is tried again; `..data` found changed behind the writer's back at
//! the start of a write is pointed back first. Each such fix is counted
//! ([`AtomicWriter::repairs`]). A write returns `Ok` only after a checked
//! swap, so readiness stays false from a failed write until a checked one. A symlinked target root is refused, and
//! so is a target that is not tmpfs or ramfs unless disk is allowed.

mod entries;
mod inventory;
mod leftovers;
mod names;
mod swap;
mod target;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use zeroize::Zeroizing;

use crate::{Error, Result};
pub use inventory::digest_of_served;
use inventory::{Inventory, diff, digest_of_files, inventory_of, read_file};
use names::DATA;
use target::{RAMFS_MAGIC, TMPFS_MAGIC, check_owner, group_bits, read_umask};

/// One file to write. No `Debug`: it holds a secret.
pub struct FileSpec {
    pub name: String,
    pub data: Zeroizing<Vec<u8>>,
    pub mode: u32,
}

/// What a write did: whether the app must be told is decided from this
/// alone. Names only, never contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Files added, or whose content or mode changed.
    pub changed: Vec<String>,
    /// Files no longer written.
    pub removed: Vec<String>,
    /// A new data directory was swapped in under `..data`. False when
    /// every file already had this content and mode: nothing was touched.
    pub swapped: bool,
}

/// Options for [`AtomicWriter::open`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Accept a target that is not tmpfs or ramfs.
    pub allow_disk: bool,
    /// The owner of the files. `None`: the sidecar's own user and group.
    pub owner: Option<(u32, u32)>,
    /// How long a superseded directory stays for readers mid-lookup.
    pub grace: Duration,
    /// The files' mode when the pod sets none: group or other read bits
    /// open the target directory to group members or to everyone.
    pub default_mode: u32,
}

/// How long a superseded data directory stays for readers mid-lookup
/// unless `--keep-old` says otherwise.
pub const KEEP_OLD: Duration = Duration::from_secs(2);

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            allow_disk: false,
            owner: None,
            grace: KEEP_OLD,
            default_mode: rotor_contract::annotations::DEFAULT_FILE_MODE,
        }
    }
}

/// What a test runs between the writer's `symlinkat` and its swap of
/// `..data`: the target and the temporary link's name.
#[cfg(test)]
pub(crate) type SwapRace = Box<dyn Fn(&Path, &str) + Send + Sync>;

pub struct AtomicWriter {
    path: PathBuf,
    dir: OwnedFd,
    options: WriterOptions,
    /// Superseded directories and when they were superseded.
    retired: Vec<(String, Instant)>,
    /// The data directory served and what it holds, so that a write is
    /// compared with digests, not files read back. Taken from the writer's
    /// own writes; a directory an earlier run left served is read once.
    known: Option<(String, Inventory)>,
    /// The data directory `..data` should point to: the one this writer
    /// swapped in last, or found served. A `..data` changed behind the
    /// writer's back is pointed back to it.
    served: Option<String>,
    /// Runs between creating the temporary link and swapping it with
    /// `..data`: where a test replaces it as a racing process would.
    #[cfg(test)]
    pub(crate) before_swap: Option<SwapRace>,
    /// The process umask, read once: files need an explicit chmod only
    /// when it would strip bits of their mode.
    umask: u32,
    /// Links found not pointing where the writer left them, and pointed
    /// back (see the module docs).
    repairs: Arc<AtomicU64>,
}

impl AtomicWriter {
    /// Opens the target directory, refusing a symlink, a non-directory, a
    /// disk (unless allowed) and an owner the process cannot honour.
    pub fn open(path: &Path, options: WriterOptions) -> Result<Self> {
        let fail = |problem: String| Error::Target {
            path: path.to_owned(),
            problem,
        };
        let meta = std::fs::symlink_metadata(path).map_err(|e| {
            fail(format!(
                "cannot be inspected ({e}); expected an existing directory"
            ))
        })?;
        if meta.file_type().is_symlink() {
            return Err(fail(
                "is a symlink; refusing to write through it (expected a real directory)".into(),
            ));
        }
        if !meta.is_dir() {
            return Err(fail("is not a directory".into()));
        }
        let dir = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("cannot be opened ({e})")))?;
        let fs = rustix::fs::fstatfs(&dir).map_err(|e| fail(format!("statfs failed ({e})")))?;
        #[allow(clippy::unnecessary_cast)]
        let fs_type = fs.f_type as u64;
        if !options.allow_disk && fs_type != TMPFS_MAGIC && fs_type != RAMFS_MAGIC {
            return Err(fail(format!(
                "is not on tmpfs or ramfs (filesystem type {fs_type:#x}); secrets must stay in memory. \
                 Mount an emptyDir with medium: Memory there, or pass --allow-disk to accept a disk"
            )));
        }
        if let Some((uid, gid)) = options.owner {
            check_owner(uid, gid).map_err(fail)?;
        }
        let mut writer = Self {
            path: path.to_owned(),
            dir,
            options,
            retired: Vec::new(),
            known: None,
            served: None,
            #[cfg(test)]
            before_swap: None,
            umask: read_umask(),
            repairs: Arc::default(),
        };
        writer.served = writer.current_dir_name().ok().flatten();
        // Best effort: keep other users out of the target itself.
        let _ = rustix::fs::fchmod(
            &writer.dir,
            Mode::from_raw_mode(0o700 | group_bits(&writer.options)),
        );
        writer.remove_leftovers()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times a link (`..data` or a file's) was found pointing
    /// elsewhere than where the writer left it or just swapped it to, and
    /// was pointed back and checked. Counted after the check, so a change
    /// seen before a read of this count is followed by a higher count.
    pub fn repairs(&self) -> Arc<AtomicU64> {
        self.repairs.clone()
    }

    /// A digest of the files served, as this writer wrote or found them:
    /// SHA-256 over each file's name and the digest of its mode and
    /// content, in name order, written `sha256:<hex>`. `None` before the
    /// writer wrote or read a served directory.
    pub fn digest(&self) -> Option<String> {
        let (_, inventory) = self.known.as_ref()?;
        Some(digest_of_files(inventory))
    }

    /// Writes `files` as one change, unless every file already holds this
    /// content and mode. Files not in `files` disappear. The report says
    /// which files changed and whether `..data` was swapped.
    pub fn write(&mut self, files: &[FileSpec]) -> Result<Report> {
        for f in files {
            rotor_contract::names::validate_file_name(&f.name)
                .map_err(|e| self.fail(e.to_string()))?;
        }
        let old = self.served_dir()?;
        let wanted = inventory_of(files);
        let (changed, removed) = match &old {
            Some(old) => {
                if self.known.as_ref().is_none_or(|(dir, _)| dir != old) {
                    let inventory = self.take_inventory(old)?;
                    self.known = Some((old.clone(), inventory));
                }
                let (_, served) = self
                    .known
                    .as_ref()
                    .expect("inventory of the served directory");
                let (changed, removed) = diff(served, &wanted);
                if changed.is_empty() && removed.is_empty() {
                    self.known = Some((old.clone(), wanted));
                    return Ok(Report::default());
                }
                (changed, removed)
            }
            None => (wanted.keys().cloned().collect(), Vec::new()),
        };
        let ts = self.make_dir(files)?;
        if let Err(e) = self.point_data_at(&ts) {
            let _ = self.remove_dir(&ts);
            return Err(e);
        }
        self.served = Some(ts.clone());
        // User-visible names.
        for f in files {
            self.link_visible(&f.name)?;
        }
        self.known = Some((ts, wanted));
        if let Some(old) = old {
            let kept: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            for name in self.list_dir(&old)? {
                if !kept.contains(&name.as_str()) {
                    self.unlink_visible(&name)?;
                }
            }
            self.retired.push((old, Instant::now()));
        }
        if let Err(e) = self.gc() {
            // The new files are served; only cleaning up failed.
            tracing::warn!(error = %e, "removing old data directories failed");
        }
        Ok(Report {
            changed,
            removed,
            swapped: true,
        })
    }

    /// Removes superseded directories older than the grace period.
    pub fn gc(&mut self) -> Result<()> {
        let grace = self.options.grace;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, at)| at.elapsed() >= grace);
        self.retired = kept;
        for (name, _) in expired {
            self.remove_dir(&name)?;
        }
        Ok(())
    }

    /// Removes every file, link and directory the writer made.
    pub fn wipe(&mut self) -> Result<()> {
        if let Some(current) = self.current_dir_name()? {
            for name in self.list_dir(&current)? {
                self.unlink_visible(&name)?;
            }
        }
        self.unlink_if_present(DATA)?;
        self.retired.clear();
        self.known = None;
        self.served = None;
        self.remove_leftovers()
    }

    /// The files now served and their contents, read through `..data`.
    pub fn read_current(&self) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>> {
        let mut out = BTreeMap::new();
        if let Some(dir) = self.current_dir_name()? {
            let fd = self.open_subdir(&dir)?;
            for name in self.list_dir(&dir)? {
                let (data, _) = read_file(&fd, &name).map_err(self.io("read a served file"))?;
                out.insert(name, data);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
