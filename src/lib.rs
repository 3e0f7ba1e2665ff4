//! usher: the authentication and authorization service of the cinema, and the authorizer
//! its gateway calls on every request.
//!
//! Map of the modules. Data flows one way, `http` → domain → `store`, and nothing names a
//! layer above it (checked by the `layers` tests):
//! - `app` — builds the application from a `config::Config` (`prepare`: route map, connect,
//!   migrate, seed), binds, runs until stopped.
//! - `cli` — the `usher` command line; calls the same domain functions as the API.
//! - `http` — listeners, the table of operations (`http::endpoint`: each one's path, method and
//!   the access it needs, checked by the router), problem details, one file per resource.
//!   Handlers read the request, call one domain function, render.
//! - The domain layer, where every rule lives; answers values or a `domain::DomainError`:
//!   - `domain` — users, roles, registration; the *No escalation* rules (`domain::escalation`);
//!     what a committed change means to other replicas (`domain::Changed`).
//!   - `sessions` — login, refresh (rotation, grace, reuse), logout, session ends.
//!   - `attempts` — login limits: attempts per account reserved before hashing, per client IP.
//! - `feed` — the Redis pub/sub change feed between replicas.
//! - `retention` — background pruning of expired sessions and old login history.
//! - `state` — the shared `State` every task reads; names only the parts it holds.
//! - `guard` — bearer token → `Principal`, through the verified-token cache.
//! - `tokens` — JWT signing and verification, keys, JWKS, refresh tokens, `TokenError`.
//! - `passwords` — Argon2id on a bounded blocking pool.
//! - `revocation` — revoked sessions and roles versions: memory, Redis, PostgreSQL.
//! - `cache` — the bounded, expiring maps of the check path (verified tokens, revocation).
//! - `change` — the messages of the change feed (`feed`).
//! - `clock` — the time refresh rotation judges by; tests move it forward.
//! - `permissions` — the built-in `Permission`s, the catalog and the roles → permissions snapshot.
//! - `routes` — the gateway route map: parse, validate, normalise, match, reload.
//! - `kv` — the Redis handle (standalone, Sentinel, Cluster); `kv::keys` names every key.
//! - `metrics` — Prometheus counters and histograms.
//! - `store` — PostgreSQL: pool, migrations, one file per table family; rows and typed
//!   errors, nothing of HTTP or of the domain.
//! - `config` — figment layers: defaults, `usher.toml`, legacy and `USHER_*` variables.
//! - `tls` — rustls for PostgreSQL (`sslmode`) and Redis (`rediss://`).
#![forbid(unsafe_code)]

pub mod app;
pub mod attempts;
pub mod cache;
pub mod change;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod feed;
pub mod guard;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod passwords;
pub mod permissions;
pub mod retention;
pub mod revocation;
pub mod routes;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tls;
pub mod tokens;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod layers;
