//! Revocation: whether a session has ended and whether a user's roles changed, answered from
//! memory on the hot path and kept right across replicas.
//!
//! PostgreSQL is the truth (`sessions.revoked_at`, `users.roles_version`). Redis mirrors what
//! matters for the lifetime of an access token in a few hashes, `marks:<0..BUCKETS>`: field
//! `s:<sid>` for an ended session, `u:<uid>` for a user's lowest acceptable roles version, and
//! `synced` saying the hash is complete. Each replica keeps two compact caches (`cache::Compact`) in front, and a
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

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::cache::Compact;
use crate::config;
use crate::kv::{Kv, KvError};
use crate::store::{self, StoreError};

/// The feed channel's name after the prefix.
pub const FEED: &str = "feed";

/// How many hashes the marks are spread over (by the last byte of the id), so that a Redis
/// losing one loses only a share of them, and a cluster spreads them across shards.
const BUCKETS: u8 = 16;

/// The field that says a marks hash is complete.
const SYNCED: &str = "synced";

/// Kept past a mark's useful life, for replicas whose clocks differ.
const MARK_MARGIN_SECS: i64 = 60;

/// Changes kept for Redis at most; past it they collapse into one "forget everything".
const MAX_PENDING: usize = 10_000;

/// The retry delays of `mend`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

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

/// A change on its way to Redis and the other replicas.
#[derive(Debug, Clone)]
enum Change {
    /// Sessions ended.
    Sessions(Vec<Uuid>),
    /// A user's roles version rose to this.
    Roles(Uuid, i64),
    /// Something else changed (`c`: roles and grants, `k`: signing keys).
    Announce(String),
    /// Too many changes were pending: every replica forgets its caches (`r`) and the mirror
    /// is rebuilt from PostgreSQL.
    Everything,
}

/// The two caches and the generation that guards them against late writers.
struct States {
    /// sid → revoked?
    sessions: Compact<Uuid, bool>,
    /// uid → lowest roles version a token may carry (`i64::MIN`: no recent change).
    users: Compact<Uuid, i64>,
    /// How long an entry lives.
    ttl: Duration,
    /// Bumped whenever the caches are cleared: an answer fetched before may be older than
    /// what was missed, so it must not be stored after.
    generation: AtomicU64,
}

impl States {
    fn new(capacity: u64, ttl: Duration) -> Self {
        States {
            sessions: Compact::new(capacity),
            users: Compact::new(capacity),
            ttl,
            generation: AtomicU64::new(0),
        }
    }

    /// Read before a fetch; hand it to `store`.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets everything. The generation moves first, so a writer that checked it before
    /// either had its entry cleared here or sees the new generation when it looks again.
    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.sessions.clear();
        self.users.clear();
    }

    fn cached(&self, session: Uuid, user: Uuid, rv: i64, feed_up: bool) -> Cached {
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

    fn revoke(&self, session: Uuid) {
        self.sessions.insert(session, true, self.ttl);
    }

    fn raise(&self, user: Uuid, rv: i64) {
        self.users
            .upsert(user, self.ttl, |old| old.map_or(rv, |e| (*e).max(rv)));
    }

    /// Stores what a fetch that began at `generation` found, merged with what the feed wrote
    /// meanwhile (revoked stays revoked, versions grow), and returns the merged answer. If the
    /// caches were cleared since the fetch began, only news that can refuse is kept: "valid"
    /// from before a clear may be older than a change the clear stands for.
    fn store(
        &self,
        generation: u64,
        session: Uuid,
        user: Uuid,
        revoked: bool,
        min_rv: i64,
    ) -> (bool, i64) {
        if self.generation() != generation {
            if revoked {
                self.revoke(session);
            }
            return (revoked, min_rv);
        }
        let revoked = self
            .sessions
            .upsert(session, self.ttl, |old| old.is_some_and(|e| *e) || revoked);
        let min_rv = self.users.upsert(user, self.ttl, |old| {
            old.map_or(min_rv, |e| (*e).max(min_rv))
        });
        if self.generation() != generation {
            // A clear ran between the check above and the writes: undo them (forgetting a
            // "revoked" only costs a lookup).
            self.sessions.remove(&session);
            self.users.remove(&user);
        }
        (revoked, min_rv)
    }
}

/// Changes that did not reach Redis, oldest first, and how many failures there have been.
#[derive(Default)]
struct Pending {
    changes: VecDeque<Change>,
    failures: u64,
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

    /// How many changes wait for Redis.
    pub fn pending(&self) -> usize {
        self.lock_pending().changes.len()
    }

