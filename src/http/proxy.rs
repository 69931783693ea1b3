//! `handle`: the request path of SPEC.md, one numbered step per stage, each a call into the
//! module that owns it. Start reading here: steps 2-5 (the decision) are
//! `pipeline::decide`, shared with every front door; this file adds accepting (1) and
//! forwarding (6-7).

use http::{header, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::app::App;
use crate::error::GatewayError;
use crate::http::access::Exchange;
use crate::http::forward;
use crate::identity::refresh;
use crate::net::body::{self, Body};
use crate::net::Client;
use crate::ops::otel::{self, RequestSpan};
use crate::pipeline::headers::{self, ClientInfo};
use crate::pipeline::{self, Allowed, Decision, Notes};

/// Serve one request and write its access-log line. Takes its handles by value, so the
/// service can box this future as it is (no wrapping future, no extra copy of its state).
pub async fn handle<A: AsRef<App>>(
    app: std::sync::Arc<A>,
    client: Client,
    conn: std::sync::Arc<ClientInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let app = (*app).as_ref();
    let exchange = Exchange::begin("proxy", &req);
    let mut notes = exchange.notes();
    let cx = exchange.calls_context(app);
    let outcome = otel::within(
        cx,
        proxy(app, &client, &conn, req, &mut notes, exchange.span()),
    )
    .await;
    exchange.finish(app, notes, outcome)
}

async fn proxy<'a>(
    app: &'a App,
    client: &Client,
    conn: &ClientInfo,
    mut req: Request<Incoming>,
    notes: &mut Notes<'a>,
    span: Option<&RequestSpan>,
) -> Result<Response<Body>, GatewayError> {
    // 1. Accept: TLS, HTTP/1.1 or h2, header timeout and size limits live in `listener`.
    //    The client's address (for the log) is read before any header changes, and the
    //    request id settled (step 6's, on every answer from here on). Framing that could
    //    smuggle a second request past us is refused here.
    let hops = app.config.server.trusted_proxy_hops;
    if notes.logging {
        notes.client(req.headers(), conn, hops);
    }
    notes.request_id = Some(headers::request_id(req.headers_mut()));
    check_framing(&req, app.config.server.max_body_bytes)?;
    let upgrade = is_upgrade(&req);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Steps 2-6 edit the request head in place, and `decide` borrows it: in a block of
    // its own, so the head's slot ends with the block instead of staying in this future's
    // state beside the forwarded request's (issue 19).
    let (req, body_sent, route, auth, renewed) = {
        let (mut parts, body) = req.into_parts();

        // 2-5. Route, strip, authenticate, refresh: the decision every front door shares.
        let allowed = match pipeline::decide(app, client, conn, &mut parts, notes, hops).await? {
            Decision::Answer(resp) => return Ok(resp),
            // Boxed: the identity provider's rare POSTs must not widen every request's future.
            Decision::Receive(e) => {
                return Ok(Box::pin(pipeline::signals::receive(app, e, &parts, body)).await)
            }
            Decision::Allow(a) => a,
        };
        let Allowed {
            route,
            auth,
            renewed,
            host,
        } = allowed;

        // 6. Hop-by-hop removal first, so a client's `Connection: x-user-id` (or any name
        //    the gateway sets) cannot strip what the gateway adds next (Apache's
        //    CVE-2022-31813); then identity, forwarding headers, trace context; the refresh
        //    token stays here.
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        if let Some(a) = &auth {
            pipeline::set_identity(app, route, a, &mut parts.headers);
            if notes.logging {
                notes.caller = Some(a.verified.clone());
            }
        }
        if let Some(r) = &app.config.refresh {
            refresh::strip_refresh_token(r, &mut parts.headers);
        }
        if app.login.is_some() {
            crate::identity::login::strip_cookies(&mut parts.headers);
        }
        headers::join_cookie_lines(&mut parts.headers);
        headers::set_forwarded(&mut parts.headers, conn, host.as_ref(), hops > 0);
        if let Some(s) = span {
            headers::set_trace_context(&mut parts.headers, s.span_context());
        }

        // A request without a body (hyper knows: no length, or END_STREAM on h2) can be
        // replayed on the next upstream and needs no stream of its own.
        let (body, body_sent) = if body.is_end_stream() {
            (body::empty(), None)
        } else {
            if notes.logging {
                notes.bytes_received = Some(body::Tally::default());
            }
            let (b, sent) = body::request(
                body,
                app.config.server.max_body_bytes as usize,
                app.config.server.stream_idle_timeout,
                notes.bytes_received.clone(),
            );
            (b, Some(sent))
        };
        let req = Request::from_parts(parts, body);
        (req, body_sent, route, auth, renewed)
    };

    // 7. Forward, streaming both ways; splice upgraded connections.
    let stats = app.metrics.upstreams(route.index);
    let tried = &mut notes.upstream;
    let mut resp = forward::forward(client, route, stats, req, body_sent, tried).await?;
    if let Some(on) = on_upgrade {
        forward::splice_upgrade(on, &mut resp);
    }
    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    headers::remove_hop_by_hop(resp.headers_mut(), upgraded);
    if let (Some((grant, channel)), Some(r)) = (&renewed, &app.config.refresh) {
        refresh::return_tokens(resp.headers_mut(), r, grant, *channel);
    }
    if let Some(n) = auth.and_then(|a| a.dpop_nonce) {
        resp.headers_mut()
            .insert(crate::error::DPOP_NONCE.clone(), n);
    }
    let idle = app.config.server.stream_idle_timeout;
    Ok(resp.map(|b| body::upstream(b, idle)))
}

