//! The floor under jwtgate's plain-HTTP cost: the least a hyper 1.x reverse proxy can do
//! per request, with jwtgate's runtime layout (one current-thread runtime per core,
//! SO_REUSEPORT listeners, a per-worker idle list of `hyper::client::conn::http1`
//! connections) and none of its work (no routing, header hygiene, timeouts, request ids,
//! logs or metrics). `bench/instructions.sh hyper-floor` counts its instructions per
//! request next to jwtgate's and nginx's. Not a product: it unwraps on every error.
//!
//! With TLS_ADDR, CERT_PEM and KEY_PEM it also serves TLS there (`bench/run.sh --only free`'s
//! floor under jwtgate's TLS and h2 rows): tokio-rustls with jwtgate's rustls settings
//! (aws-lc-rs, TLS 1.3 and 1.2, ALPN h2 then http/1.1, rustls' default session cache and
//! buffers), hyper's http2 server when ALPN says h2, else http1. The plain listener is the
//! same either way.
//!
//! With FLOOR_ADDS=headers it also adds what SPEC.md makes every authenticated request
//! carry, the way jwtgate adds it in issue 19's configuration and nothing else: seven
//! request headers (`x-request-id` cut from a per-thread buffer, `x-user-id`,
//! `x-user-scopes`, `x-auth-claims` as clones of values prepared once, as the verified-token
//! memo holds them, `x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-host`) and the
//! response's `x-request-id`. No token is read or checked. `bench/instructions.sh
//! hyper-floor-headers` counts it: the least a hyper gateway bound to SPEC.md's headers can
//! do per request (docs/BENCHMARKS.md, "s15").
//!
//! Usage: cargo run --release --example hyper_floor -- LISTEN_ADDR UPSTREAM_ADDR
//!        [TLS_ADDR CERT_PEM KEY_PEM]

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_rustls::TlsAcceptor;

type Idle = Rc<RefCell<Vec<SendRequest<Incoming>>>>;
type Tls = Option<(SocketAddr, TlsAcceptor)>;

const USAGE: &str = "usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR [TLS_ADDR CERT_PEM KEY_PEM]";

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM_ADDR");
    let tls: Tls = match (args.next(), args.next(), args.next()) {
        (Some(addr), Some(cert), Some(key)) => Some((
            addr.parse().expect("TLS_ADDR"),
            TlsAcceptor::from(tls_config(&cert, &key)),
        )),
        (None, _, _) => None,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let tls = tls.clone();
            std::thread::spawn(move || worker(listen, upstream, tls))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// jwtgate's server config (src/config/validate/mod.rs `load_tls`) without the swappable
/// certificate source and client certificates.
fn tls_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn bind(listen: SocketAddr) -> std::net::TcpListener {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&listen.into()).unwrap();
    s.listen(1024).unwrap();
    s.into()
}

