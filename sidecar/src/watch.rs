//! Watches the downward-API annotations file with inotify and sends each
//! valid new contract to the engine. An invalid change is logged and
//! counted, and the running contract stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use rotor_crds::annotations::PodSecrets;
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let fail = |e: std::io::Error| Error::Annotations {
        path: path.clone(),
        problem: format!("cannot watch its directory with inotify ({e})"),
    };
    let inotify = Inotify::init().map_err(fail)?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::CLOSE_WRITE
                | WatchMask::MODIFY
                | WatchMask::DELETE,
        )
        .map_err(fail)?;
    let mut events = inotify.into_event_stream([0u8; 4096]).map_err(fail)?;
    let (tx, rx) = watch::channel(initial.clone());
    tokio::spawn(async move {
        let mut current = initial;
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "inotify read failed");
                continue;
            }
            // Let a burst of events (the kubelet's swap) settle, then drain.
            tokio::time::sleep(debounce).await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, events.next()).await {}
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
