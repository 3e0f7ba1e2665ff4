//! Revocation: whether a session has ended and whether a user's roles changed, answered from
//! memory on the hot path and kept right across replicas.
//!
//! PostgreSQL is the truth (`sessions.revoked_at`, `users.roles_version`). Redis mirrors what
//! matters for the lifetime of an access token (`revoked:<sid>`, `rv:<uid>`, with TTLs of one
//! access-token lifetime) plus a `synced` mark saying the mirror is complete. Each replica
//! keeps two moka caches in front, and a change feed (Redis pub/sub, see `feed`) writes every
//! change into every replica's caches as it happens.
//!
//! Trust rules, which are what keep the 1-second bound:
//! - "revoked" and "roles version ≥ n" only ever grow, so a cached one is always believed;
//! - "not revoked" and "not stale" are believed from the cache only while the feed is up;
//!   when it is down, every check asks Redis, or PostgreSQL when Redis cannot answer;
//! - a fetched answer never undoes a newer one from the feed (revoked: `or`, versions: `max`).
//!
//! The caches are lock-free reads (moka's concurrent hash map); nothing here holds a lock
//! across an `.await`. On top of them, an epoch counter lets the hot path skip both lookups
//! for a token it already found valid when nothing that could revoke it has happened since.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use moka::sync::Cache;
use uuid::Uuid;

use crate::config;
use crate::kv::Kv;
use crate::store::{self, StoreError};

/// The feed channel's name after the prefix.
pub const FEED: &str = "feed";

/// Neither Redis nor PostgreSQL could answer.
#[derive(Debug, thiserror::Error)]
#[error("revocation state unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<StoreError> for Unavailable {
    fn from(e: StoreError) -> Self {
        Unavailable(e.to_string())
    }
}

/// What the hot path learns about a token's session and user from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// The session has ended.
    Revoked,
    /// The token's roles are older than the user's.
    Stale,
    /// Believed valid, no network needed.
    Valid,
    /// Memory cannot tell: ask.
    Unknown,
}

/// The revocation state of this replica.
pub struct Revocation {
    kv: Arc<Kv>,
    pool: Pool,
    /// sid → revoked?
    sessions: Cache<Uuid, bool>,
    /// uid → lowest roles version a token may carry (`i64::MIN`: no recent change).
    users: Cache<Uuid, i64>,
    feed_up: AtomicBool,
    /// A change reached PostgreSQL but not Redis; the next feed start copies it over.
    redis_behind: AtomicBool,
    mirror_ttl: Duration,
    /// Bumped after every change that can make a valid token invalid (a revocation, a raised
    /// roles version, the feed going down or coming back). A token found valid at epoch `e` is
    /// still valid while the epoch is `e`: the hot path then skips both cache lookups.
    epoch: AtomicU64,
    state_ttl: Duration,
}

impl Revocation {
    /// Empty caches; the feed is down until `feed::run` brings it up.
    pub fn new(kv: Arc<Kv>, pool: Pool, cache: &config::Cache, access_ttl: Duration) -> Self {
        Revocation {
            kv,
            pool,
            sessions: Cache::builder()
                .max_capacity(cache.states)
                .time_to_live(cache.state_ttl.0)
                .build(),
            users: Cache::builder()
                .max_capacity(cache.states)
                .time_to_live(cache.state_ttl.0)
                .build(),
            feed_up: AtomicBool::new(false),
            redis_behind: AtomicBool::new(true),
            mirror_ttl: access_ttl.max(Duration::from_secs(1)),
            epoch: AtomicU64::new(1),
            state_ttl: cache.state_ttl.0,
        }
    }

    /// The current epoch while the feed is up; `None` when memory may not vouch for anything.
    /// Read it before looking at the caches: an answer found valid then is valid at that epoch.
    pub fn epoch(&self) -> Option<u64> {
        if self.feed_up.load(Ordering::Acquire) {
            Some(self.epoch.load(Ordering::Acquire))
        } else {
            None
        }
    }

    /// How long a validation may be reused without looking again, whatever the epoch: the
    /// same safety net as the caches' time to live.
    pub fn recheck_after(&self) -> Duration {
        self.state_ttl
    }

