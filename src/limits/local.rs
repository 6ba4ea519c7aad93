//! `policy: local`: exact per-key counters of one gateway process.
//!
//! Keys live in a [`Sharded`] map: 64 shards, each a `parking_lot` mutex around a
//! `hashbrown::HashTable` of `(digest, state)`. A key is never stored: only its 128-bit
//! SipHash-1-3 digest under a random per-limiter secret ([`Digest`]). Clients choose keys
//! (`limit_by: header` takes any header value, up to the request head limit), so storing
//! them would let 20,000 requests with distinct 31 KB values pin 600 MB for a day's window;
//! a fixed 16 bytes bounds the memory of a limiter by its key count alone, whatever clients
//! send. The secret means clients cannot aim keys at one bucket or at one digest (a forced
//! collision would share a count), and 128 bits make an accidental collision negligible.
//! A check hashes the key once, locks one shard for a few dozen nanoseconds and allocates
//! nothing (a new key may grow its shard's table). Idle keys
//! (nothing left to remember) are swept from a shard at most every 10 s, when it gains a key.
//! A limiter holds at most [`MAX_KEYS`] keys: a full shard drops its idle keys and an eighth
//! of the others (amortized O(1) per new key), like NGINX's `limit_req` zone dropping old
//! states. That can only make a limit more lenient for the dropped keys, never stricter.
//! Memory is therefore bounded in bytes too: at most [`MAX_KEYS`] entries of a fixed size
//! (about 80 bytes for a rate-limit key), some 20 MB per limiter at worst.

use super::{decide_token, decide_windows, Decision, Limits, TokenBucket, WindowCounts, WINDOWS};
use hashbrown::HashTable;
use parking_lot::Mutex;

const SHARDS: usize = 64;
/// Most keys one limiter remembers.
pub const MAX_KEYS: usize = 200_000;
const SWEEP_EVERY_MS: u64 = 10_000;

/// Something that can tell when it holds nothing worth keeping.
pub trait Idle {
    fn idle(&self, now_us: u64) -> bool;
    /// May be dropped to make room although not idle (default: yes).
    fn evictable(&self) -> bool {
        true
    }
}

#[repr(align(64))]
struct Shard<V> {
    inner: Mutex<ShardInner<V>>,
}

struct Entry<V> {
    /// The key's digest; `digest.0` is also the table hash.
    digest: (u64, u64),
    value: V,
}

struct ShardInner<V> {
    table: HashTable<Entry<V>>,
    next_sweep_ms: u64,
}

/// A map from key bytes to `V`, split into independently locked shards.
pub struct Sharded<V> {
    shards: Box<[Shard<V>]>,
    hasher: Digest,
    cap_per_shard: usize,
}

impl<V: Default + Idle> Sharded<V> {
    pub fn with_capacity(max_keys: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                inner: Mutex::new(ShardInner {
                    table: HashTable::new(),
                    next_sweep_ms: 0,
                }),
            })
            .collect();
        Sharded {
            shards,
            hasher: Digest::random(),
            cap_per_shard: max_keys.div_ceil(SHARDS).max(8),
        }
    }

    /// Runs `f` on the entry of `key` (created empty when new) under its shard's lock.
    #[inline]
    pub fn with_entry<R>(&self, key: &[u8], now_us: u64, f: impl FnOnce(&mut V) -> R) -> R {
        let digest = self.hasher.digest(key);
        let hash = digest.0;
        // Bits 32..38 pick the shard: hashbrown uses the low bits (bucket) and the top 7
        // (tag), so the entries of one shard still spread over its whole table.
        let shard = &self.shards[(hash >> 32) as usize & (SHARDS - 1)];
        let mut g = shard.inner.lock();
        if let Some(e) = g.table.find_mut(hash, |e| e.digest == digest) {
            return f(&mut e.value);
        }
        g.make_room(now_us, self.cap_per_shard);
        let entry = Entry {
            digest,
            value: V::default(),
        };
        let mut slot = g.table.insert_unique(hash, entry, |e| e.digest.0);
        f(&mut slot.get_mut().value)
    }

    /// Runs `f` on the entry of `key` if there is one, creating nothing (read-only
    /// lookups such as `explain`).
    pub fn peek<R>(&self, key: &[u8], f: impl FnOnce(Option<&V>) -> R) -> R {
        let digest = self.hasher.digest(key);
        let hash = digest.0;
        let shard = &self.shards[(hash >> 32) as usize & (SHARDS - 1)];
        let g = shard.inner.lock();
        f(g.table.find(hash, |e| e.digest == digest).map(|e| &e.value))
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.inner.lock().table.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle entry now (tests, benches).
    pub fn sweep(&self, now_us: u64) {
        for s in self.shards.iter() {
            s.inner.lock().table.retain(|e| !e.value.idle(now_us));
        }
    }
}

/// SipHash-1-3 with a 128-bit output (the `siphasher` crate; the standard library only
/// offers 64-bit outputs) under a secret key. One pass over the key bytes.
#[derive(Clone)]
pub struct Digest {
    k0: u64,
    k1: u64,
}

