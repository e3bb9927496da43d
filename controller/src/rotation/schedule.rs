//! When the next rotation is due: an interval or a cron expression (UTC),
//! moved into the daily window, plus jitter, and never later than
//! `maxAge` after the last rotation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::generate::Random;
use crate::{Error, Result};

fn invalid(problem: String) -> Error {
    Error::InvalidPolicy(vec![problem])
}

pub fn parse_duration(field: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value).map_err(|e| {
        invalid(format!(
            "{field}: {value:?} is not a duration ({e}); expected e.g. \"720h\" or \"30days\""
        ))
    })
}

/// How rotations recur.
#[derive(Debug)]
pub enum Every {
    Interval(Duration),
    Cron(Cron),
}

/// A policy's `spec.schedule`, parsed and checked (built by
/// [`super::validate::Policy::check`]).
#[derive(Debug)]
pub struct RotationSchedule {
    pub every: Every,
    /// The daily window as UTC minutes `[start, end)`.
    pub window: Option<(u64, u64)>,
    pub jitter: Option<Duration>,
    pub max_age: Option<Duration>,
}

impl RotationSchedule {
    /// The next rotation after `last` (or now, for a secret never
    /// rotated); the jitter is drawn from `rng`.
    pub fn next(
        &self,
        last: Option<SystemTime>,
        now: SystemTime,
        rng: &dyn Random,
    ) -> Result<SystemTime> {
        let mut due = match (&self.every, last) {
            (Every::Interval(_), None) => now,
            (Every::Interval(i), Some(l)) => l + *i,
            (Every::Cron(c), _) => {
                c.next_after(last.unwrap_or(now).max(now - Duration::from_secs(60)))?
            }
        };
        if let Some((start, end)) = self.window {
            due = into_window(due, start, end);
        }
        if let Some(j) = self.jitter {
            let mut b = [0u8; 4];
            // A failed draw means no jitter, not a failed rotation.
            let _ = rng.fill(&mut b);
            due += j.mul_f64(f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX));
        }
        if let (Some(m), Some(l)) = (self.max_age, last) {
            due = due.min(l + m);
        }
        Ok(due)
    }
}

/// `t` if it falls inside the daily window `[start, end)` (UTC minutes,
/// which may wrap past midnight), else the window's next start.
fn into_window(t: SystemTime, start: u64, end: u64) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let minute = (secs / 60) % 1440;
    let inside = if start <= end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    };
    if inside || start == end {
        return t;
    }
    let day = secs / 86400 * 86400;
    let mut next = day + start * 60;
    if next <= secs {
        next += 86400;
    }
    UNIX_EPOCH + Duration::from_secs(next)
}

