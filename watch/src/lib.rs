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
//! The events are read through inotify's own event stream (hence the
//! `futures-util` dependency): registering the descriptor with tokio's
//! `AsyncFd` directly takes `unsafe`, which the workspace forbids.

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
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("dir", &self.dir)
            .field("debounce", &self.debounce)
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
        })
    }

    /// Watches the directory holding `file` (see [`dir_of`]).
    pub fn parent_of(file: &Path, mask: WatchMask, debounce: Duration) -> Result<Self> {
        Self::new(dir_of(file), mask, debounce)
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the next burst of events, lets it settle for the
    /// debounce period, and drains what came meanwhile. A failed read is
    /// logged and the wait goes on; `None` when the stream ends.
    pub async fn settled(&mut self) -> Option<Settled> {
        loop {
            match self.events.next().await? {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "inotify read failed")
                }
            }
        }
        tokio::time::sleep(self.debounce).await;
        let mut events = 1;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, self.events.next()).await {
            events += 1;
        }
        Some(Settled { events })
    }
}

#[cfg(test)]
mod tests;
