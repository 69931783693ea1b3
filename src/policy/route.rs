//! Routing: exact host (when a route names one), then the longest path prefix on a segment
//! boundary. Lookup is a handful of hash probes (one per path segment), whatever the number
//! of routes. Also picks the upstream (strict round robin) and rewrites the path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::config::{RouteConfig, UpstreamUrl};
use crate::ops::otel::RouteNames;
use crate::path::host_without_port;
use crate::policy::limit::RateLimit;

/// A route with its run-time state.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// Position in the config (metrics label index).
    pub index: usize,
    /// The route's `rate_limit` buckets (this replica's).
    pub limit: Option<RateLimit>,
    next: AtomicUsize,
    /// Its span names, made by the first traced request (tracing on).
    trace_names: OnceLock<RouteNames>,
}

impl Route {
    /// The names its requests' server spans end with (`GET api`, `http.route`).
    pub fn trace_names(&self) -> &RouteNames {
        self.trace_names
            .get_or_init(|| RouteNames::new(&self.config.name))
    }

    /// Upstreams in round-robin order starting with this request's turn, with their index
    /// in the route's `upstreams`.
    pub fn pick(&self) -> impl Iterator<Item = (usize, &UpstreamUrl)> {
        let n = self.config.upstreams.len();
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| {
            let at = (start + i) % n;
            (at, &self.config.upstreams[at])
        })
    }

    /// Whether the path sent upstream differs from the client's (`strip_prefix`).
    pub fn rewrites_path(&self) -> bool {
        self.config.strip_prefix && self.config.path_prefix != "/"
    }

    /// The path (and query) to send upstream: prefix stripped when configured, then the
    /// upstream's base path prepended.
    pub fn upstream_path(&self, upstream: &UpstreamUrl, path: &str, query: Option<&str>) -> String {
        let rest = if self.rewrites_path() {
            let r = &path[self.config.path_prefix.len().min(path.len())..];
            if r.is_empty() {
                "/"
            } else {
                r
            }
        } else {
            path
        };
        let mut out = String::with_capacity(
            upstream.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
        );
        out.push_str(&upstream.base_path);
        out.push_str(rest);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// Route prefixes of one host. Hashed with foldhash, not the default SipHash: the table is
/// written once at start (or reload) and only read after, so a client's paths cannot grow
/// its chains, and a request's two or three look-ups cost a third as much (issue 19).
#[derive(Default, Debug)]
struct PrefixTable(HashMap<String, usize, foldhash::fast::RandomState>);

impl PrefixTable {
    /// Longest prefix of `path` that ends on a segment boundary.
    fn longest(&self, path: &str) -> Option<usize> {
        if self.0.is_empty() {
            return None;
        }
        let mut candidate = path.trim_end_matches('/');
        loop {
            if candidate.is_empty() {
                return self.0.get("/").copied();
            }
            if let Some(&i) = self.0.get(candidate) {
                return Some(i);
            }
            match candidate.rfind('/') {
                Some(pos) => candidate = &candidate[..pos],
                None => return self.0.get("/").copied(),
            }
        }
    }
}

/// The route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    by_host: HashMap<String, PrefixTable, foldhash::fast::RandomState>,
    any_host: PrefixTable,
}

impl Router {
    pub fn new(configs: Vec<RouteConfig>) -> Router {
        let mut by_host: HashMap<String, PrefixTable, _> = HashMap::default();
        let mut any_host = PrefixTable::default();
        let routes: Vec<Route> = configs
            .into_iter()
            .enumerate()
            .map(|(index, config)| Route {
                limit: config.rate_limit.as_ref().map(RateLimit::new),
                config,
                index,
                next: AtomicUsize::new(0),
                trace_names: OnceLock::new(),
            })
            .collect();
        for (i, r) in routes.iter().enumerate() {
            let table = match &r.config.host {
                Some(h) => by_host.entry(h.clone()).or_default(),
                None => &mut any_host,
            };
            table.0.insert(r.config.path_prefix.clone(), i);
        }
        Router {
            routes,
            by_host,
            any_host,
        }
    }

