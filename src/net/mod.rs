//! The outbound HTTP layer: a pooled HTTP/1.1 client (hyper's connection API, rustls) for
//! upstreams and identity-provider calls, the upstream response body that returns its
//! connection to the pool, and (`body`) the one body type that flows through the gateway.

pub mod body;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use crate::config::origin::{webpki_roots, Origin};
use body::Body;

/// Time allowed to establish a TCP connection (and a TLS session) to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `e` and its sources, outermost first.
pub(crate) fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| (*e).source())
}

/// Whether `e` or one of its sources is a `T` (how a client body's failure shows through
/// the upstream client's error).
pub(crate) fn in_chain<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    chain(e).any(|e| e.is::<T>())
}

/// `e: source: source...`, for the log.
pub(crate) fn error_chain(e: &ClientError) -> String {
    chain(e)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

// === Client ===

/// Pooled HTTP/1.1 client for http:// and https:// upstreams (https verified against the
/// webpki roots, plus `server.upstream_ca`). Connections are hyper's own
/// (`hyper::client::conn::http1`); idle ones wait in a LIFO list per origin and go back
/// there when their response body has been read to the end. Each worker thread has its
/// own `Client`, so the lock is never contended.
///
/// Built on hyper's connection API rather than hyper-util's legacy `Client`: that one spawns
/// a task, a oneshot and a type-map insert per request to re-pool the connection; see
/// docs/BENCHMARKS.md for what replacing it saved.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Mutex<Pool>,
    tls: tokio_rustls::TlsConnector,
    max_idle_per_origin: usize,
}

#[derive(Default)]
struct Pool {
    /// Indexed by `Origin::id`; `None` until this client first sends there.
    slots: Vec<Option<Slot>>,
    /// Reaper ticks so far; idle age is counted in ticks, so the request path never reads
    /// the clock.
    tick: u64,
}

/// One origin's idle connections and `Host` value. The value is this client's own copy:
/// cloning it touches no memory another worker thread writes.
struct Slot {
    host: HeaderValue,
    idle: Vec<Idle>,
}

struct Idle {
    tx: SendRequest<Body>,
    /// `Pool::tick` when the connection went idle.
    since: u64,
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {origin}: {source}")]
    Connect {
        origin: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// Not an absolute http:// or https:// URL (the message says why).
    #[error("{0}")]
    Unsupported(String),
}

impl ClientError {
    /// The connection could not be established (nothing was sent): safe to try elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

/// Idle connections are closed after `IDLE_TICKS` to `IDLE_TICKS + 1` reaper ticks. A
/// connection checked in before the current tick is "stale": it has been idle long enough
/// that the upstream may close it just as a request reaches it.
const REAP_EVERY: Duration = Duration::from_secs(1);
const IDLE_TICKS: u64 = 60;

impl Client {
    /// Build a client keeping at most `max_idle_per_origin` idle connections per origin,
    /// verifying https servers against the webpki roots. `max_idle_per_origin` must not be
    /// below the expected concurrency, or connections keep reopening.
    pub fn new(max_idle_per_origin: usize) -> Client {
        Client::with_roots(max_idle_per_origin, Arc::new(webpki_roots()))
    }

    /// Like `new`, verifying https servers against `roots` (`server.upstream_ca`).
    pub fn with_roots(max_idle_per_origin: usize, roots: Arc<rustls::RootCertStore>) -> Client {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let mut tls = match tls {
            Ok(t) => t,
            // The provider supports the default versions; this cannot fail in practice.
            Err(e) => panic!("rustls client config: {e}"),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            inner: Arc::new(Inner {
                pool: Mutex::new(Pool::default()),
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                max_idle_per_origin,
            }),
        }
    }

    /// Fetch an absolute URL (JWKS, token endpoint, admin API) in origin form.
    pub async fn request(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let origin = Origin::from_uri(req.uri()).map_err(ClientError::Unsupported)?;
        let pq = req.uri().path_and_query().cloned();
        *req.uri_mut() = origin_form(pq);
        self.send(&origin, req).await
    }

    /// Send a request whose URI is already in origin form (`/path?query`); its `Host` header
    /// becomes the origin's authority. A pooled connection that turns out to be closed
    /// before the request was written is replaced by the next one, or a new one.
    pub async fn send(
        &self,
        origin: &Origin,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let mut replayed = false;
        loop {
            // A request sent again goes out on a new connection: the upstream's other idle
            // ones have likely timed out too.
            let (slot, host, idle) = self.checkout(origin, !replayed);
            req.headers_mut().insert(header::HOST, host);
            let (mut tx, pooled, stale) = match idle {
                Some((tx, stale)) => (tx, true, stale),
                // Boxed: connecting (DNS, TCP, TLS) is rare and its future is large; the
                // request future stays small and cheap to move.
                None => (Box::pin(self.connect(origin)).await?, false, false),
            };
            if let Err(e) = tx.ready().await {
                if pooled {
                    continue;
                }
                return Err(e.into());
            }
            // An upstream may close a connection that sat idle just as the request reaches
            // it (a keep-alive timeout shorter than ours). Like nginx, an idempotent request
            // without a body is then sent once more; a copy is kept for that only on
            // connections idle since before the last reaper tick (boxed: rare, and the
            // request future stays small).
            let replay =
                (stale && !replayed && is_replayable(&req)).then(|| Box::new(copy_request(&req)));
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(slot, tx, resp)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed under us; try another.
                    Some(r) if pooled => req = r,
                    _ => {
                        let e = e.into_error();
                        match replay {
                            Some(r) if closed_before_response(&e) => {
                                tracing::debug!(origin = %origin, error = %e, "idle upstream connection closed under the request; sending it again");
                                replayed = true;
                                req = *r;
                            }
                            _ => return Err(e.into()),
                        }
                    }
                },
            }
        }
    }

