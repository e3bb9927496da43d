//! The durations of a SecretRotationPolicy (`schedule.interval`,
//! `jitter`, `maxAge`, `strategy.staged.ackTimeout`, `gracePeriod`) and
//! their limits, declared once: [`parse`] is what the controller accepts,
//! and the CRD's CEL rules ([`rule_is_duration`], [`cel_seconds`]) are
//! generated from the same table, so the API server refuses exactly the
//! strings the controller would.
//!
//! A duration is one or more whole numbers, each followed by a unit
//! ([`UNITS`]): `90s`, `5m`, `1h30m`, `720h`, `30d`, `2weeks`. It has no
//! sign (so it is never negative), no fraction and no spaces. CEL's own
//! `duration()` is Go's grammar, which has no days, and Kubernetes'
//! CEL (1.36) has no `isDuration()`; so the rule is a regular expression
//! plus a sum over the parts (`findAll`, `sum`).

use std::time::Duration;

/// Each unit's spellings and its length in seconds. These are
/// humantime's names for the same units, so earlier policies keep parsing;
/// units below a second, months and years (humantime's are 30.44 and
/// 365.25 days) are not durations here.
pub const UNITS: [(&[&str], u64); 5] = [
    (&["seconds", "second", "secs", "sec", "s"], 1),
    (&["minutes", "minute", "mins", "min", "m"], 60),
    (&["hours", "hour", "hrs", "hr", "h"], 3600),
    (&["days", "day", "d"], 86_400),
    (&["weeks", "week", "wks", "wk", "w"], 604_800),
];

/// The longest duration string, in bytes (also the CRD's `maxLength`,
/// which bounds the cost of the CEL rules).
pub const MAX_LEN: usize = 64;

/// The most digits one number may have (so no sum can overflow).
pub const MAX_DIGITS: usize = 9;

/// The shortest `schedule.interval`. Each rotation writes one new version
/// (AWS: one `PutSecretValue`); AWS advises at most one per secret per 10
/// minutes, because versions younger than 24 hours are never removed and a
/// secret holds at most 100. 15 minutes keeps a schedule under that with
/// room for a retried write, and is still far more often than any
/// credential needs to change.
pub const MIN_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// The shortest `schedule.interval` in standalone mode (`rotor-controller
/// standalone`, `rotor demo`): policies there are files on one machine,
/// written by whoever runs it, mostly against the local store, which has no
/// write quota; the demo rotates every few seconds. The API server's CEL
/// and the in-cluster reconciler keep [`MIN_INTERVAL`].
pub const MIN_INTERVAL_STANDALONE: Duration = Duration::from_secs(1);

/// The shortest `strategy.staged.ackTimeout`: one second (0 would time out
/// before any consumer could answer).
pub const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a duration must look like, for messages.
pub const EXPECTED: &str = "whole numbers with units s, m, h, d or w and no sign or spaces, such as 90s, 5m, 1h30m, 720h or 30d";

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_LEN} bytes")]
    TooLong,
    /// The rest of the string from the part that is not one (at most 16
    /// characters).
    #[error("{0:?} is not a whole number followed by a unit")]
    Part(String),
    #[error("unit {0:?} is not one of s, m, h, d, w (or their names: seconds, minutes, ...)")]
    Unit(String),
    #[error("a number has more than {MAX_DIGITS} digits")]
    TooManyDigits,
}

/// The duration `value` stands for.
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    if value.is_empty() {
        return Err(DurationError::Empty);
    }
    if value.len() > MAX_LEN {
        return Err(DurationError::TooLong);
    }
    let mut rest = value;
    let mut seconds: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || letters == 0 {
            return Err(DurationError::Part(rest.chars().take(16).collect()));
        }
        if digits > MAX_DIGITS {
            return Err(DurationError::TooManyDigits);
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooManyDigits)?;
        let unit = &rest[digits..digits + letters];
        let scale = UNITS
            .iter()
            .find(|(names, _)| names.contains(&unit))
            .map(|(_, s)| *s)
            .ok_or_else(|| DurationError::Unit(unit.to_owned()))?;
        seconds = seconds.saturating_add(number.saturating_mul(scale));
        rest = &rest[digits + letters..];
    }
    Ok(Duration::from_secs(seconds))
}

