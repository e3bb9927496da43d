//! The pod annotation contract.
//!
//! | annotation | value | default |
//! |---|---|---|
//! | `rotor.dev/inject` | `"true"` or `"false"` | `"false"` |
//! | `rotor.dev/store` | the name of a RotorStore or ClusterRotorStore | required when injecting |
//! | `rotor.dev/secret.<file>` | `<secret name>[#<key>]`; `#key` selects one field of a JSON object | |
//! | `rotor.dev/template.<file>` | a minijinja template; `secrets["<file>"]` is the value of `secret.<file>` | |
//! | `rotor.dev/file-mode` | octal mode, no execute bits, no write for group/others | `"0400"` |
//! | `rotor.dev/file-owner` | `"<uid>:<gid>"`, numeric | the app's user |
//! | `rotor.dev/refresh` | poll interval, `100ms` to `24h` (`30s`, `5m`) | `"30s"` |
//! | `rotor.dev/reload`, `rotor.dev/reload.<n>` | comma-separated actions: `signal:<SIG>:<process name>`, `signal:<SIG>:<pid file path>`, `http://127.0.0.1:<port>/<path>`, `exec:<command> [args…]` | none |
//! | `rotor.dev/on-missing` | `keep` (keep the file, warn) or `delete` | `"keep"` |
//! | `rotor.dev/status` | set by the webhook; never trusted | |
//!
//! `<file>` is whatever makes `secret.<file>` a valid annotation name: at
//! most 56 characters from letters, digits, `-`, `_` and `.`, beginning and
//! ending with a letter or digit, so never `.`, `..`, hidden, or a path.
//! Store addresses never come from annotations: a pod only names a store.
//! Any other `rotor.dev/` annotation is an error, so a typo or an attempt to
//! set an address is refused rather than ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::names::{validate_file_name, validate_secret_name};

/// The annotation prefix.
pub const PREFIX: &str = "rotor.dev/";
pub const INJECT: &str = "rotor.dev/inject";
pub const STORE: &str = "rotor.dev/store";
pub const SECRET_PREFIX: &str = "rotor.dev/secret.";
pub const TEMPLATE_PREFIX: &str = "rotor.dev/template.";
pub const FILE_MODE: &str = "rotor.dev/file-mode";
pub const FILE_OWNER: &str = "rotor.dev/file-owner";
pub const REFRESH: &str = "rotor.dev/refresh";
pub const RELOAD: &str = "rotor.dev/reload";
pub const ON_MISSING: &str = "rotor.dev/on-missing";
/// On a SecretRotationPolicy (not a pod): a new value triggers one rotation.
pub const ROTATE_NOW: &str = "rotor.dev/rotate-now";
/// Set by the webhook after injection. Parsing ignores it; it never lets a
/// pod skip validation.
pub const STATUS: &str = "rotor.dev/status";

pub const DEFAULT_FILE_MODE: u32 = 0o400;
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
pub const MIN_REFRESH: Duration = Duration::from_millis(100);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Bounds on what one pod may ask, so that no request, however large,
/// costs the webhook or the sidecar more than a bounded amount of work,
/// memory and message text.
pub const MAX_ANNOTATIONS: usize = 64;
/// The longest `rotor.dev/` annotation value (a template, mostly).
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// Reload actions across `rotor.dev/reload` and `rotor.dev/reload.<n>`.
pub const MAX_RELOAD_ACTIONS: usize = 16;
/// Problems reported one by one; the rest are counted.
pub const MAX_REPORTED_ERRORS: usize = 8;

/// One annotation's problem: which annotation, what is wrong with its
/// value, and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {problem}; expected {expected}")]
pub struct AnnotationError {
    pub annotation: String,
    pub problem: String,
    pub expected: String,
}

/// The problems found in a pod's annotations: the first
/// [`MAX_REPORTED_ERRORS`], and how many more there were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AnnotationErrors(pub Vec<AnnotationError>, pub usize);

impl AnnotationErrors {
    /// Every problem, shown and not.
    pub fn total(&self) -> usize {
        self.0.len() + self.1
    }
}

impl fmt::Display for AnnotationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))?;
        match self.1 {
            0 => Ok(()),
            1 => f.write_str("; and 1 more problem"),
            n => write!(f, "; and {n} more problems"),
        }
    }
}

