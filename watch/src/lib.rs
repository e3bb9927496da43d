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
//! inotify is limited per user (`fs.inotify.max_user_instances`, 128 by
//! default, and `max_user_watches`), shared by every process of that uid
//! on the machine. [`DirWatch::file_or_poll`] does not fail on those
//! limits: when it cannot get an instance or a watch (EMFILE, ENFILE,
//! ENOSPC, ENOMEM) it checks the file's `..data` link and the file itself
//! on a timer instead, and [`DirWatch::fallback`] says why, for the caller
//! to report once.
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
use std::os::unix::fs::MetadataExt;

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

    /// Whether the error is one of inotify's per-user or system limits
    /// (instances, watches, descriptors, kernel memory) rather than a
    /// problem with the directory: the case [`DirWatch::file_or_poll`]
    /// answers by polling.
    pub fn is_limit(&self) -> bool {
        use rustix::io::Errno;
        let limits = [Errno::MFILE, Errno::NFILE, Errno::NOSPC, Errno::NOMEM];
        self.io()
            .raw_os_error()
            .is_some_and(|code| limits.iter().any(|e| e.raw_os_error() == code))
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

/// Where changes come from.
enum Source {
    Inotify(Box<EventStream<[u8; 4096]>>),
    /// inotify was not available: the file is checked every `every`.
    Poll {
        file: PathBuf,
        every: Duration,
        last: Seen,
        cause: Error,
    },
}

/// What a poll compares: where the directory's `..data` link points (the
/// kubelet swaps it for every update) and the file's identity and times
/// (a file replaced or written in place outside a cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    data_link: Option<PathBuf>,
    file: Option<(u64, u64, u64, i64, i64, i64, i64)>,
}

impl Seen {
    fn of(file: &Path) -> Self {
        let data_link = std::fs::read_link(dir_of(file).join("..data")).ok();
        let file = std::fs::metadata(file).ok().map(|m| {
            (
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        });
        Self { data_link, file }
    }
}

/// A directory watched with inotify, its events debounced.
pub struct DirWatch {
    source: Source,
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
            source: Source::Inotify(Box::new(events)),
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

    /// Watches the directory holding `file` (see [`dir_of`]).
    pub fn parent_of(file: &Path, mask: WatchMask, debounce: Duration) -> Result<Self> {
        Self::new(dir_of(file), mask, debounce)
    }

    /// Watches `file`'s updates the kubelet's way ([`Self::parent_of`]
    /// narrowed to [`Self::kubelet_names`]); when inotify's limits refuse
    /// an instance or a watch ([`Error::is_limit`]), checks the file on a
    /// timer every `poll` instead ([`Self::polling`]). Other errors (a
    /// missing directory, say) are returned.
    pub fn file_or_poll(
        file: &Path,
        mask: WatchMask,
        debounce: Duration,
        poll: Duration,
    ) -> Result<Self> {
        match Self::parent_of(file, mask, debounce) {
            Ok(watch) => Ok(watch.only(Self::kubelet_names(file))),
            Err(cause) if cause.is_limit() => Ok(Self::polling(file, poll, cause)),
            Err(e) => Err(e),
        }
    }

    /// Checks `file` every `every` without inotify: a change of its
    /// directory's `..data` link or of the file (replaced, written) is one
    /// settled change. `cause` is why inotify was not used, kept for
    /// [`Self::fallback`].
    pub fn polling(file: &Path, every: Duration, cause: Error) -> Self {
        Self {
            source: Source::Poll {
                file: file.to_owned(),
                every,
                last: Seen::of(file),
                cause,
            },
            dir: dir_of(file).to_owned(),
            debounce: Duration::ZERO,
            names: None,
        }
    }

    /// Why this watch polls instead of using inotify; `None` while it uses
    /// inotify.
    pub fn fallback(&self) -> Option<&Error> {
        match &self.source {
            Source::Inotify(_) => None,
            Source::Poll { cause, .. } => Some(cause),
        }
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
        let stream = match &mut self.source {
            Source::Inotify(stream) => stream,
            Source::Poll {
                file, every, last, ..
            } => loop {
                tokio::time::sleep(*every).await;
                let seen = Seen::of(file);
                if seen != *last {
                    *last = seen;
                    return Some(Settled { events: 1 });
                }
            },
        };
        let names = &self.names;
        let counts = |name: Option<&OsStr>| match names {
            None => true,
            Some(names) => name.is_some_and(|n| names.iter().any(|w| w == n)),
        };
        loop {
            match stream.next().await? {
                Ok(event) if counts(event.name.as_deref()) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "inotify read failed")
                }
            }
        }
        tokio::time::sleep(self.debounce).await;
        let mut events = 1;
        while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, stream.next()).await {
            if event.is_ok_and(|e| counts(e.name.as_deref())) {
                events += 1;
            }
        }
        Some(Settled { events })
    }
}

#[cfg(test)]
mod tests;
