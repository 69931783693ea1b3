//! The config file as it was loaded, for `GET /config`: its SHA-256 and its contents with
//! every secret value redacted. Secrets normally sit in the environment (`*_env` keys name
//! the variable; only the name is shown); what could still carry one in the file itself is
//! redacted: keys named like a secret or password, and the password of a URL's userinfo.

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

/// The loaded file: its hash and its redacted contents.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Hex SHA-256 of the file's bytes: compare with `sha256sum gateway.toml` to see
    /// whether the running config is the file on disk.
    pub sha256: String,
    /// The file's table, secrets replaced by `REDACTED` (`${VAR}` references are shown
    /// as written, never expanded).
    pub redacted: toml::Table,
}

impl Source {
    /// Hash and redact `text` (already known to parse).
    pub fn of(text: &str) -> Source {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        let sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut redacted: toml::Table = toml::from_str(text).unwrap_or_default();
        redact_table(&mut redacted);
        Source { sha256, redacted }
    }
}

/// A key whose value is itself secret (not a `*_env` name of the variable holding it).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !k.ends_with("_env") && (k.contains("secret") || k.contains("password"))
}

fn redact_table(t: &mut toml::Table) {
    for (k, v) in t.iter_mut() {
        if is_secret_key(k) {
            *v = toml::Value::String(REDACTED.into());
        } else {
            redact_value(v);
        }
    }
}

fn redact_value(v: &mut toml::Value) {
    match v {
        toml::Value::String(s) => {
            if let Some(r) = redact_url_password(s) {
                *s = r;
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact_value),
        toml::Value::Table(t) => redact_table(t),
        _ => {}
    }
}

/// `scheme://user:password@host/...` -> `scheme://user:<redacted>@host/...`; `None` when
/// there is no password.
pub fn redact_url_password(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let authority_end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    let at = s[start..authority_end].rfind('@')? + start;
    let colon = s[start..at].find(':')? + start;
    Some(format!("{}{REDACTED}{}", &s[..=colon], &s[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_env_names_kept() {
        let s = Source::of(
            "[revocation]\nredis_url = \"rediss://default:hunter2@redis:6380/0\"\n[admin]\ntoken_env = \"ADMIN\"\n[x]\nclient_secret = \"s3\"\nclient_secret_env = \"CS\"\nurls = [\"http://a:b@h\", \"http://h/p@q\"]\n",
        );
        let text = serde_json::to_string(&s.redacted).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("s3\""),
            "{text}"
        );
        assert!(
            text.contains("rediss://default:<redacted>@redis:6380/0"),
            "{text}"
        );
        assert!(text.contains("\"token_env\":\"ADMIN\""), "{text}");
        assert!(text.contains("\"client_secret_env\":\"CS\""), "{text}");
        assert!(text.contains("http://a:<redacted>@h"), "{text}");
        assert!(text.contains("http://h/p@q"), "{text}");
        assert_eq!(s.sha256.len(), 64);
    }
}
