//! When the next rotation is due: an interval or a cron expression (UTC),
//! moved into the daily window, plus jitter, and never later than
//! `maxAge` after the last rotation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};
use rotor_store::random::Random;

fn invalid(problem: String) -> Error {
    Error::InvalidPolicy(vec![problem])
}

/// A policy duration (`rotor_contract::durations`, the grammar the CRD's CEL
/// checks), or an error naming `field`.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration> {
    let shown = crate::webhook::review::clip(value, 80);
    rotor_contract::durations::parse(value).map_err(|e| {
        invalid(format!(
            "{field}: {shown:?} is not a duration ({e}); expected {}",
            rotor_contract::durations::EXPECTED
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

/// What a cron expression may be, for error messages.
pub const CRON_EXPECTED: &str = "expected five fields, minute hour day-of-month month \
day-of-week, each *, a number, a range a-b, a step */n or a-b/n, or a list of those \
(JAN-DEC and SUN-SAT names, 0 or 7 for Sunday; evaluated in UTC), or one of @yearly, \
@annually, @monthly, @weekly, @daily, @hourly";

/// The shorthands Kubernetes CronJob takes (`@every` and `@reboot` are not
/// schedules here: use `interval`).
const SHORTHANDS: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A standard five-field cron expression, as Vixie cron and Kubernetes
/// CronJob take it, evaluated by `croner` in UTC. croner's extensions
/// (seconds and year fields, `L`, `W`, `#`, a leading `+`, names outside the
/// month and day-of-week fields, `5/15` without a range) are refused, so an
/// expression means here what it means in a CronJob.
#[derive(Debug)]
pub struct Cron(Box<croner::Cron>);

impl Cron {
    /// The expression, or what is wrong with it (without the field path,
    /// which the caller adds).
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = expr.trim();
        if expr.starts_with('@') {
            if !SHORTHANDS.iter().any(|s| s.eq_ignore_ascii_case(expr)) {
                return Err(format!("{expr:?} is not a known shorthand"));
            }
        } else {
            standard_fields(expr)?;
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| match e {
                croner::errors::CronError::ComponentError(m)
                | croner::errors::CronError::InvalidPattern(m)
                | croner::errors::CronError::IllegalCharacters(m) => m,
                e => e.to_string(),
            })?;
        let cron = Self(Box::new(cron));
        // An expression such as `0 0 30 2 *` parses but never matches.
        cron.next_after(UNIX_EPOCH)
            .map_err(|_| "never matches".to_owned())?;
        Ok(cron)
    }

    /// The first matching minute strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> Result<SystemTime> {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let from = chrono::DateTime::from_timestamp(
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            since.subsec_nanos(),
        )
        .unwrap_or_default();
        let next = self
            .0
            .find_next_occurrence(&from, false)
            .map_err(|e| invalid(format!("spec.schedule.cron: no next occurrence ({e})")))?;
        Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(next.timestamp()).unwrap_or_default()))
    }
}

