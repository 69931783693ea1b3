//! OpenTelemetry: the gateway binary, started with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing
//! at an OTLP/HTTP receiver in this test, exports its request spans (protobuf
//! `ExportTraceServiceRequest`), continues the client's W3C trace context and gives the
//! upstream a child `traceparent`. Without the variable nothing is exported and the
//! client's headers pass untouched.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bin::{access_line, BinGateway};
use common::*;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::sync::{mpsc, Mutex};

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// `opentelemetry.proto.trace.v1.Span.SpanKind`: 2 is SERVER.
    kind: i32,
    attrs: HashMap<String, String>,
    /// The resource's `service.name`.
    service: String,
}

struct Receiver {
    url: String,
    /// Every span of every export, in arrival order: the readiness signal the tests wait on.
    spans: Mutex<mpsc::UnboundedReceiver<Exported>>,
    /// The spans received so far (a test may look for several, in any order).
    seen: Mutex<Vec<Exported>>,
    /// Export requests received.
    posts: Arc<AtomicUsize>,
    /// ... of them sent with `Content-Encoding: gzip`.
    gzipped: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

struct ReceiverState {
    tx: mpsc::UnboundedSender<Exported>,
    posts: Arc<AtomicUsize>,
    gzipped: Arc<AtomicUsize>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// A small OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, answered 200 with an
/// empty `ExportTraceServiceResponse`.
async fn receiver() -> Receiver {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let posts = Arc::new(AtomicUsize::new(0));
    let gzipped = Arc::new(AtomicUsize::new(0));
    let state = Arc::new(ReceiverState {
        tx,
        posts: posts.clone(),
        gzipped: gzipped.clone(),
    });
    let task = serve_http(l, state, |req, st: Arc<ReceiverState>| async move {
        assert_eq!(req.uri().path(), "/v1/traces");
        assert_eq!(
            req.headers()["content-type"],
            "application/x-protobuf",
            "OTLP/HTTP protobuf"
        );
        let gzip = match req.headers().get("content-encoding") {
            None => false,
            Some(v) if v == "gzip" => true,
            Some(v) => panic!("unexpected content-encoding {v:?}"),
        };
        let mut body = req.into_body().collect().await.unwrap().to_bytes();
        if gzip {
            use std::io::Read as _;
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .expect("a gzip body");
            body = plain.into();
            st.gzipped.fetch_add(1, Ordering::SeqCst);
        }
        let export = ExportTraceServiceRequest::decode(body).expect("an ExportTraceServiceRequest");
        st.posts.fetch_add(1, Ordering::SeqCst);
        for rs in &export.resource_spans {
            let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes));
            let service = resource
                .and_then(|r| r.get("service.name").cloned())
                .unwrap_or_default();
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let _ = st.tx.send(Exported {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    attrs: attrs(&s.attributes),
                    service: service.clone(),
                });
            }
        }
        let mut r = Response::new(jwtgate::body::empty());
        *r.status_mut() = StatusCode::OK;
        r.headers_mut()
            .insert("content-type", "application/x-protobuf".parse().unwrap());
        r
    });
    Receiver {
        url,
        spans: Mutex::new(rx),
        seen: Mutex::new(Vec::new()),
        posts,
        gzipped,
        _task: task,
    }
}

