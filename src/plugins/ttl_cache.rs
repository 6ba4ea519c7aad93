//! [`TtlCache`]: a bounded, sharded LRU of values keyed by a 32-byte digest, each with its
//! own deadline. Shared by jwt (verified tokens, until the token expires) and forward-auth
//! (decisions, for `cache.ttl`); both key by a SHA-256, so the first byte spreads keys over
//! the shards and no credential is ever a map key.

use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;

type Shard<D, V> = Mutex<LruCache<[u8; 32], (D, V)>>;

/// Bounded LRU by digest; an entry is served while `now` is before its deadline `D`.
pub(crate) struct TtlCache<D, V> {
    shards: Box<[Shard<D, V>]>,
}

impl<D: PartialOrd + Copy, V: Clone> TtlCache<D, V> {
    /// Holds about `max_entries` (rounded up to a multiple of `shards`); `None` for 0.
    pub(crate) fn new(max_entries: usize, shards: usize) -> Option<TtlCache<D, V>> {
        let shards = shards.max(1);
        let per_shard = NonZeroUsize::new(max_entries.div_ceil(shards))?;
        Some(TtlCache {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        })
    }

    fn shard(&self, key: &[u8; 32]) -> Option<&Shard<D, V>> {
        self.shards.get(key[0] as usize % self.shards.len())
    }

    /// The value of `key` if its deadline is after `now`; an expired entry is dropped.
    pub(crate) fn get(&self, key: &[u8; 32], now: D) -> Option<V> {
        let mut shard = self.shard(key)?.lock();
        let fresh = shard
            .get(key)
            .map(|(deadline, v)| (*deadline > now).then(|| v.clone()))?;
        if fresh.is_none() {
            shard.pop(key);
        }
        fresh
    }

    /// Keeps `value` for `key` until `deadline` (the least recently used entry of the shard
    /// goes when it is full).
    pub(crate) fn put(&self, key: [u8; 32], deadline: D, value: V) {
        if let Some(s) = self.shard(&key) {
            s.lock().put(key, (deadline, value));
        }
    }

    /// Entries held (expired ones not yet found included).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Number of shards (tests).
    #[cfg(test)]
    pub(crate) fn shards(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_is_bounded() {
        let c: TtlCache<u64, u32> = TtlCache::new(2, 1).expect("cache");
        c.put([1; 32], 10, 7);
        assert_eq!(c.get(&[1; 32], 9), Some(7));
        assert_eq!(c.get(&[1; 32], 10), None);
        assert_eq!(c.len(), 0, "an expired entry is dropped when found");
        for i in 0..5u8 {
            c.put([i; 32], 10, u32::from(i));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&[4; 32], 0).is_some() && c.get(&[0; 32], 0).is_none());
        assert!(TtlCache::<u64, u32>::new(0, 8).is_none());
        let sharded: TtlCache<u64, u32> = TtlCache::new(10, 8).expect("cache");
        assert_eq!(sharded.shards(), 8);
        // Spread by the first byte of the digest.
        for i in 0..8u8 {
            sharded.put([i; 32], 1, 0);
        }
        assert_eq!(sharded.len(), 8);
    }
}