/// Where a file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// The value of a secret, or one field of its JSON object.
    Secret { name: String, key: Option<String> },
    /// A minijinja template over the pod's `secret.<file>` values.
    Template { source: String },
}

/// A reload action to run after the files changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadAction {
    Signal {
        signal: Signal,
        target: ProcessTarget,
    },
    Http {
        url: String,
    },
    Exec {
        argv: Vec<String>,
    },
}

impl ReloadAction {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadAction::Signal { .. } => "signal",
            ReloadAction::Http { .. } => "http",
            ReloadAction::Exec { .. } => "exec",
        }
    }
}

impl fmt::Display for ReloadAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadAction::Signal { signal, target } => match target {
                ProcessTarget::Name(n) => write!(f, "signal:{}:{n}", signal.name()),
                ProcessTarget::PidFile(p) => write!(f, "signal:{}:{}", signal.name(), p.display()),
            },
            ReloadAction::Http { url } => f.write_str(url),
            ReloadAction::Exec { argv } => write!(f, "exec:{}", argv.join(" ")),
        }
    }
}

/// The signals a reload may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Usr1,
    Usr2,
    Term,
    Int,
    Quit,
    Winch,
}

impl Signal {
    const ALL: [(Signal, &'static str); 7] = [
        (Signal::Hup, "HUP"),
        (Signal::Usr1, "USR1"),
        (Signal::Usr2, "USR2"),
        (Signal::Term, "TERM"),
        (Signal::Int, "INT"),
        (Signal::Quit, "QUIT"),
        (Signal::Winch, "WINCH"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map(|(_, n)| *n)
            .expect("every signal is listed")
    }

    fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_uppercase();
        let s = s.strip_prefix("SIG").unwrap_or(&s);
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(sig, _)| *sig)
    }
}

/// Which process a signal goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessTarget {
    /// Found by name in `/proc` (needs a shared PID namespace).
    Name(String),
    /// The pid written in this file.
    PidFile(PathBuf),
}

/// What to do with a file whose secret disappeared from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissing {
    #[default]
    Keep,
    Delete,
}

/// A pod's parsed and validated `rotor.dev/*` annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSecrets {
    pub inject: bool,
    pub store: Option<String>,
    /// Output files by name.
    pub files: BTreeMap<String, FileSource>,
    /// `None`: the annotation is absent and the sidecar's default applies
    /// (`0400`, or what the webhook chose when the app's user is unknown).
    pub file_mode: Option<u32>,
    pub file_owner: Option<(u32, u32)>,
    pub refresh: Duration,
    pub reload: Vec<ReloadAction>,
    pub on_missing: OnMissing,
}

impl Default for PodSecrets {
    fn default() -> Self {
        Self {
            inject: false,
            store: None,
            files: BTreeMap::new(),
            file_mode: None,
            file_owner: None,
            refresh: DEFAULT_REFRESH,
            reload: Vec::new(),
            on_missing: OnMissing::Keep,
        }
    }
}