/// `d` as the shortest string [`parse`] reads back as `d` (whole seconds).
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The RE2 expression a duration matches as a whole.
pub fn regex() -> String {
    let units: Vec<&str> = UNITS
        .iter()
        .flat_map(|(names, _)| names.iter())
        .copied()
        .collect();
    format!("^([0-9]{{1,{MAX_DIGITS}}}({}))+$", units.join("|"))
}

/// A CEL expression: the string expression `s` (a valid duration) in
/// seconds, as an int.
pub fn cel_seconds(s: &str) -> String {
    let scale: Vec<String> = UNITS
        .iter()
        .flat_map(|(names, seconds)| names.iter().map(move |n| format!("'{n}': {seconds}")))
        .collect();
    format!(
        "{s}.findAll('[0-9]+[a-z]+').map(p, int(p.find('[0-9]+')) * {{{}}}[p.find('[a-z]+')]).sum()",
        scale.join(", ")
    )
}

/// A CEL expression: the string expression `s` is a duration.
pub fn cel_is_duration(s: &str) -> String {
    format!("{s}.matches('{}')", regex())
}

/// The rule on a duration field named `field`: it parses.
pub fn rule_is_duration(field: &str) -> kube::core::Rule {
    kube::core::Rule::new(cel_is_duration("self")).message(kube::core::Message::Message(format!(
        "{field} must be a duration: {EXPECTED}"
    )))
}

/// The rule on a duration field named `field`: at least `min` (checked
/// only once it parses; [`rule_is_duration`] says when it does not).
pub fn rule_at_least(field: &str, min: Duration) -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "!{} || {} >= {}",
        cel_is_duration("self"),
        cel_seconds("self"),
        min.as_secs()
    ))
    .message(kube::core::Message::Message(format!(
        "{field} must be at least {}",
        format(min)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_to_whole_seconds() {
        for (text, secs) in [
            ("90s", 90),
            ("5m", 300),
            ("1h30m", 5400),
            ("720h", 2_592_000),
            ("30d", 2_592_000),
            ("30days", 2_592_000),
            ("7days", 604_800),
            ("2weeks", 1_209_600),
            ("0s", 0),
            ("1h1h", 7200),
            ("999999999w", 999_999_999 * 604_800),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_duration_says_why() {
        for (text, error) in [
            ("", DurationError::Empty),
            ("-5m", DurationError::Part("-5m".into())),
            ("5", DurationError::Part("5".into())),
            ("m", DurationError::Part("m".into())),
            ("1.5h", DurationError::Part("1.5h".into())),
            ("1h 30m", DurationError::Part(" 30m".into())),
            ("500ms", DurationError::Unit("ms".into())),
            ("1y", DurationError::Unit("y".into())),
            ("forever", DurationError::Part("forever".into())),
            ("1234567890s", DurationError::TooManyDigits),
        ] {
            assert_eq!(parse(text), Err(error), "{text:?}");
        }
        assert_eq!(parse(&"1s".repeat(33)), Err(DurationError::TooLong));
    }

    #[test]
    fn format_reads_back() {
        for secs in [0, 1, 59, 60, 900, 3600, 5400, 86_400, 90_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(MIN_INTERVAL), "15m");
    }

    /// The regex lists every spelling `parse` takes, and the CEL sum
    /// covers every unit.
    #[test]
    fn the_cel_is_generated_from_the_same_table() {
        let re = regex();
        for (names, seconds) in UNITS {
            for n in names {
                assert!(re.contains(&format!("|{n}")) || re.contains(&format!("({n}")));
                assert!(cel_seconds("self").contains(&format!("'{n}'")));
                assert_eq!(
                    parse(&format!("2{n}")),
                    Ok(Duration::from_secs(2 * seconds))
                );
            }
        }
    }
}
