//! Sign-in at the edge (`[login]`, route `login = true`): OpenID Connect authorization code
//! flow with PKCE S256. `challenge` turns a browser navigation without a usable session
//! into a 302 to the IdP; `callback` checks the state, exchanges the code, verifies the ID
//! token and sets the session cookies the refresh path uses; `end_session` sends a
//! browser on to the IdP's RP-initiated logout. Tokens, codes, state and verifiers are
//! never logged. Endpoints come from discovery (`oidc`); cookies from `refresh`.

pub use crate::config::login as config;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;

use crate::error::GatewayError;
use crate::identity::auth::{self, now_unix};
use crate::identity::jwks::{IssuerKeys, KidLookup};
use crate::identity::refresh::{self, Channel, Grant};
use crate::net::body::{self, Body};
use crate::net::Client;
use crate::pipeline::headers::ClientInfo;

pub use state::return_path;
use state::{LoginState, Sealer};

/// The cookie that keeps the ID token for logout's `id_token_hint`.
pub const ID_TOKEN_COOKIE: &str = "id_token";
/// How long a started sign-in may take (the state cookie's lifetime).
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Loop guard: this many sign-ins started within `LOOP_WINDOW` without a session, and the
/// next navigation gets the error page instead of another redirect.
pub const MAX_SIGN_INS: u32 = 2;
pub const LOOP_WINDOW: i64 = 60;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a sign-in failed. `Display` is what the user reads; `label` the metric reason.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("The identity provider did not sign you in ({0}).")]
    Idp(&'static str),
    #[error("This sign-in link has no sign-in in progress in this browser (it may have been opened in another browser, or cookies are blocked).")]
    MissingState,
    #[error("This sign-in took too long and has expired.")]
    ExpiredState,
    #[error("This sign-in does not belong to this browser.")]
    StateMismatch,
    #[error("This sign-in link has already been used.")]
    Replayed,
    #[error("The identity provider did not accept the sign-in code.")]
    ExchangeFailed,
    #[error("The identity provider's answer could not be verified.")]
    IdToken(&'static str),
    #[error("The access token issued at sign-in was not accepted.")]
    AccessToken,
    #[error("You were sent to sign in several times in a row without getting a session; your browser may be blocking cookies.")]
    Loop,
    #[error("Sign-in is not available right now; please try again shortly.")]
    Unavailable,
    #[error("Sign-in needs HTTPS: this page came over plain HTTP, where browsers do not keep the sign-in cookies. Open it with https://.")]
    PlainHttp,
}

impl LoginError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            LoginError::Idp(_) => "idp_error",
            LoginError::MissingState => "missing_state",
            LoginError::ExpiredState => "expired_state",
            LoginError::StateMismatch => "state_mismatch",
            LoginError::Replayed => "replayed_state",
            LoginError::ExchangeFailed => "exchange_failed",
            LoginError::IdToken(_) => "id_token_invalid",
            LoginError::AccessToken => "access_token_invalid",
            LoginError::Loop => "loop_guard",
            LoginError::Unavailable => "unavailable",
            LoginError::PlainHttp => "plain_http",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            LoginError::Idp(_) => StatusCode::FORBIDDEN,
            LoginError::ExchangeFailed | LoginError::Unavailable => StatusCode::BAD_GATEWAY,
            LoginError::IdToken(_) | LoginError::AccessToken => StatusCode::BAD_GATEWAY,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// RFC 6749 §4.1.2.1 error codes shown to the user; anything else is "other".
const IDP_ERRORS: [&str; 9] = [
    "access_denied",
    "login_required",
    "consent_required",
    "interaction_required",
    "invalid_request",
    "unauthorized_client",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
];

/// Sign-in at run time: the validated `[login]`, the sealing key, the issuer's keys and
/// discovery, the spent-state memory and the counters.
pub struct SignIn {
    cfg: config::Login,
    sealer: Sealer,
    issuer: Arc<IssuerKeys>,
    /// State values already redeemed here, kept for the state's lifetime: a state cookie
    /// is good once per replica (the IdP refuses a code twice, across replicas too).
    spent: moka::sync::Cache<String, ()>,
    /// `jwtgate_logins_total{result, reason}`.
    pub logins: Family<Vec<(&'static str, String)>, Counter>,
}

impl SignIn {
    pub fn new(cfg: config::Login, issuer: Arc<IssuerKeys>) -> SignIn {
        let logins = Family::<Vec<(&'static str, String)>, Counter>::default();
        for (result, reason) in [("started", "redirect"), ("completed", "ok")] {
            let _ = logins.get_or_create(&vec![
                ("result", result.to_string()),
                ("reason", reason.to_string()),
            ]);
        }
        SignIn {
            sealer: Sealer::new(&cfg.session_secret),
            spent: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(STATE_TTL + Duration::from_secs(60))
                .build(),
            cfg,
            issuer,
            logins,
        }
    }

    pub fn callback_path(&self) -> &str {
        &self.cfg.callback_path
    }

    fn count(&self, result: &'static str, reason: &'static str) {
        self.logins
            .get_or_create(&vec![
                ("result", result.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    fn failed(&self, e: &LoginError) {
        self.count("failed", e.label());
        tracing::info!(reason = e.label(), "sign-in failed");
    }

    fn pending(&self, headers: &HeaderMap) -> Option<LoginState> {
        self.sealer.open(auth::find_cookie(headers, state::COOKIE)?)
    }
}

// === the challenge ===

/// A top-level browser navigation: GET/HEAD, `Accept` naming `text/html`, no
/// `Authorization` (an API client with a bad token gets its 401, never a redirect).
pub fn is_navigation(parts: &http::request::Parts) -> bool {
    matches!(parts.method, Method::GET | Method::HEAD) && accepts_html(&parts.headers)
}

fn accepts_html(h: &HeaderMap) -> bool {
    !h.contains_key(header::AUTHORIZATION)
        && h.get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

impl SignIn {
    /// The 302 to the authorization endpoint, with a new sealed state cookie; or the error
    /// page when the loop guard trips or sign-in is not possible now.
    pub(crate) fn start(
        &self,
        conn: &ClientInfo,
        parts: &http::request::Parts,
        hops: usize,
    ) -> Response<Body> {
        let return_to = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .and_then(return_path)
            .unwrap_or("/")
            .to_string();
        let now = now_unix();
        let (tries, since) = match self.pending(&parts.headers) {
            Some(p) if now - p.since < LOOP_WINDOW => (p.tries, p.since),
            _ => (0, now),
        };
        if tries >= MAX_SIGN_INS {
            return self.refuse(LoginError::Loop, true, &return_to);
        }
        let auth_endpoint = self
            .issuer
            .discovery()
            .and_then(|d| d.endpoints())
            .and_then(|e| e.authorization.clone());
        let (Some(auth_endpoint), Some(origin)) = (auth_endpoint, origin(conn, parts, hops)) else {
            return self.refuse(LoginError::Unavailable, true, &return_to);
        };
        // The state cookie (and the session's) is `Secure`: from a plain-HTTP origin a
        // browser drops it, and the person would come back from the IdP to "no sign-in in
        // progress". Say why before sending them there.
        if !keeps_secure_cookies(&origin) {
            return self.refuse(LoginError::PlainHttp, true, &return_to);
        }
        let (Some(id), Some(verifier), Some(nonce)) =
            (state::random(24), state::random(32), state::random(24))
        else {
            return self.refuse(LoginError::Unavailable, true, &return_to);
        };
        let redirect_uri = format!("{origin}{}", self.cfg.callback_path);
        let pending = LoginState {
            state: id,
            verifier,
            nonce,
            return_to: return_to.clone(),
            redirect_uri,
            created: now,
            tries: tries + 1,
            since,
        };
        let location = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client.client_id)
                .append_pair("redirect_uri", &pending.redirect_uri)
                .append_pair("scope", &self.cfg.scopes.join(" "))
                .append_pair("state", &pending.state)
                .append_pair("nonce", &pending.nonce)
                .append_pair("code_challenge", &state::code_challenge(&pending.verifier))
                .append_pair("code_challenge_method", "S256");
            let sep = if auth_endpoint.query().is_some() {
                '&'
            } else {
                '?'
            };
            format!("{auth_endpoint}{sep}{}", q.finish())
        };
        let Some(sealed) = self.sealer.seal(&pending) else {
            return self.refuse(LoginError::Unavailable, true, &return_to);
        };
        let mut resp = redirect(&location);
        refresh::set_cookie(
            resp.headers_mut(),
            state::COOKIE,
            &sealed,
            Some(STATE_TTL.as_secs()),
        );
        self.count("started", "redirect");
        resp
    }

    /// The error page (browsers) or JSON (API clients). The pending state is cleared, so
    /// "Sign in again" starts afresh (a person clicking it is not a loop).
    fn refuse(&self, e: LoginError, browser: bool, return_to: &str) -> Response<Body> {
        self.failed(&e);
        let mut resp = if browser {
            let html = format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in failed</title></head>\n<body><h1>Sign-in failed</h1>\n<p>{}</p>\n<p><a href=\"{}\">Sign in again</a></p></body></html>\n",
                escape(&e.to_string()),
                escape(return_path(return_to).unwrap_or("/")),
            );
            let mut r = Response::new(body::full(html));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        } else {
            crate::error::json_response(e.status(), "login_failed", &e.to_string())
        };
        *resp.status_mut() = e.status();
        let h = resp.headers_mut();
        // The callback URL carries the code: never hand it on as a Referer.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        refresh::set_cookie(h, state::COOKIE, "", Some(0));
        resp
    }
}

/// `scheme://host` of the request as the browser addressed it: the listener's scheme (or
/// a trusted proxy's `x-forwarded-proto`), and `Host`/`:authority` (or a trusted proxy's
/// `x-forwarded-host`). `None` when the host is not a plain authority.
fn origin(conn: &ClientInfo, parts: &http::request::Parts, hops: usize) -> Option<String> {
    let h = &parts.headers;
    let trusted = |name: &str| (hops > 0).then(|| h.get(name)?.to_str().ok()).flatten();
    let scheme = match trusted("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ if conn.tls => "https",
        _ => "http",
    };
    let host = trusted("x-forwarded-host")
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .or_else(|| h.get(header::HOST)?.to_str().ok())?;
    let a: http::uri::Authority = host.parse().ok()?;
    if a.as_str().contains('@') {
        return None;
    }
    Some(format!("{scheme}://{}", a.as_str().to_ascii_lowercase()))
}

/// Whether browsers store `Secure` cookies set by `origin` (from `origin()`): HTTPS, and
/// the loopback origins they treat as secure contexts (`localhost`, `*.localhost`,
/// 127.0.0.0/8, `[::1]`) even over plain HTTP.
fn keeps_secure_cookies(origin: &str) -> bool {
    let Some(authority) = origin.strip_prefix("http://") else {
        return true;
    };
    let Ok(a) = authority.parse::<http::uri::Authority>() else {
        return false;
    };
    let host = a.host().trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::try_from(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The ID token and the state cookie stay at the edge: cut from what an upstream gets
/// (like the refresh token; the access token travels as the route's identity does).
pub fn strip_cookies(headers: &mut HeaderMap) {
    auth::remove_cookies(headers, |name| {
        matches!(name, ID_TOKEN_COOKIE | state::COOKIE)
    });
}

// === the callback ===

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
}

/// The ID token claims the gateway checks or keeps (OIDC Core §2, §3.1.3.7).
#[derive(Debug, Deserialize)]
pub struct IdClaims {
    pub sub: String,
    pub nonce: Option<String>,
    /// The IdP session (OIDC Front/Back-Channel Logout); kept for back-channel logout.
    pub sid: Option<String>,
    pub azp: Option<String>,
    pub aud: serde_json::Value,
}

/// A finished sign-in (for the log and, later, back-channel logout).
pub struct SignedIn {
    pub sub: String,
    pub sid: Option<String>,
}

/// `GET <callback_path>`: finish the sign-in this browser started.
pub async fn callback(
    s: &SignIn,
    r: &crate::config::Refresh,
    checks: (
        &crate::identity::auth::Verifier,
        &crate::identity::revocation::Revocations,
    ),
    http: &Client,
    parts: &http::request::Parts,
) -> Result<Response<Body>, GatewayError> {
    let browser = accepts_html(&parts.headers);
    let pending = s.pending(&parts.headers);
    let return_to = pending
        .as_ref()
        .and_then(|p| return_path(&p.return_to))
        .unwrap_or("/")
        .to_string();
    match s.finish(checks, http, parts, pending).await {
        Ok((grant, id_token, who, mut after)) => {
            let mut resp = redirect(&return_to);
            let h = resp.headers_mut();
            refresh::return_tokens(h, r, &grant, Channel::Cookie);
            refresh::set_cookie(h, ID_TOKEN_COOKIE, &id_token, None);
            // The state is spent; only the loop guard's count stays.
            after.state.clear();
            after.verifier.clear();
            after.nonce.clear();
            if let Some(c) = s.sealer.seal(&after) {
                refresh::set_cookie(h, state::COOKIE, &c, Some(LOOP_WINDOW as u64));
            }
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            s.count("completed", "ok");
            tracing::info!(sub = %who.sub, session = who.sid.is_some(), "sign-in completed");
            Ok(resp)
        }
        Err(e) => Ok(s.refuse(e, browser, &return_to)),
    }
}

impl SignIn {
    async fn finish(
        &self,
        (verifier, revocations): (
            &crate::identity::auth::Verifier,
            &crate::identity::revocation::Revocations,
        ),
        http: &Client,
        parts: &http::request::Parts,
        pending: Option<LoginState>,
    ) -> Result<(Grant, String, SignedIn, LoginState), LoginError> {
        let q: std::collections::HashMap<String, String> =
            form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let pending = pending
            .filter(|p| !p.state.is_empty())
            .ok_or(LoginError::MissingState)?;
        let sent_state = q.get("state").map(String::as_str).unwrap_or("");
        if !state::same(sent_state, &pending.state) {
            return Err(LoginError::StateMismatch);
        }
        if now_unix() - pending.created > STATE_TTL.as_secs() as i64 {
            return Err(LoginError::ExpiredState);
        }
        if let Some(e) = q.get("error") {
            let code = IDP_ERRORS
                .iter()
                .find(|c| *c == e)
                .copied()
                .unwrap_or("other");
            return Err(LoginError::Idp(code));
        }
        // Good once: the first request to get here redeems it.
        if !self
            .spent
            .entry(pending.state.clone())
            .or_insert(())
            .is_fresh()
        {
            return Err(LoginError::Replayed);
        }
        let code = q.get("code").ok_or(LoginError::ExchangeFailed)?;
        let tokens = self.exchange(http, code, &pending).await?;
        let id_token = tokens.id_token.ok_or(LoginError::IdToken("no id_token"))?;
        let claims = self.verify_id_token(&id_token, &pending.nonce).await?;
        let access_token = tokens.access_token.ok_or(LoginError::AccessToken)?;
        let verified = verifier
            .verify(&access_token)
            .await
            .map_err(|_| LoginError::AccessToken)?;
        auth::check_time(&verified, now_unix()).map_err(|_| LoginError::AccessToken)?;
        revocations
            .check(&verified)
            .await
            .map_err(|_| LoginError::AccessToken)?;
        let grant = Grant {
            access_token,
            verified,
            expires_in: tokens.expires_in,
            refresh_token: tokens.refresh_token,
        };
        let who = SignedIn {
            sub: claims.sub,
            sid: claims.sid,
        };
        Ok((grant, id_token, who, pending))
    }

    /// RFC 6749 §4.1.3 + RFC 7636 §4.5: the code, the same redirect_uri, the verifier.
    async fn exchange(
        &self,
        http: &Client,
        code: &str,
        pending: &LoginState,
    ) -> Result<TokenResponse, LoginError> {
        let url = self
            .issuer
            .discovery()
            .and_then(|d| d.endpoints())
            .and_then(|e| e.token.clone())
            .ok_or(LoginError::Unavailable)?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let (status, bytes) =
            refresh::post_form(http, &self.cfg.client, &url, &form, EXCHANGE_TIMEOUT)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "sign-in code exchange failed");
                    LoginError::ExchangeFailed
                })?;
        if status != StatusCode::OK {
            let err: Option<String> = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| Some(v.get("error")?.as_str()?.chars().take(64).collect()));
            tracing::warn!(status = %status, error = ?err, "token endpoint refused the sign-in code");
            return Err(LoginError::ExchangeFailed);
        }
        serde_json::from_slice(&bytes).map_err(|_| LoginError::ExchangeFailed)
    }

    /// OIDC Core §3.1.3.7: signature with the issuer's keys (chosen by `kid`, as for
    /// access tokens; never `none`), `iss`, `aud` contains client_id (and `azp` is it when
    /// there are several audiences), `exp`/`nbf` with the issuer's leeway, `nonce` equal.
    pub async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<IdClaims, LoginError> {
        use jsonwebtoken::{decode, decode_header, Validation};
        let header = decode_header(token).map_err(|_| LoginError::IdToken("malformed"))?;
        let alg = header.alg;
        let cfg = &self.issuer.config;
        if cfg.algorithms.as_ref().is_some_and(|a| !a.contains(&alg)) {
            return Err(LoginError::IdToken("algorithm not allowed"));
        }
        let keys = match header.kid.as_deref() {
            Some(kid) => match self.issuer.find_kid(kid).await {
                KidLookup::Found(k) => vec![k],
                KidLookup::Unknown => return Err(LoginError::IdToken("unknown key id")),
            },
            None => self
                .issuer
                .keys()
                .pinned
                .iter()
                .filter(|k| k.pinned == Some(alg))
                .cloned()
                .collect(),
        };
        let mut v = Validation::new(alg);
        v.set_issuer(&[cfg.issuer.as_str()]);
        v.set_audience(&[self.cfg.client.client_id.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = cfg.leeway_s;
        let mut last = LoginError::IdToken("no key for its algorithm");
        for k in keys.iter().filter(|k| k.algs.contains(&alg)) {
            match decode::<IdClaims>(token, &k.key, &v) {
                Ok(t) => {
                    let c = t.claims;
                    if !c.nonce.as_deref().is_some_and(|n| state::same(n, nonce)) {
                        return Err(LoginError::IdToken("nonce mismatch"));
                    }
                    let several = c.aud.as_array().is_some_and(|a| a.len() > 1);
                    match c.azp.as_deref() {
                        Some(azp) if azp != self.cfg.client.client_id => {
                            return Err(LoginError::IdToken("azp mismatch"))
                        }
                        None if several => return Err(LoginError::IdToken("azp missing")),
                        _ => {}
                    }
                    return Ok(c);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = LoginError::IdToken(match e.kind() {
                        K::InvalidSignature => "signature invalid",
                        K::ExpiredSignature => "expired",
                        K::ImmatureSignature => "not yet valid",
                        K::InvalidIssuer => "issuer mismatch",
                        K::InvalidAudience => "audience mismatch",
                        K::MissingRequiredClaim(_) => "missing claim",
                        _ => "invalid",
                    });
                    if !matches!(e.kind(), K::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

// === logout ===

/// A browser's sign-out, a link or a form POST, asking for a page (not an API call): it
/// ends with a redirect instead of 204.
pub fn is_navigation_or_form(parts: &http::request::Parts) -> bool {
    matches!(parts.method, Method::GET | Method::POST) && accepts_html(&parts.headers)
}

/// A `GET <logout_path>` that is a browser navigation from this site (or typed in): with
/// `[login]`, a sign-out link works like the POST. A cross-site GET (an image, a link on
/// another site) is not one (`Sec-Fetch-Site`), so it cannot sign anyone out.
pub fn is_logout_navigation(parts: &http::request::Parts) -> bool {
    parts.method == Method::GET
        && accepts_html(&parts.headers)
        && parts
            .headers
            .get("sec-fetch-site")
            .is_none_or(|v| v == "same-origin" || v == "none")
}

impl SignIn {
    /// After `refresh::logout`, a browser goes on to the IdP's `end_session_endpoint`
    /// (RP-Initiated Logout 1.0) with `id_token_hint`, `client_id` and
    /// `post_logout_redirect_uri`; without one, straight to `post_logout_redirect`. A
    /// session that was already gone (no or expired token) still signs out at the IdP.
    pub fn end_session(
        &self,
        refresh_cfg: Option<&crate::config::Refresh>,
        conn: &ClientInfo,
        parts: &http::request::Parts,
        hops: usize,
        out: Result<Response<Body>, GatewayError>,
    ) -> Result<Response<Body>, GatewayError> {
        match out {
            Ok(_) | Err(GatewayError::MissingToken | GatewayError::InvalidToken(_)) => {}
            Err(e) => return Err(e),
        }
        let Some(origin) = origin(conn, parts, hops) else {
            return Err(GatewayError::BadRequest("Host is not a plain authority"));
        };
        let after = match self.cfg.post_logout_redirect.starts_with('/') {
            true => format!("{origin}{}", self.cfg.post_logout_redirect),
            false => self.cfg.post_logout_redirect.clone(),
        };
        let end = self
            .issuer
            .discovery()
            .and_then(|d| d.endpoints())
            .and_then(|e| e.end_session.clone());
        let location = match end {
            None => after,
            Some(end) => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                if let Some(t) = auth::find_cookie(&parts.headers, ID_TOKEN_COOKIE) {
                    q.append_pair("id_token_hint", t);
                }
                q.append_pair("client_id", &self.cfg.client.client_id)
                    .append_pair("post_logout_redirect_uri", &after);
                let sep = if end.query().is_some() { '&' } else { '?' };
                format!("{end}{sep}{}", q.finish())
            }
        };
        let mut resp = redirect(&location);
        let h = resp.headers_mut();
        if let Some(r) = refresh_cfg {
            refresh::clear_cookies(h, r);
        }
        refresh::set_cookie(h, ID_TOKEN_COOKIE, "", Some(0));
        refresh::set_cookie(h, state::COOKIE, "", Some(0));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_cookies_never_reach_upstreams() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; id_token=x.y.z; jwtgate_login=s"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        strip_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("id_token=x"));
        strip_cookies(&mut h);
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn secure_cookies_need_https_or_loopback() {
        for kept in [
            "https://app.example",
            "http://localhost:8080",
            "http://app.localhost",
            "http://127.0.0.1:80",
            "http://127.9.9.9",
            "http://[::1]:8080",
        ] {
            assert!(keeps_secure_cookies(kept), "{kept}");
        }
        for dropped in ["http://app.example", "http://10.0.0.1:8080", "http://[::2]"] {
            assert!(!keeps_secure_cookies(dropped), "{dropped}");
        }
    }

    #[test]
    fn idp_error_codes_are_bounded() {
        assert!(IDP_ERRORS.contains(&"access_denied"));
        assert_eq!(LoginError::Idp("other").label(), "idp_error");
    }
}
