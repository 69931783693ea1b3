//! Connection caps: how many client connections are open per listener class (public:
//! https + http + authz; admin) against `server.max_connections`, shared by every worker
//! thread, the admin API and `/metrics`. Counting only; `http::conn` closes what is over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::config::Server;

/// Concurrent connections the admin listener takes: enough for probes, scrapes and
/// operators, small enough that a flood there costs little. Separate from
/// `server.max_connections`, so a full public listener never locks out health checks.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// A cap on concurrent connections, shared by every worker thread of a listener class
/// (public: https + http; admin), with its metrics.
pub struct Limit {
    max: usize,
    active: AtomicUsize,
    /// Connections closed at accept because the cap was reached.
    pub refused: Counter,
}

/// One connection's place under a `Limit`; given back when dropped (the socket closed).
/// It travels with the socket, so an upgraded (WebSocket) connection keeps holding it.
pub struct Slot(Arc<Limit>);

impl Limit {
    pub fn new(max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            max,
            active: AtomicUsize::new(0),
            refused: Counter::default(),
        })
    }

    /// A slot, or `None` (counted as refused) when `max` connections are open.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Slot(self.clone())),
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The caps of the two listener classes, for the whole process.
pub struct Connections {
    /// `server.max_connections`, shared by the https and http listeners.
    pub public: Arc<Limit>,
    /// `ADMIN_MAX_CONNECTIONS`.
    pub admin: Arc<Limit>,
}

impl Connections {
    pub fn new(server: &Server) -> Connections {
        Connections {
            public: Limit::new(server.max_connections),
            admin: Limit::new(ADMIN_MAX_CONNECTIONS),
        }
    }

    /// Each cap with its `listener` metric label.
    pub fn by_listener(&self) -> [(&'static str, &Arc<Limit>); 2] {
        [("public", &self.public), ("admin", &self.admin)]
    }
}
