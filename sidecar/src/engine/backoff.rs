//! When to look at a secret again: the exponential backoff after failed
//! checks ([`rotor_store::backoff`], shared with the controller), the
//! spread of regular polls, and the random source both draw from, passed
//! in so that tests can fix it.

use std::time::Duration;

pub use rotor_store::backoff::{Backoff, Retry};
#[cfg(test)]
pub(crate) use rotor_store::random::{Fixed, Seeded};
pub use rotor_store::random::{Random, SystemRandom};

/// While the controller detects a secret's changes for this sidecar (its
/// stream is up and the welcome said so), the sidecar polls it only as a
/// safety net: every `SAFETY_NET_FACTOR` × its refresh interval, at most
/// [`SAFETY_NET_CAP`], never less often than the refresh itself.
pub const SAFETY_NET_FACTOR: u32 = 10;
/// The longest safety-net interval.
pub const SAFETY_NET_CAP: Duration = Duration::from_secs(3600);

/// How the sidecar is told of changes, which sets how often it polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    /// No stream to the controller: the sidecar polls at its refresh.
    #[default]
    Down,
    /// A stream is up; `detects`: the controller checks this pod's
    /// secrets and announces each new version.
    Up { detects: bool },
}

impl Link {
    /// The interval a secret is polled at: the safety net while the
    /// controller detects its changes (and no store watch serves it), the
    /// refresh otherwise.
    pub fn poll_interval(self, refresh: Duration, watched: bool) -> Duration {
        if self.safety_net(watched) {
            (refresh * SAFETY_NET_FACTOR)
                .min(SAFETY_NET_CAP)
                .max(refresh)
        } else {
            refresh
        }
    }

    /// Whether polls are a safety net only.
    pub fn safety_net(self, watched: bool) -> bool {
        self == Link::Up { detects: true } && !watched
    }
}

/// `interval` minus up to 10%, so that polls spread out but never come late.
pub fn spread(interval: Duration, random: &dyn Random) -> Duration {
    interval - (interval / 10).mul_f64(random.fraction().clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_safety_net_is_ten_refreshes_at_most_an_hour_only_while_detected() {
        let s = Duration::from_secs(1);
        let detected = Link::Up { detects: true };
        assert_eq!(detected.poll_interval(5 * s, false), 50 * s);
        assert_eq!(detected.poll_interval(30 * s, false), 300 * s);
        assert_eq!(detected.poll_interval(600 * s, false), 3600 * s);
        // Past an hour, the refresh itself.
        assert_eq!(detected.poll_interval(7200 * s, false), 7200 * s);
        // A watched secret, a stream without detection, no stream: refresh.
        assert_eq!(detected.poll_interval(5 * s, true), 5 * s);
        assert_eq!(
            Link::Up { detects: false }.poll_interval(5 * s, false),
            5 * s
        );
        assert_eq!(Link::Down.poll_interval(5 * s, false), 5 * s);
    }

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
