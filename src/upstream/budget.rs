//! Retry budget of an upstream pool (serves the retry hooks: `fail_to_connect`,
//! `error_while_proxy`, `upstream_response_filter`; deposits are made in `upstream_peer`).
//!
//! Linkerd's / Finagle's budget: every request that reaches `upstream_peer` deposits
//! `ratio` of a retry, every retry withdraws one, and a reserve of
//! `min_retries_per_second × window` retries is always allowed, so a quiet upstream can still
//! retry. Over a sliding `window` a pool therefore makes at most
//! `ratio × requests + min_retries_per_second × window_seconds` retries: when every target
//! fails, retries add at most `ratio` to the load instead of multiplying it by `retries + 1`.
//!
//! Accounting is lock-free: the window is [`BUCKETS`] time buckets, each one `AtomicU64`
//! packing a 16-bit bucket epoch, a 24-bit request count and a 24-bit retry count. A request
//! is one compare-and-swap on the current bucket; a retry reads the other buckets once and
//! checks-and-adds on the current one in the same CAS, so concurrent retries cannot overdraw
//! the budget within a bucket. A bucket whose epoch is stale is reset by the first writer of
//! the new epoch. Counts saturate at 2^24 - 1 per bucket (16.7 million requests per tenth of
//! a window; `window` is at most 60 s, so 2.8 million requests a second). The 16-bit epoch
//! wraps after 65 536 buckets (18 h with 1 s buckets): a bucket left untouched exactly that
//! long could be read as recent for one window, which only an upstream idle for that long
//! could see, and only as a slightly wrong budget for a few seconds.
//!
//! The state lives in [`crate::resilience::Registry`] by upstream name, so a reload that
//! keeps the upstream (and its `window`) keeps the counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time buckets per window.
pub const BUCKETS: usize = 10;

const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = 0xffff;

#[inline]
fn pack(epoch: u64, requests: u64, retries: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS))
        | ((requests & COUNT_MAX) << COUNT_BITS)
        | (retries & COUNT_MAX)
}

#[inline]
fn unpack(v: u64) -> (u64, u64, u64) {
    (
        (v >> (2 * COUNT_BITS)) & EPOCH_MASK,
        (v >> COUNT_BITS) & COUNT_MAX,
        v & COUNT_MAX,
    )
}

/// The compiled `retry_budget` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request, on top of the reserve.
    pub ratio: f64,
    pub min_retries_per_second: u32,
    pub window: Duration,
}

impl BudgetConfig {
    /// Retries always allowed per window.
    fn reserve(&self) -> f64 {
        f64::from(self.min_retries_per_second) * self.window.as_secs_f64()
    }

