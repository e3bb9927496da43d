//! The refresh engine: fetches the pod's secrets, writes them, keeps them
//! fresh, and runs the reload actions after a change.
//!
//! One task owns all state. It wakes for the next due poll, an annotation
//! change, a push request or shutdown, so a push and a poll never race.
//! This file holds the task's loop, the per-secret state and the check of
//! one secret; the rest is split by concern:
//!
//! - [`change`]: what a look at the store changed (pure).
//! - [`backoff`]: when to look again: backoff, poll spread, randomness.
//! - `publish`: render, write, and reload on the writer's report.
//! - `push`: `POST /v1/refresh` requests, pins and their replies.
//! - `shared`: readiness and metrics, read by the HTTP endpoints.

pub mod backoff;
pub mod change;
mod publish;
mod push;
mod shared;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rotor_contract::annotations::{OnMissing, PodSecrets};
use rotor_envelope::{ExposeSecret, Plaintext};
use rotor_store::{Fetched, Selector, Stage, Store, VersionId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::backoff::{Backoff, Link, Random, Retry, SystemRandom, spread};
use self::change::{Change, observe, observe_current};
pub use self::shared::Shared;
use crate::OnceProblem;
use crate::push::PushRequest;
use crate::reload::Reloader;
use crate::writer::AtomicWriter;

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How long a pushed version pin lasts at most, even while the version
    /// stays PENDING.
    pub pin_ttl: Duration,
    /// The first retry delay after an error.
    pub backoff_base: Duration,
    /// The longest retry delay (never more than the refresh interval).
    pub backoff_cap: Duration,
    /// The files' mode when the pod sets no `rotor.dev/file-mode`.
    pub default_file_mode: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            pin_ttl: Duration::from_secs(3600),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(300),
            default_file_mode: rotor_contract::annotations::DEFAULT_FILE_MODE,
        }
    }
}

/// What the engine knows of one secret. No `Debug`: it holds the value.
struct Tracked {
    value: Option<Plaintext>,
    version: Option<VersionId>,
    created_at: Option<SystemTime>,
    pin: Option<(VersionId, Instant)>,
    next_poll: Instant,
    /// When it was last scheduled (after a look at the store).
    looked_at: Instant,
    retry: Retry,
    missing: bool,
    /// The last fetch failure, for `--once`: its text (with causes) and
    /// whether a retry can fix it.
    last_error: Option<(String, bool)>,
}

impl Tracked {
    fn new() -> Self {
        Self {
            value: None,
            version: None,
            created_at: None,
            pin: None,
            next_poll: Instant::now(),
            looked_at: Instant::now(),
            retry: Retry::default(),
            missing: false,
            last_error: None,
        }
    }
}

/// What checking one secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing to write: the served value stands (its version may be new).
    Unchanged,
    /// The served value changed (or went away): render and write again.
    Changed,
    /// A transient failure: retry with backoff.
    Failed,
    /// A failure a quick retry cannot fix (permission denied, malformed
    /// data): try again at the next regular poll.
    Refused,
}

