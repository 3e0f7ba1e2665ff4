//! The Redis mirror of revocation: reads, writes, the rebuild from PostgreSQL and pruning.
//!
//! Every command touches one marks hash, and the commands for several hashes go as one
//! pipeline per hash, all at once: in a Redis Cluster each goes whole to the shard that holds
//! its hash (a pipeline across slots is refused there), and on one server they still share a
//! round trip. Publishing waits for the marks, so that a replica that hears of a change and
//! later asks Redis finds its mark.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use redis::Pipeline;
use uuid::Uuid;

use super::{Revocation, Unavailable};
use crate::change::Change;
use crate::kv::keys::{self, BUCKETS, SYNCED};
use crate::kv::{Kv, KvError};
use crate::store;

/// Kept past a mark's useful life, for replicas whose clocks differ.
const MARK_MARGIN_SECS: i64 = 60;

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

/// Commands for the marks hashes, one pipeline per hash, in the order they were added.
struct ByHash<'a> {
    kv: &'a Kv,
    pipes: BTreeMap<u8, Pipeline>,
}

impl<'a> ByHash<'a> {
    fn new(kv: &'a Kv) -> Self {
        ByHash {
            kv,
            pipes: BTreeMap::new(),
        }
    }

    /// Hash `n`'s pipeline and its key.
    fn on(&mut self, n: u8) -> (&mut Pipeline, String) {
        (
            self.pipes.entry(n).or_insert_with(redis::pipe),
            self.kv.key(keys::marks(n)),
        )
    }

    fn unsync(&mut self, n: u8) {
        let (pipe, key) = self.on(n);
        pipe.cmd("HDEL").arg(key).arg(SYNCED).ignore();
    }

    fn sync(&mut self, n: u8) {
        let (pipe, key) = self.on(n);
        pipe.cmd("HSET").arg(key).arg(SYNCED).arg(1).ignore();
    }

    fn session(&mut self, sid: Uuid, expires: i64) {
        let (pipe, key) = self.on(keys::bucket(sid));
        pipe.cmd("HSET")
            .arg(key)
            .arg(keys::session_mark(sid))
            .arg(expires)
            .ignore();
    }

    fn roles(&mut self, uid: Uuid, rv: i64, expires: i64) {
        let (pipe, key) = self.on(keys::bucket(uid));
        pipe.cmd("EVAL")
            .arg(RAISE)
            .arg(1)
            .arg(key)
            .arg(keys::roles_mark(uid))
            .arg(rv)
            .arg(expires)
            .ignore();
    }

    async fn run(self) -> Result<(), KvError> {
        self.kv.run_each(self.pipes.values()).await
    }
}

impl Revocation {
    /// `(revoked, lowest roles version)` when Redis can vouch for both, `None` when a hash it
    /// needs is incomplete.
    pub(super) async fn ask_redis(
        &self,
        session: Uuid,
        user: Uuid,
    ) -> Result<Option<(bool, i64)>, KvError> {
        let ask = |n: u8, field: String| {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(self.kv.key(keys::marks(n)))
                .arg(field)
                .arg(SYNCED);
            pipe
        };
        let pipes = [
            ask(keys::bucket(session), keys::session_mark(session)),
            ask(keys::bucket(user), keys::roles_mark(user)),
        ];
        let found: Vec<(Vec<Option<String>>,)> = self.kv.run_all(&pipes).await?;
        let (s, u) = match &found[..] {
            [(s,), (u,)] => (s, u),
            _ => return Err(KvError("HMGET answered out of shape".into())),
        };
        let field = |v: &[Option<String>], i: usize| v.get(i).cloned().flatten();
        let revoked = field(s, 0).is_some();
        let session_known = revoked || field(s, 1).is_some();
        let user_known = field(u, 1).is_some();
        if !(session_known && user_known) {
            return Ok(None);
        }
        let min_rv = field(u, 0)
            .and_then(|v| v.split(' ').next().and_then(|rv| rv.parse().ok()))
            .unwrap_or(i64::MIN);
        Ok(Some((revoked, min_rv)))
    }

    /// When a mark written now may be pruned: one access-token lifetime, plus a margin.
    fn mark_expiry(&self) -> i64 {
        chrono::Utc::now().timestamp()
            + i64::try_from(self.mirror_ttl.as_secs()).unwrap_or(i64::MAX / 2)
            + MARK_MARGIN_SECS
    }

    /// Mirrors `changes` in Redis (the hashes in `unsync` lose `synced` first), then
    /// publishes them on the feed, in order. An error if either failed.
    pub(super) async fn write(
        &self,
        changes: &[Change],
        unsync: &BTreeSet<u8>,
    ) -> Result<(), KvError> {
        let expires = self.mark_expiry();
        let mut marks = ByHash::new(&self.kv);
        for n in unsync {
            marks.unsync(*n);
        }
        for change in changes {
            match *change {
                Change::Session(sid) => marks.session(sid, expires),
                Change::Roles { user, rv } => marks.roles(user, rv, expires),
                Change::Everything | Change::Catalog | Change::Keys => {}
            }
        }
        // Published even when a mark failed (Redis out of memory refuses the mark, not the
        // message): the other replicas' caches take the change at once, and `mend` retries it.
        let marked = marks.run().await;
        let mut publish = redis::pipe();
        let feed = self.kv.key(keys::FEED);
        for change in changes {
            publish
                .cmd("PUBLISH")
                .arg(&feed)
                .arg(change.encode())
                .ignore();
        }
        let published = if changes.is_empty() {
            Ok(())
        } else {
            self.kv.run::<()>(&publish).await
        };
        marked.and(published)
    }

