//! Revocation: whether a session has ended and whether a user's roles changed, answered from
//! memory on the hot path and kept right across replicas.
//!
//! PostgreSQL is the truth (`sessions.revoked_at`, `users.roles_version`). Redis mirrors what
//! matters for the lifetime of an access token in a few hashes, `marks:<0..16>` (every key is
//! named in `kv::keys`): field `s:<sid>` for an ended session, `u:<uid>` for a user's lowest
//! acceptable roles version, and `synced` saying the hash is complete. Each replica keeps two compact caches in front, and a
//! change feed (Redis pub/sub, see `feed`) writes every change into every replica's caches as
//! it happens.
//!
//! Trust rules, which are what keep the 1-second bound:
//! - "revoked" and "roles version ≥ n" only ever grow, so a cached one is always believed;
//! - "not revoked" and "not stale" are believed from the cache only while the feed is up;
//!   when it is down, every check asks Redis, or PostgreSQL when Redis cannot answer;
//! - Redis's silence means "valid" only from a hash that holds `synced`. Redis evicts, expires
//!   and deletes whole keys, so a hash that lost a mark has lost `synced` with it; a missing
//!   mark in an incomplete hash means "ask PostgreSQL";
//! - a change that did not reach Redis is kept, in order, and retried by `mend` until it does;
//!   until then and until the mirror is rebuilt, this replica asks PostgreSQL, not Redis;
//! - a fetched answer never undoes a newer one from the feed (revoked: `or`, versions: `max`),
//!   and a fetch that began before the caches were cleared does not store what it found.
//!
//! The caches are sharded maps read under a shard's read lock; nothing here holds a lock
//! across an `.await`, and the one mutex (the queue of pending changes) is taken only when a
//! change is made or retried, never on a check. On top of the caches, an epoch counter lets
//! the hot path skip both lookups for a token it already found valid when nothing that could
//! revoke it has happened since.
//!
//! Files: `cache` holds the two caches and when to believe them, `marks` the Redis
//! mirror (reads, writes, rebuild, pruning), `mend` the queue of changes that did not reach
//! Redis yet and the task that retries them.

mod cache;
mod marks;
mod mend;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::change::Change;
use crate::config;
use crate::kv::{Kv, KvError};
use crate::store::{self, StoreError};

use cache::States;
use mend::Pending;

/// Neither Redis nor PostgreSQL could answer.
#[derive(Debug, thiserror::Error)]
#[error("revocation state unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<StoreError> for Unavailable {
    fn from(e: StoreError) -> Self {
        Unavailable(e.to_string())
    }
}

