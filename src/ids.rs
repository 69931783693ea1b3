//! Identifiers: random ids (`jti`, request and state ids) and issuer-scoped token ids, the
//! key of every per-token or per-subject record (revocations, anomaly windows).

/// 128 random bits as hex (for `jti`).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A `jti` or `sub` with the name of the `[[issuers]]` entry that vouches for it, held as
/// `<issuer name>:<value>` (names hold no `:`, config checks it, so the first `:` splits
/// them). Revocations and per-token state are keyed by it: one issuer's `alice` or reused
/// jti never touches another issuer's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scoped(Box<str>);

impl Scoped {
    pub fn new(issuer: &str, value: &str) -> Scoped {
        let mut s = String::with_capacity(issuer.len() + 1 + value.len());
        s.push_str(issuer);
        s.push(':');
        s.push_str(value);
        Scoped(s.into_boxed_str())
    }

    /// `<issuer name>:<value>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn issuer(&self) -> &str {
        self.0.split_once(':').map_or("", |(i, _)| i)
    }

    /// The bare `jti` or `sub`.
    pub fn value(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(_, v)| v)
    }
}

impl std::fmt::Display for Scoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
