//! The engine's state that other tasks read: readiness for `/readyz`, the
//! metrics, and a count of finished poll rounds (what tests wait for).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::metrics::Metrics;

/// State the HTTP endpoints read.
#[derive(Default)]
pub struct Shared {
    /// The first complete set of files is written.
    pub ready: AtomicBool,
    /// The last write failed: the files are not what the engine would
    /// serve, and it retries every second.
    pub writes_failing: AtomicBool,
    pub metrics: Metrics,
    /// Poll rounds finished: every due secret checked, the files written
    /// and the reload actions run if anything changed.
    polls: AtomicU64,
}

impl Shared {
    /// With `metrics` (see [`Metrics::new`]).
    pub fn with_metrics(metrics: Metrics) -> Self {
        Self {
            ready: AtomicBool::default(),
            writes_failing: AtomicBool::default(),
            metrics,
            polls: AtomicU64::default(),
        }
    }

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

    /// How many poll rounds have finished.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Acquire)
    }

    pub(super) fn poll_finished(&self) {
        self.polls.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn set_writes_failing(&self, failing: bool) {
        self.writes_failing.store(failing, Ordering::Release);
        self.metrics
            .set_ready(!failing && self.ready.load(Ordering::Acquire));
    }
}
