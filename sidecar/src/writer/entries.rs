//! The writer's operations on entries of the target directory, each
//! relative to the target's handle with no-follow semantics: data
//! directories and their files, the visible file links, listing.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use super::inventory::{Inventory, digest_of, read_file};
use super::names::{DATA, data_dir_name, is_data_dir_name};
use super::target::traverse_bits;
use super::{AtomicWriter, Error, FileSpec, Result};

impl AtomicWriter {
    pub(super) fn fail(&self, problem: String) -> Error {
        Error::Target {
            path: self.path.clone(),
            problem,
        }
    }

    pub(super) fn io(&self, what: &'static str) -> impl Fn(Errno) -> Error + '_ {
        move |e| self.fail(format!("cannot {what} ({e})"))
    }

    /// The directory `..data` points to, if it is one of ours.
    pub(super) fn current_dir_name(&self) -> Result<Option<String>> {
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

    pub(super) fn open_subdir(&self, name: &str) -> Result<OwnedFd> {
        rustix::fs::openat(
            &self.dir,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.io("open a data directory"))
    }

    pub(super) fn list_dir(&self, name: &str) -> Result<Vec<String>> {
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
    pub(super) fn take_inventory(&self, dir: &str) -> Result<Inventory> {
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

    pub(super) fn make_dir(&self, files: &[FileSpec]) -> Result<String> {
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

    pub(super) fn chown(&self, fd: &impl AsFd) -> Result<()> {
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
    pub(super) fn link_visible(&self, name: &str) -> Result<()> {
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
    pub(super) fn unlink_visible(&self, name: &str) -> Result<()> {
        match rustix::fs::readlinkat(&self.dir, name, Vec::new()) {
            Ok(t) if t.to_bytes() == format!("{DATA}/{name}").as_bytes() => {
                self.unlink_if_present(name)
            }
            Ok(_) | Err(Errno::NOENT | Errno::INVAL) => Ok(()),
            Err(e) => Err(self.io("inspect a file link")(e)),
        }
    }

    pub(super) fn unlink_if_present(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io("remove a stale link")(e)),
        }
    }

    /// Removes one of our data directories and the files in it.
    pub(super) fn remove_dir(&self, name: &str) -> Result<()> {
        if !is_data_dir_name(name) {
            return Ok(());
        }
        let Ok(files) = self.list_dir(name) else {
            return Ok(());
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

    pub(super) fn list_target(&self) -> Result<Vec<String>> {
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
}
