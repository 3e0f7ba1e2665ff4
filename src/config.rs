//! Configuration: built-in defaults < `usher.toml` < legacy variables of the old service
//! (`ACCESS_EXPIRES_IN_HOURS`, `REFRESH_EXPIRES_IN_DAYS`, `DATABASE_URL`, `REDIS_URL`) <
//! `USHER_SECTION__KEY` environment variables. Only variables with a `__` are configuration,
//! so Kubernetes service links (`USHER_PORT=tcp://…`) are ignored. Every secret can also come
//! from a file named by its variable with `_FILE` appended. Unknown keys, and zero or negative
//! durations and sizes, are refused at startup naming the key and where it was set.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole effective configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening addresses.
    pub listen: Listen,
    /// PostgreSQL, the source of truth.
    pub database: Database,
    /// Redis: revocations, login-failure counters, change feed.
    pub redis: Redis,
    /// Access and refresh tokens.
    pub tokens: Tokens,
    /// Argon2id parameters and the hashing pool.
    pub passwords: Passwords,
    /// Login-failure limits.
    pub login: Login,
    /// The gateway route map.
    pub routes: Routes,
    /// In-process caches of the check path.
    pub cache: Cache,
    /// Logging.
    pub log: Log,
    /// Background pruning of expired sessions and old login history.
    pub retention: Retention,
}

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

impl Config {
    /// Loads the layers (`file` is the optional `usher.toml`) and checks the values.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let figment = Self::figment(file);
        let config: Config = figment.extract().map_err(|e| ConfigError::explain(&e))?;
        config.validate(&figment)?;
        Ok(config)
    }

    /// The layered provider, exposed for tests.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = legacy_env(figment);
        figment = figment.merge(
            Env::prefixed("USHER_")
                // `USHER_SECTION__KEY` only: `USHER_CONFIG`, `USHER_SUPERUSER_PASSWORD` and
                // Kubernetes service links (`USHER_PORT`, `USHER_SERVICE_HOST`, ...) are not.
                .filter(|key| key.as_str().contains("__") && !is_secret_file(key.as_str()))
                .split("__"),
        );
        for (key, var, _) in SECRETS {
            figment = figment.merge(SecretFile::read(key, var));
        }
        figment
    }

    /// Refuses zero durations and sizes, naming the key and where it was set.
    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        // `listen.drain_delay` and `tokens.refresh_grace` may be zero: it turns them off.
        let durations = [
            ("listen.shutdown_grace", self.listen.shutdown_grace),
            ("listen.read_timeout", self.listen.read_timeout),
            ("listen.idle_timeout", self.listen.idle_timeout),
            ("database.timeout", self.database.timeout),
            ("redis.timeout", self.redis.timeout),
            ("tokens.access_ttl", self.tokens.access_ttl),
            ("tokens.refresh_ttl", self.tokens.refresh_ttl),
            ("login.window", self.login.window),
            ("cache.state_ttl", self.cache.state_ttl),
            ("retention.interval", self.retention.interval),
            ("retention.login_history", self.retention.login_history),
        ];
        let sizes = [
            ("database.pool_size", self.database.pool_size as u64),
            ("passwords.memory_kib", u64::from(self.passwords.memory_kib)),
            ("passwords.iterations", u64::from(self.passwords.iterations)),
            (
                "passwords.parallelism",
                u64::from(self.passwords.parallelism),
            ),
            ("login.max_failures", u64::from(self.login.max_failures)),
            ("cache.tokens", self.cache.tokens),
            ("cache.states", self.cache.states),
            ("retention.batch", self.retention.batch as u64),
        ];
        let zero = durations
            .iter()
            .filter(|(_, d)| d.0.is_zero())
            .map(|(key, _)| *key)
            .chain(sizes.iter().filter(|(_, n)| *n == 0).map(|(key, _)| *key));
        let mut problems: Vec<String> = zero
            .map(|key| {
                let path: Vec<&str> = key.split('.').collect();
                let source = figment
                    .find_metadata(key)
                    .map(|md| format!(" (set by {})", source_name(md, &path)))
                    .unwrap_or_default();
                format!("{key} = 0{source}: must be greater than zero")
            })
            .collect();
        if self.redis.mode == RedisMode::Sentinel {
            if self.redis.sentinels.is_empty() {
                problems.push("redis.sentinels: required when redis.mode = \"sentinel\"".into());
            }
            if self.redis.master_name.is_empty() {
                problems.push("redis.master_name: required when redis.mode = \"sentinel\"".into());
            }
        }
        if self.redis.mode == RedisMode::Cluster {
            if self.redis.nodes.is_empty() {
                problems.push("redis.nodes: required when redis.mode = \"cluster\"".into());
            }
            if self.redis.prefix.contains(['{', '}']) {
                problems.push(
                    "redis.prefix: no '{' or '}' when redis.mode = \"cluster\" \
                     (a hash tag would put every key on one shard)"
                        .into(),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems.join("\n")))
        }
    }

    /// A copy fit to print: secrets masked.
    pub fn masked(&self) -> Config {
        let mut copy = self.clone();
        copy.database.url = Secret::new(mask_url(self.database.url.expose()));
        copy.redis.url = Secret::new(mask_url(self.redis.url.expose()));
        copy.redis.sentinels = self.redis.sentinels.iter().map(|u| mask_url(u)).collect();
        copy.redis.nodes = self.redis.nodes.iter().map(|u| mask_url(u)).collect();
        if copy.tokens.hs256_secret.is_some() {
            copy.tokens.hs256_secret = Some(Secret::new("***"));
        }
        copy
    }
}

