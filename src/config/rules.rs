//! A route's authorization rules as the file states them, checked: `allow` (a CEL
//! expression, compiled here once per load or reload, with every name it uses checked
//! against the vocabulary below) and `require_claims`. Evaluating them is
//! `policy::rules`'s job; this module only decides whether a rule may be loaded.

use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// The variables a rule may read.
pub const VARIABLES: [&str; 3] = ["claims", "request", "route"];

/// The helper functions `policy::rules` adds to CEL's standard library.
pub const HELPERS: [&str; 3] = ["has_scope", "in_group", "glob"];

/// CEL's standard functions, operators and macros (cel 0.15 with default features off: no
/// regex `matches`, no timestamps or durations). A call to any other name is refused at
/// load, since it could only fail at run time.
const STANDARD: [&str; 31] = [
    "contains",
    "size",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "startsWith",
    "endsWith",
    "string",
    "int",
    "uint",
    "double",
    "bytes",
    "bool",
    "type",
    "dyn",
    "max",
    "min",
    "@in",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_&&_",
    "_||_",
    "!_",
    "_?_:_",
];

/// Operators other than comparisons and logic (arithmetic, indexing, negation).
const OPERATORS: [&str; 8] = [
    "_+_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "-_",
    "_[_]",
    "@not_strictly_false",
];

/// `allow = "enforce"` refuses; `"shadow"` evaluates, counts and logs, and serves anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowMode {
    Enforce,
    Shadow,
}

impl AllowMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AllowMode::Enforce => "enforce",
            AllowMode::Shadow => "shadow",
        }
    }
}

/// A compiled `allow` rule. The source is kept for `Debug` (reload compares routes by it)
/// and for operators' logs, never for a client.
#[derive(Clone)]
pub struct AllowRule {
    pub source: String,
    pub program: Arc<cel::Program>,
    pub mode: AllowMode,
    /// The `request` fields the rule reads (`REQUEST_FIELDS` order): only those are built
    /// per request. All of them when the rule uses `request` other than as `request.x`.
    pub reads: [bool; 6],
}

/// The fields of `request`, in `AllowRule::reads` order.
pub const REQUEST_FIELDS: [&str; 6] =
    ["method", "path", "segments", "host", "headers", "client_ip"];

impl AllowRule {
    /// Whether the rule reads `request.<field>`.
    pub fn reads(&self, field: &str) -> bool {
        REQUEST_FIELDS
            .iter()
            .position(|f| *f == field)
            .is_some_and(|i| self.reads[i])
    }
}

impl std::fmt::Debug for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AllowRule({:?}, {})", self.source, self.mode.as_str())
    }
}

/// One `require_claims` entry: the claim (a top-level name) and the values it must have.
/// A string claim must equal a value; an array claim must contain it; with several values,
/// every one must match.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequirement {
    pub claim: String,
    pub values: Vec<serde_json::Value>,
}

/// Compile `source` and check every name it uses. The error says where (line and column
/// of the rule) and what.
pub fn compile(source: &str) -> Result<AllowRule, String> {
    if source.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let program = cel::Program::compile(source).map_err(|e| {
        let first = e.errors.first();
        match first {
            Some(p) => format!(
                "does not compile: line {}, column {}: {}",
                p.pos.0, p.pos.1, p.msg
            ),
            None => "does not compile".into(),
        }
    })?;
    let mut bound = Vec::new();
    let mut reads = [false; 6];
    check(program.expression(), &mut bound, &mut reads, &|id| {
        position(source, &program, id)
    })?;
    Ok(AllowRule {
        source: source.to_string(),
        program: Arc::new(program),
        mode: AllowMode::Enforce,
        reads,
    })
}

