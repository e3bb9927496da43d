//! What the benches share for their figures: a uniform draw (to land a
//! change at a random point of a poll cycle), percentiles, CPU seconds per
//! hour from `/proc`, and the units their tables print.

use std::time::{Duration, Instant};

use rotor_fixtures::procfs::{cpu_ticks, ticks_per_second};

/// A uniform random number in [0, 1).
pub fn uniform() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    // One round of splitmix64 over the clock: plenty for spreading samples.
    let mut z = u64::from(nanos).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The `p`-th quantile (0 to 1) of `sorted` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// A process's CPU time from a start: [`CpuWindow::per_hour`] scales what
/// it used since to seconds per hour.
pub struct CpuWindow {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            ticks: cpu_ticks(pid).unwrap_or(0),
            at: Instant::now(),
        }
    }

    /// CPU seconds per hour since the start; `None` once the process is
    /// gone.
    pub fn per_hour(&self) -> Option<f64> {
        let used = cpu_ticks(self.pid)?.saturating_sub(self.ticks) as f64 / ticks_per_second();
        Some(used * 3600.0 / self.at.elapsed().as_secs_f64())
    }
}
