//! Who is calling: a bearer token → a `Principal`, through a cache of verified tokens so that
//! a repeated token costs neither a signature check nor a network round trip.
//!
//! `fast` is the check endpoint's hot path: a lookup by the token's SHA-256 digest, an expiry
//! comparison and `Revocation::cached`. `authenticate` adds the slow
//! path behind it: signature verification and, when memory cannot tell, Redis or PostgreSQL.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use uuid::Uuid;

use crate::cache::Compact;

use crate::config;
use crate::revocation::{Cached, Revocation, Unavailable};
use crate::tokens::TokenError;
use crate::tokens::{AccessClaims, Tokens};

/// A verified caller.
#[derive(Debug)]
pub struct Principal {
    /// The user.
    pub user: Uuid,
    /// The session.
    pub session: Uuid,
    /// Role names the token carries (current: a stale token never becomes a principal),
    /// shared by every principal with the same roles.
    pub roles: Arc<Roles>,
    /// The token's roles version.
    pub rv: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// `x-user-id` then `x-session-id`, rendered once (72 bytes): each answer takes two slices
    /// of it, a reference count each, instead of rendering and allocating two strings.
    ids: Bytes,
    /// The revocation epoch at which this token was last found valid (0: never).
    checked_epoch: AtomicU64,
    /// When (Unix seconds) it was.
    checked_at: AtomicI64,
}

impl Principal {
    /// The identity header values for the gateway, all three shared: the ids with this
    /// principal, the roles value with every principal of the same roles.
    pub fn headers(&self) -> IdentityHeaders {
        IdentityHeaders {
            user_id: self.ids.slice(..ID_LEN),
            roles: self.roles.header.clone(),
            session_id: self.ids.slice(ID_LEN..),
        }
    }

    /// A principal from verified claims, its roles shared through `roles`.
    fn new(c: AccessClaims, roles: &RoleSets) -> Self {
        let roles = roles.share(c.roles);
        let mut ids = Vec::with_capacity(2 * ID_LEN);
        for id in [c.sub, c.sid] {
            ids.extend_from_slice(
                id.hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes(),
            );
        }
        let ids = Bytes::from(ids);
        // Made shared now, once, rather than by the first slice on a check.
        drop(ids.clone());
        Principal {
            user: c.sub,
            session: c.sid,
            ids,
            roles,
            rv: c.rv,
            exp: c.exp,
            checked_epoch: AtomicU64::new(0),
            checked_at: AtomicI64::new(0),
        }
    }

    /// Whether it was found valid at `epoch` less than `within` seconds before `now`.
    fn still_valid(&self, epoch: u64, now: i64, within: i64) -> bool {
        self.checked_epoch.load(Ordering::Acquire) == epoch
            && now - self.checked_at.load(Ordering::Relaxed) < within
    }

    /// Notes that it was found valid at `epoch`.
    fn remember(&self, epoch: Option<u64>, now: i64) {
        if let Some(epoch) = epoch {
            self.checked_at.store(now, Ordering::Relaxed);
            self.checked_epoch.store(epoch, Ordering::Release);
        }
    }
}

/// A token's role names and their `x-user-roles` value (comma-separated).
#[derive(Debug)]
pub struct Roles {
    names: Vec<String>,
    header: Bytes,
}

impl Roles {
    fn new(names: Vec<String>) -> Self {
        Roles {
            header: Bytes::from(names.join(",")),
            names,
        }
    }
}

impl Deref for Roles {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.names
    }
}

/// The distinct role sets seen, so that the cached principals share them: there are few
/// (one per combination of roles in use) against one principal per session.
#[derive(Default)]
struct RoleSets(Mutex<HashMap<Vec<String>, Arc<Roles>>>);

/// Distinct role sets kept at most; past it the set starts again (sharing is only a saving).
const MAX_ROLE_SETS: usize = 10_000;

