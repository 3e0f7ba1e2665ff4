//! The environment layers: the old service's variables, and secrets read from the file named
//! by `VAR_FILE`.

use std::path::PathBuf;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

/// The secrets: key, its variable, and the old service's variable for it.
pub(super) const SECRETS: [(&str, &str, Option<&str>); 3] = [
    ("database.url", "USHER_DATABASE__URL", Some("DATABASE_URL")),
    ("redis.url", "USHER_REDIS__URL", Some("REDIS_URL")),
    ("tokens.hs256_secret", "USHER_TOKENS__HS256_SECRET", None),
];

/// `SECTION__KEY_FILE` of a secret: read by [`SecretFile`], not a key of its own.
pub(super) fn is_secret_file(key: &str) -> bool {
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
pub(super) struct SecretFile {
    key: &'static str,
    value: Result<Option<String>, String>,
    source: String,
}

impl SecretFile {
    pub(super) fn read(key: &'static str, var: &str) -> SecretFile {
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
pub(super) fn legacy_env(mut figment: Figment) -> Figment {
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