    /// The origin's slot and `Host` value, and (if `take_idle`) its most recently used open
    /// idle connection with whether it is stale (idle since before the current reaper tick).
    fn checkout(
        &self,
        origin: &Origin,
        take_idle: bool,
    ) -> (usize, HeaderValue, Option<(SendRequest<Body>, bool)>) {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        let s = origin.id;
        if pool.slots.len() <= s {
            pool.slots.resize_with(s + 1, || None);
        }
        let tick = pool.tick;
        let slot = pool.slots[s].get_or_insert_with(|| Slot {
            // A copy made here, so this worker's clones touch only its own memory.
            host: HeaderValue::from_bytes(origin.host_header.as_bytes())
                .unwrap_or_else(|_| origin.host_header.clone()),
            idle: Vec::new(),
        });
        let host = slot.host.clone();
        if !take_idle {
            return (s, host, None);
        }
        while let Some(c) = slot.idle.pop() {
            if !c.tx.is_closed() {
                return (s, host, Some((c.tx, c.since != tick)));
            }
        }
        (s, host, None)
    }

    fn checkin(&self, slot: usize, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        let since = pool.tick;
        let Some(Slot { idle, .. }) = &mut pool.slots[slot] else {
            return;
        };
        if idle.len() >= self.inner.max_idle_per_origin {
            idle.retain(|c| !c.tx.is_closed());
            if idle.len() >= self.inner.max_idle_per_origin {
                return;
            }
        }
        idle.push(Idle { tx, since });
    }

    /// One reaper tick: close idle connections that have been idle for `IDLE_TICKS` ticks
    /// or were closed by the upstream.
    fn reap_idle(&self) {
        if let Ok(mut pool) = self.inner.pool.lock() {
            pool.tick += 1;
            let now = pool.tick;
            for slot in pool.slots.iter_mut().flatten() {
                slot.idle
                    .retain(|c| !c.tx.is_closed() && now - c.since < IDLE_TICKS);
            }
        }
    }

    /// Reap idle connections every `REAP_EVERY` on the current runtime, for as long as the
    /// client exists: an idle connection lives 60 to 61 s.
    pub fn spawn_reaper(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) => Client { inner }.reap_idle(),
                    None => return,
                }
            }
        });
    }

    async fn connect(&self, origin: &Origin) -> Result<SendRequest<Body>, ClientError> {
        let fail = |source| ClientError::Connect {
            origin: origin.key.to_string(),
            source,
        };
        let timed_out = |what| std::io::Error::new(std::io::ErrorKind::TimedOut, what);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((&*origin.host, origin.port)),
        )
        .await
        .map_err(|_| fail(timed_out("connect timed out")))?
        .map_err(fail)?;
        let _ = tcp.set_nodelay(true);
        if !origin.tls {
            return handshake(tcp).await;
        }
        let name = ServerName::try_from(origin.host.to_string())
            .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.inner.tls.connect(name, tcp))
            .await
            .map_err(|_| fail(timed_out("TLS handshake timed out")))?
            .map_err(fail)?;
        handshake(tls).await
    }

    fn wrap(
        &self,
        slot: usize,
        tx: SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<UpstreamBody> {
        // An upgraded connection belongs to the upgrade now; never pool it.
        let slot = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(slot);
        let mut resp = resp.map(|inner| UpstreamBody {
            inner,
            release: slot.map(|slot| Release {
                client: self.clone(),
                slot,
                tx,
            }),
        });
        if resp.body().inner.is_end_stream() {
            resp.body_mut().release();
        }
        resp
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Body>, ClientError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with error");
        }
    });
    Ok(tx)
}

/// An idempotent request without a body: safe to send again.
pub(crate) fn is_replayable(req: &Request<Body>) -> bool {
    is_idempotent(req.method()) && req.body().is_end_stream()
}

/// A bodyless copy (method, URI, version, headers) of a replayable request.
pub(crate) fn copy_request(req: &Request<Body>) -> Request<Body> {
    let mut r = Request::new(body::empty());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// The connection ended after the request was written and before any response: the
/// upstream closed or reset it.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    chain(e)
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
}

pub(crate) fn origin_form(pq: Option<http::uri::PathAndQuery>) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

// === UpstreamBody ===

/// An upstream response body. Once it has been read to the end, its connection goes back
/// to the pool; dropped earlier, the connection is closed.
pub struct UpstreamBody {
    inner: Incoming,
    release: Option<Release>,
}

struct Release {
    client: Client,
    slot: usize,
    tx: SendRequest<Body>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(r) = self.release.take() {
            r.client.checkin(r.slot, r.tx);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.release = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