impl Digest {
    /// A digest under a fresh random secret (per limiter, never leaves the process).
    pub fn random() -> Digest {
        Digest {
            k0: rand::random(),
            k1: rand::random(),
        }
    }

    /// The 128-bit digest of `key`.
    #[inline]
    pub fn digest(&self, key: &[u8]) -> (u64, u64) {
        use siphasher::sip128::{Hasher128, SipHasher13};
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(key);
        let d = h.finish128();
        (d.h1, d.h2)
    }
}

impl<V: Idle> ShardInner<V> {
    fn make_room(&mut self, now_us: u64, cap: usize) {
        let now_ms = now_us / 1000;
        if now_ms >= self.next_sweep_ms {
            self.table.retain(|e| !e.value.idle(now_us));
            self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        }
        if self.table.len() >= cap {
            // Full of live keys: drop the idle ones and an eighth of the rest, so the
            // next cap/8 new keys insert without scanning.
            let mut n = 0u32;
            self.table.retain(|e| {
                n = n.wrapping_add(1);
                !e.value.idle(now_us) && (!n.is_multiple_of(8) || !e.value.evictable())
            });
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// `now_ms / window_ms` of `curr`.
    bucket: u32,
    curr: u32,
    prev: u32,
}

impl Slot {
    #[inline]
    fn roll(&mut self, b: u32) {
        if b <= self.bucket {
            return;
        }
        self.prev = if b == self.bucket + 1 { self.curr } else { 0 };
        self.curr = 0;
        self.bucket = b;
    }
}

/// Everything one key of a rate limit remembers: a bucket pair per window length, and the
/// GCRA arrival time for `token_bucket`.
#[derive(Debug, Default)]
pub struct RateEntry {
    slots: [Slot; 4],
    tat_us: u64,
}

impl Idle for RateEntry {
    fn idle(&self, now_us: u64) -> bool {
        let now_ms = now_us / 1000;
        self.tat_us <= now_us
            && self.slots.iter().enumerate().all(|(i, s)| {
                let b = now_ms / WINDOWS[i].1;
                let bucket = s.bucket as u64;
                (s.curr == 0 && s.prev == 0) || b >= bucket + 2 || (b == bucket + 1 && s.curr == 0)
            })
    }
}

/// The local counters of one rate limit.
pub struct LocalStore {
    map: Sharded<RateEntry>,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore::with_capacity(MAX_KEYS)
    }
}

impl LocalStore {
    pub fn with_capacity(max_keys: usize) -> Self {
        LocalStore {
            map: Sharded::with_capacity(max_keys),
        }
    }

    /// Sliding-window check-and-count for `key` at `now_us`: counts the request in every
    /// window when all of them have room, otherwise counts nothing.
    pub fn check_windows(&self, key: &[u8], limits: &Limits, now_us: u64) -> Decision {
        let now_ms = now_us / 1000;
        let mut counts = [WindowCounts::default(); 4];
        let n = limits.windows.len().min(4);
        self.map.with_entry(key, now_us, |e| {
            let mut allowed = true;
            for (w, c) in limits.windows.iter().zip(counts.iter_mut()) {
                let s = &mut e.slots[w.slot];
                let b = now_ms / w.window_ms;
                s.roll(b as u32);
                *c = WindowCounts {
                    curr: s.curr as u64,
                    prev: s.prev as u64,
                    elapsed_ms: now_ms - b * w.window_ms,
                };
                allowed &= super::estimate(*c, w.window_ms) < w.limit;
            }
            if allowed {
                for w in &limits.windows {
                    let s = &mut e.slots[w.slot];
                    s.curr = s.curr.saturating_add(1);
                }
            }
        });
        decide_windows(limits, &counts[..n])
    }

    /// Token-bucket (GCRA) check-and-take for `key` at `now_us`.
    pub fn check_token(&self, key: &[u8], tb: &TokenBucket, now_us: u64) -> Decision {
        self.map.with_entry(key, now_us, |e| {
            let (d, tat) = decide_token(tb, e.tat_us, now_us);
            e.tat_us = tat;
            d
        })
    }

    /// The sliding-window estimate of requests counted for `key` in each window of
    /// `limits` at `now_us`, as `(window_ms, counted, limit)`, without counting or creating
    /// anything (`explain` on the live config).
    pub fn current_windows(
        &self,
        key: &[u8],
        limits: &Limits,
        now_us: u64,
    ) -> Vec<(u64, u64, u64)> {
        let now_ms = now_us / 1000;
        self.map.peek(key, |e| {
            limits
                .windows
                .iter()
                .map(|w| {
                    let used = e.map_or(0, |e| {
                        let mut s = e.slots[w.slot];
                        let b = now_ms / w.window_ms;
                        s.roll(b as u32);
                        let c = WindowCounts {
                            curr: s.curr as u64,
                            prev: s.prev as u64,
                            elapsed_ms: now_ms - b * w.window_ms,
                        };
                        super::estimate(c, w.window_ms)
                    });
                    (w.window_ms, used, w.limit)
                })
                .collect()
        })
    }

