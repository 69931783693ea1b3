//! Header hygiene: strip identity headers a client sent, set the verified identity and the
//! forwarding headers (`x-forwarded-*`, `x-request-id`) and, with tracing on, the W3C trace
//! context (`traceparent`, `tracestate`); remove hop-by-hop headers. Every header the
//! gateway sets on an upstream request is set here.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;

use http::header::Entry;
use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::config::Identity;
use crate::identity::auth::{Authenticated, TokenMemo};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Step 3: remove every identity header the client may have forged: the ones named in
/// `[identity]` and anything starting with `x-auth-` or `x-jwtgate-`. Names are compared
/// with `_` read as `-`, because CGI, WSGI, Rack and PHP servers map both to the same
/// variable: `x_user_id` would reach an app as its `x-user-id`. The same goes for the
/// forwarding headers the gateway sets (`x_forwarded_for`, `x_request_id`, ...). Other
/// names with `_` pass (unlike nginx's `underscores_in_headers off`): apps use them, and
/// they cannot pass for anything the gateway vouches for.
/// Unless `trust_proxies`, the client's `Forwarded` and `X-Real-IP` go too: like
/// `x-forwarded-for`, they are only believed from a trusted proxy.
pub fn strip_client_headers(headers: &mut HeaderMap, identity: &Identity, trust_proxies: bool) {
    let firsts = first_bytes(identity);
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let s = name.as_str();
        // Most of a request's names (`host`, `authorization`, `accept`, ...) cannot be
        // anything stripped here, by their first byte alone (issue 19).
        if firsts & first_byte(s) == 0 {
            continue;
        }
        let forged = if s.contains('_') {
            let dashed = s.replace('_', "-");
            is_identity_header(&dashed, identity) || is_forwarding_header(&dashed)
        } else {
            is_identity_header(s, identity)
                || (!trust_proxies && (*name == header::FORWARDED || *name == X_REAL_IP))
        };
        if forged {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(&name);
    }
}

/// The first bytes, as a set, of every name `strip_client_headers` may strip: the
/// forwarding headers' and `x-auth-*`'s `x` and `forwarded`'s `f`, and `[identity]`'s
/// names' (with `_` for a `-`, as a client may spell it).
fn first_bytes(identity: &Identity) -> u128 {
    let mut set = first_byte("x") | first_byte("f");
    let mut add = |n: &HeaderName| {
        set |= first_byte(n.as_str());
        if n.as_str().starts_with('-') {
            set |= first_byte("_");
        }
    };
    add(&identity.subject_header);
    add(&identity.scopes_header);
    add(&identity.claims_header);
    identity.claims.iter().for_each(|(h, _)| add(h));
    if let Some(a) = &identity.assertion {
        add(&a.header);
    }
    set
}

/// `s`'s first byte as a one-element set (header names are ASCII, never empty).
fn first_byte(s: &str) -> u128 {
    1u128 << (s.as_bytes().first().copied().unwrap_or(0) & 127)
}

/// A header only the gateway may set: `[identity]`'s, `x-auth-*`, `x-jwtgate-*`.
fn is_identity_header(s: &str, identity: &Identity) -> bool {
    s.starts_with("x-auth-")
        || s.starts_with("x-jwtgate-")
        || s == identity.subject_header.as_str()
        || s == identity.scopes_header.as_str()
        || s == identity.claims_header.as_str()
        || identity.claims.iter().any(|(h, _)| h.as_str() == s)
        || identity
            .assertion
            .as_ref()
            .is_some_and(|a| a.header.as_str() == s)
}

/// Headers that carry the client's address, scheme, host or request id upstream.
fn is_forwarding_header(s: &str) -> bool {
    s.starts_with("x-forwarded-") || s == "x-request-id" || s == "x-real-ip" || s == "forwarded"
}

