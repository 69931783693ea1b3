//! Prometheus metrics (`GET /metrics` on the admin listener). Counters on the request path
//! are created up front and bumped as plain atomics (no lock, no label lookup per request);
//! gauges are read from live state when scraped. Text format by prometheus-client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::error::{GatewayError, TokenError};

type Labels = Vec<(&'static str, String)>;

/// Why a request was refused at authentication, as a metric label.
const AUTH_REASONS: [&str; 13] = [
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
];

fn reason_index(e: &GatewayError) -> Option<usize> {
    Some(match e {
        GatewayError::MissingToken => 0,
        GatewayError::InsufficientScope => 12,
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

/// The gateway's metrics. Route index `routes.len()` stands for "no route" (404, logout).
pub struct Metrics {
    registry: Registry,
    /// Per route, per status class (1xx..5xx).
    requests: Vec<[Counter; 5]>,
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
}

impl Metrics {
    pub fn new(route_names: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("jwtgate");
        let requests_family = Family::<Labels, Counter>::default();
        let mut requests = Vec::with_capacity(route_names.len() + 1);
        for name in route_names
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("-"))
        {
            requests.push(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                requests_family
                    .get_or_create(&vec![
                        ("route", name.to_string()),
                        ("code", class.to_string()),
                    ])
                    .clone()
            }));
        }
        registry.register(
            "requests",
            "Requests answered, by route and status class",
            requests_family,
        );
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
            registry,
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
        r.register(
            "connections_active",
            "Open client connections, by listener (public: https + http; admin)",
            m.connections_active.clone(),
        );
        m
    }

    /// Register a counter owned elsewhere (JWKS fetches, store lookups, grants), with an
    /// optional label.
    pub fn register_counter(
        &mut self,
        name: &str,
        help: &str,
        label: Option<(&'static str, &str)>,
        c: Counter,
    ) {
        match label {
            Some((k, v)) => self
                .registry
                .sub_registry_with_label((
                    std::borrow::Cow::Borrowed(k),
                    std::borrow::Cow::Owned(v.to_string()),
                ))
                .register(name, help, c),
            None => self.registry.register(name, help, c),
        }
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
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[idx][class].inc();
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

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
