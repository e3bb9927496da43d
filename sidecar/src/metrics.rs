//! The sidecar's Prometheus metrics. Labels carry secret names, version
//! ids and action kinds: never a value.
//!
//! Secret names and versions only with `--metrics-secret-names`: the
//! admin port answers the kubelet's probes, so in a cluster it listens on
//! the pod IP, where any pod can scrape it. Without the flag each secret
//! is labelled by its order of first use in this process (`secret="#1"`),
//! and `rotor_secret_served` has `version="-"`: every series (staleness,
//! errors, not-current) is still there for alerts, but names no secret.
//!
//! The counters alerts take `increase()` of start at 0: a secret's fetch
//! errors for every reason from the moment it is tracked ([`Metrics::track`]),
//! each configured reload action's success and failure
//! ([`Metrics::track_reload`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The `result` of `rotor_reload_total`: success, then failure.
const RELOAD_RESULTS: [&str; 2] = ["success", "failure"];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn change_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    ready: Gauge,
    served: Family<Labels, Gauge>,
    not_current: Family<Labels, Gauge>,
    last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    staleness: Family<Labels, Gauge<f64, AtomicU64>>,
    fetch_errors: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    writes: Counter,
    repairs: Counter,
    config_errors: Counter,
    inotify_fallbacks: Counter,
    channel_connected: Gauge,
    polls: Family<Labels, Counter>,
    change_to_file: Family<Labels, Histogram, fn() -> Histogram>,
    /// Last successful fetch per secret, for staleness at scrape time.
    successes: Mutex<BTreeMap<String, SystemTime>>,
    /// The version label now exported per secret, to drop the old series.
    served_versions: Mutex<BTreeMap<String, String>>,
    /// Export secret names and versions (`--metrics-secret-names`).
    secret_names: bool,
    /// Without names: each secret's label (`#1`, `#2`, …), and the last
    /// number given (never reused).
    ids: Mutex<(BTreeMap<String, String>, u64)>,
}

/// With secret names, as tests read them; the binary takes the flag.
impl Default for Metrics {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Metrics {
    /// `secret_names`: label series with secret names and versions (else
    /// with `#N` and `-`).
    pub fn new(secret_names: bool) -> Self {
        let mut root = Registry::default();
        rotor_telemetry::metrics::register(&mut root, "rotor-sidecar");
        let registry = root.sub_registry_with_prefix("rotor");
        let ready = Gauge::default();
        let served = Family::<Labels, Gauge>::default();
        let not_current = Family::<Labels, Gauge>::default();
        let last_success = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let staleness = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let fetch_errors = Family::<Labels, Counter>::default();
        let reloads = Family::<Labels, Counter>::default();
        let writes = Counter::default();
        let repairs = Counter::default();
        let config_errors = Counter::default();
        let inotify_fallbacks = Counter::default();
        let change_to_file =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(change_histogram);
        registry.register(
            "sidecar_ready",
            "1 once the first complete set of files is written, 0 while writing fails",
            ready.clone(),
        );
        registry.register(
            "secret_served",
            "The version of each secret now served (1 per secret and version)",
            served.clone(),
        );
        registry.register(
            "secret_not_current",
            "1 while a secret is served at a version other than the store's CURRENT \
             (pinned to PENDING by a push, or lagging after a failed check), else 0",
            not_current.clone(),
        );
        registry.register(
            "secret_last_success_timestamp_seconds",
            "When each secret was last fetched or confirmed unchanged",
            last_success.clone(),
        );
        registry.register(
            "secret_staleness_seconds",
            "Seconds since each secret was last fetched or confirmed unchanged",
            staleness.clone(),
        );
        registry.register(
            "secret_fetch_errors",
            "Failed fetches and checks per secret, by reason",
            fetch_errors.clone(),
        );
        registry.register(
            "reload",
            "Reload actions run, by kind and result",
            reloads.clone(),
        );
        registry.register(
            "files_swaps",
            "Atomic swaps of the output directory",
            writes.clone(),
        );
        registry.register(
            "files_repairs",
            "Links of the output directory (..data, a file's) found pointing elsewhere than the \
             writer left them, and pointed back: another process of the sidecar's uid writes there",
            repairs.clone(),
        );
        registry.register(
            "config_errors",
            "Annotation changes refused as invalid",
            config_errors.clone(),
        );
        registry.register(
            "inotify_fallbacks",
            "Watches that could not get an inotify instance or watch (the uid's inotify limits \
             used up) and check their file on a timer instead",
            inotify_fallbacks.clone(),
        );
        let channel_connected = Gauge::default();
        registry.register(
            "sidecar_channel_connected",
            "1 while the stream to the controller is up, else 0",
            channel_connected.clone(),
        );
        let polls = Family::<Labels, Counter>::default();
        for interval in ["refresh", "safety_net"] {
            let _ = polls.get_or_create(&labels(&[("interval", interval)]));
        }
        registry.register(
            "sidecar_polls",
            "Version checks of a secret on the sidecar's own timer: at its refresh interval, or at \
             the safety-net interval while the controller detects changes for it",
            polls.clone(),
        );
        registry.register(
            "change_to_file_seconds",
            "From a version's creation in the store (poll) or a push request (push) to its file being written",
            change_to_file.clone(),
        );
        Self {
            registry: root,
            ready,
            served,
            not_current,
            last_success,
            staleness,
            fetch_errors,
            reloads,
            writes,
            repairs,
            config_errors,
            inotify_fallbacks,
            channel_connected,
            polls,
            change_to_file,
            successes: Mutex::default(),
            served_versions: Mutex::default(),
            secret_names,
            ids: Mutex::default(),
        }
    }

