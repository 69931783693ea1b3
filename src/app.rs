//! `App`: the live state built from one validated `Config` (route table, verifier), shared
//! by every worker. Built off the hot path; held in an `ArcSwap` so it can be replaced whole.

use std::sync::Arc;

use crate::capacity::Connections;
use crate::config::Config;
use crate::identity::anomaly::Detector;
use crate::identity::assertion::Minter;
use crate::identity::auth::Verifier;
use crate::identity::jwks::IssuerKeys;
use crate::identity::refresh::Refresher;
use crate::identity::revocation::Revocations;
use crate::ops::metrics::Metrics;
use crate::policy::route::Router;
use crate::policy::rules::Rules;

/// How often rate limiters forget clients whose bucket has refilled.
const LIMIT_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a request needs that comes from configuration.
pub struct App {
    pub config: Config,
    pub router: Router,
    /// Routes' `allow` and `require_claims`.
    pub rules: Rules,
    pub verifier: Verifier,
    pub revocations: Arc<Revocations>,
    /// Present when `[refresh]` names a token endpoint.
    pub refresher: Option<Refresher>,
    /// Present with `[anomaly]`.
    pub anomaly: Option<Detector>,
    /// Present with `identity.assertion_key`.
    pub assertions: Option<Minter>,
    /// Present with `[login]`: sign-in at the edge.
    pub login: Option<crate::identity::login::SignIn>,
    /// Sender-constrained tokens (DPoP proofs, certificate binding) and the replay cache.
    pub sender: crate::identity::sender::SenderCheck,
    /// Present with a back-channel logout path or `[signals]`.
    pub signals: Option<crate::identity::signals::Receiver>,
    pub metrics: Metrics,
    /// Connection caps: kept across reloads, like the revocation state.
    pub connections: Arc<Connections>,
    /// Stops this App's background tasks (JWKS) when it is replaced or the gateway stops.
    stop: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// Build the live state around the (long-lived) revocation state and connection caps.
    pub fn new(
        config: Config,
        revocations: Arc<Revocations>,
        connections: Arc<Connections>,
    ) -> App {
        let issuers = config
            .issuers
            .iter()
            .cloned()
            .map(|c| Arc::new(IssuerKeys::new(c)))
            .collect();
        let decisions = crate::ops::metrics::PolicyDecisions::default();
        let rules = Rules::new(&config.routes, &decisions);
        let verifier = Verifier::new(
            issuers,
            config.identity.clone(),
            config.server.token_cache_bytes,
        )
        .keep_claims(rules.any())
        .with_introspection(config.revocation.on_error);
        let router = Router::new(config.routes.clone());
        let redis = revocations
            .connector()
            .map(|c| (&config.revocation, c.clone()));
        let discovered = |i: Option<usize>| {
            let issuer = verifier.issuers().get(i?)?;
            issuer.discovery().cloned()
        };
        let refresher = config.refresh.as_ref().and_then(|r| {
            Refresher::new(r, redis.clone())
                .map(|f| f.with_discovery(discovered(r.discovery_issuer)))
        });
        let login = config.login.as_ref().map(|l| {
            crate::identity::login::SignIn::new(l.clone(), verifier.issuers()[l.issuer].clone())
        });
        let signals = crate::identity::signals::Receiver::new(
            &config,
            verifier.issuers(),
            revocations.clone(),
        );
        let names: Vec<String> = config.routes.iter().map(|r| r.name.to_string()).collect();
        let mut metrics = Metrics::new(&names);
        if rules.any() {
            decisions.register(&mut metrics);
        }
        if let Some(c) = verifier.introspection_calls() {
            metrics.register_counter(
                "introspection_calls",
                "Calls to the RFC 7662 introspection endpoint (cache misses within the rate limit)",
                None,
                c,
            );
        }
        let upstream_counts: Vec<(&str, usize)> = config
            .routes
            .iter()
            .map(|r| (&*r.name, r.upstreams.len()))
            .collect();
        metrics.add_upstreams(&upstream_counts);
        for i in verifier.issuers() {
            if let Some(c) = i.fetch_counter() {
                metrics.register_counter(
                    "jwks_fetches",
                    "JWKS fetch attempts",
                    Some(("issuer", &i.config.name)),
                    c,
                );
            }
        }
        metrics.register_counter(
            "revocation_lookups",
            "Revocation store lookups (cache misses)",
            None,
            revocations.lookups.clone(),
        );
        metrics.register_counter(
            "revocation_subscriptions",
            "Subscriptions to the revocations channel (the first, and one after each loss or primary change)",
            None,
            revocations.subscriptions.clone(),
        );
        metrics.register_counter(
            "revocation_unreplicated",
            "Revocations answered 503 because WAIT saw fewer than min_replicas replicas",
            None,
            revocations.unreplicated.clone(),
        );
        if let Some(c) = revocations.connector() {
            metrics.register_counter(
                "revocation_store_connects",
                "Connections made to the revocation store's primary",
                None,
                c.connects.clone(),
            );
        }
        metrics.register_counter(
            "revocation_allowed_unchecked",
            "Requests let through unchecked while the store was down (on_error = allow)",
            None,
            revocations.allowed_unchecked.clone(),
        );
        for (listener, limit) in connections.by_listener() {
            metrics.register_counter(
                "connections_refused",
                "Connections closed at accept because the listener's connection cap was reached",
                Some(("listener", listener)),
                limit.refused.clone(),
            );
        }
        let sender = crate::identity::sender::SenderCheck::new(
            &config.tokens,
            &config.revocation,
            revocations.connector(),
        );
        if config
            .routes
            .iter()
            .any(|r| r.sender_constraint != crate::config::SenderConstraint::Off)
        {
            register_sender(&mut metrics, &sender.counters);
        }
        let anomaly = config
            .anomaly
            .as_ref()
            .map(|a| Detector::new(a, config.max_leeway_s()));
        let assertions = config.identity.assertion.as_ref().map(Minter::new);
        if let Some(d) = &anomaly {
            for (kind, c) in [
                ("requests", &d.flagged_requests),
                ("networks", &d.flagged_networks),
            ] {
                metrics.register_counter(
                    "anomalies",
                    "Tokens flagged by [anomaly], by the limit they passed",
                    Some(("kind", kind)),
                    c.clone(),
                );
            }
        }
        let discovering: Vec<_> = verifier
            .issuers()
            .iter()
            .filter_map(|i| i.discovery().cloned())
            .collect();
        if !discovering.is_empty() {
            metrics.register_metric(
                "discovery_age",
                "Time since the issuer's OIDC discovery document was last fetched successfully",
                Some(prometheus_client::registry::Unit::Seconds),
                crate::identity::oidc::AgeGauge(discovering.clone()),
            );
            metrics.register_metric(
                "discovery_failures",
                "OIDC discovery fetches not used, by issuer and reason",
                None,
                crate::identity::oidc::FailureCounter(discovering),
            );
        }
        if let Some(l) = &login {
            metrics.register_metric(
                "logins",
                "Sign-ins at the edge: started, completed, failed (by reason)",
                None,
                l.logins.clone(),
            );
        }
        if let Some(s) = &signals {
            metrics.register_metric(
                "idp_signals",
                "Back-channel logout tokens and security events from the identity provider, by event type and outcome",
                None,
                s.counts.clone(),
            );
            if let Some(c) = s.own_keys().and_then(|k| k.fetch_counter()) {
                metrics.register_counter(
                    "jwks_fetches",
                    "JWKS fetch attempts",
                    Some(("issuer", "[signals]")),
                    c,
                );
            }
        }
        if let Some(r) = &refresher {
            metrics.register_counter(
                "refresh_grants",
                "Calls to the token endpoint",
                None,
                r.grants.clone(),
            );
        }
        App {
            stop: tokio::sync::watch::channel(false).0,
            metrics,
            connections,
            refresher,
            anomaly,
            assertions,
            login,
            sender,
            signals,
            config,
            router,
            rules,
            verifier,
            revocations,
        }
    }