    /// Drops marks whose token lifetime has passed (the hashes have no expiry of their own);
    /// `mend` calls it once per access-token lifetime.
    pub async fn prune(&self) -> Result<(), KvError> {
        let now = chrono::Utc::now().timestamp();
        for n in 0..BUCKETS {
            let key = self.kv.key(keys::marks(n));
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
                    .filter(|(field, value)| field != SYNCED && expired(value, now))
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

    /// Copies the revocations of the last access-token lifetime from PostgreSQL to Redis and
    /// marks every hash complete. Runs when Redis may have lost or missed something. While
    /// changes are still pending the marks are written but not `synced`: Redis stays behind.
    /// A rebuild writes only marks: the replicas that missed the changes clear their caches
    /// when their feed comes back.
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
        let expires = self.mark_expiry();
        let mut marks = ByHash::new(&self.kv);
        for sid in &sessions {
            marks.session(*sid, expires);
        }
        for (uid, rv) in &users {
            marks.roles(*uid, *rv, expires);
        }
        if complete {
            // Each hash's `synced` goes after its own marks, in the same pipeline.
            for n in 0..BUCKETS {
                marks.sync(n);
            }
        }
        marks.run().await?;
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
        let pipes: Vec<Pipeline> = (0..BUCKETS)
            .map(|n| {
                let mut check = redis::pipe();
                check
                    .cmd("HEXISTS")
                    .arg(self.kv.key(keys::marks(n)))
                    .arg(SYNCED);
                check
            })
            .collect();
        let found: Vec<(bool,)> = self.kv.run_all(&pipes).await?;
        Ok(found.len() == usize::from(BUCKETS) && found.iter().all(|(s,)| *s))
    }
}

/// Whether a mark's value (`<expiry>` or `<rv> <expiry>`) has expired at `now`.
fn expired(value: &str, now: i64) -> bool {
    value
        .rsplit(' ')
        .next()
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| t < now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::revocation::testing::revocation;

    /// Writes `changes` as `push` does and marks every hash complete, as a rebuild would.
    async fn mirrored(r: &Revocation, changes: &[Change]) {
        r.write(changes, &BTreeSet::new()).await.unwrap();
        let mut marks = ByHash::new(&r.kv);
        for n in 0..BUCKETS {
            marks.sync(n);
        }
        marks.run().await.unwrap();
    }

    #[test]
    fn a_mark_expires_by_its_last_number() {
        assert!(expired("100", 101));
        assert!(expired("7 100", 101));
        assert!(!expired("7 100", 100));
        assert!(!expired("-3 200", 101));
        assert!(!expired("garbage", 101));
    }

    #[tokio::test]
    async fn redis_vouches_only_from_complete_hashes() {
        let r = revocation();
        let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(r.ask_redis(session, user).await.unwrap(), None);
        assert!(!r.all_synced().await.unwrap());
        mirrored(&r, &[]).await;
        assert!(r.all_synced().await.unwrap());
        assert_eq!(
            r.ask_redis(session, user).await.unwrap(),
            Some((false, i64::MIN))
        );
        // A change written with its hash unsynced first (as `flush` does): Redis no longer
        // vouches for anything in that hash until a rebuild.
        let other = Uuid::new_v4();
        r.write(
            &[Change::Session(other)],
            &BTreeSet::from([keys::bucket(other)]),
        )
        .await
        .unwrap();
        assert!(!r.all_synced().await.unwrap());
        let mut same_hash = Uuid::new_v4().into_bytes();
        same_hash[15] = other.as_bytes()[15];
        assert_eq!(
            r.ask_redis(Uuid::from_bytes(same_hash), user)
                .await
                .unwrap(),
            None
        );
        r.clean_up().await;
    }

    #[tokio::test]
    async fn written_changes_are_found_and_roles_versions_never_go_back() {
        let r = revocation();
        let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
        mirrored(
            &r,
            &[
                Change::Session(session),
                Change::Roles { user, rv: 5 },
                // Two replicas' writes landing out of order.
                Change::Roles { user, rv: 3 },
                Change::Catalog,
            ],
        )
        .await;
        assert_eq!(r.ask_redis(session, user).await.unwrap(), Some((true, 5)));
        r.clean_up().await;
    }

    #[tokio::test]
    async fn pruning_drops_expired_marks_and_keeps_the_rest() {
        let r = revocation();
        let (live, dead) = (Uuid::new_v4(), Uuid::new_v4());
        mirrored(&r, &[Change::Session(live)]).await;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(r.kv.key(keys::marks(keys::bucket(dead))))
            .arg(keys::session_mark(dead))
            .arg(chrono::Utc::now().timestamp() - 1)
            .ignore();
        r.kv.run::<()>(&pipe).await.unwrap();
        r.prune().await.unwrap();
        let user = Uuid::new_v4();
        assert_eq!(
            r.ask_redis(live, user).await.unwrap(),
            Some((true, i64::MIN))
        );
        assert_eq!(
            r.ask_redis(dead, user).await.unwrap(),
            Some((false, i64::MIN))
        );
        assert!(r.all_synced().await.unwrap(), "`synced` is never pruned");
        r.clean_up().await;
    }
}
