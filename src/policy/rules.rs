//! A route's authorization rules at run time: `require_claims`, then the `allow` CEL rule
//! (compiled at load by `config::rules`), over the verified token's claims, the request
//! and the route. Enforced rules refuse with 403 `access_denied`; a shadow rule is
//! evaluated, counted and logged, and the request is served anyway. A rule that fails at
//! run time (a missing claim, a type mismatch) denies, logged once per route per minute.
//!
//! Cost: the token's claims become CEL values once per token (kept with the cached
//! `Verified`); per request only a small `request` map is built, and only on routes with a
//! rule.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull};
use cel::common::types::{CelString, CelUInt};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, FunctionContext};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value as Json;

use crate::config::rules::{AllowMode, AllowRule, ClaimRequirement};
use crate::config::RouteConfig;
use crate::error::GatewayError;
use crate::identity::auth::Verified;
use crate::ops::metrics::PolicyDecisions;

/// A run-time failure of a route's rule is logged at most once in this many seconds.
const LOG_EVERY_S: i64 = 60;

/// Headers a rule never sees: credentials (an error message could otherwise carry one to
/// the log).
const HIDDEN_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// The request as a rule sees it.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Normalised, as routing saw it.
    pub path: &'a str,
    /// Lower-case, without port.
    pub host: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub client_ip: IpAddr,
}

/// Every route's rules (index = route index; `None` for a route without any).
pub struct Rules {
    routes: Vec<Option<RouteRules>>,
    /// CEL's standard library and the helpers; each evaluation is a child scope of it.
    base: Context<'static, 'static>,
}

struct RouteRules {
    name: String,
    allow: Option<AllowRule>,
    require: Vec<ClaimRequirement>,
    /// `route` as CEL sees it.
    route_val: Box<dyn Val>,
    /// [allow, deny, error] in the rule's mode; `require_denied` in enforce.
    counted: [Counter; 3],
    require_denied: Counter,
    /// Unix second of the last logged failure / shadow denial.
    logged_error: AtomicI64,
    logged_shadow: AtomicI64,
}

/// The claims as CEL values, built once per token (`Verified::rule_view`).
struct ClaimsView {
    claims: Box<dyn Val>,
    scopes: Box<dyn Val>,
    groups: Box<dyn Val>,
}

/// How one request fared against its route's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    Error,
}

impl Rules {
    /// The rules of `routes`, with their decision counters in `decisions`.
    pub fn new(routes: &[RouteConfig], decisions: &PolicyDecisions) -> Rules {
        let mut base = Context::default();
        // The names are CEL-unique (`config::rules::HELPERS`), so adding cannot fail.
        let _ = base.add_function("has_scope", has_scope);
        let _ = base.add_function("in_group", in_group);
        let _ = base.add_function("glob", glob_fn);
        let routes = routes
            .iter()
            .map(|r| {
                if r.allow.is_none() && r.require_claims.is_empty() {
                    return None;
                }
                let mode = r.allow.as_ref().map_or(AllowMode::Enforce, |a| a.mode);
                let mut route = HashMap::new();
                route.insert(
                    CelMapKey::from("name".to_string()),
                    Box::new(CelString::from(r.name.to_string())) as Box<dyn Val>,
                );
                Some(RouteRules {
                    name: r.name.to_string(),
                    allow: r.allow.clone(),
                    require: r.require_claims.clone(),
                    route_val: Box::new(CelMap::from(route)),
                    counted: ["allow", "deny", "error"]
                        .map(|d| decisions.counter(&r.name, d, mode.as_str())),
                    require_denied: decisions.counter(&r.name, "deny", "enforce"),
                    logged_error: AtomicI64::new(i64::MIN),
                    logged_shadow: AtomicI64::new(i64::MIN),
                })
            })
            .collect();
        Rules { routes, base }
    }

    /// Whether any route has rules (then the verifier keeps claims).
    pub fn any(&self) -> bool {
        self.routes.iter().any(Option::is_some)
    }

