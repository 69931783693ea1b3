//! Edge session handling: renewing near-expiry access tokens with the OAuth 2.0
//! refresh_token grant (RFC 6749 §6) — once per refresh token, however many requests carry
//! it at the same time — handing the new tokens back to the client, and logout (revoke the
//! presented token, RFC 7009 for the refresh token, clear the cookies).

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::config::{ClientAuth, OAuthClient, Refresh};
use crate::error::{GatewayError, TokenError};
use crate::identity::auth::{self, now_unix, Verified, Verifier};
use crate::net::body::{self, Body};
use crate::net::Client;
use crate::ops::otel;
#[cfg(test)]
use flight::{open_sealed, seal, StoredOutcome};
use flight::{sha256, SharedFlight};

mod flight;

pub static X_ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-access-token");
pub static X_REFRESH_TOKEN: HeaderName = HeaderName::from_static("x-refresh-token");

/// Where the refresh token came from decides how new tokens go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Browser: `Set-Cookie`.
    Cookie,
    /// API client (`refresh_header`): `x-access-token` / `x-refresh-token` response headers.
    Header,
}

/// A successful refresh: the new access token (verified like any presented token) and the
/// rotated refresh token, if the IdP rotated it.
pub struct Grant {
    pub access_token: String,
    pub verified: Arc<Verified>,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print tokens.
        f.debug_struct("Grant")
            .field("sub", &self.verified.sub)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Why a refresh did not produce a usable token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// RFC 6749 §5.2 `invalid_grant`: the refresh token is expired, revoked or spent.
    #[error("refresh token rejected")]
    InvalidGrant,
    /// The IdP could not be reached or answered something unusable; worth a later retry.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The IdP answered with a token that does not verify.
    #[error("new token refused: {0}")]
    BadToken(TokenError),
}

type Outcome = Result<Arc<Grant>, RefreshError>;

/// Transient failures are remembered this long, so a down IdP is not asked again by every
/// request (the current token keeps being used while it is valid).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

struct OutcomeExpiry {
    window: Duration,
}

impl moka::Expiry<[u8; 32], Outcome> for OutcomeExpiry {
    fn expire_after_create(&self, _k: &[u8; 32], v: &Outcome, _now: Instant) -> Option<Duration> {
        Some(match v {
            Err(RefreshError::Unavailable(_)) => RETRY_AFTER_FAILURE.min(self.window),
            _ => self.window,
        })
    }
}

/// The gateway as an OAuth 2.0 confidential client, with a single-flight result cache keyed
/// by SHA-256 of the refresh token (never by the token itself).
pub struct Refresher {
    cfg: Refresh,
    client: OAuthClient,
    results: moka::future::Cache<[u8; 32], Outcome>,
    /// With the Redis store: single flight across replicas.
    shared: Option<SharedFlight>,
    /// Calls made to the token endpoint (for tests and metrics).
    pub grants: Counter,
    /// `[refresh] rate_limit`: refresh attempts per client address.
    limit: crate::policy::limit::RateLimit,
    /// Fills in the token and revocation endpoints the file leaves out.
    discovery: Option<Arc<crate::identity::oidc::Discovery>>,
}

