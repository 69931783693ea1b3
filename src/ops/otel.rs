//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. A leaf
//! every layer may record in, like `metrics`.
//!
//! Off (the default), nothing here builds a span: every entry point reads one process-wide
//! flag first. On, a request gets a server span continuing the client's W3C `traceparent`
//! (a new trace when it is missing or invalid), and the calls it makes on the way get
//! child spans: Redis (revocation lookups and writes, refresh coordination), refresh
//! grants. JWKS and discovery fetches run in the background and are spans of their own.
//! Ended spans go to the SDK's batch processor through a bounded channel; its thread
//! exports them, so the request path never waits on an export (a full queue drops spans).
//!
//! The SDK reads the other standard variables itself: `OTEL_SERVICE_NAME` (default here
//! `jwtgate`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`, `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip`).
//! `OTEL_SDK_DISABLED=true` turns tracing off. A protocol other than `http/protobuf` is
//! refused at start.

use std::future::Future;
use std::sync::OnceLock;

use futures_util::future::Either;
use http::HeaderMap;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The tracer, once `start` found an endpoint. Unset means off.
static TRACING: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

/// Why tracing could not start (the gateway then refuses to start: an operator who set the
/// endpoint wants the traces).
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry exporter: {0}")]
pub struct OtelError(String);

/// Whether traces are exported: one atomic load.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

fn tracer() -> Option<&'static SdkTracer> {
    TRACING.get().map(|(_, t)| t)
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Start exporting when the environment asks for it; `Ok(false)` when it does not. Call
/// once, inside the Tokio runtime whose threads are to drive the export's connections
/// (not a worker's).
pub fn start() -> Result<bool, OtelError> {
    let configured =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    if !configured || disabled || TRACING.get().is_some() {
        return Ok(false);
    }
    // This build exports OTLP over HTTP/protobuf: a protocol variable asking for another
    // (grpc, http/json) is refused at start rather than ignored. The traces variable wins
    // over the general one, as the SDK reads them.
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| Some((name, std::env::var(name).ok().filter(|v| !v.is_empty())?)));
    if let Some((name, value)) = protocol {
        if value != "http/protobuf" {
            return Err(OtelError(format!(
                "{name}={value}: jwtgate exports OTLP over HTTP/protobuf only; \
                 set it to http/protobuf (or unset it) and point the endpoint at the \
                 collector's OTLP/HTTP port (4318)"
            )));
        }
    }
    // OTEL_EXPORTER_OTLP_COMPRESSION / _TRACES_COMPRESSION (gzip) are read by the exporter.
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| OtelError(e.to_string()))?;
    // The SDK's batch processor: ended spans go into a bounded queue that its own thread
    // drains 512 at a time (or every `OTEL_BSP_SCHEDULE_DELAY`). Queueing a span wakes no
    // one; the async-runtime processor woke its export task for every span.
    let exporter = OnRuntime {
        exporter,
        runtime: tokio::runtime::Handle::current(),
    };
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("jwtgate");
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "jwtgate");
    let _ = TRACING.set((provider, tracer));
    Ok(true)
}

/// Export what is queued and stop (at exit). Blocks: call from a blocking thread.
pub fn stop() {
    if let Some((p, _)) = TRACING.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry exporter did not shut down cleanly");
        }
    }
}

/// The OTLP exporter, run by the batch processor's thread inside the Tokio runtime that
/// `start` was called in: the crate's hyper client needs a runtime for its connections
/// and timeouts, and that thread has none.
#[derive(Debug)]
struct OnRuntime {
    exporter: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let mut export = Box::pin(self.exporter.export(batch));
        let runtime = self.runtime.clone();
        std::future::poll_fn(move |cx| {
            let _in_runtime = runtime.enter();
            export.as_mut().poll(cx)
        })
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}

// === the request's span ===

/// The methods HTTP defines, as span names and `http.request.method` values; any other is
/// `_OTHER` (OpenTelemetry's HTTP conventions), named `HTTP`. Static: nothing is copied per
/// request.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];
const OTHER: usize = 9;

fn method_index(m: &http::Method) -> usize {
    METHODS[..OTHER]
        .iter()
        .position(|k| *k == m.as_str())
        .unwrap_or(OTHER)
}

/// A route's (or a gateway endpoint's) span names, `GET api` ... `HTTP api`, and its name
/// for `http.route`, made once per route and kept for the life of the process, so ending a
/// request's span copies no string. Interned: a config reload with the same route names
/// adds nothing.
#[derive(Debug)]
pub struct RouteNames {
    route: &'static str,
    spans: [&'static str; 10],
}

impl RouteNames {
    pub fn new(route: &str) -> RouteNames {
        let spans = std::array::from_fn(|i| match i {
            OTHER => intern(&format!("HTTP {route}")),
            _ => intern(&format!("{} {route}", METHODS[i])),
        });
        RouteNames {
            route: intern(route),
            spans,
        }
    }

    /// The names of a gateway endpoint (`logout`, `login_callback`; `-` when nothing
    /// matched): a short table, made as endpoints are first seen.
    pub fn endpoint(name: &'static str) -> &'static RouteNames {
        static TABLE: std::sync::Mutex<Vec<(&str, &RouteNames)>> =
            std::sync::Mutex::new(Vec::new());
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = t.iter().find(|(k, _)| *k == name) {
            return n;
        }
        let n: &'static RouteNames = Box::leak(Box::new(RouteNames::new(name)));
        t.push((name, n));
        n
    }
}

/// `s` as a string that lives as long as the process, allocated once per distinct value.
fn intern(s: &str) -> &'static str {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = seen.get_or_insert_with(Default::default);
    if let Some(k) = seen.get(s) {
        return k;
    }
    let k: &'static str = Box::leak(s.into());
    seen.insert(k);
    k
}

/// Looked up on every request: a constant, not a string parsed each time.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// A request's server span: unboxed and unlocked until `finish`.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    method: usize,
}