    /// Check route `index`'s rules for this caller and request. `Ok` on a route without
    /// rules, on an allowed request and on a shadow denial.
    pub fn check(
        &self,
        index: usize,
        v: &Verified,
        request: &RequestFacts<'_>,
    ) -> Result<(), GatewayError> {
        let Some(Some(r)) = self.routes.get(index) else {
            return Ok(());
        };
        let denied = || GatewayError::AccessDenied {
            route: r.name.clone(),
        };
        if !r.require.is_empty() {
            let ok = v
                .claims
                .as_ref()
                .is_some_and(|c| r.require.iter().all(|q| satisfies(c, q)));
            if !ok {
                r.require_denied.inc();
                return Err(denied());
            }
        }
        let Some(rule) = &r.allow else {
            return Ok(());
        };
        let outcome = match self.evaluate(rule, r, v, request) {
            Ok(true) => Outcome::Allow,
            Ok(false) => Outcome::Deny,
            Err(e) => {
                if once_per_window(&r.logged_error) {
                    tracing::warn!(
                        route = %r.name,
                        mode = rule.mode.as_str(),
                        error = %e,
                        "allow rule failed at run time; the request counts as denied (logged once a minute per route)"
                    );
                }
                Outcome::Error
            }
        };
        r.counted[outcome as usize].inc();
        match (outcome, rule.mode) {
            (Outcome::Allow, _) => Ok(()),
            (_, AllowMode::Enforce) => Err(denied()),
            (_, AllowMode::Shadow) => {
                if outcome == Outcome::Deny && once_per_window(&r.logged_shadow) {
                    tracing::info!(
                        route = %r.name,
                        sub = %v.sub,
                        "shadow allow rule would deny this request; served (logged once a minute per route, counted in jwtgate_policy_decisions_total)"
                    );
                }
                Ok(())
            }
        }
    }

    fn evaluate(
        &self,
        rule: &AllowRule,
        r: &RouteRules,
        v: &Verified,
        request: &RequestFacts<'_>,
    ) -> Result<bool, String> {
        let view = v
            .rule_view
            .get_or_init(|| Box::new(claims_view(v)))
            .downcast_ref::<ClaimsView>()
            .ok_or("claims view of another type")?;
        let vars = Vars {
            claims: view.claims.as_ref(),
            scopes: view.scopes.as_ref(),
            groups: view.groups.as_ref(),
            request: request_map(request, rule),
            route: r.route_val.as_ref(),
        };
        let base: &Context<'_, '_> = &self.base;
        let mut ctx = base.new_inner_scope();
        ctx.set_variable_resolver(&vars);
        match rule.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(_) => Err("the rule did not give a bool".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// True once per `LOG_EVERY_S` per counter (racing threads: one of them).
fn once_per_window(last: &AtomicI64) -> bool {
    let now = crate::clock::now_unix();
    let prev = last.load(Ordering::Relaxed);
    now.saturating_sub(prev) >= LOG_EVERY_S
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// `require_claims`: a string (number, bool) claim equals the value; an array claim
/// contains it. Every listed value must match.
fn satisfies(claims: &serde_json::Map<String, Json>, q: &ClaimRequirement) -> bool {
    let Some(c) = claims.get(&q.claim) else {
        return false;
    };
    q.values.iter().all(|want| match c {
        Json::Array(items) => items.contains(want),
        one => one == want,
    })
}

/// The variables of one evaluation; the helpers read `__scopes` and `__groups`.
struct Vars<'a> {
    claims: &'a dyn Val,
    scopes: &'a dyn Val,
    groups: &'a dyn Val,
    request: CelMap<'a>,
    route: &'a dyn Val,
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let v: &'b dyn Val = match variable {
            "claims" => self.claims,
            "request" => &self.request,
            "route" => self.route,
            "__scopes" => self.scopes,
            "__groups" => self.groups,
            _ => return None,
        };
        Some(CowVal::Borrowed(v))
    }
}

fn claims_view(v: &Verified) -> ClaimsView {
    let claims = match &v.claims {
        Some(c) => object(c),
        None => Box::new(CelMap::from(HashMap::new())),
    };
    let strings = |list: &mut dyn Iterator<Item = &str>| -> Box<dyn Val> {
        Box::new(CelList::from(
            list.map(|s| Box::new(CelString::from(s.to_string())) as Box<dyn Val>)
                .collect::<Vec<_>>(),
        ))
    };
    let scopes = strings(&mut v.scopes.iter().map(String::as_str));
    // `groups`: an array of strings, or one string.
    let groups = match v.claims.as_ref().and_then(|c| c.get("groups")) {
        Some(Json::Array(a)) => strings(&mut a.iter().filter_map(Json::as_str)),
        Some(Json::String(s)) => strings(&mut std::iter::once(s.as_str())),
        _ => strings(&mut std::iter::empty()),
    };
    ClaimsView {
        claims,
        scopes,
        groups,
    }
}

fn object(m: &serde_json::Map<String, Json>) -> Box<dyn Val> {
    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = m
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.clone()), json(v)))
        .collect();
    Box::new(CelMap::from(map))
}

/// JSON as CEL: integers as `int` (`uint` beyond i64), other numbers as `double`.
fn json(v: &Json) -> Box<dyn Val> {
    match v {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => Box::new(CelString::from(s.clone())),
        Json::Array(a) => Box::new(CelList::from(a.iter().map(json).collect::<Vec<_>>())),
        Json::Object(o) => object(o),
    }
}

