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
    /// Export requests received.
    posts: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

struct ReceiverState {
    tx: mpsc::UnboundedSender<Exported>,
    posts: Arc<AtomicUsize>,
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
    let state = Arc::new(ReceiverState {
        tx,
        posts: posts.clone(),
    });
    let task = serve_http(l, state, |req, st: Arc<ReceiverState>| async move {
        assert_eq!(req.uri().path(), "/v1/traces");
        assert_eq!(
            req.headers()["content-type"],
            "application/x-protobuf",
            "OTLP/HTTP protobuf"
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
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
        posts,
        _task: task,
    }
}

impl Receiver {
    /// The next exported server span of `trace_id`, waiting for the export.
    async fn server_span(&self, trace_id: &str) -> Exported {
        let mut rx = self.spans.lock().await;
        let wait = async {
            loop {
                let s = rx.recv().await.expect("receiver channel closed");
                if s.trace_id == trace_id && s.kind == 2 {
                    return s;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), wait)
            .await
            .unwrap_or_else(|_| panic!("no server span of trace {trace_id} was exported"))
    }
}

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
