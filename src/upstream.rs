//! Forwarding: the pooled upstream client, URI rewrite, timeouts, failover to the next
//! upstream for idempotent requests, and WebSocket/upgrade splicing.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{self, Body};
use crate::config::UpstreamUrl;
use crate::error::GatewayError;
use crate::route::Route;

/// Pooled HTTP/1.1 client for http:// and https:// upstreams (webpki roots).
pub type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Time allowed to establish a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Build a client. `max_idle_per_host` must not be below the expected concurrency, or
/// connections keep reopening.
pub fn client(max_idle_per_host: usize) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        // The provider supports the default versions; this cannot fail in practice.
        Err(e) => panic!("rustls client config: {e}"),
    };
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// Send the request to the route's upstreams (round robin). A failed connect moves on to
/// the next upstream when the request can be replayed (idempotent method, no body).
pub async fn forward(
    client: &Client,
    route: &Route,
    mut parts: http::request::Parts,
    body: Body,
    replayable: bool,
) -> Result<Response<Incoming>, GatewayError> {
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    let retry = replayable && route.config.upstreams.len() > 1 && is_idempotent(&parts.method);
    let spare = retry.then(|| (parts.method.clone(), parts.headers.clone()));
    let mut body = Some(body);
    let mut last_err = GatewayError::NoUpstream;
    for upstream in route.pick() {
        let uri = upstream_uri(
            upstream,
            &route.upstream_path(upstream, &path, query.as_deref()),
        )?;
        let mut p = match (body.is_some(), &spare) {
            (true, _) => std::mem::replace(&mut parts, Request::new(()).into_parts().0),
            (false, Some((m, h))) => {
                let (mut p, _) = Request::new(()).into_parts();
                p.method = m.clone();
                p.headers = h.clone();
                p.version = Version::HTTP_11;
                p
            }
            (false, None) => break,
        };
        p.uri = uri;
        p.headers.insert(header::HOST, upstream.host_header.clone());
        let b = body.take().unwrap_or_else(body::empty);
        let req = Request::from_parts(p, b);
        match tokio::time::timeout(route.config.timeout, client.request(req)).await {
            Err(_) => return Err(GatewayError::UpstreamTimeout),
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(e)) => {
                if has_length_limit_error(&e) {
                    return Err(GatewayError::BodyTooLarge);
                }
                tracing::warn!(route = %route.config.name, upstream = %upstream, error = %error_chain(&e), "upstream request failed");
                last_err = GatewayError::UpstreamUnreachable;
                if !(e.is_connect() && retry) {
                    break;
                }
            }
        }
    }
    Err(last_err)
}

fn upstream_uri(u: &UpstreamUrl, path_and_query: &str) -> Result<Uri, GatewayError> {
    Uri::builder()
        .scheme(u.scheme.clone())
        .authority(u.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| GatewayError::BadRequest("request path cannot be forwarded"))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn has_length_limit_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// After a `101 Switching Protocols` from the upstream, splice the client's and the
/// upstream's upgraded connections together in a background task.
pub fn splice_upgrade(
    client_side: hyper::upgrade::OnUpgrade,
    upstream_resp: &mut Response<Incoming>,
) {
    if upstream_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream_side = hyper::upgrade::on(upstream_resp);
    tokio::spawn(async move {
        let (c, u) = match tokio::try_join!(client_side, upstream_side) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut c = TokioIo::new(c);
        let mut u = TokioIo::new(u);
        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
    });
}
