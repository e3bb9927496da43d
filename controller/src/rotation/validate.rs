//! A SecretRotationPolicy's spec checked in full before anything acts on
//! it: the rules the CRD's CEL enforces in a cluster, plus what CEL cannot
//! check (durations and cron expressions that parse). Standalone mode
//! refuses a policy with any problem before it generates or stages a
//! value.

use rotor_crds::api::SecretRotationPolicySpec;

use super::schedule::{Cron, parse_duration};

fn hh_mm(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && matches!(
            (b[0], b[1]),
            (b'0'..=b'1', b'0'..=b'9') | (b'2', b'0'..=b'3')
        )
        && matches!((b[3], b[4]), (b'0'..=b'5', b'0'..=b'9'))
}

/// Every problem of `spec`, each naming its field path and what is
/// expected; empty when the policy may run.
pub fn problems(spec: &SecretRotationPolicySpec) -> Vec<String> {
    let mut out = Vec::new();
    let name = &spec.secret_name;
    if name.is_empty()
        || name.len() > 255
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains("//")
        || name.contains("..")
    {
        out.push(format!(
            "spec.secretName {name:?}: expected 1-255 characters without empty or '..' segments"
        ));
    }
    let s = &spec.schedule;
    match (&s.interval, &s.cron) {
        (Some(_), Some(_)) | (None, None) => {
            out.push("spec.schedule: set exactly one of interval and cron".to_owned())
        }
        (Some(interval), None) => {
            if let Err(e) = parse_duration("spec.schedule.interval", interval) {
                out.push(e.to_string());
            }
        }
        (None, Some(cron)) => {
            if let Err(e) = Cron::parse(cron) {
                out.push(format!("spec.schedule.cron {cron:?}: {e}"));
            }
        }
    }
    for (field, value) in [
        ("spec.schedule.jitter", &s.jitter),
        ("spec.schedule.maxAge", &s.max_age),
    ] {
        if let Some(v) = value
            && let Err(e) = parse_duration(field, v)
        {
            out.push(e.to_string());
        }
    }
    if let Some(w) = &s.window {
        for (field, value) in [("start", &w.start), ("end", &w.end)] {
            if !hh_mm(value) {
                out.push(format!(
                    "spec.schedule.window.{field} {value:?}: expected HH:MM (00:00 to 23:59)"
                ));
            }
        }
    }
    let g = &spec.generator;
    let set = [
        g.password.is_some(),
        g.random_bytes.is_some(),
        g.key_pair.is_some(),
    ];
    if set.iter().filter(|x| **x).count() != 1 {
        out.push("spec.generator: set exactly one of password, randomBytes, keyPair".to_owned());
    }
    if let Some(p) = &g.password {
        if !(8..=1024).contains(&p.length) {
            out.push(format!(
                "spec.generator.password.length {}: expected 8 to 1024",
                p.length
            ));
        }
        let mins = p.min_lower + p.min_upper + p.min_digits + p.min_symbols;
        if mins > p.length {
            out.push(format!(
                "spec.generator.password: the per-class minimums add up to {mins}, more than length {}",
                p.length
            ));
        }
    }
    if let Some(r) = &g.random_bytes
        && !(16..=4096).contains(&r.length)
    {
        out.push(format!(
            "spec.generator.randomBytes.length {}: expected 16 to 4096 bytes",
            r.length
        ));
    }
    let staged = &spec.strategy.staged;
    for (field, value) in [
        ("spec.strategy.staged.ackTimeout", &staged.ack_timeout),
        ("spec.strategy.staged.gracePeriod", &staged.grace_period),
    ] {
        if let Err(e) = parse_duration(field, value) {
            out.push(e.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SecretRotationPolicySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const GOOD: &str = "
storeRef: {name: s}
secretName: app/db
schedule: {interval: 24h, window: {start: '02:00', end: '04:00'}, jitter: 30m}
generator: {password: {length: 32, minDigits: 2}}
strategy: {staged: {ackTimeout: 5m, gracePeriod: 1h}}
";

    #[test]
    fn a_valid_policy_has_no_problem() {
        assert_eq!(problems(&spec(GOOD)), Vec::<String>::new());
    }

    /// Each broken field, and the exact field path and expectation named.
    #[test]
    fn every_problem_names_its_field_and_what_is_expected() {
        for (from, to, expected) in [
            (
                "interval: 24h",
                "interval: 24h, cron: '0 3 * * *'",
                "spec.schedule: set exactly one of interval and cron",
            ),
            (
                "interval: 24h",
                "interval: 24hours-ish",
                "spec.schedule.interval: \"24hours-ish\" is not a duration",
            ),
            (
                "jitter: 30m",
                "jitter: soon",
                "spec.schedule.jitter: \"soon\" is not a duration",
            ),
            (
                "end: '04:00'",
                "end: '4pm'",
                "spec.schedule.window.end \"4pm\": expected HH:MM",
            ),
            (
                "length: 32",
                "length: 4",
                "spec.generator.password.length 4: expected 8 to 1024",
            ),
            (
                "minDigits: 2",
                "minDigits: 40",
                "spec.generator.password: the per-class minimums add up to 40, more than length 32",
            ),
            (
                "ackTimeout: 5m",
                "ackTimeout: forever",
                "spec.strategy.staged.ackTimeout: \"forever\" is not a duration",
            ),
            (
                "secretName: app/db",
                "secretName: app/../db",
                "spec.secretName \"app/../db\": expected 1-255 characters",
            ),
        ] {
            let broken = GOOD.replace(from, to);
            let got = problems(&spec(&broken));
            assert!(
                got.iter().any(|p| p.starts_with(expected)),
                "{to}: expected {expected:?}, got {got:?}"
            );
        }
    }
}
