//! Durations in gateway.toml: every `*_ms` and `*_s` key takes an integer in the key's unit
//! (`timeout_ms = 1500`) or a human form (`timeout_ms = "1.5s"`, `"1500ms"`, `"2m"`,
//! `"1h 30m"`: humantime's syntax). A human form must come to a whole number of the key's
//! unit: `"1500us"` for a `_ms` key is refused rather than rounded (to 1, or to 0 where 0
//! means "off" or is invalid). Used as `#[serde(deserialize_with = "duration::ms")]`; the
//! value stays a `u64` in the unit, so validation reads the same either way, and a refused
//! value is a parse error with its line.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A key's unit: its name in messages and its length in nanoseconds.
#[derive(Clone, Copy)]
struct Unit {
    name: &'static str,
    nanos: u128,
}

const MILLIS: Unit = Unit {
    name: "milliseconds",
    nanos: 1_000_000,
};
const SECONDS: Unit = Unit {
    name: "seconds",
    nanos: 1_000_000_000,
};

/// A `*_ms` key.
pub(super) fn ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(In(MILLIS))
}

/// A `*_s` key.
pub(super) fn s<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(In(SECONDS))
}

/// An optional `*_s` key (`None` when absent: use with `#[serde(default)]`).
pub(super) fn opt_s<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    s(d).map(Some)
}

/// `text` (humantime's syntax) in whole `unit`s.
fn parse(text: &str, unit: Unit) -> Result<u64, String> {
    let d: Duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{text:?} is not a duration ({e}): give an integer ({}) or a duration such as \"30s\", \"1500ms\", \"2m\"",
            unit.name
        )
    })?;
    let nanos = d.as_nanos();
    if !nanos.is_multiple_of(unit.nanos) {
        return Err(format!(
            "{text:?} is not a whole number of {}: this key counts in {}",
            unit.name, unit.name
        ));
    }
    u64::try_from(nanos / unit.nanos).map_err(|_| format!("{text:?} is too long"))
}

struct In(Unit);

impl Visitor<'_> for In {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "an integer ({}) or a duration such as \"30s\", \"1500ms\", \"2m\"",
            self.0.name
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative: a duration cannot be")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse(v, self.0).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(default, deserialize_with = "ms")]
        a_ms: u64,
        #[serde(default, deserialize_with = "s")]
        b_s: u64,
        #[serde(default, deserialize_with = "opt_s")]
        c_s: Option<u64>,
    }

    fn t(text: &str) -> Result<T, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_and_human_forms_in_the_keys_unit() {
        for (text, a_ms, b_s) in [
            ("a_ms = 1500\nb_s = 30", 1500, 30),
            ("a_ms = \"1500ms\"\nb_s = \"30s\"", 1500, 30),
            ("a_ms = \"1.5s\"\nb_s = \"2m\"", 1500, 120),
            ("a_ms = \"2m\"\nb_s = \"1h 30m\"", 120_000, 5400),
            ("a_ms = \"2000us\"\nb_s = \"1day\"", 2, 86_400),
            ("a_ms = \"0s\"\nb_s = 0", 0, 0),
        ] {
            let v = t(text).unwrap();
            assert_eq!((v.a_ms, v.b_s), (a_ms, b_s), "{text}");
        }
        assert_eq!(t("c_s = \"5m\"").unwrap().c_s, Some(300));
        assert_eq!(t("").unwrap().c_s, None);
    }

    #[test]
    fn what_does_not_fit_the_unit_is_refused_with_the_line() {
        for (text, needle) in [
            (
                "a_ms = \"1500us\"",
                "\"1500us\" is not a whole number of milliseconds",
            ),
            ("b_s = \"1500ms\"", "not a whole number of seconds"),
            ("b_s = \"30\"", "is not a duration"),
            ("a_ms = \"fast\"", "\"fast\" is not a duration"),
            ("a_ms = -1", "negative"),
            ("a_ms = 1.5", "an integer (milliseconds) or a duration"),
            ("a_ms = \"500000000000 years\"", "too long"),
        ] {
            let e = t(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("line 1"), "{text}: {e}");
        }
    }
}
