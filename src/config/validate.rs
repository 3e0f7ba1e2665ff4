//! The checks made after loading, and errors that name each bad key and where it was set.

use figment::error::{Actual, Kind};
use figment::{Figment, Metadata};

use super::{Config, RedisMode};

impl Config {
    /// Refuses zero durations and sizes, naming the key and where it was set.
    pub(super) fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
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
}

/// A configuration that cannot be used; the message names each bad key and its source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// One line per problem: `key: what is wrong (where it was set)`.
    pub(super) fn explain(error: &figment::Error) -> ConfigError {
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
