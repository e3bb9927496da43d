//! When standalone mode tries a failed rotation step again: 1 s after the
//! first failure, doubling up to 5 min, per policy, reset by a success.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

/// The first wait after a failed step.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
pub const CAP: Duration = Duration::from_secs(300);

/// The retry schedule of one failing policy.
pub struct Retry {
    waits: ExponentialBackoff,
    /// When the next attempt is due.
    pub at: Instant,
}

impl Retry {
    pub fn new() -> Self {
        Self {
            waits: ExponentialBuilder::new()
                .with_min_delay(FIRST)
                .with_factor(2.0)
                .with_max_delay(CAP)
                .without_max_times()
                .build(),
            at: Instant::now(),
        }
    }

    /// The wait after the `failures`-th failure in a row (1-based): the
    /// same schedule, for retries counted in a status.
    pub fn wait_after(failures: u32) -> Duration {
        let mut waits = Self::new().waits;
        (1..failures.max(1)).for_each(|_| {
            waits.next();
        });
        waits.next().unwrap_or(CAP)
    }

    /// Records a failure at `now`: returns how long until the next attempt.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.waits.next().unwrap_or(CAP);
        self.at = now + wait;
        wait
    }

    /// The wait before the next attempt, zero when it is due.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_one_second_up_to_five_minutes() {
        let now = Instant::now();
        let mut retry = Retry::new();
        // In whole seconds: backon multiplies in f32.
        let waits: Vec<u64> = (0..12)
            .map(|_| retry.failed(now).as_secs_f64().round() as u64)
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry.remaining(now), CAP, "the cap is exact");
        assert_eq!(retry.remaining(now + CAP), Duration::ZERO);
        // A success drops the schedule: the next failure starts at 1 s.
        assert_eq!(Retry::new().failed(now), FIRST);
    }
}
