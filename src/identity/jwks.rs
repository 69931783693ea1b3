//! Verification keys: static keys from the config and remote JWKS sets, fetched in the
//! background, rotated on `Cache-Control: max-age`, refetched (rate-limited) on an unknown
//! `kid`. The key, never the token header, decides which algorithms it verifies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Uri;
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{watch, Notify};

use crate::config::keys::parse_public;
pub use crate::config::keys::{
    parse_alg, KeyMaterial, StaticKey, VerifyKey, MIN_HMAC_SECRET, SUPPORTED_ALGS,
};
use crate::config::{IssuerConfig, KeySource};
use crate::ops::otel;

/// Least time between two refetches caused by unknown `kid`s, per issuer.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

impl VerifyKey {
    /// A JWKS entry as a verification key, or `None` when it is not a signing key we use.
    fn from_jwk(jwk: &Jwk, allow: Option<&[Algorithm]>) -> Option<VerifyKey> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        let by_type: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            // Shared secrets never come from a remote document.
            _ => return None,
        };
        let pinned = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => Some(key_algorithm(ka)?),
        };
        let mut algs: Vec<Algorithm> = match pinned {
            Some(a) if by_type.contains(&a) => vec![a],
            Some(_) => return None,
            None => by_type,
        };
        if let Some(allow) = allow {
            algs.retain(|a| allow.contains(a));
        }
        if algs.is_empty() {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(VerifyKey {
            kid: jwk.common.key_id.clone(),
            parsed: parse_public(&key, &algs),
            algs,
            pinned,
            key,
        })
    }
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// An issuer's current keys, indexed for the request path.
#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys with a pinned algorithm, tried for tokens that carry no `kid`.
    pub pinned: Vec<Arc<VerifyKey>>,
    /// For a fetched set: what it holds (see `Fetched::fingerprint`); a refetch with the
    /// same fingerprint changes nothing.
    fingerprint: Option<[u8; 32]>,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyKey>) -> KeySet {
        let mut set = KeySet::default();
        for k in keys {
            let k = Arc::new(k);
            if let Some(kid) = &k.kid {
                set.by_kid.insert(kid.clone(), k.clone());
            }
            if k.pinned.is_some() {
                set.pinned.push(k);
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.pinned.is_empty()
    }
}

/// An issuer at run time: its config and its live key set.
pub struct IssuerKeys {
    pub config: IssuerConfig,
    keys: ArcSwap<KeySet>,
    /// Bumped whenever the key set changes, so cached verifications can be dropped.
    generation: AtomicU64,
    loaded: AtomicBool,
    jwks: Option<JwksState>,
    /// `discovery = true`: the provider metadata (`oidc`), which also names `jwks_uri`.
    discovery: Option<Arc<crate::identity::oidc::Discovery>>,
}

struct JwksState {
    /// `None`: the discovered `jwks_uri`.
    url: Option<Uri>,
    wake: Notify,
    /// Incremented after every fetch attempt; waiters on an unknown kid watch it.
    attempts: watch::Sender<u64>,
    in_flight: AtomicBool,
    /// Milliseconds since `epoch` of the last unknown-kid refetch (0 = never).
    last_kid_refetch_ms: AtomicU64,
    /// Milliseconds since `epoch` of the last successful fetch, plus one (0 = never).
    last_ok_ms: AtomicU64,
    epoch: Instant,
    fetches: prometheus_client::metrics::counter::Counter,
}

/// What the request path learns when a `kid` is not in the set.
pub enum KidLookup {
    Found(Arc<VerifyKey>),
    /// After (or without) a refetch, the kid is still unknown.
    Unknown,
}

impl IssuerKeys {
    pub fn new(config: IssuerConfig) -> IssuerKeys {
        let discovery = config.discovery.clone().map(|u| {
            Arc::new(crate::identity::oidc::Discovery::new(
                &config.name,
                &config.issuer,
                u,
            ))
        });
        let (keys, loaded, jwks) = match &config.keys {
            KeySource::Static(keys) => (KeySet::new(keys.clone()), true, None),
            KeySource::Jwks(_) | KeySource::Discovered => (
                KeySet::default(),
                false,
                Some(JwksState {
                    url: match &config.keys {
                        KeySource::Jwks(url) => Some(url.clone()),
                        _ => None,
                    },
                    wake: Notify::new(),
                    attempts: watch::channel(0).0,
                    in_flight: AtomicBool::new(false),
                    last_kid_refetch_ms: AtomicU64::new(0),
                    last_ok_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                    fetches: Default::default(),
                }),
            ),
        };
        IssuerKeys {
            config,
            keys: ArcSwap::from_pointee(keys),
            generation: AtomicU64::new(0),
            loaded: AtomicBool::new(loaded),
            jwks,
            discovery,
        }
    }

    /// Whether the issuer has a usable key set, and its discovery document when it has
    /// `discovery` (readiness).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && self.discovery.as_ref().is_none_or(|d| d.is_loaded())
    }

    /// The provider metadata of an issuer with `discovery = true`.
    pub fn discovery(&self) -> Option<&Arc<crate::identity::oidc::Discovery>> {
        self.discovery.as_ref()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// How long ago the JWKS was last fetched successfully (`None`: static keys, or never).
    pub fn jwks_age(&self) -> Option<Duration> {
        let j = self.jwks.as_ref()?;
        let at = j.last_ok_ms.load(Ordering::Acquire).checked_sub(1)?;
        Some(j.epoch.elapsed().saturating_sub(Duration::from_millis(at)))
    }

    /// The JWKS fetch counter, for /metrics (static-key issuers have none).
    pub fn fetch_counter(&self) -> Option<prometheus_client::metrics::counter::Counter> {
        self.jwks.as_ref().map(|j| j.fetches.clone())
    }

    /// Install a fetched key set. The generation (which drops every cached verification of
    /// this issuer) moves only when the keys changed: a refetch that anyone can cause with
    /// an unknown `kid` must not. `false`: the set was the same, nothing happened.
    fn install(&self, fetched: Fetched) -> bool {
        if self.is_loaded()
            && fetched.fingerprint.is_some()
            && self.keys.load().fingerprint == fetched.fingerprint
        {
            return false;
        }
        let mut set = KeySet::new(fetched.keys);
        set.fingerprint = fetched.fingerprint;
        self.keys.store(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.loaded.store(true, Ordering::Release);
        true
    }

    /// Look a kid up; when unknown, trigger at most one refetch per
    /// `UNKNOWN_KID_REFETCH_INTERVAL` (or join one in flight) and wait for it briefly.
    pub async fn find_kid(&self, kid: &str) -> KidLookup {
        if let Some(k) = self.keys.load().by_kid.get(kid) {
            return KidLookup::Found(k.clone());
        }
        let Some(j) = &self.jwks else {
            return KidLookup::Unknown;
        };
        let mut rx = j.attempts.subscribe();
        if !j.in_flight.load(Ordering::Acquire) {
            let now_ms = j.epoch.elapsed().as_millis() as u64 + 1;
            let last = j.last_kid_refetch_ms.load(Ordering::Acquire);
            let due = last == 0
                || now_ms.saturating_sub(last) >= UNKNOWN_KID_REFETCH_INTERVAL.as_millis() as u64;
            if !due
                || j.last_kid_refetch_ms
                    .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                // Negative answer: a refetch happened recently (or another request just
                // started one and will see the result); this kid stays unknown until then.
                if !j.in_flight.load(Ordering::Acquire) {
                    return KidLookup::Unknown;
                }
            } else {
                j.in_flight.store(true, Ordering::Release);
                j.wake.notify_one();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), rx.changed()).await;
        match self.keys.load().by_kid.get(kid) {
            Some(k) => KidLookup::Found(k.clone()),
            None => KidLookup::Unknown,
        }
    }

    /// Background task: keep this issuer's JWKS fresh until `shutdown` fires.
    pub async fn run_jwks(
        self: Arc<Self>,
        client: crate::net::Client,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(j) = &self.jwks else { return };
        let mut backoff = Duration::from_millis(250);
        loop {
            // Registered before the look, so a document arriving in between still wakes us.
            let updated = self.discovery.as_ref().map(|d| d.updated());
            let discovered = || self.discovery.as_ref()?.endpoints()?.jwks.clone();
            let Some(url) = j.url.clone().or_else(discovered) else {
                // No `jwks_uri` yet: wait for the discovery document.
                let Some(updated) = updated else { return };
                tokio::select! {
                    _ = updated => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let mut span = otel::Span::client("jwks fetch");
            if span.is_on() {
                span.set("jwtgate.issuer", self.config.name.clone());
                span.set("url.full", url.to_string());
            }
            let fetch = fetch_jwks(&client, &url, self.config.algorithms.as_deref());
            let next = match otel::traced(span, fetch).await {
                Ok((fetched, max_age)) => {
                    backoff = Duration::from_millis(250);
                    let at = j.epoch.elapsed().as_millis() as u64 + 1;
                    j.last_ok_ms.store(at, Ordering::Release);
                    let n = fetched.keys.len();
                    if n == 0 {
                        tracing::warn!(issuer = %self.config.name, "JWKS holds no usable signing key");
                    } else if self.install(fetched) {
                        tracing::info!(issuer = %self.config.name, keys = n, refresh_s = max_age.as_secs(), "JWKS loaded");
                    } else {
                        tracing::debug!(issuer = %self.config.name, keys = n, "JWKS unchanged");
                    }
                    max_age
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.config.name, error = %e, retry_ms = backoff.as_millis() as u64, "JWKS fetch failed; keeping the last good key set");
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    b
                }
            };
            j.fetches.inc();
            j.in_flight.store(false, Ordering::Release);
            j.attempts.send_modify(|n| *n += 1);
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = j.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            j.in_flight.store(true, Ordering::Release);
        }
    }
}

/// Bounds for the refresh interval taken from `Cache-Control: max-age`.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a JWKS fetch failed (logged; the last good set keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out")]
    Timeout,
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("not a JWKS document: {0}")]
    Parse(#[from] serde_json::Error),
}

/// A fetched JWKS: its usable keys, and a digest of what makes them what they are.
struct Fetched {
    keys: Vec<VerifyKey>,
    /// SHA-256 over every usable key's kid, algorithms and public parameters (as JSON), in
    /// sorted order: equal for the same keys however the document is laid out. `None`
    /// when it could not be worked out (then the set counts as changed).
    fingerprint: Option<[u8; 32]>,
}

/// The usable signing keys of a JWKS document.
fn parse_jwks(body: &[u8], allow: Option<&[Algorithm]>) -> Result<Fetched, JwksError> {
    let set: JwkSet = serde_json::from_slice(body)?;
    let mut described = Vec::with_capacity(set.keys.len());
    let mut keys = Vec::with_capacity(set.keys.len());
    let mut complete = true;
    for jwk in &set.keys {
        let Some(k) = VerifyKey::from_jwk(jwk, allow) else {
            continue;
        };
        match serde_json::to_string(&(&k.kid, &k.algs, &k.pinned, &jwk.algorithm)) {
            Ok(d) => described.push(d),
            Err(_) => complete = false,
        }
        keys.push(k);
    }
    described.sort_unstable();
    let fingerprint = complete.then(|| {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for d in &described {
            ctx.update(d.as_bytes());
            ctx.update(b"\n");
        }
        let mut f = [0u8; 32];
        f.copy_from_slice(ctx.finish().as_ref());
        f
    });
    Ok(Fetched { keys, fingerprint })
}

async fn fetch_jwks(
    client: &crate::net::Client,
    url: &Uri,
    allow: Option<&[Algorithm]>,
) -> Result<(Fetched, Duration), JwksError> {
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(crate::net::body::empty())
        .map_err(|e| JwksError::Request(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| JwksError::Timeout)?
        .map_err(|e| JwksError::Request(e.to_string()))?;
    if resp.status() != http::StatusCode::OK {
        return Err(JwksError::Status(resp.status()));
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age)
        .map(|d| d.clamp(MIN_REFRESH, MAX_REFRESH))
        .unwrap_or(DEFAULT_REFRESH);
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| JwksError::Timeout)?
    .map_err(|e| JwksError::Body(e.to_string()))?
    .to_bytes();
    Ok((parse_jwks(&body, allow)?, max_age))
}

fn parse_max_age(v: &str) -> Option<Duration> {
    v.split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_never_an_algorithm() {
        for s in ["none", "None", "NONE", "nOnE", "", "hs256"] {
            assert!(parse_alg(s).is_none(), "{s}");
        }
        assert_eq!(parse_alg("EdDSA"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn short_hmac_secret_refused() {
        let e =
            VerifyKey::new(None, Algorithm::HS256, KeyMaterial::Secret(vec![1; 31])).unwrap_err();
        assert!(e.contains("31 bytes"), "{e}");
        assert!(VerifyKey::new(None, Algorithm::HS256, KeyMaterial::Secret(vec![1; 32])).is_ok());
    }

    #[test]
    fn hmac_alg_with_pem_refused() {
        assert!(VerifyKey::new(None, Algorithm::HS256, KeyMaterial::Pem(b"x".to_vec())).is_err());
        assert!(VerifyKey::new(None, Algorithm::RS256, KeyMaterial::Secret(vec![1; 40])).is_err());
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }

    fn jwks_issuer() -> IssuerKeys {
        IssuerKeys::new(IssuerConfig {
            name: "remote".into(),
            issuer: "https://idp.test".into(),
            audiences: vec![],
            algorithms: None,
            leeway_s: 30,
            keys: KeySource::Jwks(Uri::from_static("http://127.0.0.1:1/jwks")),
            discovery: None,
            introspection: None,
        })
    }

    fn jwks(keys: &[serde_json::Value]) -> Vec<u8> {
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn a_refetch_of_the_same_keys_keeps_the_generation() {
        let rsa: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/rsa.jwk.json")).unwrap();
        let rsa2: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/rsa2.jwk.json")).unwrap();
        let with_kid = |k: &serde_json::Value, kid: &str| {
            let mut k = k.clone();
            k["kid"] = kid.into();
            k
        };
        let (k1, k2) = (with_kid(&rsa, "k1"), with_kid(&rsa2, "k2"));
        let issuer = jwks_issuer();
        let install = |doc: Vec<u8>| issuer.install(parse_jwks(&doc, None).unwrap());
        assert!(install(jwks(std::slice::from_ref(&k1))));
        assert_eq!(issuer.generation(), 1);
        // The same keys again, in any order or layout: nothing changes.
        assert!(!install(jwks(std::slice::from_ref(&k1))));
        let mut k1_other_layout = k1.clone();
        k1_other_layout["x-extra-member"] = "ignored".into();
        assert!(!install(jwks(&[k1_other_layout])));
        assert_eq!(issuer.generation(), 1);
        // A key added, a key's material changed, a kid renamed: each is a new set.
        assert!(install(jwks(&[k1.clone(), k2.clone()])));
        assert!(!install(jwks(&[k2.clone(), k1.clone()])));
        assert_eq!(issuer.generation(), 2);
        assert!(install(jwks(&[with_kid(&rsa2, "k1"), k2.clone()])));
        assert!(install(jwks(&[with_kid(&rsa2, "k3"), k2])));
        assert_eq!(issuer.generation(), 4);
    }

    #[test]
    fn jwk_oct_keys_are_ignored() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"}]}"#,
        )
        .unwrap();
        assert!(VerifyKey::from_jwk(&set.keys[0], None).is_none());
    }
}
