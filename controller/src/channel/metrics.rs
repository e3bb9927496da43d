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
}

impl ChannelMetrics {
    /// Registers the metrics in `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
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
    }

    /// Counts a stream open until the guard is dropped, however the
    /// stream ends (its task may be dropped with its connection).
    pub fn opened(&self) -> OpenStream {
        self.streams.inc();
        OpenStream(self.streams.clone())
    }

    pub fn refused(&self, kind: ErrorKind) {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), kind.as_str().to_owned())])
            .inc();
    }

    pub fn cut_off(&self, kind: ErrorKind) {
        self.cut_off
            .get_or_create(&vec![("reason".to_owned(), kind.as_str().to_owned())])
            .inc();
    }

    /// How many streams were refused for `kind` (tests wait on it).
    pub fn refused_count(&self, kind: ErrorKind) -> u64 {
        self.refused
            .get_or_create(&vec![("reason".to_owned(), kind.as_str().to_owned())])
            .get()
    }

    /// How many streams were cut off for `kind`.
    pub fn cut_off_count(&self, kind: ErrorKind) -> u64 {
        self.cut_off
            .get_or_create(&vec![("reason".to_owned(), kind.as_str().to_owned())])
            .get()
    }

    pub fn open_streams(&self) -> i64 {
        self.streams.get()
    }
}