    /// Start this App's background tasks (JWKS fetchers, rate-limit sweeps) on the current
    /// runtime.
    pub fn start_background(self: &Arc<Self>, client: &crate::net::Client) {
        for issuer in self.verifier.issuers() {
            if let Some(d) = issuer.discovery() {
                tokio::spawn(d.clone().run(client.clone(), self.stop.subscribe()));
            }
            tokio::spawn(
                issuer
                    .clone()
                    .run_jwks(client.clone(), self.stop.subscribe()),
            );
        }
        if let Some(k) = self.signals.as_ref().and_then(|s| s.own_keys()) {
            tokio::spawn(k.clone().run_jwks(client.clone(), self.stop.subscribe()));
        }
        if self.router.routes().iter().any(|r| r.limit.is_some()) || self.refresher.is_some() {
            let app = Arc::downgrade(self);
            let mut stop = self.stop.subscribe();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(LIMIT_SWEEP_EVERY);
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    let Some(app) = app.upgrade() else { return };
                    for l in app.router.routes().iter().filter_map(|r| r.limit.as_ref()) {
                        l.forget_idle();
                    }
                    if let Some(r) = &app.refresher {
                        r.forget_idle();
                    }
                }
            });
        }
    }

    /// Stop this App's background tasks.
    pub fn stop_background(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether a request's path can start spans of its own with tracing on (Redis calls,
    /// refresh grants): only then does it run inside its server span's context
    /// (`otel::within`). A new `otel::Span` on the request path must be counted here;
    /// tests/otel.rs checks that each one is a child of the request's span.
    pub fn traces_calls(&self) -> bool {
        self.revocations.traces_calls() || self.refresher.is_some()
    }

    /// Every issuer has a key set.
    pub fn keys_ready(&self) -> bool {
        self.verifier.issuers().iter().all(|i| i.is_loaded())
    }

    /// Every metric in `format`, with gauges read from live state now.
    pub fn render_metrics(&self, format: crate::ops::exposition::Format) -> String {
        for i in self.verifier.issuers() {
            self.metrics
                .keys_loaded
                .get_or_create(&vec![("issuer", i.config.name.clone())])
                .set(i.is_loaded() as i64);
        }
        self.metrics
            .revocation_store_up
            .set(self.revocations.store_up() as i64);
        self.metrics
            .revocation_circuit_open
            .set(!self.revocations.store_up() as i64);
        for i in self.verifier.issuers() {
            if let Some(age) = i.jwks_age() {
                self.metrics
                    .jwks_age
                    .get_or_create(&vec![("issuer", i.config.name.clone())])
                    .set(age.as_secs_f64());
            }
        }
        self.metrics
            .verified_tokens_cached
            .set(self.verifier.cached_tokens());
        if let Some(t) = &self.config.tls_files {
            self.metrics
                .tls_cert_not_after
                .get_or_create(&vec![("listener", "https".to_string())])
                .set(t.source.not_after());
        }
        for (listener, limit) in self.connections.by_listener() {
            self.metrics
                .connections_active
                .get_or_create(&vec![("listener", listener.to_string())])
                .set(i64::try_from(limit.active()).unwrap_or(i64::MAX));
        }
        self.metrics.encode(format)
    }

    /// Keys loaded and the revocation store answering (or failures allowed through).
    pub fn ready(&self) -> bool {
        self.keys_ready() && self.revocations.is_ready()
    }
}

