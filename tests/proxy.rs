//! Gateway core through real sockets: routing, forwarding, streaming, header hygiene,
//! limits and hostile input, upgrades, over plain TCP, TLS + HTTP/1.1 and TLS + h2.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bin::{access_line, BinGateway};
use common::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open(name: &str, prefix: &str, ups: &[&str], extra: &str) -> String {
    route(name, prefix, ups, &format!("auth = \"none\"\n{extra}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_table_longest_prefix_and_hosts() {
    let a = EchoUpstream::named("a").await;
    let b = EchoUpstream::named("b").await;
    let c = EchoUpstream::named("c").await;
    let h = EchoUpstream::named("h").await;
    let cfg = [
        open("root", "/", &[&a.url()], ""),
        open("api", "/api", &[&b.url()], ""),
        open("orders", "/api/orders", &[&c.url()], ""),
        open("hosted", "/api", &[&h.url()], "host = \"api.example.com\""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    let cl = gw.client_plain();
    for (path, host, want) in [
        ("/api/orders", None, "c"),
        ("/api/orders/7", None, "c"),
        ("/api/ordersX", None, "b"),
        ("/api", None, "b"),
        ("/other", None, "a"),
        ("/api/x", Some("api.example.com"), "h"),
        ("/api/x", Some("API.example.com:8080"), "h"),
        ("/api/x", Some("other.example.com"), "b"),
    ] {
        let headers: Vec<(&str, &str)> = host.map(|h| vec![("host", h)]).unwrap_or_default();
        let r = cl.get(&gw.http_url(path), &headers).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-upstream"), Some(want), "{path} host {host:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_json() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("api", "/api", &[&up.url()], "")).await;
    let r = gw.client_plain().get(&gw.http_url("/nope"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_upstream_base_path() {
    let up = EchoUpstream::start().await;
    let cfg = [
        open("s", "/svc", &[&up.url()], "strip_prefix = true"),
        open(
            "b",
            "/base",
            &[&format!("{}/v2", up.url())],
            "strip_prefix = true",
        ),
        open("k", "/keep", &[&up.url()], ""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    let cl = gw.client_plain();
    cl.get(&gw.http_url("/svc/items/1?x=1"), &[]).await;
    assert_eq!(up.last().uri, "/items/1?x=1");
    cl.get(&gw.http_url("/svc"), &[]).await;
    assert_eq!(up.last().uri, "/");
    cl.get(&gw.http_url("/base/items"), &[]).await;
    assert_eq!(up.last().uri, "/v2/items");
    cl.get(&gw.http_url("/keep/items"), &[]).await;
    assert_eq!(up.last().uri, "/keep/items");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_upstreams() {
    let a = EchoUpstream::named("a").await;
    let b = EchoUpstream::named("b").await;
    let gw = TestGateway::start(&open("rr", "/", &[&a.url(), &b.url()], "")).await;
    let cl = gw.client_plain();
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(
            cl.get(&gw.http_url("/x"), &[])
                .await
                .header("x-upstream")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_idempotent_requests_fail_over() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let live = EchoUpstream::named("live").await;
    let cfg = [
        open("dead", "/dead", &[&dead], ""),
        open("mixed", "/mixed", &[&dead, &live.url()], ""),
    ]
    .concat();
    let gw = TestGateway::start(&cfg).await;
    let cl = gw.client_plain();
    let r = cl.get(&gw.http_url("/dead/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    // Every GET lands on the live upstream, whichever the round robin tried first.
    for _ in 0..4 {
        let r = cl.get(&gw.http_url("/mixed/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("live"));
    }
    // A POST with a body is not replayed: some fail with 502.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            cl.send(
                Method::POST,
                &gw.http_url("/mixed/x"),
                &[("content-type", "text/plain")],
                jwtgate::body::full("data"),
            )
            .await
            .status,
        );
    }
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_and_gateway_keeps_serving() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("slow", "/", &[&up.url()], "timeout_ms = 200")).await;
    let cl = gw.client_plain();
    let r = cl.get(&gw.http_url("/slow/2000"), &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert_eq!(cl.get(&gw.http_url("/fast"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabytes_stream_both_ways_on_every_protocol() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    const N: usize = 5 * 1024 * 1024;
    for (cl, url) in [
        (gw.client_plain(), gw.http_url("")),
        (gw.client_tls(), gw.https_url("")),
        (gw.client_h2(), gw.https_url("")),
    ] {
        let r = cl
            .send(
                Method::POST,
                &format!("{url}/echo-body"),
                &[],
                streamed_body(N),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), N);
        assert!(r.body.iter().all(|&b| b == b'y'));
        let r = cl.get(&format!("{url}/big/{N}"), &[]).await;
        assert_eq!(r.body.len(), N);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_speaks_h2_and_http11() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let r = gw.client_h2().get(&gw.https_url("/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    let r = gw.client_tls().get(&gw.https_url("/x"), &[]).await;
    assert_eq!(r.version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_and_forwarded_headers_set() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let cl = gw.client_plain();
    let r = cl
        .get(
            &gw.http_url("/x"),
            &[
                ("connection", "keep-alive, x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic abc"),
                ("te", "trailers"),
                ("x-forwarded-for", "203.0.113.9"),
                // Without trusted proxies, a client cannot choose these.
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-request-id", "trace-123"),
                ("host", "shop.example:8080"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    let h = up.last().headers;
    for gone in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example:8080");
    assert_eq!(h["x-request-id"], "trace-123");
    // A hostile request id is replaced by a generated one.
    cl.get(&gw.http_url("/x"), &[("x-request-id", "<script>")])
        .await;
    let id = up.last().headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(id != "<script>" && !id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_load_balancer_its_forwarded_proto_and_host_are_kept() {
    // A load balancer terminating TLS in front of the gateway says how the client came in.
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        &open("all", "/", &[&up.url()], ""),
        "trusted_proxy_hops = 1",
    )
    .await;
    let cl = gw.client_plain();
    let lb = [
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "shop.example"),
        ("host", "10.0.0.5:8080"),
    ];
    assert_eq!(cl.get(&gw.http_url("/x"), &lb).await.status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "shop.example");
    // Not a scheme: replaced; absent host: the request's own.
    let r = cl
        .get(
            &gw.http_url("/x"),
            &[
                ("x-forwarded-proto", "javascript"),
                ("host", "10.0.0.5:8080"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "10.0.0.5:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_removed_on_open_route() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    gw.client_plain()
        .get(
            &gw.http_url("/x"),
            &[
                ("x-user-id", "admin"),
                ("x-user-scopes", "root"),
                ("x-auth-claims", "e30"),
                ("x-auth-role", "admin"),
                ("x-jwtgate-assertion", "x"),
                ("x-app", "kept"),
            ],
        )
        .await;
    let h = up.last().headers;
    for gone in [
        "x-user-id",
        "x-user-scopes",
        "x-auth-claims",
        "x-auth-role",
        "x-jwtgate-assertion",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(h["x-app"], "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_others_are_served() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        &open("all", "/", &[&up.url()], ""),
        "header_timeout_ms = 300",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // Meanwhile a normal client is served.
    assert_eq!(
        gw.client_plain().get(&gw.http_url("/x"), &[]).await.status,
        200
    );
    // The slow client never finishes its head: the gateway closes the connection.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if s.write_all(b"X-a: b\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut tmp = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(10), s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow client was not disconnected");
    assert_eq!(
        up.count(),
        1,
        "the incomplete request must not reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(
        &open("all", "/", &[&up.url()], ""),
        "max_header_bytes = 8192",
    )
    .await;
    let big = "a".repeat(20_000);
    let req = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let resp = raw_exchange(gw.http, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(up.count(), 0);
    assert_eq!(
        gw.client_plain().get(&gw.http_url("/x"), &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() {
    let up = EchoUpstream::start().await;
    let gw =
        TestGateway::start_with(&open("all", "/", &[&up.url()], ""), "max_body_bytes = 1000").await;
    let cl = gw.client_plain();
    let r = cl
        .send(
            Method::POST,
            &gw.http_url("/echo-body"),
            &[("content-length", "5000")],
            jwtgate::body::full(vec![b'z'; 5000]),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(up.count(), 0);
    // Chunked (no length announced) is cut off when it passes the limit.
    let r = cl
        .send(
            Method::POST,
            &gw.http_url("/echo-body"),
            &[],
            streamed_body(200_000),
        )
        .await;
    assert!(
        r.status == 413 || r.body.len() < 200_000,
        "status {}",
        r.status
    );
    let r = cl
        .send(
            Method::POST,
            &gw.http_url("/echo-body"),
            &[],
            jwtgate::body::full(vec![b'z'; 500]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 500);
}

/// hyper's HTTP/1 parser resolves Content-Length + Transfer-Encoding itself (RFC 9112
/// §6.3: chunked wins, the length is dropped, the connection is closed after the response),
/// before the gateway can see both headers. What a user relies on is that nothing can be
/// smuggled: the hidden second request is never parsed or forwarded, and the upstream
/// never sees an ambiguous message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    for smuggle in [
        &b"POST /echo-body HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        &b"POST /echo-body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
    ] {
        let resp = raw_exchange(gw.http, smuggle, Duration::from_secs(3)).await;
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "only one response, then close: {resp}");
        let seen = up.last();
        assert_ne!(seen.uri, "/smuggled");
        assert!(!(seen.headers.contains_key("content-length") && seen.headers.contains_key("transfer-encoding")));
    }
    assert!(up.count() <= 2);
    assert_eq!(
        gw.client_plain().get(&gw.http_url("/x"), &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_refused() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let req = b"POST /echo-body HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 10\r\n\r\nabcd";
    let resp = raw_exchange(gw.http, req, Duration::from_secs(3)).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(up.last().headers["upgrade"], "websocket");
    // A masked WebSocket text frame "hello", echoed back byte for byte.
    let frame = [
        0x81u8,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    s.write_all(&frame).await.unwrap();
    let mut got = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_completes_in_flight_request() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let cl = gw.client_plain();
    let url = gw.http_url("/slow/800");
    let inflight = tokio::spawn(async move { cl.get(&url, &[]).await });
    // Wait until the upstream has the request (readiness, not a guess).
    for _ in 0..200 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1);
    let http = gw.http;
    gw.shutdown().await;
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow done");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "listener still accepting after drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_reused() {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let clients = [
        (gw.client_plain(), gw.http_url("")),
        (gw.client_tls(), gw.https_url("")),
        (gw.client_h2(), gw.https_url("")),
    ];
    let mut sent = 0;
    for (cl, base) in &clients {
        for i in 0..5 {
            let r = cl.get(&format!("{base}/small/{i}"), &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["uri"], format!("/small/{i}"));
            // A streamed body read to the end hands its connection back too.
            let r = cl.get(&format!("{base}/big/200000"), &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 200_000);
            // HEAD: no body at all, the connection is free at once.
            let r = cl
                .send(
                    Method::HEAD,
                    &format!("{base}/head"),
                    &[],
                    jwtgate::body::empty(),
                )
                .await;
            assert_eq!(r.status, 200);
            sent += 3;
        }
    }
    assert_eq!(up.count(), sent);
    // One request at a time: each of the two workers needs one upstream connection at most.
    assert!(
        up.connections() <= 2,
        "{} upstream connections for {sent} sequential requests",
        up.connections()
    );
}

const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Read one request head (the tests' requests have no body); false when the peer is gone.
async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// What a `one_answer_upstream` does after answering a connection's first request.
#[derive(Clone, Copy)]
enum AfterFirst {
    /// Close the connection shortly after, as a server with a short keep-alive timeout does.
    CloseIdle,
    /// Read the next request, count it and close unanswered: that timeout firing just as a
    /// request comes in.
    DropNext,
    /// Keep the connection open without another byte (draining what comes) until the
    /// gateway drops it: an upstream gone silent.
    Hold,
}

/// A raw upstream writing `answer` (perhaps a partial one, perhaps nothing) to the first
/// request on each connection. Returns its URL, the connections accepted and the requests
/// received.
async fn one_answer_upstream(
    answer: &'static [u8],
    after: AfterFirst,
) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (accepted, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, r) = (accepted.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                r.fetch_add(1, Ordering::SeqCst);
                if s.write_all(answer).await.is_err() {
                    return;
                }
                match after {
                    AfterFirst::CloseIdle => tokio::time::sleep(Duration::from_millis(20)).await,
                    AfterFirst::DropNext => {
                        if read_head(&mut s).await {
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    AfterFirst::Hold => {
                        let mut sink = [0u8; 1024];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                }
            });
        }
    });
    (url, accepted, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_request_on_a_connection_closed_under_it_is_sent_again() {
    let (url, accepted, received) = one_answer_upstream(OK_RESPONSE, AfterFirst::DropNext).await;
    let gw = TestGateway::start(&open("all", "/", &[&url], "")).await;
    let cl = gw.client_plain();
    assert_eq!(cl.get(&gw.http_url("/a"), &[]).await.status, 200);
    // The pooled connection sits idle past the pool's 1 s tick: what the race needs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = cl.get(&gw.http_url("/b"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "sent again on a new connection"
    );
    assert_eq!(received.load(Ordering::SeqCst), 3);
    // A POST may have been acted on: it is never sent twice; the client gets 502.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = cl
        .send(
            Method::POST,
            &gw.http_url("/c"),
            &[],
            jwtgate::body::empty(),
        )
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(received.load(Ordering::SeqCst), 4);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // And the gateway keeps serving.
    assert_eq!(cl.get(&gw.http_url("/d"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_idle_connections_is_not_an_error() {
    let (url, accepted, _) = one_answer_upstream(OK_RESPONSE, AfterFirst::CloseIdle).await;
    let gw = TestGateway::start(&open("all", "/", &[&url], "")).await;
    let cl = gw.client_plain();
    for i in 1..=5 {
        let r = cl.get(&gw.http_url("/x"), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), i);
        // Idle time, during which the upstream closes the pooled connection.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_from_upstream_ca_is_trusted_for_upstreams_and_jwks() {
    // An internal service and an internal IdP behind https with a private CA: the inner
    // gateway serves both with its self-signed certificate, which the outer one is told
    // to trust through `server.upstream_ca`.
    let up = EchoUpstream::start().await;
    let idp = MockIdp::start(vec![Keys::rsa_jwk("k1", "rsa")]).await;
    let inner = TestGateway::start(
        &[
            open(
                "idp",
                "/.well-known",
                &[&format!("http://{}", idp.addr)],
                "",
            ),
            open("app", "/", &[&up.url()], ""),
        ]
        .concat(),
    )
    .await;
    let base = format!("https://127.0.0.1:{}", inner.https.port());
    let ca = inner.dir.path().join("localhost.crt");
    let gw = TestGateway::start_with(
        &[
            format!("[[issuers]]\nname = \"internal\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_url = \"{base}/.well-known/jwks.json\"\n\n"),
            route("api", "/", &[&base], "auth = \"required\"\n"),
        ]
        .concat(),
        &format!("upstream_ca = \"{}\"", ca.display()),
    )
    .await;
    let t = token("RS256", Some("k1"), serde_json::json!({}));
    let r = gw
        .client_plain()
        .get(
            &gw.http_url("/x"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    // The inner gateway saw TLS from the outer one (and, as on every route, removed the
    // identity headers the outer one set).
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    assert!(idp.fetches() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_untrusted_certificate_is_refused() {
    // The inner gateway serves https with a self-signed certificate; the outer one trusts
    // the webpki roots only, so it must refuse to talk to it.
    let up = EchoUpstream::start().await;
    let inner = TestGateway::start(&open("all", "/", &[&up.url()], "")).await;
    let target = format!("https://127.0.0.1:{}", inner.https.port());
    let gw = TestGateway::start(&open("tls", "/", &[&target], "")).await;
    let r = gw.client_plain().get(&gw.http_url("/secret"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert_eq!(
        up.count(),
        0,
        "request forwarded over an unverified TLS session"
    );
    // The gateway keeps serving.
    assert_eq!(
        inner
            .client_plain()
            .get(&inner.http_url("/ok"), &[])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_bodies_are_cut_after_stream_idle_timeout() {
    let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc";
    let (mid_body, _, _) = one_answer_upstream(partial, AfterFirst::Hold).await;
    let (waits_for_body, _, _) = one_answer_upstream(b"", AfterFirst::Hold).await;
    let up = EchoUpstream::start().await;
    // Route timeouts shorter than the idle timeout: they count from the end of the request
    // body, so a stalled or slow upload is never reported as an upstream timeout.
    let cfg = [
        open("mid", "/mid", &[&mid_body], ""),
        open("wait", "/wait", &[&waits_for_body], "timeout_ms = 100"),
        open("echo", "/echo", &[&up.url()], ""),
        open("count", "/count-body", &[&up.url()], "timeout_ms = 100"),
    ]
    .concat();
    let gw = TestGateway::start_with(&cfg, "stream_idle_timeout_ms = 300").await;
    // The upstream goes silent mid-body: the client's body fails instead of hanging.
    for (cl, url) in [
        (gw.client_plain(), gw.http_url("/mid/x")),
        (gw.client_h2(), gw.https_url("/mid/x")),
    ] {
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), cl.try_get(&url, &[]))
            .await
            .expect("the gateway kept a silent upstream body open");
        assert!(r.is_err(), "a cut body must not look complete: {r:?}");
        // Cut by the idle timer (300 ms after the last byte), not refused up front.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "failed after {:?}: {r:?}",
            started.elapsed()
        );
    }
    // A client that stops sending its body: 408, and the connection is closed.
    let head = b"POST /wait/x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc";
    let started = std::time::Instant::now();
    let resp = raw_exchange(gw.http, head, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("request_timeout"), "{resp}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the connection stayed open after the 408"
    );
    // A slow but steady upload (500 ms against a 100 ms route timeout) goes through.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"POST /count-body HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"x").await.is_err() {
            break;
        }
    }
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp))
        .await
        .expect("no answer to the slow upload")
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("\r\n\r\n5"), "{resp}");
    // Everything else is still served.
    assert_eq!(
        gw.client_plain()
            .get(&gw.http_url("/echo/x"), &[])
            .await
            .status,
        200
    );
}

/// Every answer the gateway gives itself carries the request's `x-request-id` (the
/// client's when valid, else its own), and the access-log line names the same id: refused
/// before routing (413), with no route (404), by the route's policy (401), and when the
/// upstream is down (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_carry_and_log_the_request_id() {
    let up = EchoUpstream::start().await;
    let [closed] = free_ports::<1>();
    let issuer = format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
        fixture("rsa.pub.pem").display()
    );
    let body = [
        issuer,
        route("api", "/api", &[&up.url()], ""),
        open(
            "down",
            "/down",
            &[&format!("http://127.0.0.1:{closed}")],
            "",
        ),
    ]
    .concat();
    let gw = BinGateway::start(
        "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
        "max_body_bytes = 16",
        &body,
    );
    let cl = Client::plain();
    let url = |p: &str| format!("http://{}{p}", gw.http);
    let mut seen = Vec::new();
    for (path, method, sent_id, want) in [
        ("/api/kept", Method::GET, Some("client-id.7"), 401),
        ("/api/replaced", Method::GET, Some("not a valid id"), 401),
        ("/api/large", Method::POST, None, 413),
        ("/nowhere", Method::GET, None, 404),
        ("/down/x", Method::GET, None, 502),
    ] {
        let headers: Vec<(&str, &str)> = sent_id.map(|i| ("x-request-id", i)).into_iter().collect();
        let r = cl
            .send(
                method,
                &url(path),
                &headers,
                match want {
                    413 => jwtgate::body::full("x".repeat(100)),
                    _ => jwtgate::body::empty(),
                },
            )
            .await;
        assert_eq!(r.status, want, "{path}");
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{path}: no x-request-id on the {want}"))
            .to_string();
        match sent_id {
            Some("client-id.7") => assert_eq!(id, "client-id.7"),
            Some(bad) => assert_ne!(id, bad),
            None => assert!(id.len() > 4, "{id}"),
        }
        seen.push((path, id));
    }
    assert_eq!(up.count(), 0);
    let logs = gw.stop().await;
    for (path, id) in &seen {
        assert_eq!(access_line(&logs, path)["request_id"], *id, "{path}");
    }
    // The 502 names the upstream it tried; the refusals name none.
    let down = access_line(&logs, "/down/x");
    assert_eq!(down["upstream_host"], format!("127.0.0.1:{closed}"));
    assert_eq!(access_line(&logs, "/api/kept")["upstream_host"], "-");
    // Ids are unique per request.
    let mut ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), seen.len());
}

/// The access-log line of a proxied request names the upstream it went to (`host:port`),
/// the body bytes received from the client and sent back, and the client's user agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_upstream_body_bytes_and_user_agent() {
    let up = EchoUpstream::start().await;
    let gw = BinGateway::open_route(&up, "");
    let cl = Client::plain();
    let r = cl
        .send(
            Method::POST,
            &format!("http://{}/echo-body/up", gw.http),
            &[("user-agent", "probe/1.0 (fields test)")],
            streamed_body(3000),
        )
        .await;
    assert_eq!((r.status, r.body.len()), (200, 3000));
    let r = cl.get(&format!("http://{}/big/70000", gw.http), &[]).await;
    assert_eq!((r.status, r.body.len()), (200, 70000));
    let logs = gw.stop().await;
    let echo = access_line(&logs, "/echo-body/up");
    assert_eq!(echo["upstream_host"], up.addr.to_string());
    assert_eq!(echo["bytes_received"], 3000);
    assert_eq!(echo["bytes_sent"], 3000);
    assert_eq!(echo["user_agent"], "probe/1.0 (fields test)");
    assert_eq!(echo["status"], 200);
    let big = access_line(&logs, "/big/70000");
    assert_eq!(big["bytes_received"], 0);
    assert_eq!(big["bytes_sent"], 70000);
    assert_eq!(big["upstream_host"], up.addr.to_string());
}
