//! The two Prometheus exposition formats. prometheus-client writes only OpenMetrics 1.0 text;
//! a scraper that asks for it (`Accept: application/openmetrics-text`, what Prometheus sends
//! first) gets it as written, with its own content type. Everyone else (curl, `promtool
//! check metrics`, agents that speak only the classic format) gets the same families
//! rewritten as text format 0.0.4. No crate converts between the two, and prometheus-client's
//! encoder cannot be given another output, so `to_text` rewrites its output line by line.

/// What `/metrics` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, as prometheus-client writes it.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The format a request's `Accept` header prefers: OpenMetrics when it names
/// `application/openmetrics-text` with a q at least that of the plain-text ranges
/// (`text/plain`, `text/*`, `*/*`), classic text otherwise, including without `Accept`
/// and for media types neither format is (as client_golang's promhttp does, no 406).
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .filter(|q| q.is_finite())
            .map_or(1.0, |q| q.clamp(0.0, 1.0));
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Rewrite OpenMetrics text (prometheus-client's output) as text format 0.0.4:
/// - a counter family `x` (samples `x_total`) is declared as `x_total`, so the classic
///   parser types its samples as a counter instead of untyped;
/// - `info` families become gauges named `x_info`, `stateset` gauges, `unknown` untyped;
/// - `# UNIT` and `# EOF` are dropped (classic has neither), and so are `_created` samples,
///   exemplars and timestamps (OpenMetrics timestamps are seconds, classic ones ms);
/// - `# HELP` text, written raw by prometheus-client, gets the classic escaping of `\`.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family's HELP waits for its TYPE, which decides the classic name.
    let mut help: Option<&str> = None;
    // For counters, histograms and summaries: the name of the family's `_created` samples.
    let mut created: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, h)| h));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (classic, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" => (name.to_string(), "gauge"),
                _ => (name.to_string(), "untyped"),
            };
            created = matches!(kind, "counter" | "histogram" | "summary")
                .then(|| format!("{name}_created"));
            if let Some(h) = help.take() {
                out.push_str("# HELP ");
                out.push_str(&classic);
                out.push(' ');
                out.push_str(&h.replace('\\', "\\\\"));
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&classic);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = split_sample(line) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if created.as_deref() == Some(name) {
            continue;
        }
        out.push_str(series);
        out.push(' ');
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// `name{labels} value [timestamp] [# exemplar]` -> (`name{labels}`, `value`). Label values
/// are quoted and may hold spaces, `}` and `#`, so the label set is scanned, not split.
fn split_sample(line: &str) -> Option<(&str, &str)> {
    let series_end = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (mut quoted, mut escaped) = (false, false);
            let mut end = None;
            for (j, c) in line[i..].char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        end = Some(i + j + 1);
                        break;
                    }
                    _ => {}
                }
            }
            end?
        }
        Some(i) => i,
        None => return None,
    };
    let value = line[series_end..].split_whitespace().next()?;
    Some((&line[..series_end], value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    /// prometheus-client's output (it ends every HELP with a full stop).
    fn openmetrics(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn negotiation_follows_accept() {
        use Format::*;
        // Prometheus 2.x's scrape Accept header.
        let prom2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        // Prometheus 3.x's default (scrape_protocols: OpenMetricsText1.0.0 first).
        let prom3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        for (accept, want) in [
            (None, Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("application/json"), Text),
            (Some(prom2), OpenMetrics),
            (Some(prom3), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Version=1.0.0"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0.2, text/plain"), Text),
            (Some("application/openmetrics-text;q=0, */*"), Text),
            (Some("application/openmetrics-text;q=nope"), OpenMetrics),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
        assert!(OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
        assert!(Text.content_type().starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn counters_are_declared_by_their_sample_name() {
        let mut r = Registry::with_prefix("jwtgate");
        let f = Family::<Vec<(&'static str, String)>, Counter>::default();
        f.get_or_create(&vec![("route", "a b}\"#".into())])
            .inc_by(3);
        r.register("requests", "Requests, by route", f);
        r.register_with_unit(
            "cpu",
            "CPU time",
            Unit::Seconds,
            Counter::<f64, std::sync::atomic::AtomicU64>::default(),
        );
        let text = to_text(&openmetrics(&r));
        assert_eq!(
            text,
            "# HELP jwtgate_requests_total Requests, by route.\n\
             # TYPE jwtgate_requests_total counter\n\
             jwtgate_requests_total{route=\"a b}\\\"#\"} 3\n\
             # HELP jwtgate_cpu_seconds_total CPU time.\n\
             # TYPE jwtgate_cpu_seconds_total counter\n\
             jwtgate_cpu_seconds_total 0.0\n"
        );
    }

    #[test]
    fn gauges_histograms_and_info_keep_their_samples() {
        let mut r = Registry::default();
        let g = Gauge::<i64>::default();
        g.set(-2);
        r.register("open", "Open \\ things", g);
        let h = Histogram::new([0.5, 1.0]);
        h.observe(0.7);
        r.register_with_unit("took", "Time", Unit::Seconds, h);
        r.register("build", "Build", Info::new(vec![("version", "1")]));
        let om = openmetrics(&r);
        assert!(om.contains("# UNIT took_seconds seconds") && om.ends_with("# EOF\n"));
        let text = to_text(&om);
        assert_eq!(
            text,
            "# HELP open Open \\\\ things.\n\
             # TYPE open gauge\n\
             open -2\n\
             # HELP took_seconds Time.\n\
             # TYPE took_seconds histogram\n\
             took_seconds_sum 0.7\n\
             took_seconds_count 1\n\
             took_seconds_bucket{le=\"0.5\"} 0\n\
             took_seconds_bucket{le=\"1.0\"} 1\n\
             took_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP build_info Build.\n\
             # TYPE build_info gauge\n\
             build_info{version=\"1\"} 1\n"
        );
    }

    #[test]
    fn created_samples_exemplars_and_timestamps_are_dropped() {
        let om = "# HELP c C\n# TYPE c counter\nc_total{a=\"x # y\"} 5 # {trace_id=\"t\"} 1.0 123.4\nc_created 1700000000.0\n# HELP g G\n# TYPE g gauge\ng 2 1700000000.5\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP c_total C\n# TYPE c_total counter\nc_total{a=\"x # y\"} 5\n# HELP g G\n# TYPE g gauge\ng 2\n"
        );
    }
}
