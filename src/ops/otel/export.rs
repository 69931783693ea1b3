//! The OTLP/HTTP exporter: a batch of ended spans encoded as one protobuf
//! `ExportTraceServiceRequest`, written straight from the SDK's `SpanData` into one buffer,
//! and POSTed to the collector with the gateway's own HTTP client.
//!
//! `opentelemetry-otlp` first converts every span into owned protobuf structs (a `String` or
//! `Vec` for each id, name, attribute key and value: about 16 allocations a span), then
//! encodes those and frees them; measured, that was most of what tracing cost per request
//! (docs/BENCHMARKS.md). Here nothing is allocated per span: the wire format is written as
//! the spans are read. The field numbers are those of opentelemetry-proto's
//! `trace/v1/trace.proto`, `common/v1/common.proto` and `resource/v1/resource.proto`; a
//! unit test decodes the output with `opentelemetry-proto` and compares it with what its
//! own conversion makes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderName, HeaderValue, Request, Uri};
use http_body_util::BodyExt as _;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::OtelError;
use crate::net::{body, Client};

/// Where and how to export: read from the standard `OTEL_EXPORTER_OTLP_*` variables.
pub struct Exporter {
    client: Client,
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    /// The encoded `Resource` message (set by the SDK when the provider is built).
    resource: Vec<u8>,
    resource_schema: String,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may hold credentials: names only.
        f.debug_struct("Exporter")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self.headers.iter().map(|h| &h.0).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Exporter {
    /// From the environment, as the OpenTelemetry specification names it:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL) or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (`/v1/traces` appended); `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` (`k=v,k2=v2`, values
    /// percent-decoded); `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` (ms, default 10000).
    pub fn from_env() -> Result<Exporter, OtelError> {
        let endpoint = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => e,
            None => {
                let base = var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
        };
        let endpoint: Uri = endpoint
            .trim()
            .parse()
            .map_err(|e| OtelError(format!("endpoint {endpoint:?}: {e}")))?;
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) || endpoint.host().is_none() {
            return Err(OtelError(format!(
                "endpoint {endpoint}: an absolute http:// or https:// URL"
            )));
        }
        let mut headers = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(v) = var(name) {
                for (k, v) in parse_headers(&v).map_err(|e| OtelError(format!("{name}: {e}")))? {
                    headers.retain(|(n, _): &(HeaderName, HeaderValue)| *n != k);
                    headers.push((k, v));
                }
            }
        }
        let timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        {
            Some(ms) => Duration::from_millis(
                ms.trim()
                    .parse()
                    .map_err(|_| OtelError(format!("timeout {ms:?}: milliseconds")))?,
            ),
            None => Duration::from_secs(10),
        };
        Ok(Exporter {
            client: Client::new(2),
            endpoint,
            headers,
            timeout,
            resource: Vec::new(),
            resource_schema: String::new(),
        })
    }

    /// The batch as an `ExportTraceServiceRequest`.
    fn encode(&self, batch: &[SpanData]) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(64 + batch.len() * 320));
        // resource_spans
        e.message(1, |e| {
            e.0.extend_from_slice(&self.resource);
            // One ScopeSpans per instrumentation scope (the gateway has one tracer), in the
            // order they first appear.
            let mut scopes: Vec<&InstrumentationScope> = Vec::with_capacity(1);
            for s in batch {
                if !scopes.contains(&&s.instrumentation_scope) {
                    scopes.push(&s.instrumentation_scope);
                }
            }
            for scope in scopes {
                e.message(2, |e| {
                    e.message(1, |e| instrumentation_scope(e, scope));
                    for s in batch.iter().filter(|s| s.instrumentation_scope == *scope) {
                        e.message(2, |e| span(e, s));
                    }
                    e.string(3, scope.schema_url().unwrap_or(""));
                });
            }
            e.string(3, &self.resource_schema);
        });
        e.0
    }

    async fn post(&self, encoded: Vec<u8>) -> Result<(), String> {
        let mut req = Request::post(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(body::full(encoded))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read to the end, so the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let encoded = self.encode(&batch);
        drop(batch);
        match tokio::time::timeout(self.timeout, self.post(encoded)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OTelSdkError::InternalFailure(format!(
                "OTLP export to {}: {e}",
                self.endpoint
            ))),
            Err(_) => Err(OTelSdkError::Timeout(self.timeout)),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        let mut e = Enc(Vec::new());
        // ResourceSpans.resource
        e.message(1, |e| {
            for (k, v) in resource.iter() {
                e.message(1, |e| {
                    e.string(1, k.as_str());
                    e.message(2, |e| any_value(e, v));
                });
            }
        });
        self.resource = e.0;
        self.resource_schema = resource.schema_url().unwrap_or("").to_owned();
    }
}

