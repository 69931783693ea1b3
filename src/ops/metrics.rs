//! Prometheus metrics (`GET /metrics` on the admin listener). Counters on the request path
//! are created up front and bumped as plain atomics (no lock, no label lookup per request);
//! gauges are read from live state when scraped. Encoded by prometheus-client (OpenMetrics),
//! served in the format the scrape asks for (`exposition`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::error::{GatewayError, TokenError};
use crate::ops::exposition::{self, Format};

/// A metric's label set.
pub type Labels = Vec<(&'static str, String)>;

/// Why a request was refused at authentication, as a metric label.
const AUTH_REASONS: [&str; 15] = [
    "missing_token",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "malformed",
    "unsupported_algorithm",
    "unknown_kid",
    "issuer_mismatch",
    "audience_mismatch",
    "missing_claim",
    "revoked",
    "refresh_rejected",
    "insufficient_scope",
    "access_denied",
    "inactive",
];

fn reason_index(e: &GatewayError) -> Option<usize> {
    Some(match e {
        GatewayError::MissingToken => 0,
        GatewayError::InsufficientScope => 12,
        GatewayError::AccessDenied { .. } => 13,
        GatewayError::InvalidToken(t) => match t {
            TokenError::Expired => 1,
            TokenError::NotYetValid => 2,
            TokenError::BadSignature => 3,
            TokenError::Malformed(_) => 4,
            TokenError::UnsupportedAlgorithm => 5,
            TokenError::UnknownKid => 6,
            TokenError::IssuerMismatch => 7,
            TokenError::AudienceMismatch => 8,
            TokenError::MissingClaim(_) => 9,
            TokenError::Revoked => 10,
            TokenError::RefreshRejected => 11,
            TokenError::Inactive => 14,
        },
        _ => return None,
    })
}

/// Upper bounds (µs) of the request-duration buckets; one more bucket holds the rest.
const DURATION_BUCKETS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// Shards per histogram: each thread writes to its own (cache-line aligned), so workers on
/// different cores never contend; a scrape adds them up.
const SHARDS: usize = 4;

/// A request-duration histogram made of plain atomics, sharded by thread: prometheus-client's
/// own `Histogram` takes a mutex per observation, which both workers would contend for on
/// every request. The text format is still prometheus-client's (`encode_histogram`).
#[derive(Clone, Default, Debug)]
pub struct DurationHistogram(Arc<[DurationShard; SHARDS]>);

#[derive(Default, Debug)]
#[repr(align(128))]
struct DurationShard {
    buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// This thread's shard, assigned round robin at its first observation.
fn shard_index() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl DurationHistogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = DURATION_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(DURATION_BUCKETS_US.len());
        let shard = &self.0[shard_index()];
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        shard.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = DURATION_BUCKETS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(i, le)| {
                let n = self.0.iter().map(|s| s.buckets[i].load(Ordering::Relaxed));
                (le, n.sum())
            })
            .collect();
        // The count is the buckets' total, so the two always agree in one scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum_us: u64 = self
            .0
            .iter()
            .map(|s| s.sum_us.load(Ordering::Relaxed))
            .sum();
        let sum = sum_us as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One metric of `family` per label value, created now so the request path only indexes.
fn one_per<'a, M: Clone + Default>(
    family: &Family<Labels, M>,
    label: &'static str,
    values: impl IntoIterator<Item = &'a str>,
) -> Vec<M> {
    values
        .into_iter()
        .map(|v| family.get_or_create(&vec![(label, v.to_string())]).clone())
        .collect()
}

/// One route's answered requests by exact status code. A code's counter is created the
/// first time the route answers with it (one label lookup), then bumped as an atomic.
/// Codes 100..=599, a bounded set; anything else a peer sends is counted as `other`.
struct CodeCounters {
    family: Family<Labels, Counter>,
    route: String,
    /// By class (1xx..5xx), then by the code's last two digits; a class's table is
    /// allocated when the route first answers with a code of that class.
    by_class: [OnceLock<Box<[OnceLock<Counter>; 100]>>; 5],
    other: OnceLock<Counter>,
}

