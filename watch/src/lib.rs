//! `rotor-watch`: a directory watched with inotify, each burst of events
//! debounced into one change.
//!
//! Files that Rotor reloads (the pod's downward-API annotations, the
//! webhook's TLS certificate) are replaced the way the kubelet does it: a
//! new directory, symlinks renamed over the old ones, several events for
//! one change. [`DirWatch::settled`] waits for the first event of a burst,
//! lets the burst settle for the debounce period, drains what came
//! meanwhile, and reports the burst as one change; the caller then reads
//! the files again.
//!
//! [`DirWatch::only`] narrows the watch to events on some names in the
//! directory (the file itself and the kubelet's `..data` link): another
//! file in the same directory, a log the process writes there say, then
//! causes no change at all.

//!
//! The events are read through inotify's own event stream (hence the
//! `futures-util` dependency): registering the descriptor with tokio's
//! `AsyncFd` directly takes `unsafe`, which the workspace forbids.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
pub use inotify::WatchMask;
use inotify::{EventStream, Inotify};

/// Errors of the watcher. They name the directory and carry the system's
/// error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// inotify itself could not start, or its event stream could not join
    /// the runtime.
    #[error("inotify: {0}")]
    Init(#[source] std::io::Error),

    /// The directory could not be watched (missing, not permitted, out of
    /// watches).
    #[error("cannot watch {}: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Every label [`Error::metric_label`] returns.
    pub const METRIC_LABELS: [&'static str; 2] = ["inotify", "watch"];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Init(_) => "inotify",
            Error::Watch { .. } => "watch",
        }
    }

    /// The system's error, for callers that word the problem themselves.
    pub fn io(&self) -> &std::io::Error {
        match self {
            Error::Init(e) | Error::Watch { source: e, .. } => e,
        }
    }
}

/// One burst of events, settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// How many inotify events the burst held (at least one).
    pub events: usize,
}

/// A directory watched with inotify, its events debounced.
pub struct DirWatch {
    events: EventStream<[u8; 4096]>,
    dir: PathBuf,
    debounce: Duration,
    /// When set, only events naming one of these entries count.
    names: Option<Vec<OsString>>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("dir", &self.dir)
            .field("debounce", &self.debounce)
            .field("names", &self.names)
            .finish()
    }
}

/// The directory holding `file`: its parent, or `.` for a bare file name.
pub fn dir_of(file: &Path) -> &Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

impl DirWatch {
    /// Watches `dir` for the events in `mask`. Must be called inside a
    /// tokio runtime with I/O enabled.
    pub fn new(dir: &Path, mask: WatchMask, debounce: Duration) -> Result<Self> {
        let inotify = Inotify::init().map_err(Error::Init)?;
        inotify
            .watches()
            .add(dir, mask)
            .map_err(|source| Error::Watch {
                dir: dir.to_owned(),
                source,
            })?;
        let events = inotify
            .into_event_stream([0u8; 4096])
            .map_err(Error::Init)?;
        Ok(Self {
            events,
            dir: dir.to_owned(),
            debounce,
            names: None,
        })
    }

    /// Counts only events on the entries `names` of the directory; events
    /// on other entries (and events without a name) are read and dropped.
    pub fn only<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<OsString>,
    {
        self.names = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// The entry names the kubelet changes when it updates a file of a
    /// downward-API, Secret or ConfigMap volume: the file's own name (its
    /// first creation, or an edit in place outside a cluster) and `..data`,
    /// the link swapped for every later update.
    pub fn kubelet_names(file: &Path) -> Vec<OsString> {
        let mut names = vec![OsString::from("..data")];
        names.extend(file.file_name().map(OsStr::to_owned));
        names
    }

    fn counts(&self, name: Option<&OsStr>) -> bool {
        match &self.names {
            None => true,
            Some(names) => name.is_some_and(|n| names.iter().any(|w| w == n)),
        }
    }

    /// Watches the directory holding `file` (see [`dir_of`]).
    pub fn parent_of(file: &Path, mask: WatchMask, debounce: Duration) -> Result<Self> {
        Self::new(dir_of(file), mask, debounce)
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the next burst of events (of the names watched, see
    /// [`Self::only`]), lets it settle for the debounce period, and drains
    /// what came meanwhile. A failed read is
    /// logged and the wait goes on; `None` when the stream ends.
    pub async fn settled(&mut self) -> Option<Settled> {
        loop {
            match self.events.next().await? {
                Ok(event) if self.counts(event.name.as_deref()) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "inotify read failed")
                }
            }
        }
        tokio::time::sleep(self.debounce).await;
        let mut events = 1;
        while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, self.events.next()).await {
            if event.is_ok_and(|e| self.counts(e.name.as_deref())) {
                events += 1;
            }
        }
        Some(Settled { events })
    }
}

#[cfg(test)]
mod tests;
