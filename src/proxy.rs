//! `handle`: the request path of SPEC.md, one numbered step per stage, each a call into the
//! module that owns it. Start reading here: steps 2-5 (the decision) are
//! `pipeline::decide`, shared with every front door; this file adds accepting (1) and
//! forwarding (6-7).

use std::time::Instant;

use http::{header, HeaderValue, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{self, Body};
use crate::cors;
use crate::error::GatewayError;
use crate::identity::{self, ClientInfo, X_REQUEST_ID};
use crate::pipeline::{self, Allowed, Decision, Notes};
use crate::refresh;
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

    // 2-5. Route, strip, authenticate, refresh: the decision every front door shares.
    let allowed = match pipeline::decide(app, client, &conn, &mut parts, notes).await? {
        Decision::Answer(resp) => return Ok(resp),
        Decision::Allow(a) => a,
    };
    let Allowed {
        route,
        auth,
        renewed,
        host,
    } = allowed;

    // 6. Identity, forwarding headers, hop-by-hop removal; the refresh token stays here.
    if let Some(a) = &auth {
        pipeline::set_identity(app, route, a, &mut parts.headers);
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
