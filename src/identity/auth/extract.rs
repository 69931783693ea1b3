//! Where a request carries its credential: the token from `[tokens] sources` (one of each,
//! never two), cookies by name, and the CSRF rule for cookie-carried credentials.

use cookie::Cookie;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{CorsConfig, TokenSource, Tokens};
use crate::error::{GatewayError, TokenError};

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    AuthorizationHeader,
    /// `Authorization: DPoP <token>` (RFC 9449 §7.1): the request must carry a proof.
    Dpop,
    OtherHeader,
    Cookie,
}

/// A credential carried by a cookie (an access or a refresh token) on an unsafe method
/// needs a same-site `Origin`/`Referer` (`[tokens] csrf`): the browser attaches cookies to
/// cross-site requests too.
pub fn check_csrf(
    tokens: &Tokens,
    method: &Method,
    host: Option<&str>,
    headers: &HeaderMap,
    cors: Option<&CorsConfig>,
) -> Result<(), GatewayError> {
    if tokens.csrf && !is_safe(method) && !same_origin(host, headers, cors) {
        return Err(GatewayError::Csrf);
    }
    Ok(())
}

fn is_safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// CSRF defence for cookie-carried tokens: `Origin` (or, failing that, `Referer`) must
/// name the host the request was sent to, or an origin the route's `cors` lets send
/// credentials.
pub(super) fn same_origin(
    host: Option<&str>,
    headers: &HeaderMap,
    cors: Option<&CorsConfig>,
) -> bool {
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(origin) = origin else { return false };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_some_and(|h| authority.eq_ignore_ascii_case(h)) {
        return true;
    }
    let site = &origin[..scheme.len() + 3 + authority.len()];
    cors.is_some_and(|c| c.trusts_credentials_from(site))
}

/// A token as the request carries it. From a header its bytes are not yet known to be
/// visible ASCII (all a token may hold): `as_str` checks the whole header value, as
/// `HeaderValue::to_str` does. A connection's memo compares the bytes first
/// (`TokenMemo::recall`), and what it holds passed that check, so a keep-alive client's
/// repeated 700-byte token is not scanned again (issue 19). No `Debug`: a token is never
/// printed.
#[derive(Clone, Copy)]
pub struct Token<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    /// Checked already (a cookie value, parsed from a checked `Cookie` line).
    Str(&'a str),
    /// `value[range]`; `what` names the header when it is not visible ASCII.
    Header {
        value: &'a HeaderValue,
        start: usize,
        end: usize,
        what: &'static str,
    },
}

impl<'a> Token<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        match self.0 {
            Repr::Str(s) => s.as_bytes(),
            Repr::Header {
                value, start, end, ..
            } => &value.as_bytes()[start..end],
        }
    }

    /// The token, if its header is visible ASCII (else 401, as a malformed token).
    pub fn as_str(&self) -> Result<&'a str, TokenError> {
        match self.0 {
            Repr::Str(s) => Ok(s),
            Repr::Header {
                value,
                start,
                end,
                what,
            } => value
                .to_str()
                .map(|s| &s[start..end])
                .map_err(|_| TokenError::Malformed(what)),
        }
    }

    fn in_header(value: &'a HeaderValue, token: &'a [u8], what: &'static str) -> Token<'a> {
        // `token` is a sub-slice of `value`'s bytes.
        let start = token.as_ptr() as usize - value.as_bytes().as_ptr() as usize;
        Token(Repr::Header {
            value,
            start,
            end: start + token.len(),
            what,
        })
    }
}