/// A configuration that cannot be used; the message names each bad key and its source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// One line per problem: `key: what is wrong (where it was set)`.
    fn explain(error: &figment::Error) -> ConfigError {
        let lines: Vec<String> = error
            .clone()
            .into_iter()
            .map(|e| {
                let path: Vec<&str> = e.path.iter().map(String::as_str).collect();
                let what = match &e.kind {
                    Kind::InvalidValue(Actual::Signed(n), _) if *n < 0 => {
                        format!("{n} is negative: it must be greater than zero")
                    }
                    Kind::UnknownField(_, known) => {
                        format!("not a configuration key (known here: {})", known.join(", "))
                    }
                    kind => kind.to_string(),
                };
                let source = e
                    .metadata
                    .as_ref()
                    .filter(|md| !md.name.is_empty())
                    .map(|md| format!(" (set by {})", source_name(md, &path)))
                    .unwrap_or_default();
                if path.is_empty() {
                    format!("{what}{source}")
                } else {
                    format!("{}: {what}{source}", path.join("."))
                }
            })
            .collect();
        ConfigError(lines.join("\n"))
    }
}

impl From<ConfigError> for figment::Error {
    fn from(e: ConfigError) -> Self {
        figment::Error::from(e.0)
    }
}

/// Where a value came from, in the words an operator would search for.
fn source_name(md: &Metadata, path: &[&str]) -> String {
    if md.name.starts_with("`USHER_`") {
        return format!(
            "environment variable USHER_{}",
            path.join("__").to_uppercase()
        );
    }
    match &md.source {
        Some(source) => format!("{} {source}", md.name),
        None => md.name.to_string(),
    }
}

/// The secrets: key, its variable, and the old service's variable for it.
const SECRETS: [(&str, &str, Option<&str>); 3] = [
    ("database.url", "USHER_DATABASE__URL", Some("DATABASE_URL")),
    ("redis.url", "USHER_REDIS__URL", Some("REDIS_URL")),
    ("tokens.hs256_secret", "USHER_TOKENS__HS256_SECRET", None),
];

