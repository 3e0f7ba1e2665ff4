//! The sections of the configuration, one struct each, with their built-in defaults.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::{Dur, Secret};

/// Listening addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// The public API listener: `/api/v1`, JWKS, OpenAPI.
    pub api: SocketAddr,
    /// The internal listener: gateway checks, health, metrics.
    pub internal: SocketAddr,
    /// After SIGTERM: how long `/readyz` answers 503 while requests are still served, so
    /// gateways stop sending before the listeners close. `0s` closes at once.
    pub drain_delay: Dur,
    /// How long in-flight requests may take to finish once the listeners are closed.
    pub shutdown_grace: Dur,
    /// Longest wait for a request's head (the first one from the moment a connection opens,
    /// on both listeners), for an API request's body, and between requests on the API listener.
    pub read_timeout: Dur,
    /// Longest a connection to the internal listener may sit idle between requests (keep it
    /// above the gateway's own idle timeout for its connections to usher).
    pub idle_timeout: Dur,
    /// Most connections open at once on each listener; more are closed as they arrive.
    pub max_connections: NonZeroUsize,
    /// How many proxies in front of usher append to `X-Forwarded-For`; the client IP is the
    /// rightmost entry they did not write. 1: the TCP peer is the gateway. 0: use the peer.
    pub trusted_proxies: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: SocketAddr::from(([0, 0, 0, 0], 8080)),
            internal: SocketAddr::from(([0, 0, 0, 0], 9191)),
            drain_delay: Dur::secs(5),
            shutdown_grace: Dur::secs(10),
            read_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(300),
            max_connections: NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            trusted_proxies: 1,
        }
    }
}

/// PostgreSQL settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// Connection URL; its password is a secret.
    pub url: Secret,
    /// Largest number of pooled connections.
    pub pool_size: usize,
    /// How long a request waits for a connection before answering 503.
    pub timeout: Dur,
    /// Create the database when it does not exist and the user may.
    pub create_if_missing: bool,
    /// CA bundle (PEM) that verifies the server with `sslmode=verify-ca|verify-full`; the URL's
    /// `sslrootcert` wins; neither: the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/usher"),
            pool_size: 16,
            timeout: Dur::secs(2),
            create_if_missing: true,
            ca_file: None,
        }
    }
}

/// Redis settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Redis {
    /// Connection URL; its password is a secret.
    pub url: Secret,
    /// Every key and channel starts with it, so deployments can share one Redis.
    pub prefix: String,
    /// How long one Redis command may take before it counts as a failure.
    pub timeout: Dur,
    /// CA bundle (PEM) that verifies a `rediss://` server instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// One server (`url`), or a master found through Sentinel.
    pub mode: RedisMode,
    /// Sentinel mode: the sentinels' URLs (a list, or one comma-separated string).
    #[serde(deserialize_with = "list_or_commas")]
    pub sentinels: Vec<String>,
    /// Sentinel mode: the name the sentinels monitor the master under.
    pub master_name: String,
    /// Cluster mode: URLs of some of the cluster's nodes (a list, or one comma-separated
    /// string); the others and the slot map are learnt from them.
    #[serde(deserialize_with = "list_or_commas")]
    pub nodes: Vec<String>,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: Secret::new("redis://127.0.0.1:6379/0"),
            prefix: "usher:".into(),
            timeout: Dur::millis(500),
            ca_file: None,
            mode: RedisMode::Standalone,
            sentinels: Vec::new(),
            master_name: String::new(),
            nodes: Vec::new(),
        }
    }
}

/// How usher finds its Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// The server at `redis.url`.
    #[default]
    Standalone,
    /// The master the sentinels name, followed across failovers. `redis.url` still gives the
    /// database number, credentials and TLS for the master; its host is not used.
    Sentinel,
    /// A Redis Cluster reached through `redis.nodes`; keys spread over its shards.
    Cluster,
}

/// A list, or a comma-separated string (as environment variables give it).
fn list_or_commas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Commas(String),
    }
    let items = match Either::deserialize(d)? {
        Either::List(items) => items,
        Either::Commas(s) => s.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Signing algorithm of access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    /// Ed25519 signatures; public keys published in the JWKS.
    EdDSA,
    /// HMAC-SHA256 with a shared secret; nothing is published.
    HS256,
}

/// Token settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tokens {
    /// Lifetime of an access token.
    pub access_ttl: Dur,
    /// Lifetime of a refresh token and of its session.
    pub refresh_ttl: Dur,
    /// How long a just-used refresh token still works, for a client's concurrent refreshes.
    pub refresh_grace: Dur,
    /// Signing algorithm of access tokens.
    pub algorithm: Algorithm,
    /// The `iss` claim.
    pub issuer: String,
    /// An Ed25519 private key (PKCS#8 PEM) to sign with instead of the keys kept in PostgreSQL.
    pub key_file: Option<PathBuf>,
    /// The HS256 secret; when absent one is generated and kept in PostgreSQL.
    pub hs256_secret: Option<Secret>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            access_ttl: Dur::secs(3600),
            refresh_ttl: Dur::secs(30 * 86400),
            refresh_grace: Dur::secs(10),
            algorithm: Algorithm::EdDSA,
            issuer: "usher".into(),
            key_file: None,
            hs256_secret: None,
        }
    }
}

/// Argon2id parameters (OWASP defaults) and the size of the hashing pool.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Passwords {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Hashes computed at once on the blocking pool; 0 means one per core.
    pub max_concurrent: usize,
    /// Hashes that may wait for the pool; beyond them login and register answer 503 `busy`.
    pub max_queue: usize,
    /// Longest wait for the pool before answering 503 `busy`.
    pub queue_timeout: Dur,
    /// Nice value of the hashing threads (0–19; Linux): above 0 they take only the CPU that
    /// the request workers leave idle.
    pub nice: i32,
}

impl Default for Passwords {
    fn default() -> Self {
        Passwords {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
            max_queue: 64,
            queue_timeout: Dur::secs(2),
            nice: 10,
        }
    }
}

/// Login-failure limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Login {
    /// Failures for one e-mail within `window` before logins answer 429.
    pub max_failures: u32,
    /// The counting window.
    pub window: Dur,
    /// Register and login requests per client IP per minute before 429; 0 turns it off.
    pub per_ip: u32,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            max_failures: 10,
            window: Dur::secs(600),
            per_ip: 60,
        }
    }
}

/// Route map settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// The route map file (TOML).
    pub file: PathBuf,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            file: PathBuf::from("gateway-config/routes.toml"),
        }
    }
}

/// In-process caches of the check path.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Verified tokens kept.
    pub tokens: u64,
    /// Session and user states kept.
    pub states: u64,
    /// Longest life of a cached state, a safety net behind the change feed.
    pub state_ttl: Dur,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            tokens: 200_000,
            states: 200_000,
            state_ttl: Dur::secs(60),
        }
    }
}

/// Log output.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `usher=debug,info`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Background pruning; one replica at a time does it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// How often a replica tries to prune.
    pub interval: Dur,
    /// Login history older than this is deleted.
    pub login_history: Dur,
    /// Rows deleted per statement, so that no statement holds locks for long.
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            interval: Dur::secs(3600),
            login_history: Dur::secs(180 * 86400),
            batch: 1000,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
