//! Signing keys: generated, loaded from PostgreSQL or a PEM file, rotated and retired.

use std::collections::HashMap;

use anyhow::Context;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use deadpool_postgres::Pool;
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::{Keys, VerifyingKey, LEEWAY_SECS};
use crate::config::{self, Algorithm};
use crate::store;
use crate::store::keys::StoredKey;

pub(super) fn jwt_alg(a: Algorithm) -> jsonwebtoken::Algorithm {
    match a {
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
    }
}

pub(super) fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
    }
}

pub(super) async fn load_keys(pool: &Pool, cfg: &config::Tokens) -> anyhow::Result<Keys> {
    let stored = match (cfg.algorithm, &cfg.key_file, &cfg.hs256_secret) {
        (Algorithm::EdDSA, Some(path), _) => vec![ed25519_from_pem_file(path)?],
        (Algorithm::HS256, _, Some(secret)) => {
            let secret = secret.expose().as_bytes().to_vec();
            anyhow::ensure!(
                secret.len() >= 32,
                "tokens.hs256_secret must be at least 32 bytes"
            );
            vec![StoredKey {
                kid: kid_of(&secret, "hs"),
                private_key: secret,
                public_key: Vec::new(),
                retires_at: None,
            }]
        }
        (alg, _, _) => {
            let name = algorithm_name(alg);
            // A rotated-out key's last tokens expire `access_ttl` after the next key was
            // made, give or take replicas that learnt of the rotation late.
            let retire_after = (cfg.access_ttl.0.as_secs() as i64 + LEEWAY_SECS) as f64;
            let mut keys = store::keys::list(pool, name, retire_after).await?;
            if keys.is_empty() {
                store::keys::insert_first(pool, name, &generate(alg)?).await?;
                keys = store::keys::list(pool, name, retire_after).await?;
            }
            keys
        }
    };
    build_keys(cfg.algorithm, stored)
}

/// Adds a new signing key; the old ones keep verifying until their tokens expire.
pub async fn rotate(pool: &Pool, cfg: &config::Tokens) -> anyhow::Result<String> {
    anyhow::ensure!(
        cfg.key_file.is_none() && cfg.hs256_secret.is_none(),
        "keys are configured from a file or secret; replace it to rotate"
    );
    let key = generate(cfg.algorithm)?;
    store::keys::insert(pool, algorithm_name(cfg.algorithm), &key).await?;
    Ok(key.kid)
}

/// Retires the key `kid` at once (a leaked key): it leaves the JWKS and its tokens are
/// refused once replicas reload their keys. The key that signs cannot be retired: rotate
/// first.
pub async fn retire(pool: &Pool, kid: &str) -> anyhow::Result<()> {
    match store::keys::retire(pool, kid).await? {
        store::keys::Retired::Now | store::keys::Retired::Already => Ok(()),
        store::keys::Retired::Unknown => anyhow::bail!("there is no signing key {kid:?}"),
        store::keys::Retired::Signing => anyhow::bail!(
            "{kid} is the key that signs new tokens; run `usher keys rotate` first, then \
             retire it"
        ),
    }
}

/// 32 bytes from the system's random source.
pub(super) fn random_bytes() -> anyhow::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(bytes)
}

pub(super) fn generate(alg: Algorithm) -> anyhow::Result<StoredKey> {
    let rng = SystemRandom::new();
    match alg {
        Algorithm::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|_| anyhow::anyhow!("reading the new Ed25519 key failed"))?;
            let public_key = pair.public_key().as_ref().to_vec();
            Ok(StoredKey {
                kid: kid_of(&public_key, "ed"),
                private_key: pkcs8.as_ref().to_vec(),
                public_key,
                retires_at: None,
            })
        }
        Algorithm::HS256 => {
            let secret = random_bytes()?;
            Ok(StoredKey {
                kid: kid_of(&secret, "hs"),
                private_key: secret,
                public_key: Vec::new(),
                retires_at: None,
            })
        }
    }
}

/// Key ids: a prefix and 16 hex digits of a hash, never the key itself.
pub(super) fn kid_of(material: &[u8], prefix: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, material);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}-{hex}")
}

pub(super) fn ed25519_from_pem_file(path: &std::path::Path) -> anyhow::Result<StoredKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading tokens.key_file {}", path.display()))?;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = STANDARD
        .decode(body)
        .with_context(|| format!("{} is not a PEM file", path.display()))?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 private key", path.display()))?;
    let public_key = pair.public_key().as_ref().to_vec();
    Ok(StoredKey {
        kid: kid_of(&public_key, "ed"),
        private_key: der,
        public_key,
        retires_at: None,
    })
}

pub(super) fn build_keys(alg: Algorithm, stored: Vec<StoredKey>) -> anyhow::Result<Keys> {
    // The newest key signs; the list comes newest first.
    let newest = stored.first().context("no signing key")?;
    let signing = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_der(&newest.private_key),
        Algorithm::HS256 => EncodingKey::from_secret(&newest.private_key),
    };
    let mut verifying = HashMap::new();
    let mut jwks = Vec::new();
    for key in &stored {
        let decoding = match alg {
            Algorithm::EdDSA => {
                let x = URL_SAFE_NO_PAD.encode(&key.public_key);
                jwks.push((
                    key.retires_at,
                    serde_json::json!({
                        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                        "kid": key.kid, "x": x,
                    }),
                ));
                DecodingKey::from_ed_components(&x)
                    .context("an Ed25519 public key is unreadable")?
            }
            Algorithm::HS256 => DecodingKey::from_secret(&key.private_key),
        };
        verifying.insert(
            key.kid.clone(),
            VerifyingKey {
                key: decoding,
                retires_at: key.retires_at,
            },
        );
    }
    Ok(Keys {
        signing_kid: newest.kid.clone(),
        signing,
        verifying,
        jwks,
    })
}