impl CodeCounters {
    fn new(family: &Family<Labels, Counter>, route: &str) -> CodeCounters {
        CodeCounters {
            family: family.clone(),
            route: route.to_string(),
            by_class: Default::default(),
            other: OnceLock::new(),
        }
    }

    fn counter(&self, status: u16) -> &Counter {
        let create = |code: String| {
            self.family
                .get_or_create(&vec![("route", self.route.clone()), ("code", code)])
                .clone()
        };
        if !(100..=599).contains(&status) {
            return self.other.get_or_init(|| create("other".into()));
        }
        let class = usize::from(status / 100 - 1);
        let table =
            self.by_class[class].get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        table[usize::from(status % 100)].get_or_init(|| create(status.to_string()))
    }
}

/// Config reload attempts by result (`ok`, `refused`). Held by the listeners' shared state,
/// so the count survives the reloads it counts; every new `App` registers it (`register`).
#[derive(Clone, Debug)]
pub struct Reloads(Family<Labels, Counter>);

impl Default for Reloads {
    fn default() -> Reloads {
        let family = Family::default();
        for result in ["ok", "refused"] {
            drop(family.get_or_create(&vec![("result", result.to_string())]));
        }
        Reloads(family)
    }
}

impl Reloads {
    /// Count one reload attempt.
    pub fn count(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.0
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Export the count as `jwtgate_reloads_total{result}` in `metrics`.
    pub fn register(&self, metrics: &mut Metrics) {
        self.register_as(
            metrics,
            "reloads",
            "Config reload attempts (POST /reload, SIGHUP), by result",
        );
    }

    /// Export the count as `jwtgate_<name>_total{result}`.
    pub fn register_as(&self, metrics: &mut Metrics, name: &str, help: &str) {
        metrics.register_metric(name, help, None, self.0.clone());
    }
}

/// Export certificate file reloads (`ops::certs`) as `jwtgate_tls_cert_reloads_total{result}`.
pub fn register_cert_reloads(r: &Reloads, metrics: &mut Metrics) {
    r.register_as(
        metrics,
        "tls_cert_reloads",
        "Reloads of changed TLS certificate files, by result (refused: the old pair is kept)",
    );
}

/// `jwtgate_policy_decisions_total{route,decision,mode}`: routes' rules by outcome
/// (`allow`, `deny`, `error`) and mode (`enforce`, `shadow`). Counters are created with
/// the rules (`counter`), so the request path only bumps them.
#[derive(Clone, Debug, Default)]
pub struct PolicyDecisions(Family<Labels, Counter>);

impl PolicyDecisions {
    /// The counter of one label set (created now, so it is exported as 0 until used).
    pub fn counter(&self, route: &str, decision: &'static str, mode: &'static str) -> Counter {
        self.0
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("decision", decision.to_string()),
                ("mode", mode.to_string()),
            ])
            .clone()
    }

    /// Export the family as `jwtgate_policy_decisions_total` in `metrics`.
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register_metric(
            "policy_decisions",
            "Requests decided by route rules (allow, require_claims), by route, decision (allow, deny, error) and mode (enforce, shadow)",
            None,
            self.0.clone(),
        );
    }
}

/// Counters owned elsewhere, exported as one family: one sample per label set.
#[derive(Clone, Debug, Default)]
struct CounterSet(Arc<std::sync::Mutex<Vec<(Labels, Counter)>>>);

impl CounterSet {
    fn push(&self, labels: Labels, c: Counter) {
        if let Ok(mut v) = self.0.lock() {
            v.push((labels, c));
        }
    }
}

