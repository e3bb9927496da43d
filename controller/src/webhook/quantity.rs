//! Kubernetes quantities and Rotor's durations in their canonical text.
//!
//! The API server stores every `resource.Quantity` in its canonical form
//! (`0.5` becomes `500m`, `1024Ki` becomes `1Mi`), so a value written in
//! any other form reads back different from what the webhook wrote, and a
//! second pass that compared text would refuse its own sidecar. The
//! webhook therefore writes quantities canonically ([`canonical`]) and
//! compares what a pod holds by meaning ([`Quantity::parse`]).
//!
//! The forms handled are those the flags and the chart accept: a
//! non-negative decimal number with an optional SI (`m`, `k` … `E`) or
//! binary (`Ki` … `Ei`) suffix, at most 1n precise, at most
//! `i64::MAX` in value (the exponent form `1e3` is not accepted). The
//! rules are those of apimachinery's `Quantity.CanonicalizeBytes`.

use std::time::Duration;

const NANOS: i128 = 1_000_000_000;
const DECIMAL: [(&str, i32); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];
const BINARY: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// A quantity's value in billionths, and whether it was written with a
/// binary suffix (which decides its canonical form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    nanos: i128,
    binary: bool,
}

impl Quantity {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected a non-negative number with an optional suffix (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei), such as \"100m\" or \"16Mi\"";
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!("{text:?} is not a Kubernetes quantity; {expected}"));
        }
        let (scale, binary) = if let Some(i) = BINARY[1..].iter().position(|s| *s == suffix) {
            (1i128 << (10 * (i + 1)), true)
        } else if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
            (10i128.pow(u32::try_from(e + 9).unwrap_or(0)), false)
        } else {
            return Err(format!("{text:?} is not a Kubernetes quantity; {expected}"));
        };
        // value = whole.fraction × scale (in units of 1n for decimal
        // suffixes, of 1 for binary ones): work in units of 10^-fraction.
        let too_large = || {
            format!(
                "{text:?} is larger than {} (the largest quantity Rotor writes)",
                i64::MAX
            )
        };
        let whole = whole.trim_start_matches('0');
        if whole.len() + fraction.len() > 36 {
            return Err(too_large());
        }
        let digits: i128 = format!("{whole}{fraction}").parse::<i128>().unwrap_or(0);
        let unit = 10i128.pow(fraction.len() as u32);
        // Decimal: nanos = digits × 10^(e+9) / unit; binary: digits × 2^k × 10^9 / unit.
        let numerator = digits
            .checked_mul(scale)
            .and_then(|n| {
                if binary {
                    n.checked_mul(NANOS)
                } else {
                    Some(n)
                }
            })
            .ok_or_else(too_large)?;
        if numerator % unit != 0 {
            return Err(format!(
                "{text:?} is more precise than 1n (a billionth); expected at most 9 decimal places of the unit"
            ));
        }
        let nanos = numerator / unit;
        if nanos / NANOS > i128::from(i64::MAX) {
            return Err(too_large());
        }
        Ok(Self { nanos, binary })
    }

    /// The text the API server stores for this quantity.
    pub fn canonical(self) -> String {
        if self.nanos == 0 {
            return "0".to_owned();
        }
        let whole = self.nanos % NANOS == 0;
        if self.binary && self.nanos >= 1024 * NANOS && whole {
            let (mut amount, mut power) = (self.nanos / NANOS, 0);
            while amount % 1024 == 0 && power + 1 < BINARY.len() {
                amount /= 1024;
                power += 1;
            }
            return format!("{amount}{}", BINARY[power]);
        }
        let (mut amount, mut exponent) = (self.nanos, -9i32);
        while amount % 10 == 0 && exponent < 18 {
            amount /= 10;
            exponent += 1;
        }
        match exponent.rem_euclid(3) {
            1 => (amount, exponent) = (amount * 10, exponent - 1),
            2 => (amount, exponent) = (amount * 100, exponent - 2),
            _ => {}
        }
        let suffix = DECIMAL
            .iter()
            .find(|(_, e)| *e == exponent)
            .map_or("", |(s, _)| s);
        format!("{amount}{suffix}")
    }
}

/// `text` in the API server's canonical form, or what is wrong with it.
pub fn canonical(text: &str) -> Result<String, String> {
    Quantity::parse(text).map(Quantity::canonical)
}

/// True when two quantity texts mean the same value (both parse and are
/// equal), as the API server compares them.
pub fn same(a: &str, b: &str) -> bool {
    matches!((Quantity::parse(a), Quantity::parse(b)), (Ok(x), Ok(y)) if x.nanos == y.nanos)
}

/// A duration in Rotor's one text form: the largest units first, none
/// repeated, no spaces (`90s` is `1m30s`, `1000ms` is `1s`), which
/// `humantime` and the chart's schema both accept.
pub fn duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pair was read back from kube-apiserver v1.36 (or is the
    /// example apimachinery's own tests give).
    #[test]
    fn canonical_forms_are_the_api_servers() {
        for (given, stored) in [
            ("0.5", "500m"),
            ("1024Ki", "1Mi"),
            ("100m", "100m"),
            ("5m", "5m"),
            ("1", "1"),
            ("1.5", "1500m"),
            ("0.1", "100m"),
            ("1000m", "1"),
            ("2000m", "2"),
            ("16Mi", "16Mi"),
            ("0.5Gi", "512Mi"),
            ("1.5Mi", "1536Ki"),
            ("1000Ki", "1000Ki"),
            ("0.5Ki", "512"),
            ("1.5Ki", "1536"),
            ("0.1Ki", "102400m"),
            ("1000M", "1G"),
            ("1000", "1k"),
            ("1024", "1024"),
            ("1500", "1500"),
            ("10000", "10k"),
            ("0", "0"),
            ("0Mi", "0"),
            ("0.000000001", "1n"),
            (".5", "500m"),
            ("2E", "2E"),
            ("1Ei", "1Ei"),
            ("4Mi", "4Mi"),
            ("128974848", "128974848"),
        ] {
            assert_eq!(canonical(given).as_deref(), Ok(stored), "{given}");
            // Canonical text is a fixed point.
            assert_eq!(canonical(stored).as_deref(), Ok(stored), "{stored}");
            assert!(same(given, stored));
        }
        assert!(!same("1Mi", "1M"));
        assert!(!same("1", "1m"));
    }

    #[test]
    fn bad_quantities_say_what_is_wrong() {
        for (bad, says) in [
            ("", "not a Kubernetes quantity"),
            (".", "not a Kubernetes quantity"),
            ("m", "not a Kubernetes quantity"),
            ("1..5", "not a Kubernetes quantity"),
            ("32MB", "not a Kubernetes quantity"),
            ("-1", "not a Kubernetes quantity"),
            ("1e3", "not a Kubernetes quantity"),
            ("0.0000000001", "more precise than 1n"),
            ("10E", "larger than"),
            ("9Ei", "larger than"),
            ("99999999999999999999999999999999999999999", "larger than"),
        ] {
            let err = canonical(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_have_one_form() {
        for (ms, text) in [
            (100, "100ms"),
            (30_000, "30s"),
            (60_000, "1m"),
            (90_000, "1m30s"),
            (86_400_000, "24h"),
            (3_661_001, "1h1m1s1ms"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(duration(d), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), d);
        }
    }
}
