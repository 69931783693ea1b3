//! The end of every exchange, whatever the front door: a refusal becomes its response,
//! the route's CORS headers and the request id go on, the request is counted, and the
//! access-log line is written once the response body has been sent (nothing is copied for
//! it unless it will be written). With OpenTelemetry on (`ops::otel`), the exchange is
//! also the request's server span.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, Uri, Version};

use crate::app::App;
use crate::error::GatewayError;
use crate::identity::auth::Verified;
use crate::net::body::{self, Body, Tally};
use crate::ops::otel::{RequestSpan, RouteNames};
use crate::ops::textline::{self, key, TextLine};
use crate::pipeline::headers::X_REQUEST_ID;
use crate::pipeline::Notes;
use crate::policy::cors;
use opentelemetry::trace::TraceId;
use tracing::Level;

/// One request's bookkeeping from its head to its response.
pub struct Exchange {
    front: &'static str,
    logging: bool,
    started: Instant,
    version: Version,
    method: Option<Method>,
    /// The request's URI as received (shares its bytes; the line writes its path).
    uri: Option<Uri>,
    user_agent: Option<HeaderValue>,
    /// The server span, with tracing on. Boxed: the SDK's span is large, and every
    /// request's future holds this field.
    span: Option<Box<RequestSpan>>,
}

impl Exchange {
    /// Start the clock, and the server span when tracing is on (continuing the client's
    /// `traceparent`). `front` names the listener kind in the log (`proxy`, `authz`).
    pub fn begin<B>(front: &'static str, req: &Request<B>) -> Self {
        let logging = tracing::enabled!(target: "jwtgate::access", tracing::Level::INFO);
        let span = match crate::ops::otel::enabled() {
            true => RequestSpan::start(front, req.method(), req.uri().path(), req.headers())
                .map(Box::new),
            false => None,
        };
        Exchange {
            span,
            front,
            logging,
            started: Instant::now(),
            version: req.version(),
            method: logging.then(|| req.method().clone()),
            uri: logging.then(|| req.uri().clone()),
            user_agent: logging
                .then(|| req.headers().get(header::USER_AGENT).cloned())
                .flatten(),
        }
    }
    /// The request the line is about, when it is not the one received (a forward-auth
    /// check describes another).
    pub fn describe(&mut self, method: &Method, uri: &Uri) {
        if self.logging {
            self.method = Some(method.clone());
            self.uri = Some(uri.clone());
        }
    }

    /// The request's server span (tracing on): the path runs in it (`otel::within`), and
    /// the upstream gets its trace context (`headers::set_trace_context`).
    pub fn span(&self) -> Option<&RequestSpan> {
        self.span.as_deref()
    }

    /// The context the request path runs in (`otel::within`): the server span's, when
    /// tracing is on and `app`'s path can start spans of its own (`App::traces_calls`);
    /// setting it on every poll is not free, so no other path gets one.
    pub fn calls_context(&self, app: &App) -> Option<opentelemetry::Context> {
        self.span
            .as_deref()
            .filter(|_| app.traces_calls())
            .map(RequestSpan::context)
    }

    /// Empty notes for this exchange's request path to fill.
    pub fn notes<'a>(&self) -> Notes<'a> {
        Notes {
            logging: self.logging,
            ..Notes::default()
        }
    }