/// `traceparent`/`tracestate` read from a request's headers. A field sent on more than one
/// line is invalid (W3C Trace Context §3.2.1, §3.3.1 joins only `tracestate`).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let mut values = self.0.get_all(key).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let v = first.to_str().ok()?;
        (key != "traceparent" || well_formed(v)).then_some(v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// W3C Trace Context §3.2.2: `version-traceid-parentid-flags` in two, 32, 16 and two
/// lower-case hex digits; a later version may append `-` and more. The SDK's parser checks
/// the values (not all-zero, version not `ff`) but takes shorter ids and a `+` sign, so the
/// shape is checked here first.
fn well_formed(v: &str) -> bool {
    let b = v.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() >= 55
        && hex(0..2)
        && b[2] == b'-'
        && hex(3..35)
        && b[35] == b'-'
        && hex(36..52)
        && b[52] == b'-'
        && hex(53..55)
        && (b.len() == 55 || (b[55] == b'-' && &b[..2] != b"00"))
}

/// Attributes a server span ends with: the three it starts with, then `http.route` and
/// `http.response.status_code` (one allocation, sized once).
const SERVER_ATTRIBUTES: usize = 5;

impl RequestSpan {
    /// Start the server span for a request: a child of the client's `traceparent` when it
    /// is valid, else the root of a new trace. `None` when tracing is off.
    pub fn start(
        front: &'static str,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<RequestSpan> {
        let tracer = tracer()?;
        let parent = if headers.contains_key(&TRACEPARENT) {
            TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers))
        } else {
            Context::new()
        };
        let m = method_index(method);
        let mut attributes = Vec::with_capacity(SERVER_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("http.request.method", METHODS[m]),
            KeyValue::new("url.path", path.to_owned()),
            KeyValue::new("jwtgate.front", front),
        ]);
        let span = tracer
            .span_builder(if m == OTHER { "HTTP" } else { METHODS[m] })
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Some(RequestSpan { span, method: m })
    }

    /// The span's ids as the parent of the spans started inside it (`within`): made only
    /// for a path that can start some (`App::traces_calls`).
    pub fn context(&self) -> Context {
        Context::new().with_remote_span_context(self.span.span_context().clone())
    }

    /// The trace this request belongs to (the access log's `trace_id`).
    pub fn trace_id(&self) -> TraceId {
        self.span.span_context().trace_id()
    }

    /// The gateway's span: the parent the upstream is told about.
    pub fn span_context(&self) -> &SpanContext {
        self.span.span_context()
    }

    /// The response head is ready: name the span after the route (`GET api`), record the
    /// status (5xx is an error, as for any server span) and end it. Nothing waits: the
    /// span goes to the batch processor's queue.
    pub fn finish(mut self, names: &RouteNames, status: u16) {
        let span = &mut self.span;
        span.update_name(names.spans[self.method]);
        span.set_attribute(KeyValue::new("http.route", names.route));
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// Run `f` with the request's span (`RequestSpan::context`) as the current context, so the
/// spans started inside it (Redis calls, refresh grants) are its children. Without one,
/// `f` runs as it is. A wrapper polled in place, not another await.
pub fn within<F: Future>(
    cx: Option<Context>,
    f: F,
) -> Either<opentelemetry::context::WithContext<F>, F> {
    match cx {
        Some(cx) => Either::Left(f.with_context(cx)),
        None => Either::Right(f),
    }
}

// === spans of the calls a request makes ===

/// A span around one outgoing call: a child of the current request's span, or a root of
/// its own outside one (background fetches, admin writes). Ended when dropped. Nothing is
/// built when tracing is off; boxed, it adds one pointer to the future holding it.
pub struct Span(Option<Box<opentelemetry_sdk::trace::Span>>);

impl Span {
    /// A client span named `name` (`redis revocation.lookup`, `jwks fetch`).
    pub fn client(name: &'static str) -> Span {
        let Some(t) = tracer() else {
            return Span(None);
        };
        let s = t
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .start_with_context(t, &Context::current());
        Span(Some(Box::new(s)))
    }

    /// A Redis call: `db.system.name = redis` and the operation.
    pub fn redis(name: &'static str, operation: &'static str) -> Span {
        let mut s = Span::client(name);
        s.set("db.system.name", "redis");
        s.set("db.operation.name", operation);
        s
    }

    /// No span (a call that is not worth one, such as the in-memory store's).
    pub fn none() -> Span {
        Span(None)
    }

    /// Whether the span records (tracing on): guard attributes that cost a copy.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// The call failed: the span's status says why.
    pub fn fail(&mut self, why: impl std::fmt::Display) {
        if let Some(s) = &mut self.0 {
            s.set_status(Status::error(why.to_string()));
        }
    }
}

/// Await `f` in `span`; an error becomes the span's status. Nothing more than `f` itself
/// when the span is off.
pub async fn traced<T, E: std::fmt::Display>(
    mut span: Span,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let r = f.await;
    if let Err(e) = &r {
        span.fail(e);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_shape() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(well_formed(ok));
        assert!(well_formed(&format!("01{}-future", &ok[2..])));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-abc-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
