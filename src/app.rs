//! `App`: the live state built from one validated `Config` (route table, verifier), shared
//! by every worker. Built off the hot path; held in an `ArcSwap` so it can be replaced whole.

use std::sync::Arc;

use crate::auth::Verifier;
use crate::config::Config;
use crate::jwks::IssuerKeys;
use crate::refresh::Refresher;
use crate::revocation::Revocations;
use crate::route::Router;

/// Everything a request needs that comes from configuration.
pub struct App {
    pub config: Config,
    pub router: Router,
    pub verifier: Verifier,
    pub revocations: Arc<Revocations>,
    /// Present when `[refresh]` names a token endpoint.
    pub refresher: Option<Refresher>,
}

impl App {
    /// Build the live state; fails only when the revocation store cannot be set up.
    pub fn new(config: Config) -> Result<App, String> {
        let issuers = config
            .issuers
            .iter()
            .cloned()
            .map(|c| Arc::new(IssuerKeys::new(c)))
            .collect();
        let verifier = Verifier::new(issuers, config.identity.clone());
        let router = Router::new(config.routes.clone());
        let revocations = Arc::new(Revocations::new(&config.revocation)?);
        let redis = (config.revocation.store == crate::config::StoreKind::Redis)
            .then_some(&config.revocation);
        let refresher = config
            .refresh
            .as_ref()
            .and_then(|r| Refresher::new(r, redis));
        Ok(App {
            refresher,
            config,
            router,
            verifier,
            revocations,
        })
    }

    /// Every issuer has a key set.
    pub fn keys_ready(&self) -> bool {
        self.verifier.issuers().iter().all(|i| i.is_loaded())
    }

    /// Keys loaded and the revocation store answering (or failures allowed through).
    pub fn ready(&self) -> bool {
        self.keys_ready() && self.revocations.is_ready()
    }
}