fn worker(listen: SocketAddr, upstream: SocketAddr, tls: Tls) {
    let s = bind(listen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let l = tokio::net::TcpListener::from_std(s).unwrap();
        let idle: Idle = Rc::default();
        if let Some((addr, acceptor)) = tls {
            let tl = tokio::net::TcpListener::from_std(bind(addr)).unwrap();
            tokio::task::spawn_local(serve_tls(tl, acceptor, idle.clone(), upstream));
        }
        loop {
            let (c, _) = l.accept().await.unwrap();
            c.set_nodelay(true).unwrap();
            let idle = idle.clone();
            tokio::task::spawn_local(async move {
                let svc = service_fn(move |req| {
                    let idle = idle.clone();
                    async move { Ok::<_, Infallible>(forward(&idle, upstream, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
}

/// The TLS listener: h2 or HTTP/1.1 by ALPN, the same idle list of upstream connections.
async fn serve_tls(l: tokio::net::TcpListener, acceptor: TlsAcceptor, idle: Idle, up: SocketAddr) {
    loop {
        let (c, _) = l.accept().await.unwrap();
        c.set_nodelay(true).unwrap();
        let (acceptor, idle) = (acceptor.clone(), idle.clone());
        tokio::task::spawn_local(async move {
            let Ok(s) = acceptor.accept(c).await else {
                return;
            };
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            let svc = service_fn(move |req: Request<Incoming>| {
                let idle = idle.clone();
                async move { Ok::<_, Infallible>(forward(&idle, up, origin_form(req)).await) }
            });
            let io = TokioIo::new(s);
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(LocalExec)
                    .timer(TokioTimer::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(io, svc)
                    .await
            };
        });
    }
}

/// An h2 request as HTTP/1.1 for the upstream: origin-form target, `Host` from `:authority`.
fn origin_form(mut req: Request<Incoming>) -> Request<Incoming> {
    if req.version() == hyper::Version::HTTP_2 {
        *req.version_mut() = hyper::Version::HTTP_11;
        if let Some(a) = req.uri().authority() {
            let host = hyper::header::HeaderValue::from_str(a.as_str()).unwrap();
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = pq.parse().unwrap();
    }
    req
}

/// h2 streams as tasks of the worker's LocalSet (the services hold `Rc`s).
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

async fn forward(
    idle: &Idle,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Incoming> {
    let id = ADDS_HEADERS.with(|on| *on).then(|| add_headers(&mut req));
    let pooled = idle.borrow_mut().pop();
    let mut tx = match pooled {
        Some(tx) => tx,
        None => {
            let s = tokio::net::TcpStream::connect(upstream).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .unwrap();
            tokio::task::spawn_local(conn);
            tx
        }
    };
    tx.ready().await.unwrap();
    let mut resp = tx.send_request(req).await.unwrap();
    // Back at once: the upstream's bodies here are tiny and already read with the head.
    idle.borrow_mut().push(tx);
    if let Some(mut id) = id {
        // As jwtgate does: unique per response, so never indexed by HPACK on h2.
        id.set_sensitive(true);
        resp.headers_mut().insert(X_REQUEST_ID, id);
    }
    resp
}

thread_local! {
    static ADDS_HEADERS: bool = std::env::var("FLOOR_ADDS").is_ok_and(|v| v == "headers");
    /// The values a verified-token memo and a connection would hold, made once.
    static PREPARED: Prepared = Prepared::new();
    /// Request ids: a fixed prefix and a counter, cut from a 4 KiB buffer.
    static IDS: RefCell<(u64, bytes::BytesMut)> = RefCell::new((0, bytes::BytesMut::new()));
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
const X_USER_SCOPES: HeaderName = HeaderName::from_static("x-user-scopes");
const X_AUTH_CLAIMS: HeaderName = HeaderName::from_static("x-auth-claims");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

struct Prepared {
    sub: HeaderValue,
    scopes: HeaderValue,
    claims: HeaderValue,
    peer: HeaderValue,
}

impl Prepared {
    fn new() -> Prepared {
        let shared = |s: &str| {
            HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(s.as_bytes())).unwrap()
        };
        Prepared {
            sub: shared("bench"),
            scopes: shared("read write"),
            // bench/instructions.sh's rs256 token's claims, base64url (128 bytes).
            claims: shared("eyJpc3MiOiJodHRwczovL2JlbmNoLnRlc3QiLCJzdWIiOiJiZW5jaCIsImV4cCI6MTc5NjQ5Nzc4MSwianRpIjoiYmVuY2gtMSIsInNjb3BlIjoicmVhZCB3cml0ZSJ9"),
            peer: shared("127.0.0.1"),
        }
    }
}

/// SPEC.md's request headers, added as jwtgate adds them; the request id, for the response.
fn add_headers(req: &mut Request<Incoming>) -> HeaderValue {
    let id = IDS.with(|ids| {
        let (next, arena) = &mut *ids.borrow_mut();
        let mut buf = *b"0123456789abcdef-000000000000";
        for (i, b) in buf[17..].iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((*next >> (4 * (11 - i))) & 0xf) as usize];
        }
        *next += 1;
        if arena.capacity() < buf.len() {
            *arena = bytes::BytesMut::with_capacity(4096);
        }
        arena.extend_from_slice(&buf);
        HeaderValue::from_maybe_shared(arena.split().freeze()).unwrap()
    });
    let h = req.headers_mut();
    h.insert(X_REQUEST_ID, id.clone());
    PREPARED.with(|p| {
        h.insert(X_USER_ID, p.sub.clone());
        h.insert(X_USER_SCOPES, p.scopes.clone());
        h.insert(X_AUTH_CLAIMS, p.claims.clone());
        h.insert(X_FORWARDED_FOR, p.peer.clone());
    });
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = h.get(hyper::header::HOST).cloned() {
        h.insert(X_FORWARDED_HOST, host);
    }
    id
}
