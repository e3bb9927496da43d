//! Metrics every Rotor binary exports: `rotor_build_info` and the standard
//! `process_*` metrics (memory, CPU, file descriptors, threads, start
//! time), named as the Prometheus client libraries name them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Registers `rotor_build_info{version, binary}` (always 1) and the
/// process collector on `registry`, which must have no prefix: the
/// `process_*` names are the standard ones.
pub fn register(registry: &mut Registry, binary: &str) {
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ("binary".to_owned(), binary.to_owned()),
    ])
    .set(1);
    registry.register(
        "rotor_build_info",
        "The running binary and its version (always 1)",
        info,
    );
    registry.register_collector(Box::new(ProcessCollector));
}

/// Reads `/proc/self` at each scrape. Where `/proc` cannot be read (not
/// Linux, or hidden), the metrics it could not read are left out.
#[derive(Debug)]
pub struct ProcessCollector;

/// One reading of `/proc/self/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User plus system CPU time, in clock ticks.
    cpu_ticks: u64,
    threads: u64,
    /// Since boot, in clock ticks.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm`
/// may hold spaces and parentheses, so fields are counted after the last
/// `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // After `)`: field 3 (state) is index 0, so field n is index n - 3.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time in seconds since the epoch, from `/proc/stat`'s `btime`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Every process metric, as read now.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

fn read() -> Option<Reading> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_boot_time(&t));
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    Some(Reading {
        cpu_seconds: stat.cpu_ticks as f64 / ticks,
        resident_bytes: stat.resident_pages * rustix::param::page_size() as u64,
        virtual_bytes: stat.virtual_bytes,
        threads: stat.threads,
        start_time_seconds: boot.map(|b| b as f64 + stat.start_ticks as f64 / ticks),
        open_fds,
        max_fds,
    })
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl Into<f64>,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value.into());
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(r) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let e = &mut encoder;
        // Byte counts fit an f64 exactly below 2^53 (8 PiB).
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            r.resident_bytes as f64,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            r.virtual_bytes as f64,
        )?;
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process",
            r.threads as f64,
        )?;
        if let Some(start) = r.start_time_seconds {
            gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                start,
            )?;
        }
        if let Some(fds) = r.open_fds {
            gauge(
                e,
                "process_open_fds",
                "Number of open file descriptors",
                fds as f64,
            )?;
        }
        if let Some(max) = r.max_fds {
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name value` of each sample line.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194304 900 0 0 0 \
                    150 50 0 0 20 0 7 0 123456 98765432 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 200,
                threads: 7,
                start_ticks: 123456,
                virtual_bytes: 98765432,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn the_process_metrics_and_build_info_are_exported_under_their_standard_names() {
        let mut root = Registry::default();
        root.sub_registry_with_prefix("rotor").register(
            "other",
            "A prefixed metric",
            Gauge::<i64>::default(),
        );
        register(&mut root, "rotor-test");
        // Some CPU time to measure.
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::black_box(spin.elapsed());
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &root).unwrap();
        let got = samples(&text);
        let value = |name: &str| {
            got.iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
                .1
        };
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_threads",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(value(name) > 0.0, "{name} in\n{text}");
        }
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            value(&format!(
                "rotor_build_info{{version=\"{version}\",binary=\"rotor-test\"}}"
            )),
            1.0
        );
        assert!(text.contains("\nrotor_other 0\n"), "{text}");
        assert!(!text.contains("rotor_process_"), "{text}");
    }
}
