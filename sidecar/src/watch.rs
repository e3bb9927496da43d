//! The pod's annotations: read from the downward-API file, watched
//! (through [`rotor_watch::DirWatch`]) and each valid new contract sent to
//! the engine. An invalid change is logged and counted, and the running
//! contract stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rotor_crds::annotations::PodSecrets;
use rotor_watch::{DirWatch, WatchMask};
use tokio::sync::watch;

use crate::engine::Shared;
use crate::{Error, Result};

/// Reads and parses the annotations file.
pub fn load(path: &Path) -> Result<PodSecrets> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Annotations {
        path: path.to_owned(),
        problem: format!(
            "cannot be read ({e}); expected the downward-API file of metadata.annotations"
        ),
    })?;
    let map = crate::downward::parse(&text).map_err(|problem| Error::Annotations {
        path: path.to_owned(),
        problem,
    })?;
    Ok(rotor_crds::annotations::parse(
        map.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?)
}

/// Starts watching `path`'s directory. Changes are debounced by `debounce`.
pub fn spawn(
    path: PathBuf,
    initial: PodSecrets,
    shared: Arc<Shared>,
    debounce: Duration,
) -> Result<watch::Receiver<PodSecrets>> {
    let mut changes = DirWatch::parent_of(
        &path,
        WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::DELETE,
        debounce,
    )
    .map_err(|e| Error::Annotations {
        path: path.clone(),
        problem: format!("cannot watch its directory with inotify ({})", e.io()),
    })?;
    let (tx, rx) = watch::channel(initial.clone());
    tokio::spawn(async move {
        let mut current = initial;
        // A burst of events (the kubelet's swap) settles, then the file is read.
        while changes.settled().await.is_some() {
            match load(&path) {
                Ok(contract) if contract != current => {
                    current = contract.clone();
                    if tx.send(contract).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    shared.metrics.config_error();
                    tracing::error!(error = %e, "the new annotations are invalid; keeping the running configuration");
                }
            }
        }
    });
    Ok(rx)
}
