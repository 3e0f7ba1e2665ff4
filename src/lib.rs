//! usher: the authentication and authorization service of the cinema, and the authorizer
//! its gateway calls on every request.
//!
//! Map of the modules (data flows one way: `http` → domain → `store`):
//! - `app` — builds the application from a `config::Config`, binds, runs until stopped.
//! - `cli` — the `usher` command line.
//! - `config` — figment layers: defaults, `usher.toml`, legacy and `USHER_*` variables.
//! - `http` — listeners, routing, problem details, one file per resource.
//! - `attempts` — login limits: attempts per account reserved before hashing, per client IP.
//! - `sessions` — login, refresh (rotation, grace, reuse), logout, session ends.
//! - `escalation` — the *No escalation* rules for role grants, assignments and superusers.
//! - `guard` — bearer token → `Principal`, through the verified-token cache.
//! - `tokens` — JWT signing and verification, keys, JWKS, refresh tokens.
//! - `passwords` — Argon2id on a bounded blocking pool.
//! - `revocation` — revoked sessions and roles versions: memory, Redis, PostgreSQL.
//! - `cache` — the bounded, expiring maps of the check path (verified tokens, revocation).
//! - `feed` — the Redis pub/sub change feed between replicas.
//! - `permissions` — the catalog and the roles → permissions snapshot.
//! - `routes` — the gateway route map: parse, validate, normalise, match, reload.
//! - `kv` — the Redis handle.
//! - `metrics` — Prometheus counters and histograms.
//! - `retention` — background pruning of expired sessions and old login history.
//! - `store` — PostgreSQL: pool, migrations, one file per table family.
//! - `tls` — rustls for PostgreSQL (`sslmode`) and Redis (`rediss://`).
#![forbid(unsafe_code)]

pub mod app;
pub mod attempts;
pub mod cache;
pub mod cli;
pub mod config;
pub mod escalation;
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
pub mod store;
pub mod tls;
pub mod tokens;
