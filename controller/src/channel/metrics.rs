//! The channel's metrics: streams open, streams refused at admission and
//! streams cut off later, each by reason (a [`rotor_channel::ErrorKind`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rotor_channel::ErrorKind;

type Labels = Vec<(String, String)>;

/// One open stream in `rotor_channel_streams`, until dropped.
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Default)]
pub struct ChannelMetrics {
    streams: Gauge,
    refused: Family<Labels, Counter>,
    cut_off: Family<Labels, Counter>,
    waves: Counter,
    announced: Counter,
    pending: Gauge,
}

impl crate::rotation::metrics::Exposed for ChannelMetrics {
    fn register(&self, registry: &mut Registry) {
        ChannelMetrics::register(self, registry);
    }
}

impl ChannelMetrics {
    /// Registers the metrics in `registry` (under its prefix), every
    /// reason's counters at 0 so that an `increase()` alert sees the first.
    pub fn register(&self, registry: &mut Registry) {
        for kind in ErrorKind::ALL {
            let _ = self.refused.get_or_create(&reason(kind));
            let _ = self.cut_off.get_or_create(&reason(kind));
        }
        registry.register(
            "channel_streams",
            "Sidecar streams open and admitted",
            self.streams.clone(),
        );
        registry.register(
            "channel_refused",
            "Streams refused before admission, by reason",
            self.refused.clone(),
        );
        registry.register(
            "channel_cut_off",
            "Admitted streams the controller cut off, by reason",
            self.cut_off.clone(),
        );
        registry.register(
            "channel_announce_waves",
            "Waves of versionAvailable released, each sized by the store's read budget",
            self.waves.clone(),
        );
        registry.register(
            "channel_announced",
            "versionAvailable messages released to streams",
            self.announced.clone(),
        );
        registry.register(
            "channel_announce_pending",
            "versionAvailable messages waiting for their wave",
            self.pending.clone(),
        );
    }

    /// `n` announcements wait for their waves.
    pub fn announce_planned(&self, n: usize) {
        self.pending.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A wave of `n` announcements was released.
    pub fn wave_released(&self, n: usize) {
        self.waves.inc();
        self.announced.inc_by(n as u64);
        self.pending.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Waves released so far.
    pub fn waves(&self) -> u64 {
        self.waves.get()
    }

    /// Counts a stream open until the guard is dropped, however the
    /// stream ends (its task may be dropped with its connection).
    pub fn opened(&self) -> OpenStream {
        self.streams.inc();
        OpenStream(self.streams.clone())
    }

    pub fn refused(&self, kind: ErrorKind) {
        self.refused.get_or_create(&reason(kind)).inc();
    }

    pub fn cut_off(&self, kind: ErrorKind) {
        self.cut_off.get_or_create(&reason(kind)).inc();
    }

    /// How many streams were refused for `kind` (tests wait on it).
    pub fn refused_count(&self, kind: ErrorKind) -> u64 {
        self.refused.get_or_create(&reason(kind)).get()
    }

    /// How many streams were cut off for `kind`.
    pub fn cut_off_count(&self, kind: ErrorKind) -> u64 {
        self.cut_off.get_or_create(&reason(kind)).get()
    }

    pub fn open_streams(&self) -> i64 {
        self.streams.get()
    }
}

fn reason(kind: ErrorKind) -> Labels {
    vec![("reason".to_owned(), kind.as_str().to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_starts_at_zero() {
        let metrics = ChannelMetrics::default();
        let mut registry = Registry::with_prefix("rotor");
        metrics.register(&mut registry);
        metrics.refused(ErrorKind::Forbidden);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for kind in ErrorKind::ALL {
            let refused = if kind == ErrorKind::Forbidden { 1 } else { 0 };
            let reason = kind.as_str();
            assert!(
                text.contains(&format!(
                    "rotor_channel_refused_total{{reason=\"{reason}\"}} {refused}\n"
                )),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "rotor_channel_cut_off_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{text}"
            );
        }
    }
}
