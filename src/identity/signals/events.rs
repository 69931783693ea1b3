//! Shared Signals (SSF 1.0) push delivery (RFC 8935) of Security Event Tokens (RFC 8417):
//! CAEP `session-revoked` revokes a session or a subject; RISC `credential-change` (not
//! `change_type = "create"`), `account-disabled`, `account-purged` and `sessions-revoked`
//! revoke the subject; any other event is accepted, logged, counted and changes nothing.

use serde_json::{Map, Value};

use super::{
    check_iss_aud, check_times, check_typ, key_error, string_claim, Receiver, SignalError, Target,
};
use crate::clock::now_unix;
use crate::identity::auth::verify_signed;
use crate::identity::revocation::Scoped;

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Verified and handled (every event applied or deliberately ignored).
    Accepted,
    /// A redelivery of a SET already handled (same `jti`): nothing done again.
    Duplicate,
}

/// An event type the receiver acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SessionRevoked,
    CredentialChange,
    AccountDisabled,
    AccountPurged,
    SessionsRevoked,
}

impl Kind {
    fn of(uri: &str) -> Option<Kind> {
        if let Some(t) = uri.strip_prefix(CAEP) {
            return (t == "session-revoked").then_some(Kind::SessionRevoked);
        }
        Some(match uri.strip_prefix(RISC)? {
            "credential-change" => Kind::CredentialChange,
            "account-disabled" => Kind::AccountDisabled,
            "account-purged" => Kind::AccountPurged,
            "sessions-revoked" => Kind::SessionsRevoked,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Kind::SessionRevoked => "session-revoked",
            Kind::CredentialChange => "credential-change",
            Kind::AccountDisabled => "account-disabled",
            Kind::AccountPurged => "account-purged",
            Kind::SessionsRevoked => "sessions-revoked",
        }
    }
}

/// A subject identifier (RFC 9493) as far as the gateway can use one: a user (`iss_sub`,
/// or the `user` of a `complex` one) and a session (an `opaque` id, or the `session` of a
/// `complex` one, optionally naming its issuer with `iss_sub`-like `iss`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Subject {
    user: Option<(String, String)>,
    session: Option<String>,
}

fn parse_subject(v: Option<&Value>) -> Subject {
    let Some(Value::Object(o)) = v else {
        return Subject::default();
    };
    let s = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    match s("format") {
        Some("iss_sub") => Subject {
            user: s("iss").zip(s("sub")).map(|(i, u)| (i.into(), u.into())),
            session: None,
        },
        Some("opaque") => Subject {
            user: None,
            session: s("id").map(str::to_string),
        },
        Some("complex") => Subject {
            user: parse_subject(o.get("user")).user,
            session: parse_subject(o.get("session")).session,
        },
        _ => Subject::default(),
    }
}