/// A five-field cron expression: minute hour day-of-month month
/// day-of-week, each `*`, a number, a range `a-b`, a list, or a step `*/n`.
#[derive(Debug)]
pub struct Cron {
    fields: [Vec<bool>; 5],
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Self> {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(invalid(format!(
                "spec.schedule.cron: {expr:?} has {} fields; expected 5 (minute hour day-of-month month day-of-week)",
                parts.len()
            )));
        }
        let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];
        let names = ["minute", "hour", "day-of-month", "month", "day-of-week"];
        let mut fields: [Vec<bool>; 5] = Default::default();
        for (i, part) in parts.iter().enumerate() {
            let (lo, hi) = ranges[i];
            let mut set = vec![false; hi + 1];
            for item in part.split(',') {
                let bad = || {
                    invalid(format!(
                        "spec.schedule.cron: {} field {item:?} is not valid (range {lo}-{hi})",
                        names[i]
                    ))
                };
                let (range, step) = match item.split_once('/') {
                    Some((r, s)) => (r, s.parse::<usize>().map_err(|_| bad())?.max(1)),
                    None => (item, 1),
                };
                let (a, b) = match range {
                    "*" => (lo, hi),
                    r => match r.split_once('-') {
                        Some((a, b)) => {
                            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
                        }
                        None => {
                            let v: usize = r.parse().map_err(|_| bad())?;
                            (v, v)
                        }
                    },
                };
                if a < lo || b > hi || a > b {
                    return Err(bad());
                }
                for v in (a..=b).step_by(step) {
                    set[v] = true;
                }
            }
            fields[i] = set;
        }
        Ok(Self { fields })
    }

    /// The first matching minute strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> Result<SystemTime> {
        let first = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60 + 1;
        for minute in first..first + 366 * 1440 * 4 {
            let (min, hour) = ((minute % 60) as usize, ((minute / 60) % 24) as usize);
            let days = minute / 1440;
            let (_, month, mday) = civil(days as i64);
            let wday = ((days + 4) % 7) as usize; // 1970-01-01 was a Thursday
            if self.fields[0][min]
                && self.fields[1][hour]
                && self.fields[2][mday]
                && self.fields[3][month]
                && self.fields[4][wday]
            {
                return Ok(UNIX_EPOCH + Duration::from_secs(minute * 60));
            }
        }
        Err(invalid(
            "spec.schedule.cron never matches within four years".to_owned(),
        ))
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, usize, usize) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as usize;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use rotor_crds::api::Schedule;

    use super::super::generate::Seeded;
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn schedule() -> Schedule {
        Schedule::default()
    }

    /// The next rotation for the spec `s`, with a fixed seed for jitter.
    fn next_rotation(
        s: &Schedule,
        last: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<SystemTime> {
        super::super::validate::schedule(s)
            .map_err(Error::InvalidPolicy)?
            .next(last, now, &Seeded::new(0))
    }

    #[test]
    fn intervals_max_age_and_first_rotation() {
        let now = at("2026-11-24T10:00:00Z");
        let s = Schedule {
            interval: Some("30days".into()),
            ..schedule()
        };
        assert_eq!(
            next_rotation(&s, None, now).unwrap(),
            now,
            "never rotated: due now"
        );
        let last = at("2026-11-01T00:00:00Z");
        assert_eq!(
            next_rotation(&s, Some(last), now).unwrap(),
            at("2026-12-01T00:00:00Z")
        );
        let s = Schedule {
            max_age: Some("7days".into()),
            ..s
        };
        assert_eq!(
            next_rotation(&s, Some(last), now).unwrap(),
            at("2026-11-08T00:00:00Z")
        );
    }

    #[test]
    fn windows_move_the_time_to_the_next_opening() {
        let s = Schedule {
            interval: Some("1h".into()),
            window: Some(rotor_crds::api::Window {
                start: "02:00".into(),
                end: "04:00".into(),
            }),
            ..schedule()
        };
        let last = at("2026-11-24T10:00:00Z");
        assert_eq!(
            next_rotation(&s, Some(last), last).unwrap(),
            at("2026-11-25T02:00:00Z")
        );
        let inside = at("2026-11-24T01:30:00Z");
        assert_eq!(
            next_rotation(&s, Some(inside), inside).unwrap(),
            at("2026-11-24T02:30:00Z")
        );
        // A window across midnight.
        assert_eq!(
            into_window(at("2026-11-24T23:30:00Z"), 23 * 60, 60),
            at("2026-11-24T23:30:00Z")
        );
        assert_eq!(
            into_window(at("2026-11-24T12:00:00Z"), 23 * 60, 60),
            at("2026-11-24T23:00:00Z")
        );
    }

    #[test]
    fn jitter_delays_by_at_most_its_value() {
        let s = Schedule {
            interval: Some("1h".into()),
            jitter: Some("10m".into()),
            ..schedule()
        };
        let last = at("2026-11-24T10:00:00Z");
        let plan = super::super::validate::schedule(&s).unwrap();
        let rng = Seeded::new(11);
        let mut draws = Vec::new();
        for _ in 0..50 {
            let t = plan.next(Some(last), last, &rng).unwrap();
            assert!(t >= at("2026-11-24T11:00:00Z") && t <= at("2026-11-24T11:10:00Z"));
            draws.push(t);
        }
        draws.sort();
        draws.dedup();
        assert!(draws.len() > 1, "jitter varies between draws: {draws:?}");
        // Drawn from the injected source only: the same seed, the same time.
        assert_eq!(
            plan.next(Some(last), last, &Seeded::new(5)).unwrap(),
            plan.next(Some(last), last, &Seeded::new(5)).unwrap()
        );
    }

    #[test]
    fn cron_expressions() {
        let c = Cron::parse("30 2 * * 1").unwrap(); // Mondays 02:30
        assert_eq!(
            c.next_after(at("2026-11-24T10:00:00Z")).unwrap(),
            at("2026-11-30T02:30:00Z")
        );
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-24T10:07:00Z")).unwrap(),
            at("2026-11-24T10:15:00Z")
        );
        let c = Cron::parse("0 0 1 1,7 *").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-24T10:00:00Z")).unwrap(),
            at("2027-01-01T00:00:00Z")
        );
        for (bad, why) in [
            ("* * *", "has 3 fields"),
            ("61 * * * *", "minute field \"61\""),
            ("* * * 13 *", "month field"),
        ] {
            let err = Cron::parse(bad).err().unwrap().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