/// Content-Length together with Transfer-Encoding (or several differing lengths) is the
/// classic request-smuggling shape: refuse it and close the connection.
fn check_framing(req: &Request<Incoming>, max_body: u64) -> Result<(), GatewayError> {
    let h = req.headers();
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if h.contains_key(header::TRANSFER_ENCODING) {
            return Err(GatewayError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
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

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use http::request::Parts;

    use super::*;
    use crate::identity::auth::Verifier;
    use crate::identity::revocation::Revocations;
    use crate::identity::sender::{Facts, SenderCheck};

    struct Live(App);
    impl AsRef<App> for Live {
        fn as_ref(&self) -> &App {
            &self.0
        }
    }

    /// The request path's futures, by the size of their state (a future holds every
    /// nested future it awaits, and is moved once when boxed): issue 19. Sizes in bytes;
    /// `cargo test --lib future_sizes -- --ignored --nocapture` prints them: a measurement,
    /// not a check, so it is ignored in the normal run.
    #[test]
    #[ignore = "measurement: prints future sizes, asserts nothing"]
    fn future_sizes() {
        fn of<
            'a,
            F: FnOnce(
                &'a App,
                &'a Client,
                &'a ClientInfo,
                Request<Incoming>,
                &'a mut Notes<'a>,
                Option<&'a RequestSpan>,
            ) -> R,
            R,
        >(
            _: F,
        ) -> usize {
            size_of::<R>()
        }
        let handle = {
            fn of<
                F: FnOnce(
                    std::sync::Arc<Live>,
                    Client,
                    std::sync::Arc<ClientInfo>,
                    Request<Incoming>,
                ) -> R,
                R,
            >(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(handle::<Live>)
        };
        let proxy = of(proxy);
        let decide = {
            fn of<
                'a,
                F: FnOnce(
                    &'a App,
                    &'a Client,
                    &'a ClientInfo,
                    &'a mut Parts,
                    &'a mut Notes<'a>,
                    usize,
                ) -> R,
                R,
            >(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(pipeline::decide)
        };
        let forward = {
            fn of<
                'a,
                F: FnOnce(
                    &'a Client,
                    &'a crate::policy::route::Route,
                    &'a [crate::ops::metrics::UpstreamStats],
                    Request<Body>,
                    Option<crate::net::body::BodySent>,
                    &'a mut Option<&'a crate::config::origin::Origin>,
                ) -> R,
                R,
            >(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(forward::forward)
        };
        let authenticate = {
            fn of<
                'a,
                F: FnOnce(
                    &'a Verifier,
                    crate::config::AuthMode,
                    &'a crate::config::Tokens,
                    &'a http::Method,
                    Option<&'a str>,
                    &'a http::HeaderMap,
                    Option<&'a crate::config::CorsConfig>,
                    Option<&'a crate::identity::auth::TokenMemo>,
                ) -> R,
                R,
            >(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(Verifier::authenticate)
        };
        let revocation = {
            fn of<'a, F: FnOnce(&'a Revocations, &'a crate::identity::auth::Verified) -> R, R>(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(Revocations::check)
        };
        let sender = {
            fn of<
                'a,
                F: FnOnce(
                    &'a SenderCheck,
                    crate::config::SenderConstraint,
                    &'a crate::identity::auth::Authenticated,
                    &'a Facts<'a>,
                    i64,
                ) -> R,
                R,
            >(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(SenderCheck::check)
        };
        let send = {
            fn of<
                'a,
                F: FnOnce(&'a Client, &'a crate::config::origin::Origin, Request<Body>) -> R,
                R,
            >(
                _: F,
            ) -> usize {
                size_of::<R>()
            }
            of(Client::send)
        };
        for (name, size) in [
            ("proxy::handle", handle),
            ("proxy::proxy", proxy),
            ("pipeline::decide", decide),
            ("forward::forward", forward),
            ("Verifier::authenticate", authenticate),
            ("Revocations::check", revocation),
            ("SenderCheck::check", sender),
            ("Client::send", send),
            // What those futures hold, some of it more than once.
            ("Request<Incoming>", size_of::<Request<Incoming>>()),
            ("Request<Body>", size_of::<Request<Body>>()),
            ("Response<Body>", size_of::<Response<Body>>()),
            ("Parts", size_of::<Parts>()),
            ("Body", size_of::<Body>()),
            ("ClientInfo", size_of::<ClientInfo>()),
            ("Exchange", size_of::<Exchange>()),
            ("Notes", size_of::<Notes>()),
            ("Allowed", size_of::<Allowed>()),
            ("GatewayError", size_of::<GatewayError>()),
        ] {
            println!("{name}: {size} bytes");
        }
    }
}