    /// Called after a change has been written to the caches.
    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Hot path: what memory alone can say of a token of `session` and `user` carrying
    /// roles version `rv`. No network, no lock, no allocation.
    pub fn cached(&self, session: Uuid, user: Uuid, rv: i64) -> Cached {
        let feed_up = self.feed_up.load(Ordering::Acquire);
        let session_ok = match self.sessions.get(&session) {
            Some(true) => return Cached::Revoked,
            Some(false) => feed_up,
            None => false,
        };
        let user_ok = match self.users.get(&user) {
            Some(min) if rv < min => return Cached::Stale,
            Some(_) => feed_up,
            None => false,
        };
        if session_ok && user_ok {
            Cached::Valid
        } else {
            Cached::Unknown
        }
    }

    /// The full answer: memory, else Redis, else PostgreSQL.
    pub async fn check(&self, session: Uuid, user: Uuid, rv: i64) -> Result<Cached, Unavailable> {
        match self.cached(session, user, rv) {
            Cached::Unknown => {}
            known => return Ok(known),
        }
        let (revoked, min_rv) = self.fetch(session, user).await?;
        // Never overwrite what the feed wrote meanwhile: revoked stays revoked, versions grow.
        let revoked = *self
            .sessions
            .entry(session)
            .and_upsert_with(|old| old.is_some_and(|e| *e.value()) || revoked)
            .value();
        let min_rv = *self
            .users
            .entry(user)
            .and_upsert_with(|old| old.map_or(min_rv, |e| (*e.value()).max(min_rv)))
            .value();
        let answer = if revoked {
            Cached::Revoked
        } else if rv < min_rv {
            Cached::Stale
        } else {
            Cached::Valid
        };
        if answer != Cached::Valid {
            // Learnt from Redis or PostgreSQL rather than the feed: make sure no shortcut
            // taken at an older epoch outlives it.
            self.bump();
        }
        Ok(answer)
    }