/// Find the token in the configured sources, in order. A present but malformed
/// Authorization header is an error, not "no token". A credential given twice (two
/// `Authorization` lines, two token cookies of one name, a token header repeated) is 400:
/// RFC 9110 §5.3 and RFC 6750 §2 allow one, and whichever copy an upstream picked might not
/// be the one verified here.
pub fn find_token<'a>(
    tokens: &Tokens,
    headers: &'a HeaderMap,
) -> Result<Option<(Token<'a>, Carrier)>, GatewayError> {
    for src in &tokens.sources {
        match src {
            TokenSource::Header(name) if name == header::AUTHORIZATION => {
                if let Some(v) = only_line(headers, &header::AUTHORIZATION)? {
                    const NOT_ASCII: &str = "authorization header is not ASCII";
                    let b = v.as_bytes();
                    // The first space by a byte scan: `split_once` runs a `CharSearcher`,
                    // ~150 instructions here for a six-letter scheme (issue 19).
                    let (scheme, rest) = match b.iter().position(|&c| c == b' ') {
                        Some(i) => (&b[..i], &b[i + 1..]),
                        None => (b, &b""[..]),
                    };
                    let carrier = if scheme.eq_ignore_ascii_case(b"bearer") {
                        Carrier::AuthorizationHeader
                    } else if scheme.eq_ignore_ascii_case(b"dpop") {
                        Carrier::Dpop
                    } else if v.to_str().is_err() {
                        return Err(TokenError::Malformed(NOT_ASCII).into());
                    } else {
                        return Err(TokenError::Malformed(
                            "authorization scheme is not Bearer or DPoP",
                        )
                        .into());
                    };
                    // On visible ASCII (all `as_str` lets through) this is `str::trim`.
                    let t = rest.trim_ascii();
                    if t.is_empty() {
                        return Err(TokenError::Malformed("empty bearer token").into());
                    }
                    return Ok(Some((Token::in_header(v, t, NOT_ASCII), carrier)));
                }
            }
            TokenSource::Header(name) => {
                if let Some(v) = only_line(headers, name)? {
                    let t = v.as_bytes().trim_ascii();
                    // A blank line is no token (the next source is tried).
                    if !t.is_empty() {
                        let token = Token::in_header(v, t, "token header is not ASCII");
                        return Ok(Some((token, Carrier::OtherHeader)));
                    }
                }
            }
            TokenSource::Cookie(name) => {
                if let Some(t) = find_only_cookie(headers, name)? {
                    return Ok(Some((Token(Repr::Str(t)), Carrier::Cookie)));
                }
            }
        }
    }
    Ok(None)
}

/// The one line of a credential header; a second line is 400.
fn only_line<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, GatewayError> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next();
    if lines.next().is_some() {
        return Err(GatewayError::BadRequest(
            "credential header sent more than once",
        ));
    }
    Ok(first)
}

/// The value of cookie `name` across all `Cookie` headers (the first, if repeated).
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_values(headers, name).0
}

/// The value of credential cookie `name`; the same name twice is 400 (see `find_token`).
pub fn find_only_cookie<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, GatewayError> {
    match cookie_values(headers, name) {
        (_, true) => Err(GatewayError::BadRequest(
            "credential cookie sent more than once",
        )),
        (first, false) => Ok(first),
    }
}

/// The first value of cookie `name`, and whether another cookie of that name follows.
/// An empty value counts as absent; one pair of surrounding double quotes is removed.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &str) -> (Option<&'a str>, bool) {
    let mut first = None;
    let values = cookie_pairs(headers)
        .filter_map(|(_, c)| c)
        .filter(|c| c.name() == name)
        .filter_map(|c| c.value_raw())
        .filter(|v| !v.is_empty());
    for v in values {
        if first.is_some() {
            return (first, true);
        }
        first = Some(
            v.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v),
        );
    }
    (first, false)
}

/// Every `name=value` pair of every `Cookie` line, as sent (trimmed), with its parse
/// (`None`: not a cookie pair, such as a bare value).
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<Cookie<'_>>)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| (p, Cookie::parse(p).ok()))
}

/// Cut the cookies whose name `doomed` picks from the `Cookie` header (the gateway's own
/// cookies never reach an upstream). The others stay as sent, on one line; without any
/// left, the header goes. Without a doomed cookie, nothing is touched.
pub fn remove_cookies(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let hit = |c: &Option<Cookie<'_>>| c.as_ref().is_some_and(|c| doomed(c.name()));
    if !cookie_pairs(headers).any(|(_, c)| hit(&c)) {
        return;
    }
    let kept: Vec<&str> = cookie_pairs(headers)
        .filter(|(_, c)| !hit(c))
        .map(|(p, _)| p)
        .collect();
    let joined = HeaderValue::try_from(kept.join("; ")).ok();
    headers.remove(header::COOKIE);
    if let Some(v) = joined.filter(|v| !v.is_empty()) {
        headers.insert(header::COOKIE, v);
    }
}