impl Receiver {
    /// An RFC 8935 push: `content_type` must be `application/secevent+jwt`, `body` the SET.
    pub async fn push(
        &self,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Delivery, SignalError> {
        let Some((cfg, keys, _)) = &self.signals else {
            return Err(SignalError::Invalid("no [signals] receiver"));
        };
        let refused = |e: SignalError| {
            tracing::info!(iss = %cfg.issuer, reason = %e, "security event token refused");
            self.count("set", e.outcome());
            e
        };
        let ct_ok = content_type
            .and_then(|c| c.split(';').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/secevent+jwt"));
        if !ct_ok {
            return Err(refused(SignalError::Invalid(
                "Content-Type must be application/secevent+jwt",
            )));
        }
        let token = std::str::from_utf8(body)
            .map(str::trim)
            .map_err(|_| refused(SignalError::Invalid("the body is not a JWT")))?;
        let signed = verify_signed(keys, token)
            .await
            .map_err(|e| refused(key_error(e)))?;
        let claims = &signed.claims;
        check_typ(signed.typ.as_deref(), "secevent+jwt").map_err(refused)?;
        check_iss_aud(claims, &cfg.issuer, &cfg.audience).map_err(refused)?;
        let leeway = cfg.leeway_s.min(i64::MAX as u64) as i64;
        let max_age = cfg.max_age_s.min(i64::MAX as u64) as i64;
        let iat = check_times(claims, leeway, max_age).map_err(refused)?;
        let jti = string_claim(claims, "jti")
            .ok_or(SignalError::Invalid("jti is missing"))
            .map_err(refused)?;
        let events = match claims.get("events") {
            Some(Value::Object(e)) if !e.is_empty() => e,
            Some(_) => {
                return Err(refused(SignalError::Invalid(
                    "events is not a non-empty JSON object",
                )))
            }
            None => return Err(refused(SignalError::Invalid("events is missing"))),
        };
        let mut plan = Vec::with_capacity(events.len());
        for (uri, ev) in events {
            let Value::Object(ev) = ev else {
                return Err(refused(SignalError::Invalid(
                    "an event is not a JSON object",
                )));
            };
            plan.push(self.plan(uri, ev, claims, &cfg.issuer, iat));
        }
        let replay_key = format!("ssf:{jti}");
        let until = iat
            .saturating_add(max_age)
            .saturating_add(leeway)
            .saturating_add(1);
        match self.first_sighting(&replay_key, until).await {
            Ok(()) => {}
            Err(SignalError::Replayed) => {
                tracing::info!(iss = %cfg.issuer, "security event token delivered again; already handled");
                self.count("set", "duplicate");
                return Ok(Delivery::Duplicate);
            }
            Err(e) => return Err(refused(e)),
        }
        for (label, what) in plan {
            let res = match what {
                Ok(target) => self.apply(label, &cfg.issuer, &target).await,
                Err(why) => {
                    tracing::info!(event = label, iss = %cfg.issuer, why, "security event changes nothing");
                    self.count(label, "ignored");
                    Ok(())
                }
            };
            if let Err(e) = res {
                self.revocations.forget_sighting(&replay_key).await;
                return Err(SignalError::Unavailable(e));
            }
        }
        Ok(Delivery::Accepted)
    }

    /// What one event asks for: a revocation, or why it changes nothing.
    fn plan(
        &self,
        uri: &str,
        ev: &Map<String, Value>,
        set: &Map<String, Value>,
        set_iss: &str,
        iat: i64,
    ) -> (&'static str, Result<Target, &'static str>) {
        let Some(kind) = Kind::of(uri) else {
            return ("unknown", Err("event type not acted on"));
        };
        // SSF 1.0 puts the subject in the SET's `sub_id`; earlier drafts in the event.
        let subject = parse_subject(set.get("sub_id").or_else(|| ev.get("subject")));
        // The watermark: when it happened (never later than now).
        let at = ev
            .get("event_timestamp")
            .and_then(Value::as_i64)
            .unwrap_or(iat)
            .min(now_unix());
        let label = kind.label();
        if kind == Kind::CredentialChange
            && ev.get("change_type").and_then(Value::as_str) == Some("create")
        {
            return (label, Err("credential created"));
        }
        let session = match kind {
            Kind::SessionRevoked => subject.session.as_deref(),
            _ => None,
        };
        let target = match (session, &subject.user) {
            (Some(sid), user) => {
                // The session's issuer: the user's, else the transmitter.
                let iss = user.as_ref().map_or(set_iss, |(i, _)| i.as_str());
                match self.name_of(iss) {
                    Some(name) => Ok(Target::Session(Scoped::new(name, sid))),
                    None => Err("the session's issuer is not one of [[issuers]]"),
                }
            }
            (None, Some((iss, sub))) => match self.name_of(iss) {
                Some(name) => Ok(Target::Subject(Scoped::new(name, sub), at)),
                None => Err("the subject's issuer is not one of [[issuers]]"),
            },
            (None, None) => Err("no usable subject (iss_sub, opaque session or complex)"),
        };
        (label, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let p = |v: Value| parse_subject(Some(&v));
        assert_eq!(
            p(serde_json::json!({"format": "iss_sub", "iss": "https://i", "sub": "alice"})),
            Subject {
                user: Some(("https://i".into(), "alice".into())),
                session: None
            }
        );
        assert_eq!(
            p(serde_json::json!({"format": "opaque", "id": "s1"})).session,
            Some("s1".into())
        );
        let c = p(serde_json::json!({"format": "complex",
            "user": {"format": "iss_sub", "iss": "https://i", "sub": "bob"},
            "session": {"format": "opaque", "id": "s2"}}));
        assert_eq!(c.session.as_deref(), Some("s2"));
        assert_eq!(c.user.unwrap().1, "bob");
        assert_eq!(
            p(serde_json::json!({"format": "email", "email": "a@b"})),
            Subject::default()
        );
        assert_eq!(parse_subject(None), Subject::default());
    }

    #[test]
    fn kinds() {
        assert_eq!(
            Kind::of("https://schemas.openid.net/secevent/caep/event-type/session-revoked"),
            Some(Kind::SessionRevoked)
        );
        assert_eq!(
            Kind::of("https://schemas.openid.net/secevent/risc/event-type/account-disabled"),
            Some(Kind::AccountDisabled)
        );
        assert_eq!(
            Kind::of("https://schemas.openid.net/secevent/caep/event-type/token-claims-change"),
            None
        );
        assert_eq!(Kind::of("urn:example:x"), None);
    }
}