impl TypedMetric for CounterSet {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for CounterSet {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let Ok(v) = self.0.lock() else {
            return Ok(());
        };
        for (labels, c) in v.iter() {
            c.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The gateway's metrics. Route index `routes.len()` stands for "no route" (404, logout).
pub struct Metrics {
    registry: Registry,
    /// `process_*` (no `jwtgate_` prefix: the names every client library uses).
    process: Registry,
    /// Families of counters owned elsewhere, by name (`register_counter`).
    counter_sets: std::collections::HashMap<String, CounterSet>,
    /// Per route: answered requests by exact status code.
    requests: Vec<CodeCounters>,
    /// Per route (last: no route): time until the response head is ready.
    durations: Vec<DurationHistogram>,
    auth_failures: Vec<Counter>,
    /// Per route: requests refused by its `rate_limit` (429).
    rate_limited: Vec<Counter>,
    /// Set at scrape time.
    pub keys_loaded: Family<Labels, Gauge>,
    pub revocation_store_up: Gauge,
    pub verified_tokens_cached: Gauge<u64, AtomicU64>,
    /// Open client connections, by listener (`public`, `admin`).
    pub connections_active: Family<Labels, Gauge>,
    /// The served certificate's notAfter, by listener (`https`).
    pub tls_cert_not_after: Family<Labels, Gauge>,
    /// Seconds since each JWKS issuer's key set was last fetched successfully.
    pub jwks_age: Family<Labels, Gauge<f64, AtomicU64>>,
    /// 1 while the revocation store's circuit breaker is open (failing fast).
    pub revocation_circuit_open: Gauge,
    /// Per route, per upstream (config order): latency and errors.
    upstreams: Vec<Vec<UpstreamStats>>,
}

/// One upstream of one route: time to the response head, and failures by kind. Created
/// up front, bumped as atomics.
#[derive(Clone, Default)]
pub struct UpstreamStats {
    pub duration: DurationHistogram,
    /// Connect or request failures (refused, reset, TLS, protocol).
    pub unreachable: Counter,
    /// The route's `timeout_ms` ran out before the response head.
    pub timeout: Counter,
}

impl Metrics {
    pub fn new(route_names: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("jwtgate");
        let requests_family = Family::<Labels, Counter>::default();
        let requests = route_names
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("-"))
            .map(|name| CodeCounters::new(&requests_family, name))
            .collect();
        registry.register(
            "requests",
            "Requests answered, by route and status code",
            requests_family,
        );
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version of the running binary as a label",
            build,
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(crate::ops::process::ProcessCollector));
        let durations_family = Family::<Labels, DurationHistogram>::default();
        let durations = one_per(
            &durations_family,
            "route",
            route_names
                .iter()
                .map(String::as_str)
                .chain(std::iter::once("-")),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from the request's head to the response's head (upstream included, body streaming not), by route",
            prometheus_client::registry::Unit::Seconds,
            durations_family,
        );
        let limited_family = Family::<Labels, Counter>::default();
        let rate_limited = one_per(
            &limited_family,
            "route",
            route_names.iter().map(String::as_str),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the route's rate_limit (429), by route",
            limited_family,
        );
        let auth_family = Family::<Labels, Counter>::default();
        let auth_failures = one_per(&auth_family, "reason", AUTH_REASONS);
        registry.register(
            "auth_failures",
            "Requests refused by authentication, by reason",
            auth_family,
        );
        let m = Metrics {
            requests,
            durations,
            auth_failures,
            rate_limited,
            keys_loaded: Family::default(),
            revocation_store_up: Gauge::default(),
            verified_tokens_cached: Gauge::default(),
            connections_active: Family::default(),
            tls_cert_not_after: Family::default(),
            jwks_age: Family::default(),
            revocation_circuit_open: Gauge::default(),
            upstreams: Vec::new(),
            registry,
            process,
            counter_sets: Default::default(),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register(
            "issuer_keys_loaded",
            "1 when the issuer has a usable key set",
            m.keys_loaded.clone(),
        );
        r.register(
            "revocation_store_up",
            "1 when the revocation store answers",
            m.revocation_store_up.clone(),
        );
        r.register(
            "verified_tokens_cached",
            "Entries in the verified-token cache",
            m.verified_tokens_cached.clone(),
        );
        r.register_with_unit(
            "jwks_age",
            "Time since the issuer's JWKS was last fetched successfully, by issuer",
            prometheus_client::registry::Unit::Seconds,
            m.jwks_age.clone(),
        );
        r.register(
            "revocation_circuit_open",
            "1 while the revocation store's circuit breaker is open (3 consecutive failures; a background probe closes it)",
            m.revocation_circuit_open.clone(),
        );
        r.register_with_unit(
            "tls_cert_not_after",
            "When the certificate served on the listener expires (Unix time)",
            prometheus_client::registry::Unit::Seconds,
            m.tls_cert_not_after.clone(),
        );
        r.register(
            "connections_active",
            "Open client connections, by listener (public: https + http; admin)",
            m.connections_active.clone(),
        );
        m
    }

    /// Create the per-upstream metrics: `routes` lists each route's name and upstream
    /// count, in config order. Labels: `route`, `upstream` (its index in the route's
    /// `upstreams`, not its URL, which may carry credentials and is unbounded).
    pub fn add_upstreams(&mut self, routes: &[(&str, usize)]) {
        let durations = Family::<Labels, DurationHistogram>::default();
        let errors = Family::<Labels, Counter>::default();
        self.upstreams = routes
            .iter()
            .map(|(route, n)| {
                (0..*n)
                    .map(|i| {
                        let labels = |kind: Option<&str>| {
                            let mut l =
                                vec![("route", route.to_string()), ("upstream", i.to_string())];
                            if let Some(k) = kind {
                                l.push(("kind", k.to_string()));
                            }
                            l
                        };
                        // One statement each: `get_or_create` returns a read guard,
                        // and a second insert in the same statement would wait for it.
                        let duration = durations.get_or_create(&labels(None)).clone();
                        let unreachable =
                            errors.get_or_create(&labels(Some("unreachable"))).clone();
                        let timeout = errors.get_or_create(&labels(Some("timeout"))).clone();
                        UpstreamStats {
                            duration,
                            unreachable,
                            timeout,
                        }
                    })
                    .collect()
            })
            .collect();
        self.registry.register_with_unit(
            "upstream_duration",
            "Time from sending a request upstream to its response head, by route and upstream index",
            prometheus_client::registry::Unit::Seconds,
            durations,
        );
        self.registry.register(
            "upstream_errors",
            "Requests an upstream did not answer, by route, upstream index and kind (unreachable, timeout)",
            errors,
        );
    }

    /// The upstream metrics of route `index` (empty for an unknown one).
    pub fn upstreams(&self, route: usize) -> &[UpstreamStats] {
        self.upstreams.get(route).map_or(&[], Vec::as_slice)
    }

    /// Register a counter owned elsewhere (JWKS fetches, store lookups, grants), with an
    /// optional label. Counters registered under one name with a label form one family
    /// (one `# HELP`/`# TYPE`; a second declaration of a name is a parse error for
    /// Prometheus); the first registration's help is the family's.
    pub fn register_counter(
        &mut self,
        name: &str,
        help: &str,
        label: Option<(&'static str, &str)>,
        c: Counter,
    ) {
        let Some((k, v)) = label else {
            self.registry.register(name, help, c);
            return;
        };
        let set = self
            .counter_sets
            .entry(name.to_string())
            .or_insert_with(|| {
                let set = CounterSet::default();
                self.registry.register(name, help, set.clone());
                set
            });
        set.push(vec![(k, v.to_string())], c);
    }

    /// Register a metric owned elsewhere, as it is (sign-in and discovery families).
    pub fn register_metric(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<prometheus_client::registry::Unit>,
        m: impl prometheus_client::registry::Metric,
    ) {
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, m),
            None => self.registry.register(name, help, m),
        }
    }

    /// Count an answered request and how long its response head took.
    pub fn request(&self, route: Option<usize>, status: u16, took: Duration) {
        let idx = route
            .unwrap_or(self.requests.len() - 1)
            .min(self.requests.len() - 1);
        self.requests[idx].counter(status).inc();
        self.durations[idx].observe(took);
    }

    /// Count a refusal: authentication failures by reason, rate limits by route.
    pub fn refused(&self, e: &GatewayError, route: Option<usize>) {
        if let Some(i) = reason_index(e) {
            self.auth_failures[i].inc();
        }
        if let (GatewayError::RateLimited { .. }, Some(r)) = (e, route) {
            if let Some(c) = self.rate_limited.get(r) {
                c.inc();
            }
        }
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Format) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        match format {
            Format::OpenMetrics => out,
            Format::Text => exposition::to_text(&out),
        }
    }
}