/// Step 6d: an h2 client may split `cookie` over several fields; an HTTP/1.1 upstream
/// must get one, joined with `"; "` (RFC 9113 §8.2.3). One line (the usual case) is left
/// alone.
pub fn join_cookie_lines(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(header::COOKIE).iter();
    if lines.next().is_none() || lines.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Step 6a: the verified identity, for upstreams.
pub fn set_identity(headers: &mut HeaderMap, identity: &Identity, auth: &Authenticated) {
    let v = &auth.verified;
    headers.insert(identity.subject_header.clone(), v.sub_header.clone());
    if let Some(s) = &v.scopes_header {
        headers.insert(identity.scopes_header.clone(), s.clone());
    }
    headers.insert(identity.claims_header.clone(), v.claims_header.clone());
    for (name, value) in &v.extra_headers {
        headers.insert(name.clone(), value.clone());
    }
    if identity.forward_token {
        if let Some(b) = &auth.bearer {
            headers.insert(header::AUTHORIZATION, b.clone());
        }
    } else {
        headers.remove(header::AUTHORIZATION);
    }
}

/// Facts about the client connection that forwarding headers are made of, prepared once
/// per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// base64url SHA-256 of the TLS client certificate (`[tls] client_ca`), for
    /// certificate-bound tokens (RFC 8705 §3).
    pub client_cert: Option<std::sync::Arc<str>>,
    /// The last token this connection presented, with its verification.
    pub token_memo: std::sync::Arc<TokenMemo>,
    /// The peer's IP address as a header value (`x-forwarded-for`).
    ip: HeaderValue,
}

impl ClientInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ClientInfo {
        let ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientInfo {
            peer,
            tls,
            client_cert: None,
            token_memo: Default::default(),
            ip,
        }
    }
}

/// Step 1: the client's address, for the access log. It is the peer's, unless
/// `trusted_hops` proxies that each append to `x-forwarded-for` (load balancers, a CDN)
/// stand in front of the gateway: then it is the address the outermost of them saw, that
/// many entries from the right of `x-forwarded-for` as received (the peer being the
/// first trusted hop). Entries a client wrote further left are never chosen. A shorter
/// list gives its left-most entry; an entry that is not an IP address (with or without a
/// port) gives the peer's address.
pub fn client_address(headers: &HeaderMap, conn: &ClientInfo, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return conn.peer.ip();
    }
    // Right to left; with fewer entries than hops, the last one seen is the left-most.
    let mut chosen = None;
    for entry in forwarded_for(headers).rev().take(trusted_hops) {
        let Some(entry) = entry else {
            return conn.peer.ip();
        };
        chosen = Some(entry);
    }
    chosen.and_then(parse_ip).unwrap_or_else(|| conn.peer.ip())
}

/// The `x-forwarded-for` entries as received, over every line, left to right; `None` for
/// a line that is not text.
fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = Option<&str>> {
    forwarded_entries(headers.get_all(&X_FORWARDED_FOR).iter())
}

/// `forwarded_for` over these `x-forwarded-for` lines.
fn forwarded_entries<'a>(
    lines: impl DoubleEndedIterator<Item = &'a HeaderValue>,
) -> impl DoubleEndedIterator<Item = Option<&'a str>> {
    lines.flat_map(|v| {
        let text = v.to_str();
        let bad = text.is_err().then_some(None);
        let entries = text.unwrap_or("").split(',').map(str::trim);
        entries.filter(|e| !e.is_empty()).map(Some).chain(bad)
    })
}

/// `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })
}

/// The request's `x-request-id` (step 6): the client's if sane, else a new one, put in
/// `headers` so the upstream sees the same id. Taken when the request arrives (step 1),
/// so every answer the gateway gives itself, refusals included, carries and logs it too.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup (`entry`) for the read and the write.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(e) if is_sane_request_id(e.get().as_bytes()) => e.get().clone(),
        Entry::Occupied(mut e) => {
            let id = new_request_id();
            // Replaces every line the client sent.
            e.insert(id.clone());
            id
        }
        Entry::Vacant(e) => {
            let id = new_request_id();
            e.insert(id.clone());
            id
        }
    }
}