/// `SECTION__KEY_FILE` of a secret: read by [`SecretFile`], not a key of its own.
fn is_secret_file(key: &str) -> bool {
    SECRETS.iter().any(|(_, var, _)| {
        let suffixed = format!("{}_FILE", &var["USHER_".len()..]);
        key.eq_ignore_ascii_case(&suffixed)
    })
}

/// A secret read from the file named by `VAR_FILE` (one trailing line ending dropped). Setting
/// both `VAR` and `VAR_FILE` is an error: one of them would be silently ignored.
pub fn secret_from_env(var: &str) -> Result<Option<(String, String)>, String> {
    let file_var = format!("{var}_FILE");
    let Some(path) = std::env::var_os(&file_var) else {
        return Ok(None);
    };
    if std::env::var_os(var).is_some() {
        return Err(format!("both {var} and {file_var} are set; keep one"));
    }
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{file_var}: cannot read {}: {e}", path.display()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(format!("{file_var}: {} is empty", path.display()));
    }
    Ok(Some((path.display().to_string(), text.to_owned())))
}

/// One configuration value with its own source, so errors can name it.
struct SecretFile {
    key: &'static str,
    value: Result<Option<String>, String>,
    source: String,
}

impl SecretFile {
    fn read(key: &'static str, var: &str) -> SecretFile {
        let (value, source) = match secret_from_env(var) {
            Ok(Some((path, text))) => (Ok(Some(text)), format!("file {path} ({var}_FILE)")),
            Ok(None) => (Ok(None), String::new()),
            Err(e) => (Err(e), String::new()),
        };
        SecretFile { key, value, source }
    }

    fn value(key: &'static str, value: String, source: String) -> SecretFile {
        SecretFile {
            key,
            value: Ok(Some(value)),
            source,
        }
    }
}

impl Provider for SecretFile {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let value = self.value.clone().map_err(figment::Error::from)?;
        let dict = value
            .and_then(|v| figment::util::nest(self.key, Value::from(v)).into_dict())
            .unwrap_or_default();
        Ok(Profile::Default.collect(dict))
    }
}

/// The old service's variables (and `DATABASE_URL_FILE`, `REDIS_URL_FILE`), mapped onto
/// usher's keys.
fn legacy_env(mut figment: Figment) -> Figment {
    let named = |var: &str, key: &'static str, value: String| {
        SecretFile::value(key, value, format!("environment variable {var}"))
    };
    if let Ok(hours) = std::env::var("ACCESS_EXPIRES_IN_HOURS") {
        let value = format!("{}h", hours.trim());
        figment = figment.merge(named("ACCESS_EXPIRES_IN_HOURS", "tokens.access_ttl", value));
    }
    if let Ok(days) = std::env::var("REFRESH_EXPIRES_IN_DAYS") {
        let value = format!("{}d", days.trim());
        figment = figment.merge(named(
            "REFRESH_EXPIRES_IN_DAYS",
            "tokens.refresh_ttl",
            value,
        ));
    }
    for (key, _, legacy) in SECRETS {
        let Some(var) = legacy else { continue };
        if let Ok(url) = std::env::var(var) {
            figment = figment.merge(named(var, key, url));
        }
        figment = figment.merge(SecretFile::read(key, var));
    }
    figment
}

/// Masks the password of `scheme://user:password@host` and the values of password-like
/// query parameters (`?password=`, `&pass=`, `sslpassword=`, ...).
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "***".into();
    };
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let rest = &head[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let mut out = match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &head[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => head.to_owned(),
        },
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "auth", "key"]
        .iter()
        .any(|word| name.contains(word))
}

