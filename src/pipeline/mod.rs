//! `decide`: steps 2-5 of the request path (route, strip, authenticate, refresh) for one
//! request head, ending in a `Decision`: the gateway answers itself, or the request may go
//! on with this identity. It knows nothing of forwarding: `proxy::handle` forwards an
//! allowed request, and any other front door (a forward-auth listener) answers with it.

use std::net::IpAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Response};

use crate::app::App;
use crate::config::{AuthMode, CorsConfig, LimitBy};
use crate::error::{GatewayError, TokenError};
use crate::identity::auth::{self, now_unix, Authenticated};
use crate::net::body::Body;
use crate::policy::cors;
pub mod headers;
pub mod logout;
pub mod signals;

use crate::identity::refresh::{self, Channel, Grant, RefreshError};
use crate::net::Client;
use crate::policy::route::Route;
use headers::ClientInfo;

/// How a request head was decided.
pub enum Decision<'a> {
    /// The gateway answers itself: a CORS preflight, logout, a rejected refresh token.
    Answer(Response<Body>),
    /// The request may go on.
    Allow(Allowed<'a>),
    /// A POST to one of the identity provider's endpoints (back-channel logout, signals):
    /// the front door reads the body and answers with `signals::receive`.
    Receive(crate::identity::signals::Endpoint),
}

/// An allowed request: its route, the caller's verified identity (none on an open route
/// or an anonymous optional one), and tokens renewed on the way, to hand back.
pub struct Allowed<'a> {
    pub route: &'a Route,
    pub auth: Option<Authenticated>,
    pub renewed: Option<(Arc<Grant>, Channel)>,
    /// The authority the client addressed (`:authority` or `Host`).
    pub host: Option<HeaderValue>,
}

/// What the request path notes for the response's last touches (CORS headers), the
/// metrics and the access-log line. Strings are filled only when `logging` (the access log
/// is enabled).
#[derive(Default)]
pub struct Notes<'a> {
    pub logging: bool,
    pub route_index: Option<usize>,
    /// A request answered by the gateway itself (logout), not by a route.
    pub gateway_endpoint: Option<&'static str>,
    pub request_id: Option<HeaderValue>,
    /// See `headers::client_address`: worked out once, when first needed.
    pub client: Option<std::net::IpAddr>,
    /// The verified caller (the log's `sub`).
    pub caller: Option<Arc<auth::Verified>>,
    pub error: Option<String>,
    /// The `cors` of the request's route, and the request's `Origin`.
    pub cors: Option<&'a CorsConfig>,
    pub origin: Option<HeaderValue>,
    /// The upstream the request went to (the last one tried).
    pub upstream: Option<&'a crate::config::origin::Origin>,
    /// Request body bytes read, counted only when `logging`.
    pub bytes_received: Option<crate::net::body::Tally>,
}

impl Notes<'_> {
    /// The client's address (read before any header changes: the client's identity
    /// headers, stripped in step 3, never play a part in it).
    pub fn client(&mut self, headers: &http::HeaderMap, conn: &ClientInfo, hops: usize) -> IpAddr {
        *self
            .client
            .get_or_insert_with(|| headers::client_address(headers, conn, hops))
    }
}

/// Steps 2-5 on a request head. `parts` is edited in place: the path normalised, the
/// client's identity headers stripped. Facts for the response and the log go in `notes`.
/// `hops`: trusted proxies in front of `conn`'s peer (`x-forwarded-for` entries to count
/// from the right for the client's address; `server.trusted_proxy_hops` for the proxy,
/// one more behind a forward-auth caller).
pub async fn decide<'a>(
    app: &'a App,
    client: &Client,
    conn: &ClientInfo,
    parts: &mut http::request::Parts,
    notes: &mut Notes<'a>,
    hops: usize,
) -> Result<Decision<'a>, GatewayError> {
    let outcome = decide_steps(app, client, conn, parts, notes, hops).await;
    // With [login], a browser on a `login = true` route without a session signs in.
    match app.login {
        None => outcome,
        Some(_) => challenge(app, conn, parts, notes, hops, outcome),
    }
}

