//! What a data directory holds, as digests of each file's mode and content:
//! a write is compared with the served inventory, not with files read
//! back, and only a changed set is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use zeroize::Zeroizing;

use super::FileSpec;

/// A digest of one file's mode and content.
pub(super) type Digest = [u8; 32];

/// What a data directory holds: each file's digest, by name.
pub(super) type Inventory = BTreeMap<String, Digest>;

/// Reads a file inside a data directory without following a symlink.
pub(super) fn read_file(
    dir: &OwnedFd,
    name: &str,
) -> rustix::io::Result<(Zeroizing<Vec<u8>>, u32)> {
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
pub(super) fn digest_of(mode: u32, data: &[u8]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&mode.to_be_bytes());
    ctx.update(&(data.len() as u64).to_be_bytes());
    ctx.update(data);
    ctx.finish().as_ref().try_into().expect("32-byte digest")
}

pub(super) fn inventory_of(files: &[FileSpec]) -> Inventory {
    files
        .iter()
        .map(|f| (f.name.clone(), digest_of(f.mode, &f.data)))
        .collect()
}

/// The files of `wanted` that `served` lacks or holds otherwise, and the
/// files of `served` that `wanted` lacks.
pub(super) fn diff(served: &Inventory, wanted: &Inventory) -> (Vec<String>, Vec<String>) {
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

/// [`super::AtomicWriter::digest`] of an inventory.
pub(super) fn digest_of_files(inventory: &Inventory) -> String {
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

/// [`super::AtomicWriter::digest`] of files as a peer would compute it from
/// their names, modes and contents.
pub fn digest_of_served(files: &[(String, u32, Vec<u8>)]) -> String {
    digest_of_files(
        &files
            .iter()
            .map(|(name, mode, data)| (name.clone(), digest_of(*mode, data)))
            .collect(),
    )
}