impl Refresher {
    /// `None` when `[refresh]` has no `token_endpoint` (logout only). With `redis` (the
    /// revocation settings and the store's connector), the single flight extends across
    /// replicas.
    pub fn new(
        cfg: &Refresh,
        redis: Option<(
            &crate::config::Revocation,
            Arc<crate::identity::revocation::Connector>,
        )>,
    ) -> Option<Refresher> {
        let client = cfg.client.clone()?;
        let shared = redis.and_then(|(r, c)| match SharedFlight::new(r, c, cfg) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cross-replica refresh coordination disabled");
                None
            }
        });
        Some(Refresher {
            shared,
            cfg: cfg.clone(),
            client,
            results: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(OutcomeExpiry {
                    window: cfg.reuse_window.max(Duration::from_secs(1)),
                })
                .build(),
            grants: Counter::default(),
            limit: crate::policy::limit::RateLimit::new(&cfg.rate_limit),
            discovery: None,
        })
    }

    /// Use this issuer's discovered endpoints where `[refresh]` names none.
    pub fn with_discovery(mut self, d: Option<Arc<crate::identity::oidc::Discovery>>) -> Refresher {
        self.discovery = d;
        self
    }

    /// The token endpoint: the file's, else the discovered one (`None` until discovered).
    pub fn token_endpoint(&self) -> Option<http::Uri> {
        self.client
            .token_endpoint
            .clone()
            .or_else(|| self.discovery.as_ref()?.endpoints()?.token.clone())
    }

    /// The OAuth client the gateway is (shared with sign-in, `login`).
    pub fn client(&self) -> &OAuthClient {
        &self.client
    }

    pub fn config(&self) -> &Refresh {
        &self.cfg
    }

    /// Count one refresh attempt from `client` (`[refresh] rate_limit`): a refresh token
    /// costs the IdP a call unless its result is cached, so a stream of made-up refresh
    /// tokens from one address is cut off here (429) instead of reaching the IdP.
    pub fn check_attempt(&self, client: std::net::IpAddr) -> Result<(), GatewayError> {
        self.limit.check_ip(client)
    }

    /// Forget addresses whose attempt bucket is full again (the rate-limit sweep).
    pub fn forget_idle(&self) {
        self.limit.forget_idle();
    }

    /// Does this (verified, unrevoked) access token need renewing now?
    pub fn is_due(&self, v: &Verified) -> bool {
        v.exp - now_unix() < self.cfg.refresh_before.as_secs() as i64
    }

    /// Renew with `refresh_token`: concurrent callers with the same refresh token share one
    /// call to the token endpoint, and later callers within the reuse window get the same
    /// result instead of replaying a spent token.
    pub async fn refresh(
        &self,
        http: &Client,
        verifier: &Verifier,
        refresh_token: &str,
    ) -> Outcome {
        let key = sha256(refresh_token.as_bytes());
        self.results
            .get_with(key, async {
                // Spans (tracing on): the grant at the token endpoint, and around it the
                // replicas' coordination in Redis.
                let grant = || {
                    let span = otel::Span::client("refresh grant");
                    otel::traced(span, self.grant(http, verifier, refresh_token))
                };
                let out = match &self.shared {
                    Some(s) => {
                        let span = otel::Span::redis("refresh coordination", "SET NX");
                        otel::traced(span, s.run(refresh_token, verifier, grant)).await
                    }
                    None => grant().await,
                };
                if let Err(e) = &out {
                    tracing::warn!(error = %e, "token refresh failed");
                }
                out
            })
            .await
    }

    async fn grant(&self, http: &Client, verifier: &Verifier, refresh_token: &str) -> Outcome {
        self.grants.inc();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        let url = self
            .token_endpoint()
            .ok_or_else(|| RefreshError::Unavailable("token endpoint not discovered yet".into()))?;
        let (status, bytes) = self.post_form(http, &url, &form).await?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
            RefreshError::Unavailable(format!(
                "token endpoint answered {status} with a body that is not JSON"
            ))
        })?;
        if status != StatusCode::OK {
            let code = json.get("error").and_then(|e| e.as_str()).unwrap_or("");
            return Err(if code == "invalid_grant" {
                RefreshError::InvalidGrant
            } else {
                RefreshError::Unavailable(format!(
                    "token endpoint answered {status} error={code:?}"
                ))
            });
        }
        let access_token = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .ok_or_else(|| RefreshError::Unavailable("token response without access_token".into()))?
            .to_string();
        let verified = verifier
            .verify(&access_token)
            .await
            .map_err(RefreshError::BadToken)?;
        auth::check_time(&verified, now_unix()).map_err(RefreshError::BadToken)?;
        Ok(Arc::new(Grant {
            access_token,
            verified,
            expires_in: json.get("expires_in").and_then(|v| v.as_u64()),
            refresh_token: json
                .get("refresh_token")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }))
    }

    async fn post_form(
        &self,
        http: &Client,
        url: &http::Uri,
        pairs: &[(&str, &str)],
    ) -> Result<(StatusCode, Bytes), RefreshError> {
        post_form(http, &self.client, url, pairs, self.cfg.timeout).await
    }

    /// RFC 7009: tell the IdP the refresh token is no longer wanted (best effort).
    pub async fn revoke_at_idp(&self, http: &Client, refresh_token: &str) {
        let discovered = || self.discovery.as_ref()?.endpoints()?.revocation.clone();
        let Some(url) = self.cfg.revocation_endpoint.clone().or_else(discovered) else {
            return;
        };
        let form = [
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ];
        match self.post_form(http, &url, &form).await {
            Ok((s, _)) if s.is_success() => {}
            Ok((s, _)) => {
                tracing::warn!(status = %s, "revocation endpoint refused the refresh token")
            }
            Err(e) => tracing::warn!(error = %e, "revocation endpoint call failed"),
        }
    }
}