async fn decide_steps<'a>(
    app: &'a App,
    client: &Client,
    conn: &ClientInfo,
    parts: &mut http::request::Parts,
    notes: &mut Notes<'a>,
    hops: usize,
) -> Result<Decision<'a>, GatewayError> {
    let host = authority(parts)?;
    let authority = host.as_ref().and_then(|h| h.to_str().ok());
    //    One spelling of the path for routing, CORS, logout and the upstream: the upstream
    //    gets the path that chose the route, so `/public/../api` cannot take `/public`'s
    //    policy to `/api`. What cannot be normalised safely is 400.
    normalize_path(&mut parts.uri)?;

    // 2. Route. The logout endpoint belongs to the gateway itself, on every host (with
    //    the `cors` of the route its path falls under, for browser apps elsewhere).
    let route = app.router.find(authority, parts.uri.path());
    if let Some(c) = route.and_then(|r| r.config.cors.as_ref()) {
        notes.cors = Some(c);
        notes.origin = parts.headers.get(header::ORIGIN).cloned();
    }
    if let Some(r) = &app.config.refresh {
        let browser = app.login.is_some() && crate::identity::login::is_logout_navigation(parts);
        if (parts.method == http::Method::POST || browser) && parts.uri.path() == r.logout_path {
            headers::strip_client_headers(&mut parts.headers, &app.config.identity, hops > 0);
            notes.gateway_endpoint = Some("logout");
            let out = Box::pin(logout::logout(app, client, parts, authority, notes.cors)).await;
            return match &app.login {
                Some(l) if crate::identity::login::is_navigation_or_form(parts) => l
                    .end_session(app.config.refresh.as_ref(), conn, parts, hops, out)
                    .map(Decision::Answer),
                _ => out.map(Decision::Answer),
            };
        }
    }
    //    So does the sign-in callback (`[login]`).
    if let Some(l) = &app.login {
        if parts.uri.path() == l.callback_path() {
            headers::strip_client_headers(&mut parts.headers, &app.config.identity, hops > 0);
            notes.gateway_endpoint = Some("login_callback");
            let Some(r) = &app.config.refresh else {
                return Err(GatewayError::NoRoute);
            };
            let checks = (&app.verifier, &*app.revocations);
            return Box::pin(crate::identity::login::callback(
                l, r, checks, client, parts,
            ))
            .await
            .map(Decision::Answer);
        }
    }
    //    And so do the identity provider's back-channel endpoints (logout, signals).
    if let Some(e) = app
        .signals
        .as_ref()
        .and_then(|s| s.endpoint(parts.uri.path()))
    {
        headers::strip_client_headers(&mut parts.headers, &app.config.identity, hops > 0);
        notes.gateway_endpoint = Some(e.name());
        if parts.method != http::Method::POST {
            return Err(GatewayError::BadRequest("this endpoint takes POST"));
        }
        return Ok(Decision::Receive(e));
    }
    let route = route.ok_or(GatewayError::NoRoute)?;
    notes.route_index = Some(route.index);
    //    A CORS preflight is the gateway's to answer (it carries no credentials).
    if let Some(c) = notes.cors {
        if cors::is_preflight(&parts.method, &parts.headers) {
            return cors::preflight(c, &parts.headers).map(Decision::Answer);
        }
    }

    // 3. Strip identity headers the client sent, on every route, before anything else.
    //    A forwarded client certificate is believed only from a trusted proxy.
    headers::strip_client_headers(&mut parts.headers, &app.config.identity, hops > 0);
    if let (0, Some(h)) = (hops, app.sender.cert_header()) {
        parts.headers.remove(h);
    }

    // 4. Rate limit and authenticate. A per-address limit comes before any token is looked
    //    at, so a flood of bad tokens is limited too.
    if let Some(l) = route.limit.as_ref().filter(|l| l.per == LimitBy::Ip) {
        l.check_ip(notes.client(&parts.headers, conn, hops))?;
    }

    //    Then the token, signature, claims; then revocation and the clock (an expired
    //    token can still be renewed in step 5 when a refresh token came with it).
    let renewal = match (&app.refresher, route.config.auth) {
        (Some(r), AuthMode::Required | AuthMode::Optional) => {
            refresh::find_refresh_token(r.config(), &parts.headers)?
        }
        _ => None,
    };
    //    A refresh cookie is a credential like an access cookie: an unsafe method needs
    //    a same-site Origin before it can renew (and be forwarded) as the victim.
    if let Some((_, refresh::Channel::Cookie)) = &renewal {
        auth::check_csrf(
            &app.config.tokens,
            &parts.method,
            authority,
            &parts.headers,
            notes.cors,
        )?;
    }
    let mut auth = match route.config.auth {
        AuthMode::None => None,
        // With a refresh token, a missing access token (its cookie expired) is renewed too.
        mode => {
            let mode = if renewal.is_some() {
                AuthMode::Optional
            } else {
                mode
            };
            let host = authority;
            app.verifier
                .authenticate(
                    mode,
                    &app.config.tokens,
                    &parts.method,
                    host,
                    &parts.headers,
                    notes.cors,
                    Some(&*conn.token_memo),
                )
                .await?
        }
    };
    let mut expired = false;
    if let Some(a) = &mut auth {
        app.revocations.check(&a.verified).await?;
        // A bound token is never renewed here: the gateway holds neither the client's
        // DPoP key nor its certificate, so the renewed token could not be bound to them.
        let renewable = renewal.is_some() && !a.verified.is_bound();
        match auth::check_time(&a.verified, now_unix()) {
            Err(TokenError::Expired) if renewable => expired = true,
            other => other?,
        }
        //    Sender-constrained tokens: the DPoP proof or the client certificate. On an
        //    `off` route (the default) nothing is checked and a DPoP-scheme token goes
        //    upstream as the client sent it; elsewhere the check is boxed, so its future
        //    (the proof's replay cache) does not widen every request's.
        if route.config.sender_constraint == crate::config::SenderConstraint::Off {
            if a.dpop_scheme {
                a.bearer = None;
            }
        } else {
            Box::pin(check_sender(app, route, a, conn, parts, authority, hops)).await?;
        }
    }
    //    Before any refresh (a refused request must not spend a refresh token): the
    //    route's per-subject rate limit, counted per verified subject, or by address for a
    //    request with no access token that may go through (optional route, or a refresh
    //    token alone); then the leaked-token detector (`[anomaly]`).
    if let Some(l) = route.limit.as_ref().filter(|l| l.per == LimitBy::Sub) {
        match &auth {
            Some(a) => l.check_sub(a.verified.issuer, &a.verified.sub)?,
            None if renewal.is_some() || route.config.auth == AuthMode::Optional => {
                l.check_ip(notes.client(&parts.headers, conn, hops))?
            }
            None => {}
        }
    }
    if let (Some(d), Some(a)) = (&app.anomaly, &auth) {
        let ip = notes.client(&parts.headers, conn, hops);
        if let Some(flagged) = d.observe(&a.verified, ip) {
            Box::pin(d.act(flagged, &a.verified, ip, &app.revocations)).await?;
        }
    }

    // 5. Refresh near-expiry (or expired) access tokens with the refresh_token grant.
    let mut renewed = None;
    if let (Some(r), Some((refresh_token, channel))) = (&app.refresher, renewal) {
        // A refresh token in `refresh_header` renews only alongside the access token it
        // belongs to (signature verified above, expiry aside): API clients always have it,
        // and a bare header cannot make the gateway call the IdP. A browser's access
        // cookie may have expired away, so the cookie channel renews without one; both
        // count against `[refresh] rate_limit` per client address.
        let due = match &auth {
            Some(a) if a.verified.is_bound() => false,
            Some(a) => expired || r.is_due(&a.verified),
            None => channel == refresh::Channel::Cookie,
        };
        if due {
            r.check_attempt(notes.client(&parts.headers, conn, hops))?;
            match Box::pin(r.refresh(client, &app.verifier, &refresh_token)).await {
                Ok(grant) => {
                    app.revocations.check(&grant.verified).await?;
                    auth = Some(Authenticated {
                        verified: grant.verified.clone(),
                        bearer: HeaderValue::try_from(format!("Bearer {}", grant.access_token))
                            .ok(),
                        dpop_scheme: false,
                        dpop_nonce: None,
                    });
                    renewed = Some((grant, channel));
                }
                Err(RefreshError::InvalidGrant) => {
                    return Ok(Decision::Answer(refresh::rejected(r.config())))
                }
                // Still valid: serve with it and try again on a later request.
                Err(_) if auth.is_some() && !expired => {}
                Err(RefreshError::BadToken(e)) => return Err(e.into()),
                Err(_) if auth.is_none() && route.config.auth == AuthMode::Optional => {}
                Err(_) => return Err(GatewayError::IdpUnavailable),
            }
        }
    }
    if auth.is_none() && route.config.auth == AuthMode::Required {
        return Err(GatewayError::MissingToken);
    }
    if let Some(a) = &auth {
        auth::check_scopes(&route.config.scopes, &a.verified.scopes)?;
        // Then the route's rules over the caller and the request (`require_claims`,
        // `allow`); nothing is built for a route without them.
        if route.config.allow.is_some() || !route.config.require_claims.is_empty() {
            let facts = crate::policy::rules::RequestFacts {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                host: authority.map(crate::path::host_without_port),
                headers: &parts.headers,
                client_ip: notes.client(&parts.headers, conn, hops),
            };
            app.rules.check(route.index, &a.verified, &facts)?;
        }
    }

    Ok(Decision::Allow(Allowed {
        route,
        auth,
        renewed,
        host,
    }))
}