/// `request`, with only the fields `rule` reads (`AllowRule::reads`). Strings borrow from
/// the request.
fn request_map<'a>(r: &RequestFacts<'a>, rule: &AllowRule) -> CelMap<'a> {
    let mut m: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
    let s = |x: &'a str| Box::new(CelString::from(x)) as Box<dyn Val + 'a>;
    if rule.reads("method") {
        m.insert(CelMapKey::from("method"), s(r.method));
    }
    if rule.reads("path") {
        m.insert(CelMapKey::from("path"), s(r.path));
    }
    if rule.reads("host") {
        m.insert(CelMapKey::from("host"), s(r.host.unwrap_or("")));
    }
    if rule.reads("client_ip") {
        m.insert(
            CelMapKey::from("client_ip"),
            Box::new(CelString::from(r.client_ip.to_string())),
        );
    }
    if rule.reads("segments") {
        let segments: Vec<Box<dyn Val + 'a>> =
            r.path.split('/').filter(|x| !x.is_empty()).map(s).collect();
        m.insert(
            CelMapKey::from("segments"),
            Box::new(CelList::from(segments)),
        );
    }
    if rule.reads("headers") {
        let mut h: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::new();
        for name in r.headers.keys() {
            if HIDDEN_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let values: Vec<&str> = r
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                continue;
            }
            h.insert(
                CelMapKey::from(name.as_str()),
                Box::new(CelString::from(values.join(", "))),
            );
        }
        m.insert(CelMapKey::from("headers"), Box::new(CelMap::from(h)));
    }
    CelMap::from(m)
}

/// Whether the list `__<which>` holds the string `want`.
fn list_has(ftx: &FunctionContext, which: &str, want: &str) -> bool {
    let Some(list) = ftx.ptx.get_variable(which) else {
        return false;
    };
    let Some(list) = (*list).downcast_ref::<CelList>() else {
        return false;
    };
    list.inner().iter().any(|x| {
        (**x)
            .downcast_ref::<CelString>()
            .is_some_and(|s| s.inner() == want)
    })
}

/// `has_scope("x")`: the token grants scope `x` (`scope` or `scp`).
fn has_scope(ftx: &FunctionContext, scope: Arc<String>) -> bool {
    list_has(ftx, "__scopes", &scope)
}

/// `in_group("x")`: the token's `groups` claim (an array, or one string) holds `x`.
fn in_group(ftx: &FunctionContext, group: Arc<String>) -> bool {
    list_has(ftx, "__groups", &group)
}

/// `glob(pattern, s)`: `*` matches within a path segment (no `/`), `**` across
/// segments, `?` one character other than `/`; anything else matches itself.
fn glob_fn(pattern: Arc<String>, s: Arc<String>) -> bool {
    glob(pattern.as_bytes(), s.as_bytes())
}

pub fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let seg = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=seg).any(|i| glob(rest, &s[i..]))
        }
        [b'?', rest @ ..] => matches!(s.first(), Some(&c) if c != b'/') && glob(rest, &s[1..]),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_segments() {
        assert!(glob(b"/api/*/x", b"/api/acme/x"));
        assert!(!glob(b"/api/*/x", b"/api/a/b/x"));
        assert!(glob(b"/api/**", b"/api/a/b/x"));
        assert!(glob(b"/a?c", b"/abc"));
        assert!(!glob(b"/a?c", b"/a/c"));
        assert!(!glob(b"/api", b"/api/"));
    }

    #[test]
    fn require_claims_arrays_contain_strings_equal() {
        let c = serde_json::json!({"groups": ["admin", "ops"], "tenant": "acme", "n": 3});
        let c = c.as_object().unwrap();
        let q = |claim: &str, v: serde_json::Value| ClaimRequirement {
            claim: claim.into(),
            values: match v {
                Json::Array(a) => a,
                o => vec![o],
            },
        };
        assert!(satisfies(c, &q("groups", serde_json::json!(["admin"]))));
        assert!(satisfies(
            c,
            &q("groups", serde_json::json!(["admin", "ops"]))
        ));
        assert!(!satisfies(
            c,
            &q("groups", serde_json::json!(["admin", "x"]))
        ));
        assert!(satisfies(c, &q("tenant", serde_json::json!("acme"))));
        assert!(!satisfies(c, &q("tenant", serde_json::json!("acm"))));
        assert!(satisfies(c, &q("n", serde_json::json!(3))));
        assert!(!satisfies(c, &q("missing", serde_json::json!("x"))));
    }
}
