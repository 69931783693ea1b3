//! Connection lifetime through real sockets: silent and half-open connections are closed
//! (first request, request heads, idle keep-alive, h2 without streams), on every listener,
//! and `[server] max_connections` refuses what is over the cap while the rest is served.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the gateway to close a connection before calling it a failure.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

fn open_all(up: &EchoUpstream) -> String {
    route("all", "/", &[&up.url()], "auth = \"none\"")
}

/// Read (and discard) until the peer closes: `Some(bytes read)` on EOF or a reset,
/// `None` when `limit` passes with the connection still open.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    r.ok().map(|()| got)
}

/// One HTTP/1.1 request on a kept-alive connection; the status of its answer.
async fn get_on(s: &mut TcpStream, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(CLOSE_WITHIN, s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("answer without content-length");
        if got.len() >= end + 4 + len {
            return text[9..12].parse().unwrap();
        }
    }
}

fn assert_closed(r: Option<Vec<u8>>, what: &str, started: Instant) {
    assert!(
        r.is_some(),
        "{what}: still open after {:?}",
        started.elapsed()
    );
}

// === h2 frames, by hand ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS_EMPTY: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A HEADERS frame on stream 1 for `GET http://a/` (HPACK static table entries only).
fn headers_frame(flags: u8) -> Vec<u8> {
    // :method GET, :scheme http, :path /, :authority "a" (literal, indexed name 1)
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    let mut f = vec![0, 0, block.len() as u8, 0x1, flags, 0, 0, 0, 1];
    f.extend_from_slice(&block);
    f
}

/// (type, flags, stream id) of every whole frame in `bytes`.
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let sid = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push((rest[3], rest[4], sid));
        rest = &rest[(9 + len).min(rest.len())..];
    }
    out
}

async fn h2c(gw: &TestGateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&SETTINGS_EMPTY).await.unwrap();
    s
}

// === the first request is bounded by header_timeout_ms ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_plain_connection_is_closed_after_header_timeout() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(&open_all(&up), "header_timeout_ms = 300").await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "silent plain connection",
        t,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connection_is_closed_after_header_timeout() {
    use rustls_pki_types::pem::PemObject;
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(&open_all(&up), "header_timeout_ms = 300").await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&gw.cert_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(gw.https).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("handshake");
        let t = Instant::now();
        let alpn = String::from_utf8_lossy(alpn).into_owned();
        assert_closed(
            read_until_closed(&mut s, CLOSE_WITHIN).await,
            &format!("silent TLS connection ({alpn})"),
            t,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_admin_connection_is_closed_after_header_timeout() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(&open_all(&up), "header_timeout_ms = 300").await;
    let mut s = TcpStream::connect(gw.admin).await.unwrap();
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "silent admin connection",
        t,
    );
    // A slow admin head is cut too.
    let mut s = TcpStream::connect(gw.admin).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "unfinished admin head",
        t,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connection_that_opens_no_stream_is_closed() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(&open_all(&up), "header_timeout_ms = 300").await;
    let mut s = h2c(&gw).await;
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "h2 connection without a stream",
        t,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_h2_header_block_is_closed() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(&open_all(&up), "header_timeout_ms = 300").await;
    let mut s = h2c(&gw).await;
    // HEADERS without END_HEADERS: the block is never finished by a CONTINUATION.
    s.write_all(&headers_frame(END_STREAM)).await.unwrap();
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "unfinished h2 header block",
        t,
    );
    assert_eq!(
        up.count(),
        0,
        "the unfinished request must not reach the upstream"
    );
}

// === idle keep-alive: [server] keepalive_timeout_ms ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http11_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = EchoUpstream::start().await;
    // The head timeout is longer than the wait below: only the keep-alive key can close it.
    let gw = TestGateway::start_with(
        &open_all(&up),
        "header_timeout_ms = 10000\nkeepalive_timeout_ms = 300",
    )
    .await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    assert_eq!(get_on(&mut s, "/a").await, 200);
    assert_eq!(get_on(&mut s, "/b").await, 200);
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "idle HTTP/1.1 keep-alive connection",
        t,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_on_a_kept_alive_connection_is_cut_by_header_timeout() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        &open_all(&up),
        "header_timeout_ms = 300\nkeepalive_timeout_ms = 60000",
    )
    .await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    assert_eq!(get_on(&mut s, "/a").await, 200);
    s.write_all(b"GET /b HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    assert_closed(
        read_until_closed(&mut s, CLOSE_WITHIN).await,
        "second head never finished",
        t,
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_outlives_the_header_timeout() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        &open_all(&up),
        "header_timeout_ms = 200\nkeepalive_timeout_ms = 60000",
    )
    .await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    assert_eq!(get_on(&mut s, "/a").await, 200);
    // Idle for several head timeouts (the time passing is what is tested): an idle
    // connection is governed by keepalive_timeout_ms, not by the head timeout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get_on(&mut s, "/b").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_is_closed_after_keepalive_timeout() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        &open_all(&up),
        "header_timeout_ms = 10000\nkeepalive_timeout_ms = 300",
    )
    .await;
    let mut s = h2c(&gw).await;
    s.write_all(&headers_frame(END_STREAM | END_HEADERS))
        .await
        .unwrap();
    let t = Instant::now();
    let got = read_until_closed(&mut s, CLOSE_WITHIN).await;
    assert_closed(got.clone(), "idle h2 connection after one request", t);
    let frames = frames(&got.unwrap_or_default());
    assert!(
        frames.iter().any(|&(ty, _, sid)| ty == 0x1 && sid == 1),
        "the request was answered before the close: {frames:?}"
    );
    assert!(
        frames.iter().any(|&(ty, _, _)| ty == 0x7),
        "an idle h2 connection is closed with GOAWAY: {frames:?}"
    );
    assert_eq!(up.count(), 1);
}

// === [server] max_connections ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_once_and_counted() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(&open_all(&up), "max_connections = 2").await;
    let mut first = TcpStream::connect(gw.http).await.unwrap();
    let mut second = TcpStream::connect(gw.http).await.unwrap();
    // Answered: both are accepted and hold their slots.
    assert_eq!(get_on(&mut first, "/a").await, 200);
    assert_eq!(get_on(&mut second, "/a").await, 200);
    assert!(
        gw.has_metric("jwtgate_connections_active{listener=\"public\"} 2")
            .await
    );
    let mut third = TcpStream::connect(gw.http).await.unwrap();
    let t = Instant::now();
    // Far sooner than the 10 s header timeout: the gateway does not queue it.
    assert_closed(
        read_until_closed(&mut third, Duration::from_secs(2)).await,
        "third connection",
        t,
    );
    assert!(
        gw.has_metric("jwtgate_connections_refused_total{listener=\"public\"} 1")
            .await
    );
    // The first two are still served (the metrics above came through the admin listener,
    // which has a cap of its own).
    assert_eq!(get_on(&mut first, "/b").await, 200);
    assert_eq!(get_on(&mut second, "/b").await, 200);
    drop(second);
    // A slot freed is a slot usable again.
    let freed = eventually(CLOSE_WITHIN, || async {
        gw.has_metric("jwtgate_connections_active{listener=\"public\"} 1")
            .await
    })
    .await;
    assert!(
        freed.is_some(),
        "the closed connection's slot was not freed"
    );
    let mut fourth = TcpStream::connect(gw.http).await.unwrap();
    assert_eq!(get_on(&mut fourth, "/c").await, 200);
    assert_eq!(get_on(&mut first, "/d").await, 200);
}
