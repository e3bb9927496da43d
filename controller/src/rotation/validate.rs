//! A SecretRotationPolicy's spec checked in full and parsed once into a
//! [`Policy`] before anything acts on it: the rules the CRD's CEL enforces
//! in a cluster (durations, their limits and order from
//! `rotor_contract::durations`, the cron expression's shape), plus what CEL
//! cannot check (cron ranges, steps and names, and whether it ever
//! matches). Standalone mode refuses a policy with any
//! problem before it generates or stages a value; the state machine only
//! ever sees a [`Policy`].

use std::time::Duration;

use rotor_contract::api::{
    Generator, MAX_CRON_LEN, OnTimeout, Schedule, SecretRotationPolicySpec, Target,
};
use rotor_contract::durations::{self, MIN_ACK_TIMEOUT, MIN_INTERVAL, MIN_INTERVAL_STANDALONE};

use super::schedule::{CRON_EXPECTED, Cron, Every, RotationSchedule, parse_duration};
use super::target::PolicyTarget;
use crate::{Error, Result};

/// Where a policy runs, which sets the shortest interval it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A SecretRotationPolicy in a cluster: the CRD's CEL limits.
    Cluster,
    /// A policy file of `rotor-controller standalone` (and `rotor demo`).
    Standalone,
}

impl Mode {
    /// The shortest `spec.schedule.interval` in this mode.
    pub fn min_interval(self) -> Duration {
        match self {
            Self::Cluster => MIN_INTERVAL,
            Self::Standalone => MIN_INTERVAL_STANDALONE,
        }
    }
}

/// A policy spec that passed every check, with its durations and schedule
/// parsed.
#[derive(Debug)]
pub struct Policy {
    pub secret_name: String,
    pub schedule: RotationSchedule,
    pub generator: Generator,
    pub ack_timeout: Duration,
    pub grace_period: Duration,
    pub on_timeout: OnTimeout,
    pub paused: bool,
    /// The system whose credential the rotation changes.
    pub target: Option<PolicyTarget>,
}

impl Policy {
    /// The parsed policy, or every problem of `spec`, each naming its field
    /// path and what is expected.
    pub fn check(spec: &SecretRotationPolicySpec, mode: Mode) -> Result<Self, Vec<String>> {
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
        let schedule = schedule(&spec.schedule, mode)
            .map_err(|p| out.extend(p))
            .ok();
        check_generator(&spec.generator, &mut out);
        let target = spec
            .target
            .as_ref()
            .and_then(|t| check_target(t, &spec.generator, &mut out));
        let staged = &spec.strategy.staged;
        let mut duration = |field: &str, value: &str| {
            parse_duration(field, value)
                .map_err(|e| out.push(e.to_string()))
                .ok()
        };
        let ack_timeout = duration("spec.strategy.staged.ackTimeout", &staged.ack_timeout);
        let grace_period = duration("spec.strategy.staged.gracePeriod", &staged.grace_period);
        if let Some(ack) = ack_timeout
            && ack < MIN_ACK_TIMEOUT
        {
            out.push(format!(
                "spec.strategy.staged.ackTimeout {:?}: expected at least {}",
                staged.ack_timeout,
                durations::format(MIN_ACK_TIMEOUT)
            ));
        }
        let interval = schedule.as_ref().and_then(|s| match s.every {
            Every::Interval(i) => Some(i),
            Every::Cron(_) => None,
        });
        for (field, value, wait) in [
            ("ackTimeout", &staged.ack_timeout, ack_timeout),
            ("gracePeriod", &staged.grace_period, grace_period),
        ] {
            if let (Some(wait), Some(interval)) = (wait, interval)
                && wait > interval
            {
                out.push(format!(
                    "spec.strategy.staged.{field} {value:?}: expected at most spec.schedule.interval ({})",
                    durations::format(interval)
                ));
            }
        }
        match (schedule, ack_timeout, grace_period) {
            (Some(schedule), Some(ack_timeout), Some(grace_period)) if out.is_empty() => Ok(Self {
                secret_name: spec.secret_name.clone(),
                schedule,
                generator: spec.generator.clone(),
                ack_timeout,
                grace_period,
                on_timeout: staged.on_timeout,
                paused: spec.paused,
                target,
            }),
            _ => Err(out),
        }
    }

    /// [`Policy::check`], its problems as [`Error::InvalidPolicy`].
    pub fn parse(spec: &SecretRotationPolicySpec, mode: Mode) -> Result<Self> {
        Self::check(spec, mode).map_err(Error::InvalidPolicy)
    }

    /// The PostgreSQL target, if that is the policy's target.
    pub fn postgres(&self) -> Option<&super::target::TargetSpec> {
        match &self.target {
            Some(PolicyTarget::Postgres(t)) => Some(t),
            _ => None,
        }
    }

    /// The HTTPS target, if that is the policy's target.
    pub fn https(&self) -> Option<&super::target::https::HttpsSpec> {
        match &self.target {
            Some(PolicyTarget::Https(t)) => Some(t),
            _ => None,
        }
    }
}

/// A PostgreSQL target needs a password generator whose symbols keep a
/// string literal simple: no quote, backslash or whitespace. An HTTPS
/// target takes any generator's value.
fn check_target(t: &Target, generator: &Generator, out: &mut Vec<String>) -> Option<PolicyTarget> {
    if t.postgresql.is_some() {
        match &generator.password {
            Some(p) if p.symbols.contains(['\'', '\\', '"']) => out.push(format!(
                "spec.generator.password.symbols {:?}: with a postgresql target, expected no quote or backslash",
                p.symbols
            )),
            Some(_) => {}
            None => out.push(
                "spec.generator: with a postgresql target, expected password (randomBytes and keyPair are not database passwords)"
                    .to_owned(),
            ),
        }
    }
    PolicyTarget::check(t, out)
}

