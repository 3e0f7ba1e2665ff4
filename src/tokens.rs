//! Access tokens (JWT, EdDSA or HS256), signing keys kept in PostgreSQL or a PEM file and
//! their retirement, the JWKS, and opaque refresh tokens (stored only as SHA-256 hashes; a
//! successor is derived from the token it replaces with a server-side HMAC key).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use deadpool_postgres::Pool;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{self, Algorithm};
use crate::store;
use crate::store::keys::StoredKey;

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

fn jwt_alg(a: Algorithm) -> jsonwebtoken::Algorithm {
    match a {
        Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
    }
}

async fn load_keys(pool: &Pool, cfg: &config::Tokens) -> anyhow::Result<Keys> {
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
fn random_bytes() -> anyhow::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(bytes)
}

fn generate(alg: Algorithm) -> anyhow::Result<StoredKey> {
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
fn kid_of(material: &[u8], prefix: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, material);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}-{hex}")
}

fn ed25519_from_pem_file(path: &std::path::Path) -> anyhow::Result<StoredKey> {
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

fn build_keys(alg: Algorithm, stored: Vec<StoredKey>) -> anyhow::Result<Keys> {
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
mod tests {
    use super::*;

    fn tokens_with(alg: Algorithm, keys: Vec<StoredKey>, ttl: u64) -> Tokens {
        let cfg = config::Tokens {
            algorithm: alg,
            access_ttl: config::Dur::secs(ttl),
            ..config::Tokens::default()
        };
        Tokens::with_keys(&cfg, build_keys(alg, keys).unwrap(), b"refresh key")
    }

    fn ed() -> Tokens {
        tokens_with(
            Algorithm::EdDSA,
            vec![generate(Algorithm::EdDSA).unwrap()],
            60,
        )
    }

    fn sign_raw(t: &Tokens, header: &Header, claims: &serde_json::Value) -> String {
        let keys = t.keys.load();
        jsonwebtoken::encode(header, claims, &keys.signing).unwrap()
    }

    fn claims_json(iat: i64, exp: i64, typ: &str) -> serde_json::Value {
        serde_json::json!({
            "iss": "usher", "sub": Uuid::new_v4(), "sid": Uuid::new_v4(), "jti": Uuid::new_v4(),
            "iat": iat, "nbf": iat, "exp": exp, "roles": ["user"], "rv": 0, "typ": typ,
        })
    }

    fn header(t: &Tokens, alg: jsonwebtoken::Algorithm) -> Header {
        let mut h = Header::new(alg);
        h.kid = Some(t.keys.load().signing_kid.clone());
        h
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let t = ed();
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = t.issue(user, sid, vec!["user".into()], 3).unwrap();
        let back = t.verify(&token).unwrap();
        assert_eq!(back, claims);
        assert_eq!(
            (back.sub, back.sid, back.rv, back.typ.as_str()),
            (user, sid, 3, "access")
        );
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert!(header.kid.unwrap().starts_with("ed-"));
    }

    #[test]
    fn another_key_is_refused() {
        let t = ed();
        let other = ed();
        let (token, _) = other
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
            .unwrap();
        assert_eq!(t.verify(&token), Err(TokenError::Invalid));
        // even with the kid forged to ours
        let now = chrono::Utc::now().timestamp();
        let forged = sign_raw(
            &other,
            &header(&t, jsonwebtoken::Algorithm::EdDSA),
            &claims_json(now, now + 60, "access"),
        );
        assert_eq!(t.verify(&forged), Err(TokenError::Invalid));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let t = ed();
        let (token, _) = t.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
        let mut parts = token.split('.');
        let (_, payload) = (parts.next(), parts.next().unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            t.verify(&format!("{none_header}.{payload}.")),
            Err(TokenError::Invalid)
        );
        // an HS256 token keyed with the public key (algorithm confusion)
        let keys = t.keys.load();
        let public = t.jwks();
        let hs = jsonwebtoken::encode(
            &header(&t, jsonwebtoken::Algorithm::HS256),
            &claims_json(0, i64::MAX / 2, "access"),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        drop(keys);
        assert_eq!(t.verify(&hs), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let t = ed();
        let now = chrono::Utc::now().timestamp();
        let h = header(&t, jsonwebtoken::Algorithm::EdDSA);
        let expired = sign_raw(&t, &h, &claims_json(now - 120, now - 60, "access"));
        assert_eq!(t.verify(&expired), Err(TokenError::Expired));
        let future = sign_raw(&t, &h, &claims_json(now + 600, now + 900, "access"));
        assert_eq!(t.verify(&future), Err(TokenError::Invalid));
        let refresh_typed = sign_raw(&t, &h, &claims_json(now, now + 60, "refresh"));
        assert_eq!(t.verify(&refresh_typed), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_expires_after_the_second_its_exp_names() {
        let t = ed();
        let (token, claims) = t.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
        assert_eq!(claims.exp - claims.iat, 60);
        assert!(t.verify_at(&token, claims.iat).is_ok());
        assert!(t.verify_at(&token, claims.exp).is_ok());
        assert_eq!(
            t.verify_at(&token, claims.exp + 1),
            Err(TokenError::Expired)
        );
        // and it was not valid before it was issued, beyond the leeway for clock skew
        assert!(t.verify_at(&token, claims.iat - LEEWAY_SECS).is_ok());
        assert_eq!(
            t.verify_at(&token, claims.iat - LEEWAY_SECS - 1),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn iat_and_nbf_may_be_up_to_30_s_ahead() {
        let t = ed();
        let now = chrono::Utc::now().timestamp();
        let h = header(&t, jsonwebtoken::Algorithm::EdDSA);
        // a replica whose clock runs 20 s ahead issued it
        let ahead = sign_raw(&t, &h, &claims_json(now + 20, now + 80, "access"));
        assert!(t.verify(&ahead).is_ok());
        let too_far = sign_raw(&t, &h, &claims_json(now + 60, now + 120, "access"));
        assert_eq!(t.verify(&too_far), Err(TokenError::Invalid));
        // each claim on its own
        let mut nbf_only = claims_json(now, now + 120, "access");
        nbf_only["nbf"] = (now + 60).into();
        assert_eq!(
            t.verify(&sign_raw(&t, &h, &nbf_only)),
            Err(TokenError::Invalid)
        );
        let mut iat_only = claims_json(now, now + 120, "access");
        iat_only["iat"] = (now + 60).into();
        assert_eq!(
            t.verify(&sign_raw(&t, &h, &iat_only)),
            Err(TokenError::Invalid)
        );
        // the leeway is not stretched to `exp`
        let just_expired = sign_raw(&t, &h, &claims_json(now - 60, now - 1, "access"));
        assert_eq!(t.verify(&just_expired), Err(TokenError::Expired));
    }

    #[test]
    fn a_retired_key_leaves_the_jwks_and_stops_verifying() {
        let old = generate(Algorithm::EdDSA).unwrap();
        let signer = tokens_with(
            Algorithm::EdDSA,
            vec![StoredKey {
                kid: old.kid.clone(),
                private_key: old.private_key.clone(),
                public_key: old.public_key.clone(),
                retires_at: None,
            }],
            600,
        );
        let (token, _) = signer
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
            .unwrap();
        let now = chrono::Utc::now().timestamp();
        let with_old_retiring_at = |at: i64| {
            let old = StoredKey {
                retires_at: Some(at),
                ..StoredKey {
                    kid: old.kid.clone(),
                    private_key: old.private_key.clone(),
                    public_key: old.public_key.clone(),
                    retires_at: None,
                }
            };
            tokens_with(
                Algorithm::EdDSA,
                vec![generate(Algorithm::EdDSA).unwrap(), old],
                600,
            )
        };
        let before = with_old_retiring_at(now + 60);
        assert!(before.verify(&token).is_ok());
        let jwks: serde_json::Value = serde_json::from_slice(&before.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        let after = with_old_retiring_at(now);
        assert_eq!(after.verify(&token), Err(TokenError::Invalid));
        let jwks: serde_json::Value = serde_json::from_slice(&after.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids.len(), 1);
        assert!(!kids.contains(&old.kid.as_str()));
    }

    #[test]
    fn a_successor_is_the_same_for_one_token_and_needs_the_key() {
        let t = ed();
        let (token, _) = new_refresh_token().unwrap();
        let (a, ha) = t.successor(&token);
        let (b, hb) = t.successor(&token);
        assert_eq!((&a, &ha), (&b, &hb));
        assert_eq!(ha, hash_refresh_token(&a));
        assert_eq!(a.len(), 43);
        assert_ne!(t.successor(&a).0, a);
        let cfg = config::Tokens::default();
        let other_key = Tokens::with_keys(
            &cfg,
            build_keys(Algorithm::EdDSA, vec![generate(Algorithm::EdDSA).unwrap()]).unwrap(),
            b"another refresh key",
        );
        assert_ne!(other_key.successor(&token).0, a);
    }

    #[test]
    fn garbage_is_refused() {
        let t = ed();
        for junk in [
            "",
            "a",
            "a.b",
            "a.b.c",
            "....",
            "ey.ey.ey",
            &"x".repeat(10_000),
            "\u{0}.\u{1}.\u{2}",
        ] {
            assert_eq!(t.verify(junk), Err(TokenError::Invalid), "{junk:?}");
        }
    }

    #[test]
    fn hs256_works_and_ed_tokens_do_not_pass_it() {
        let hs = tokens_with(
            Algorithm::HS256,
            vec![generate(Algorithm::HS256).unwrap()],
            60,
        );
        let (token, _) = hs.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
        assert!(hs.verify(&token).is_ok());
        let (ed_token, _) = ed()
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
            .unwrap();
        assert_eq!(hs.verify(&ed_token), Err(TokenError::Invalid));
        assert_eq!(&hs.jwks()[..], br#"{"keys":[]}"#);
    }

    #[test]
    fn rotated_keys_keep_verifying_old_tokens() {
        let first = generate(Algorithm::EdDSA).unwrap();
        let first_copy = StoredKey {
            kid: first.kid.clone(),
            private_key: first.private_key.clone(),
            public_key: first.public_key.clone(),
            retires_at: None,
        };
        let old = tokens_with(Algorithm::EdDSA, vec![first], 60);
        let (token, _) = old
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
            .unwrap();
        let second = generate(Algorithm::EdDSA).unwrap();
        let new_kid = second.kid.clone();
        let rotated = tokens_with(Algorithm::EdDSA, vec![second, first_copy], 60);
        assert!(rotated.verify(&token).is_ok());
        let (fresh, _) = rotated
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0)
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap(),
            new_kid
        );
        let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn ed25519_keys_load_from_a_pem_file() {
        let key = generate(Algorithm::EdDSA).unwrap();
        let body = STANDARD.encode(&key.private_key);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
        let path = std::env::temp_dir().join(format!("usher-key-{}.pem", Uuid::new_v4()));
        std::fs::write(&path, pem).unwrap();
        let loaded = ed25519_from_pem_file(&path).unwrap();
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(ed25519_from_pem_file(&path).is_err());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.kid, key.kid);
        assert_eq!(loaded.public_key, key.public_key);
        let t = tokens_with(Algorithm::EdDSA, vec![loaded], 60);
        let (token, _) = t.issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 0).unwrap();
        assert!(t.verify(&token).is_ok());
    }

    #[test]
    fn refresh_tokens_are_long_random_and_hashed() {
        let (a, ha) = new_refresh_token().unwrap();
        let (b, _) = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(ha, hash_refresh_token(&a));
        assert_eq!(ha.len(), 32);
    }
}