/// POST a form to an IdP endpoint as client `c` (RFC 6749 §2.3: Basic, in the form, or a
/// public client's bare client_id); returns status and body (at most 64 KiB).
pub async fn post_form(
    http: &Client,
    c: &OAuthClient,
    url: &http::Uri,
    pairs: &[(&str, &str)],
    timeout: Duration,
) -> Result<(StatusCode, Bytes), RefreshError> {
    {
        let mut req = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        if c.auth == ClientAuth::Basic {
            // RFC 6749 §2.3.1: form-encode both parts, then Basic.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let cred = STANDARD.encode(format!("{}:{}", enc(&c.client_id), enc(&c.client_secret)));
            req = req.header(header::AUTHORIZATION, format!("Basic {cred}"));
        }
        let form = {
            let mut f = form_urlencoded::Serializer::new(String::new());
            f.extend_pairs(pairs);
            match c.auth {
                ClientAuth::Post => {
                    f.append_pair("client_id", &c.client_id)
                        .append_pair("client_secret", &c.client_secret);
                }
                ClientAuth::None => {
                    f.append_pair("client_id", &c.client_id);
                }
                ClientAuth::Basic => {}
            }
            f.finish()
        };
        let req = req
            .body(body::full(form))
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        let work = async {
            let resp = http.request(req).await.map_err(|e| {
                RefreshError::Unavailable(format!("token endpoint unreachable: {e}"))
            })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| RefreshError::Unavailable(format!("reading token response: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| RefreshError::Unavailable("token endpoint timed out".into()))?
    }
}

/// The refresh token the client presented: the `refresh_header` first (API clients), then
/// the `refresh_cookie`. Sent twice (two header lines, two cookies of that name) is 400.
pub fn find_refresh_token(
    cfg: &Refresh,
    headers: &HeaderMap,
) -> Result<Option<(String, Channel)>, GatewayError> {
    let mut lines = headers.get_all(&cfg.refresh_header).iter();
    let first = lines.next();
    if lines.next().is_some() {
        return Err(GatewayError::BadRequest(
            "refresh token header sent more than once",
        ));
    }
    if let Some(v) = first
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        return Ok(Some((v.to_string(), Channel::Header)));
    }
    Ok(auth::find_only_cookie(headers, &cfg.refresh_cookie)?
        .map(|v| (v.to_string(), Channel::Cookie)))
}

/// The refresh token never reaches an upstream: cut its cookie and drop the header.
pub fn strip_refresh_token(cfg: &Refresh, headers: &mut HeaderMap) {
    headers.remove(&cfg.refresh_header);
    auth::remove_cookies(headers, |name| name == cfg.refresh_cookie);
}

/// Hand the new tokens back to the client, the way its refresh token came.
pub fn return_tokens(h: &mut HeaderMap, cfg: &Refresh, grant: &Grant, channel: Channel) {
    match channel {
        Channel::Header => {
            if let Some(v) = token_value(&grant.access_token) {
                h.insert(X_ACCESS_TOKEN.clone(), v);
            }
            if let Some(v) = grant.refresh_token.as_deref().and_then(token_value) {
                h.insert(X_REFRESH_TOKEN.clone(), v);
            }
        }
        Channel::Cookie => {
            let max_age = grant
                .expires_in
                .unwrap_or_else(|| (grant.verified.exp - now_unix()).max(0) as u64);
            set_cookie(h, &cfg.access_cookie, &grant.access_token, Some(max_age));
            if let Some(r) = &grant.refresh_token {
                set_cookie(h, &cfg.refresh_cookie, r, None);
            }
        }
    }
    // Responses carrying fresh credentials must not be cached by intermediaries.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A token as a response header value, marked sensitive: on h2, HPACK sends it as a
/// never-indexed literal (RFC 7541 §7.1.3), so it never enters the connection's compression
/// table, as h2 already does for `Authorization`, `Cookie` and `Set-Cookie` by name.
fn token_value(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(token).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Append `Set-Cookie: name=value; HttpOnly; SameSite=Lax; Secure; Path=/[; Max-Age=N]`
/// (without `Max-Age`, a session cookie).
pub fn set_cookie(h: &mut HeaderMap, name: &str, value: &str, max_age: Option<u64>) {
    let mut c = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax);
    if let Some(a) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(
            i64::try_from(a).unwrap_or(i64::MAX),
        ));
    }
    if let Ok(v) = HeaderValue::try_from(c.build().to_string()) {
        h.append(header::SET_COOKIE, v);
    }
}

/// Expire the access and refresh cookies.
pub fn clear_cookies(h: &mut HeaderMap, cfg: &Refresh) {
    for name in [&cfg.access_cookie, &cfg.refresh_cookie] {
        set_cookie(h, name, "", Some(0));
    }
}

/// A 401 for a rejected refresh token, with both cookies expired.
pub fn rejected(cfg: &Refresh) -> Response<Body> {
    let mut r = GatewayError::InvalidToken(TokenError::RefreshRejected).into_response();
    clear_cookies(r.headers_mut(), cfg);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Refresh {
        Refresh {
            client: None,
            refresh_before: Duration::from_secs(60),
            access_cookie: "access_token".into(),
            refresh_cookie: "refresh_token".into(),
            refresh_header: HeaderName::from_static("x-refresh-token"),
            revocation_endpoint: None,
            logout_path: "/logout".into(),
            reuse_window: Duration::from_secs(30),
            rate_limit: crate::config::RateLimitConfig {
                per: crate::config::LimitBy::Ip,
                rps: 5.0,
                burst: 20,
            },
            timeout: Duration::from_secs(1),
            discovery_issuer: None,
        }
    }

    #[test]
    fn refresh_cookie_is_cut_from_upstream_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; refresh_token=SECRET; access_token=t"),
        );
        h.insert("x-refresh-token", HeaderValue::from_static("SECRET2"));
        strip_refresh_token(&cfg(), &mut h);
        assert_eq!(h[header::COOKIE], "a=1; access_token=t");
        assert!(!h.contains_key("x-refresh-token"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("refresh_token=SECRET"),
        );
        strip_refresh_token(&cfg(), &mut h);
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn sealed_results_open_only_with_the_same_refresh_token() {
        let s = StoredOutcome {
            access_token: Some("at".into()),
            expires_in: Some(5),
            refresh_token: Some("rt2".into()),
            invalid_grant: false,
        };
        let blob = seal("rt1", &s).unwrap();
        assert!(!blob.contains("rt2"));
        assert_eq!(
            open_sealed("rt1", &blob).unwrap().access_token.as_deref(),
            Some("at")
        );
        assert!(open_sealed("other", &blob).is_none());
    }

    #[test]
    fn tokens_returned_in_headers_are_never_indexed() {
        let grant = |refresh: Option<&str>| Grant {
            access_token: "eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(),
            verified: Arc::new(Verified::for_tests(now_unix() + 600, None)),
            expires_in: Some(600),
            refresh_token: refresh.map(Into::into),
        };
        let mut h = HeaderMap::new();
        return_tokens(&mut h, &cfg(), &grant(Some("rt-2")), Channel::Header);
        assert_eq!(h["x-access-token"], "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
        assert_eq!(h["x-refresh-token"], "rt-2");
        // Never-indexed literals on h2 (RFC 7541 §7.1.3).
        assert!(h["x-access-token"].is_sensitive());
        assert!(h["x-refresh-token"].is_sensitive());
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        // A token that is no header value is not sent.
        let mut h = HeaderMap::new();
        return_tokens(&mut h, &cfg(), &grant(Some("line\nbreak")), Channel::Header);
        assert!(h.contains_key("x-access-token"));
        assert!(!h.contains_key("x-refresh-token"));
    }

    #[test]
    fn header_refresh_token_wins_over_cookie() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("refresh_token=c"));
        assert_eq!(
            find_refresh_token(&cfg(), &h).unwrap(),
            Some(("c".into(), Channel::Cookie))
        );
        h.insert("x-refresh-token", HeaderValue::from_static("h"));
        assert_eq!(
            find_refresh_token(&cfg(), &h).unwrap(),
            Some(("h".into(), Channel::Header))
        );
        h.append("x-refresh-token", HeaderValue::from_static("h2"));
        assert!(find_refresh_token(&cfg(), &h).is_err());
        h.remove("x-refresh-token");
        h.append(header::COOKIE, HeaderValue::from_static("refresh_token=d"));
        assert!(find_refresh_token(&cfg(), &h).is_err());
    }
}
