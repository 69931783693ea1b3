//! Forward-auth: the decision listener (`listen.authz`). A proxy that keeps its own ingress
//! (nginx `auth_request`, Traefik/Caddy `forward_auth`, Envoy `ext_authz`) asks here
//! whether a request may pass. The original request is read from the check request, run
//! through the same `pipeline::decide` as a proxied one, and answered instead of
//! forwarded: 200 with the identity headers for the proxy to copy upstream (and, with
//! tracing on, the gateway span's `traceparent`/`tracestate`), or the gateway's usual
//! 401/403/429.

use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::error::GatewayError;
use crate::http::access::Exchange;
use crate::identity::refresh;
use crate::net::body::{self, Body};
use crate::net::Client;
use crate::pipeline::headers::ClientInfo;
use crate::pipeline::{self, Allowed, Decision, Notes};

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// Answer one check request with a decision, and log it as the original request.
pub async fn handle<A: AsRef<App>>(
    app: std::sync::Arc<A>,
    client: Client,
    conn: std::sync::Arc<ClientInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let app = (*app).as_ref();
    let mut exchange = Exchange::begin("authz", &req);
    let mut notes = exchange.notes();
    let cx = exchange.calls_context(app);
    let outcome = crate::ops::otel::within(
        cx,
        decide(app, &client, &conn, req, &mut notes, &mut exchange),
    )
    .await;
    exchange.finish(app, notes, outcome)
}

async fn decide<'a>(
    app: &'a App,
    client: &Client,
    conn: &ClientInfo,
    mut req: Request<Incoming>,
    notes: &mut Notes<'a>,
    exchange: &mut Exchange,
) -> Result<Response<Body>, GatewayError> {
    // The check request's id (the proxy's `$request_id`, or a new one) goes on every
    // answer and in the log line, so the proxy's log and ours can be joined.
    notes.request_id = Some(crate::pipeline::headers::request_id(req.headers_mut()));
    // 1. Only a trusted proxy may describe a request: anyone else could claim any URI.
    let peer = conn.peer.ip();
    if !app
        .config
        .authz
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer))
    {
        return Err(GatewayError::UntrustedPeer);
    }
    // The check request's body (if a proxy sends one) plays no part in the decision.
    let (parts, _body) = req.into_parts();
    let mut original = original_request(parts, app.config.authz.path_prefix.as_deref())?;
    exchange.describe(&original.method, &original.uri);

    // 2-5. The same decision a proxied request gets. The proxy is one more hop in front of
    //    the client's address (its x-forwarded-for entry is the client's).
    let hops = app.config.server.trusted_proxy_hops + 1;
    let Allowed {
        route,
        auth,
        renewed,
        host: _,
    } = match pipeline::decide(app, client, conn, &mut original, notes, hops).await? {
        Decision::Answer(resp) => return Ok(resp),
        // The identity provider posts to the gateway itself, not through a decision.
        Decision::Receive(_) => return Err(GatewayError::NoRoute),
        Decision::Allow(a) => a,
    };

    // 6. Allowed: the identity for the proxy to copy upstream (the response is built
    //    fresh, so nothing the client sent is echoed), renewed tokens for the client.
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    if let Some(a) = &auth {
        pipeline::set_identity(app, route, a, h);
        if notes.logging {
            notes.caller = Some(a.verified.clone());
        }
    }
    if let (Some((grant, channel)), Some(r)) = (&renewed, &app.config.refresh) {
        refresh::return_tokens(h, r, grant, *channel);
    }
    if let Some(n) = auth.and_then(|a| a.dpop_nonce) {
        h.insert(crate::error::DPOP_NONCE.clone(), n);
    }
    // Tracing on: the gateway's span as the parent for the proxy to pass upstream (nginx
    // `auth_request_set $jg_tp $upstream_http_traceparent;`, Traefik `authResponseHeaders`),
    // so the upstream's spans join the gateway's trace as they do behind the proxy path.
    if let Some(s) = exchange.span() {
        crate::pipeline::headers::set_trace_context(h, s.span_context());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The request the proxy is asking about, as a request head for `decide`:
/// - Traefik and Caddy: `X-Forwarded-Method` + `X-Forwarded-Uri` (+ `X-Forwarded-Host`);
/// - nginx `auth_request`: `X-Original-Method` + `X-Original-URI` (+ `X-Forwarded-Host`
///   or `Host`);
/// - Envoy ext_authz (HTTP service): the check request itself, under `[authz] path_prefix`.
///
/// A URI without its method (or a method without its URI) is 400: judging a POST as a GET
/// would skip the CSRF check. So is a check request that describes nothing: never allow
/// on a guess. The fragment (`#...`) is cut; the query stays out of routing.
fn original_request(parts: Parts, envoy_prefix: Option<&str>) -> Result<Parts, GatewayError> {
    let forms = [
        (&X_FORWARDED_METHOD, &X_FORWARDED_URI),
        (&X_ORIGINAL_METHOD, &X_ORIGINAL_URI),
    ];
    let mut present = forms
        .into_iter()
        .filter(|(m, u)| parts.headers.contains_key(*m) || parts.headers.contains_key(*u));
    let described = present.next();
    // Both forms at once: one of them came from the client through a proxy that passes
    // headers on (an nginx describing with X-Original-* while a client adds
    // X-Forwarded-Uri: /public). Which one the proxy meant cannot be known: refuse.
    if present.next().is_some() {
        return Err(GatewayError::BadRequest(
            "both X-Forwarded-Method/-Uri and X-Original-Method/-URI describe the request",
        ));
    }
    let (method, target) = match described {
        Some((m, u)) => {
            let method = one_text(&parts.headers, m)?
                .ok_or(GatewayError::BadRequest("original URI without its method"))?;
            let method = Method::from_bytes(method.as_bytes())
                .map_err(|_| GatewayError::BadRequest("original method is not a method"))?;
            let uri = one_text(&parts.headers, u)?
                .ok_or(GatewayError::BadRequest("original method without its URI"))?;
            (method, uri.to_string())
        }
        None => {
            let rest = envoy_prefix
                .and_then(|p| strip_segment_prefix(parts.uri.path(), p))
                .ok_or(GatewayError::BadRequest(
                    "no original request: send X-Forwarded-Method/-Uri, X-Original-Method/-URI, or a path under authz.path_prefix",
                ))?;
            let target = match parts.uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            (parts.method.clone(), target)
        }
    };
    // Only a path (origin-form) is routed; `#` never reaches a server, so whatever follows
    // it cannot pick a route.
    let target = target.split('#').next().unwrap_or("");
    if !target.starts_with('/') {
        return Err(GatewayError::BadRequest("original URI is not a path"));
    }
    let uri: http::Uri = target
        .parse()
        .map_err(|_| GatewayError::BadRequest("original URI cannot be parsed"))?;
    let host = match one_text(&parts.headers, &X_FORWARDED_HOST)? {
        Some(h) => HeaderValue::from_str(h)
            .map_err(|_| GatewayError::BadRequest("X-Forwarded-Host is not a host"))?,
        None => parts
            .headers
            .get(header::HOST)
            .cloned()
            .ok_or(GatewayError::BadRequest("no original host"))?,
    };
    // The original scheme, for checks that name the URL the client used (a DPoP `htu`).
    let scheme = match one_text(&parts.headers, &X_FORWARDED_PROTO)? {
        Some(p) if p.eq_ignore_ascii_case("https") => Some("https"),
        Some(p) if p.eq_ignore_ascii_case("http") => Some("http"),
        _ => None,
    };
    let (mut head, ()) = Request::new(()).into_parts();
    if let Some(s) = scheme {
        head.extensions.insert(crate::pipeline::OriginalScheme(s));
    }
    head.method = method;
    head.uri = uri;
    head.version = parts.version;
    head.headers = parts.headers;
    for h in [
        &X_FORWARDED_METHOD,
        &X_FORWARDED_URI,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PROTO,
        &X_ORIGINAL_METHOD,
        &X_ORIGINAL_URI,
    ] {
        head.headers.remove(h);
    }
    head.headers.insert(header::HOST, host);
    Ok(head)
}

/// A header's single value as text; two lines are 400 (which one would the proxy mean?).
fn one_text<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, GatewayError> {
    let mut all = h.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(GatewayError::BadRequest(
            "a header describing the original request is repeated",
        ));
    }
    first.to_str().map(|s| Some(s.trim())).map_err(|_| {
        GatewayError::BadRequest("a header describing the original request is not text")
    })
}

