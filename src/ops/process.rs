//! Process metrics under the names every Prometheus client library exports (`process_*`, as
//! client_golang's process collector), read from /proc/self when scraped: prometheus-client
//! has no process collector. On a system without /proc they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Clock ticks per second in /proc/*/stat. Linux reports these times in USER_HZ, which is
/// 100 on every architecture (what `sysconf(_SC_CLK_TCK)` returns); prometheus/procfs uses
/// the same constant.
const USER_HZ: f64 = 100.0;

/// Reads /proc/self at every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of /proc/self.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: Option<f64>,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl Sample {
    fn read() -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut s = parse_stat(&stat)?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_btime(&t));
        s.start_time_seconds = s.start_time_seconds.zip(boot).map(|(t, b)| b + t);
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| parse_vm_rss(&t))
        {
            s.resident_bytes = rss;
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        s.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| parse_max_fds(&t));
        Some(s)
    }
}

/// /proc/self/stat: CPU time (utime + stime), start time after boot (seconds, until
/// `btime` is added) and virtual size. `comm` (field 2) may hold spaces and `)`, so the
/// fields are counted from its last `)`.
fn parse_stat(stat: &str) -> Option<Sample> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is index 0 here; utime is field 14, stime 15, starttime 22, vsize 23.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Sample {
        cpu_seconds: (num(14)? + num(15)?) as f64 / USER_HZ,
        start_time_seconds: num(22).map(|t| t as f64 / USER_HZ),
        virtual_bytes: num(23)?,
        ..Sample::default()
    })
}

fn parse_btime(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v as f64)
}

/// `VmRSS:     1234 kB` in /proc/self/status (no page size needed, unlike statm).
fn parse_vm_rss(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = v.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// The soft limit in `Max open files  1024  4096  files`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    let v = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    v.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = Sample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 5] = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                Some(s.resident_bytes as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                Some(s.virtual_bytes as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                s.open_fds.map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                None,
                s.max_fds.map(|n| n as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                ConstGauge::new(v).encode(encoder.encode_descriptor(
                    name,
                    help,
                    unit.as_ref(),
                    MetricType::Gauge,
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (jw t) g)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 3 0 12345 987654321 2000 18446744073709551615";
        let s = parse_stat(stat).unwrap();
        assert_eq!(s.cpu_seconds, 4.0);
        assert_eq!(s.start_time_seconds, Some(123.45));
        assert_eq!(s.virtual_bytes, 987_654_321);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_limits_and_boot_time() {
        assert_eq!(
            parse_vm_rss("Name:\tjwtgate\nVmRSS:\t    2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(
            parse_max_fds("Max cpu time   unlimited  unlimited  seconds\nMax open files            1024                 524288               files\n"),
            Some(1024)
        );
        assert_eq!(parse_btime("cpu 1 2 3\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_reads_as_alive() {
        let s = Sample::read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds.unwrap() >= 3 && s.max_fds.unwrap() >= s.open_fds.unwrap());
        let now = crate::clock::now_unix() as f64;
        let started = s.start_time_seconds.unwrap();
        assert!(started <= now + 1.0 && started > now - 86400.0 * 365.0);
    }
}