    async fn fetch(&self, session: Uuid, user: Uuid) -> Result<(bool, i64), Unavailable> {
        // A new Redis master (Sentinel failover) may lack marks the old one acknowledged: ask
        // PostgreSQL until the mirror is rebuilt, and never take an answer read across the change.
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

    /// `(revoked, lowest roles version)` when Redis can vouch for both, `None` when a hash it
    /// needs is incomplete.
    async fn ask_redis(&self, session: Uuid, user: Uuid) -> Result<Option<(bool, i64)>, KvError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.bucket(session))
            .arg(format!("s:{session}"))
            .arg(SYNCED);
        pipe.cmd("HMGET")
            .arg(self.bucket(user))
            .arg(format!("u:{user}"))
            .arg(SYNCED);
        let (s, u): (Vec<Option<String>>, Vec<Option<String>>) = self.kv.run(&pipe).await?;
        let field = |v: &[Option<String>], i: usize| v.get(i).cloned().flatten();
        let revoked = field(&s, 0).is_some();
        let session_known = revoked || field(&s, 1).is_some();
        let user_known = field(&u, 1).is_some();
        if !(session_known && user_known) {
            return Ok(None);
        }
        let min_rv = field(&u, 0)
            .and_then(|v| v.split(' ').next().and_then(|rv| rv.parse().ok()))
            .unwrap_or(i64::MIN);
        Ok(Some((revoked, min_rv)))
    }

    /// The hash that holds the marks of `id`.
    fn bucket(&self, id: Uuid) -> String {
        self.bucket_key(id.as_bytes()[15] % BUCKETS)
    }

    fn bucket_key(&self, n: u8) -> String {
        self.kv.key(format_args!("marks:{n}"))
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
        self.push(Change::Sessions(sessions.to_vec())).await;
    }

    /// After a user's roles changed in PostgreSQL (their version is now `rv`).
    pub async fn roles_changed(&self, user: Uuid, rv: i64) {
        self.states.raise(user, rv);
        self.bump();
        self.push(Change::Roles(user, rv)).await;
    }

    /// Tells every replica something other than revocation changed (`c`: roles and grants,
    /// `k`: signing keys).
    pub async fn announce(&self, what: &str) {
        self.push(Change::Announce(what.to_owned())).await;
    }

    /// Writes a change to Redis and publishes it, or keeps it for `mend`.
    async fn push(&self, change: Change) {
        // Changes still waiting go first: a roles version must not go back in Redis.
        if !self.lock_pending().changes.is_empty() {
            self.defer(change);
            return;
        }
        let mut pipe = redis::pipe();
        self.write(&mut pipe, &change);
        if let Err(e) = self.kv.run::<()>(&pipe).await {
            tracing::warn!(error = %e, "a change did not reach Redis; retrying, PostgreSQL decides meanwhile");
            self.defer(change);
        }
    }

    /// Adds the commands that mirror and publish `change`: marks first, so that a replica
    /// that hears of it and then asks Redis finds the mark.
    fn write(&self, pipe: &mut redis::Pipeline, change: &Change) {
        let messages = match change {
            Change::Sessions(sessions) => {
                self.write_marks(pipe, sessions, &[]);
                sessions.iter().map(|sid| format!("s {sid}")).collect()
            }
            Change::Roles(user, rv) => {
                self.write_marks(pipe, &[], &[(*user, *rv)]);
                vec![format!("u {user} {rv}")]
            }
            Change::Announce(what) => vec![what.clone()],
            Change::Everything => vec!["r".to_owned()],
        };
        let feed = self.kv.key(FEED);
        for message in messages {
            pipe.cmd("PUBLISH").arg(&feed).arg(message).ignore();
        }
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it; if something did, the queue is still consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a change for `mend` and stops believing Redis until it is written.
    fn defer(&self, change: Change) {
        {
            let mut pending = self.lock_pending();
            if pending.changes.len() >= MAX_PENDING {
                // Every change is in PostgreSQL: one "forget and rebuild" stands for them all.
                pending.changes.clear();
                pending.changes.push_back(Change::Everything);
            }
            pending.changes.push_back(change);
            pending.failures += 1;
            self.redis_behind.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Redis was found lacking something: ask PostgreSQL until `mend` has rebuilt it.
    fn fell_behind(&self) {
        {
            let mut pending = self.lock_pending();
            pending.failures += 1;
            self.redis_behind.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Keeps Redis current: retries pending changes in order, with backoff, until Redis has
    /// them, then rebuilds the mirror from PostgreSQL; every so often drops expired marks.
    /// Runs until `shutdown` flips to true.
    pub async fn mend(&self, mut shutdown: watch::Receiver<bool>) {
        let mut delay = RETRY_FIRST;
        let prune_every = self.mirror_ttl.max(Duration::from_secs(10));
        let mut next_prune = tokio::time::Instant::now() + prune_every;
        loop {
            let wait = if self.redis_is_behind() {
                tokio::time::sleep(delay)
            } else {
                tokio::time::sleep_until(next_prune)
            };
            tokio::select! {
                _ = wait => {}
                _ = self.wake.notified() => {
                    // A first failure: give the connection a moment to come back.
                    tokio::time::sleep(delay).await;
                }
                _ = shutdown.changed() => {
                    if let Err(e) = self.flush().await {
                        tracing::error!(error = %e, "changes not written to Redis at shutdown; other replicas may miss them");
                    }
                    return;
                }
            }
            if tokio::time::Instant::now() >= next_prune {
                next_prune = tokio::time::Instant::now() + prune_every;
                if let Err(e) = self.prune().await {
                    tracing::debug!(error = %e, "expired marks not pruned");
                }
            }
            match self.catch_up().await {
                Ok(()) => delay = RETRY_FIRST,
                Err(e) => {
                    tracing::debug!(error = %e, "Redis still behind");
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn catch_up(&self) -> Result<(), Unavailable> {
        self.flush().await?;
        if self.redis_is_behind() {
            self.resync().await?;
        }
        Ok(())
    }

    /// Writes the pending changes, oldest first, in one pipeline. The hashes they touch lose
    /// `synced` first, so that while a mark cannot be written (Redis out of memory) no replica
    /// takes its absence for "valid"; the rebuild that follows restores it.
    async fn flush(&self) -> Result<(), KvError> {
        let batch: Vec<Change> = self.lock_pending().changes.iter().cloned().collect();
        if batch.is_empty() {
            return Ok(());
        }
        let mut buckets = BTreeSet::new();
        for change in &batch {
            match change {
                Change::Sessions(sessions) => {
                    buckets.extend(sessions.iter().map(|s| s.as_bytes()[15] % BUCKETS));
                }
                Change::Roles(user, _) => {
                    buckets.insert(user.as_bytes()[15] % BUCKETS);
                }
                Change::Announce(_) => {}
                Change::Everything => buckets.extend(0..BUCKETS),
            }
        }
        let mut pipe = redis::pipe();
        for n in buckets {
            pipe.cmd("HDEL")
                .arg(self.bucket_key(n))
                .arg(SYNCED)
                .ignore();
        }
        for change in &batch {
            self.write(&mut pipe, change);
        }
        self.kv.run::<()>(&pipe).await?;
        // Only `mend` takes changes off the front; others were added behind them.
        let mut pending = self.lock_pending();
        let done = batch.len().min(pending.changes.len());
        pending.changes.drain(..done);
        tracing::info!(changes = done, "pending changes written to Redis");
        Ok(())
    }

    /// Drops marks whose token lifetime has passed (the hashes have no expiry of their own);
    /// `mend` calls it once per access-token lifetime.
    pub async fn prune(&self) -> Result<(), KvError> {
        let now = chrono::Utc::now().timestamp();
        for n in 0..BUCKETS {
            let key = self.bucket_key(n);
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::pipe();
                scan.cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1000);
                let ((next, fields),): ((u64, Vec<(String, String)>),) = self.kv.run(&scan).await?;
                let expired: Vec<&String> = fields
                    .iter()
                    .filter(|(field, value)| {
                        field != SYNCED
                            && value
                                .rsplit(' ')
                                .next()
                                .and_then(|t| t.parse::<i64>().ok())
                                .is_some_and(|t| t < now)
                    })
                    .map(|(field, _)| field)
                    .collect();
                if !expired.is_empty() {
                    let mut del = redis::pipe();
                    del.cmd("HDEL").arg(&key).arg(expired).ignore();
                    self.kv.run::<()>(&del).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// Forgets every cached state (a replica's pending changes overflowed).
    fn forget(&self) {
        self.states.clear();
        self.bump();
    }

    /// Applies one feed message.
    pub fn apply(&self, message: &str) {
        let mut parts = message.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("s"), Some(sid), None) => {
                if let Ok(sid) = sid.parse() {
                    self.states.revoke(sid);
                    self.bump();
                }
            }
            (Some("u"), Some(uid), Some(rv)) => {
                if let (Ok(uid), Ok(rv)) = (uid.parse(), rv.parse()) {
                    self.states.raise(uid, rv);
                    self.bump();
                }
            }
            (Some("r"), None, None) => self.forget(),
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
        self.forget();
        self.resync().await?;
        self.feed_up.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the feed is up.
    pub fn feed_is_up(&self) -> bool {
        self.feed_up.load(Ordering::Acquire)
    }

    /// Copies the revocations of the last access-token lifetime from PostgreSQL to Redis and
    /// marks every hash complete. Runs when Redis may have lost or missed something. While
    /// changes are still pending the marks are written but not `synced`: Redis stays behind.
    pub async fn resync(&self) -> Result<(), Unavailable> {
        // Asking Redis first also spares PostgreSQL a rebuild while Redis is unreachable.
        if self.all_synced().await? && !self.redis_is_behind() {
            return Ok(());
        }
        let failures = self.lock_pending().failures;
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(self.mirror_ttl).unwrap_or(chrono::Duration::hours(1));
        let (sessions, users) = {
            let db = store::conn(&self.pool).await?;
            (
                store::sessions::revoked_since(&db, since).await?,
                store::users::roles_changed_since(&db, since).await?,
            )
        };
        let complete = self.lock_pending().changes.is_empty();
        let mut pipe = redis::pipe();
        self.write_marks(&mut pipe, &sessions, &users);
        if complete {
            for n in 0..BUCKETS {
                pipe.cmd("HSET")
                    .arg(self.bucket_key(n))
                    .arg(SYNCED)
                    .arg(1)
                    .ignore();
            }
        }
        self.kv.run::<()>(&pipe).await?;
        let pending = self.lock_pending();
        if complete && pending.failures == failures && pending.changes.is_empty() {
            self.redis_behind.store(false, Ordering::Release);
            drop(pending);
            tracing::info!(
                sessions = sessions.len(),
                users = users.len(),
                "Redis revocation mirror rebuilt from PostgreSQL"
            );
        }
        Ok(())
    }

    /// Whether every marks hash holds `synced`.
    async fn all_synced(&self) -> Result<bool, Unavailable> {
        let mut check = redis::pipe();
        for n in 0..BUCKETS {
            check.cmd("HEXISTS").arg(self.bucket_key(n)).arg(SYNCED);
        }
        let found: Vec<bool> = self.kv.run(&check).await?;
        Ok(found.len() == usize::from(BUCKETS) && found.iter().all(|s| *s))
    }

    /// The marks of ended sessions and raised roles versions, kept one access-token lifetime
    /// (plus a margin). A rebuild writes only these: the replicas that missed the changes
    /// clear their caches when their feed comes back.
    fn write_marks(&self, pipe: &mut redis::Pipeline, sessions: &[Uuid], users: &[(Uuid, i64)]) {
        let expires = chrono::Utc::now().timestamp()
            + i64::try_from(self.mirror_ttl.as_secs()).unwrap_or(i64::MAX / 2)
            + MARK_MARGIN_SECS;
        for sid in sessions {
            pipe.cmd("HSET")
                .arg(self.bucket(*sid))
                .arg(format!("s:{sid}"))
                .arg(expires)
                .ignore();
        }
        for (uid, rv) in users {
            pipe.cmd("EVAL")
                .arg(RAISE)
                .arg(1)
                .arg(self.bucket(*uid))
                .arg(format!("u:{uid}"))
                .arg(rv)
                .arg(expires)
                .ignore();
        }
    }
}

/// Sets a roles version mark unless it holds a higher one already: replicas' writes of two
/// quick changes may land out of order, and a lowered mark would let tokens of the older
/// roles pass once caches expire.
const RAISE: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(string.match(current, '^%-?%d+')) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 1
";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn states() -> States {
        States::new(100, Duration::from_secs(60))
    }

    #[test]
    fn a_fetch_from_before_a_clear_stores_revoked_but_not_valid() {
        for (revoked, then) in [(false, Cached::Unknown), (true, Cached::Revoked)] {
            let states = states();
            let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
            let began = states.generation();
            // The feed reconnects while the fetch is in flight: caches cleared.
            states.clear();
            let answer = states.store(began, session, user, revoked, 3);
            assert_eq!(
                answer,
                (revoked, 3),
                "the caller still gets what was fetched"
            );
            assert_eq!(states.cached(session, user, 3, true), then);
        }
    }

    #[test]
    fn a_fetch_with_no_clear_is_stored_and_never_undoes_the_feed() {
        let states = states();
        let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
        let began = states.generation();
        states.store(began, session, user, false, 3);
        assert_eq!(states.cached(session, user, 3, true), Cached::Valid);
        assert_eq!(states.cached(session, user, 3, false), Cached::Unknown);
        // The feed raised the version and ended the session while another fetch was out.
        let began = states.generation();
        states.raise(user, 5);
        states.revoke(session);
        assert_eq!(states.store(began, session, user, false, 3), (true, 5));
        assert_eq!(states.cached(session, user, 4, true), Cached::Revoked);
    }
}
