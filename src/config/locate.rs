//! Lines for errors found after parsing. Validation names a setting by its key path
//! (`issuers[0].jwks_url`, `routes[1].cors.origins`, `tls`); `locate` finds that path in
//! the file through toml's spans and adds the line. One mechanism for every check: a key
//! the file spells out gets its own line, a key it leaves out (a missing setting) gets the
//! line of the table it belongs in.

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// `e` with the line of its key in `text`, when the file writes it (or its table).
pub(super) fn locate(e: ConfigError, text: &str) -> ConfigError {
    match e {
        ConfigError::Invalid {
            path,
            line: None,
            key,
            message,
        } => ConfigError::Invalid {
            line: line_of(text, &key),
            path,
            key,
            message,
        },
        e => e,
    }
}

/// One step of a key path: a table key, or an array index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `routes[1].cors.origins` -> Key(routes), Index(1), Key(cors), Key(origins). `None` for
/// what is not a key path.
fn steps(key: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty() {
            return None;
        }
        out.push(Step::Key(name));
        while let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            out.push(Step::Index(n.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The 1-based line where `text` writes the deepest part of `key` it has; `None` when it
/// does not even have the first.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let steps = steps(key)?;
    let root = DeTable::parse(text).ok()?;
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut value: Option<&DeValue> = None;
    let mut at: Option<usize> = None;
    for step in steps {
        let found = match (step, table, value) {
            (Step::Key(k), Some(t), _) => t.get_key_value(k).map(|(k, v)| (k.span().start, v)),
            (Step::Index(i), _, Some(DeValue::Array(a))) => a.get(i).map(|v| (v.span().start, v)),
            _ => None,
        };
        let Some((start, v)) = found else { break };
        at = Some(start);
        value = Some(v.get_ref());
        table = match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    at.map(|start| text[..start.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[issuers]]\nname = \"a\"\njwks_url = \"ftp://x\"\n\n[[routes]]\nname = \"r\"\nupstreams = [\n  \"http://a\",\n  \"bad\",\n]\ncors = { origins = [\"x\"] }\n\n[[routes]]\nname = \"s\"\n";

    #[test]
    fn a_key_path_is_found_at_its_line() {
        for (key, line) in [
            ("listen.http", Some(2)),
            ("issuers[0].jwks_url", Some(6)),
            ("routes[0].upstreams[1]", Some(12)),
            ("routes[0].cors.origins", Some(14)),
            ("routes[1].name", Some(17)),
            // Missing: the table it belongs in.
            ("listen.admin", Some(1)),
            ("issuers[0].keys", Some(4)),
            ("routes[5].name", Some(8)),
            // Not in the file at all, or not a key path.
            ("tls", None),
            ("tls.cert", None),
            ("a..b", None),
            ("routes[x]", None),
        ] {
            assert_eq!(line_of(FILE, key), line, "{key}");
        }
    }
}
