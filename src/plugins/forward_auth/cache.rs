//! forward-auth's decision cache: allow and deny decisions (never failures) for `cache.ttl`,
//! keyed by the SHA-256 of the configured key material.

use super::Decision;
use crate::plugins::ttl_cache::TtlCache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounded LRU of decisions, sharded by the first byte of the key digest.
pub(super) struct DecisionCache {
    ttl: Duration,
    entries: TtlCache<Instant, Arc<Decision>>,
}

impl DecisionCache {
    /// `None` when the cache is off (`ttl: 0s`).
    pub(super) fn new(ttl: Duration, max_entries: usize) -> Option<DecisionCache> {
        if ttl.is_zero() {
            return None;
        }
        // Small caches keep one shard, so `max_entries` is what they hold.
        let shards = if max_entries >= 1024 { 8 } else { 1 };
        Some(DecisionCache {
            ttl,
            entries: TtlCache::new(max_entries, shards)?,
        })
    }

    /// How long a decision is kept (tests).
    #[cfg(test)]
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(super) fn get(&self, key: &[u8; 32], now: Instant) -> Option<Arc<Decision>> {
        self.entries.get(key, now)
    }

    pub(super) fn put(&self, key: [u8; 32], decision: Arc<Decision>, now: Instant) {
        self.entries.put(key, now + self.ttl, decision);
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_cache_expires_and_is_bounded() {
        let c = DecisionCache::new(Duration::from_secs(10), 2).expect("cache");
        let allow = || {
            Arc::new(Decision::Allow {
                headers: Vec::new(),
                consumer: None,
            })
        };
        let t0 = Instant::now();
        assert_eq!(c.ttl, Duration::from_secs(10));
        c.put([1; 32], allow(), t0);
        assert!(c.get(&[1; 32], t0 + Duration::from_secs(9)).is_some());
        assert!(c.get(&[1; 32], t0 + Duration::from_secs(10)).is_none());
        assert_eq!(c.len(), 0, "an expired entry is dropped when found");
        for i in 0..5u8 {
            c.put([i; 32], allow(), t0);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&[4; 32], t0).is_some() && c.get(&[0; 32], t0).is_none());
        assert!(DecisionCache::new(Duration::ZERO, 10).is_none());
        let big = DecisionCache::new(Duration::from_secs(1), 10_000).expect("cache");
        assert_eq!(big.entries.shards(), 8);
    }
}