impl RoleSets {
    fn share(&self, names: Vec<String>) -> Arc<Roles> {
        let mut sets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(roles) = sets.get(&names) {
            return roles.clone();
        }
        if sets.len() >= MAX_ROLE_SETS {
            sets.clear();
        }
        let roles = Arc::new(Roles::new(names.clone()));
        sets.insert(names, roles.clone());
        roles
    }
}

/// `x-user-id`, `x-user-roles`, `x-session-id` as bytes ready for a header value.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// `x-user-id`.
    pub user_id: Bytes,
    /// `x-user-roles`, comma-separated.
    pub roles: Bytes,
    /// `x-session-id`.
    pub session_id: Bytes,
}

impl From<AccessClaims> for Principal {
    /// A principal with roles of its own (not shared).
    fn from(c: AccessClaims) -> Self {
        Principal::new(c, &RoleSets::default())
    }
}

/// Length of a hyphenated UUID.
const ID_LEN: usize = 36;

/// The cache key of a token: its SHA-256 digest. SHA-256 is collision resistant, so two
/// different token texts never share a key and a lookup by digest answers exactly what a
/// lookup by the text would; the key takes 32 bytes instead of the token's ≈ 480.
pub fn token_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Why a token did not make a principal.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// 401 with this code.
    #[error("token refused: {0:?}")]
    Token(TokenError),
    /// 503: state needed for the decision cannot be read.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The verified-token cache.