    /// Keys held (tests, benches).
    pub fn keys(&self) -> usize {
        self.map.len()
    }

    /// Drops idle keys now (tests, benches).
    pub fn sweep(&self, now_us: u64) {
        self.map.sweep(now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    /// One secret gives one digest per key; another secret gives other digests (a client
    /// cannot know which keys share a shard or collide).
    #[test]
    fn digests_depend_on_the_key_and_the_secret() {
        let d = Digest::random();
        let e = Digest::random();
        assert_eq!(d.digest(b"tenant-a"), d.digest(b"tenant-a"));
        assert_ne!(d.digest(b"tenant-a"), d.digest(b"tenant-b"));
        assert_ne!(d.digest(b"tenant-a"), e.digest(b"tenant-a"));
        assert_ne!(d.digest(b""), d.digest(b"\0"));
    }

    const T0: u64 = 19_676 * 86_400_000_000; // a day boundary: one for every window

    #[test]
    fn exact_count_per_key_and_window() {
        let s = LocalStore::default();
        let l = Limits::from_slots([None, Some(5), None, None]);
        let now = T0 + 5_000_000;
        for i in 0..5 {
            let d = s.check_windows(b"a", &l, now + i);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.status.remaining, 4 - i);
            assert_eq!(d.status.limit, 5);
        }
        let d = s.check_windows(b"a", &l, now + 10);
        assert!(!d.allowed);
        assert_eq!(d.status.remaining, 0);
        // 55 s left in this bucket + 12 s into the next one (5 * 48/60 = 4 < 5).
        assert_eq!(d.retry_after_ms, 55_000 + 12_000);
        // Refusals are not counted, and other keys are independent.
        assert!(!s.check_windows(b"a", &l, now + 20).allowed);
        assert!(s.check_windows(b"b", &l, now + 20).allowed);
        // Across the boundary the previous bucket still weighs in...
        assert!(
            !s.check_windows(b"a", &l, T0 + 60_000_000 + 11_000_000)
                .allowed
        );
        // ...until its weight drops enough.
        assert!(
            s.check_windows(b"a", &l, T0 + 60_000_000 + 12_000_000)
                .allowed
        );
    }

    #[test]
    fn never_more_than_limit_in_a_window_across_a_boundary() {
        let s = LocalStore::default();
        let l = Limits::from_slots([None, Some(10), None, None]);
        // 10 requests just before a boundary, then as many as allowed just after it.
        let before = T0 + 59_999_000;
        for _ in 0..10 {
            assert!(s.check_windows(b"k", &l, before).allowed);
        }
        let after = T0 + 60_000_500;
        let extra = (0..10)
            .filter(|_| s.check_windows(b"k", &l, after).allowed)
            .count();
        assert_eq!(extra, 0, "within 1.5 s of the first 10 nothing more passes");
    }

    #[test]
    fn every_window_applies() {
        let s = LocalStore::default();
        let l = Limits::from_slots([Some(2), Some(3), None, None]);
        let now = T0 + 100_000;
        assert!(s.check_windows(b"k", &l, now).allowed);
        assert!(s.check_windows(b"k", &l, now).allowed);
        let d = s.check_windows(b"k", &l, now);
        assert!(!d.allowed, "second window full");
        assert_eq!(d.status.policy, "2;w=1");
        // Two seconds later the second window is free, the minute has 1 left.
        let d = s.check_windows(b"k", &l, now + 2_000_000);
        assert!(d.allowed);
        assert_eq!(d.status.limit, 3);
        assert_eq!(d.status.remaining, 0);
        assert!(!s.check_windows(b"k", &l, now + 4_000_000).allowed);
    }

    #[test]
    fn token_bucket_per_key() {
        let s = LocalStore::default();
        let tb = TokenBucket::new(10.0, 4);
        let now = T0;
        for _ in 0..4 {
            assert!(s.check_token(b"k", &tb, now).allowed);
        }
        let d = s.check_token(b"k", &tb, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 100);
        assert!(s.check_token(b"k", &tb, now + 100_000).allowed);
        assert!(!s.check_token(b"k", &tb, now + 100_000).allowed);
        assert!(s.check_token(b"other", &tb, now).allowed);
    }

    #[test]
    fn idle_keys_expire_and_capacity_holds() {
        let s = LocalStore::with_capacity(640);
        let l = Limits::from_slots([Some(1), None, None, None]);
        for i in 0..5_000u32 {
            s.check_windows(&i.to_le_bytes(), &l, T0 + 1000);
        }
        assert!(s.keys() <= 640, "capped: {}", s.keys());
        // Two seconds on, nothing is left to remember.
        s.sweep(T0 + 2_001_000);
        assert_eq!(s.keys(), 0);
        // An idle key is swept when its shard gains a key after the sweep interval.
        s.check_windows(b"x", &l, T0 + 3_000_000);
        s.check_windows(b"y", &l, T0 + 30_000_000);
        assert!(s.keys() <= 2);
    }
}
