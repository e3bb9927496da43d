//! When a failed rotation step is tried again: 1 s after the first
//! failure, doubling up to 5 min, without jitter (a wait the status must
//! be able to tell again). One schedule, [`rotor_store::backoff`]'s type,
//! for standalone's failed steps and the machine's target attempts.

use std::time::Duration;

use rotor_store::backoff::Backoff;

/// The first wait after a failed step.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
pub const CAP: Duration = Duration::from_secs(300);
/// The schedule: [`Backoff::ceiling`] doubles `base` from the first
/// failure, so the first wait is `2 · base` = [`FIRST`].
pub const SCHEDULE: Backoff = Backoff::new(Duration::from_millis(500), CAP);

/// The wait after the `failures`-th failure in a row (1-based).
pub fn wait_after(failures: u32) -> Duration {
    SCHEDULE.ceiling(failures.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rotor_store::backoff::Retry;

    #[test]
    fn waits_double_from_one_second_up_to_five_minutes() {
        let mut retry = Retry::default();
        let waits: Vec<u64> = (0..12)
            .map(|_| retry.failed_exactly(SCHEDULE).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(wait_after(12), CAP, "the cap is exact");
        // A success drops the schedule: the next failure starts at 1 s.
        retry.reset();
        assert_eq!(retry.failed_exactly(SCHEDULE), FIRST);
        assert_eq!(wait_after(1), FIRST);
    }
}
