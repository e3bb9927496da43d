//! The refresh engine: fetches the pod's secrets, writes them, keeps them
//! fresh, and runs the reload actions after a change.
//!
//! One task owns all state. It wakes for the next due poll, an annotation
//! change, a push request or shutdown, so a push and a poll never race.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ring::rand::SecureRandom;
use rotor_crds::annotations::{FileSource, OnMissing, PodSecrets, template_references};
use rotor_envelope::{ExposeSecret, Plaintext};
use rotor_store::{Fetched, Selector, Stage, Store, VersionId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::render::render;
use crate::writer::{AtomicWriter, Outcome};

/// State the HTTP endpoints read.
#[derive(Default)]
pub struct Shared {
    /// The first complete set of files is written.
    pub ready: AtomicBool,
    /// The last write failed: the files are not what the engine would
    /// serve, and it retries every second.
    pub writes_failing: AtomicBool,
    pub metrics: Metrics,
}

impl Shared {
    /// Ready: the first complete set is written and writing works.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the sidecar is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::Acquire) {
            Some("waiting for the first complete write")
        } else if self.writes_failing.load(Ordering::Acquire) {
            Some("the files cannot be written (see the log); retrying")
        } else {
            None
        }
    }

    fn set_writes_failing(&self, failing: bool) {
        self.writes_failing.store(failing, Ordering::Release);
        self.metrics
            .set_ready(!failing && self.ready.load(Ordering::Acquire));
    }
}

/// `POST /v1/refresh` body: the secrets to refetch now, each optionally
/// pinned to the store's PENDING version (a rotation's target). An empty list
/// refetches every secret.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    #[serde(default)]
    pub secrets: Vec<PushSecret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSecret {
    pub name: String,
    /// Serve this version, which must be the store's PENDING version of the
    /// secret, until it stops being PENDING (promoted to CURRENT or retired),
    /// a later push changes it, or the pin expires. Naming the CURRENT
    /// version is the same as naming none; any other version is refused.
    /// Without a version, CURRENT is served (and a pin released).
    #[serde(default)]
    pub version: Option<String>,
}

