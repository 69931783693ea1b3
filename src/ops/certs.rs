//! Certificate rotation: every `[tls] watch_interval_ms`, the running config's certificate
//! and key files are checked (mtime, size, inode; a Kubernetes Secret's symlink swap
//! counts). A changed pair that parses and matches is swapped in for new handshakes; a
//! broken one is logged and the old pair kept. Also warns, once a day, from 14 days before
//! the certificate expires.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::now_unix;
use crate::config::tls::CertSource;
use crate::http::listener::Shared;

/// How long before `notAfter` the expiry warning starts.
const WARN_BEFORE_S: i64 = 14 * 24 * 3600;
/// How often the expiry warning repeats.
const WARN_EVERY_S: i64 = 24 * 3600;

/// What the files looked like when last read: (mtime ns, size, inode) of cert and key.
type Stamp = [(i128, u64, u64); 2];

fn stamp(s: &CertSource) -> Option<Stamp> {
    let one = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            m.size(),
            m.ino(),
        ))
    };
    Some([one(&s.cert_path)?, one(&s.key_path)?])
}

/// The expiry warning: from `WARN_BEFORE_S` before `notAfter`, once every `WARN_EVERY_S`.
#[derive(Default)]
struct ExpiryWarning {
    warned_at: i64,
}

impl ExpiryWarning {
    fn check(&mut self, src: &CertSource, now: i64) {
        let left = src.not_after() - now;
        if left < WARN_BEFORE_S && now - self.warned_at >= WARN_EVERY_S {
            self.warned_at = now;
            tracing::warn!(cert = %src.cert_path.display(), not_after = src.not_after(), days_left = left / 86_400, "TLS certificate expires soon; renew it (the new files are picked up without a restart)");
        }
    }
}

/// Warn at once about a certificate near its expiry (so the warning is logged before
/// "jwtgate serving"), then watch in the background until `shutdown`.
pub fn start(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let mut expiry = ExpiryWarning::default();
    let tls = shared.app.load().config.tls_files.clone();
    if let Some(tls) = tls {
        expiry.check(&tls.source, now_unix());
    }
    tokio::spawn(watch(shared, shutdown, expiry));
}

/// Watch until `shutdown`; counts attempts in `shared.cert_reloads`.
async fn watch(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut expiry: ExpiryWarning,
) {
    // The source being watched (replaced by a config reload) and its files' last stamp.
    let mut watching: Option<(Arc<CertSource>, Option<Stamp>)> = None;
    loop {
        let tls = shared.app.load().config.tls_files.clone();
        let Some(tls) = tls else { return };
        let every = tls.watch_interval.unwrap_or(Duration::from_secs(60));
        let src = tls.source;
        match &mut watching {
            Some((s, last)) if Arc::ptr_eq(s, &src) => {
                let now = stamp(&src);
                if tls.watch_interval.is_some() && now.is_some() && now != *last {
                    *last = now;
                    match src.reload() {
                        Ok(not_after) => {
                            shared.cert_reloads.count(true);
                            tracing::info!(cert = %src.cert_path.display(), not_after, "TLS certificate reloaded: new handshakes use it");
                        }
                        Err(e) => {
                            shared.cert_reloads.count(false);
                            tracing::warn!(cert = %src.cert_path.display(), error = %e, "TLS certificate files changed but cannot be used; keeping the current certificate");
                        }
                    }
                }
            }
            // First look, or a config reload brought a new source: it was just read.
            _ => watching = Some((src.clone(), stamp(&src))),
        }
        expiry.check(&src, now_unix());
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