    async fn fetch(&self, session: Uuid, user: Uuid) -> Result<(bool, i64), Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg(self.kv.key(format_args!("revoked:{session}")))
            .arg(self.kv.key(format_args!("rv:{user}")))
            .arg(self.kv.key("synced"));
        match self.kv.run::<(Vec<Option<i64>>,)>(&pipe).await {
            Ok((values,)) if values.get(2).is_some_and(Option::is_some) => {
                let revoked = values.first().is_some_and(Option::is_some);
                let min_rv = values.get(1).copied().flatten().unwrap_or(i64::MIN);
                return Ok((revoked, min_rv));
            }
            Ok(_) => {
                tracing::warn!("the Redis mirror is incomplete; asking PostgreSQL");
                self.redis_behind.store(true, Ordering::Release);
            }
            Err(e) => tracing::debug!(error = %e, "Redis cannot answer; asking PostgreSQL"),
        }
        let db = store::conn(&self.pool).await?;
        let revoked = store::sessions::is_revoked(&db, session).await?;
        let rv = store::users::roles_version(&db, user)
            .await?
            .unwrap_or(i64::MAX);
        Ok((revoked, rv))
    }

    /// After sessions were revoked in PostgreSQL: this replica at once, then Redis and the
    /// other replicas. A Redis failure is logged and repaired when Redis is back.
    pub async fn sessions_revoked(&self, sessions: &[Uuid]) {
        if sessions.is_empty() {
            return;
        }
        for sid in sessions {
            self.sessions.insert(*sid, true);
        }
        self.bump();
        let mut pipe = redis::pipe();
        for sid in sessions {
            pipe.cmd("SET")
                .arg(self.kv.key(format_args!("revoked:{sid}")))
                .arg(1)
                .arg("EX")
                .arg(self.mirror_ttl.as_secs())
                .ignore();
            pipe.cmd("PUBLISH")
                .arg(self.kv.key(FEED))
                .arg(format!("s {sid}"))
                .ignore();
        }
        self.push(&pipe).await;
    }

    /// After a user's roles changed in PostgreSQL (their version is now `rv`).
    pub async fn roles_changed(&self, user: Uuid, rv: i64) {
        self.raise(user, rv);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.kv.key(format_args!("rv:{user}")))
            .arg(rv)
            .arg("EX")
            .arg(self.mirror_ttl.as_secs())
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(self.kv.key(FEED))
            .arg(format!("u {user} {rv}"))
            .ignore();
        self.push(&pipe).await;
    }

    /// Tells every replica something other than revocation changed (`c`: roles and grants,
    /// `k`: signing keys).
    pub async fn announce(&self, what: &str) {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(self.kv.key(FEED))
            .arg(what)
            .ignore();
        self.push(&pipe).await;
    }

    async fn push(&self, pipe: &redis::Pipeline) {
        if let Err(e) = self.kv.run::<()>(pipe).await {
            tracing::warn!(error = %e, "a change did not reach Redis; it will be copied when Redis is back");
            self.redis_behind.store(true, Ordering::Release);
        }
    }

    fn raise(&self, user: Uuid, rv: i64) {
        self.users
            .entry(user)
            .and_upsert_with(|old| old.map_or(rv, |e| (*e.value()).max(rv)));
        self.bump();
    }

    /// Applies one feed message.
    pub fn apply(&self, message: &str) {
        let mut parts = message.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("s"), Some(sid), None) => {
                if let Ok(sid) = sid.parse() {
                    self.sessions.insert(sid, true);
                    self.bump();
                }
            }
            (Some("u"), Some(uid), Some(rv)) => {
                if let (Ok(uid), Ok(rv)) = (uid.parse(), rv.parse()) {
                    self.raise(uid, rv);
                }
            }
            _ => {}
        }
    }

    /// The feed went down: stop believing "valid" from memory.
    pub fn feed_lost(&self) {
        self.feed_up.store(false, Ordering::Release);
        self.bump();
    }

    /// The feed is subscribed again. Messages may have been missed meanwhile, so forget
    /// everything, bring Redis up to date with PostgreSQL if it fell behind, then believe
    /// memory again.
    pub async fn feed_ready(&self) -> Result<(), Unavailable> {
        self.sessions.invalidate_all();
        self.users.invalidate_all();
        self.bump();
        self.resync().await?;
        self.feed_up.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the feed is up.
    pub fn feed_is_up(&self) -> bool {
        self.feed_up.load(Ordering::Acquire)
    }

    /// Copies the revocations of the last access-token lifetime from PostgreSQL to Redis and
    /// marks the mirror complete. Runs when Redis may have lost or missed something.
    pub async fn resync(&self) -> Result<(), Unavailable> {
        let mut check = redis::pipe();
        check.cmd("EXISTS").arg(self.kv.key("synced"));
        let (synced,): (bool,) = self
            .kv
            .run(&check)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        if synced && !self.redis_behind.load(Ordering::Acquire) {
            return Ok(());
        }
        self.redis_behind.store(false, Ordering::Release);
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(self.mirror_ttl).unwrap_or(chrono::Duration::hours(1));
        let db = store::conn(&self.pool).await.inspect_err(|_| {
            self.redis_behind.store(true, Ordering::Release);
        })?;
        let sessions = store::sessions::revoked_since(&db, since).await?;
        let users = store::users::roles_changed_since(&db, since).await?;
        drop(db);
        let mut pipe = redis::pipe();
        let ttl = self.mirror_ttl.as_secs();
        for sid in &sessions {
            pipe.cmd("SET")
                .arg(self.kv.key(format_args!("revoked:{sid}")))
                .arg(1)
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        for (uid, rv) in &users {
            pipe.cmd("SET")
                .arg(self.kv.key(format_args!("rv:{uid}")))
                .arg(rv)
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        pipe.cmd("SET").arg(self.kv.key("synced")).arg(1).ignore();
        self.kv.run::<()>(&pipe).await.map_err(|e| {
            self.redis_behind.store(true, Ordering::Release);
            Unavailable(e.to_string())
        })?;
        tracing::info!(
            sessions = sessions.len(),
            users = users.len(),
            "Redis revocation mirror rebuilt from PostgreSQL"
        );
        Ok(())
    }
}