/// `/ext-authz/api/x` under `/ext-authz` is `/api/x`; the prefix alone is `/`.
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    match rest {
        "" => Some("/"),
        r if r.starts_with('/') => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn described(p: Parts, prefix: Option<&str>) -> Result<(String, String, String), String> {
        original_request(p, prefix)
            .map(|h| {
                (
                    h.method.to_string(),
                    h.uri.to_string(),
                    h.headers[header::HOST].to_str().unwrap().to_string(),
                )
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_proxy_describes_the_original_request() {
        let traefik = head(
            "GET",
            "/",
            &[
                ("host", "authz:9191"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/api/x?a=1#frag"),
                ("x-forwarded-host", "shop.example"),
            ],
        );
        assert_eq!(
            described(traefik, None).unwrap(),
            ("POST".into(), "/api/x?a=1".into(), "shop.example".into())
        );
        let nginx = head(
            "GET",
            "/_auth",
            &[
                ("host", "shop.example"),
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/api/y"),
            ],
        );
        assert_eq!(
            described(nginx, None).unwrap(),
            ("DELETE".into(), "/api/y".into(), "shop.example".into())
        );
        let envoy = head("PUT", "/ext-authz/api/z?q=1", &[("host", "shop.example")]);
        assert_eq!(
            described(envoy, Some("/ext-authz")).unwrap(),
            ("PUT".into(), "/api/z?q=1".into(), "shop.example".into())
        );
    }

    #[test]
    fn an_undescribed_request_is_refused() {
        for (p, prefix) in [
            (head("GET", "/anything", &[("host", "h")]), None),
            (
                head("GET", "/ext-authzX/a", &[("host", "h")]),
                Some("/ext-authz"),
            ),
            (
                head("GET", "/", &[("host", "h"), ("x-forwarded-uri", "/a")]),
                None,
            ),
            (
                head("GET", "/", &[("host", "h"), ("x-original-method", "GET")]),
                None,
            ),
            (
                head(
                    "GET",
                    "/",
                    &[
                        ("host", "h"),
                        ("x-original-method", "GET"),
                        ("x-original-uri", "https://evil/a"),
                    ],
                ),
                None,
            ),
            (
                head(
                    "GET",
                    "/",
                    &[
                        ("host", "h"),
                        ("x-forwarded-method", "GET"),
                        ("x-forwarded-uri", "/a"),
                        ("x-forwarded-uri", "/b"),
                    ],
                ),
                None,
            ),
            (
                head(
                    "GET",
                    "/_auth",
                    &[
                        ("host", "h"),
                        ("x-original-method", "GET"),
                        ("x-original-uri", "/admin"),
                        ("x-forwarded-method", "GET"),
                        ("x-forwarded-uri", "/public"),
                    ],
                ),
                None,
            ),
        ] {
            assert!(described(p, prefix).is_err());
        }
    }
}
