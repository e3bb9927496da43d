//! When to look at a secret again: the exponential backoff after failed
//! checks ([`rotor_store::backoff`], shared with the controller), the
//! spread of regular polls, and the random source both draw from, passed
//! in so that tests can fix it.

use std::time::Duration;

pub use rotor_store::backoff::{Backoff, Retry};
#[cfg(test)]
pub(crate) use rotor_store::random::{Fixed, Seeded};
pub use rotor_store::random::{Random, SystemRandom};

/// `interval` minus up to 10%, so that polls spread out but never come late.
pub fn spread(interval: Duration, random: &dyn Random) -> Duration {
    interval - (interval / 10).mul_f64(random.fraction().clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn polls_come_up_to_a_tenth_early_never_late() {
        let interval = 1_000 * MS;
        assert_eq!(spread(interval, &Fixed(0.0)), interval);
        assert_eq!(spread(interval, &Fixed(1.0)), 900 * MS);
        let random = Seeded::new(3);
        for _ in 0..1_000 {
            let d = spread(interval, &random);
            assert!(d >= 900 * MS && d <= interval, "{d:?}");
        }
    }
}