    /// The response the client gets, counted and logged.
    pub fn finish(
        self,
        app: &App,
        mut notes: Notes<'_>,
        outcome: Result<Response<Body>, GatewayError>,
    ) -> Response<Body> {
        let mut resp = match outcome {
            Ok(r) => r,
            Err(e) => {
                if self.logging {
                    notes.error = Some(match &e {
                        // Clients see only "invalid dpop proof"; the log says which check.
                        GatewayError::InvalidDpopProof(p) => format!("{e}: {p}"),
                        _ => e.to_string(),
                    });
                }
                app.metrics.refused(&e, notes.route_index);
                // Framing we could not trust, or a body left half-read: never reuse the
                // connection.
                let close = matches!(e, GatewayError::BadRequest(_) | GatewayError::BodyTimeout)
                    && self.version < Version::HTTP_2;
                let mut r = e.into_response();
                if close {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
        };
        // The route's CORS headers go on every answer, the gateway's own errors included.
        if let Some(c) = notes.cors {
            cors::apply(c, notes.origin.as_ref(), resp.headers_mut());
        }
        if let Some(id) = &notes.request_id {
            // Unique per request: HPACK must not put it in the h2 connection's table, where
            // every new id would evict others and lengthen the encoder's search.
            let mut id = id.clone();
            id.set_sensitive(true);
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        app.metrics.request(
            notes.route_index,
            resp.status().as_u16(),
            self.started.elapsed(),
        );
        if !self.logging && self.span.is_none() {
            return resp;
        }
        let route = notes.route_index.map(|i| &app.router.routes()[i]);
        let endpoint = notes.gateway_endpoint.unwrap_or("-");
        let trace_id = self.span.as_deref().map(RequestSpan::trace_id);
        if let Some(s) = self.span {
            let names = match route {
                Some(r) => r.trace_names(),
                None => RouteNames::endpoint(endpoint),
            };
            (*s).finish(names, resp.status().as_u16());
        }
        let route = route.map(|r| &r.config.name);
        if !self.logging {
            return resp;
        }
        let line = AccessLine {
            front: self.front,
            method: self.method,
            uri: self.uri,
            route: route.cloned(),
            endpoint,
            client: notes.client,
            status: resp.status().as_u16(),
            started: self.started,
            request_id: notes.request_id,
            caller: notes.caller,
            error: notes.error,
            upstream_host: notes.upstream.map(|o| o.host_port.clone()),
            bytes_received: notes.bytes_received,
            user_agent: self.user_agent,
            trace_id,
        };
        resp.map(|b| body::logged(b, line))
    }
}

/// One access-log line: the fields as plain data, written when the response body has
/// been sent (or dropped: a client that left mid-way), so the duration and the byte counts
/// cover the whole exchange, as in nginx's and Envoy's access logs.
struct AccessLine {
    front: &'static str,
    method: Option<Method>,
    uri: Option<Uri>,
    /// The route's name, shared with the config (none: the gateway answered itself).
    route: Option<Arc<str>>,
    /// The gateway's own endpoint that answered (`logout`), or `-`.
    endpoint: &'static str,
    client: Option<IpAddr>,
    status: u16,
    started: Instant,
    request_id: Option<HeaderValue>,
    /// The verified caller, whose `sub` the line names.
    caller: Option<Arc<Verified>>,
    error: Option<String>,
    /// `host:port` of the upstream the request went to (the last one tried).
    upstream_host: Option<Arc<str>>,
    /// Request body bytes read from the client (none: the gateway read no body).
    bytes_received: Option<Tally>,
    user_agent: Option<HeaderValue>,
    /// The request's trace (tracing on).
    trace_id: Option<TraceId>,
}

/// A header value as text, for the log.
fn text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().and_then(|v| v.to_str().ok())
}

/// The client's address as `IpAddr`'s `Display` writes it (the log has no width or
/// precision for it), an IPv4 address's numbers written by `itoa`: `Ipv4Addr`'s own
/// `Display` goes through `core::fmt` for each number, ~950 instructions a line (issue 19).
struct ClientIp(IpAddr);

impl ClientIp {
    /// The text into `w`: an IPv4 address's numbers by `itoa`, an IPv6 address by its own
    /// `Display`. For the text line (a `String`) and `Display` alike.
    fn write_to<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        let IpAddr::V4(v4) = self.0 else {
            return write!(w, "{}", self.0);
        };
        let [a, b, c, d] = v4.octets();
        let mut n = itoa::Buffer::new();
        w.write_str(n.format(a))?;
        for o in [b, c, d] {
            w.write_char('.')?;
            w.write_str(n.format(o))?;
        }
        Ok(())
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl body::OnSent for AccessLine {
    fn sent(&mut self, bytes_sent: u64) {
        let line = Fields {
            front: self.front,
            method: self.method.as_ref().map_or("-", Method::as_str),
            path: self.uri.as_ref().map_or("", Uri::path),
            route: self.route.as_deref().unwrap_or(self.endpoint),
            client: self.client,
            status: self.status,
            duration_us: self.started.elapsed().as_micros() as u64,
            request_id: text(&self.request_id).unwrap_or("-"),
            sub: self.caller.as_ref().map_or("-", |v| v.sub.as_str()),
            error: self.error.as_deref().unwrap_or(""),
            upstream_host: self.upstream_host.as_deref().unwrap_or("-"),
            bytes_received: self
                .bytes_received
                .as_ref()
                .map_or(0, |t| t.load(Ordering::Relaxed)),
            bytes_sent,
            user_agent: text(&self.user_agent).unwrap_or("-"),
            trace_id: self.trace_id,
        };
        // The filter was asked when the exchange began (`Exchange::begin`): a line begun
        // is written, also when `POST /log-level` turned the access log off meanwhile.
        if !textline::write(&Level::INFO, ACCESS, |l| line.text(l)) {
            line.event();
        }
    }
}

/// The access log's target.
const ACCESS: &str = "jwtgate::access";

/// One access-log line's values, written one of two ways with the same text.
struct Fields<'a> {
    front: &'a str,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    client: Option<IpAddr>,
    status: u16,
    duration_us: u64,
    request_id: &'a str,
    sub: &'a str,
    error: &'a str,
    upstream_host: &'a str,
    bytes_received: u64,
    bytes_sent: u64,
    user_agent: &'a str,
    trace_id: Option<TraceId>,
}

impl Fields<'_> {
    /// The line as a `tracing` event: the JSON log, colours, or no text sink installed.
    fn event(&self) {
        tracing::info!(
            target: ACCESS,
            front = self.front,
            method = self.method,
            path = self.path,
            route = self.route,
            client = self.client.map(|ip| tracing::field::display(ClientIp(ip))),
            status = self.status,
            duration_us = self.duration_us,
            request_id = self.request_id,
            sub = self.sub,
            error = self.error,
            upstream_host = self.upstream_host,
            bytes_received = self.bytes_received,
            bytes_sent = self.bytes_sent,
            user_agent = self.user_agent,
            trace_id = self.trace_id.map(tracing::field::display),
        );
    }

    /// The line as the text log writes `event` (fields in the same order; an absent
    /// optional field is left out, as `tracing` leaves out a `None`).
    fn text(&self, l: &mut TextLine) {
        l.plain(key!("front"), self.front);
        l.plain(key!("method"), self.method);
        l.str(key!("path"), self.path);
        l.str(key!("route"), self.route);
        if let Some(ip) = self.client {
            l.with(key!("client"), |s| {
                // Writing to a `String` cannot fail.
                let _ = ClientIp(ip).write_to(s);
            });
        }
        l.u64(key!("status"), self.status.into());
        l.u64(key!("duration_us"), self.duration_us);
        l.plain(key!("request_id"), self.request_id);
        l.str(key!("sub"), self.sub);
        l.str(key!("error"), self.error);
        l.str(key!("upstream_host"), self.upstream_host);
        l.u64(key!("bytes_received"), self.bytes_received);
        l.u64(key!("bytes_sent"), self.bytes_sent);
        l.str(key!("user_agent"), self.user_agent);
        if let Some(t) = self.trace_id {
            l.display(key!("trace_id"), t);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::ops::logfields::tests::Buf;

    fn lines() -> Vec<Fields<'static>> {
        let plain = Fields {
            front: "proxy",
            method: "GET",
            path: "/api/v1/items",
            route: "api",
            client: Some(IpAddr::V4(Ipv4Addr::new(10, 9, 99, 100))),
            status: 200,
            duration_us: 1234,
            request_id: "0af7651916cd43dd8448eb211c80319c-000000000001",
            sub: "alice",
            error: "",
            upstream_host: "127.0.0.1:8080",
            bytes_received: 0,
            bytes_sent: 5,
            user_agent: "curl/8.5.0",
            trace_id: None,
        };
        let odd = Fields {
            front: "authz",
            method: "PATCH",
            path: "/a b/\"q\"\\/é/\u{7f}/\t",
            route: "logout",
            client: Some(IpAddr::V6("2001:db8::1".parse().unwrap())),
            status: 401,
            error: "invalid dpop proof: \"htu\" does not match",
            user_agent: "Mozilla/5.0 (X11; \"Linux\") \u{1b}[31m",
            sub: "bob\\admin",
            trace_id: Some(TraceId::from_bytes(*b"0123456789abcdef")),
            ..plain
        };
        let missing = Fields {
            method: "-",
            path: "",
            route: "-",
            client: None,
            status: 599,
            duration_us: 0,
            request_id: "-",
            sub: "-",
            upstream_host: "-",
            bytes_received: u64::MAX,
            bytes_sent: 0,
            user_agent: "-",
            trace_id: None,
            ..plain
        };
        let traced = Fields {
            client: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            trace_id: Some(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()),
            error: "upstream timed out",
            ..plain
        };
        vec![plain, odd, missing, traced]
    }

    /// Timestamps masked: the two ways read the clock at different moments.
    fn masked(text: &str) -> Vec<String> {
        text.split_inclusive('\n')
            .map(|l| {
                let z = l.find('Z').expect("a timestamp");
                format!("{}<time>{}", &l[..z - 26], &l[z + 1..])
            })
            .collect()
    }

    #[test]
    fn text_line_is_what_the_event_writes() {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .fmt_fields(crate::TextFields)
            .event_format(crate::TextFormat::default())
            .finish();
        tracing::subscriber::with_default(sub, || lines().iter().for_each(Fields::event));
        let want = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let mut got = String::new();
        for f in lines() {
            let mut l = TextLine::start(String::new(), &Level::INFO, ACCESS);
            f.text(&mut l);
            got.push_str(&l.finish());
        }
        let want = masked(&want);
        assert_eq!(want.len(), 4, "{want:?}");
        assert!(want[1].contains("client=2001:db8::1 "), "{}", want[1]);
        assert!(!want[2].contains("client="), "{}", want[2]);
        assert_eq!(masked(&got), want);
    }

    #[test]
    fn client_ip_as_ip_addr_displays_it() {
        let v4 = [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 9, 99, 100),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(192, 168, 1, 20),
        ];
        let v6 = [Ipv6Addr::LOCALHOST, "2001:db8::1".parse().unwrap()];
        let ips = v4.map(IpAddr::V4).into_iter().chain(v6.map(IpAddr::V6));
        for ip in ips {
            let shown = format!("{:?}", tracing::field::display(ClientIp(ip)));
            assert_eq!(shown, ip.to_string());
            let mut pushed = String::new();
            ClientIp(ip).write_to(&mut pushed).unwrap();
            assert_eq!(pushed, shown);
        }
    }
}
