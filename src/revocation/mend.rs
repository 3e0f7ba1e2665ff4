//! Changes on their way to Redis and the other replicas: written at once when Redis answers,
//! else kept in order and retried by `mend` until they are, while this replica asks
//! PostgreSQL rather than a Redis that may lack them.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Duration;

use tokio::sync::watch;

use super::{Revocation, Unavailable};
use crate::change::Change;
use crate::kv::keys::{self, BUCKETS};
use crate::kv::KvError;

/// Changes kept for Redis at most; past it they collapse into one "forget everything".
const MAX_PENDING: usize = 10_000;

/// The retry delays of `mend`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Changes that did not reach Redis, oldest first, and how many failures there have been.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) changes: VecDeque<Change>,
    pub(super) failures: u64,
}

impl Pending {
    /// Queues `changes` behind the others; past `MAX_PENDING`, everything queued so far
    /// becomes one `Change::Everything` (every change is in PostgreSQL: a rebuild stands for
    /// them all).
    fn keep(&mut self, changes: Vec<Change>) {
        if self.changes.len() + changes.len() > MAX_PENDING {
            self.changes.clear();
            self.changes.push_back(Change::Everything);
        }
        self.changes.extend(changes);
        self.failures += 1;
    }
}

/// The marks hashes `changes` write to.
fn buckets(changes: &[Change]) -> BTreeSet<u8> {
    let mut touched = BTreeSet::new();
    for change in changes {
        match change {
            Change::Session(sid) => {
                touched.insert(keys::bucket(*sid));
            }
            Change::Roles { user, .. } => {
                touched.insert(keys::bucket(*user));
            }
            Change::Everything => touched.extend(0..BUCKETS),
            Change::Catalog | Change::Keys => {}
        }
    }
    touched
}

impl Revocation {
    /// How many changes wait for Redis.
    pub fn pending(&self) -> usize {
        self.lock_pending().changes.len()
    }

    /// Writes changes to Redis and publishes them, or keeps them for `mend`.
    pub(super) async fn push(&self, changes: Vec<Change>) {
        // Changes still waiting go first: a roles version must not go back in Redis.
        if !self.lock_pending().changes.is_empty() {
            self.defer(changes);
            return;
        }
        if let Err(e) = self.write(&changes, &BTreeSet::new()).await {
            tracing::warn!(error = %e, "a change did not reach Redis; retrying, PostgreSQL decides meanwhile");
            // At once, not at the first retry: the hashes this change belongs in stop vouching,
            // so that no replica takes the missing mark for "valid" meanwhile. Redis out of
            // memory still takes this (HDEL frees memory); Redis down refuses it, and then no
            // replica can read the hash either.
            if let Err(e) = self.write(&[], &buckets(&changes)).await {
                tracing::debug!(error = %e, "hashes not marked incomplete");
            }
            self.defer(changes);
        }
    }

    pub(super) fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it; if something did, the queue is still consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps changes for `mend` and stops believing Redis until they are written.
    fn defer(&self, changes: Vec<Change>) {
        {
            let mut pending = self.lock_pending();
            pending.keep(changes);
            self.redis_behind.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Redis was found lacking something: ask PostgreSQL until `mend` has rebuilt it.
    pub(super) fn fell_behind(&self) {
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

    /// Writes the pending changes, oldest first. The hashes they touch lose `synced` first,
    /// so that while a mark cannot be written (Redis out of memory) no replica takes its
    /// absence for "valid"; the rebuild that follows restores it.
    pub(super) async fn flush(&self) -> Result<(), KvError> {
        let batch: Vec<Change> = self.lock_pending().changes.iter().copied().collect();
        if batch.is_empty() {
            return Ok(());
        }
        self.write(&batch, &buckets(&batch)).await?;
        // Only `mend` takes changes off the front; others were added behind them.
        let mut pending = self.lock_pending();
        let done = batch.len().min(pending.changes.len());
        pending.changes.drain(..done);
        tracing::info!(changes = done, "pending changes written to Redis");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn too_many_pending_changes_become_one_rebuild_then_the_newest() {
        let mut pending = Pending::default();
        let sessions: Vec<Change> = (0..MAX_PENDING)
            .map(|_| Change::Session(Uuid::new_v4()))
            .collect();
        pending.keep(sessions);
        assert_eq!(pending.changes.len(), MAX_PENDING);
        let newest = Change::Roles {
            user: Uuid::new_v4(),
            rv: 2,
        };
        pending.keep(vec![newest]);
        assert_eq!(
            pending.changes.iter().copied().collect::<Vec<_>>(),
            [Change::Everything, newest]
        );
        assert_eq!(pending.failures, 2);
    }

    #[test]
    fn a_flush_unsyncs_the_hashes_its_changes_touch() {
        let (sid, uid) = (Uuid::new_v4(), Uuid::new_v4());
        let touched = buckets(&[
            Change::Session(sid),
            Change::Roles { user: uid, rv: 1 },
            Change::Catalog,
        ]);
        assert_eq!(
            touched,
            BTreeSet::from([keys::bucket(sid), keys::bucket(uid)])
        );
        assert!(buckets(&[Change::Keys]).is_empty());
        assert_eq!(buckets(&[Change::Everything]).len(), usize::from(BUCKETS));
    }
}
