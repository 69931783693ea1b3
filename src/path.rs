//! Request-path normalisation: the one spelling of a path that routing, CORS, logout and
//! the upstream all see. A path that means the same resource to an upstream must choose the
//! same route here, or a public route's policy could be applied to a protected path
//! (`/public/../api/x`). Modelled on Envoy's `normalize_path` + `merge_slashes` +
//! `path_with_escaped_slashes_action: REJECT_REQUEST`.

use std::borrow::Cow;

/// Why a path cannot be normalised safely: answered with 400, never routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%2F` or `%5C`: upstreams disagree on whether it separates segments.
    #[error("encoded slash or backslash in path")]
    EncodedSlash,
    /// A raw `\`, which some servers take for `/`.
    #[error("backslash in path")]
    Backslash,
    /// `%00` (or a raw NUL): C-string upstreams cut the path there.
    #[error("NUL in path")]
    Nul,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding in path")]
    BadEscape,
    /// Not an origin-form path (`/...`).
    #[error("path does not start with /")]
    NotAbsolute,
}

/// Normalise a request path (no query):
/// - percent-encoded unreserved characters (RFC 3986 §2.3) are decoded, other escapes get
///   upper-case hex (§6.2.2.1);
/// - runs of `/` are merged into one;
/// - `.` and `..` segments are removed (§5.2.4), never climbing above `/`;
/// - `%2F`, `%5C`, `%00`, a raw `\` or NUL, and malformed escapes are refused.
///
/// A path that is already normal (the usual case) is returned borrowed, after one scan.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        // `OPTIONS *` is the one request-target without a leading slash.
        return if path == "*" {
            Ok(Cow::Borrowed(path))
        } else {
            Err(PathError::NotAbsolute)
        };
    }
    if is_normal(b) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode what must be decoded, refuse what cannot be decided.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = h << 4 | l;
                match c {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    0 => return Err(PathError::Nul),
                    c if is_unreserved(c) => decoded.push(c),
                    _ => {
                        decoded.push(b'%');
                        decoded.push(HEX[(c >> 4) as usize]);
                        decoded.push(HEX[(c & 0xf) as usize]);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    // 2. Merge slashes and remove dot segments, one segment at a time.
    let mut out: Vec<&[u8]> = Vec::new();
    let trailing = {
        let last = decoded.rsplit(|&c| c == b'/').next().unwrap_or(b"");
        // `/a/` and `/a/.` and `/a/..` all end in a directory.
        last.is_empty() || last == b"." || last == b".."
    };
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    for seg in &out {
        s.push('/');
        // Every byte is either copied from a `&str` or an ASCII escape: still UTF-8.
        s.push_str(std::str::from_utf8(seg).map_err(|_| PathError::BadEscape)?);
    }
    if s.is_empty() || trailing {
        s.push('/');
    }
    Ok(Cow::Owned(s))
}

/// True when `normalize` would return the path unchanged: no escapes, no backslash or NUL,
/// `example.com:8443` -> `example.com`; `[::1]:80` -> `[::1]`.
pub fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

/// `p` when it is a same-origin relative path a browser cannot read as another origin:
/// starts with one `/`, no backslash, no control character or space, no encoded `/`, `\`
/// or control character in the path part, at most 2 KiB. `None` otherwise (callers fall
/// back to "/").
pub fn return_path(p: &str) -> Option<&str> {
    if p.len() > 2048 || !p.starts_with('/') || p.starts_with("//") {
        return None;
    }
    if p.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'\\' || !b.is_ascii())
    {
        return None;
    }
    let path = p
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let encoded_danger = path.match_indices('%').any(|(i, _)| {
        let esc = path.get(i + 1..i + 3).unwrap_or("");
        esc == "2f" || esc == "5c" || esc.starts_with('0') || esc.starts_with('1') || esc == "7f"
    });
    (!encoded_danger).then_some(p)
}

/// no empty, `.` or `..` segment.
fn is_normal(b: &[u8]) -> bool {
    let mut prev = b'/';
    let mut dots = 0usize;
    // A segment made only of dots (1 or 2) is a dot segment; track the current one.
    let mut only_dots = true;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' | 0 => return false,
            b'/' if i > 0 => {
                if prev == b'/' || (only_dots && (dots == 1 || dots == 2)) {
                    return false;
                }
                dots = 0;
                only_dots = true;
            }
            b'.' => dots += 1,
            b'/' => {}
            _ => only_dots = false,
        }
        prev = c;
    }
    !(only_dots && (dots == 1 || dots == 2))
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api",
            "/api/orders/7",
            "/a/b/",
            "/a.b/c..d/.e",
            "/~x_y-z",
            "*",
        ] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(_))),
                "{p} should be kept as it is"
            );
        }
    }

    #[test]
    fn dot_segments_slashes_and_escapes() {
        let cases = [
            ("/public/../api/x", "/api/x"),
            ("/public/%2e%2e/api/x", "/api/x"),
            ("/public/%2E%2E/api/x", "/api/x"),
            ("/public/.%2e/api/x", "/api/x"),
            ("//api/x", "/api/x"),
            ("/./api/x", "/api/x"),
            ("/api//x///y", "/api/x/y"),
            ("/api/x/.", "/api/x/"),
            ("/api/x/..", "/api/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/.", "/"),
            ("//", "/"),
            ("/%61pi/x", "/api/x"),
            ("/api/%7euser", "/api/~user"),
            ("/api/a%20b", "/api/a%20b"),
            ("/api/a%c3%a9", "/api/a%C3%A9"),
            ("/api/x.", "/api/x."),
            ("/api/...", "/api/..."),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn undecidable_paths_are_refused() {
        let cases = [
            ("/public/..%2fapi/x", PathError::EncodedSlash),
            ("/public/..%2Fapi/x", PathError::EncodedSlash),
            ("/public/..%5capi/x", PathError::EncodedSlash),
            ("/public\\..\\api", PathError::Backslash),
            ("/api%00.json", PathError::Nul),
            ("/api/%zz", PathError::BadEscape),
            ("/api/%2", PathError::BadEscape),
            ("api", PathError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a/./b/../c//d/%7e", "/x/%2e%2e/%2e/y", "/a%20b/../c"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once);
        }
    }
}
