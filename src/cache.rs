//! A small bounded cache with expiry for the check path: sharded `HashMap`s behind
//! read-write locks, each entry stamped with its expiry in whole seconds.
//!
//! Chosen over moka for memory: moka keeps about 320 bytes of bookkeeping per entry (entry
//! info, access- and write-order queue nodes, the key's `Arc`), which for 100,000 sessions in
//! three caches is most of the server's memory. Here an entry costs its key, its value and four
//! bytes, plus the hash table's spare slots. What it gives up is an eviction order: expired
//! entries are swept out of a shard when it is written to (at most once a second), and a shard
//! that is full of live entries drops an arbitrary eighth of them (the table's iteration
//! order, which follows the keys' random hashes). The bound is a safety net for a flood; in
//! normal use entries leave by expiring.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Shards: enough that the check path's readers and the occasional writer rarely meet.
const SHARDS: usize = 16;

/// A value and its expiry, in seconds since the cache was made.
type Slot<V> = (V, u32);

struct Shard<K, V> {
    map: RwLock<HashMap<K, Slot<V>, RandomState>>,
    /// The next time (cache seconds) a write sweeps out the expired entries.
    next_sweep: AtomicU32,
}

/// A bounded map whose entries expire.
pub struct Compact<K, V> {
    shards: Box<[Shard<K, V>]>,
    /// Entries per shard at most.
    per_shard: usize,
    hasher: RandomState,
    born: Instant,
}

impl<K: Hash + Eq, V: Clone> Compact<K, V> {
    /// Holds about `capacity` entries at most.
    pub fn new(capacity: u64) -> Self {
        let hasher = RandomState::new();
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: RwLock::new(HashMap::with_hasher(hasher.clone())),
                next_sweep: AtomicU32::new(0),
            })
            .collect();
        Compact {
            shards,
            per_shard: (capacity as usize).div_ceil(SHARDS).max(1),
            hasher,
            born: Instant::now(),
        }
    }

    fn now(&self) -> u32 {
        u32::try_from(self.born.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn shard(&self, key: &K) -> &Shard<K, V> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    fn read(shard: &Shard<K, V>) -> RwLockReadGuard<'_, HashMap<K, Slot<V>, RandomState>> {
        shard.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(shard: &Shard<K, V>) -> RwLockWriteGuard<'_, HashMap<K, Slot<V>, RandomState>> {
        shard.map.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live value of `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = self.now();
        let map = Self::read(self.shard(key));
        map.get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(v, _)| v.clone())
    }

    /// Stores `value` for `ttl` (whole seconds, at least one).
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        self.upsert(key, ttl, |_| value);
    }

    /// Stores `f(live value)` for `ttl` and returns it, in one step under the shard's lock.
    pub fn upsert(&self, key: K, ttl: Duration, f: impl FnOnce(Option<&V>) -> V) -> V {
        let now = self.now();
        let expires = now.saturating_add(u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1));
        let shard = self.shard(&key);
        let mut map = Self::write(shard);
        self.make_room(shard, &mut map, now);
        let old = map.get(&key).filter(|(_, e)| *e > now).map(|(v, _)| v);
        let value = f(old);
        map.insert(key, (value.clone(), expires));
        value
    }

    /// Sweeps the expired entries (at most once a second per shard), then, if the shard is
    /// still full, drops an eighth of it.
    fn make_room(&self, shard: &Shard<K, V>, map: &mut HashMap<K, Slot<V>, RandomState>, now: u32) {
        if now >= shard.next_sweep.load(Ordering::Relaxed) || map.len() >= self.per_shard {
            map.retain(|_, (_, expires)| *expires > now);
            shard.next_sweep.store(now + 1, Ordering::Relaxed);
        }
        if map.len() >= self.per_shard {
            let mut drop = (self.per_shard / 8).max(1);
            map.retain(|_, _| {
                if drop == 0 {
                    return true;
                }
                drop -= 1;
                false
            });
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &K) {
        Self::write(self.shard(key)).remove(key);
    }

    /// Forgets everything, and gives the tables' memory back.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            *Self::write(shard) = HashMap::with_hasher(self.hasher.clone());
        }
    }

    /// Entries held, live or expired but not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| Self::read(s).len()).sum()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_replaces_and_forgets() {
        let cache: Compact<u32, u64> = Compact::new(100);
        let ttl = Duration::from_secs(60);
        assert_eq!(cache.get(&1), None);
        cache.insert(1, 10, ttl);
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.upsert(1, ttl, |old| old.map_or(0, |v| v + 1)), 11);
        assert_eq!(cache.get(&1), Some(11));
        cache.remove(&1);
        assert_eq!(cache.get(&1), None);
        cache.insert(2, 20, ttl);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_within_its_bound() {
        let cache: Compact<u32, u32> = Compact::new(160);
        for n in 0..10_000 {
            cache.insert(n, n, Duration::from_secs(60));
        }
        assert!(cache.len() <= 160 + SHARDS, "{} entries", cache.len());
        // The newest entry is always kept.
        assert_eq!(cache.get(&9_999), Some(9_999));
    }
}
