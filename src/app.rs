//! The application: built from a configuration into an object that has already bound its
//! listeners and reports their addresses, then runs until a shutdown future resolves. Tests
//! start it on port 0 and stop it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::guard::Guard;
use crate::http::{self, Listener};
use crate::kv::Kv;
use crate::passwords::Passwords;
use crate::permissions::Permissions;
use crate::revocation::Revocation;
use crate::routes::RouteMap;
use crate::tokens::Tokens;
use crate::{domain, feed, store};

/// The shared state lives below every layer that reads it; named here too for callers that
/// build an application and look inside.
pub use crate::state::State;

/// Loads the route map named by the configuration; fatal at startup when it is bad.
pub fn load_routes(config: &Config) -> anyhow::Result<RouteMap> {
    RouteMap::load(&config.routes.file, &crate::permissions::builtin_names())
        .with_context(|| format!("loading the route map {}", config.routes.file.display()))
}

/// A database ready for usher, and the route map it was seeded from.
pub struct Prepared {
    /// The route map named by the configuration.
    pub routes: RouteMap,
    /// The pool.
    pub db: Pool,
    /// Migrations applied just now, by name.
    pub applied: Vec<&'static str>,
}

/// The one start-up sequence of the server and of every command that changes data: load the
/// route map (its service permissions belong in the catalog), connect, migrate, seed the
/// built-in roles and permissions.
pub async fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let routes = load_routes(config)?;
    let (db, applied) = migrated(config).await?;
    crate::permissions::seed(&db, routes.service_permissions()).await?;
    Ok(Prepared {
        routes,
        db,
        applied,
    })
}

/// Connects and applies pending migrations; for commands that need no route map.
pub async fn migrated(config: &Config) -> anyhow::Result<(Pool, Vec<&'static str>)> {
    let db = store::connect(&config.database).await?;
    let applied = store::migrate::migrate(&db).await?;
    Ok((db, applied))
}

/// A built, bound, not yet running usher.
pub struct Application {
    api: TcpListener,
    internal: TcpListener,
    state: Arc<State>,
}

impl Application {
    /// Connects, migrates, seeds, loads keys and binds both listeners.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let Prepared { routes, db, .. } = prepare(&config).await?;
        let kv = Kv::new(&config.redis)?;
        let passwords = Passwords::new(&config.passwords).await?;
        let tokens = Tokens::load(&db, &config.tokens).await?;
        let permissions = Permissions::load(&db)
            .await
            .context("reading roles and permissions")?;
        let access_ttl = config.tokens.access_ttl.0;
        let revocation = Revocation::new(kv.clone(), db.clone(), &config.cache, access_ttl);
        let guard = Guard::new(&config.cache, access_ttl);
        let api = TcpListener::bind(config.listen.api)
            .await
            .with_context(|| format!("binding the API listener to {}", config.listen.api))?;
        let internal = TcpListener::bind(config.listen.internal)
            .await
            .with_context(|| {
                format!(
                    "binding the internal listener to {}",
                    config.listen.internal
                )
            })?;
        let state = Arc::new(State {
            config,
            db,
            kv,
            passwords,
            tokens,
            permissions,
            revocation,
            guard,
            routes: Arc::new(ArcSwap::from_pointee(routes)),
            metrics: crate::metrics::Metrics::default(),
            clock: crate::clock::Clock::default(),
            draining: AtomicBool::new(false),
        });
        Ok(Application {
            api,
            internal,
            state,
        })
    }

    /// Where the API listener is bound.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen.api)
    }

    /// Where the internal listener is bound.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
            .local_addr()
            .unwrap_or_else(|_| self.state.config.listen.internal)
    }

    /// The shared state, for tests and benches.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves; then drains: `/readyz` answers 503 while requests are
    /// still served for `listen.drain_delay` (gateways stop sending), then the listeners close
    /// and in-flight requests finish within `listen.shutdown_grace`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let grace = self.state.config.listen.shutdown_grace.0;
        tracing::info!(api = %self.api_addr(), internal = %self.internal_addr(), "usher listening");
        let feed = tokio::spawn(feed::run(self.state.clone(), stopped.clone()));
        let retention = tokio::spawn(crate::retention::run(self.state.clone(), stopped.clone()));
        let mender = {
            let (state, stopped) = (self.state.clone(), stopped.clone());
            tokio::spawn(async move { state.revocation.mend(stopped).await })
        };
        let reloader = self.spawn_route_reloader();
        let api = tokio::spawn(http::serve(
            self.api,
            Listener::Api,
            self.state.clone(),
            stopped.clone(),
            grace,
        ));
        let internal = tokio::spawn(http::serve(
            self.internal,
            Listener::Internal,
            self.state.clone(),
            stopped,
            grace,
        ));
        let state = self.state.clone();
        shutdown.await;
        let delay = state.config.listen.drain_delay;
        tracing::info!(%delay, "draining: /readyz answers 503, requests are still served");
        state.draining.store(true, Ordering::Relaxed);
        tokio::time::sleep(delay.0).await;
        tracing::info!("closing the listeners");
        let _ = stop.send(true);
        reloader.abort();
        let _ = tokio::join!(api, internal, feed, retention, mender);
        Ok(())
    }

    /// Reloads the route map when its file changes or on SIGHUP; new service permissions go
    /// into the catalog and every replica rereads it.
    fn spawn_route_reloader(&self) -> tokio::task::JoinHandle<()> {
        let state = self.state.clone();
        let builtin = crate::permissions::builtin_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        crate::routes::spawn_reloader(
            state.config.routes.file.clone(),
            builtin,
            state.routes.clone(),
            move |reload| {
                let crate::routes::Reload::Loaded(map) = reload else {
                    state.metrics.route_reload(false);
                    return;
                };
                state.metrics.route_reload(true);
                let state = state.clone();
                let declared = map.service_permissions().to_vec();
                tokio::spawn(async move {
                    match crate::permissions::seed(&state.db, &declared).await {
                        Ok(()) => domain::Changed::catalog().propagate(&state).await,
                        Err(e) => tracing::warn!(error = %e, "service permissions not stored"),
                    }
                });
            },
        )
    }
}
