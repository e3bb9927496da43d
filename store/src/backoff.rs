//! How long to wait before calling a store again: exponential backoff
//! with equal jitter, drawn from a random source passed in so that tests
//! can fix it. The sidecar backs off a failing secret with it, the
//! controller a throttled store.
//!
//! The backoff uses *equal* jitter: the delay after `n` failures in a row is
//! drawn uniformly from `[d/2, d]`, where `d = base · 2ⁿ` capped at `cap`.
//! Full jitter (`[0, d]`) spreads many clients failing at once best, but
//! can draw a delay near zero; linkerd2-proxy's exp-backoff adds a random
//! share of `d` on top instead, which can exceed `d` until the cap. Here
//! each secret backs off on its own, and the cap is the refresh interval
//! (so an outage costs no more requests than polling): a floor of half
//! the delay keeps a failing store from a burst of quick retries, and the
//! other half still spreads pods that failed together.

use std::time::Duration;

// The sources live in `crate::random`; re-exported where backoff users
// have always found them.
pub use crate::random::{Fixed, Random, Seeded, SystemRandom};

/// Exponential backoff: `base` doubling per failure up to `cap`, with
/// equal jitter (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The delay after `failures` failures in a row without jitter, the top
    /// of [`Backoff::delay`]'s range: `min(base · 2^failures, cap)`. For
    /// waits a status must be able to tell again (the controller's rotation
    /// retries), which a random draw could not.
    pub fn ceiling(&self, failures: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << failures.min(16))
            .min(self.cap)
    }

    /// The delay before the next check after `failures` failures in a row
    /// (1 for the first): in `[d/2, d]`, `d = min(base · 2^failures, cap)`.
    pub fn delay(&self, failures: u32, random: &dyn Random) -> Duration {
        let exp = self.ceiling(failures);
        exp / 2 + (exp / 2).mul_f64(random.fraction().clamp(0.0, 1.0))
    }
}

/// One secret's failures in a row: what its backoff grows with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    failures: u32,
}

impl Retry {
    /// Counts a failure; returns the delay before the next check.
    pub fn failed(&mut self, backoff: Backoff, random: &dyn Random) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff.delay(self.failures, random)
    }

    /// A check succeeded: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure; returns the wait before the next attempt without
    /// jitter ([`Backoff::ceiling`]).
    pub fn failed_exactly(&mut self, backoff: Backoff) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff.ceiling(self.failures)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn backoff() -> Backoff {
        Backoff::new(100 * MS, 5_000 * MS)
    }

    #[test]
    fn every_delay_is_within_half_and_all_of_the_exponential() {
        let random = Seeded::new(7);
        for failures in 1..=20 {
            let exp = (100 * MS * (1 << failures.min(16))).min(5_000 * MS);
            for _ in 0..200 {
                let d = backoff().delay(failures, &random);
                assert!(
                    d >= exp / 2 && d <= exp,
                    "{failures}: {d:?} outside [{:?}, {exp:?}]",
                    exp / 2
                );
            }
        }
    }

    #[test]
    fn the_ends_of_the_jitter_are_half_and_all() {
        assert_eq!(backoff().delay(1, &Fixed(0.0)), 100 * MS);
        assert_eq!(backoff().delay(1, &Fixed(1.0)), 200 * MS);
        assert_eq!(backoff().delay(1, &Fixed(0.5)), 150 * MS);
    }

    #[test]
    fn the_delay_doubles_per_failure_until_the_cap() {
        let delays: Vec<Duration> = (1..=8).map(|n| backoff().delay(n, &Fixed(1.0))).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000].map(|ms| ms * MS)
        );
        // Far past the cap, no overflow.
        assert_eq!(backoff().delay(u32::MAX, &Fixed(1.0)), 5_000 * MS);
        assert_eq!(backoff().delay(u32::MAX, &Fixed(0.0)), 2_500 * MS);
    }

    #[test]
    fn a_success_resets_the_growth() {
        let mut retry = Retry::default();
        let random = Fixed(1.0);
        let grown: Vec<Duration> = (0..3).map(|_| retry.failed(backoff(), &random)).collect();
        assert_eq!(grown, [200 * MS, 400 * MS, 800 * MS]);
        assert_eq!(retry.failures(), 3);
        retry.reset();
        assert_eq!(retry.failures(), 0);
        assert_eq!(retry.failed(backoff(), &random), 200 * MS);
    }

    #[test]
    fn the_seeded_source_is_uniform_enough_to_spread() {
        let random = Seeded::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| random.fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..=1.0).contains(f)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        // Same seed, same draws: the tests that use it are repeatable.
        assert_eq!(Seeded::new(42).fraction(), draws[0]);
    }
}