/// Step 6b: `x-forwarded-for` (client address appended), `-proto`, `-host` (the client's
/// authority verbatim); `x-request-id` was settled on arrival (`request_id`).
/// Behind trusted proxies (`trust_proxies`), the `x-forwarded-proto` (`http` or `https`)
/// and `x-forwarded-host` they set are kept: they saw the client's scheme and host.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    authority: Option<&HeaderValue>,
    trust_proxies: bool,
) {
    // Every line the client sent, in order, then the peer (one line upstream). One
    // lookup (`entry`) for the read and the write.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client.ip.clone());
        }
        Entry::Occupied(mut e) => {
            let mut chain = String::new();
            for entry in forwarded_entries(e.iter()).flatten() {
                chain.push_str(entry);
                chain.push_str(", ");
            }
            let xff = if chain.is_empty() {
                Some(client.ip.clone())
            } else {
                let _ = write!(chain, "{}", client.peer.ip());
                HeaderValue::try_from(chain).ok()
            };
            if let Some(v) = xff {
                // Replaces every line the client sent.
                e.insert(v);
            }
        }
    }
    let proto_from_proxy = trust_proxies
        && headers.get(&X_FORWARDED_PROTO).is_some_and(|v| {
            v.as_bytes().eq_ignore_ascii_case(b"https")
                || v.as_bytes().eq_ignore_ascii_case(b"http")
        });
    if !proto_from_proxy {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if client.tls { "https" } else { "http" }),
        );
    }
    let host_from_proxy = trust_proxies && headers.contains_key(&X_FORWARDED_HOST);
    match authority {
        _ if host_from_proxy => {}
        Some(a) => {
            headers.insert(X_FORWARDED_HOST.clone(), a.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Step 6c, with tracing on (`ops::otel`): the upstream's W3C trace context is the
/// gateway's span, a child of the client's: `traceparent` with the same trace id and the
/// gateway's span id as parent, and the client's `tracestate` with it. A client's
/// `traceparent` that was not valid started a new trace, so neither it nor its `tracestate`
/// goes on. With tracing off this is not called: the client's headers pass untouched, as
/// any other header.
pub fn set_trace_context(headers: &mut HeaderMap, span: &opentelemetry::trace::SpanContext) {
    // `00-<trace id>-<span id>-<flags>`, written in place (no formatting machinery).
    let mut tp = [b'-'; 55];
    tp[..2].copy_from_slice(b"00");
    hex_into(&mut tp[3..35], &span.trace_id().to_bytes());
    hex_into(&mut tp[36..52], &span.span_id().to_bytes());
    hex_into(&mut tp[53..55], &[span.trace_flags().to_u8()]);
    if let Ok(tp) = HeaderValue::from_bytes(&tp) {
        headers.insert(TRACEPARENT.clone(), tp);
    }
    let state = span.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(s) if !s.is_empty() => {
            headers.insert(TRACESTATE.clone(), s);
        }
        _ => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// `bytes` as lower-case hex into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (o, b) in out.chunks_exact_mut(2).zip(bytes) {
        o[0] = HEX[usize::from(b >> 4)];
        o[1] = HEX[usize::from(b & 0xf)];
    }
}

/// 1–128 characters of `[A-Za-z0-9._:-]` (UUIDs, trace ids): anything else is replaced.
fn is_sane_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A unique id: a random 64-bit prefix chosen per thread, then that thread's counter
/// (`0123456789abcdef-00000000002a`). Nothing is shared between worker threads, and ids are
/// cut from a per-thread 4 KiB buffer, so making one (and cloning it for the response and
/// the log) allocates nothing most of the time.
fn new_request_id() -> HeaderValue {
    const LEN: usize = 29;
    /// The thread's id buffer: the prefix and its `-` written once, the counter's digits
    /// rewritten per id.
    fn first_id() -> [u8; LEN] {
        let mut buf = [0u8; LEN];
        hex(&mut buf[..16], random_u64());
        buf[16] = b'-';
        buf
    }
    thread_local! {
        static IDS: RefCell<([u8; LEN], u64, BytesMut)> = RefCell::new((first_id(), 0, BytesMut::new()));
    }
    IDS.with(|ids| {
        let (buf, next, arena) = &mut *ids.borrow_mut();
        hex(&mut buf[17..], *next & 0xffff_ffff_ffff);
        *next = next.wrapping_add(1);
        if arena.capacity() < LEN {
            *arena = BytesMut::with_capacity(4096);
        }
        arena.extend_from_slice(&buf[..]);
        HeaderValue::from_maybe_shared(arena.split().freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    })
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Lower-case hex of the low `out.len()` nibbles of `v`, most significant first.
fn hex(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (4 * (n - 1 - i))) & 0xf) as usize];
    }
}