/// A secret string: its `Debug` prints `***`, so it never reaches a log.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A duration written `90s`, `15m`, `1h`, `30d`, `250ms`, or as whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// Whole seconds.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// Parses the written form.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        if text.starts_with('-') {
            return Err(format!(
                "`{text}` is negative: it must be greater than zero"
            ));
        }
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 1h or 30d"))?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => {
                return Err(format!(
                    "`{text}` has an unknown unit (use ms, s, m, h or d)"
                ))
            }
        };
        ms.map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 90s, 15m, 1h or 30d")
            }
            fn visit_u64<E: serde::de::Error>(self, s: u64) -> Result<Dur, E> {
                Ok(Dur::secs(s))
            }
            fn visit_i64<E: serde::de::Error>(self, s: i64) -> Result<Dur, E> {
                u64::try_from(s).map(Dur::secs).map_err(|_| {
                    E::custom(format!("{s} is negative: it must be greater than zero"))
                })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Dur, E> {
                Dur::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_match_the_spec() {
        Jail::expect_with(|_jail| {
            let c = Config::load(None)?;
            assert_eq!(c.listen.api.to_string(), "0.0.0.0:8080");
            assert_eq!(c.listen.internal.to_string(), "0.0.0.0:9191");
            assert_eq!(
                c.database.url.expose(),
                "postgres://postgres@127.0.0.1:5432/usher"
            );
            assert_eq!(c.redis.url.expose(), "redis://127.0.0.1:6379/0");
            assert_eq!(c.tokens.access_ttl, Dur::secs(3600));
            assert_eq!(c.tokens.refresh_ttl, Dur::secs(30 * 86400));
            assert_eq!(c.login.max_failures, 10);
            assert_eq!(c.login.window, Dur::secs(600));
            assert_eq!(c.redis.prefix, "usher:");
            assert_eq!(c.routes.file, PathBuf::from("gateway-config/routes.toml"));
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "usher.toml",
                "[tokens]\naccess_ttl = \"15m\"\nrefresh_ttl = \"7d\"\n[login]\nmax_failures = 3\n",
            )?;
            jail.set_env("REFRESH_EXPIRES_IN_DAYS", "2");
            jail.set_env("USHER_LOGIN__MAX_FAILURES", "5");
            jail.set_env("USHER_LISTEN__API", "127.0.0.1:0");
            jail.set_env("USHER_CONFIG", "usher.toml");
            let c = Config::load(Some(Path::new("usher.toml")))?;
            assert_eq!(c.tokens.access_ttl, Dur::secs(900));
            assert_eq!(c.tokens.refresh_ttl, Dur::secs(2 * 86400));
            assert_eq!(c.login.max_failures, 5);
            assert_eq!(c.listen.api.port(), 0);
            Ok(())
        });
    }

    #[test]
    fn legacy_variables_work() {
        Jail::expect_with(|jail| {
            jail.set_env("ACCESS_EXPIRES_IN_HOURS", "2");
            jail.set_env("DATABASE_URL", "postgres://a:b@db/x");
            jail.set_env("REDIS_URL", "redis://cache:6379/1");
            let c = Config::load(None)?;
            assert_eq!(c.tokens.access_ttl, Dur::secs(7200));
            assert_eq!(c.database.url.expose(), "postgres://a:b@db/x");
            assert_eq!(c.redis.url.expose(), "redis://cache:6379/1");
            // the prefixed form wins over the legacy one
            jail.set_env("USHER_DATABASE__URL", "postgres://c@db/y");
            let c = Config::load(None)?;
            assert_eq!(c.database.url.expose(), "postgres://c@db/y");
            Ok(())
        });
    }

    #[test]
    fn cluster_mode_needs_nodes_and_a_prefix_without_hash_tags() {
        Jail::expect_with(|jail| {
            jail.set_env("USHER_REDIS__MODE", "cluster");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("redis.nodes: required"), "{err}");
            jail.set_env(
                "USHER_REDIS__NODES",
                "redis://n1:7000,redis://:sesame@n2:7001",
            );
            let c = Config::load(None)?;
            assert_eq!(c.redis.mode, RedisMode::Cluster);
            assert_eq!(
                c.redis.nodes,
                ["redis://n1:7000", "redis://:sesame@n2:7001"]
            );
            assert_eq!(
                c.masked().redis.nodes,
                ["redis://n1:7000", "redis://:***@n2:7001"]
            );
            jail.set_env("USHER_REDIS__PREFIX", "{usher}:");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("redis.prefix: no '{'"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn sentinel_mode_takes_a_comma_separated_list_and_needs_a_master_name() {
        Jail::expect_with(|jail| {
            jail.set_env("USHER_REDIS__MODE", "sentinel");
            jail.set_env(
                "USHER_REDIS__SENTINELS",
                "redis://s1:26379, redis://s2:26379,redis://s3:26379",
            );
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("redis.master_name: required"), "{err}");
            jail.set_env("USHER_REDIS__MASTER_NAME", "usher");
            let c = Config::load(None)?;
            assert_eq!(c.redis.mode, RedisMode::Sentinel);
            assert_eq!(
                c.redis.sentinels,
                ["redis://s1:26379", "redis://s2:26379", "redis://s3:26379"]
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file(
                "usher.toml",
                "[redis]\nmode = \"sentinel\"\nmaster_name = \"usher\"\n\
                 sentinels = [\"redis://a:26379\", \"redis://b:26379\"]\n",
            )?;
            let c = Config::load(Some(Path::new("usher.toml")))?;
            assert_eq!(c.redis.sentinels, ["redis://a:26379", "redis://b:26379"]);
            jail.create_file("usher.toml", "[redis]\nmode = \"sentinel\"\n")?;
            let err = Config::load(Some(Path::new("usher.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("redis.sentinels: required"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        Jail::expect_with(|jail| {
            jail.set_env("USHER_TOKENS__ACESS_TTL", "1h");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("acess_ttl"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("usher.toml", "[databse]\nurl = \"x\"\n")?;
            let err = Config::load(Some(Path::new("usher.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("databse"), "{err}");
            assert!(!err.contains("default."), "{err}");
            assert!(err.contains("usher.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        Jail::expect_with(|jail| {
            jail.set_env("USHER_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("USHER_SERVICE_HOST", "10.0.0.1");
            jail.set_env("USHER_SERVICE_PORT", "8080");
            jail.set_env("USHER_PORT_8080_TCP_ADDR", "10.0.0.1");
            jail.set_env("USHER_PORT_8080_TCP", "tcp://10.0.0.1:8080");
            jail.set_env("USHER_INTERNAL_SERVICE_HOST", "10.0.0.2");
            jail.set_env("USHER_LOGIN__MAX_FAILURES", "4");
            let c = Config::load(None)?;
            assert_eq!(c.login.max_failures, 4);
            assert_eq!(c.listen.api.port(), 8080);
            Ok(())
        });
    }

    #[test]
    fn secrets_come_from_files() {
        Jail::expect_with(|jail| {
            jail.create_file("db", "postgres://app:hunter2@db/usher\n")?;
            jail.create_file("redis", "redis://:sesame@cache:6379/0\r\n")?;
            jail.create_file("hs", "a shared secret of some length\n")?;
            jail.set_env("USHER_DATABASE__URL_FILE", "db");
            jail.set_env("REDIS_URL_FILE", "redis");
            jail.set_env("USHER_TOKENS__HS256_SECRET_FILE", "hs");
            let c = Config::load(None)?;
            assert_eq!(c.database.url.expose(), "postgres://app:hunter2@db/usher");
            assert_eq!(c.redis.url.expose(), "redis://:sesame@cache:6379/0");
            assert_eq!(
                c.tokens.hs256_secret.as_ref().map(Secret::expose),
                Some("a shared secret of some length")
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("db", "postgres://legacy@db/usher")?;
            jail.set_env("DATABASE_URL_FILE", "db");
            assert_eq!(
                Config::load(None)?.database.url.expose(),
                "postgres://legacy@db/usher"
            );
            jail.set_env("DATABASE_URL", "postgres://other@db/usher");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("DATABASE_URL_FILE"), "{err}");
            jail.set_env("USHER_DATABASE__URL_FILE", "missing");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("USHER_DATABASE__URL_FILE") && err.contains("missing"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn zero_and_negative_values_are_refused_naming_key_and_source() {
        Jail::expect_with(|jail| {
            jail.create_file("usher.toml", "[tokens]\naccess_ttl = 0\n")?;
            let err = Config::load(Some(Path::new("usher.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("tokens.access_ttl = 0"), "{err}");
            assert!(err.contains("usher.toml"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USHER_LOGIN__WINDOW", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("login.window = 0"), "{err}");
            assert!(err.contains("USHER_LOGIN__WINDOW"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USHER_TOKENS__ACCESS_TTL", "-5");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("tokens.access_ttl") && err.contains("negative"),
                "{err}"
            );
            assert!(!err.contains("untagged"), "{err}");
            jail.set_env("USHER_TOKENS__ACCESS_TTL", "-5m");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("tokens.access_ttl") && err.contains("negative"),
                "{err}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("USHER_DATABASE__POOL_SIZE", "-5");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("database.pool_size") && err.contains("negative"),
                "{err}"
            );
            assert!(err.contains("USHER_DATABASE__POOL_SIZE"), "{err}");
            jail.set_env("USHER_DATABASE__POOL_SIZE", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("database.pool_size = 0"), "{err}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            // zero turns these off
            jail.set_env("USHER_LISTEN__DRAIN_DELAY", "0s");
            jail.set_env("USHER_TOKENS__REFRESH_GRACE", "0");
            let c = Config::load(None)?;
            assert!(c.listen.drain_delay.0.is_zero());
            Ok(())
        });
    }

    #[test]
    fn passwords_in_url_queries_are_masked() {
        for (url, masked) in [
            (
                "postgres://db/usher?user=app&password=hunter2",
                "postgres://db/usher?user=app&password=***",
            ),
            (
                "redis://cache:6379/0?pass=hunter2&protocol=resp3",
                "redis://cache:6379/0?pass=***&protocol=resp3",
            ),
            (
                "postgres://app:hunter2@db/usher?sslmode=require&sslpassword=hunter2",
                "postgres://app:***@db/usher?sslmode=require&sslpassword=***",
            ),
            ("postgres://app@db/usher", "postgres://app@db/usher"),
            ("host=db password=hunter2", "***"),
        ] {
            assert_eq!(mask_url(url), masked, "{url}");
        }
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("30d", 2_592_000),
            ("7", 7),
        ] {
            assert_eq!(Dur::parse(text).unwrap(), Dur::secs(secs), "{text}");
        }
        assert_eq!(Dur::parse("250ms").unwrap(), Dur::millis(250));
        assert!(Dur::parse("1w").is_err());
        assert!(Dur::parse("h").is_err());
        assert_eq!(Dur::secs(900).to_string(), "15m");
        assert_eq!(Dur::millis(1500).to_string(), "1500ms");
        Jail::expect_with(|jail| {
            jail.set_env("USHER_TOKENS__ACCESS_TTL", "soon");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("soon"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_masked() {
        let mut c = Config::default();
        c.database.url = Secret::new("postgres://app:hunter2@db:5432/usher");
        c.redis.url = Secret::new("redis://:sesame@cache:6379/0");
        c.tokens.hs256_secret = Some(Secret::new("topsecret"));
        let printed = toml::to_string(&c.masked()).unwrap();
        assert!(!printed.contains("hunter2") && !printed.contains("sesame"));
        assert!(!printed.contains("topsecret"));
        assert!(
            printed.contains("postgres://app:***@db:5432/usher"),
            "{printed}"
        );
        assert!(!format!("{:?}", c).contains("hunter2"));
    }
}