    /// The `secret` label of `secret`.
    fn secret_label(&self, secret: &str) -> String {
        if self.secret_names {
            return secret.to_owned();
        }
        let mut guard = self.ids.lock().expect("metrics lock");
        let (ids, last) = &mut *guard;
        ids.entry(secret.to_owned())
            .or_insert_with(|| {
                *last += 1;
                format!("#{last}")
            })
            .clone()
    }

    /// The `version` label of `version`.
    fn version_label<'a>(&self, version: &'a str) -> &'a str {
        if self.secret_names { version } else { "-" }
    }
}

impl Metrics {
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn success(&self, secret: &str, at: SystemTime) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success
            .get_or_create(&labels(&[("secret", &self.secret_label(secret))]))
            .set(secs);
        self.successes
            .lock()
            .expect("metrics lock")
            .insert(secret.to_owned(), at);
    }

    pub fn served(&self, secret: &str, version: &str) {
        let label = self.secret_label(secret);
        let version = self.version_label(version);
        let mut versions = self.served_versions.lock().expect("metrics lock");
        if let Some(old) = versions.insert(secret.to_owned(), version.to_owned())
            && old != version
        {
            self.served
                .remove(&labels(&[("secret", &label), ("version", &old)]));
        }
        self.served
            .get_or_create(&labels(&[("secret", &label), ("version", version)]))
            .set(1);
    }

    /// Whether `secret` is served at a version other than the store's
    /// CURRENT.
    pub fn not_current(&self, secret: &str, not_current: bool) {
        self.not_current
            .get_or_create(&labels(&[("secret", &self.secret_label(secret))]))
            .set(i64::from(not_current));
    }

    /// Drops every series of a secret the pod no longer reads.
    pub fn forget(&self, secret: &str) {
        let label = self.secret_label(secret);
        if let Some(v) = self
            .served_versions
            .lock()
            .expect("metrics lock")
            .remove(secret)
        {
            self.served
                .remove(&labels(&[("secret", &label), ("version", &v)]));
        }
        self.successes.lock().expect("metrics lock").remove(secret);
        self.last_success.remove(&labels(&[("secret", &label)]));
        self.staleness.remove(&labels(&[("secret", &label)]));
        self.not_current.remove(&labels(&[("secret", &label)]));
        for reason in rotor_store::Error::metric_labels() {
            self.fetch_errors
                .remove(&labels(&[("secret", &label), ("reason", reason)]));
        }
        self.ids.lock().expect("metrics lock").0.remove(secret);
    }

    /// Exports `secret`'s fetch-error counters at 0 for every reason (a
    /// store's error kinds, [`rotor_store::Error::metric_labels`]), so an
    /// `increase()` alert sees the first failure.
    pub fn track(&self, secret: &str) {
        let label = self.secret_label(secret);
        for reason in rotor_store::Error::metric_labels() {
            let _ = self
                .fetch_errors
                .get_or_create(&labels(&[("secret", &label), ("reason", reason)]));
        }
    }

    /// Exports the reload counters of an action kind at 0 for each result.
    pub fn track_reload(&self, kind: &str) {
        for result in RELOAD_RESULTS {
            let _ = self
                .reloads
                .get_or_create(&labels(&[("action", kind), ("result", result)]));
        }
    }

    pub fn fetch_error(&self, secret: &str, reason: &str) {
        self.fetch_errors
            .get_or_create(&labels(&[
                ("secret", &self.secret_label(secret)),
                ("reason", reason),
            ]))
            .inc();
    }

    pub fn reload(&self, kind: &str, ok: bool) {
        let result = RELOAD_RESULTS[usize::from(!ok)];
        self.reloads
            .get_or_create(&labels(&[("action", kind), ("result", result)]))
            .inc();
    }

    pub fn swapped(&self) {
        self.writes.inc();
    }

    /// The writer's repair count so far (it only grows).
    pub fn repairs(&self, total: u64) {
        let seen = self.repairs.get();
        if total > seen {
            self.repairs.inc_by(total - seen);
        }
    }

    /// A watch fell back to polling (see `watch::FALLBACK_POLL`).
    pub fn inotify_fallback(&self) {
        self.inotify_fallbacks.inc();
    }

    /// Whether the stream to the controller is up.
    pub fn channel_connected(&self, up: bool) {
        self.channel_connected.set(i64::from(up));
    }

    /// A secret polled on the sidecar's own timer, at `interval`
    /// (`refresh` or `safety_net`).
    pub fn polled(&self, interval: &str) {
        self.polls
            .get_or_create(&labels(&[("interval", interval)]))
            .inc();
    }

    pub fn config_error(&self) {
        self.config_errors.inc();
    }

    pub fn change_to_file(&self, trigger: &str, seconds: f64) {
        self.change_to_file
            .get_or_create(&labels(&[("trigger", trigger)]))
            .observe(seconds);
    }

    /// Seconds since the last success of one secret.
    pub fn staleness_of(&self, secret: &str) -> Option<f64> {
        let successes = self.successes.lock().expect("metrics lock");
        successes
            .get(secret)
            .map(|at| at.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0))
    }

    /// The text exposition, with staleness computed now.
    pub fn encode(&self) -> String {
        let now = SystemTime::now();
        for (secret, at) in self.successes.lock().expect("metrics lock").iter() {
            let age = now
                .duration_since(*at)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.staleness
                .get_or_create(&labels(&[("secret", &self.secret_label(secret))]))
                .set(age);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `--metrics-secret-names`, no secret name or version reaches
    /// the scrape; each secret keeps one label, never reused.
    #[test]
    fn secret_names_and_versions_only_when_asked_for() {
        let hidden = Metrics::new(false);
        let named = Metrics::new(true);
        for m in [&hidden, &named] {
            m.served("app/canary-name", "canary-version-7");
            m.success("app/canary-name", SystemTime::now());
            m.fetch_error("app/canary-name", "unreachable");
            m.not_current("app/canary-name", false);
            m.served("other", "1");
            m.forget("other");
            m.served("third", "2");
        }
        let text = hidden.encode();
        assert!(!text.contains("canary"), "{text}");
        assert!(
            text.contains(r##"rotor_secret_served{secret="#1",version="-"} 1"##)
                && text.contains(
                    r##"rotor_secret_fetch_errors_total{secret="#1",reason="unreachable"} 1"##
                )
                && text.contains(r##"rotor_secret_served{secret="#3",version="-"} 1"##)
                && !text.contains(r##"secret="#2""##),
            "{text}"
        );
        let text = named.encode();
        assert!(
            text.contains(
                r#"rotor_secret_served{secret="app/canary-name",version="canary-version-7"} 1"#
            ),
            "{text}"
        );
    }

    /// A tracked secret has every reason at 0 before its first failure, a
    /// reload action both results; a forgotten secret loses its series.
    #[test]
    fn tracked_secrets_and_reload_actions_start_at_zero() {
        let m = Metrics::new(true);
        m.track("db");
        m.track("gone");
        m.track_reload("signal");
        m.fetch_error("db", "unreachable");
        m.forget("gone");
        let text = m.encode();
        for reason in rotor_store::Error::metric_labels() {
            let value = if reason == "unreachable" { 1 } else { 0 };
            let series = format!(
                "rotor_secret_fetch_errors_total{{secret=\"db\",reason=\"{reason}\"}} {value}\n"
            );
            assert!(text.contains(&series), "{series} missing in {text}");
        }
        assert!(!text.contains("secret=\"gone\""), "{text}");
        for result in ["success", "failure"] {
            let series = format!("rotor_reload_total{{action=\"signal\",result=\"{result}\"}} 0\n");
            assert!(text.contains(&series), "{series} missing in {text}");
        }
    }
}