/// The scheme of the original request when a front door learned it from its caller (the
/// forward-auth listener reads `X-Forwarded-Proto`), as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct OriginalScheme(pub &'static str);

/// Step 4's sender constraint (`identity::sender`), with the request as the client
/// addressed it: behind trusted proxies (`hops` > 0) their `x-forwarded-proto` and
/// `x-forwarded-host` say the scheme and host, as for the upstream's forwarding headers.
/// A checked `DPoP` header goes no further. Not called on an `off` route.
async fn check_sender(
    app: &App,
    route: &Route,
    a: &mut Authenticated,
    conn: &ClientInfo,
    parts: &mut http::request::Parts,
    authority: Option<&str>,
    hops: usize,
) -> Result<(), GatewayError> {
    use crate::identity::sender::{self, Facts};
    let mode = route.config.sender_constraint;
    let forwarded = |name: &str| {
        (hops > 0)
            .then(|| parts.headers.get(name))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim())
    };
    let original = parts.extensions.get::<OriginalScheme>().map(|s| s.0);
    let scheme = match (original, forwarded("x-forwarded-proto")) {
        (Some(s), _) => s,
        (None, Some(p)) if p.eq_ignore_ascii_case("https") => "https",
        (None, Some(p)) if p.eq_ignore_ascii_case("http") => "http",
        _ if conn.tls => "https",
        _ => "http",
    };
    let host = forwarded("x-forwarded-host").or(authority);
    let htu = host.and_then(|h| sender::proof::target(scheme, h, parts.uri.path()));
    let facts = Facts {
        method: &parts.method,
        htu,
        headers: &parts.headers,
        tls_cert: conn.client_cert.as_deref(),
        trusted_proxy: hops > 0,
    };
    a.dpop_nonce = app.sender.check(mode, a, &facts, now_unix()).await?;
    parts.headers.remove(&sender::DPOP);
    Ok(())
}