impl PodSecrets {
    /// The distinct secret names the files read, sorted.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .files
            .values()
            .filter_map(|s| match s {
                FileSource::Secret { name, .. } => Some(name.as_str()),
                FileSource::Template { .. } => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// True when a reload action sends a signal by process name, which
    /// needs `shareProcessNamespace`.
    pub fn needs_shared_pid_namespace(&self) -> bool {
        self.reload.iter().any(|a| {
            matches!(
                a,
                ReloadAction::Signal {
                    target: ProcessTarget::Name(_),
                    ..
                }
            )
        })
    }
}

/// Parses a pod's annotations. Annotations outside `rotor.dev/` are
/// ignored. Every problem is reported, not only the first.
pub fn parse<'a, I>(annotations: I) -> Result<PodSecrets, AnnotationErrors>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = PodSecrets::default();
    let mut errors = Vec::new();
    let mut omitted = 0usize;
    let mut err = |annotation: &str, problem: String, expected: &str| {
        if errors.len() < MAX_REPORTED_ERRORS {
            errors.push(AnnotationError {
                annotation: quote_name(annotation),
                problem,
                expected: expected.to_owned(),
            })
        } else {
            omitted += 1;
        }
    };
    let mut reloads: Vec<(u32, &str, &str)> = Vec::new();
    let mut seen = 0usize;
    for (key, value) in annotations {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            continue;
        };
        seen += 1;
        if seen > MAX_ANNOTATIONS {
            if seen == MAX_ANNOTATIONS + 1 {
                err(
                    PREFIX,
                    format!("more than {MAX_ANNOTATIONS} rotor.dev/ annotations are set"),
                    &format!("at most {MAX_ANNOTATIONS}"),
                );
            }
            continue;
        }
        if value.len() > MAX_VALUE_LEN {
            err(
                key,
                format!("value is {} bytes long", value.len()),
                &format!("at most {MAX_VALUE_LEN} bytes"),
            );
            continue;
        }
        let shown = quote(value);
        if let Some(file) = rest.strip_prefix("secret.") {
            match parse_secret_ref(value) {
                Ok(source) => insert_file(&mut out, key, file, source, &mut err),
                Err((problem, expected)) => err(key, format!("value {shown} {problem}"), &expected),
            }
        } else if let Some(file) = rest.strip_prefix("template.") {
            match minijinja::Environment::new().template_from_str(value) {
                Ok(_) => insert_file(
                    &mut out,
                    key,
                    file,
                    FileSource::Template {
                        source: value.to_owned(),
                    },
                    &mut err,
                ),
                Err(e) => err(
                    key,
                    format!("is not a valid template: {e}"),
                    "a minijinja template such as \"user={{ secrets['db-user'] }}\"",
                ),
            }
        } else if rest == "reload" {
            reloads.push((0, key, value));
        } else if let Some(n) = rest.strip_prefix("reload.") {
            match n.parse::<u32>() {
                Ok(n) => reloads.push((n, key, value)),
                Err(_) => err(
                    key,
                    format!("has the suffix {n:?}, which is not a number"),
                    "rotor.dev/reload or rotor.dev/reload.<n> with n a number",
                ),
            }
        } else {
            match key {
                INJECT => match value {
                    "true" => out.inject = true,
                    "false" => out.inject = false,
                    _ => err(
                        key,
                        format!("value {shown} is not a boolean"),
                        "\"true\" or \"false\"",
                    ),
                },
                STORE => match validate_store_name(value) {
                    Ok(()) => out.store = Some(value.to_owned()),
                    Err(problem) => err(
                        key,
                        format!("value {shown} {problem}"),
                        "the name of a RotorStore or ClusterRotorStore (lowercase letters, digits, '-' and '.', at most 253 characters)",
                    ),
                },
                FILE_MODE => match parse_mode(value) {
                    Ok(mode) => out.file_mode = Some(mode),
                    Err(problem) => err(
                        key,
                        format!("value {shown} {problem}"),
                        "an octal mode with no execute bits and no write for group or others, such as \"0400\" or \"0440\"",
                    ),
                },
                FILE_OWNER => match parse_owner(value) {
                    Some(owner) => out.file_owner = Some(owner),
                    None => err(
                        key,
                        format!("value {shown} is not a numeric uid:gid"),
                        "\"<uid>:<gid>\" with numbers, such as \"1000:1000\"",
                    ),
                },
                REFRESH => match humantime::parse_duration(value) {
                    Ok(d) if (MIN_REFRESH..=MAX_REFRESH).contains(&d) => out.refresh = d,
                    Ok(_) => err(
                        key,
                        format!("value {shown} is out of range"),
                        "a duration from 100ms to 24h, such as \"30s\" or \"5m\"",
                    ),
                    Err(e) => err(
                        key,
                        format!("value {shown} is not a duration ({e})"),
                        "a duration from 100ms to 24h, such as \"30s\" or \"5m\"",
                    ),
                },
                ON_MISSING => match value {
                    "keep" => out.on_missing = OnMissing::Keep,
                    "delete" => out.on_missing = OnMissing::Delete,
                    _ => err(
                        key,
                        format!("value {shown} is not a known policy"),
                        "\"keep\" or \"delete\"",
                    ),
                },
                STATUS => {}
                _ => {
                    let problem = if ["addr", "address", "url", "endpoint", "server", "host"]
                        .iter()
                        .any(|w| rest.contains(w))
                    {
                        "is not a Rotor annotation; store addresses come only from RotorStore and ClusterRotorStore objects, never from pods".to_owned()
                    } else {
                        "is not a Rotor annotation".to_owned()
                    };
                    err(
                        key,
                        problem,
                        "one of rotor.dev/inject, store, secret.<file>, template.<file>, file-mode, file-owner, refresh, reload, reload.<n>, on-missing",
                    )
                }
            }
        }
    }
    reloads.sort_by_key(|(n, _, _)| *n);
    let mut actions = 0usize;
    'reloads: for (_, key, value) in reloads {
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            actions += 1;
            if actions > MAX_RELOAD_ACTIONS {
                err(
                    key,
                    format!("more than {MAX_RELOAD_ACTIONS} reload actions are set"),
                    &format!(
                        "at most {MAX_RELOAD_ACTIONS} across rotor.dev/reload and rotor.dev/reload.<n>"
                    ),
                );
                break 'reloads;
            }
            match parse_reload(part) {
                Ok(action) => out.reload.push(action),
                Err((problem, expected)) => {
                    err(key, format!("action {} {problem}", quote(part)), expected)
                }
            }
        }
    }
    // A template may only name files that come from secrets.
    for (file, source) in &out.files {
        if let FileSource::Template { source } = source {
            for referenced in template_references(source) {
                if matches!(out.files.get(&referenced), Some(FileSource::Secret { .. })) {
                    continue;
                }
                // A name no annotation can define (`../db`) is said to be
                // one, not pointed at an annotation that cannot exist.
                let problem = match validate_file_name(&referenced) {
                    Ok(()) => format!(
                        "refers to secrets[{referenced:?}], which no rotor.dev/secret.{referenced} annotation defines"
                    ),
                    Err(e) => format!(
                        "refers to secrets[{referenced:?}], which is not a file name: it {}",
                        e.problem
                    ),
                };
                err(
                    &format!("{TEMPLATE_PREFIX}{file}"),
                    problem,
                    "secrets[\"<file>\"] for a file defined by a rotor.dev/secret.<file> annotation",
                );
            }
        }
    }
    if out.inject {
        if out.store.is_none() {
            err(
                STORE,
                "is missing".to_owned(),
                "the name of the RotorStore to read from, since rotor.dev/inject is \"true\"",
            );
        }
        if out.files.is_empty() {
            err(
                SECRET_PREFIX,
                "no rotor.dev/secret.<file> or rotor.dev/template.<file> annotation is set"
                    .to_owned(),
                "at least one file to deliver, since rotor.dev/inject is \"true\"",
            );
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(AnnotationErrors(errors, omitted))
    }
}