pub struct Guard {
    verified: Compact<[u8; 32], Arc<Principal>>,
    ttl: std::time::Duration,
    roles: RoleSets,
    /// Bumped by `forget_all`: a verification that began before it is not cached after it.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Guard {
    /// An empty cache.
    pub fn new(cache: &config::Cache, access_ttl: std::time::Duration) -> Self {
        Guard {
            verified: Compact::new(cache.tokens),
            ttl: access_ttl,
            roles: RoleSets::default(),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Forgets every verified token, so each is verified again (a signing key retired). Call
    /// it after the keys changed.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.clear();
    }

    /// `(answered from memory, needed more)` since start.
    pub fn hit_counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Memory only: `None` means the slow path must run.
    pub fn fast(
        &self,
        revocation: &Revocation,
        token: &str,
        now: i64,
    ) -> Option<Result<Arc<Principal>, TokenError>> {
        let answer = self.answer_from_memory(revocation, token, now);
        let counter = if answer.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    fn answer_from_memory(
        &self,
        revocation: &Revocation,
        token: &str,
        now: i64,
    ) -> Option<Result<Arc<Principal>, TokenError>> {
        let principal = self.verified.get(&token_key(token))?;
        if now >= principal.exp {
            return Some(Err(TokenError::Expired));
        }
        // Read before the lookups: what they find valid is valid at this epoch.
        let epoch = revocation.epoch();
        let recheck = revocation.recheck_after().as_secs() as i64;
        if epoch.is_some_and(|e| principal.still_valid(e, now, recheck)) {
            return Some(Ok(principal));
        }
        match revocation.cached(principal.session, principal.user, principal.rv) {
            Cached::Valid => {
                principal.remember(epoch, now);
                Some(Ok(principal))
            }
            Cached::Revoked => Some(Err(TokenError::Revoked)),
            Cached::Stale => Some(Err(TokenError::Stale)),
            Cached::Unknown => None,
        }
    }

    /// The whole check of a bearer token.
    pub async fn authenticate(
        &self,
        tokens: &Tokens,
        revocation: &Revocation,
        token: &str,
    ) -> Result<Arc<Principal>, Refused> {
        let now = chrono::Utc::now().timestamp();
        if let Some(answer) = self.fast(revocation, token, now) {
            return answer.map_err(Refused::Token);
        }
        self.slow(tokens, revocation, token).await
    }

    /// Caches a verified token's principal under `key` (`token_key`), unless `forget_all`
    /// ran since `generation` (read before the verification) was read.
    pub fn admit(&self, key: [u8; 32], claims: AccessClaims, generation: u64) -> Arc<Principal> {
        let p = Arc::new(Principal::new(claims, &self.roles));
        self.verified.insert(key, p.clone(), self.ttl);
        if self.generation.load(Ordering::Acquire) != generation {
            self.verified.remove(&key);
        }
        p
    }

    /// The current generation, to hand to `admit`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Verified tokens held.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    /// Whether no verified token is held.
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }

    /// What `authenticate` does after `fast` returned `None`: verify the signature (once per
    /// token) and ask Redis or PostgreSQL what memory could not tell.
    pub async fn slow(
        &self,
        tokens: &Tokens,
        revocation: &Revocation,
        token: &str,
    ) -> Result<Arc<Principal>, Refused> {
        let key = token_key(token);
        let principal = match self.verified.get(&key) {
            Some(p) => p,
            None => {
                // Read before verifying: if the keys change meanwhile, this verification may
                // have used a retired key, and must not outlive the change in the cache.
                // Checked after inserting, so a `forget_all` either sees the entry (and clears
                // it) or bumps the generation before this check (and the entry goes here).
                let generation = self.generation();
                let claims = tokens.verify(token).map_err(Refused::Token)?;
                self.admit(key, claims, generation)
            }
        };
        let epoch = revocation.epoch();
        match revocation
            .check(principal.session, principal.user, principal.rv)
            .await?
        {
            Cached::Valid | Cached::Unknown => {
                principal.remember(epoch, chrono::Utc::now().timestamp());
                Ok(principal)
            }
            Cached::Revoked => Err(Refused::Token(TokenError::Revoked)),
            Cached::Stale => Err(Refused::Token(TokenError::Stale)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::change::Change;
    use crate::revocation::testing::revocation;

    struct Setup {
        guard: Guard,
        tokens: Tokens,
        revocation: Revocation,
    }

    fn setup() -> Setup {
        let config = config::Config::default();
        Setup {
            guard: Guard::new(&config.cache, config.tokens.access_ttl.0),
            tokens: Tokens::ephemeral(&config.tokens).unwrap(),
            revocation: revocation(),
        }
    }

    fn fast(s: &Setup, token: &str, now: i64) -> Option<Result<(Uuid, Uuid), TokenError>> {
        s.guard
            .fast(&s.revocation, token, now)
            .map(|r| r.map(|p| (p.session, p.user)))
    }

    #[test]
    fn a_remembered_validation_holds_for_its_epoch_and_its_time_only() {
        let p = Principal::from(AccessClaims {
            iss: "usher".into(),
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            jti: Uuid::new_v4(),
            iat: 0,
            nbf: 0,
            exp: 1_000,
            roles: vec!["user".into(), "critic".into()],
            rv: 1,
            typ: "access".into(),
        });
        assert_eq!(&p.headers().roles[..], b"user,critic");
        assert!(!p.still_valid(0, 100, 5), "never checked");
        // The feed was down: nothing to remember.
        p.remember(None, 100);
        assert!(!p.still_valid(0, 100, 5));
        p.remember(Some(7), 100);
        assert!(p.still_valid(7, 104, 5));
        assert!(!p.still_valid(8, 104, 5), "something happened since");
        assert!(!p.still_valid(7, 105, 5), "too long ago");
    }

    #[tokio::test]
    async fn memory_answers_a_known_token_and_never_outlives_a_revocation() {
        let s = setup();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = s.tokens.issue(user, session, vec![], 2).unwrap();
        let now = claims.iat;
        assert!(fast(&s, &token, now).is_none(), "never verified");
        // The slow path verifies and caches the token; PostgreSQL is unreachable here and
        // Redis has no complete mirror: 503, never an allow.
        let slow = s.guard.slow(&s.tokens, &s.revocation, &token).await;
        assert!(matches!(slow, Err(Refused::Unavailable(_))), "{slow:?}");
        assert!(fast(&s, &token, now).is_none(), "memory cannot tell yet");

        // The states become known and the feed is up: answered from memory.
        s.revocation.learn(session, user, false, 1);
        assert!(fast(&s, &token, now).is_none(), "the feed is down");
        s.revocation.set_feed_up(true);
        assert_eq!(fast(&s, &token, now), Some(Ok((session, user))));
        // Again, by the epoch shortcut; a revocation moves the epoch and is seen.
        assert_eq!(fast(&s, &token, now), Some(Ok((session, user))));
        s.revocation.apply(&Change::Session(session));
        assert_eq!(fast(&s, &token, now), Some(Err(TokenError::Revoked)));
        s.revocation.set_feed_up(false);
        assert_eq!(
            fast(&s, &token, now),
            Some(Err(TokenError::Revoked)),
            "revoked is believed with the feed down"
        );
        assert_eq!(
            fast(&s, &token, claims.exp),
            Some(Err(TokenError::Expired)),
            "expiry comes first"
        );
        let (hits, misses) = s.guard.hit_counts();
        assert_eq!((hits, misses), (5, 3));
    }

    #[tokio::test]
    async fn newer_roles_make_a_token_stale_and_forget_all_empties_the_cache() {
        let s = setup();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, claims) = s.tokens.issue(user, session, vec![], 2).unwrap();
        s.revocation.learn(session, user, false, 2);
        s.revocation.set_feed_up(true);
        let ok = s.guard.slow(&s.tokens, &s.revocation, &token).await;
        assert_eq!(ok.unwrap().rv, 2);
        assert_eq!(fast(&s, &token, claims.iat), Some(Ok((session, user))));
        s.revocation.apply(&Change::Roles { user, rv: 3 });
        assert_eq!(fast(&s, &token, claims.iat), Some(Err(TokenError::Stale)));
        let stale = s.guard.slow(&s.tokens, &s.revocation, &token).await;
        assert!(matches!(stale, Err(Refused::Token(TokenError::Stale))));
        // A signing key retired: every token is verified again.
        s.guard.forget_all();
        assert!(fast(&s, &token, claims.iat).is_none());
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused_and_not_cached() {
        let s = setup();
        let (token, claims) = s
            .tokens
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], 1)
            .unwrap();
        // One character well inside the signature, changed.
        let at = token.len() - 10;
        let other = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{other}{}", &token[..at], &token[at + 1..]);
        let refused = s.guard.slow(&s.tokens, &s.revocation, &forged).await;
        assert!(matches!(refused, Err(Refused::Token(TokenError::Invalid))));
        assert!(fast(&s, &forged, claims.iat).is_none());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod shared_roles {
    use super::*;

    #[test]
    fn principals_with_the_same_roles_share_them_and_render_their_headers() {
        let tokens = Tokens::ephemeral(&config::Tokens::default()).unwrap();
        let guard = Guard::new(
            &config::Cache::default(),
            std::time::Duration::from_secs(60),
        );
        let roles = vec!["critic".to_owned(), "user".to_owned()];
        let admitted: Vec<_> = (0..2)
            .map(|_| {
                let (token, claims) = tokens
                    .issue(Uuid::new_v4(), Uuid::new_v4(), roles.clone(), 0)
                    .unwrap();
                (token_key(&token), guard.admit(token_key(&token), claims, 0))
            })
            .collect();
        let (a, b) = (&admitted[0].1, &admitted[1].1);
        assert!(Arc::ptr_eq(&a.roles, &b.roles));
        assert_eq!(&a.roles[..], &roles[..]);
        let h = a.headers();
        assert_eq!(h.user_id, a.user.to_string());
        assert_eq!(h.session_id, a.session.to_string());
        assert_eq!(h.roles, "critic,user");
        // each token finds its own principal by its digest
        for (key, p) in &admitted {
            let found = guard.verified.get(key).unwrap();
            assert!(Arc::ptr_eq(&found, p));
        }
        assert_eq!(guard.len(), 2);
        guard.forget_all();
        assert!(guard.is_empty());
    }
}
