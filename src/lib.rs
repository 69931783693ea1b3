//! jwtgate: an identity-aware edge gateway. A request goes
//! `http::listener` (accept, TLS) -> `http::conn` (cap, deadlines, drain) ->
//! `http::proxy::handle` (the request path) -> `pipeline::decide` (route, strip,
//! authenticate, refresh, sign-in) -> `http::forward` (upstream) -> `http::access` (log).
//! `http::authz` is the second front door: the same decision, answered instead of
//! forwarded. `config` turns gateway.toml into a validated `Config`; `app` holds the live
//! state. docs/ARCHITECTURE.md draws the layers.

// The request path is one chain of async fns (listener -> conn -> proxy -> decide -> the
// checks -> the store); proving its future `Send` takes rustc more than the default 128
// levels since sender constraints, Sentinel and IdP signals joined it.
#![recursion_limit = "256"]

// Layers, bottom first; a module imports only from its own layer's leaves and the layers
// below it (docs/ARCHITECTURE.md; `tools/layers.py` checks there is no cycle).
// 0. Shared values: the clock, ids, path normalisation (`error` is in layer 2: it builds
//    responses with `net::body`).
pub mod clock;
pub mod error;
pub(crate) mod ids;
pub mod path;
// 1. gateway.toml -> Config (no runtime module).
pub mod config;
// 2. Outbound HTTP and the body type; errors and their HTTP form; connection caps;
//    metrics (a leaf every layer may count in).
pub mod net;
// (connection caps)
pub(crate) mod capacity;
// 3. Per-request policy tables, and identity: keys, verification, revocation, leak
//    detection, assertions, refresh.
pub(crate) mod identity;
pub(crate) mod policy;
// 4. The live state, swapped whole on reload.
pub(crate) mod app;
// 5. The decision: steps 2-5 of the request path.
pub(crate) mod pipeline;
// 6. Front doors: listeners, proxy, forward-auth.
pub(crate) mod http;
// 7. Operating it, and the command line.
pub(crate) mod ops;
// (the command line's subcommands)
pub mod cli;

// What the binary and the tests use; everything else is the crate's own.
pub use cli::{certs, demo, token};
pub use identity::{auth, jwks, revocation, sender};
pub use net::body;
pub use ops::admin::{install_log_control, SetLogLevel};
pub use ops::logfields::TextFields;
pub use ops::logline::TextFormat;
pub use ops::logtime::LogTime;
pub use ops::logwriter::{self, LogWriter};
pub use ops::otel;
pub use ops::textline::install_text_sink;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;
use crate::http::listener::{self, Shared};

/// Failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {}", bind_reason(source))]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("revocation store: {0}")]
    Store(String),
}

/// The operator's words for the usual bind failure (another process listens there, see
/// `listener::bind`); the OS's own text otherwise.
fn bind_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
        _ => e.to_string(),
    }
}

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Running {
    pub https_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The forward-auth decision listener (`listen.authz`).
    pub authz_addr: Option<SocketAddr>,
    /// The read-only probes-and-metrics listener (`listen.metrics`).
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to `server.drain_s`), return when
    /// every worker has exited.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.shared.app.load().stop_background();
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }

    /// Ask the gateway to stop without waiting.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.shared.app.load().stop_background();
    }

    /// Re-read the config file and swap it in (see `reload::reload`).
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        ops::reload::reload(&self.shared).await
    }
}

