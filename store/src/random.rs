//! The one random source of the workspace: a trait ([`Random`]) that
//! backoff jitter, schedule jitter and generated secrets draw from, the
//! operating system's source ([`SystemRandom`]) for production, and one
//! seeded generator ([`Seeded`], SplitMix64) for tests and benches, so a
//! failing run replays from its seed.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::SecureRandom;

/// The operating system's random source failed (it does not on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct Unavailable;

/// A source of random bytes, shared (`&self`) by everything that draws.
pub trait Random: Send + Sync {
    /// Fills `dest` with random bytes.
    fn fill(&self, dest: &mut [u8]) -> Result<(), Unavailable>;

    /// A uniform fraction in `[0, 1]`; one half when the source fails.
    fn fraction(&self) -> f64 {
        let mut bytes = [0u8; 4];
        if self.fill(&mut bytes).is_err() {
            return 0.5;
        }
        f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
    }
}

/// The operating system's random source (ring's `SystemRandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), Unavailable> {
        ring::rand::SystemRandom::new()
            .fill(dest)
            .map_err(|_| Unavailable)
    }
}

/// A seeded, reproducible source (SplitMix64): the same seed gives the
/// same draws, from any number of threads sharing it.
#[derive(Debug)]
pub struct Seeded(AtomicU64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl Random for Seeded {
    fn fill(&self, dest: &mut [u8]) -> Result<(), Unavailable> {
        for chunk in dest.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }

    fn fraction(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A source that always draws the same fraction (its bytes: that
/// fraction of `u32::MAX`, repeated), for tests of the extremes.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub f64);

impl Random for Fixed {
    fn fill(&self, dest: &mut [u8]) -> Result<(), Unavailable> {
        let word = ((self.0.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32).to_le_bytes();
        for (i, b) in dest.iter_mut().enumerate() {
            *b = word[i % 4];
        }
        Ok(())
    }

    fn fraction(&self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_draws() {
        let draw = |seed| {
            let rng = Seeded::new(seed);
            (0..100).map(|_| rng.below(10)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert!(draw(7).iter().all(|&n| n < 10));
        let mut a = [0u8; 13];
        let mut b = [0u8; 13];
        Seeded::new(3).fill(&mut a).unwrap();
        Seeded::new(3).fill(&mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn fractions_stay_in_the_unit_interval() {
        let s = Seeded::new(1);
        assert!(
            (0..1000)
                .map(|_| s.fraction())
                .all(|f| (0.0..=1.0).contains(&f))
        );
        assert!((0.0..=1.0).contains(&SystemRandom.fraction()));
        assert_eq!(Fixed(0.25).fraction(), 0.25);
        let mut word = [0u8; 4];
        Fixed(1.0).fill(&mut word).unwrap();
        assert_eq!(u32::from_le_bytes(word), u32::MAX);
    }
}