fn hh_mm(value: &str) -> Option<u64> {
    let b = value.as_bytes();
    let valid = b.len() == 5
        && b[2] == b':'
        && matches!(
            (b[0], b[1]),
            (b'0'..=b'1', b'0'..=b'9') | (b'2', b'0'..=b'3')
        )
        && matches!((b[3], b[4]), (b'0'..=b'5', b'0'..=b'9'));
    let digit = |i: usize| u64::from(b[i] - b'0');
    valid.then(|| (digit(0) * 10 + digit(1)) * 60 + digit(3) * 10 + digit(4))
}

/// `spec.schedule` parsed, or its problems.
pub(crate) fn schedule(s: &Schedule, mode: Mode) -> Result<RotationSchedule, Vec<String>> {
    let mut out = Vec::new();
    let every = match (&s.interval, &s.cron) {
        (Some(_), Some(_)) | (None, None) => {
            out.push("spec.schedule: set exactly one of interval and cron".to_owned());
            None
        }
        (Some(interval), None) => parse_duration("spec.schedule.interval", interval)
            .map_err(|e| out.push(e.to_string()))
            .ok()
            .filter(|i| {
                let short = *i < mode.min_interval();
                if short {
                    out.push(format!(
                        "spec.schedule.interval {interval:?}: expected at least {} (Rotor's minimum)",
                        durations::format(mode.min_interval())
                    ));
                }
                !short
            })
            .map(Every::Interval),
        (None, Some(cron)) if cron.len() > MAX_CRON_LEN => {
            out.push(format!(
                "spec.schedule.cron: {} bytes; expected at most {MAX_CRON_LEN}",
                cron.len()
            ));
            None
        }
        (None, Some(cron)) => Cron::parse(cron)
            .map_err(|e| out.push(format!("spec.schedule.cron {cron:?}: {e}; {CRON_EXPECTED}")))
            .ok()
            .map(Every::Cron),
    };
    let mut optional = |field: &str, value: &Option<String>| {
        value.as_ref().and_then(|v| {
            parse_duration(field, v)
                .map_err(|e| out.push(e.to_string()))
                .ok()
        })
    };
    let jitter = optional("spec.schedule.jitter", &s.jitter);
    let max_age = optional("spec.schedule.maxAge", &s.max_age);
    if let (Some(jitter), Some(Every::Interval(interval))) = (jitter, &every)
        && jitter >= *interval
    {
        out.push(format!(
            "spec.schedule.jitter {:?}: expected shorter than spec.schedule.interval ({})",
            s.jitter.as_deref().unwrap_or_default(),
            durations::format(*interval)
        ));
    }
    let window = s.window.as_ref().and_then(|w| {
        let mut minutes = |field: &str, value: &str| {
            let m = hh_mm(value);
            if m.is_none() {
                out.push(format!(
                    "spec.schedule.window.{field} {value:?}: expected HH:MM (00:00 to 23:59)"
                ));
            }
            m
        };
        let start = minutes("start", &w.start);
        let end = minutes("end", &w.end);
        start.zip(end)
    });
    match every {
        Some(every) if out.is_empty() => Ok(RotationSchedule {
            every,
            window,
            jitter,
            max_age,
        }),
        _ => Err(out),
    }
}

fn check_generator(g: &Generator, out: &mut Vec<String>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SecretRotationPolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
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
        assert_eq!(
            Policy::check(&spec(GOOD), Mode::Cluster)
                .err()
                .unwrap_or_default(),
            Vec::<String>::new()
        );
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
            // The limits the CRD's CEL enforces, from rotor_contract::durations.
            (
                "interval: 24h",
                "interval: 0s",
                "spec.schedule.interval \"0s\": expected at least 15m (Rotor's minimum)",
            ),
            (
                "interval: 24h",
                "interval: 1.5h",
                "spec.schedule.interval: \"1.5h\" is not a duration",
            ),
            (
                "ackTimeout: 5m",
                "ackTimeout: -5m",
                "spec.strategy.staged.ackTimeout: \"-5m\" is not a duration",
            ),
            (
                "ackTimeout: 5m",
                "ackTimeout: 0s",
                "spec.strategy.staged.ackTimeout \"0s\": expected at least 1s",
            ),
            (
                "gracePeriod: 1h",
                "gracePeriod: 25h",
                "spec.strategy.staged.gracePeriod \"25h\": expected at most spec.schedule.interval (1d)",
            ),
            (
                "jitter: 30m",
                "jitter: 1d",
                "spec.schedule.jitter \"1d\": expected shorter than spec.schedule.interval (1d)",
            ),
            (
                "interval: 24h,",
                "cron: '0 3 * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * * *',",
                "spec.schedule.cron: 137 bytes; expected at most 128",
            ),
        ] {
            let broken = GOOD.replace(from, to);
            let got = Policy::check(&spec(&broken), Mode::Cluster)
                .err()
                .unwrap_or_default();
            assert!(
                got.iter().any(|p| p.starts_with(expected)),
                "{to}: expected {expected:?}, got {got:?}"
            );
        }
    }
}