/// `line L, column C` of the node `id` in `source` (1-based; columns count characters).
fn position(source: &str, program: &cel::Program, id: u64) -> String {
    let Some((start, _)) = program.source_info().offset_for(id) else {
        return "somewhere".into();
    };
    let mut line = 1;
    let mut column = 1;
    for (i, c) in source.chars().enumerate() {
        if i as u32 == start {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    format!("line {line}, column {column}")
}

fn check(
    e: &IdedExpr,
    bound: &mut Vec<String>,
    reads: &mut [bool; 6],
    at: &dyn Fn(u64) -> String,
) -> Result<(), String> {
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) => Ok(()),
        Expr::Ident(name) => {
            if name == "request" && !bound.iter().any(|b| b == name) {
                // Used whole (passed on, indexed): every field.
                *reads = [true; 6];
            }
            if name.starts_with('@')
                || VARIABLES.contains(&name.as_str())
                || bound.iter().any(|b| b == name)
            {
                Ok(())
            } else {
                Err(format!(
                    "{}: unknown variable `{name}` (a rule may read {})",
                    at(e.id),
                    VARIABLES.join(", ")
                ))
            }
        }
        Expr::Select(s) => {
            let on_request = matches!(&s.operand.expr, Expr::Ident(n) if n == "request")
                && !bound.iter().any(|b| b == "request");
            match REQUEST_FIELDS.iter().position(|f| *f == s.field) {
                Some(i) if on_request => {
                    reads[i] = true;
                    Ok(())
                }
                _ => check(&s.operand, bound, reads, at),
            }
        }
        Expr::Call(c) => {
            let name = c.func_name.as_str();
            if !(STANDARD.contains(&name) || OPERATORS.contains(&name) || HELPERS.contains(&name)) {
                return Err(format!(
                    "{}: unknown function `{name}` (helpers: {})",
                    at(e.id),
                    HELPERS.join(", ")
                ));
            }
            if let Some(t) = &c.target {
                check(t, bound, reads, at)?;
            }
            for a in &c.args {
                check(a, bound, reads, at)?;
            }
            Ok(())
        }
        Expr::Comprehension(c) => {
            check(&c.iter_range, bound, reads, at)?;
            check(&c.accu_init, bound, reads, at)?;
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            let out = check(&c.loop_cond, bound, reads, at)
                .and_then(|()| check(&c.loop_step, bound, reads, at))
                .and_then(|()| check(&c.result, bound, reads, at));
            bound.truncate(before);
            out
        }
        Expr::List(l) => l
            .elements
            .iter()
            .try_for_each(|x| check(x, bound, reads, at)),
        Expr::Map(m) => m.entries.iter().try_for_each(|x| match &x.expr {
            EntryExpr::MapEntry(me) => {
                check(&me.key, bound, reads, at).and_then(|()| check(&me.value, bound, reads, at))
            }
            EntryExpr::StructField(f) => check(&f.value, bound, reads, at),
        }),
        Expr::Struct(_) => Err(format!(
            "{}: message literals are not supported in rules",
            at(e.id)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rules_compile() {
        for r in [
            r#"claims.groups.exists(g, g == "admin") || request.method == "GET""#,
            r#"has_scope("read") && in_group("ops")"#,
            r#"request.segments[1] == claims.tenant"#,
            r#"glob("/api/*/x", request.path) && route.name == "api""#,
            r#"has(claims.amr) && "mfa" in claims.amr"#,
            r#"request.headers["x-env"] == "prod""#,
        ] {
            let rule = compile(r).unwrap_or_else(|e| panic!("{r}: {e}"));
            assert_eq!(rule.reads("headers"), r.contains("headers"), "{r}");
            assert_eq!(rule.reads("method"), r.contains("method"), "{r}");
        }
    }

    #[test]
    fn a_rule_that_uses_request_whole_gets_every_field() {
        let rule = compile("size(request) > 0").unwrap();
        assert!(rule.reads.iter().all(|r| *r));
        let rule = compile("request.path == \"/\"").unwrap();
        assert_eq!(rule.reads, [false, true, false, false, false, false]);
    }

    #[test]
    fn bad_rules_name_the_position() {
        let e = compile("claims.sub == ").unwrap_err();
        assert!(e.starts_with("does not compile: line 1, column"), "{e}");
        let e = compile("claims.sub == user.name").unwrap_err();
        assert_eq!(
            e,
            "line 1, column 15: unknown variable `user` (a rule may read claims, request, route)"
        );
        let e = compile("request.method == \"GET\" &&\n  nope(1)").unwrap_err();
        assert!(e.starts_with("line 2, column "), "{e}");
        assert!(e.contains("unknown function `nope`"), "{e}");
        // A comprehension's variable is bound only inside it.
        assert!(compile("claims.groups.exists(g, g == \"a\") && g == \"b\"").is_err());
        assert!(compile("  ").is_err());
    }
}
