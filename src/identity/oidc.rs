//! OpenID Connect Discovery 1.0 for an issuer with `discovery = true`: fetch
//! `<issuer>/.well-known/openid-configuration` at start and in the background, check its
//! `issuer` byte for byte, and keep the last good document when the IdP is down
//! (stale-if-error). Which endpoint wins over which (explicit file keys first) is decided by
//! the callers (`jwks`, `refresh`, `login`); this module only knows the document.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::Uri;
use http_body_util::{BodyExt, Limited};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::ops::otel;

/// The OpenID Provider Metadata fields the gateway reads (OpenID Connect Discovery 1.0 §3,
/// RFC 8414, RP-Initiated Logout 1.0). Unknown fields are ignored, as the spec requires.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub revocation_endpoint: Option<String>,
    /// RFC 8414 / RFC 7662: where opaque tokens are introspected.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// The endpoints of a discovered document, parsed. An endpoint that is not an http(s) URL
/// is left out (and logged), never guessed.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    pub authorization: Option<Uri>,
    pub token: Option<Uri>,
    pub jwks: Option<Uri>,
    pub revocation: Option<Uri>,
    pub end_session: Option<Uri>,
    pub introspection: Option<Uri>,
}

/// Why a discovery fetch was not used (a metric label, and the log's words).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("request failed: {0}")]
    Unreachable(String),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("not an OpenID provider metadata document: {0}")]
    Parse(String),
    /// OIDC Discovery §4.3: the document must name exactly the issuer it was fetched for.
    #[error("the document's issuer {found:?} is not the configured issuer")]
    IssuerMismatch { found: String },
}

impl DiscoveryError {
    /// Index into `FAILURE_REASONS`.
    fn reason(&self) -> usize {
        match self {
            DiscoveryError::Unreachable(_) => 0,
            DiscoveryError::Status(_) => 1,
            DiscoveryError::Parse(_) => 2,
            DiscoveryError::IssuerMismatch { .. } => 3,
        }
    }
}

/// Metric label values for `jwtgate_discovery_failures_total{issuer, reason}`.
pub const FAILURE_REASONS: [&str; 4] = ["unreachable", "status", "parse", "issuer_mismatch"];

/// One issuer's discovery state: the document's URL, the last good endpoints, and when
/// they were fetched.
pub struct Discovery {
    name: String,
    issuer: String,
    url: Uri,
    current: ArcSwapOption<Endpoints>,
    /// Milliseconds since `epoch` of the last good fetch (0 = never).
    fetched_ms: AtomicU64,
    epoch: Instant,
    loaded: AtomicBool,
    /// Fires after every good fetch (the JWKS fetcher waits on it for `jwks_uri`).
    updated: Notify,
    /// Failed fetches, by `FAILURE_REASONS`.
    failures: [Counter; FAILURE_REASONS.len()],
}

const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

impl Discovery {
    pub fn new(name: &str, issuer: &str, url: Uri) -> Discovery {
        Discovery {
            name: name.to_string(),
            issuer: issuer.to_string(),
            url,
            current: ArcSwapOption::empty(),
            fetched_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            loaded: AtomicBool::new(false),
            updated: Notify::new(),
            failures: Default::default(),
        }
    }