/// `jwtgate_dpop_proofs_total{result}` (accepted, replayed, or the check that failed),
/// `jwtgate_mtls_bindings_total{result}`, `jwtgate_unbound_tokens_refused_total`.
fn register_sender(metrics: &mut Metrics, c: &crate::identity::sender::Counters) {
    const DPOP: &str =
        "DPoP proofs checked, by result: accepted, replayed, or the check that failed";
    metrics.register_counter(
        "dpop_proofs",
        DPOP,
        Some(("result", "accepted")),
        c.dpop_accepted.clone(),
    );
    metrics.register_counter(
        "dpop_proofs",
        DPOP,
        Some(("result", "replayed")),
        c.dpop_replayed.clone(),
    );
    for (e, counter) in crate::error::ProofError::ALL.iter().zip(&c.dpop_refused) {
        metrics.register_counter(
            "dpop_proofs",
            DPOP,
            Some(("result", e.label())),
            counter.clone(),
        );
    }
    const MTLS: &str = "Certificate-bound tokens checked (RFC 8705), by result";
    metrics.register_counter(
        "mtls_bindings",
        MTLS,
        Some(("result", "accepted")),
        c.mtls_accepted.clone(),
    );
    metrics.register_counter(
        "mtls_bindings",
        MTLS,
        Some(("result", "mismatch")),
        c.mtls_mismatch.clone(),
    );
    metrics.register_counter(
        "unbound_tokens_refused",
        "Tokens without cnf refused on sender_constraint = \"required\" routes",
        None,
        c.unbound_refused.clone(),
    );
}