pub struct Engine {
    store: Arc<dyn Store>,
    writer: AtomicWriter,
    contract: PodSecrets,
    tracked: BTreeMap<String, Tracked>,
    reloader: Reloader,
    shared: Arc<Shared>,
    options: EngineOptions,
    written_once: bool,
    /// The last render failure, cleared by a successful render.
    render_error: Option<String>,
    /// The last write failed: write again (every second) until it works.
    unwritten: bool,
    /// Secrets whose store said they may have changed (watching stores).
    nudges: (mpsc::Sender<String>, mpsc::Receiver<String>),
    watchers: BTreeMap<String, tokio::task::JoinHandle<()>>,
    /// What the backoff and the poll spread draw from.
    random: Box<dyn Random>,
    /// The stream to the controller, which sets the poll interval
    /// ([`Link::poll_interval`]); `None`: no stream (`Link::Down`).
    link: Option<watch::Receiver<Link>>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        writer: AtomicWriter,
        contract: PodSecrets,
        reloader: Reloader,
        shared: Arc<Shared>,
        options: EngineOptions,
    ) -> Self {
        let mut engine = Self {
            store,
            writer,
            contract,
            tracked: BTreeMap::new(),
            reloader,
            shared,
            options,
            written_once: false,
            render_error: None,
            unwritten: false,
            nudges: mpsc::channel(64),
            watchers: BTreeMap::new(),
            random: Box::new(SystemRandom),
            link: None,
        };
        engine.sync_tracked();
        engine
    }

    /// The same engine polling as `link` says: only as a safety net while
    /// the controller detects changes for it, at its refresh otherwise.
    pub fn with_link(mut self, link: watch::Receiver<Link>) -> Self {
        self.link = Some(link);
        self
    }

    fn current_link(&self) -> Link {
        self.link.as_ref().map_or(Link::Down, |l| *l.borrow())
    }

    /// The stream came up or went down. Up (detected): every secret is
    /// checked once now, which catches a change made before the
    /// controller's first look at it; the polls after that are the safety
    /// net's. Otherwise every secret is due one refresh after its last
    /// look, so a poll the safety net held back is due at once when the
    /// stream drops. Secrets in backoff keep their retry.
    fn relink(&mut self, link: Link) {
        self.shared
            .metrics
            .channel_connected(matches!(link, Link::Up { .. }));
        let safety_net = link.safety_net(false);
        tracing::info!(
            ?link,
            safety_net,
            "channel link changed; {}",
            if safety_net {
                "polling only as a safety net: the controller announces changes"
            } else {
                "polling at the refresh interval"
            }
        );
        let (refresh, now) = (self.contract.refresh, Instant::now());
        for (name, t) in &mut self.tracked {
            if t.retry.failures() > 0 || t.value.is_none() {
                continue;
            }
            let interval = link.poll_interval(refresh, self.watchers.contains_key(name));
            let due = if safety_net {
                now
            } else {
                t.looked_at + spread(interval, &*self.random)
            };
            t.next_poll = t.next_poll.min(due);
        }
    }

    /// The same engine drawing its jitter from `random` (tests fix it).
    pub fn with_random(mut self, random: impl Random + 'static) -> Self {
        self.random = Box::new(random);
        self
    }

    /// Fetches and writes everything once, retrying with backoff until it
    /// succeeds (the init-container mode).
    ///
    /// A failure no retry can fix (permission denied, a missing secret, a
    /// template or field error) ends it at once; retryable ones (the store
    /// unreachable or throttled) are retried with backoff up to `attempts`
    /// times. The error says why, so an init container does not hang.
    pub async fn run_once(&mut self, attempts: u32) -> crate::Result<()> {
        let mut tried = 0u32;
        loop {
            self.poll_due().await;
            if self.written_once {
                return Ok(());
            }
            tried += 1;
            let (permanent, retryable) = self.once_problems();
            if let Some(problem) = permanent {
                return Err(crate::Error::Once(problem));
            }
            if tried >= attempts {
                return Err(crate::Error::OnceGaveUp {
                    attempts: tried,
                    problem: retryable.unwrap_or_else(|| OnceProblem {
                        secret: None,
                        problem: "the files could not be written".to_owned(),
                    }),
                });
            }
            let next = self.next_due();
            tokio::time::sleep_until(next).await;
        }
    }

    /// (the first permanent problem, the first retryable one).
    fn once_problems(&self) -> (Option<OnceProblem>, Option<OnceProblem>) {
        if let Some(e) = &self.render_error {
            let problem = OnceProblem {
                secret: None,
                problem: e.clone(),
            };
            return (Some(problem), None);
        }
        let mut retryable = None;
        for (name, t) in &self.tracked {
            match &t.last_error {
                Some((e, false)) if t.value.is_none() => {
                    let problem = OnceProblem {
                        secret: Some(name.clone()),
                        problem: e.clone(),
                    };
                    return (Some(problem), None);
                }
                Some((e, true)) if retryable.is_none() => {
                    retryable = Some(OnceProblem {
                        secret: Some(name.clone()),
                        problem: e.clone(),
                    })
                }
                _ => {}
            }
        }
        (None, retryable)
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut config: Option<watch::Receiver<PodSecrets>>,
        mut push: mpsc::Receiver<PushRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> AtomicWriter {
        tokio::pin!(shutdown);
        let mut gc = tokio::time::interval(Duration::from_secs(1));
        self.sync_watchers();
        loop {
            let next = self.next_due();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                changed = async {
                    match config.as_mut() {
                        Some(rx) => rx.changed().await.map(|()| rx.borrow_and_update().clone()),
                        None => std::future::pending().await,
                    }
                } => match changed {
                    Ok(contract) => self.apply_contract(contract).await,
                    Err(_) => config = None,
                },
                linked = async {
                    match self.link.as_mut() {
                        Some(rx) => rx.changed().await.map(|()| *rx.borrow_and_update()),
                        None => std::future::pending().await,
                    }
                } => match linked {
                    Ok(link) => self.relink(link),
                    Err(_) => {
                        self.link = None;
                        self.relink(Link::Down);
                    }
                },
                Some(request) = push.recv() => self.handle_push(request).await,
                Some(name) = self.nudges.1.recv() => {
                    if self.tracked.contains_key(&name) {
                        let outcome = self.check(&name).await;
                        self.schedule(&name, outcome);
                        if outcome == Check::Changed {
                            self.publish("watch", None).await;
                        }
                    }
                }
                () = tokio::time::sleep_until(next) => self.poll_due().await,
                _ = gc.tick() => {
                    if self.unwritten {
                        self.publish("retry", None).await;
                    }
                    if let Err(e) = self.writer.gc() {
                        tracing::warn!(error = %e, "removing old data directories failed");
                    }
                }
            }
        }
        for (_, w) in std::mem::take(&mut self.watchers) {
            w.abort();
        }
        self.writer
    }

    /// Starts a watch for each secret whose store can watch, and stops the
    /// watches of secrets no longer read.
    fn sync_watchers(&mut self) {
        self.watchers.retain(|name, task| {
            let keep = self.tracked.contains_key(name);
            if !keep {
                task.abort();
            }
            keep
        });
        for name in self.tracked.keys() {
            if self.watchers.contains_key(name) {
                continue;
            }
            if let Some(mut changes) = self.store.changes(name) {
                let (tx, name_owned) = (self.nudges.0.clone(), name.clone());
                let task = tokio::spawn(async move {
                    use futures_util::StreamExt;
                    while changes.next().await.is_some() {
                        if tx.send(name_owned.clone()).await.is_err() {
                            break;
                        }
                    }
                });
                self.watchers.insert(name.clone(), task);
            }
        }
    }

    fn next_due(&self) -> Instant {
        self.tracked
            .values()
            .map(|t| t.next_poll)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Makes the tracked set match the contract's secrets.
    fn sync_tracked(&mut self) {
        let wanted: Vec<String> = self
            .contract
            .secret_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let dropped: Vec<String> = self
            .tracked
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for name in dropped {
            self.tracked.remove(&name);
            self.shared.metrics.forget(&name);
        }
        for name in wanted {
            if let std::collections::btree_map::Entry::Vacant(entry) = self.tracked.entry(name) {
                self.shared.metrics.track(entry.key());
                entry.insert(Tracked::new());
            }
        }
        for action in &self.contract.reload {
            self.shared.metrics.track_reload(action.kind());
        }
    }

    async fn apply_contract(&mut self, contract: PodSecrets) {
        if contract == self.contract {
            return;
        }
        if contract.store != self.contract.store {
            tracing::warn!(
                old = ?self.contract.store,
                new = ?contract.store,
                "rotor.dev/store changed; the store is fixed at start, so restart the pod to switch stores"
            );
        }
        let refresh_changed = contract.refresh != self.contract.refresh;
        tracing::info!(files = contract.files.len(), refresh = ?contract.refresh, reload_actions = contract.reload.len(), "annotations changed; applying");
        self.contract = contract;
        self.sync_tracked();
        self.sync_watchers();
        if refresh_changed {
            for t in self.tracked.values_mut() {
                t.next_poll = t
                    .next_poll
                    .min(Instant::now() + spread(self.contract.refresh, &*self.random));
            }
        }
        // New secrets are due now; fetch them, then write the new file set.
        let new: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.value.is_none() && !t.missing)
            .map(|(k, _)| k.clone())
            .collect();
        for name in &new {
            let outcome = self.check(name).await;
            self.schedule(name, outcome);
        }
        self.publish("config", None).await;
    }

    async fn poll_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.next_poll <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = false;
        let link = self.current_link();
        for name in &due {
            let interval = if link.safety_net(self.watchers.contains_key(name)) {
                "safety_net"
            } else {
                "refresh"
            };
            self.shared.metrics.polled(interval);
            let outcome = self.check(name).await;
            self.schedule(name, outcome);
            changed |= outcome == Check::Changed;
        }
        if changed || !self.written_once || self.unwritten {
            self.publish("poll", None).await;
        }
        self.shared.poll_finished();
    }

    /// Checks one secret and fetches it if it changed.
    async fn check(&mut self, name: &str) -> Check {
        self.look(name, false).await
    }

    /// Fetches one secret without checking its version first (the
    /// controller announced a new one).
    async fn fetch(&mut self, name: &str) -> Check {
        self.look(name, true).await
    }

    async fn look(&mut self, name: &str, skip_version_check: bool) -> Check {
        let now = Instant::now();
        let t = self.tracked.get_mut(name).expect("tracked");
        if t.pin
            .as_ref()
            .is_some_and(|(_, at)| now.duration_since(*at) > self.options.pin_ttl)
        {
            tracing::warn!(
                secret = name,
                "version pin expired; following CURRENT again"
            );
            t.pin = None;
        }
        let pinned = t.pin.as_ref().map(|(v, _)| v.clone());
        if t.value.is_some() && !skip_version_check {
            // Cheap check first.
            match self.store.current_version(name).await {
                Ok(current) => {
                    self.shared.metrics.success(name, SystemTime::now());
                    let t = self.tracked.get_mut(name).expect("tracked");
                    t.missing = false;
                    let seen = observe_current(t.version.as_ref(), pinned.as_ref(), &current);
                    if seen.pin_promoted {
                        t.pin = None; // promoted: the store caught up with the pin
                    }
                    if !seen.read {
                        return Check::Unchanged;
                    }
                    // Pinned: whether the pin is still PENDING takes a read.
                }
                Err(e) => return self.failed(name, e),
            }
        }
        let t = self.tracked.get(name).expect("tracked");
        let selector = match t.pin {
            Some(_) => Selector::Stage(Stage::Pending),
            None => Selector::Current,
        };
        match self.store.read(name, &selector).await {
            Ok(fetched) if pinned.as_ref().is_some_and(|pin| *pin != fetched.version) => {
                tracing::warn!(
                    secret = name,
                    pinned = %pinned.as_ref().expect("pinned"),
                    pending = %fetched.version,
                    "pinned version is no longer PENDING; following CURRENT again"
                );
                self.tracked.get_mut(name).expect("tracked").pin = None;
                Box::pin(self.look(name, skip_version_check)).await
            }
            Ok(fetched) => self.install(name, fetched),
            Err(e) if e.is_not_found() && pinned.is_some() => {
                tracing::warn!(secret = name, error = %e, "pinned version is no longer PENDING; following CURRENT again");
                self.tracked.get_mut(name).expect("tracked").pin = None;
                Box::pin(self.look(name, skip_version_check)).await
            }
            Err(e) => self.failed(name, e),
        }
    }

    /// Takes a fetched version as the one served.
    fn install(&mut self, name: &str, fetched: Fetched) -> Check {
        let at = SystemTime::now();
        self.shared.metrics.success(name, at);
        self.shared.metrics.served(name, &fetched.version.0);
        let t = self.tracked.get_mut(name).expect("tracked");
        let served = t
            .version
            .as_ref()
            .zip(t.value.as_ref().map(|v| v.expose_secret()));
        let change = observe(served, &fetched.version, fetched.value.expose_secret());
        if change != Change::None {
            tracing::info!(secret = name, version = %fetched.version, "fetched a new version");
        }
        t.last_error = None;
        t.version = Some(fetched.version);
        t.created_at = fetched.created_at;
        t.value = Some(fetched.value);
        t.missing = false;
        match change {
            Change::Value => Check::Changed,
            Change::Version | Change::None => Check::Unchanged,
        }
    }

    fn failed(&mut self, name: &str, e: rotor_store::Error) -> Check {
        self.shared.metrics.fetch_error(name, e.metric_label());
        let delete = self.contract.on_missing == OnMissing::Delete;
        let t = self.tracked.get_mut(name).expect("tracked");
        if e.is_not_found() && t.value.is_some() {
            if !t.missing {
                if delete {
                    tracing::warn!(
                        secret = name,
                        "secret disappeared from the store; removing its files (rotor.dev/on-missing: delete)"
                    );
                } else {
                    tracing::warn!(
                        secret = name,
                        "secret disappeared from the store; keeping its last files (rotor.dev/on-missing: keep)"
                    );
                }
            }
            t.missing = true;
            if delete {
                t.value = None;
                t.version = None;
                return Check::Changed;
            }
            return Check::Unchanged;
        }
        let cause = rotor_telemetry::Chain(&e).to_string();
        tracing::warn!(secret = name, error = %cause, failures = t.retry.failures() + 1, retryable = e.is_retryable(), "fetch failed; keeping the last good files");
        t.last_error = Some((cause, e.is_retryable()));
        if e.is_retryable() {
            Check::Failed
        } else {
            Check::Refused
        }
    }

    /// Sets when `name` is checked next, after a check ended in `outcome`:
    /// a spread refresh interval after a success, the backoff after a
    /// transient failure. Exports whether what is served now is not the
    /// store's CURRENT: pinned to PENDING, or lagging after a failure.
    fn schedule(&mut self, name: &str, outcome: Check) {
        let ok = outcome != Check::Failed;
        let refresh = self.contract.refresh;
        let interval = self
            .current_link()
            .poll_interval(refresh, self.watchers.contains_key(name));
        let backoff = Backoff::new(
            self.options.backoff_base,
            self.options.backoff_cap.min(refresh),
        );
        let t = self.tracked.get_mut(name).expect("tracked");
        let lagging = matches!(outcome, Check::Failed | Check::Refused) || t.missing;
        self.shared
            .metrics
            .not_current(name, t.pin.is_some() || lagging);
        let delay = if ok {
            t.retry.reset();
            spread(interval, &*self.random)
        } else {
            t.retry.failed(backoff, &*self.random)
        };
        t.looked_at = Instant::now();
        t.next_poll = t.looked_at + delay;
    }
}

#[cfg(test)]
mod tests;
