//! oauth2-introspection's decision cache (by the SHA-256 of the token) and its calls in
//! flight (one per token, however many requests wait for it).

use super::{CallError, Decision, MAX_IN_FLIGHT};
use crate::plugins::ttl_cache::TtlCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// What the cache holds for a token at a given time.
pub(super) enum Lookup {
    /// Before its `fresh_until_ms`: the decision stands.
    Fresh(Arc<Decision>),
    /// Past `fresh_until_ms` but still within the decision's own expiry (`on_outage:
    /// serve_cached` only): asked again, served only if the endpoint is down.
    Stale(Arc<Decision>),
    Miss,
}

/// Bounded LRU of decisions, sharded by the first byte of the token digest. An entry's
/// deadline is the end of its own validity (equal to `fresh_until_ms` unless stale serving
/// is on), after which it is dropped.
pub(super) struct DecisionCache {
    entries: TtlCache<u64, Arc<Decision>>,
}

impl DecisionCache {
    pub(super) fn new(max_entries: usize) -> Option<DecisionCache> {
        // Small caches keep one shard, so `max_entries` is what they hold.
        let shards = if max_entries >= 1024 { 8 } else { 1 };
        Some(DecisionCache {
            entries: TtlCache::new(max_entries, shards)?,
        })
    }

    #[inline]
    pub(super) fn lookup(&self, key: &[u8; 32], now_ms: u64) -> Lookup {
        match self.entries.get(key, now_ms) {
            Some(d) if now_ms < d.fresh_until_ms => Lookup::Fresh(d),
            Some(d) => Lookup::Stale(d),
            None => Lookup::Miss,
        }
    }

    /// Keeps `d` until its `valid_until_ms` (nothing when that has passed already).
    pub(super) fn put(&self, key: [u8; 32], d: Arc<Decision>, now_ms: u64) {
        if d.valid_until_ms > now_ms {
            self.entries.put(key, d.valid_until_ms, d);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A call's outcome as its waiters see it.
pub(super) type Shared = Option<Result<Arc<Decision>, CallError>>;

/// The introspection calls in flight, by token digest: the first miss for a token starts a
/// call and registers its result channel here; later misses for the same token subscribe to
/// it. The lock is held only to look up, insert or remove, never across an await.
#[derive(Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<[u8; 32], watch::Receiver<Shared>>>,
}

/// How a miss joins the calls in flight.
pub(super) enum Join {
    /// This request starts the call: send its outcome on the sender, then drop the
    /// [`FlightGuard`] (which unregisters it).
    Lead(watch::Sender<Shared>, watch::Receiver<Shared>),
    /// Another request's call for the same token is under way.
    Follow(watch::Receiver<Shared>),
    /// [`MAX_IN_FLIGHT`] calls already.
    Full,
}

impl Flights {
    pub(super) fn join(&self, key: &[u8; 32]) -> Join {
        let mut map = self.map.lock();
        if let Some(rx) = map.get(key) {
            return Join::Follow(rx.clone());
        }
        if map.len() >= MAX_IN_FLIGHT {
            return Join::Full;
        }
        let (tx, rx) = watch::channel(None);
        map.insert(*key, rx.clone());
        Join::Lead(tx, rx)
    }

    pub(super) fn remove(&self, key: &[u8; 32]) {
        self.map.lock().remove(key);
    }

    /// Calls in flight (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// Waits for a call's outcome: [`CallError::Lost`] if its task ended without one.
pub(super) async fn outcome(mut rx: watch::Receiver<Shared>) -> Result<Arc<Decision>, CallError> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(Err(CallError::Lost)),
        Err(_) => Err(CallError::Lost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(fresh_until_ms: u64, valid_until_ms: u64) -> Arc<Decision> {
        Arc::new(Decision {
            active: true,
            scope_ok: true,
            nbf_ms: None,
            fresh_until_ms,
            valid_until_ms,
            consumer: None,
            headers: Vec::new(),
        })
    }

    #[test]
    fn fresh_then_stale_then_gone() {
        let c = DecisionCache::new(2).expect("cache");
        c.put([1; 32], decision(100, 200), 0);
        assert!(matches!(c.lookup(&[1; 32], 99), Lookup::Fresh(_)));
        assert!(matches!(c.lookup(&[1; 32], 100), Lookup::Stale(_)));
        assert!(matches!(c.lookup(&[1; 32], 200), Lookup::Miss));
        // Already past: not kept.
        c.put([2; 32], decision(10, 10), 10);
        assert_eq!(c.len(), 0);
        // Bounded.
        for i in 0..5u8 {
            c.put([i; 32], decision(100, 100), 0);
        }
        assert_eq!(c.len(), 2);
        assert!(DecisionCache::new(0).is_none());
    }

    #[tokio::test]
    async fn one_leader_per_token_and_a_lost_leader_releases_its_followers() {
        let f = Flights::default();
        let Join::Lead(tx, _) = f.join(&[1; 32]) else {
            panic!("first miss leads")
        };
        let Join::Follow(rx) = f.join(&[1; 32]) else {
            panic!("second miss follows")
        };
        assert!(matches!(f.join(&[2; 32]), Join::Lead(..)));
        assert_eq!(f.len(), 2);
        let waiter = tokio::spawn(outcome(rx));
        tx.send_replace(Some(Ok(decision(5, 5))));
        assert!(waiter.await.expect("join").is_ok());
        f.remove(&[1; 32]);
        // A leader gone without a result: its followers get an error, not a hang.
        let Join::Lead(tx, _) = f.join(&[3; 32]) else {
            panic!("lead")
        };
        let Join::Follow(rx) = f.join(&[3; 32]) else {
            panic!("follow")
        };
        drop(tx);
        assert_eq!(outcome(rx).await, Err(CallError::Lost));
    }
}