    /// A good document has been seen (readiness).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The last good endpoints (kept while the IdP is down).
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.current.load_full()
    }

    /// Seconds since the last good fetch; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        let at = self.fetched_ms.load(Ordering::Acquire);
        (at != 0).then(|| {
            Duration::from_millis((self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(at))
        })
    }

    /// Fires at the next good fetch (counted from this call, even before it is polled).
    pub fn updated(&self) -> tokio::sync::futures::Notified<'_> {
        self.updated.notified()
    }

    /// Background task: fetch now, then again after the document's `max-age` (default an
    /// hour), retrying with backoff on failure while the last good document keeps serving.
    pub async fn run(
        self: Arc<Self>,
        client: crate::net::Client,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let mut span = otel::Span::client("oidc discovery");
            if span.is_on() {
                span.set("jwtgate.issuer", self.name.clone());
                span.set("url.full", self.url.to_string());
            }
            let next = match otel::traced(span, self.fetch(&client)).await {
                Ok((endpoints, max_age)) => {
                    backoff = Duration::from_millis(250);
                    tracing::info!(issuer = %self.name, refresh_s = max_age.as_secs(), "OIDC discovery document loaded");
                    self.current.store(Some(Arc::new(endpoints)));
                    self.fetched_ms.store(
                        self.epoch.elapsed().as_millis() as u64 + 1,
                        Ordering::Release,
                    );
                    self.loaded.store(true, Ordering::Release);
                    self.updated.notify_waiters();
                    max_age
                }
                Err(e) => {
                    self.failures[e.reason()].inc();
                    let stale = self.is_loaded();
                    tracing::warn!(issuer = %self.name, error = %e, stale, retry_ms = backoff.as_millis() as u64,
                        "OIDC discovery failed; {}", if stale { "keeping the last good document" } else { "issuer not usable yet" });
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    b
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn fetch(
        &self,
        client: &crate::net::Client,
    ) -> Result<(Endpoints, Duration), DiscoveryError> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(crate::net::body::empty())
            .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
            .await
            .map_err(|_| DiscoveryError::Unreachable("timed out".into()))?
            .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            return Err(DiscoveryError::Status(resp.status()));
        }
        let max_age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .filter_map(|d| d.trim().strip_prefix("max-age="))
                    .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
            })
            .map(|s| Duration::from_secs(s).clamp(MIN_REFRESH, MAX_REFRESH))
            .unwrap_or(DEFAULT_REFRESH);
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES).collect(),
        )
        .await
        .map_err(|_| DiscoveryError::Unreachable("timed out reading the body".into()))?
        .map_err(|e| DiscoveryError::Unreachable(e.to_string()))?
        .to_bytes();
        let doc: ProviderMetadata =
            serde_json::from_slice(&body).map_err(|e| DiscoveryError::Parse(e.to_string()))?;
        Ok((self.endpoints_of(doc)?, max_age))
    }

    /// Check the document against the configured issuer and parse its endpoints.
    fn endpoints_of(&self, doc: ProviderMetadata) -> Result<Endpoints, DiscoveryError> {
        if doc.issuer != self.issuer {
            return Err(DiscoveryError::IssuerMismatch { found: doc.issuer });
        }
        let parse = |key: &str, v: Option<String>| -> Option<Uri> {
            let v = v?;
            match v.parse::<Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() =>
                {
                    if u.scheme_str() == Some("http") && !crate::config::is_loopback_authority(&u) {
                        tracing::warn!(issuer = %self.name, key, "discovered endpoint uses plain http on a non-loopback host");
                    }
                    Some(u)
                }
                _ => {
                    tracing::warn!(issuer = %self.name, key, "discovered endpoint is not an http(s) URL; ignored");
                    None
                }
            }
        };
        Ok(Endpoints {
            authorization: parse("authorization_endpoint", doc.authorization_endpoint),
            token: parse("token_endpoint", doc.token_endpoint),
            jwks: parse("jwks_uri", doc.jwks_uri),
            revocation: parse("revocation_endpoint", doc.revocation_endpoint),
            end_session: parse("end_session_endpoint", doc.end_session_endpoint),
            introspection: parse("introspection_endpoint", doc.introspection_endpoint),
        })
    }
}

/// `jwtgate_discovery_age_seconds{issuer}`: computed when scraped (NaN before the first
/// good fetch would mislead alerting, so such issuers are simply absent).
#[derive(Clone)]
pub struct AgeGauge(pub Vec<Arc<Discovery>>);

impl std::fmt::Debug for AgeGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgeGauge")
    }
}

impl prometheus_client::metrics::TypedMetric for AgeGauge {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

impl prometheus_client::encoding::EncodeMetric for AgeGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for d in &self.0 {
            if let Some(age) = d.age() {
                let labels = [("issuer", d.name.as_str())];
                encoder
                    .encode_family(&labels)?
                    .encode_gauge(&age.as_secs_f64())?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// `jwtgate_discovery_failures_total{issuer, reason}` over every discovering issuer.
#[derive(Clone)]
pub struct FailureCounter(pub Vec<Arc<Discovery>>);

impl std::fmt::Debug for FailureCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureCounter")
    }
}

impl prometheus_client::metrics::TypedMetric for FailureCounter {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Counter;
}

impl prometheus_client::encoding::EncodeMetric for FailureCounter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        for d in &self.0 {
            for (reason, c) in FAILURE_REASONS.iter().zip(&d.failures) {
                let labels = [("issuer", d.name.as_str()), ("reason", reason)];
                encoder
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&c.get(), None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::origin::well_known;

    fn doc(issuer: &str) -> ProviderMetadata {
        serde_json::from_value(serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": "https://idp.example.com/authorize",
            "token_endpoint": "https://idp.example.com/token",
            "jwks_uri": "https://idp.example.com/jwks",
            "end_session_endpoint": "javascript:alert(1)",
            "response_types_supported": ["code"],
            "something_new": {"ignored": true}
        }))
        .unwrap()
    }

    #[test]
    fn issuer_must_match_byte_for_byte() {
        let d = Discovery::new(
            "main",
            "https://idp.example.com",
            well_known("https://idp.example.com").unwrap(),
        );
        assert!(d.endpoints_of(doc("https://idp.example.com")).is_ok());
        for other in [
            "https://idp.example.com/",
            "https://IDP.example.com",
            "http://idp.example.com",
        ] {
            assert!(matches!(
                d.endpoints_of(doc(other)),
                Err(DiscoveryError::IssuerMismatch { .. })
            ));
        }
    }

    #[test]
    fn endpoints_are_parsed_and_bad_ones_dropped() {
        let d = Discovery::new(
            "main",
            "https://idp.example.com",
            well_known("https://idp.example.com/").unwrap(),
        );
        let e = d.endpoints_of(doc("https://idp.example.com")).unwrap();
        assert_eq!(e.token.unwrap().path(), "/token");
        assert!(e.end_session.is_none());
        assert!(e.revocation.is_none());
    }

    #[test]
    fn well_known_url() {
        assert_eq!(
            well_known("https://idp.example.com/realms/x/").unwrap(),
            "https://idp.example.com/realms/x/.well-known/openid-configuration"
        );
        assert!(well_known("not a url").is_none());
    }
}
