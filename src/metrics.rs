//! Prometheus metrics (`GET /metrics` on the admin listener). Counters on the request path
//! are created up front and bumped as plain atomics (no lock, no label lookup per request);
//! gauges are read from live state when scraped. Text format by prometheus-client.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// The gateway's metrics. Route index `routes.len()` stands for "no route" (404, logout).
pub struct Metrics {
    registry: Registry,
    /// Per route, per status class (1xx..5xx).
    requests: Vec<[Counter; 5]>,
    auth_failures: Vec<Counter>,
    /// Per route: requests refused by its `rate_limit` (429).
    rate_limited: Vec<Counter>,
    /// Set at scrape time.
    pub keys_loaded: Family<Labels, Gauge>,
    pub revocation_store_up: Gauge,
    pub verified_tokens_cached: Gauge<u64, AtomicU64>,
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
        let limited_family = Family::<Labels, Counter>::default();
        let rate_limited = route_names
            .iter()
            .map(|name| {
                limited_family
                    .get_or_create(&vec![("route", name.clone())])
                    .clone()
            })
            .collect();
        registry.register(
            "rate_limited",
            "Requests refused by the route's rate_limit (429), by route",
            limited_family,
        );
        let auth_family = Family::<Labels, Counter>::default();
        let auth_failures = AUTH_REASONS
            .iter()
            .map(|r| {
                auth_family
                    .get_or_create(&vec![("reason", r.to_string())])
                    .clone()
            })
            .collect();
        registry.register(
            "auth_failures",
            "Requests refused by authentication, by reason",
            auth_family,
        );
        let m = Metrics {
            requests,
            auth_failures,
            rate_limited,
            keys_loaded: Family::default(),
            revocation_store_up: Gauge::default(),
            verified_tokens_cached: Gauge::default(),
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

    /// Count an answered request.
    pub fn request(&self, route: Option<usize>, status: u16) {
        let idx = route
            .unwrap_or(self.requests.len() - 1)
            .min(self.requests.len() - 1);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[idx][class].inc();
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