/// Remove the headers a `Connection` value names (except `upgrade` for an upgrade, and
/// `x-request-id`, which the gateway settles at step 1 and every hop must carry).
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue, upgrade: bool) {
    // `keep-alive` alone (the usual value, most upstreams' answer) names nothing more.
    if connection.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
        return;
    }
    let Ok(list) = connection.to_str() else {
        return;
    };
    for token in list.split(',').map(str::trim) {
        // `keep-alive`, the usual value, is a hop-by-hop header removed anyway.
        if token.is_empty()
            || token.eq_ignore_ascii_case("keep-alive")
            || (upgrade && token.eq_ignore_ascii_case("upgrade"))
            || token.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
        {
            continue;
        }
        // A `&str` key is lower-cased on the stack and looked up; nothing is allocated.
        headers.remove(token);
    }
}

/// Step 6c: remove hop-by-hop headers, including those the `Connection` header names.
/// For an upgrade request `Connection: upgrade` and `Upgrade` are kept, so the upstream
/// sees the handshake.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds what is there (most messages carry none or only
    // `Connection`), instead of a hash lookup per hop-by-hop name on every message.
    let mut connection = false;
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present[i] = true;
        }
    }
    if connection {
        // The `Connection` values are refcounted copies, so the map can be edited while
        // they are read; one value (the usual case) needs no list.
        let mut values = headers.get_all(header::CONNECTION).iter();
        match (values.next().cloned(), values.next().is_some()) {
            (None, _) => {}
            (Some(one), false) => remove_named(headers, &one, upgrade),
            (Some(_), true) => {
                let all: Vec<HeaderValue> = headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .cloned()
                    .collect();
                for v in &all {
                    remove_named(headers, v, upgrade);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if !(upgrade && *name == header::UPGRADE) {
            headers.remove(*name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Hop-by-hop headers besides `Connection` (RFC 9110 §7.6.1, and the legacy ones).
static HOP_BY_HOP: [&HeaderName; 8] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
    &header::UPGRADE,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            subject_header: HeaderName::from_static("x-user-id"),
            scopes_header: HeaderName::from_static("x-user-scopes"),
            claims_header: HeaderName::from_static("x-auth-claims"),
            forward_token: true,
            claims: vec![(HeaderName::from_static("x-user-email"), "email".into())],
            assertion: None,
        }
    }

    /// Each of `names`, sent by the client with the value `evil`.
    fn forged(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h
    }

    #[test]
    fn strips_forged_identity() {
        let mut h = forged(&[
            "x-user-id",
            "x-user-scopes",
            "x-auth-claims",
            "x-auth-anything",
            "x-jwtgate-assertion",
            "x-user-email",
            "x-other",
        ]);
        strip_client_headers(&mut h, &identity(), false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn strips_underscore_spellings_and_untrusted_forwarding() {
        let names = [
            "x_user_id",
            "x_auth_claims",
            "x-auth_claims",
            "x_jwtgate_assertion",
            "x_auth_anything",
            "x_user_email",
            "x_user-scopes",
            "x_forwarded_for",
            "x_request_id",
            "x_real_ip",
            "forwarded",
            "x-real-ip",
            "x_api_key",
        ];
        let mut h = forged(&names);
        strip_client_headers(&mut h, &identity(), false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x_api_key"]
        );
        // Behind trusted proxies their Forwarded and X-Real-IP stay; underscores never do.
        let mut h = forged(&names);
        strip_client_headers(&mut h, &identity(), true);
        let mut kept: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["forwarded", "x-real-ip", "x_api_key"]);
    }

    /// Identity headers named without the usual `x-` are stripped too, in either spelling
    /// (the first-byte filter knows their first bytes, `_` for a leading `-`).
    #[test]
    fn strips_identity_headers_of_any_name() {
        let identity = Identity {
            subject_header: HeaderName::from_static("remote-user"),
            scopes_header: HeaderName::from_static("-scopes"),
            claims_header: HeaderName::from_static("auth-claims"),
            forward_token: true,
            claims: vec![(HeaderName::from_static("user-email"), "email".into())],
            assertion: None,
        };
        let mut h = forged(&[
            "remote-user",
            "remote_user",
            "-scopes",
            "_scopes",
            "auth_claims",
            "user-email",
            "x_auth_other",
            "forwarded",
            "host",
            "accept",
            "remote-addr",
        ]);
        strip_client_headers(&mut h, &identity, false);
        let mut kept: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["accept", "host", "remote-addr"]);
    }

    #[test]
    fn cookie_lines_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookie_lines(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        h.append(header::COOKIE, HeaderValue::from_static("d=4"));
        join_cookie_lines(&mut h);
        assert_eq!(
            h.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2; c=3; d=4"]
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
        // Each hop-by-hop name alone, in either case as sent, goes (and nothing else).
        for name in HOP_BY_HOP {
            let mut h = HeaderMap::new();
            let upper = name.as_str().to_ascii_uppercase();
            h.insert(
                HeaderName::from_bytes(upper.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
            h.insert("x-keep", HeaderValue::from_static("1"));
            remove_hop_by_hop(&mut h, false);
            assert_eq!(
                h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                ["x-keep"],
                "{name}"
            );
        }
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.3, 10.0.0.4"),
        );
        h.insert(
            "x-request-id",
            HeaderValue::from_static("bad id with spaces"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        let id = request_id(&mut h);
        set_forwarded(
            &mut h,
            &ClientInfo::new("127.0.0.9:5000".parse().unwrap(), true),
            Some(&HeaderValue::from_static("api.example:8443")),
            false,
        );
        // Every line the client sent is kept, in order.
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.3, 10.0.0.4, 127.0.0.9"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example:8443");
        assert_ne!(id, "bad id with spaces");
        assert_eq!(h["x-request-id"], id);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut h), "abc-123");
        assert_eq!(h["x-request-id"], "abc-123");
    }

    #[test]
    fn forwarded_proto_and_host_from_trusted_proxies_are_kept() {
        let conn = ClientInfo::new("10.0.0.2:5000".parse().unwrap(), false);
        let host = HeaderValue::from_static("internal:8080");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        h.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        set_forwarded(&mut h, &conn, Some(&host), true);
        assert_eq!(h["x-forwarded-proto"], "HTTPS");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        // Not a scheme: replaced. Absent: set as without proxies.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        set_forwarded(&mut h, &conn, Some(&host), true);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "internal:8080");
    }

    #[test]
    fn client_address_counts_trusted_hops_from_the_right() {
        let conn = ClientInfo::new("10.0.0.2:5000".parse().unwrap(), false);
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", HeaderValue::from_static(v));
            }
            h
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let spoofed = with(&["6.6.6.6, 203.0.113.7", "198.51.100.1"]);
        assert_eq!(client_address(&spoofed, &conn, 0), ip("10.0.0.2"));
        assert_eq!(client_address(&spoofed, &conn, 1), ip("198.51.100.1"));
        assert_eq!(client_address(&spoofed, &conn, 2), ip("203.0.113.7"));
        // Fewer entries than trusted hops: the left-most one.
        assert_eq!(client_address(&spoofed, &conn, 9), ip("6.6.6.6"));
        assert_eq!(client_address(&with(&[]), &conn, 1), ip("10.0.0.2"));
        // Ports and brackets are accepted; anything else falls back to the peer.
        assert_eq!(
            client_address(&with(&["[2001:db8::1]:443"]), &conn, 1),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(&with(&["192.0.2.4:8080"]), &conn, 1),
            ip("192.0.2.4")
        );
        assert_eq!(
            client_address(&with(&["unknown"]), &conn, 1),
            ip("10.0.0.2")
        );
    }
}
