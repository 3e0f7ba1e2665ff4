//! The two in-memory caches of revocation state and the rules for believing them. Both are
//! `cache::Compact` maps (16 shards, each read under its own read lock, 36–50 B an entry);
//! the generation counter guards against a fetch that began before the caches were cleared
//! storing what it found after.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use uuid::Uuid;

use super::Cached;
use crate::cache::Compact;

/// The two caches and the generation that guards them against late writers.
pub(super) struct States {
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
    pub(super) fn new(capacity: u64, ttl: Duration) -> Self {
        States {
            sessions: Compact::new(capacity),
            users: Compact::new(capacity),
            ttl,
            generation: AtomicU64::new(0),
        }
    }

    /// Read before a fetch; hand it to `store`.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets everything. The generation moves first, so a writer that checked it before
    /// either had its entry cleared here or sees the new generation when it looks again.
    pub(super) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.sessions.clear();
        self.users.clear();
    }

    pub(super) fn cached(&self, session: Uuid, user: Uuid, rv: i64, feed_up: bool) -> Cached {
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

    pub(super) fn revoke(&self, session: Uuid) {
        self.sessions.insert(session, true, self.ttl);
    }

    pub(super) fn raise(&self, user: Uuid, rv: i64) {
        self.users
            .upsert(user, self.ttl, |old| old.map_or(rv, |e| (*e).max(rv)));
    }

    /// Stores what a fetch that began at `generation` found, merged with what the feed wrote
    /// meanwhile (revoked stays revoked, versions grow), and returns the merged answer. If the
    /// caches were cleared since the fetch began, only news that can refuse is kept: "valid"
    /// from before a clear may be older than a change the clear stands for.
    pub(super) fn store(
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

    #[test]
    fn revoked_and_stale_are_believed_whatever_the_feed_valid_only_while_it_is_up() {
        let states = states();
        let (session, user, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(states.cached(session, user, 1, true), Cached::Unknown);
        states.store(states.generation(), session, user, false, 2);
        for feed_up in [true, false] {
            // Older roles than the user's: stale, feed or not.
            assert_eq!(states.cached(session, user, 1, feed_up), Cached::Stale);
        }
        assert_eq!(states.cached(session, user, 2, true), Cached::Valid);
        assert_eq!(states.cached(session, user, 2, false), Cached::Unknown);
        // Half known is not known.
        assert_eq!(states.cached(session, other, 2, true), Cached::Unknown);
        states.revoke(session);
        for feed_up in [true, false] {
            assert_eq!(states.cached(session, user, 2, feed_up), Cached::Revoked);
            assert_eq!(states.cached(session, other, 2, feed_up), Cached::Revoked);
        }
    }

    #[test]
    fn roles_versions_only_grow() {
        let states = states();
        let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
        states.store(states.generation(), session, user, false, 1);
        states.raise(user, 5);
        states.raise(user, 3);
        assert_eq!(states.cached(session, user, 4, true), Cached::Stale);
        assert_eq!(states.cached(session, user, 5, true), Cached::Valid);
        // A fetch that read an older version does not lower it either.
        assert_eq!(
            states.store(states.generation(), session, user, false, 2),
            (false, 5)
        );
    }

    #[test]
    fn a_clear_forgets_both_caches_and_moves_the_generation() {
        let states = states();
        let (session, user) = (Uuid::new_v4(), Uuid::new_v4());
        states.store(states.generation(), session, user, false, 1);
        states.revoke(Uuid::new_v4());
        let before = states.generation();
        states.clear();
        assert_ne!(states.generation(), before);
        assert_eq!(states.cached(session, user, 1, true), Cached::Unknown);
    }
}
