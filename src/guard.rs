//! Who is calling: a bearer token → a `Principal`, through a cache of verified tokens so that
//! a repeated token costs neither a signature check nor a network round trip.
//!
//! `fast` is the check endpoint's hot path: a moka lookup by the token text (borrowed, so no
//! allocation), an expiry comparison and `Revocation::cached`. `authenticate` adds the slow
//! path behind it: signature verification and, when memory cannot tell, Redis or PostgreSQL.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;
use uuid::Uuid;

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
    /// Role names the token carries (current: a stale token never becomes a principal).
    pub roles: Vec<String>,
    /// The token's roles version.
    pub rv: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Identity header values for the gateway, rendered once per token.
    pub headers: IdentityHeaders,
    /// The revocation epoch at which this token was last found valid (0: never).
    checked_epoch: AtomicU64,
    /// When (Unix seconds) it was.
    checked_at: AtomicI64,
}

impl Principal {
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
    fn from(c: AccessClaims) -> Self {
        let headers = IdentityHeaders {
            user_id: Bytes::from(c.sub.to_string()),
            roles: Bytes::from(c.roles.join(",")),
            session_id: Bytes::from(c.sid.to_string()),
        };
        Principal {
            user: c.sub,
            session: c.sid,
            roles: c.roles,
            rv: c.rv,
            exp: c.exp,
            headers,
            checked_epoch: AtomicU64::new(0),
            checked_at: AtomicI64::new(0),
        }
    }
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
    verified: Cache<String, Arc<Principal>>,
    /// Bumped by `forget_all`: a verification that began before it is not cached after it.
    generation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Guard {
    /// An empty cache.
    pub fn new(cache: &config::Cache, access_ttl: std::time::Duration) -> Self {
        Guard {
            verified: Cache::builder()
                .max_capacity(cache.tokens)
                .time_to_live(access_ttl)
                .build(),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Forgets every verified token, so each is verified again (a signing key retired). Call
    /// it after the keys changed.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.invalidate_all();
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
        let principal = self.verified.get(token)?;
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

    /// What `authenticate` does after `fast` returned `None`: verify the signature (once per
    /// token) and ask Redis or PostgreSQL what memory could not tell.
    pub async fn slow(
        &self,
        tokens: &Tokens,
        revocation: &Revocation,
        token: &str,
    ) -> Result<Arc<Principal>, Refused> {
        let principal = match self.verified.get(token) {
            Some(p) => p,
            None => {
                // Read before verifying: if the keys change meanwhile, this verification may
                // have used a retired key, and must not outlive the change in the cache.
                // Checked after inserting, so a `forget_all` either sees the entry (and clears
                // it) or bumps the generation before this check (and the entry goes here).
                let generation = self.generation.load(Ordering::Acquire);
                let claims = tokens.verify(token).map_err(Refused::Token)?;
                let p = Arc::new(Principal::from(claims));
                self.verified.insert(token.to_owned(), p.clone());
                if self.generation.load(Ordering::Acquire) != generation {
                    self.verified.invalidate(token);
                }
                p
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
