//! Exact in-flight counts per key for `concurrency-limiting`.
//!
//! Each key maps to a shared atomic counter; [`ConcurrencyStore::try_acquire`] takes a slot
//! under the shard lock (an `Arc` clone, no allocation for a known key) and the returned
//! [`ConcurrencyGuard`] gives it back when dropped, without any lock. The guard lives in the
//! request context, so the slot is released on every path: response sent, error, client
//! gone. A key whose counter is back at zero and held by nobody else is swept like an idle
//! rate-limit key.

use super::local::{Idle, Sharded};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Most keys one concurrency limit remembers (a key only stays while requests are in
/// flight, or until the next sweep of its shard).
pub const MAX_KEYS: usize = 200_000;

#[derive(Debug, Default)]
pub struct Slot(Arc<AtomicU32>);

impl Idle for Slot {
    fn idle(&self, _now_us: u64) -> bool {
        // Only the map holds it: no guard is out, so the count is zero.
        Arc::strong_count(&self.0) == 1
    }

    /// A slot with requests in flight is never dropped: its count would be lost.
    fn evictable(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

pub struct ConcurrencyStore {
    map: Sharded<Slot>,
}

impl Default for ConcurrencyStore {
    fn default() -> Self {
        ConcurrencyStore {
            map: Sharded::with_capacity(MAX_KEYS),
        }
    }
}

/// One request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct ConcurrencyGuard(Arc<AtomicU32>);

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyStore {
    /// Takes one of `max` slots of `key`, or `None` when all are taken.
    pub fn try_acquire(&self, key: &[u8], max: u32) -> Option<ConcurrencyGuard> {
        let now = crate::util::clock::now_us();
        let counter = self.map.with_entry(key, now, |s| Arc::clone(&s.0));
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConcurrencyGuard(counter))
    }

    /// Requests in flight for `key` (tests).
    pub fn in_flight(&self, key: &[u8]) -> u32 {
        self.map.with_entry(key, crate::util::clock::now_us(), |s| {
            s.0.load(Ordering::Acquire)
        })
    }

    /// Keys held (tests).
    pub fn keys(&self) -> usize {
        self.map.len()
    }

    /// Drops keys with nothing in flight (tests).
    pub fn sweep(&self) {
        self.map.sweep(crate::util::clock::now_us())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_slots_released_on_drop() {
        let s = ConcurrencyStore::default();
        let a = s.try_acquire(b"k", 2).expect("first");
        let b = s.try_acquire(b"k", 2).expect("second");
        assert!(s.try_acquire(b"k", 2).is_none(), "third refused");
        assert!(
            s.try_acquire(b"other", 2).is_some(),
            "other keys independent"
        );
        drop(a);
        let c = s.try_acquire(b"k", 2).expect("slot freed");
        assert_eq!(s.in_flight(b"k"), 2);
        drop((b, c));
        assert_eq!(s.in_flight(b"k"), 0);
        s.sweep();
        assert_eq!(s.keys(), 0, "idle keys are dropped");
    }

    #[test]
    fn concurrent_acquire_never_exceeds_max() {
        let s = Arc::new(ConcurrencyStore::default());
        let peak = Arc::new(AtomicU32::new(0));
        let live = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (s, peak, live) = (s.clone(), peak.clone(), live.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(g) = s.try_acquire(b"k", 3) {
                            let n = live.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            live.fetch_sub(1, Ordering::SeqCst);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(s.in_flight(b"k"), 0);
    }
}