impl Receiver {
    /// The first exported span for which `want` holds, waiting for the export.
    async fn span(&self, what: &str, want: impl Fn(&Exported) -> bool) -> Exported {
        let mut rx = self.spans.lock().await;
        let mut seen = self.seen.lock().await;
        if let Some(s) = seen.iter().find(|s| want(s)) {
            return s.clone();
        }
        let wait = async {
            loop {
                let s = rx.recv().await.expect("receiver channel closed");
                seen.push(s.clone());
                if want(&s) {
                    return s;
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(15), wait).await {
            Ok(s) => s,
            Err(_) => panic!("no {what} was exported; got {:#?}", *seen),
        }
    }

    /// The next exported server span of `trace_id`, waiting for the export.
    async fn server_span(&self, trace_id: &str) -> Exported {
        self.span(&format!("server span of trace {trace_id}"), |s| {
            s.trace_id == trace_id && s.kind == SERVER
        })
        .await
    }

    /// The client span `name` whose parent is `parent` (the request's span).
    async fn child(&self, name: &str, parent: &Exported) -> Exported {
        let what = format!("span {name:?} under {}", parent.span_id);
        let s = self
            .span(&what, |s| s.name == name && s.trace_id == parent.trace_id)
            .await;
        assert_eq!(
            s.parent, parent.span_id,
            "{name}: the request's span is its parent"
        );
        assert_eq!(s.kind, CLIENT, "{name}: a client span");
        s
    }
}

/// `opentelemetry.proto.trace.v1.Span.SpanKind`.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// The binary with one open route to `up`, exporting to `rx` when given.
fn gateway(up: &EchoUpstream, rx: Option<&Receiver>) -> BinGateway {
    let listen = "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"";
    let env: Vec<(&str, &str)> = match rx {
        // A short batch delay: spans leave within 50 ms of ending.
        Some(r) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", r.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
        None => Vec::new(),
    };
    BinGateway::listening_env(up, listen, "", &env)
}

/// `traceparent` as (trace id, parent id, flags), checked for the version-00 shape.
fn parse_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00", "{v}");
    assert_eq!(parts[1].len(), 32, "{v}");
    assert_eq!(parts[2].len(), 16, "{v}");
    assert_ne!(parts[1], "0".repeat(32), "{v}");
    assert_ne!(parts[2], "0".repeat(16), "{v}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trace_is_continued_exported_and_passed_upstream_as_a_child() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, Some(&rx));
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = Client::plain()
        .get(
            &format!("http://{}/traced", gw.http),
            &[("traceparent", &tp), ("tracestate", "vendor=abc,other=1")],
        )
        .await;
    assert_eq!(r.status, 200);

    // The upstream: same trace, the gateway's span as parent, the client's tracestate.
    let seen = up.last().headers;
    let (trace, parent, flags) = parse_traceparent(seen["traceparent"].to_str().unwrap());
    assert_eq!(trace, TRACE);
    assert_ne!(
        parent, PARENT,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(seen["tracestate"], "vendor=abc,other=1");

    // The exported server span: a child of the client's span, parent of the upstream's.
    let span = rx.server_span(TRACE).await;
    assert_eq!(span.parent, PARENT);
    assert_eq!(span.span_id, parent);
    assert_eq!(span.name, "GET r");
    assert_eq!(span.attrs["http.route"], "r");
    assert_eq!(span.attrs["http.request.method"], "GET");
    assert_eq!(span.attrs["http.response.status_code"], "200");
    assert_eq!(span.attrs["url.path"], "/traced");
    assert_eq!(span.service, "jwtgate");

    // The access-log line names the trace.
    gw.signal("-TERM");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    assert_eq!(access_line(&logs, "/traced")["trace_id"], TRACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_is_not_passed_on_and_a_new_trace_starts() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, Some(&rx));
    let cl = Client::plain();
    let invalid = [
        // An all-zero trace id, an upper-case one, a version-00 header with extra fields,
        // a short trace id, and no trace context at all.
        format!("00-{}-{PARENT}-01", "0".repeat(32)),
        format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{PARENT}-01-extra"),
        format!("00-4bf92f-{PARENT}-01"),
        "garbage".to_string(),
    ];
    for (i, tp) in invalid.iter().enumerate() {
        let path = format!("/bad/{i}");
        let r = cl
            .get(
                &format!("http://{}{path}", gw.http),
                &[("traceparent", tp), ("tracestate", "vendor=abc")],
            )
            .await;
        assert_eq!(r.status, 200);
        let seen = up.last().headers;
        let sent = seen["traceparent"].to_str().unwrap();
        assert_ne!(sent, tp, "an invalid traceparent went upstream");
        let (trace, parent, _) = parse_traceparent(sent);
        assert_ne!(trace, TRACE, "{tp}: a new trace");
        assert!(
            !seen.contains_key("tracestate"),
            "{tp}: the tracestate of a dropped traceparent went upstream"
        );
        // The new trace's root span is the gateway's, and it was exported.
        let span = rx.server_span(&trace).await;
        assert_eq!(span.span_id, parent);
        assert_eq!(span.parent, "", "{tp}: a root span");
        assert_eq!(span.attrs["url.path"], path);
    }
    // No header at all: a new trace too.
    assert_eq!(
        cl.get(&format!("http://{}/none", gw.http), &[])
            .await
            .status,
        200
    );
    let (trace, _, _) = parse_traceparent(up.last().headers["traceparent"].to_str().unwrap());
    rx.server_span(&trace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_nothing_is_exported_and_trace_headers_pass_untouched() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, None);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = Client::plain()
        .get(
            &format!("http://{}/plain", gw.http),
            &[("traceparent", &tp), ("tracestate", "vendor=abc")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last().headers;
    assert_eq!(seen["traceparent"], tp.as_str());
    assert_eq!(seen["tracestate"], "vendor=abc");
    let r = Client::plain()
        .get(&format!("http://{}/none", gw.http), &[])
        .await;
    assert_eq!(r.status, 200);
    assert!(!up.last().headers.contains_key("traceparent"));
    // A gateway that traces exports what is queued on exit (see the test above), so after
    // this one has exited, nothing more can come.
    gw.signal("-TERM");
    let (code, logs) = gw.exit().await;
    assert_eq!(code, Some(0));
    assert_eq!(rx.posts.load(Ordering::SeqCst), 0, "spans were exported");
    assert!(access_line(&logs, "/plain").get("trace_id").is_none());
}

/// The binary on `body` (issuers, stores, routes), exporting to `rx`; `env` adds variables.
fn traced_gateway(
    rx: &Receiver,
    listen_extra: &str,
    body: &str,
    env: &[(&str, &str)],
) -> BinGateway {
    let listen = format!("http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{listen_extra}");
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    all.extend_from_slice(env);
    BinGateway::start_env(&listen, "", body, &all)
}

/// The fixtures' RS256 issuer (`https://idp.test`, audience `api`).
fn issuer() -> String {
    format!(
        "[[issuers]]\nname = \"s\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\nleeway_s = 5\nkeys = [{{ kid = \"r1\", alg = \"RS256\", pem = \"{}\" }}]\n\n",
        fixture("rsa.pub.pem").display()
    )
}

/// An access token of the fixtures' issuer, expiring in `exp_in` seconds.
fn access(exp_in: i64) -> String {
    token(
        "RS256",
        Some("r1"),
        serde_json::json!({"exp": jwtgate::auth::now_unix() + exp_in}),
    )
}

/// `GET <path>` on the proxy listener as a client in trace `TRACE`, with one more header.
async fn get_in_trace(gw: &BinGateway, path: &str, header: (&str, &str)) -> Resp {
    let tp = format!("00-{TRACE}-{PARENT}-01");
    Client::plain()
        .get(
            &format!("http://{}{path}", gw.http),
            &[("traceparent", &tp), header],
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_lookup_in_redis_is_a_child_of_the_request_span() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let redis = RedisServer::start().await;
    let body = format!(
        "{}[revocation]\nstore = \"redis\"\nredis_url = \"{}\"\n\n{}",
        issuer(),
        redis.url(),
        route("api", "/api", &[&up.url()], "")
    );
    let gw = traced_gateway(&rx, "", &body, &[]);
    let auth = format!("Bearer {}", access(600));
    let r = get_in_trace(&gw, "/api/x", ("authorization", &auth)).await;
    assert_eq!(r.status, 200);
    let request = rx.server_span(TRACE).await;
    assert_eq!(request.name, "GET api");
    let lookup = rx.child("revocation lookup", &request).await;
    assert_eq!(lookup.attrs["db.system.name"], "redis");
    assert_eq!(lookup.attrs["db.operation.name"], "MGET");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_grant_is_a_child_of_the_request_span() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let idp = MockIdp::start(vec![]).await;
    let body = format!(
        "{}[refresh]\ntoken_endpoint = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{CLIENT_SECRET_ENV}\"\nrefresh_before_s = 60\ntimeout_ms = 2000\n\n{}",
        issuer(),
        idp.token_url(),
        route("api", "/api", &[&up.url()], "")
    );
    let gw = traced_gateway(&rx, "", &body, &[(CLIENT_SECRET_ENV, CLIENT_SECRET)]);
    // An access token 30 s from expiry, inside `refresh_before_s`: renewed on the way.
    let cookie = format!(
        "access_token={}; refresh_token={}",
        access(30),
        idp.issue_refresh_token("alice")
    );
    let r = get_in_trace(&gw, "/api/x", ("cookie", &cookie)).await;
    assert_eq!(r.status, 200);
    assert_eq!(idp.token_calls(), 1, "the token was refreshed");
    let request = rx.server_span(TRACE).await;
    rx.child("refresh grant", &request).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_fetch_is_a_root_span_of_its_own() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let idp = MockIdp::start(vec![Keys::rsa_jwk("r1", "rsa")]).await;
    let body = format!(
        "[[issuers]]\nname = \"remote\"\nissuer = \"https://idp.test\"\naudiences = [\"api\"]\njwks_url = \"{}\"\n\n{}",
        idp.jwks_url(),
        route("api", "/api", &[&up.url()], "")
    );
    let gw = traced_gateway(&rx, "", &body, &[]);
    let fetch = rx.span("jwks fetch span", |s| s.name == "jwks fetch").await;
    assert!(idp.fetches() >= 1);
    assert_eq!(fetch.parent, "", "a background fetch starts its own trace");
    assert_eq!(fetch.kind, CLIENT);
    assert_eq!(fetch.attrs["jwtgate.issuer"], "remote");
    assert_eq!(fetch.attrs["url.full"], idp.jwks_url());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_sent_twice_starts_a_new_trace() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let gw = gateway(&up, Some(&rx));
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let other = format!("00-{TRACE}-{}-01", "1".repeat(16));
    for (i, lines) in [[tp.as_str(), tp.as_str()], [tp.as_str(), other.as_str()]]
        .iter()
        .enumerate()
    {
        let path = format!("/twice/{i}");
        let r = Client::plain()
            .get(
                &format!("http://{}{path}", gw.http),
                &[("traceparent", lines[0]), ("traceparent", lines[1])],
            )
            .await;
        assert_eq!(r.status, 200);
        let seen = up.last().headers;
        assert_eq!(seen.get_all("traceparent").iter().count(), 1);
        let (trace, parent, _) = parse_traceparent(seen["traceparent"].to_str().unwrap());
        assert_ne!(trace, TRACE, "{lines:?}: a new trace");
        let span = rx.server_span(&trace).await;
        assert_eq!(span.span_id, parent);
        assert_eq!(span.parent, "", "{lines:?}: a root span");
        assert_eq!(span.attrs["url.path"], path);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowing_authz_answer_carries_the_gateway_span_as_traceparent() {
    let rx = receiver().await;
    let body = format!(
        "{}[authz]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{}",
        issuer(),
        route("api", "/api", &["http://127.0.0.1:1"], "")
    );
    let gw = traced_gateway(&rx, "authz = \"127.0.0.1:0\"", &body, &[]);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let auth = format!("Bearer {}", access(600));
    let check = |auth: &str| {
        let url = format!("http://{}/", gw.authz);
        let (tp, auth) = (tp.clone(), auth.to_string());
        async move {
            Client::plain()
                .get(
                    &url,
                    &[
                        ("x-forwarded-method", "GET"),
                        ("x-forwarded-uri", "/api/x"),
                        ("traceparent", &tp),
                        ("tracestate", "vendor=abc"),
                        ("authorization", &auth),
                    ],
                )
                .await
        }
    };
    let r = check(&auth).await;
    assert_eq!(r.status, 200);
    let (trace, parent, flags) = parse_traceparent(r.headers["traceparent"].to_str().unwrap());
    assert_eq!(trace, TRACE, "the client's trace");
    assert_eq!(flags, "01");
    assert_eq!(r.headers["tracestate"], "vendor=abc");
    let span = rx.server_span(TRACE).await;
    assert_eq!(
        span.span_id, parent,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(span.parent, PARENT);
    assert_eq!(span.attrs["jwtgate.front"], "authz");
    assert_eq!(span.name, "GET api");
    // A refusal carries no trace context: there is no upstream request to join.
    let r = check("Bearer not-a-token").await;
    assert_eq!(r.status, 401);
    assert!(!r.headers.contains_key("traceparent"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_compression_gzip_sends_gzipped_exports() {
    let rx = receiver().await;
    let up = EchoUpstream::start().await;
    let gw = BinGateway::listening_env(
        &up,
        "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = Client::plain()
        .get(
            &format!("http://{}/zipped", gw.http),
            &[("traceparent", &tp)],
        )
        .await;
    assert_eq!(r.status, 200);
    let span = rx.server_span(TRACE).await;
    assert_eq!(span.attrs["url.path"], "/zipped");
    let (posts, gzipped) = (
        rx.posts.load(Ordering::SeqCst),
        rx.gzipped.load(Ordering::SeqCst),
    );
    assert!(posts > 0);
    assert_eq!(gzipped, posts, "every export is gzipped");
}

/// OTLP over gRPC (or JSON) is not in this build: asking for it stops the start with a
/// message that says what to set, instead of exporting HTTP/protobuf to a gRPC port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_protocol_other_than_http_protobuf_is_refused_at_start() {
    let up = EchoUpstream::start().await;
    let dir = TempDir::new();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.url()
        ),
    )
    .unwrap();
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env(var, value)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("the gateway did not stop")
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: started");
        assert!(
            err.contains(&format!("{var}={value}")) && err.contains("http/protobuf"),
            "{var}={value}: {err}"
        );
    }
}