fn insert_file(
    out: &mut PodSecrets,
    key: &str,
    file: &str,
    source: FileSource,
    err: &mut impl FnMut(&str, String, &str),
) {
    if let Err(e) = validate_file_name(file) {
        err(
            key,
            format!("names the file {:?}, which {}", e.name, e.problem),
            e.expected,
        );
        return;
    }
    if out.files.insert(file.to_owned(), source).is_some() {
        err(
            key,
            format!("defines the file {file:?} a second time"),
            "one rotor.dev/secret.<file> or rotor.dev/template.<file> per file name",
        );
    }
}

fn parse_secret_ref(value: &str) -> Result<FileSource, (String, String)> {
    let (name, key) = match value.split_once('#') {
        Some((n, k)) => (n, Some(k)),
        None => (value, None),
    };
    validate_secret_name(name).map_err(|e| {
        (
            format!("has the secret name {:?}, which {}", e.name, e.problem),
            format!(
                "\"<secret name>[#<key>]\", the secret name being {}",
                e.expected
            ),
        )
    })?;
    if let Some(k) = key
        && (k.is_empty() || k.len() > 253 || k.contains(['#', '\n']))
    {
        return Err((
            format!("has the key {k:?}, which is empty, too long, or contains '#' or a newline"),
            "\"<secret name>#<key>\" with a non-empty JSON field name".to_owned(),
        ));
    }
    Ok(FileSource::Secret {
        name: name.to_owned(),
        key: key.map(str::to_owned),
    })
}