/// Log "jwtgate ready" once every issuer has keys and the revocation store answers (what
/// /readyz reports), not only "serving" at bind.
async fn log_when_ready(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let started = std::time::Instant::now();
    loop {
        let app = shared.app.load_full();
        if app.ready() {
            let issuers: Vec<&str> = app
                .verifier
                .issuers()
                .iter()
                .map(|i| i.config.name.as_str())
                .collect();
            tracing::info!(
                issuers = %issuers.join(","),
                store = app.revocations.store_name(),
                took_ms = started.elapsed().as_millis() as u64,
                "jwtgate ready"
            );
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Bind every listener, start the workers, the admin API and the background tasks (JWKS).
/// Must be called inside a Tokio runtime, which hosts the admin API and background tasks.
pub async fn serve(config: Config) -> Result<Running, ServeError> {
    // Libraries that use rustls' process default (the Redis client) get the same provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let workers_n = config.server.worker_threads;
    let bind = |addr: SocketAddr, what| {
        listener::bind(addr, workers_n).map_err(|source| ServeError::Bind { addr, what, source })
    };
    let https = config
        .listen
        .https
        .map(|a| bind(a, "listen.https"))
        .transpose()?;
    let http = config
        .listen
        .http
        .map(|a| bind(a, "listen.http"))
        .transpose()?;
    let authz = config
        .listen
        .authz
        .map(|a| bind(a, "listen.authz"))
        .transpose()?;
    let metrics_std = config
        .listen
        .metrics
        .map(|addr| {
            listener::bind(addr, 1)
                .map(|mut v| v.swap_remove(0))
                .map_err(|source| ServeError::Bind {
                    addr,
                    what: "listen.metrics",
                    source,
                })
        })
        .transpose()?;
    let admin_std = listener::bind(config.listen.admin, 1)
        .map_err(|source| ServeError::Bind {
            addr: config.listen.admin,
            what: "listen.admin",
            source,
        })?
        .pop()
        .expect("bind returns one socket per worker");
    let https_addr = https
        .as_ref()
        .and_then(|v| v.first())
        .and_then(|l| l.local_addr().ok());
    let http_addr = http
        .as_ref()
        .and_then(|v| v.first())
        .and_then(|l| l.local_addr().ok());
    let authz_addr = authz
        .as_ref()
        .and_then(|v| v.first())
        .and_then(|l| l.local_addr().ok());
    let metrics_addr = metrics_std.as_ref().and_then(|l| l.local_addr().ok());
    let admin_addr = admin_std.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen.admin,
        what: "listen.admin",
        source,
    })?;

    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The revocation state outlives config reloads (a memory store holds the revocations).
    let revocations =
        Arc::new(revocation::Revocations::new(&config.revocation).map_err(ServeError::Store)?);
    // Background tasks run on the caller's runtime: revocation probe and subscriber
    // (remote stores only), then each App's JWKS fetchers.
    tokio::spawn(revocations.clone().run_background(shutdown_rx.clone()));
    let control_client = net::Client::with_roots(4, config.server.upstream_roots.clone());
    control_client.spawn_reaper();
    let connections = Arc::new(http::conn::Connections::new(&config.server));
    let reloads = ops::metrics::Reloads::default();
    let cert_reloads = ops::metrics::Reloads::default();
    let mut app = App::new(config, revocations.clone(), connections.clone());
    reloads.register(&mut app.metrics);
    ops::metrics::register_cert_reloads(&cert_reloads, &mut app.metrics);
    let app = Arc::new(app);
    app.start_background(&control_client);

    let shared = Arc::new(Shared {
        app: ArcSwap::new(app),
        tls: arc_swap::ArcSwapOption::from(tls.map(Arc::new)),
        revocations,
        control_client,
        reload_lock: tokio::sync::Mutex::new(()),
        reloads,
        cert_reloads,
        draining: std::sync::atomic::AtomicBool::new(false),
    });
    if shared.app.load().config.tls_files.is_some() {
        ops::certs::start(shared.clone(), shutdown_rx.clone());
    }

    let mut per_worker: Vec<listener::WorkerSockets> = (0..workers_n).map(|_| Vec::new()).collect();
    for (set, front) in [
        (https, listener::Front::Https),
        (http, listener::Front::Http),
        (authz, listener::Front::Authz),
    ] {
        for (i, l) in set.into_iter().flatten().enumerate() {
            per_worker[i].push((l, front));
        }
    }
    let mut workers = Vec::with_capacity(workers_n);
    for (i, sockets) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let rx = shutdown_rx.clone();
        let h = std::thread::Builder::new()
            .name(format!("jwtgate-worker-{i}"))
            .spawn(move || listener::run_worker(i, sockets, shared, rx))
            .map_err(ServeError::Thread)?;
        workers.push(h);
    }

    let admin_l =
        tokio::net::TcpListener::from_std(admin_std).map_err(|source| ServeError::Bind {
            addr: admin_addr,
            what: "listen.admin",
            source,
        })?;
    let ready_rx = shutdown_rx.clone();
    if let (Some(l), Some(addr)) = (metrics_std, metrics_addr) {
        let l = tokio::net::TcpListener::from_std(l).map_err(|source| ServeError::Bind {
            addr,
            what: "listen.metrics",
            source,
        })?;
        tokio::spawn(ops::admin::serve(
            l,
            ops::admin::Surface::ReadOnly,
            shared.clone(),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(ops::admin::serve(
        admin_l,
        ops::admin::Surface::Full,
        shared.clone(),
        shutdown_rx,
    ));

    let show = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
    tracing::info!(https = %show(https_addr), http = %show(http_addr), authz = %show(authz_addr), admin = %admin_addr, metrics = %show(metrics_addr), workers = workers_n, "jwtgate serving");
    // Started only now, so "ready" never comes before "serving" in the log.
    tokio::spawn(log_when_ready(shared.clone(), ready_rx));
    Ok(Running {
        https_addr,
        http_addr,
        admin_addr,
        authz_addr,
        metrics_addr,
        shared,
        shutdown,
        workers,
    })
}
