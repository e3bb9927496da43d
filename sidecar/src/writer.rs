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
//! A change is written into a fresh timestamped directory, then a
//! `..data_tmp` symlink to it is renamed over `..data`: one `rename(2)`
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
//! can leave the target directory. A symlinked target root is refused, and
//! so is a target that is not tmpfs or ramfs unless disk is allowed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use zeroize::Zeroizing;

use crate::{Error, Result};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// How many times a swap is tried when `..data` does not end up pointing
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

/// What a test runs between the writer's `symlinkat` and `renameat`.
#[cfg(test)]
pub(crate) type SwapRace = Box<dyn Fn(&Path) + Send + Sync>;

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
    /// Runs between creating `..data_tmp` and renaming it over `..data`:
    /// where a test swaps `..data_tmp` as a racing process would.
    #[cfg(test)]
    pub(crate) before_swap: Option<SwapRace>,
    /// The process umask, read once: files need an explicit chmod only
    /// when it would strip bits of their mode.
    umask: u32,
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
        if is_data_dir_name(&target) {
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
        self.point_data_at(&served)?;
        Ok(Some(served))
    }

    /// Points `..data` at the data directory `dir`: a `..data_tmp` symlink
    /// renamed over it. Then checks that `..data` points there: a process
    /// swapping `..data_tmp` between the two calls would have it point
    /// elsewhere, outside the target even, and every later write would
    /// fail. Swaps again when it does not, a few times.
    fn point_data_at(&self, dir: &str) -> Result<()> {
        for attempt in 1..=SWAP_ATTEMPTS {
            self.unlink_if_present(DATA_TMP)?;
            rustix::fs::symlinkat(dir, &self.dir, DATA_TMP)
                .map_err(self.io("create ..data_tmp"))?;
            #[cfg(test)]
            if let Some(race) = &self.before_swap {
                race(&self.path);
            }
            rustix::fs::renameat(&self.dir, DATA_TMP, &self.dir, DATA).map_err(|e| {
                self.fail(format!(
                    "cannot swap ..data ({e}); is ..data something other than a symlink?"
                ))
            })?;
            match rustix::fs::readlinkat(&self.dir, DATA, Vec::new()) {
                Ok(target) if target.to_bytes() == dir.as_bytes() => return Ok(()),
                Ok(target) => tracing::warn!(
                    path = %self.path.display(),
                    attempt,
                    found = %target.to_string_lossy(),
                    expected = dir,
                    "..data does not point where it was just swapped to; swapping again"
                ),
                Err(e) => tracing::warn!(
                    path = %self.path.display(),
                    attempt,
                    error = %e,
                    "..data cannot be read after the swap; swapping again"
                ),
            }
        }
        Err(self.fail(format!(
            "..data does not point to {dir:?} after {SWAP_ATTEMPTS} swaps: another process \
             changes ..data_tmp or ..data; the writer must be the only one writing here"
        )))
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
        self.unlink_if_present(DATA_TMP)?;
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
    /// anything else planted there.
    fn link_visible(&self, name: &str) -> Result<()> {
        let target = format!("{DATA}/{name}");
        match rustix::fs::readlinkat(&self.dir, name, Vec::new()) {
            Ok(existing) if existing.to_bytes() == target.as_bytes() => return Ok(()),
            Err(Errno::NOENT) => {
                return rustix::fs::symlinkat(target.as_str(), &self.dir, name)
                    .map_err(self.io("create a file link"));
            }
            Ok(_) | Err(Errno::INVAL) => {}
            Err(e) => return Err(self.io("inspect a file link")(e)),
        }
        let stat = rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.io("inspect a file link"))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            return Err(self.fail(format!(
                "{name:?} is a directory where the file link belongs; refusing to replace it"
            )));
        }
        tracing::warn!(path = %self.path.display(), file = name, "replacing an unexpected entry with the file link");
        let tmp = format!("..tmp.{name}");
        self.unlink_if_present(&tmp)?;
        rustix::fs::symlinkat(target.as_str(), &self.dir, tmp.as_str())
            .map_err(self.io("create a file link"))?;
        rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, name)
            .map_err(self.io("replace a file link"))
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
    name == DATA_TMP || name.starts_with("..tmp.")
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