/// Step 6a for any front door: the verified identity as `[identity]` headers, and the
/// gateway-signed assertion when configured (for upstreams on a proxied request, or on a
/// forward-auth decision for the proxy to copy).
pub fn set_identity(app: &App, route: &Route, a: &Authenticated, headers: &mut http::HeaderMap) {
    headers::set_identity(headers, &app.config.identity, a);
    if let Some(m) = &app.assertions {
        let iss = &app.verifier.issuers()[a.verified.issuer].config.issuer;
        if let Some(v) = m.assertion(&a.verified, iss, route.index, &route.config.name) {
            headers.insert(m.header().clone(), v);
        }
    }
}

/// The authority the client addressed: `:authority` (h2, or an HTTP/1.1 absolute-form
/// target), else `Host`. A `Host` that names another authority than `:authority` is
/// malformed (RFC 9113 §8.3.1), and so are two `Host` lines (RFC 9112 §3.2): either could
/// route by one name and reach the upstream under the other. The `Host` value is a
/// refcounted view of the request; only `:authority` needs a copy.
fn authority(parts: &http::request::Parts) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    match (parts.uri.authority(), host) {
        (None, h) => Ok(h.cloned()),
        (Some(a), Some(h)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => Err(
            GatewayError::BadRequest("Host header differs from the request's authority"),
        ),
        (Some(_), Some(h)) => Ok(Some(h.clone())),
        (Some(a), None) => Ok(HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// Replace the request's path with its normal form (`path::normalize`), query kept. A path
/// that is already normal (the usual case) is left as it is, without copying.
fn normalize_path(uri: &mut http::Uri) -> Result<(), GatewayError> {
    let std::borrow::Cow::Owned(p) = crate::path::normalize(uri.path())? else {
        return Ok(());
    };
    if p == uri.path() {
        return Ok(());
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{p}?{q}"),
        None => p,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|_| GatewayError::BadRequest("request path cannot be forwarded"))?,
    );
    *uri = http::Uri::from_parts(parts)
        .map_err(|_| GatewayError::BadRequest("request path cannot be forwarded"))?;
    Ok(())
}

/// `pipeline::decide`'s last word on a `login = true` route: a refusal for want of a
/// usable session (no token, a bad or expired one, a rejected refresh token) becomes a
/// 302 to sign in when the request is a browser navigation. Anything else is unchanged.
fn challenge<'a>(
    app: &App,
    conn: &ClientInfo,
    parts: &http::request::Parts,
    notes: &Notes<'_>,
    hops: usize,
    outcome: Result<Decision<'a>, GatewayError>,
) -> Result<Decision<'a>, GatewayError> {
    let no_session = match &outcome {
        Err(GatewayError::MissingToken | GatewayError::InvalidToken(_)) => true,
        Ok(Decision::Answer(r)) => r.status() == http::StatusCode::UNAUTHORIZED,
        _ => false,
    };
    let (Some(s), Some(route)) = (&app.login, notes.route_index) else {
        return outcome;
    };
    let on_login_route = app
        .router
        .routes()
        .get(route)
        .is_some_and(|r| r.config.login);
    if !no_session || !on_login_route || !crate::identity::login::is_navigation(parts) {
        return outcome;
    }
    // Cookies the refusal cleared (a rejected refresh token) stay cleared.
    let cleared: Vec<HeaderValue> = match &outcome {
        Ok(Decision::Answer(r)) => r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let mut resp = s.start(conn, parts, hops);
    for c in cleared {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(Decision::Answer(resp))
}
