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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ring::rand::SecureRandom;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use zeroize::Zeroizing;

use crate::{Error, Result};

const DATA: &str = "..data";
/// The prefix of the temporary link swapped in as `..data`; a random
/// suffix follows.
const DATA_TMP: &str = "..data_tmp";
/// The prefix of a file link's temporary name (`..tmp.<file>.<hex>`).
const LINK_TMP: &str = "..tmp.";
/// How many times a swap is tried when the link does not end up pointing
/// where it was just swapped to.
const SWAP_ATTEMPTS: u32 = 3;
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

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

/// A digest of one file's mode and content.
type Digest = [u8; 32];

/// What a data directory holds: each file's digest, by name.
type Inventory = BTreeMap<String, Digest>;

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

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            allow_disk: false,
            owner: None,
            grace: Duration::ZERO,
            default_mode: rotor_crds::annotations::DEFAULT_FILE_MODE,
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
            rotor_crds::names::validate_file_name(&f.name).map_err(|e| self.fail(e.to_string()))?;
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

    /// The data directory now served: where `..data` points, or, when
    /// something else changed `..data` to point elsewhere, the directory it
    /// should point to, which it then points to again.
    fn served_dir(&mut self) -> Result<Option<String>> {
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
    fn point_data_at(&self, dir: &str) -> Result<()> {
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
    fn swap_link(&self, name: &str, target: &str, previous: Option<&str>) -> Result<()> {
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

    fn repaired(&self) {
        self.repairs.fetch_add(1, Ordering::SeqCst);
    }

    /// A symlink to `target` under `<prefix>.<16 random hex digits>`, a
    /// name no other process can know in advance.
    fn fresh_link(&self, prefix: &str, target: &str) -> Result<String> {
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
    fn install(&self, tmp: &str, name: &str) -> Result<Option<bool>> {
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
    fn link_is(&self, name: &str, target: &str) -> bool {
        rustix::fs::readlinkat(&self.dir, name, Vec::new())
            .is_ok_and(|t| t.to_bytes() == target.as_bytes())
    }

    /// Removes the temporary name after an exchange: it holds the entry
    /// swapped out. Anything but a directory goes; a directory (planted
    /// in a race) is left and named in the log.
    fn drop_swapped_out(&self, tmp: &str) {
        if let Err(e) = rustix::fs::unlinkat(&self.dir, tmp, AtFlags::empty())
            && e != Errno::NOENT
        {
            tracing::warn!(path = %self.path.display(), entry = tmp, error = %e,
                "cannot remove the entry swapped out");
        }
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

    fn fail(&self, problem: String) -> Error {
        Error::Target {
            path: self.path.clone(),
            problem,
        }
    }

    fn io(&self, what: &'static str) -> impl Fn(Errno) -> Error + '_ {
        move |e| self.fail(format!("cannot {what} ({e})"))
    }

    /// The directory `..data` points to, if it is one of ours.
    fn current_dir_name(&self) -> Result<Option<String>> {
        match rustix::fs::readlinkat(&self.dir, DATA, Vec::new()) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                if !is_data_dir_name(&target) {
                    return Err(self.fail(format!(
                        "..data points to {target:?}, which is not a directory this writer makes; refusing"
                    )));
                }
                Ok(Some(target))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::INVAL) => Err(self.fail("..data is not a symlink; refusing".into())),
            Err(e) => Err(self.io("read ..data")(e)),
        }
    }

    fn open_subdir(&self, name: &str) -> Result<OwnedFd> {
        rustix::fs::openat(
            &self.dir,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.io("open a data directory"))
    }

    fn list_dir(&self, name: &str) -> Result<Vec<String>> {
        let fd = self.open_subdir(name)?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(self.io("list a data directory"))? {
            let entry = entry.map_err(self.io("list a data directory"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// What `dir` holds, read from disk: only for a data directory this
    /// writer did not write (one an earlier run left served).
    fn take_inventory(&self, dir: &str) -> Result<Inventory> {
        let fd = self.open_subdir(dir)?;
        let mut inventory = Inventory::new();
        for name in self.list_dir(dir)? {
            match read_file(&fd, &name) {
                Ok((data, mode)) => {
                    inventory.insert(name, digest_of(mode, &data));
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.io("read a served file")(e)),
            }
        }
        Ok(inventory)
    }

    fn make_dir(&self, files: &[FileSpec]) -> Result<String> {
        let read_bits = files.iter().fold(0, |bits, f| bits | (f.mode & 0o044));
        let dir_mode = 0o700 | traverse_bits(read_bits);
        let (name, fd) = loop {
            let name = data_dir_name(SystemTime::now());
            match rustix::fs::mkdirat(&self.dir, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => break (name.clone(), self.open_subdir(&name)?),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.io("create a data directory")(e)),
            }
        };
        let result = (|| {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(dir_mode))
                .map_err(self.io("chmod a data directory"))?;
            self.chown(&fd)?;
            for f in files {
                let file = rustix::fs::openat(
                    &fd,
                    f.name.as_str(),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(f.mode),
                )
                .map_err(self.io("create a file"))?;
                if f.mode & self.umask != 0 {
                    rustix::fs::fchmod(&file, Mode::from_raw_mode(f.mode))
                        .map_err(self.io("chmod a file"))?;
                }
                self.chown(&file)?;
                File::from(file)
                    .write_all(&f.data)
                    .map_err(|e| self.fail(format!("cannot write a file ({e})")))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = self.remove_dir(&name);
            return Err(e);
        }
        Ok(name)
    }

    fn chown(&self, fd: &impl AsFd) -> Result<()> {
        let Some((uid, gid)) = self.options.owner else {
            return Ok(());
        };
        let euid = rustix::process::geteuid().as_raw();
        let user = (euid != uid).then(|| Uid::from_raw(uid));
        let group = (rustix::process::getegid().as_raw() != gid).then(|| Gid::from_raw(gid));
        if user.is_none() && group.is_none() {
            return Ok(());
        }
        rustix::fs::fchown(fd, user, group).map_err(self.io("set the file owner"))
    }

    /// Makes `<target>/<name>` a symlink to `..data/<name>`, replacing
    /// anything else planted there, with the checked swap of `..data`.
    fn link_visible(&self, name: &str) -> Result<()> {
        let target = format!("{DATA}/{name}");
        match rustix::fs::readlinkat(&self.dir, name, Vec::new()) {
            Ok(existing) if existing.to_bytes() == target.as_bytes() => return Ok(()),
            Err(Errno::NOENT) => {}
            Ok(_) | Err(Errno::INVAL) => {
                let stat = rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(self.io("inspect a file link"))?;
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                    return Err(self.fail(format!(
                        "{name:?} is a directory where the file link belongs; refusing to replace it"
                    )));
                }
                tracing::warn!(path = %self.path.display(), file = name, "replacing an unexpected entry with the file link");
            }
            Err(e) => return Err(self.io("inspect a file link")(e)),
        }
        self.swap_link(name, &target, None)
    }

    /// Removes `<target>/<name>` if it is our link.
    fn unlink_visible(&self, name: &str) -> Result<()> {
        match rustix::fs::readlinkat(&self.dir, name, Vec::new()) {
            Ok(t) if t.to_bytes() == format!("{DATA}/{name}").as_bytes() => {
                self.unlink_if_present(name)
            }
            Ok(_) | Err(Errno::NOENT) | Err(Errno::INVAL) => Ok(()),
            Err(e) => Err(self.io("inspect a file link")(e)),
        }
    }

    fn unlink_if_present(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io("remove a stale link")(e)),
        }
    }

    /// Removes one of our data directories and the files in it.
    fn remove_dir(&self, name: &str) -> Result<()> {
        if !is_data_dir_name(name) {
            return Ok(());
        }
        let files = match self.list_dir(name) {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        let fd = self.open_subdir(name)?;
        for f in files {
            let _ = rustix::fs::unlinkat(&fd, f.as_str(), AtFlags::empty());
        }
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io("remove an old data directory")(e)),
        }
    }

    /// Removes what an earlier run could have left: the `..data_tmp` and
    /// `..tmp.<file>` symlinks of an interrupted swap, and data directories
    /// other than the served one (superseded, or from an interrupted
    /// write), which hold only regular files. Anything else under those
    /// names was not made by the writer: it is refused, by name, before
    /// anything is removed. When `..data` is not one of the writer's links,
    /// which data directory is served is unknown, so all are kept.
    fn remove_leftovers(&self) -> Result<()> {
        let served = match self.current_dir_name() {
            Ok(Some(dir)) => Some(dir),
            Ok(None) => None,
            Err(_) => return self.remove_tmp_links(),
        };
        let mut links = Vec::new();
        let mut dirs = Vec::new();
        for name in self.list_target()? {
            if is_tmp_name(&name) {
                self.expect_kind(&self.dir, &name, &name, FileType::Symlink)?;
                links.push(name);
            } else if is_data_dir_name(&name) && Some(&name) != served.as_ref() {
                self.expect_kind(&self.dir, &name, &name, FileType::Directory)?;
                let fd = self.open_subdir(&name)?;
                let files = self.list_dir(&name)?;
                for file in &files {
                    self.expect_kind(&fd, file, &format!("{name}/{file}"), FileType::RegularFile)?;
                }
                dirs.push((fd, name, files));
            }
        }
        for name in links {
            self.unlink_if_present(&name)?;
        }
        for (fd, name, files) in dirs {
            for file in files {
                match rustix::fs::unlinkat(&fd, file.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(self.io("remove an old data file")(e)),
                }
            }
            match rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(self.io("remove an old data directory")(e)),
            }
        }
        Ok(())
    }

    /// The symlinks of an interrupted swap only (see [`Self::remove_leftovers`]).
    fn remove_tmp_links(&self) -> Result<()> {
        let names: Vec<String> = self
            .list_target()?
            .into_iter()
            .filter(|n| is_tmp_name(n))
            .collect();
        for name in &names {
            self.expect_kind(&self.dir, name, name, FileType::Symlink)?;
        }
        for name in &names {
            self.unlink_if_present(name)?;
        }
        Ok(())
    }

    fn list_target(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.dir).map_err(self.io("list the target"))? {
            let entry = entry.map_err(self.io("list the target"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Refuses `name` (in `dir`; `shown` relative to the target) unless it
    /// is of the kind the writer leaves under that name.
    fn expect_kind(
        &self,
        dir: &impl AsFd,
        name: &str,
        shown: &str,
        expected: FileType,
    ) -> Result<()> {
        let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.io("inspect a leftover entry"))?;
        let found = FileType::from_raw_mode(stat.st_mode);
        if found == expected {
            return Ok(());
        }
        let expected = match expected {
            FileType::Symlink => "only a symlink (from an interrupted swap)",
            FileType::Directory => "only a data directory",
            _ => "only regular files (a data directory holds nothing else)",
        };
        Err(self.fail(format!(
            "{} is {}, where rotor-sidecar leaves {expected}; it was not made by rotor-sidecar, \
             so nothing was removed: remove it, or give --out-dir an empty directory",
            self.path.join(shown).display(),
            kind_name(found),
        )))
    }
}

fn is_tmp_name(name: &str) -> bool {
    name.starts_with(DATA_TMP) || name.starts_with(LINK_TMP)
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::RegularFile => "a regular file",
        FileType::Symlink => "a symlink",
        _ => "a special file",
    }
}

fn group_bits(options: &WriterOptions) -> u32 {
    // Group members (or everyone) need to traverse the directory to read
    // 0440 (or 0444) files.
    let group = if options.owner.is_some() || options.default_mode & 0o040 != 0 {
        0o050
    } else {
        0
    };
    group | traverse_bits(options.default_mode & 0o004)
}

/// `r-x` for the classes (group 0o040, other 0o004) that may read files.
fn traverse_bits(read_bits: u32) -> u32 {
    (read_bits & 0o044) | ((read_bits & 0o044) >> 2)
}

/// Reads a file inside a data directory without following a symlink.
fn read_file(dir: &OwnedFd, name: &str) -> rustix::io::Result<(Zeroizing<Vec<u8>>, u32)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mode = rustix::fs::fstat(&fd)?.st_mode & 0o7777;
    let mut data = Zeroizing::new(Vec::new());
    File::from(fd).read_to_end(&mut data).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Errno::NOENT
        } else {
            Errno::IO
        }
    })?;
    Ok((data, mode))
}

