//! The pod's annotations: read from the downward-API file, watched
//! (through [`rotor_watch::DirWatch`]) and each valid new contract sent to
//! the engine. An invalid change is logged and counted once, and the
//! running contract stays.
//!
//! Only the file's own updates count: the kubelet's swap of `..data` in
//! the volume's directory, or the file itself replaced or written. Other
//! files in that directory (a log, say) are ignored, so reading the file
//! again can never feed on what the sidecar writes.
//!
//! Without inotify (the uid's `fs.inotify.max_user_instances` or
//! `max_user_watches` used up, by other sidecars or any process of that
//! uid on the node) the file is checked every [`FALLBACK_POLL`] instead:
//! the sidecar warns once, counts it in `rotor_inotify_fallbacks_total`,
//! and serves as before. See `docs/node-limits.md`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rotor_contract::annotations::PodSecrets;
use rotor_watch::{DirWatch, WatchMask};
use tokio::sync::watch;

use crate::engine::Shared;
use crate::{Error, Result};

/// The most bytes of annotations a pod can have: Kubernetes' own limit on
/// `metadata.annotations`, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// The most bytes of the file read. The kubelet quotes each value as Go's
/// `%q` does, which takes at most 4 bytes per byte (`\x00`), plus 4 per
/// annotation (`="…"` and the newline), and every annotation has a key of
/// at least one byte: 5 times [`MAX_ANNOTATIONS_BYTES`] holds any file of a
/// pod Kubernetes admitted.
pub const MAX_FILE_BYTES: usize = 5 * MAX_ANNOTATIONS_BYTES;

/// How often the annotations file's `..data` link is checked when inotify
/// is not available: a `readlink` and a `stat`, cheap enough to keep the
/// delay of an annotation change near the kubelet's own.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Reads the annotations file, at most [`MAX_FILE_BYTES`] of it.
fn read(path: &Path) -> Result<String> {
    let fail = |problem: String| Error::Annotations {
        path: path.to_owned(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        fail(format!(
            "cannot be read ({e}); expected the downward-API file of metadata.annotations"
        ))
    })?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot be read ({e})")))?;
    if text.len() > MAX_FILE_BYTES {
        return Err(fail(format!(
            "is larger than {} KiB; a pod's annotations hold at most {} KiB (Kubernetes' limit), \
             which the kubelet writes in at most {} KiB",
            MAX_FILE_BYTES / 1024,
            MAX_ANNOTATIONS_BYTES / 1024,
            MAX_FILE_BYTES / 1024
        )));
    }
    Ok(text)
}

/// Parses the annotations file's text.
fn parse(path: &Path, text: &str) -> Result<PodSecrets> {
    let fail = |problem: String| Error::Annotations {
        path: path.to_owned(),
        problem,
    };
    let map = crate::downward::parse(text).map_err(fail)?;
    let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(fail(format!(
            "holds {total} bytes of annotations; Kubernetes allows at most {MAX_ANNOTATIONS_BYTES}"
        )));
    }
    Ok(rotor_contract::annotations::parse(
        map.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?)
}

/// Reads and parses the annotations file.
pub fn load(path: &Path) -> Result<PodSecrets> {
    parse(path, &read(path)?)
}

/// What was read last: an invalid text is reported once, not again while
/// the file holds it.
fn fingerprint(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Starts watching `path` (its directory, narrowed to the file's own
/// updates). Changes are debounced by `debounce`.
pub fn spawn(
    path: PathBuf,
    initial: PodSecrets,
    shared: Arc<Shared>,
    debounce: Duration,
) -> Result<watch::Receiver<PodSecrets>> {
    let mut changes = DirWatch::file_or_poll(
        &path,
        WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::DELETE,
        debounce,
        FALLBACK_POLL,
    )
    .map_err(|e| Error::Annotations {
        path: path.clone(),
        problem: format!("cannot watch its directory with inotify ({})", e.io()),
    })?;
    if let Some(cause) = changes.fallback() {
        shared.metrics.inotify_fallback();
        tracing::warn!(
            path = %path.display(),
            error = %cause,
            reason = cause.metric_label(),
            every = ?FALLBACK_POLL,
            "inotify is not available (the uid's inotify limits are used up); \
             checking the annotations file's ..data link on a timer instead"
        );
    }
    let (tx, rx) = watch::channel(initial.clone());
    tokio::spawn(async move {
        let mut current = initial;
        // The text last refused, so that one invalid change is one error.
        let mut refused: Option<u64> = None;
        // A burst of events (the kubelet's swap) settles, then the file is read.
        while changes.settled().await.is_some() {
            let loaded = read(&path).and_then(|text| {
                let seen = fingerprint(&text);
                if refused == Some(seen) {
                    return Ok(None);
                }
                parse(&path, &text)
                    .map(Some)
                    .inspect_err(|_| refused = Some(seen))
            });
            match loaded {
                Ok(Some(contract)) => {
                    refused = None;
                    if contract != current {
                        current = contract.clone();
                        if tx.send(contract).is_err() {
                            break;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    shared.metrics.config_error();
                    tracing::error!(error = %e, "the new annotations are invalid; keeping the running configuration");
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_cap_is_refused_naming_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annotations");
        let big = format!("rotor.dev/x=\"{}\"\n", "a".repeat(MAX_FILE_BYTES));
        std::fs::write(&path, big).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(
            err.contains("is larger than 1280 KiB") && err.contains("256 KiB"),
            "{err}"
        );
        // Within the file's cap but over Kubernetes' limit once unquoted.
        let over = format!("a=\"{}\"\n", "b".repeat(MAX_ANNOTATIONS_BYTES));
        std::fs::write(&path, over).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(err.contains("Kubernetes allows at most 262144"), "{err}");
        // A pod at the limit, its values all quoted at 4 bytes per byte,
        // reads.
        let value = "\\x01".repeat(MAX_ANNOTATIONS_BYTES - 1);
        std::fs::write(&path, format!("a=\"{value}\"\n")).unwrap();
        load(&path).unwrap();
    }
}
