//! The shared state every task reads: configuration, pools, caches, keys. It names only the
//! modules it holds, never the layers that use it (`http`, the domain modules, `app`), so the
//! module graph has no cycle through it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;

use crate::clock::Clock;
use crate::config::Config;
use crate::guard::Guard;
use crate::kv::Kv;
use crate::passwords::Passwords;
use crate::permissions::Permissions;
use crate::revocation::Revocation;
use crate::routes::RouteMap;
use crate::tokens::Tokens;

/// Everything a request may need; shared by all tasks.
pub struct State {
    /// The effective configuration.
    pub config: Config,
    /// PostgreSQL.
    pub db: Pool,
    /// Redis.
    pub kv: Arc<Kv>,
    /// Password hashing.
    pub passwords: Passwords,
    /// Access-token keys.
    pub tokens: Tokens,
    /// Roles → permissions.
    pub permissions: Permissions,
    /// Revoked sessions and roles versions.
    pub revocation: Revocation,
    /// Verified-token cache.
    pub guard: Guard,
    /// The gateway route map in force; swapped whole on reload.
    pub routes: Arc<ArcSwap<RouteMap>>,
    /// Counters and histograms for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The time refresh rotation judges by.
    pub clock: Clock,
    /// Set on SIGTERM: `/readyz` answers 503 while requests are still served.
    pub draining: AtomicBool,
}

impl State {
    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

impl State {
    /// Rereads the signing keys; when one was retired, tokens verified with it are forgotten
    /// so that they are verified again, and refused.
    pub async fn reload_keys(&self) {
        match self.tokens.reload(&self.db, &self.config.tokens).await {
            Ok(true) => self.guard.forget_all(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "signing keys not reloaded"),
        }
    }
}