/// A SHA-256 over a file's mode and content.
fn digest_of(mode: u32, data: &[u8]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&mode.to_be_bytes());
    ctx.update(&(data.len() as u64).to_be_bytes());
    ctx.update(data);
    ctx.finish().as_ref().try_into().expect("32-byte digest")
}

/// [`AtomicWriter::digest`] of an inventory.
fn digest_of_files(inventory: &Inventory) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, digest) in inventory {
        ctx.update(&(name.len() as u64).to_be_bytes());
        ctx.update(name.as_bytes());
        ctx.update(digest);
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// [`AtomicWriter::digest`] of files as a peer would compute it from
/// their names, modes and contents.
pub fn digest_of_served(files: &[(String, u32, Vec<u8>)]) -> String {
    digest_of_files(
        &files
            .iter()
            .map(|(name, mode, data)| (name.clone(), digest_of(*mode, data)))
            .collect(),
    )
}

fn inventory_of(files: &[FileSpec]) -> Inventory {
    files
        .iter()
        .map(|f| (f.name.clone(), digest_of(f.mode, &f.data)))
        .collect()
}

/// The files of `wanted` that `served` lacks or holds otherwise, and the
/// files of `served` that `wanted` lacks.
fn diff(served: &Inventory, wanted: &Inventory) -> (Vec<String>, Vec<String>) {
    let changed = wanted
        .iter()
        .filter(|(name, digest)| served.get(*name) != Some(digest))
        .map(|(name, _)| name.clone())
        .collect();
    let removed = served
        .keys()
        .filter(|name| !wanted.contains_key(*name))
        .cloned()
        .collect();
    (changed, removed)
}

/// The process umask, from `/proc/self/status`; all bits when unknown, so
/// that every file gets an explicit chmod.
fn read_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

/// `..2026_11_24_03_55_00.123456789`, as the kubelet names them.
fn data_dir_name(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_nanos(now).to_string();
    let stamp = stamp.trim_end_matches('Z').replace(['-', 'T', ':'], "_");
    format!("..{stamp}")
}

fn is_data_dir_name(name: &str) -> bool {
    name.len() > 2
        && name.starts_with("..")
        && name.as_bytes()[2].is_ascii_digit()
        && !name.contains('/')
}

fn check_owner(uid: u32, gid: u32) -> std::result::Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return Ok(());
    }
    if euid != uid {
        return Err(format!(
            "rotor.dev/file-owner asks for uid {uid}, but the sidecar runs as uid {euid} and holds no capability to chown; \
             run the sidecar as uid {uid} (the webhook copies the app's runAsUser) or use mode 0440 with the pod's fsGroup"
        ));
    }
    let egid = rustix::process::getegid().as_raw();
    let groups = rustix::process::getgroups().unwrap_or_default();
    if egid != gid && !groups.iter().any(|g| g.as_raw() == gid) {
        return Err(format!(
            "rotor.dev/file-owner asks for gid {gid}, but the sidecar is not a member of it (gid {egid}); \
             set the pod's fsGroup or runAsGroup to {gid}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
