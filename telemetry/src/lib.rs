//! Logging setup shared by Rotor's binaries: structured `tracing` logs on
//! stderr, as text or JSON; in [`metrics`], the metrics they all export;
//! and, in [`flags`], the rule their flags follow.

pub mod flags;
pub mod metrics;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The logging flags every Rotor binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `rotor_store=debug`).
    /// Default: `warn` for `rotor`, `info` for the sidecar and controller.
    /// A filter that does not parse is refused with the reason, rather than
    /// silently logging nothing.
    #[arg(long, env = "ROTOR_LOG", global = true, value_parser = parse_filter)]
    pub log: Option<String>,

    /// Log line format on stderr.
    #[arg(
        long,
        env = "ROTOR_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the subscriber, with `default_filter` when `--log` is unset.
    pub fn init(&self, default_filter: &str) {
        init(
            self.log_format,
            self.log.as_deref().unwrap_or(default_filter),
        );
    }
}

/// An error with its whole source chain, `outer: cause: root cause`, for
/// log fields (`error = %Chain(&e)`): a top-level message alone often hides
/// what went wrong. Causes that repeat their parent's text are skipped.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let next = cause.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

/// The longest log line written; longer lines are cut and say by how much.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// One log line on its way to stderr, cut at [`MAX_LOG_LINE`]: the fmt
/// layer formats an event into one buffer and writes it whole, so each
/// writer holds exactly one line.
#[derive(Default)]
pub struct BoundedLine {
    buf: Vec<u8>,
    cut: usize,
}

impl std::io::Write for BoundedLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = MAX_LOG_LINE.saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        self.cut += data.len() - take;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BoundedLine {
    /// The line as written: whole, or cut with a note.
    pub fn finish(mut self) -> Vec<u8> {
        if self.cut > 0 {
            while self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            self.buf.extend_from_slice(
                format!(" …[log line cut: {} more bytes]\n", self.cut).as_bytes(),
            );
        }
        std::mem::take(&mut self.buf)
    }
}

/// Writes each bounded line to stderr when the layer is done with it.
struct StderrLine(Option<BoundedLine>);

impl std::io::Write for StderrLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.get_or_insert_with(BoundedLine::default).write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrLine {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &line.finish());
        }
    }
}

/// Checks a `--log` value: `Ok` as given, or why it is not a filter and
/// what one looks like.
fn parse_filter(value: &str) -> Result<String, String> {
    EnvFilter::builder()
        .with_regex(false)
        .parse(value)
        .map(|_| value.to_owned())
        .map_err(|e| {
            format!(
                "{e}; expected comma-separated directives in RUST_LOG syntax, \
                 each a level (error, warn, info, debug, trace, off) or \
                 target=level, e.g. `info` or `info,rotor_store=debug`"
            )
        })
}

/// Whether log lines get ANSI colours: only on a terminal, and never with
/// `NO_COLOR` set (<https://no-color.org>); files and pipes get plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global `tracing` subscriber. `filter` uses `RUST_LOG`
/// syntax, e.g. `info` or `rotor_store=debug` (checked by `--log`'s parser;
/// a filter given here that does not parse falls back to `warn`). Every
/// line is bounded by [`MAX_LOG_LINE`].
pub fn init(format: LogFormat, filter: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::builder()
        .with_regex(false)
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| StderrLine(None));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("store file s.rotor")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn filters_that_do_not_parse_are_refused_with_the_expected_form() {
        assert_eq!(
            parse_filter("info,rotor_store=debug").unwrap(),
            "info,rotor_store=debug"
        );
        let e = parse_filter("rotor=verbose!!").unwrap_err();
        assert!(e.contains("expected comma-separated directives"), "{e}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    #[test]
    fn chains_show_every_cause_once() {
        let e = Outer(std::io::Error::other("permission denied (os error 13)"));
        assert_eq!(
            Chain(&e).to_string(),
            "store file s.rotor: permission denied (os error 13)"
        );
    }

    #[test]
    fn long_lines_are_cut_and_say_so_short_ones_pass_whole() {
        let mut short = BoundedLine::default();
        short.write_all(b"level=info msg=ok\n").unwrap();
        assert_eq!(short.finish(), b"level=info msg=ok\n");

        let mut long = BoundedLine::default();
        long.write_all(&vec![b'x'; 3 * MAX_LOG_LINE]).unwrap();
        long.write_all(b"\n").unwrap();
        let line = String::from_utf8(long.finish()).unwrap();
        assert!(line.len() < MAX_LOG_LINE + 64, "{}", line.len());
        assert!(line.ends_with(&format!(
            "[log line cut: {} more bytes]\n",
            2 * MAX_LOG_LINE + 1
        )));
    }
}