    /// Routes whose `host` equals the request's host are tried first; routes without a
    /// host are the fallback.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        if !self.by_host.is_empty() {
            if let Some(h) = host {
                let h = host_without_port(h);
                // `api.example.` is `api.example` (the root label), as nginx treats it.
                let h = h.strip_suffix('.').unwrap_or(h);
                let table = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.by_host.get(&h.to_ascii_lowercase())
                } else {
                    self.by_host.get(h)
                };
                if let Some(i) = table.and_then(|t| t.longest(path)) {
                    return Some(&self.routes[i]);
                }
            }
        }
        self.any_host.longest(path).map(|i| &self.routes[i])
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_upstream, AuthMode};
    use std::time::Duration;

    fn rc(name: &str, host: Option<&str>, prefix: &str, strip: bool) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host: host.map(str::to_string),
            path_prefix: prefix.into(),
            upstreams: vec![parse_upstream("http://127.0.0.1:1").unwrap()],
            strip_prefix: strip,
            auth: AuthMode::None,
            scopes: vec![],
            timeout: Duration::from_secs(1),
            rate_limit: None,
            cors: None,
            login: false,
            sender_constraint: Default::default(),
            allow: None,
            require_claims: vec![],
        }
    }

    fn name<'a>(r: &'a Router, host: Option<&str>, path: &str) -> Option<&'a str> {
        r.find(host, path).map(|r| &*r.config.name)
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let r = Router::new(vec![
            rc("root", None, "/", false),
            rc("api", None, "/api", false),
            rc("orders", None, "/api/orders", false),
        ]);
        assert_eq!(name(&r, None, "/api/orders"), Some("orders"));
        assert_eq!(name(&r, None, "/api/orders/7"), Some("orders"));
        assert_eq!(name(&r, None, "/api/orders/"), Some("orders"));
        assert_eq!(name(&r, None, "/api/ordersX"), Some("api"));
        assert_eq!(name(&r, None, "/apix"), Some("root"));
        assert_eq!(name(&r, None, "/"), Some("root"));
    }

    #[test]
    fn no_match_without_root() {
        let r = Router::new(vec![rc("api", None, "/api", false)]);
        assert_eq!(name(&r, None, "/other"), None);
        assert_eq!(name(&r, None, "/ap"), None);
    }

    #[test]
    fn host_routes_first_then_any_host() {
        let r = Router::new(vec![
            rc("any", None, "/api", false),
            rc("a", Some("a.example"), "/api", false),
        ]);
        assert_eq!(name(&r, Some("A.example:8443"), "/api/x"), Some("a"));
        assert_eq!(name(&r, Some("a.example."), "/api/x"), Some("a"));
        assert_eq!(name(&r, Some("a.example.:8443"), "/api/x"), Some("a"));
        assert_eq!(name(&r, Some("b.example"), "/api/x"), Some("any"));
        assert_eq!(name(&r, None, "/api/x"), Some("any"));
    }

    #[test]
    fn strip_prefix_and_base_path() {
        let r = Router::new(vec![rc("s", None, "/api", true)]);
        let route = r.find(None, "/api/x").unwrap();
        let up = parse_upstream("http://u/base").unwrap();
        assert_eq!(
            route.upstream_path(&up, "/api/x", Some("q=1")),
            "/base/x?q=1"
        );
        assert_eq!(route.upstream_path(&up, "/api", None), "/base/");
    }

    #[test]
    fn round_robin_is_strict() {
        let mut c = rc("rr", None, "/", false);
        c.upstreams = vec![
            parse_upstream("http://a").unwrap(),
            parse_upstream("http://b").unwrap(),
        ];
        let r = Router::new(vec![c]);
        let route = r.find(None, "/").unwrap();
        let firsts: Vec<String> = (0..4)
            .map(|_| route.pick().next().unwrap().1.authority.to_string())
            .collect();
        assert_eq!(firsts, ["a", "b", "a", "b"]);
    }

    #[test]
    fn ten_thousand_routes() {
        let routes = (0..10_000)
            .map(|i| rc(&format!("r{i}"), None, &format!("/svc{i}/v1"), false))
            .collect();
        let r = Router::new(routes);
        assert_eq!(name(&r, None, "/svc9999/v1/items/1"), Some("r9999"));
        assert_eq!(name(&r, None, "/svc10000/v1"), None);
    }
}