/// `k=v,k2=v2` (W3C Baggage's form, as the OpenTelemetry specification asks), values
/// percent-decoded.
fn parse_headers(v: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not key=value", k_only(pair)))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", k.trim()))?;
        let value = HeaderValue::from_bytes(&percent_decode(v.trim()))
            .map_err(|_| format!("the value of {name} is not a header value"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// The key of a malformed pair, for the error (never the value: it may be a secret).
fn k_only(pair: &str) -> &str {
    pair.split(['=', ':']).next().unwrap_or("")
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

// === protobuf, written in place ===

const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

/// A protobuf writer. Proto3: fields at their default value are left out, except inside a
/// `oneof` (an attribute's value), where the choice itself is the information.
struct Enc(Vec<u8>);

impl Enc {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    fn len_delimited(&mut self, field: u32, b: &[u8]) {
        self.tag(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.len_delimited(field, b);
        }
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, VARINT);
            self.varint(v);
        }
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, I64);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        if v != 0 {
            self.tag(field, I32);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// An embedded message whose fields `f` writes: one length byte is reserved, and the
    /// body moved along when its length needs more (a message of 128 bytes or more).
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Enc)) {
        self.tag(field, LEN);
        let at = self.0.len();
        self.0.push(0);
        f(self);
        let len = self.0.len() - at - 1;
        let mut v = [0u8; 10];
        let mut n = 0;
        let mut x = len as u64;
        while x >= 0x80 {
            v[n] = x as u8 | 0x80;
            x >>= 7;
            n += 1;
        }
        v[n] = x as u8;
        n += 1;
        if n > 1 {
            self.0.extend_from_slice(&v[1..n]);
            self.0.copy_within(at + 1..at + 1 + len, at + n);
        }
        self.0[at..at + n].copy_from_slice(&v[..n]);
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `Span.flags`: the W3C trace flags, and whether the parent (or link) is remote.
fn flags(is_remote: bool, sc: &SpanContext) -> u32 {
    // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    let mut f = u32::from(sc.trace_flags().to_u8()) | 0x100;
    if is_remote {
        f |= 0x200;
    }
    f
}

fn span(e: &mut Enc, s: &SpanData) {
    let sc = &s.span_context;
    e.bytes(1, &sc.trace_id().to_bytes());
    e.bytes(2, &sc.span_id().to_bytes());
    e.string(3, &sc.trace_state().header());
    if s.parent_span_id != SpanId::INVALID {
        e.bytes(4, &s.parent_span_id.to_bytes());
    }
    e.string(5, &s.name);
    e.uint(
        6,
        match s.span_kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        },
    );
    e.fixed64(7, nanos(s.start_time));
    e.fixed64(8, nanos(s.end_time));
    attributes(e, 9, &s.attributes);
    e.uint(10, u64::from(s.dropped_attributes_count));
    for ev in s.events.iter() {
        e.message(11, |e| {
            e.fixed64(1, nanos(ev.timestamp));
            e.string(2, &ev.name);
            attributes(e, 3, &ev.attributes);
            e.uint(4, u64::from(ev.dropped_attributes_count));
        });
    }
    e.uint(12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        e.message(13, |e| {
            let lc = &l.span_context;
            e.bytes(1, &lc.trace_id().to_bytes());
            e.bytes(2, &lc.span_id().to_bytes());
            e.string(3, &lc.trace_state().header());
            attributes(e, 4, &l.attributes);
            e.uint(5, u64::from(l.dropped_attributes_count));
            e.fixed32(6, flags(lc.is_remote(), lc));
        });
    }
    e.uint(14, u64::from(s.links.dropped_count));
    e.message(15, |e| match &s.status {
        Status::Unset => {}
        Status::Ok => e.uint(3, 1),
        Status::Error { description } => {
            e.string(2, description);
            e.uint(3, 2);
        }
    });
    e.fixed32(16, flags(s.parent_span_is_remote, sc));
}

fn instrumentation_scope(e: &mut Enc, scope: &InstrumentationScope) {
    e.string(1, scope.name());
    e.string(2, scope.version().unwrap_or(""));
    for kv in scope.attributes() {
        e.message(3, |e| key_value(e, kv));
    }
}

fn attributes(e: &mut Enc, field: u32, kvs: &[KeyValue]) {
    for kv in kvs {
        e.message(field, |e| key_value(e, kv));
    }
}

fn key_value(e: &mut Enc, kv: &KeyValue) {
    e.string(1, kv.key.as_str());
    e.message(2, |e| any_value(e, &kv.value));
}

/// `AnyValue`: a oneof, so even `false`, `0` and `""` are written.
fn any_value(e: &mut Enc, v: &Value) {
    match v {
        Value::String(s) => e.len_delimited(1, s.as_str().as_bytes()),
        Value::Bool(b) => {
            e.tag(2, VARINT);
            e.varint(u64::from(*b));
        }
        Value::I64(i) => {
            e.tag(3, VARINT);
            e.varint(*i as u64);
        }
        Value::F64(f) => {
            e.tag(4, I64);
            e.0.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Array(a) => e.message(5, |e| match a {
            Array::Bool(vs) => vs
                .iter()
                .for_each(|x| e.message(1, |e| any_value(e, &Value::Bool(*x)))),
            Array::I64(vs) => vs
                .iter()
                .for_each(|x| e.message(1, |e| any_value(e, &Value::I64(*x)))),
            Array::F64(vs) => vs
                .iter()
                .for_each(|x| e.message(1, |e| any_value(e, &Value::F64(*x)))),
            Array::String(vs) => vs
                .iter()
                .for_each(|x| e.message(1, |e| e.len_delimited(1, x.as_str().as_bytes()))),
            // A kind of array this SDK version does not have: left empty.
            _ => {}
        }),
        // A kind of value this SDK version does not have: an empty AnyValue.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use prost::Message as _;
    use std::borrow::Cow;

    fn spans() -> Vec<SpanData> {
        let sc = |t: u128, s: u64, remote| {
            SpanContext::new(
                TraceId::from(t),
                SpanId::from(s),
                TraceFlags::SAMPLED,
                remote,
                TraceState::from_key_value([("vendor", "abc")]).unwrap(),
            )
        };
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut events = opentelemetry_sdk::trace::SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "retry",
            t0,
            vec![KeyValue::new("n", 2)],
            1,
        ));
        events.dropped_count = 3;
        let mut links = opentelemetry_sdk::trace::SpanLinks::default();
        links.links.push(opentelemetry::trace::Link::new(
            sc(7, 8, true),
            vec![KeyValue::new("why", "follows")],
            0,
        ));
        let server = SpanData {
            span_context: sc(
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x00f067aa0ba902b7,
                false,
            ),
            parent_span_id: SpanId::from(0x1122334455667788),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("GET api"),
            start_time: t0,
            end_time: t0 + Duration::from_micros(250),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", "/x".repeat(100)),
                KeyValue::new("http.response.status_code", 200),
                KeyValue::new("neg", -5),
                KeyValue::new("ok", false),
                KeyValue::new("empty", ""),
                KeyValue::new("ratio", 0.25),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "b".into()])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
            ],
            dropped_attributes_count: 1,
            events,
            links,
            status: Status::error("upstream down"),
            instrumentation_scope: InstrumentationScope::builder("jwtgate")
                .with_version("1.0")
                .build(),
        };
        let mut client = server.clone();
        client.span_context = sc(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x99, false);
        client.parent_span_id = SpanId::from(0x00f067aa0ba902b7);
        client.parent_span_is_remote = false;
        client.span_kind = SpanKind::Client;
        client.name = Cow::Owned("revocation lookup".into());
        client.status = Status::Ok;
        client.events = Default::default();
        client.links = Default::default();
        let mut root = client.clone();
        root.parent_span_id = SpanId::INVALID;
        root.status = Status::Unset;
        root.instrumentation_scope = InstrumentationScope::builder("other").build();
        vec![server, client, root]
    }

    #[test]
    fn the_encoding_is_what_opentelemetry_proto_makes() {
        let resource = Resource::builder()
            .with_service_name("jwtgate")
            .with_attribute(KeyValue::new("deployment.environment.name", "test"))
            .build();
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let mut ex = Exporter::from_env().unwrap();
        ex.set_resource(&resource);
        let ours = ExportTraceServiceRequest::decode(&ex.encode(&spans())[..]).unwrap();
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        // Same content; resource attributes come from a hash map, in any order.
        let sorted = |mut r: ExportTraceServiceRequest| {
            for rs in &mut r.resource_spans {
                if let Some(res) = &mut rs.resource {
                    res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            r
        };
        assert_eq!(sorted(ours), sorted(theirs));
    }

    #[test]
    fn long_messages_get_longer_length_prefixes() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let mut e = Enc(vec![]);
            e.message(1, |e| e.0.extend(std::iter::repeat_n(7u8, n)));
            let mut want = Enc(vec![]);
            want.len_delimited(1, &vec![7u8; n]);
            assert_eq!(e.0, want.0, "{n}");
        }
    }

    #[test]
    fn headers_follow_the_specification() {
        let h = parse_headers("api-key=s%3Dcret , x-tenant=a b,").unwrap();
        assert_eq!(h[0].0, "api-key");
        assert_eq!(h[0].1, "s=cret");
        assert_eq!(h[1].1, "a b");
        let e = parse_headers("authorization:Bearer secret").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(parse_headers("bad name=1").is_err());
    }
}
