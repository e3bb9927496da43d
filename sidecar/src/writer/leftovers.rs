//! What an earlier run could have left in the target (the temporary links
//! of an interrupted swap, superseded or half-written data directories),
//! removed at open only when each entry is of the kind the writer leaves
//! under that name.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::names::{is_data_dir_name, is_tmp_name};
use super::{AtomicWriter, Result};

pub(super) fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::RegularFile => "a regular file",
        FileType::Symlink => "a symlink",
        _ => "a special file",
    }
}

impl AtomicWriter {
    /// Removes what an earlier run could have left: the `..data_tmp` and
    /// `..tmp.<file>` symlinks of an interrupted swap, and data directories
    /// other than the served one (superseded, or from an interrupted
    /// write), which hold only regular files. Anything else under those
    /// names was not made by the writer: it is refused, by name, before
    /// anything is removed. When `..data` is not one of the writer's links,
    /// which data directory is served is unknown, so all are kept.
    pub(super) fn remove_leftovers(&self) -> Result<()> {
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
    pub(super) fn remove_tmp_links(&self) -> Result<()> {
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

    /// Refuses `name` (in `dir`; `shown` relative to the target) unless it
    /// is of the kind the writer leaves under that name.
    pub(super) fn expect_kind(
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
