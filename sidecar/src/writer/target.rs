//! The target directory and the process around it: the filesystem kinds
//! that keep secrets in memory, the owner the process can honour, and the
//! permission bits the directories get.

use super::WriterOptions;

pub(super) const TMPFS_MAGIC: u64 = 0x0102_1994;

pub(super) const RAMFS_MAGIC: u64 = 0x8584_58f6;

pub(super) fn group_bits(options: &WriterOptions) -> u32 {
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
pub(super) fn traverse_bits(read_bits: u32) -> u32 {
    (read_bits & 0o044) | ((read_bits & 0o044) >> 2)
}

/// The process umask, from `/proc/self/status`; all bits when unknown, so
/// that every file gets an explicit chmod.
pub(super) fn read_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

pub(super) fn check_owner(uid: u32, gid: u32) -> std::result::Result<(), String> {
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
