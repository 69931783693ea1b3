//! Step 7, forwarding: URI rewrite, the route's timeout, failover to the next upstream for
//! idempotent requests, and WebSocket/upgrade splicing. The connections themselves are
//! `net::Client`'s.

use std::time::Duration;

use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::config::origin::Origin;
use crate::config::UpstreamUrl;
use crate::error::GatewayError;
use crate::net::body::Body;
use crate::net::{self, Client, UpstreamBody};
use crate::ops::metrics::UpstreamStats;
use crate::policy::route::Route;

/// Send the request to the route's upstreams (round robin). A failed connect moves on to
/// the next upstream when the request can be replayed (idempotent method, no body). The
/// route's `timeout_ms` runs until the response head, counted from the end of the request
/// body (`body_sent`; at once without one), as Envoy's route timeout does: a slow upload
/// is the body idle timeout's business, not an upstream timeout. `tried` is set to each
/// upstream as it is tried (for the access log).
pub async fn forward<'r>(
    client: &Client,
    route: &'r Route,
    stats: &[UpstreamStats],
    mut req: Request<Body>,
    mut body_sent: Option<crate::net::body::BodySent>,
    tried: &mut Option<&'r Origin>,
) -> Result<Response<UpstreamBody>, GatewayError> {
    *req.version_mut() = Version::HTTP_11;
    req.extensions_mut().clear();
    // Later attempts send copies of a replayable request (the client's URI still in them);
    // anything else gets one attempt. Boxed: most requests have none, and the request
    // future stays small.
    let spare = (route.config.upstreams.len() > 1 && net::is_replayable(&req))
        .then(|| Box::new(net::copy_request(&req)));
    let mut last_err = GatewayError::NoUpstream;
    for (i, upstream) in route.pick() {
        let stat = stats.get(i);
        *tried = Some(&upstream.origin);
        // From the client's URI: the request's own on the first attempt, the spare's after.
        let uri = upstream_uri(route, upstream, req.uri())?;
        *req.uri_mut() = uri;
        let started = std::time::Instant::now();
        // Pinned here and lent to `after_body`: moved into it, the send future would be
        // held twice in this future's state (the argument and its pinned copy).
        let send = std::pin::pin!(client.send(&upstream.origin, req));
        match after_body(send, body_sent.take(), route.config.timeout).await {
            Err(_) => {
                if let Some(s) = stat {
                    s.timeout.inc();
                }
                return Err(GatewayError::UpstreamTimeout);
            }
            Ok(Ok(resp)) => {
                if let Some(s) = stat {
                    s.duration.observe(started.elapsed());
                }
                return Ok(resp);
            }
            Ok(Err(e)) => {
                if net::in_chain::<http_body_util::LengthLimitError>(&e) {
                    return Err(GatewayError::BodyTooLarge);
                }
                if net::in_chain::<crate::net::body::IdleTimeout>(&e) {
                    return Err(GatewayError::BodyTimeout);
                }
                tracing::warn!(route = %route.config.name, upstream = %upstream, error = %net::error_chain(&e), "upstream request failed");
                if let Some(s) = stat {
                    s.unreachable.inc();
                }
                last_err = GatewayError::UpstreamUnreachable;
                match &spare {
                    Some(s) if e.is_connect() => req = net::copy_request(s),
                    _ => break,
                }
            }
        }
    }
    Err(last_err)
}

/// `send` with `timeout` counted from when `body_sent` resolves (at once without it).
async fn after_body<F: std::future::Future>(
    mut send: std::pin::Pin<&mut F>,
    body_sent: Option<crate::net::body::BodySent>,
    timeout: Duration,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    if let Some(sent) = body_sent {
        tokio::select! {
            biased;
            r = &mut send => return Ok(r),
            _ = sent => {}
        }
    }
    tokio::time::timeout(timeout, send).await
}

/// The origin-form URI sent upstream. Without a prefix to strip or a base path to prepend,
/// the client's path and query are passed on as they are (no copy).
fn upstream_uri(route: &Route, u: &UpstreamUrl, original: &Uri) -> Result<Uri, GatewayError> {
    let pq = if u.base_path.is_empty() && !route.rewrites_path() {
        original.path_and_query().cloned()
    } else {
        let s = route.upstream_path(u, original.path(), original.query());
        Some(
            http::uri::PathAndQuery::try_from(s)
                .map_err(|_| GatewayError::BadRequest("request path cannot be forwarded"))?,
        )
    };
    Ok(net::origin_form(pq))
}

/// After a `101 Switching Protocols` from the upstream, splice the client's and the
/// upstream's upgraded connections together in a background task.
pub fn splice_upgrade(
    client_side: hyper::upgrade::OnUpgrade,
    upstream_resp: &mut Response<UpstreamBody>,
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
