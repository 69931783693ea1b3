//! Config reload (`POST /reload` on the admin listener, SIGHUP): read and validate the file,
//! build a new `App` off the hot path, wait until its keys are loaded, swap it in. A bad
//! file, or keys that cannot be loaded, leave the running config in place. Listeners are
//! not rebound: `[listen]`, `[server]` and `[revocation]` changes need a restart.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::Config;
use crate::http::listener::Shared;

/// How long a new config's JWKS may take to load before the reload is refused.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Reload the config file the gateway was started with. `Ok` carries notes for the
/// operator (settings that were not applied); `Err` says why nothing changed.
/// Counted in `jwtgate_reloads_total{result}`.
pub async fn reload(shared: &Shared) -> Result<Vec<String>, String> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let result = apply(shared).await;
    shared.reloads.count(result.is_ok());
    result
}

async fn apply(shared: &Shared) -> Result<Vec<String>, String> {
    let current = shared.app.load_full();
    let path = current.config.path.clone();
    let mut config = Config::load(&path).map_err(|e| e.to_string())?;
    let notes = keep_running(&mut config, &current.config);
    if config.tls.is_none() && current.config.tls.is_some() {
        return Err("[tls] removed while listen.https is bound: restart to apply".into());
    }
    let tls = config.tls.clone();
    let mut app = App::new(
        config,
        shared.revocations.clone(),
        current.connections.clone(),
    );
    shared.reloads.register(&mut app.metrics);
    crate::ops::metrics::register_cert_reloads(&shared.cert_reloads, &mut app.metrics);
    let app = Arc::new(app);
    app.start_background(&shared.control_client);
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    while !app.keys_ready() {
        if tokio::time::Instant::now() >= deadline {
            app.stop_background();
            let failed: Vec<String> = app
                .verifier
                .issuers()
                .iter()
                .filter(|i| !i.is_loaded())
                .map(|i| format!("{:?}", i.config.name))
                .collect();
            return Err(format!(
                "the keys of issuer {} could not be loaded within {} s; keeping the running config",
                failed.join(", "),
                READY_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(t) = tls {
        shared
            .tls
            .store(Some(Arc::new(tokio_rustls::TlsAcceptor::from(t))));
    }
    shared.app.store(app);
    current.stop_background();
    tracing::info!(path = %path.display(), "config reloaded");
    for n in &notes {
        tracing::warn!("{n}");
    }
    Ok(notes)
}

/// The settings a reload cannot apply (listeners, what they and the upstream client were
/// built with, the revocation store): `new` takes the running values, and a note names
/// each one the file changed. Compared with what runs, not with the last file loaded: a
/// setting changed in one reload is still noted in the next, and stops being noted once
/// the file matches the running value again.
fn keep_running(new: &mut Config, running: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    if new.listen != running.listen {
        notes.push("[listen] changed: restart to apply".to_string());
    }
    new.listen = running.listen.clone();
    // [server]: what the listeners and the upstream client were built with stays until a
    // restart; what each request reads applies at once.
    let (old, s) = (&running.server, &mut new.server);
    let restart_only: Vec<&str> = [
        ("worker_threads", old.worker_threads != s.worker_threads),
        ("drain_s", old.drain != s.drain),
        ("header_timeout_ms", old.header_timeout != s.header_timeout),
        (
            "keepalive_timeout_ms",
            old.keepalive_timeout != s.keepalive_timeout,
        ),
        ("max_connections", old.max_connections != s.max_connections),
        (
            "max_header_bytes",
            old.max_header_bytes != s.max_header_bytes,
        ),
        ("log_format", old.log_format != s.log_format),
        (
            "upstream_ca",
            format!("{:?}", old.upstream_roots) != format!("{:?}", s.upstream_roots),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    if !restart_only.is_empty() {
        notes.push(format!(
            "[server] {} changed: restart to apply (max_body_bytes, stream_idle_timeout_ms, trusted_proxy_hops and token_cache_mib apply at once)",
            restart_only.join(", ")
        ));
    }
    s.worker_threads = old.worker_threads;
    s.drain = old.drain;
    s.header_timeout = old.header_timeout;
    s.keepalive_timeout = old.keepalive_timeout;
    s.max_connections = old.max_connections;
    s.max_header_bytes = old.max_header_bytes;
    s.log_format = old.log_format;
    s.upstream_roots = old.upstream_roots.clone();
    // `==`: `Debug` hides the Redis password, and a new one needs a restart too.
    if new.revocation != running.revocation {
        notes.push("[revocation] changed: restart to apply".to_string());
    }
    // Everything keeps using the running store's settings, refresh coordination too.
    new.revocation = running.revocation.clone();
    notes
}