impl From<KvError> for Unavailable {
    fn from(e: KvError) -> Self {
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
    states: States,
    feed_up: AtomicBool,
    /// The Redis mirror may lack something (a change not written yet, a lost hash, a fresh
    /// start): checks ask PostgreSQL, not Redis, and `mend` rebuilds the mirror. Only set and
    /// cleared with `pending` locked, so a clear never hides a newer failure.
    redis_behind: AtomicBool,
    pending: Mutex<Pending>,
    /// Wakes `mend`.
    wake: Notify,
    mirror_ttl: Duration,
    /// Bumped after every change that can make a valid token invalid (a revocation, a raised
    /// roles version, the feed going down or coming back). A token found valid at epoch `e` is
    /// still valid while the epoch is `e`: the hot path then skips both cache lookups.
    epoch: AtomicU64,
    state_ttl: Duration,
    /// The Redis master generation (`Kv::generation`) last seen by `fetch`.
    master_seen: AtomicU64,
}

impl Revocation {
    /// Empty caches; the feed is down until `feed::run` brings it up.
    pub fn new(kv: Arc<Kv>, pool: Pool, cache: &config::Cache, access_ttl: Duration) -> Self {
        Revocation {
            pool,
            states: States::new(cache.states, cache.state_ttl.0),
            feed_up: AtomicBool::new(false),
            redis_behind: AtomicBool::new(true),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            mirror_ttl: access_ttl.max(Duration::from_secs(1)),
            epoch: AtomicU64::new(1),
            state_ttl: cache.state_ttl.0,
            master_seen: AtomicU64::new(kv.generation()),
            kv,
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
        self.states.cached(session, user, rv, feed_up)
    }

    /// The full answer: memory, else Redis, else PostgreSQL.
    pub async fn check(&self, session: Uuid, user: Uuid, rv: i64) -> Result<Cached, Unavailable> {
        match self.cached(session, user, rv) {
            Cached::Unknown => {}
            known => return Ok(known),
        }
        let generation = self.states.generation();
        let (revoked, min_rv) = self.fetch(session, user).await?;
        let (revoked, min_rv) = self
            .states
            .store(generation, session, user, revoked, min_rv);
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

    /// Whether Redis may be behind PostgreSQL (a change not written yet, a lost hash).
    pub fn redis_is_behind(&self) -> bool {
        self.redis_behind.load(Ordering::Acquire)
    }

    async fn fetch(&self, session: Uuid, user: Uuid) -> Result<(bool, i64), Unavailable> {
        // A new Redis master (a Sentinel or Cluster failover) may lack marks the old one
        // acknowledged: ask PostgreSQL until the mirror is rebuilt, and never take an answer
        // read across the change.
        let generation = self.kv.generation();
        if self.master_seen.swap(generation, Ordering::AcqRel) != generation {
            tracing::warn!("Redis has a new master; asking PostgreSQL until the mirror is rebuilt");
            self.fell_behind();
        }
        if !self.redis_is_behind() {
            match self.ask_redis(session, user).await {
                Ok(Some(answer)) if self.kv.generation() == generation => return Ok(answer),
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!("the Redis mirror is incomplete; asking PostgreSQL");
                    self.fell_behind();
                }
                Err(e) => tracing::debug!(error = %e, "Redis cannot answer; asking PostgreSQL"),
            }
        }
        let db = store::conn(&self.pool).await?;
        let revoked = store::sessions::is_revoked(&db, session).await?;
        let rv = store::users::roles_version(&db, user)
            .await?
            .unwrap_or(i64::MAX);
        Ok((revoked, rv))
    }

    /// After sessions were revoked in PostgreSQL: this replica at once, then Redis and the
    /// other replicas. A Redis failure keeps the change for `mend` to retry.
    pub async fn sessions_revoked(&self, sessions: &[Uuid]) {
        if sessions.is_empty() {
            return;
        }
        for sid in sessions {
            self.states.revoke(*sid);
        }
        self.bump();
        self.push(sessions.iter().copied().map(Change::Session).collect())
            .await;
    }

    /// After a user's roles changed in PostgreSQL (their version is now `rv`).
    pub async fn roles_changed(&self, user: Uuid, rv: i64) {
        self.states.raise(user, rv);
        self.bump();
        self.push(vec![Change::Roles { user, rv }]).await;
    }

    /// Tells every replica, this one included, something other than revocation changed
    /// (`Change::Catalog`, `Change::Keys`), after what revocation changes are still queued.
    pub async fn announce(&self, change: Change) {
        self.push(vec![change]).await;
    }

    /// Forgets every cached state (a replica's pending changes overflowed).
    fn forget(&self) {
        self.states.clear();
        self.bump();
    }

    /// Applies one change heard on the feed. Announcements are the feed's business: nothing
    /// cached here depends on them.
    pub fn apply(&self, change: &Change) {
        match *change {
            Change::Session(sid) => {
                self.states.revoke(sid);
                self.bump();
            }
            Change::Roles { user, rv } => {
                self.states.raise(user, rv);
                self.bump();
            }
            Change::Everything => self.forget(),
            Change::Catalog | Change::Keys => {}
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
        self.forget();
        self.resync().await?;
        self.feed_up.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the feed is up.
    pub fn feed_is_up(&self) -> bool {
        self.feed_up.load(Ordering::Acquire)
    }
}

/// A `Revocation` over the test Redis with a fresh key prefix, and what tests need to steer
/// it without the feed.
#[cfg(test)]
pub(crate) mod testing {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Over the Redis of the tests (`USHER_TEST_REDIS_URL`, else the local default), with a
    /// PostgreSQL that refuses every connection: a test that reaches it sees `Unavailable`.
    pub(crate) fn revocation() -> Revocation {
        let mut redis = config::Redis::default();
        if let Ok(url) = std::env::var("USHER_TEST_REDIS_URL") {
            redis.url = config::Secret::new(url);
        }
        redis.prefix = format!("usher-unit:{}:", Uuid::new_v4().simple());
        let kv = Kv::new(&redis).unwrap();
        let pg: tokio_postgres::Config = "host=127.0.0.1 port=1 user=nobody connect_timeout=1"
            .parse()
            .unwrap();
        let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
        let pool = Pool::builder(manager).max_size(1).build().unwrap();
        Revocation::new(kv, pool, &config::Cache::default(), Duration::from_secs(60))
    }

    impl Revocation {
        /// As if the feed had come up (or gone down).
        pub(crate) fn set_feed_up(&self, up: bool) {
            self.feed_up.store(up, Ordering::Release);
            self.bump();
        }

        /// As if a fetch had found this.
        pub(crate) fn learn(&self, session: Uuid, user: Uuid, revoked: bool, min_rv: i64) {
            self.states
                .store(self.states.generation(), session, user, revoked, min_rv);
        }

        /// Deletes this test's keys.
        pub(crate) async fn clean_up(&self) {
            let mut pipe = redis::pipe();
            for n in 0..crate::kv::keys::BUCKETS {
                pipe.cmd("DEL")
                    .arg(self.kv.key(crate::kv::keys::marks(n)))
                    .ignore();
            }
            self.kv.run::<()>(&pipe).await.unwrap();
        }
    }
}