/// The acknowledgement: the version now served for each secret.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushReply {
    pub ok: bool,
    /// Set when the request was refused as a whole and changed nothing (a
    /// pin to a version that is not PENDING): HTTP 409. `secrets` then
    /// lists the refused secrets, each with the version it still serves.
    #[serde(rename = "error", skip_serializing_if = "Option::is_none", default)]
    pub refused: Option<String>,
    pub secrets: Vec<PushAck>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushAck {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

pub struct PushRequest {
    pub body: PushBody,
    pub received: Instant,
    pub reply: oneshot::Sender<PushReply>,
}

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
            default_file_mode: rotor_crds::annotations::DEFAULT_FILE_MODE,
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
    failures: u32,
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
            failures: 0,
            missing: false,
            last_error: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Unchanged,
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
        };
        engine.sync_tracked();
        engine
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
                return Err(crate::Error::Once(format!(
                    "gave up after {tried} attempts: {}",
                    retryable.unwrap_or_else(|| "the files could not be written".to_owned())
                )));
            }
            let next = self.next_due();
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// (the first permanent problem, the first retryable one).
    fn once_problems(&self) -> (Option<String>, Option<String>) {
        if let Some(e) = &self.render_error {
            return (Some(e.clone()), None);
        }
        let mut retryable = None;
        for (name, t) in &self.tracked {
            match &t.last_error {
                Some((e, false)) if t.value.is_none() => {
                    return (Some(format!("secret {name:?}: {e}")), None);
                }
                Some((e, true)) if retryable.is_none() => {
                    retryable = Some(format!("secret {name:?}: {e}"))
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
                Some(request) = push.recv() => self.handle_push(request).await,
                Some(name) = self.nudges.1.recv() => {
                    if self.tracked.contains_key(&name) {
                        let outcome = self.check(&name).await;
                        self.schedule(&name, outcome != Check::Failed);
                        if outcome == Check::Changed {
                            self.publish("watch", None).await;
                        }
                    }
                }
                () = tokio::time::sleep_until(next.into()) => self.poll_due().await,
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
            self.tracked.entry(name).or_insert_with(Tracked::new);
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
                    .min(Instant::now() + jittered(self.contract.refresh));
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
            self.schedule(name, outcome != Check::Failed);
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
        for name in &due {
            let outcome = self.check(name).await;
            self.schedule(name, outcome != Check::Failed);
            changed |= outcome == Check::Changed;
        }
        if changed || !self.written_once || self.unwritten {
            self.publish("poll", None).await;
        }
    }

    /// Checks one secret and fetches it if it changed.
    async fn check(&mut self, name: &str) -> Check {
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
        if t.value.is_some() {
            // Cheap check first.
            match self.store.current_version(name).await {
                Ok(current) => {
                    self.shared.metrics.success(name, SystemTime::now());
                    let t = self.tracked.get_mut(name).expect("tracked");
                    t.missing = false;
                    if pinned.as_ref() == Some(&current) {
                        t.pin = None; // promoted: the store caught up with the pin
                    }
                    if t.pin.is_none() && t.version.as_ref() == Some(&current) {
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
                Box::pin(self.check(name)).await
            }
            Ok(fetched) => self.install(name, fetched),
            Err(e) if e.is_not_found() && pinned.is_some() => {
                tracing::warn!(secret = name, error = %e, "pinned version is no longer PENDING; following CURRENT again");
                self.tracked.get_mut(name).expect("tracked").pin = None;
                Box::pin(self.check(name)).await
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
        let changed = t.version.as_ref() != Some(&fetched.version)
            || t.value
                .as_ref()
                .is_none_or(|v| v.expose_secret() != fetched.value.expose_secret());
        if changed {
            tracing::info!(secret = name, version = %fetched.version, "fetched a new version");
        }
        t.last_error = None;
        t.version = Some(fetched.version);
        t.created_at = fetched.created_at;
        t.value = Some(fetched.value);
        t.missing = false;
        if changed {
            Check::Changed
        } else {
            Check::Unchanged
        }
    }

    /// Whether a push may pin `name` to `version`: only the store's PENDING
    /// version (the rotation target) may be pinned. Naming CURRENT is the
    /// same as naming no version. Anything else, such as an older and
    /// possibly revoked version, is refused.
    async fn admit_pin(&self, name: &str, version: &str) -> PinAdmission {
        let asked = VersionId(version.to_owned());
        let refused = |why: &str| {
            PinAdmission::Refused(format!(
                "version {version:?} of secret {name:?} cannot be pinned: {why}; \
                 only the store's PENDING version (the rotation target) may be pinned. \
                 To serve CURRENT again, push without a version"
            ))
        };
        match self
            .store
            .read(name, &Selector::Stage(Stage::Pending))
            .await
        {
            Ok(pending) if pending.version == asked => return PinAdmission::Pending(pending),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return PinAdmission::Unavailable(e),
        }
        match self.store.current_version(name).await {
            Ok(current) if current == asked => PinAdmission::Current,
            Ok(_) => refused("it is not the PENDING version"),
            Err(e) if e.is_not_found() => refused("the secret has no such version"),
            Err(e) => PinAdmission::Unavailable(e),
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
        tracing::warn!(secret = name, error = %cause, failures = t.failures + 1, retryable = e.is_retryable(), "fetch failed; keeping the last good files");
        t.last_error = Some((cause, e.is_retryable()));
        if e.is_retryable() {
            Check::Failed
        } else {
            Check::Refused
        }
    }

    fn schedule(&mut self, name: &str, ok: bool) {
        let refresh = self.contract.refresh;
        let (base, cap) = (
            self.options.backoff_base,
            self.options.backoff_cap.min(refresh),
        );
        let t = self.tracked.get_mut(name).expect("tracked");
        let delay = if ok {
            t.failures = 0;
            jittered(refresh)
        } else {
            t.failures = t.failures.saturating_add(1);
            let exp = base.saturating_mul(1u32 << t.failures.min(16)).min(cap);
            // Full jitter over [exp/2, exp].
            exp / 2 + jittered_fraction(exp / 2)
        };
        t.next_poll = Instant::now() + delay;
    }

    /// Renders and writes the files from what is fetched; runs the reload
    /// actions when something changed after the first write.
    async fn publish(&mut self, trigger: &str, since: Option<Instant>) -> bool {
        if !self.written_once && self.tracked.values().any(|t| t.value.is_none()) {
            return false; // not everything fetched yet
        }
        let (contract, values) = self.effective();
        let files = match render(&contract, &values, self.options.default_file_mode) {
            Ok(f) => {
                self.render_error = None;
                f
            }
            Err(e) => {
                tracing::error!(error = %e, "rendering failed; keeping the last good files");
                self.render_error = Some(e.to_string());
                return false;
            }
        };
        let outcome = match self.writer.write(&files) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "writing failed; not ready until a write works again");
                self.unwritten = true;
                self.shared.set_writes_failing(true);
                return false;
            }
        };
        let first = !self.written_once;
        self.written_once = true;
        self.unwritten = false;
        self.shared.ready.store(true, Ordering::Release);
        self.shared.set_writes_failing(false);
        if outcome == Outcome::Unchanged {
            return true;
        }
        self.shared.metrics.swapped();
        match since {
            Some(at) => self
                .shared
                .metrics
                .change_to_file(trigger, at.elapsed().as_secs_f64()),
            None => {
                // Measure from when the store made the newest version.
                if let Some(created) = self.tracked.values().filter_map(|t| t.created_at).max()
                    && let Ok(age) = SystemTime::now().duration_since(created)
                    && !first
                {
                    self.shared
                        .metrics
                        .change_to_file(trigger, age.as_secs_f64());
                }
            }
        }
        tracing::info!(files = files.len(), trigger, "files written");
        if !first {
            self.reload().await;
        }
        true
    }

    /// The contract without files whose secret is gone (on-missing:
    /// delete) and templates that need them, plus the values.
    fn effective(&self) -> (PodSecrets, BTreeMap<String, Plaintext>) {
        let values: BTreeMap<String, Plaintext> = self
            .tracked
            .iter()
            .filter_map(|(k, t)| {
                t.value
                    .as_ref()
                    .map(|v| (k.clone(), Plaintext::from(v.expose_secret().to_vec())))
            })
            .collect();
        let mut contract = self.contract.clone();
        contract.files.retain(|_, source| match source {
            FileSource::Secret { name, .. } => values.contains_key(name),
            FileSource::Template { .. } => true,
        });
        let present = contract.files.clone();
        contract.files.retain(|_, source| match source {
            FileSource::Template { source } => template_references(source)
                .iter()
                .all(|r| present.contains_key(r)),
            FileSource::Secret { .. } => true,
        });
        (contract, values)
    }

    async fn reload(&self) {
        for action in &self.contract.reload {
            let started = Instant::now();
            let result = self.reloader.run(action).await;
            self.shared.metrics.reload(action.kind(), result.is_ok());
            match result {
                Ok(()) => {
                    tracing::info!(action = %action, elapsed = ?started.elapsed(), "reload action succeeded")
                }
                Err(e) => tracing::warn!(action = %action, error = %e, "reload action failed"),
            }
        }
    }

    async fn handle_push(&mut self, request: PushRequest) {
        let PushRequest {
            body,
            received,
            reply,
        } = request;
        let names: Vec<PushSecret> = if body.secrets.is_empty() {
            self.tracked
                .keys()
                .map(|name| PushSecret {
                    name: name.clone(),
                    version: None,
                })
                .collect()
        } else {
            body.secrets
        };
        // Every pin is checked against the store before anything changes.
        let mut admitted = BTreeMap::new();
        let mut refused = Vec::new();
        for s in &names {
            if let (Some(version), true) = (&s.version, self.tracked.contains_key(&s.name)) {
                match self.admit_pin(&s.name, version).await {
                    PinAdmission::Refused(why) => {
                        tracing::warn!(
                            secret = s.name,
                            version,
                            "push refused: only the PENDING version may be pinned"
                        );
                        refused.push(PushAck {
                            name: s.name.clone(),
                            version: self.tracked[&s.name].version.as_ref().map(|v| v.0.clone()),
                            error: Some(why),
                        });
                    }
                    admission => {
                        admitted.insert(s.name.clone(), admission);
                    }
                }
            }
        }
        if !refused.is_empty() {
            let _ = reply.send(PushReply {
                ok: false,
                refused: Some(
                    "refused: a pin may name only the store's PENDING version of a secret; nothing was changed"
                        .to_owned(),
                ),
                secrets: refused,
            });
            return;
        }
        let mut acks = Vec::new();
        let mut failed = false;
        for s in &names {
            let Some(t) = self.tracked.get_mut(&s.name) else {
                acks.push(PushAck {
                    name: s.name.clone(),
                    version: None,
                    error: Some("this pod does not read this secret".to_owned()),
                });
                failed = true;
                continue;
            };
            let outcome = match admitted.remove(&s.name) {
                Some(PinAdmission::Pending(fetched)) => {
                    t.pin = Some((fetched.version.clone(), Instant::now()));
                    self.install(&s.name, fetched)
                }
                Some(PinAdmission::Unavailable(e)) => {
                    tracing::warn!(secret = s.name, error = %e, "cannot check a pushed pin against the store; keeping what is served");
                    acks.push(PushAck {
                        name: s.name.clone(),
                        version: t.version.as_ref().map(|v| v.0.clone()),
                        error: Some(format!("cannot check the version against the store: {e}")),
                    });
                    failed = true;
                    continue;
                }
                // No version, or CURRENT named (refusals returned above).
                _ => {
                    t.pin = None;
                    self.check(&s.name).await
                }
            };
            self.schedule(&s.name, outcome != Check::Failed);
            failed |= matches!(outcome, Check::Failed | Check::Refused);
        }
        let written = self.publish("push", Some(received)).await;
        for s in names.iter().filter(|s| self.tracked.contains_key(&s.name)) {
            if acks.iter().any(|a| a.name == s.name) {
                continue;
            }
            let t = &self.tracked[&s.name];
            let mismatch = s
                .version
                .as_ref()
                .is_some_and(|v| t.version.as_ref().map(|x| &x.0) != Some(v));
            acks.push(PushAck {
                name: s.name.clone(),
                version: t.version.as_ref().map(|v| v.0.clone()),
                error: mismatch.then(|| "the requested version could not be fetched".to_owned()),
            });
            failed |= mismatch;
        }
        let _ = reply.send(PushReply {
            ok: written && !failed,
            refused: None,
            secrets: acks,
        });
    }
}

/// What [`Engine::admit_pin`] found.
enum PinAdmission {
    /// The PENDING version, read.
    Pending(Fetched),
    /// The CURRENT version: serve CURRENT, no pin.
    Current,
    Refused(String),
    /// The store could not say.
    Unavailable(rotor_store::Error),
}

/// `d` minus up to 10%, so that polls spread out but never come late.
fn jittered(d: Duration) -> Duration {
    d - jittered_fraction(d / 10)
}

/// A uniformly random duration in `[0, d]`.
fn jittered_fraction(d: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return d / 2;
    }
    d.mul_f64(f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests;