fn validate_store_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".to_owned());
    }
    if value.len() > 253 {
        return Err(format!("is {} characters long", value.len()));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')))
    {
        return Err(format!("contains the character {c:?}"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(value.chars().next()) || !alnum(value.chars().last()) {
        return Err("does not begin and end with a lowercase letter or digit".to_owned());
    }
    Ok(())
}

pub fn parse_mode(value: &str) -> Result<u32, String> {
    if value.is_empty() || value.len() > 4 || !value.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err("is not an octal number of up to 4 digits".to_owned());
    }
    let mode = u32::from_str_radix(value, 8).map_err(|_| "is not octal".to_owned())?;
    if mode & 0o7000 != 0 {
        return Err("sets setuid, setgid or sticky bits".to_owned());
    }
    if mode & 0o111 != 0 {
        return Err("grants execute permission".to_owned());
    }
    if mode & 0o022 != 0 {
        return Err("grants write permission to group or others".to_owned());
    }
    if mode & 0o400 == 0 {
        return Err("does not let the owner read the file".to_owned());
    }
    Ok(mode)
}

fn parse_owner(value: &str) -> Option<(u32, u32)> {
    let (u, g) = value.split_once(':')?;
    let num = |s: &str| {
        (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    Some((num(u)?, num(g)?))
}

const RELOAD_EXPECTED: &str = "\"signal:<SIG>:<process name>\", \"signal:<SIG>:<absolute pid file path>\", \"http://127.0.0.1:<port>/<path>\" or \"exec:<command> [args]\"";

fn parse_reload(part: &str) -> Result<ReloadAction, (String, &'static str)> {
    if let Some(rest) = part.strip_prefix("signal:") {
        let Some((sig, target)) = rest.split_once(':') else {
            return Err((
                "has no process after the signal".to_owned(),
                RELOAD_EXPECTED,
            ));
        };
        let signal = Signal::parse(sig).ok_or_else(|| {
            (
                format!("names the signal {sig:?}, which is not allowed"),
                "one of HUP, USR1, USR2, TERM, INT, QUIT, WINCH",
            )
        })?;
        let target = if target.starts_with('/') {
            if target.split('/').any(|s| s == "..") {
                return Err((
                    "has a pid file path with '..'".to_owned(),
                    "an absolute pid file path without '..'",
                ));
            }
            ProcessTarget::PidFile(PathBuf::from(target))
        } else if target.is_empty()
            || target.len() > 64
            || target.chars().any(|c| c.is_control() || c == '/')
        {
            return Err((
                format!(
                    "has the process name {target:?}, which is empty, too long or has '/' or control characters"
                ),
                "the process name as in /proc/<pid>/comm, such as \"nginx\"",
            ));
        } else {
            ProcessTarget::Name(target.to_owned())
        };
        return Ok(ReloadAction::Signal { signal, target });
    }
    if let Some(rest) = part.strip_prefix("http://") {
        let (authority, _path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") || !port_ok {
            return Err((
                "is not a loopback URL with a port".to_owned(),
                "\"http://127.0.0.1:<port>/<path>\": reload hooks only reach the pod itself",
            ));
        }
        if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(("contains whitespace".to_owned(), "a URL without spaces"));
        }
        return Ok(ReloadAction::Http {
            url: part.to_owned(),
        });
    }
    if let Some(rest) = part.strip_prefix("exec:") {
        let argv: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
        if argv.is_empty() {
            return Err(("has no command".to_owned(), "\"exec:<command> [args]\""));
        }
        return Ok(ReloadAction::Exec { argv });
    }
    Err(("is not a known reload action".to_owned(), RELOAD_EXPECTED))
}

/// The `secrets["…"]` / `secrets['…']` / `secrets.name` references of a
/// template, found by scanning its source.
pub fn template_references(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("secrets") {
        rest = &rest[at + "secrets".len()..];
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed.strip_prefix('[') {
            let after = after.trim_start();
            if let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'')
                && let Some(end) = after[1..].find(q)
            {
                out.push(after[1..1 + end].to_owned());
            }
        } else if let Some(after) = trimmed.strip_prefix('.') {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Quotes a value for an error message, cut to a readable length.
/// Annotation values are not secret: they name secrets, never hold them.
/// An annotation name as shown in a message: names are at most 253
/// characters in Kubernetes, but a review sent directly may carry any.
fn quote_name(name: &str) -> String {
    if name.len() <= 253 {
        name.to_owned()
    } else {
        format!("{}…", name.chars().take(100).collect::<String>())
    }
}

fn quote(value: &str) -> String {
    let cut: String = value.chars().take(100).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests;
