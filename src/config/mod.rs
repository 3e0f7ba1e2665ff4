//! Configuration: built-in defaults < `usher.toml` < legacy variables of the old service
//! (`ACCESS_EXPIRES_IN_HOURS`, `REFRESH_EXPIRES_IN_DAYS`, `DATABASE_URL`, `REDIS_URL`) <
//! `USHER_SECTION__KEY` environment variables. Only variables with a `__` are configuration,
//! so Kubernetes service links (`USHER_PORT=tcp://…`) are ignored. Every secret can also come
//! from a file named by its variable with `_FILE` appended. Unknown keys, and zero or negative
//! durations and sizes, are refused at startup naming the key and where it was set.
//!
//! - `sections`: one struct per section of the file, with its built-in defaults;
//! - `env`: the environment layers (legacy variables, secrets read from `_FILE`s);
//! - `validate`: the checks after loading, and errors that name the key and its source;
//! - `secret`: [`Secret`] and [`mask_url`], so no password reaches a log;
//! - `duration`: [`Dur`], durations written `90s`, `15m`, `1h`, `30d`.

mod duration;
mod env;
mod secret;
mod sections;
mod validate;

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use duration::Dur;
pub use env::secret_from_env;
pub use secret::{mask_url, Secret};
pub use sections::{
    Algorithm, Cache, Database, Listen, Log, LogFormat, Login, Passwords, Redis, RedisMode,
    Retention, Routes, Tokens,
};
pub use validate::ConfigError;

use env::{is_secret_file, legacy_env, SecretFile, SECRETS};

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
