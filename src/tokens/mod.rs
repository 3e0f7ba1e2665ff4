//! Access tokens (JWT, EdDSA or HS256), signing keys kept in PostgreSQL or a PEM file and
//! their retirement, the JWKS, and opaque refresh tokens (stored only as SHA-256 hashes; a
//! successor is derived from the token it replaces with a server-side HMAC key).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use deadpool_postgres::Pool;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use ring::hmac;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{self, Algorithm};
use crate::store;

mod keys;
use keys::{build_keys, generate, jwt_alg, load_keys, random_bytes};
pub use keys::{retire, rotate};

/// Longest token usher looks at; anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 4096;

/// How far in the future `iat`/`nbf` may be (replicas' clocks differ), and how long after its
/// tokens can have expired a rotated-out key still verifies.
pub const LEEWAY_SECS: i64 = 30;

/// Why a token was refused. Each is answered with its own code (401 on the API, a denial
/// on the check endpoints); the wording is the edge's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, of the wrong type or the wrong issuer.
    Invalid,
    /// Past its `exp`.
    Expired,
    /// Its session ended.
    Revoked,
    /// The user's roles changed since it was issued: refresh.
    Stale,
    /// A used refresh token came back after the grace window.
    RefreshReused,
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// The user id.
    pub sub: Uuid,
    /// The session id.
    pub sid: Uuid,
    /// This token's id.
    pub jti: Uuid,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds): the same as `iat`.
    pub nbf: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// The user's role names when it was issued.
    pub roles: Vec<String>,
    /// The user's roles version when it was issued; a newer one makes the token stale.
    pub rv: i64,
    /// Always `access`.
    pub typ: String,
}

/// One key that verifies.
struct VerifyingKey {
    key: DecodingKey,
    /// From then on (Unix seconds) it verifies nothing.
    retires_at: Option<i64>,
}

/// The keys in force.
struct Keys {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, VerifyingKey>,
    /// The public JWKs with the time each retires at: a rotated-out key leaves the JWKS by
    /// itself, with no reload.
    jwks: Vec<(Option<i64>, serde_json::Value)>,
}

/// Issues and verifies access tokens.
pub struct Tokens {
    algorithm: Algorithm,
    issuer: String,
    access_ttl: i64,
    keys: ArcSwap<Keys>,
    validation: Validation,
    /// Derives refresh-token successors; the same on every replica (kept in PostgreSQL).
    refresh_key: hmac::Key,
}

impl Tokens {
    /// Loads the keys: the PEM file or HS256 secret when configured, otherwise the keys kept
    /// in PostgreSQL (generating the first one when there is none).
    pub async fn load(pool: &Pool, cfg: &config::Tokens) -> anyhow::Result<Tokens> {
        let keys = load_keys(pool, cfg).await?;
        let secret = store::keys::refresh_secret(pool, &random_bytes()?).await?;
        Ok(Tokens::with_keys(cfg, keys, &secret))
    }

    /// Tokens signed with a fresh key kept only in memory: for benchmarks and tools that
    /// need no database.
    pub fn ephemeral(cfg: &config::Tokens) -> anyhow::Result<Tokens> {
        let keys = build_keys(cfg.algorithm, vec![generate(cfg.algorithm)?])?;
        Ok(Tokens::with_keys(cfg, keys, &random_bytes()?))
    }

    fn with_keys(cfg: &config::Tokens, keys: Keys, refresh_secret: &[u8]) -> Tokens {
        let alg = jwt_alg(cfg.algorithm);
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        // `exp`, `iat` and `nbf` are judged in `verify_at`, against the time it is given: no
        // leeway on `exp`, `iat`/`nbf` get theirs (the library's one leeway would stretch both).
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[cfg.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
        Tokens {
            algorithm: cfg.algorithm,
            issuer: cfg.issuer.clone(),
            access_ttl: cfg.access_ttl.0.as_secs() as i64,
            keys: ArcSwap::from_pointee(keys),
            validation,
            refresh_key: hmac::Key::new(hmac::HMAC_SHA256, refresh_secret),
        }
    }

    /// Rereads the keys (after `usher keys rotate` or `keys retire` on any replica); true when
    /// a key that verified before no longer does.
    pub async fn reload(&self, pool: &Pool, cfg: &config::Tokens) -> anyhow::Result<bool> {
        let fresh = Arc::new(load_keys(pool, cfg).await?);
        let old = self.keys.swap(fresh.clone());
        Ok(old
            .verifying
            .keys()
            .any(|kid| !fresh.verifying.contains_key(kid)))
    }

    /// Lifetime of access tokens, in seconds.
    pub fn access_ttl(&self) -> i64 {
        self.access_ttl
    }

    /// Signs a new access token; returns it with its claims.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        roles: Vec<String>,
        roles_version: i64,
    ) -> anyhow::Result<(String, AccessClaims)> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: user,
            sid: session,
            jti: Uuid::new_v4(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl,
            roles,
            rv: roles_version,
            typ: "access".into(),
        };
        let keys = self.keys.load();
        let mut header = Header::new(jwt_alg(self.algorithm));
        header.kid = Some(keys.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &keys.signing)
            .context("signing an access token")?;
        Ok((token, claims))
    }

    /// Verifies signature, algorithm, issuer, time and type. Revocation is not its business.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    /// [`Tokens::verify`] at the time `now` (Unix seconds): expiry, `iat`, `nbf` and key
    /// retirement are judged against it, so a test passes a time instead of waiting for one.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let keys = self.keys.load();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| keys.verifying.get(kid))
            .filter(|k| k.retires_at.is_none_or(|at| now < at))
            .ok_or(TokenError::Invalid)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        let c = data.claims;
        // Valid through the second `exp` names, as the library judges it.
        if c.exp < now {
            return Err(TokenError::Expired);
        }
        if c.typ != "access" || c.nbf > now + LEEWAY_SECS || c.iat > now + LEEWAY_SECS {
            return Err(TokenError::Invalid);
        }
        Ok(c)
    }

    /// The JWK set of the keys that have not retired.
    pub fn jwks(&self) -> Bytes {
        let now = chrono::Utc::now().timestamp();
        let loaded = self.keys.load();
        let keys: Vec<&serde_json::Value> = loaded
            .jwks
            .iter()
            .filter(|(retires_at, _)| retires_at.is_none_or(|at| now < at))
            .map(|(_, jwk)| jwk)
            .collect();
        Bytes::from(serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default())
    }

    /// The refresh token that succeeds `token`, and its hash: HMAC-SHA256 of `token` under
    /// the server's refresh key. Every use of one token gets the same successor (so a replay
    /// within the grace window never forks the session), nobody without the key can compute
    /// it, and only its hash is stored.
    pub fn successor(&self, token: &str) -> (String, Vec<u8>) {
        let tag = hmac::sign(&self.refresh_key, token.as_bytes());
        let successor = URL_SAFE_NO_PAD.encode(tag.as_ref());
        let hash = hash_refresh_token(&successor);
        (successor, hash)
    }
}

/// A new refresh token (256 random bits, base64url) and its SHA-256 hash.
pub fn new_refresh_token() -> anyhow::Result<(String, Vec<u8>)> {
    let token = URL_SAFE_NO_PAD.encode(random_bytes()?);
    let hash = hash_refresh_token(&token);
    Ok((token, hash))
}

/// What is stored of a refresh token. Lookups go by this hash, so comparing it leaks nothing.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
