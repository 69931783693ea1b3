//! OpenID Connect Back-Channel Logout 1.0: the identity provider POSTs a logout token
//! (`application/x-www-form-urlencoded`, field `logout_token`); a valid one revokes the
//! session it names (`sid`) or, without one, every token of its subject issued up to its
//! `iat`.

use serde_json::{Map, Value};

use super::{
    check_iss_aud, check_times, check_typ, key_error, string_claim, Receiver, SignalError, Target,
};
use crate::config::Backchannel;
use crate::identity::auth::verify_signed;
use crate::identity::jwks::IssuerKeys;
use crate::identity::revocation::Scoped;

/// The `events` member a logout token must carry.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The metrics label of logout tokens.
const LABEL: &str = "backchannel-logout";

/// A verified logout token: what to revoke, and its replay-cache entry.
struct Checked {
    target: Target,
    replay_key: String,
    until: i64,
}

impl Receiver {
    /// `POST` to `Config::backchannel[endpoint]` with the form body `form`. `Ok` once the
    /// revocation is recorded (and published); a refusal changes nothing.
    pub async fn backchannel_logout(
        &self,
        endpoint: usize,
        form: &[u8],
    ) -> Result<(), SignalError> {
        let (b, keys) = &self.backchannel[endpoint];
        let checked = match check(b, keys, form).await {
            Ok(c) => c,
            Err(e) => return Err(self.refused(&keys.config.issuer, e)),
        };
        if let Err(e) = self
            .first_sighting(&checked.replay_key, checked.until)
            .await
        {
            return Err(self.refused(&keys.config.issuer, e));
        }
        if let Err(e) = self
            .apply(LABEL, &keys.config.issuer, &checked.target)
            .await
        {
            self.revocations.forget_sighting(&checked.replay_key).await;
            return Err(SignalError::Unavailable(e));
        }
        Ok(())
    }

    fn refused(&self, iss: &str, e: SignalError) -> SignalError {
        tracing::info!(event = LABEL, iss, reason = %e, "logout token refused");
        self.count(LABEL, e.outcome());
        e
    }
}

/// The single `logout_token` form field.
fn logout_token(form: &[u8]) -> Result<String, SignalError> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(form) {
        if k == "logout_token" {
            if found.is_some() {
                return Err(SignalError::Invalid("logout_token given more than once"));
            }
            found = Some(v.into_owned());
        }
    }
    found.filter(|t| !t.is_empty()).ok_or(SignalError::Invalid(
        "the form field logout_token is missing",
    ))
}

/// Back-Channel Logout 1.0 §2.6, in its order.
async fn check(b: &Backchannel, keys: &IssuerKeys, form: &[u8]) -> Result<Checked, SignalError> {
    let token = logout_token(form)?;
    let signed = verify_signed(keys, &token).await.map_err(key_error)?;
    check_typ(signed.typ.as_deref(), "logout+jwt")?;
    let claims = &signed.claims;
    check_iss_aud(claims, &keys.config.issuer, &b.audience)?;
    let leeway = keys.config.leeway_s.min(i64::MAX as u64) as i64;
    // Logout tokens are delivered at once: `iat` within the issuer's leeway of now.
    let iat = check_times(claims, leeway, 0)?;
    let jti = string_claim(claims, "jti").ok_or(SignalError::Invalid("jti is missing"))?;
    check_events(claims)?;
    if claims.contains_key("nonce") {
        return Err(SignalError::Invalid(
            "a logout token must not contain nonce",
        ));
    }
    let name = &keys.config.name;
    let target = match (string_claim(claims, "sid"), string_claim(claims, "sub")) {
        // With both, the session alone: the user may still be signed in elsewhere.
        (Some(sid), _) => Target::Session(Scoped::new(name, sid)),
        (None, Some(sub)) => Target::Subject(Scoped::new(name, sub), iat),
        (None, None) => return Err(SignalError::Invalid("a logout token needs sid or sub")),
    };
    Ok(Checked {
        target,
        replay_key: format!("bcl:{name}:{jti}"),
        // Acceptable only while now - iat <= leeway.
        until: iat.saturating_add(leeway).saturating_add(1),
    })
}

/// `events` is a JSON object with the back-channel logout member, itself an object.
fn check_events(claims: &Map<String, Value>) -> Result<(), SignalError> {
    match claims.get("events") {
        Some(Value::Object(ev)) => match ev.get(EVENT) {
            Some(Value::Object(_)) => Ok(()),
            Some(_) => Err(SignalError::Invalid(
                "the back-channel logout event is not a JSON object",
            )),
            None => Err(SignalError::Invalid(
                "events lacks the back-channel logout event",
            )),
        },
        Some(_) => Err(SignalError::Invalid("events is not a JSON object")),
        None => Err(SignalError::Invalid("events is missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_field() {
        assert_eq!(logout_token(b"logout_token=a.b.c").unwrap(), "a.b.c");
        assert_eq!(logout_token(b"x=1&logout_token=a%2Eb.c").unwrap(), "a.b.c");
        assert!(logout_token(b"").is_err());
        assert!(logout_token(b"logout_token=").is_err());
        assert!(logout_token(b"logout_token=a&logout_token=b").is_err());
    }

    #[test]
    fn events_member() {
        let c = |v: Value| v.as_object().unwrap().clone();
        assert!(check_events(&c(serde_json::json!({"events": {EVENT: {}}}))).is_ok());
        assert!(check_events(&c(serde_json::json!({"events": {EVENT: "x"}}))).is_err());
        assert!(check_events(&c(serde_json::json!({"events": {}}))).is_err());
        assert!(check_events(&c(serde_json::json!({}))).is_err());
    }
}
