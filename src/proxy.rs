//! `handle`: the request path of SPEC.md, one numbered step per stage, each a call into the
//! module that owns it. Start reading here.

use std::net::IpAddr;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::app::App;
use crate::auth::{self, now_unix, Authenticated};
use crate::body::{self, Body};
use crate::config::{AuthMode, CorsConfig, LimitBy};
use crate::cors;
use crate::error::{GatewayError, TokenError};
use crate::identity::{self, ClientInfo, X_REQUEST_ID};
use crate::refresh::{self, RefreshError};
use crate::upstream::{self, Client};

/// Serve one request and write its access-log line. Takes its handles by value, so the
/// service can box this future as it is (no wrapping future, no extra copy of its state).
pub async fn handle<A: AsRef<App>>(
    app: std::sync::Arc<A>,
    client: Client,
    conn: ClientInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let (app, client) = ((*app).as_ref(), &client);
    let version = req.version();
    // Nothing is copied for the access log unless the line will be written.
    let logging = tracing::enabled!(target: "jwtgate::access", tracing::Level::INFO);
    let started = Instant::now();
    let method = logging.then(|| req.method().clone());
    let path = logging.then(|| req.uri().path().to_owned());
    let mut notes = Notes {
        logging,
        ..Notes::default()
    };
    let mut resp = match proxy(app, client, conn, req, &mut notes).await {
        Ok(r) => r,
        Err(e) => {
            if logging {
                notes.error = Some(e.to_string());
            }
            app.metrics.refused(&e, notes.route_index);
            // Framing we could not trust, or a body left half-read: never reuse the
            // connection.
            let close = matches!(e, GatewayError::BadRequest(_) | GatewayError::BodyTimeout)
                && version < http::Version::HTTP_2;
            let mut r = e.into_response();
            if close {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    // The route's CORS headers go on every answer, the gateway's own errors included.
    if let Some(c) = notes.cors {
        cors::apply(c, notes.origin.as_ref(), resp.headers_mut());
    }
    if let Some(id) = &notes.request_id {
        // Unique per request: HPACK must not put it in the h2 connection's table, where
        // every new id would evict others and lengthen the encoder's search.
        let mut id = id.clone();
        id.set_sensitive(true);
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    let took = started.elapsed();
    app.metrics
        .request(notes.route_index, resp.status().as_u16(), took);
    if !logging {
        return Ok(resp);
    }
    let route = match notes.route_index {
        Some(i) => app.router.routes()[i].config.name.as_str(),
        None => notes.gateway_endpoint.unwrap_or("-"),
    };
    tracing::info!(
        target: "jwtgate::access",
        method = method.as_ref().map_or("-", http::Method::as_str),
        path = path.as_deref().unwrap_or(""),
        route,
        client = notes.client.map(tracing::field::display),
        status = resp.status().as_u16(),
        duration_us = took.as_micros() as u64,
        request_id = notes.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
        sub = notes.sub.as_deref().unwrap_or("-"),
        error = notes.error.as_deref().unwrap_or(""),
    );
    Ok(resp)
}

/// What the request path notes for the response's last touches (CORS headers), the
/// metrics and the access-log line. Strings are filled only when `logging` (the access log
/// is enabled).
#[derive(Default)]
struct Notes<'a> {
    logging: bool,
    route_index: Option<usize>,
    /// A request answered by the gateway itself (logout), not by a route.
    gateway_endpoint: Option<&'static str>,
    request_id: Option<HeaderValue>,
    /// See `identity::client_address`: worked out once, when first needed.
    client: Option<std::net::IpAddr>,
    sub: Option<String>,
    error: Option<String>,
    /// The `cors` of the request's route, and the request's `Origin`.
    cors: Option<&'a CorsConfig>,
    origin: Option<HeaderValue>,
}

impl Notes<'_> {
    /// The client's address (read before any header changes: the client's identity
    /// headers, stripped in step 3, never play a part in it).
    fn client(&mut self, headers: &http::HeaderMap, conn: &ClientInfo, hops: usize) -> IpAddr {
        *self
            .client
            .get_or_insert_with(|| identity::client_address(headers, conn, hops))
    }
}

async fn proxy<'a>(
    app: &'a App,
    client: &Client,
    conn: ClientInfo,
    mut req: Request<Incoming>,
    notes: &mut Notes<'a>,
) -> Result<Response<Body>, GatewayError> {
    // 1. Accept: TLS, HTTP/1.1 or h2, header timeout and size limits live in `listener`.
    //    The client's address (for the log) is read before any header changes. Framing
    //    that could smuggle a second request past us is refused here.
    let hops = app.config.server.trusted_proxy_hops;
    if notes.logging {
        notes.client(req.headers(), &conn, hops);
    }
    check_framing(&req, app.config.server.max_body_bytes)?;
    let upgrade = is_upgrade(&req);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = authority(&parts)?;
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
        if parts.method == http::Method::POST && parts.uri.path() == r.logout_path {
            identity::strip_client_headers(&mut parts.headers, &app.config.identity, hops > 0);
            notes.gateway_endpoint = Some("logout");
            return Box::pin(refresh::logout(app, client, &parts, authority, notes.cors)).await;
        }
    }
    let route = route.ok_or(GatewayError::NoRoute)?;
    notes.route_index = Some(route.index);
    //    A CORS preflight is the gateway's to answer (it carries no credentials).
    if let Some(c) = notes.cors {
        if cors::is_preflight(&parts.method, &parts.headers) {
            return cors::preflight(c, &parts.headers);
        }
    }

    // 3. Strip identity headers the client sent, on every route, before anything else.
    identity::strip_client_headers(&mut parts.headers, &app.config.identity, hops > 0);

    // 4. Rate limit and authenticate. A per-address limit comes before any token is looked
    //    at, so a flood of bad tokens is limited too.
    if let Some(l) = route.limit.as_ref().filter(|l| l.per == LimitBy::Ip) {
        l.check_ip(notes.client(&parts.headers, &conn, hops))?;
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
                )
                .await?
        }
    };
    let mut expired = false;
    if let Some(a) = &auth {
        app.revocations.check(&a.verified).await?;
        match auth::check_time(&a.verified, now_unix()) {
            Err(TokenError::Expired) if renewal.is_some() => expired = true,
            other => other?,
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
                l.check_ip(notes.client(&parts.headers, &conn, hops))?
            }
            None => {}
        }
    }
    if let (Some(d), Some(a)) = (&app.anomaly, &auth) {
        let ip = notes.client(&parts.headers, &conn, hops);
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
            Some(a) => expired || r.is_due(&a.verified),
            None => channel == refresh::Channel::Cookie,
        };
        if due {
            r.check_attempt(notes.client(&parts.headers, &conn, hops))?;
            match Box::pin(r.refresh(client, &app.verifier, &refresh_token)).await {
                Ok(grant) => {
                    app.revocations.check(&grant.verified).await?;
                    auth = Some(Authenticated {
                        verified: grant.verified.clone(),
                        bearer: HeaderValue::try_from(format!("Bearer {}", grant.access_token))
                            .ok(),
                    });
                    renewed = Some((grant, channel));
                }
                Err(RefreshError::InvalidGrant) => return Ok(refresh::rejected(r.config())),
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
    }

    // 6. Identity, forwarding headers, hop-by-hop removal; the refresh token stays here.
    if let Some(a) = &auth {
        identity::set_identity(&mut parts.headers, &app.config.identity, a);
        if let Some(m) = &app.assertions {
            let iss = &app.verifier.issuers()[a.verified.issuer].config.issuer;
            if let Some(v) = m.assertion(&a.verified, iss, route.index, &route.config.name) {
                parts.headers.insert(m.header().clone(), v);
            }
        }
        if notes.logging {
            notes.sub = Some(a.verified.sub.clone());
        }
    }
    if let Some(r) = &app.config.refresh {
        refresh::strip_refresh_token(r, &mut parts.headers);
    }
    identity::join_cookie_lines(&mut parts.headers);
    notes.request_id = Some(identity::set_forwarded(
        &mut parts.headers,
        &conn,
        host.as_ref(),
        hops > 0,
    ));
    identity::remove_hop_by_hop(&mut parts.headers, upgrade);

    // 7. Forward, streaming both ways; splice upgraded connections.
    // A request without a body (hyper knows: no length, or END_STREAM on h2) can be
    // replayed on the next upstream and needs no stream of its own.
    let (body, body_sent) = if body.is_end_stream() {
        (body::empty(), None)
    } else {
        let (b, sent) = body::request(
            body,
            app.config.server.max_body_bytes as usize,
            app.config.server.stream_idle_timeout,
        );
        (b, Some(sent))
    };
    let mut resp = upstream::forward(client, route, parts, body, body_sent).await?;
    if let Some(on) = on_upgrade {
        upstream::splice_upgrade(on, &mut resp);
    }
    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    identity::remove_hop_by_hop(resp.headers_mut(), upgraded);
    if let (Some((grant, channel)), Some(r)) = (&renewed, &app.config.refresh) {
        refresh::return_tokens(resp.headers_mut(), r, grant, *channel);
    }
    let idle = app.config.server.stream_idle_timeout;
    Ok(resp.map(|b| body::upstream(b, idle)))
}

/// Content-Length together with Transfer-Encoding (or several differing lengths) is the
/// classic request-smuggling shape: refuse it and close the connection.
fn check_framing(req: &Request<Incoming>, max_body: u64) -> Result<(), GatewayError> {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(GatewayError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|v| v != first) {
            return Err(GatewayError::BadRequest(
                "conflicting Content-Length headers",
            ));
        }
        let n: u64 = first
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(GatewayError::BadRequest("invalid Content-Length"))?;
        if n > max_body {
            return Err(GatewayError::BodyTooLarge);
        }
    }
    Ok(())
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
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
