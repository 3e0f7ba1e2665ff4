//! Configuration: built-in defaults < `usher.toml` < legacy variables of the old service
//! (`ACCESS_EXPIRES_IN_HOURS`, `REFRESH_EXPIRES_IN_DAYS`, `DATABASE_URL`, `REDIS_URL`) <
//! `USHER_SECTION__KEY` environment variables. Unknown keys are refused, naming the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
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
}

/// Listening addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// The public API listener: `/api/v1`, JWKS, OpenAPI.
    pub api: SocketAddr,
    /// The internal listener: gateway checks, health, metrics.
    pub internal: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Dur,
    /// Longest wait for a request's head, and for an API request's body.
    pub read_timeout: Dur,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            api: SocketAddr::from(([0, 0, 0, 0], 8080)),
            internal: SocketAddr::from(([0, 0, 0, 0], 9191)),
            shutdown_grace: Dur::secs(10),
            read_timeout: Dur::secs(10),
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
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/usher"),
            pool_size: 16,
            timeout: Dur::secs(2),
            create_if_missing: true,
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
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: Secret::new("redis://127.0.0.1:6379/0"),
            prefix: "usher:".into(),
            timeout: Dur::millis(500),
        }
    }
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
    /// Loads the layers; `file` is the optional `usher.toml`.
    pub fn load(file: Option<&Path>) -> Result<Config, figment::Error> {
        Self::figment(file).extract()
    }

    /// The layered provider, exposed for tests.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(legacy_env()).merge(
            Env::prefixed("USHER_")
                .filter(|key| key != "config" && key != "superuser_password")
                .split("__"),
        )
    }

    /// A copy fit to print: secrets masked.
    pub fn masked(&self) -> Config {
        let mut copy = self.clone();
        copy.database.url = Secret::new(mask_url(self.database.url.expose()));
        copy.redis.url = Secret::new(mask_url(self.redis.url.expose()));
        if copy.tokens.hs256_secret.is_some() {
            copy.tokens.hs256_secret = Some(Secret::new("***"));
        }
        copy
    }
}

/// The old service's variables, mapped onto usher's keys.
fn legacy_env() -> Figment {
    let mut figment = Figment::new();
    if let Ok(hours) = std::env::var("ACCESS_EXPIRES_IN_HOURS") {
        figment = figment.merge(Serialized::default(
            "tokens.access_ttl",
            format!("{}h", hours.trim()),
        ));
    }
    if let Ok(days) = std::env::var("REFRESH_EXPIRES_IN_DAYS") {
        figment = figment.merge(Serialized::default(
            "tokens.refresh_ttl",
            format!("{}d", days.trim()),
        ));
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        figment = figment.merge(Serialized::default("database.url", url));
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        figment = figment.merge(Serialized::default("redis.url", url));
    }
    figment
}

/// Replaces the password of `scheme://user:password@host` with `***`.
fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "***".into();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return url.into();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.into(),
    }
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
            if ms >= size && ms % size == 0 {
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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Dur::secs(s)),
            Raw::Text(t) => Dur::parse(&t).map_err(serde::de::Error::custom),
        }
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
            Ok(())
        });
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