    /// Length of one bucket in ms (at least 1).
    pub fn bucket_ms(&self) -> u64 {
        (self.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }
}

/// The counts of one upstream's budget (shared by every route that uses the upstream).
#[derive(Debug)]
pub struct BudgetState {
    bucket_ms: u64,
    slots: [AtomicU64; BUCKETS],
}

impl BudgetState {
    pub fn new(bucket_ms: u64) -> BudgetState {
        BudgetState {
            bucket_ms: bucket_ms.max(1),
            slots: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    /// (epoch, slot) of `now_ms`.
    #[inline]
    fn locate(&self, now_ms: u64) -> (u64, &AtomicU64) {
        let tick = now_ms / self.bucket_ms;
        (
            tick & EPOCH_MASK,
            &self.slots[(tick % BUCKETS as u64) as usize],
        )
    }

    /// One request deposits into the budget.
    #[inline]
    pub fn deposit(&self, now_ms: u64) {
        let (epoch, slot) = self.locate(now_ms);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, req, ret) = unpack(cur);
            let next = if e == epoch {
                if req == COUNT_MAX {
                    return;
                }
                pack(epoch, req + 1, ret)
            } else {
                pack(epoch, 1, 0)
            };
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// (requests, retries) in the buckets of the window ending at `now_ms`, the current
    /// bucket left out.
    fn others(&self, now_ms: u64) -> (u64, u64) {
        let tick = now_ms / self.bucket_ms;
        let cur_idx = (tick % BUCKETS as u64) as usize;
        let epoch = tick & EPOCH_MASK;
        let (mut req, mut ret) = (0, 0);
        for (i, slot) in self.slots.iter().enumerate() {
            if i == cur_idx {
                continue;
            }
            let (e, rq, rt) = unpack(slot.load(Ordering::Relaxed));
            // Buckets from the last BUCKETS - 1 ticks count; older ones are stale.
            let age = epoch.wrapping_sub(e) & EPOCH_MASK;
            if age > 0 && age < BUCKETS as u64 {
                req += rq;
                ret += rt;
            }
        }
        (req, ret)
    }

    /// Takes one retry from the budget; false when it is spent (the retry must not happen).
    pub fn try_withdraw(&self, cfg: &BudgetConfig, now_ms: u64) -> bool {
        let (other_req, other_ret) = self.others(now_ms);
        let (epoch, slot) = self.locate(now_ms);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, req, ret) = unpack(cur);
            let (req, ret) = if e == epoch { (req, ret) } else { (0, 0) };
            let allowed = cfg.ratio * (other_req + req) as f64 + cfg.reserve();
            if (other_ret + ret + 1) as f64 > allowed || ret == COUNT_MAX {
                return false;
            }
            let next = pack(epoch, req, ret + 1);
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// (requests, retries) counted in the window ending at `now_ms` (for `/status` and tests).
    pub fn counts(&self, now_ms: u64) -> (u64, u64) {
        let (mut req, mut ret) = self.others(now_ms);
        let (epoch, slot) = self.locate(now_ms);
        let (e, rq, rt) = unpack(slot.load(Ordering::Relaxed));
        if e == epoch {
            req += rq;
            ret += rt;
        }
        (req, ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ratio: f64, min: u32, window_s: u64) -> BudgetConfig {
        BudgetConfig {
            ratio,
            min_retries_per_second: min,
            window: Duration::from_secs(window_s),
        }
    }

    fn retries_allowed(b: &BudgetState, c: &BudgetConfig, now: u64) -> u64 {
        let mut n = 0;
        while b.try_withdraw(c, now) {
            n += 1;
            assert!(n < 1_000_000, "budget never runs out");
        }
        n
    }

    #[test]
    fn pack_round_trip() {
        let v = pack(0xabcd, 123_456, COUNT_MAX);
        assert_eq!(unpack(v), (0xabcd, 123_456, COUNT_MAX));
        assert_eq!(
            unpack(pack(0x1_0001, 1, 2)),
            (1, 1, 2),
            "epoch wraps at 16 bits"
        );
    }

    #[test]
    fn ratio_of_requests() {
        let c = cfg(0.2, 0, 10);
        let b = BudgetState::new(c.bucket_ms());
        assert!(
            !b.try_withdraw(&c, 5_000),
            "no requests, no reserve: no retry"
        );
        for _ in 0..100 {
            b.deposit(5_000);
        }
        assert_eq!(retries_allowed(&b, &c, 5_000), 20);
        assert_eq!(b.counts(5_000), (100, 20));
        // Five more requests buy one more retry.
        for _ in 0..5 {
            b.deposit(5_100);
        }
        assert_eq!(retries_allowed(&b, &c, 5_100), 1);
    }

    #[test]
    fn reserve_without_traffic() {
        // 10 per second over a 10 s window: 100 retries even with no requests.
        let c = cfg(0.2, 10, 10);
        let b = BudgetState::new(c.bucket_ms());
        assert_eq!(retries_allowed(&b, &c, 1_000), 100);
        // Reserve and ratio add up.
        let b = BudgetState::new(c.bucket_ms());
        for _ in 0..50 {
            b.deposit(1_000);
        }
        assert_eq!(retries_allowed(&b, &c, 1_000), 110);
    }

    #[test]
    fn window_slides() {
        let c = cfg(0.5, 0, 10); // 1 s buckets
        let b = BudgetState::new(c.bucket_ms());
        for _ in 0..10 {
            b.deposit(0);
        }
        assert_eq!(retries_allowed(&b, &c, 500), 5);
        // Still inside the window (9.9 s later): spent.
        assert!(!b.try_withdraw(&c, 9_900));
        // Both the deposits and the retries of bucket 0 age out together.
        assert_eq!(b.counts(10_000), (0, 0));
        assert!(!b.try_withdraw(&c, 10_000));
        for _ in 0..4 {
            b.deposit(10_000);
        }
        assert_eq!(retries_allowed(&b, &c, 10_000), 2);
    }

    #[test]
    fn retries_spread_over_buckets_count() {
        let c = cfg(0.1, 0, 10);
        let b = BudgetState::new(c.bucket_ms());
        for t in 0..10u64 {
            for _ in 0..10 {
                b.deposit(t * 1000);
            }
        }
        // 100 requests over the window: 10 retries, wherever they were taken.
        assert_eq!(retries_allowed(&b, &c, 9_000), 10);
        assert_eq!(b.counts(9_500), (100, 10));
    }

    #[test]
    fn stale_bucket_is_reset_after_epoch_wrap() {
        let c = cfg(1.0, 0, 10);
        let b = BudgetState::new(c.bucket_ms());
        for _ in 0..7 {
            b.deposit(3_000);
        }
        // 2^16 ticks later the 16-bit epoch has wrapped to the same value, but the slot is
        // another one (10 does not divide 2^16): the old bucket reads as stale, not current.
        let later = 3_000 + (1u64 << 16) * 1000;
        assert_eq!(b.counts(later), (0, 0));
        b.deposit(later);
        assert_eq!(b.counts(later), (1, 0));
    }

    #[test]
    fn zero_ratio_zero_reserve_never_retries() {
        let c = cfg(0.0, 0, 1);
        let b = BudgetState::new(c.bucket_ms());
        for _ in 0..1000 {
            b.deposit(0);
        }
        assert!(!b.try_withdraw(&c, 0));
    }

    #[test]
    fn concurrent_withdrawals_do_not_overdraw() {
        let c = cfg(0.0, 5, 10); // reserve: 50
        let b = std::sync::Arc::new(BudgetState::new(c.bucket_ms()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.try_withdraw(&c, 42)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 50);
    }
}