/// Checks that `expr` has the five standard fields and only standard
/// tokens in each: numbers, `*`, names in the month and day-of-week fields,
/// `?` in the day fields; joined by `,`, `-` and `/`.
fn standard_fields(expr: &str) -> Result<(), String> {
    const NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("has {} fields", fields.len()));
    }
    for (i, field) in fields.iter().enumerate() {
        let (name, (lo, hi)) = (NAMES[i], RANGES[i]);
        for item in field.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            if step.is_some_and(|s| s.parse::<u32>().ok() == Some(0)) {
                return Err(format!("{name} field {item:?} has a step of 0"));
            }
            let tokens = range.split('-').map(|t| (t, false));
            for (token, is_step) in tokens.chain(step.map(|s| (s, true))) {
                let number = Some(token)
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u32>().ok());
                if !is_step && number.is_some_and(|n| n < lo || n > hi) {
                    return Err(format!(
                        "{name} field {token:?} is not valid (range {lo}-{hi})"
                    ));
                }
                let named = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(token));
                let standard = token == "*"
                    || number.is_some()
                    || (token == "?" && (i == 2 || i == 4))
                    || (i == 3 && named(&MONTHS))
                    || (i == 4 && named(&DAYS));
                if !standard {
                    return Err(format!("{name} field {token:?} is not standard cron"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rotor_contract::api::Schedule;

    use super::super::validate::Mode;
    use super::*;
    use rotor_store::random::Seeded;

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
        super::super::validate::schedule(s, Mode::Cluster)
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
            window: Some(rotor_contract::api::Window {
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
        let plan = super::super::validate::schedule(&s, Mode::Cluster).unwrap();
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
            let err = Cron::parse(bad).err().unwrap();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// The next occurrence of `expr` after `from`.
    fn next(expr: &str, from: &str) -> SystemTime {
        Cron::parse(expr).unwrap().next_after(at(from)).unwrap()
    }

    #[test]
    fn cron_day_names_run_on_that_day() {
        // 2026-11-24 is a Tuesday: the next Monday is the 30th.
        assert_eq!(
            next("0 3 * * MON", "2026-11-24T10:00:00Z"),
            at("2026-11-30T03:00:00Z")
        );
        assert_eq!(
            next("0 3 * * mon-fri", "2026-11-24T10:00:00Z"),
            at("2026-11-25T03:00:00Z")
        );
        assert_eq!(
            next("0 0 1 JAN,JUL *", "2026-11-24T10:00:00Z"),
            at("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn cron_shorthands_are_their_expansions() {
        let from = "2026-11-24T10:00:00Z";
        for (shorthand, due) in [
            ("@daily", "2026-11-25T00:00:00Z"),
            ("@hourly", "2026-11-24T11:00:00Z"),
            ("@weekly", "2026-11-29T00:00:00Z"),
            ("@monthly", "2026-12-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
        ] {
            assert_eq!(next(shorthand, from), at(due), "{shorthand}");
        }
    }

    #[test]
    fn cron_sunday_is_0_or_7() {
        let sunday = at("2026-11-29T03:00:00Z");
        assert_eq!(next("0 3 * * 7", "2026-11-24T10:00:00Z"), sunday);
        assert_eq!(next("0 3 * * 0", "2026-11-24T10:00:00Z"), sunday);
        assert_eq!(next("0 3 * * SUN", "2026-11-24T10:00:00Z"), sunday);
        assert_eq!(
            next("0 3 * * 5-7", "2026-11-28T04:00:00Z"),
            sunday,
            "a range up to 7 ends on Sunday"
        );
    }

    /// Day-of-month and day-of-week both restricted: either matches, as in
    /// Vixie cron and CronJob.
    #[test]
    fn cron_day_fields_are_ored() {
        // The 1st is a Tuesday (Dec 2026); Friday the 27th comes first.
        assert_eq!(
            next("0 0 1 * FRI", "2026-11-24T10:00:00Z"),
            at("2026-11-27T00:00:00Z")
        );
    }

    #[test]
    fn cron_next_occurrence_is_strictly_after_on_a_fixed_clock() {
        assert_eq!(
            next("30 2 * * *", "2026-11-24T02:30:00Z"),
            at("2026-11-25T02:30:00Z"),
            "an occurrence at the instant itself is not the next one"
        );
        assert_eq!(
            next("30 2 * * *", "2026-11-24T02:29:59.5Z"),
            at("2026-11-24T02:30:00Z")
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-11-24T10:00:00Z"),
            at("2028-02-29T00:00:00Z"),
            "the next leap day"
        );
        assert_eq!(
            next("0-10/5 4 * * *", "2026-11-24T04:05:00Z"),
            at("2026-11-24T04:10:00Z")
        );
    }

    #[test]
    fn cron_refuses_what_cronjob_refuses() {
        for (bad, why) in [
            ("*/0 * * * *", "minute field \"*/0\" has a step of 0"),
            ("0 0-23/0 * * *", "hour field \"0-23/0\" has a step of 0"),
            ("0 0 3 * * *", "has 6 fields"),
            ("0 3 L * *", "day-of-month field \"L\" is not standard cron"),
            (
                "0 3 15W * *",
                "day-of-month field \"15W\" is not standard cron",
            ),
            (
                "0 3 * * 5#3",
                "day-of-week field \"5#3\" is not standard cron",
            ),
            (
                "0 3 * * 5L",
                "day-of-week field \"5L\" is not standard cron",
            ),
            ("0 MON * * *", "hour field \"MON\" is not standard cron"),
            (
                "0 3 * * 8",
                "day-of-week field \"8\" is not valid (range 0-7)",
            ),
            ("5/15 * * * *", "single number steps"),
            ("@every 1h", "not a known shorthand"),
            ("@reboot", "not a known shorthand"),
            ("0 0 30 2 *", "never matches"),
        ] {
            let err = Cron::parse(bad).err().unwrap();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn cron_problems_name_the_field_and_the_expected_form() {
        let s = Schedule {
            cron: Some("*/0 * * * *".into()),
            ..schedule()
        };
        let problems = super::super::validate::schedule(&s, Mode::Cluster)
            .err()
            .unwrap();
        assert_eq!(
            problems,
            [format!(
                "spec.schedule.cron \"*/0 * * * *\": minute field \"*/0\" has a step of 0; {CRON_EXPECTED}"
            )]
        );
        assert!(CRON_EXPECTED.starts_with("expected five fields, minute hour"));
    }
}
