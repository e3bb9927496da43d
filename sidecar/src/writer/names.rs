//! The names the writer gives entries in the target directory: `..data`,
//! the timestamped data directories (as the kubelet names them) and the
//! temporary links of a swap. Anything else in the target is not the
//! writer's.

use std::time::SystemTime;

pub(super) const DATA: &str = "..data";

/// The prefix of the temporary link swapped in as `..data`; a random
/// suffix follows.
pub(super) const DATA_TMP: &str = "..data_tmp";

/// The prefix of a file link's temporary name (`..tmp.<file>.<hex>`).
pub(super) const LINK_TMP: &str = "..tmp.";

pub(super) fn is_tmp_name(name: &str) -> bool {
    name.starts_with(DATA_TMP) || name.starts_with(LINK_TMP)
}

/// `..2026_11_24_03_55_00.123456789`, as the kubelet names them.
pub(super) fn data_dir_name(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_nanos(now).to_string();
    let stamp = stamp.trim_end_matches('Z').replace(['-', 'T', ':'], "_");
    format!("..{stamp}")
}

pub(super) fn is_data_dir_name(name: &str) -> bool {
    name.len() > 2
        && name.starts_with("..")
        && name.as_bytes()[2].is_ascii_digit()
        && !name.contains('/')
}
