//! Limiter state for `rate-limiting` and `concurrency-limiting`: the counting, not the
//! plugins (those are in `src/plugins/rate_limit.rs` and `src/plugins/concurrency.rs`).
//!
//! - [`local`]: exact per-key counters in a sharded map (one small mutex per shard, no global
//!   lock), with idle keys expired and a hard cap on keys per limiter.
//! - [`redis`]: the same algorithms as Lua scripts, one round trip per request over a
//!   multiplexed, self-reconnecting connection to one server, a Redis Cluster or the master
//!   a Sentinel set names.
//! - [`concurrency`]: exact in-flight counts with an RAII guard.
//!
//! **Algorithms.** `sliding_window` is the *sliding window counter*: per key and window length
//! `W`, two fixed buckets aligned to the Unix epoch (the current one and the previous one) are
//! counted exactly, and the count over the last `W` is estimated as
//! `current + ceil(previous * (W - elapsed) / W)`. A request is allowed while that estimate is
//! below the limit. Counts are exact per key (no hashing into shared slots, unlike
//! pingora-limits' `Rate` estimator; keys are told apart by a 128-bit digest, see [`local`]
//! and [`redis`]); only the split of the previous bucket over time is
//! assumed uniform, and rounding the estimate up means a burst at the end of one bucket can
//! never let more than `limit` requests through within any stretch of `W` that starts at the
//! beginning of a bucket. Refused requests are not counted. `token_bucket` is GCRA (the
//! "virtual scheduling" form of a token bucket): one timestamp per key, `burst` capacity,
//! refilled at `rate` per second.
//!
//! **Surviving reloads.** Stores live in the app's [`Registry`] (see
//! [`crate::util::registry`]). Plugins look their store up by *identity* (the scope — route
//! name or global — plus the full plugin config) when a config is compiled; the registry
//! holds weak references, so a store lives exactly as long as some runtime uses it and an
//! unchanged limit keeps its counters across a reload.

pub mod concurrency;
pub mod local;
pub mod redis;

use crate::util::registry::Registry;
use http::HeaderValue;
use std::sync::Arc;

pub use concurrency::{ConcurrencyGuard, ConcurrencyStore};
pub use local::LocalStore;
pub use redis::{BackendError, RedisBackend, RedisSpec, Topology};

/// Fixed window lengths, the slots of a per-key entry.
pub const WINDOWS: [(&str, u64); 4] = [
    ("second", 1_000),
    ("minute", 60_000),
    ("hour", 3_600_000),
    ("day", 86_400_000),
];

/// One window limit: `limit` requests per `window_ms`.
#[derive(Debug, Clone)]
pub struct WindowLimit {
    /// Index into [`WINDOWS`] (slot of the per-key entry), always below 4.
    pub(crate) slot: usize,
    pub window_ms: u64,
    pub limit: u64,
    /// `RateLimit-Policy` value, e.g. `5;w=60`.
    pub policy: HeaderValue,
}

/// The set of windows that apply to a key (the plugin's, or a consumer tier's).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub windows: Vec<WindowLimit>,
}

impl Limits {
    /// From `[second, minute, hour, day]`; unset windows are skipped.
    pub fn from_slots(slots: [Option<u64>; 4]) -> Limits {
        let windows = slots
            .iter()
            .enumerate()
            .filter_map(|(slot, l)| {
                l.map(|limit| {
                    let window_ms = WINDOWS[slot].1;
                    WindowLimit {
                        slot,
                        window_ms,
                        limit,
                        policy: policy_value(limit, window_ms / 1000),
                    }
                })
            })
            .collect();
        Limits { windows }
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

fn policy_value(quota: u64, window_s: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("{quota};w={window_s}"))
        .unwrap_or_else(|_| HeaderValue::from_static("0;w=1"))
}

/// Token bucket parameters (GCRA): one request every `interval_us`, `burst` at once.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    pub interval_us: u64,
    pub burst: u64,
    pub policy: HeaderValue,
}

impl TokenBucket {
    pub fn new(rate_per_s: f64, burst: u64) -> TokenBucket {
        let interval_us = ((1_000_000.0 / rate_per_s).round() as u64).max(1);
        let burst = burst.max(1);
        let refill_s = (burst.saturating_mul(interval_us))
            .div_ceil(1_000_000)
            .max(1);
        TokenBucket {
            interval_us,
            burst,
            policy: policy_value(burst, refill_s),
        }
    }

    /// Capacity in microseconds of schedule (`burst * interval`).
    #[inline]
    pub fn tolerance_us(&self) -> u64 {
        self.burst.saturating_mul(self.interval_us)
    }
}

/// State of one window of one key before the request, as counted by a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub curr: u64,
    pub prev: u64,
    /// Milliseconds since the current bucket began.
    pub elapsed_ms: u64,
}

/// Estimated requests in the last window before this one: `curr + ceil(prev * left / W)`.
#[inline]
pub fn estimate(c: WindowCounts, window_ms: u64) -> u64 {
    let left = window_ms.saturating_sub(c.elapsed_ms);
    let weighted = (c.prev as u128 * left as u128).div_ceil(window_ms.max(1) as u128);
    c.curr.saturating_add(weighted as u64)
}

/// How long until one more request fits in this window (0: it fits now), assuming no
/// other traffic meanwhile.
pub fn wait_ms(c: WindowCounts, w: &WindowLimit) -> u64 {
    let limit = w.limit;
    let wl = w.window_ms.max(1);
    if estimate(c, wl) < limit {
        return 0;
    }
    let left = wl.saturating_sub(c.elapsed_ms);
    if limit == 0 {
        return left + wl;
    }
    if c.curr >= limit {
        // Next bucket: prev' = curr, need ceil(curr * (W - e') / W) <= limit - 1.
        let need = (wl as u128 * (c.curr - limit + 1) as u128).div_ceil(c.curr as u128);
        return left + need as u64;
    }
    // This bucket: need ceil(prev * (W - e) / W) <= limit - 1 - curr.
    let room = limit - 1 - c.curr;
    let need_elapsed =
        (wl as u128 * (c.prev.saturating_sub(room)) as u128).div_ceil(c.prev.max(1) as u128);
    (need_elapsed as u64).saturating_sub(c.elapsed_ms).max(1)
}

/// What a limiter decided for one request, with the numbers for the client headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub status: RateLimitStatus,
    /// Milliseconds until a request would be allowed (0 when allowed).
    pub retry_after_ms: u64,
}

/// The tightest window's numbers, for `X-RateLimit-*` and `RateLimit-Policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the current window resets (until a retry may pass, when refused).
    pub reset_s: u64,
    pub policy: HeaderValue,
}

#[inline]
fn ceil_s(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// Sliding-window decision from per-window counts taken before the request. `counts[i]`
/// belongs to `limits.windows[i]`. Allowed only when every window has room.
pub fn decide_windows(limits: &Limits, counts: &[WindowCounts]) -> Decision {
    let mut allowed = true;
    let mut retry = 0u64;
    // (open, remaining, window_ms, index) of the tightest window so far: a full window
    // first, then the fewest remaining, then the shortest.
    let mut tight: Option<(bool, u64, u64, usize)> = None;
    for (i, (w, c)) in limits.windows.iter().zip(counts).enumerate() {
        let est = estimate(*c, w.window_ms);
        let remaining = w.limit.saturating_sub(est.saturating_add(1));
        let open = est < w.limit;
        if !open {
            allowed = false;
            retry = retry.max(wait_ms(*c, w));
        }
        let key = (open, remaining, w.window_ms, i);
        if tight.is_none_or(|t| key < t) {
            tight = Some(key);
        }
    }
    let Some((_, mut remaining, _, i)) = tight else {
        return Decision {
            allowed: true,
            status: RateLimitStatus {
                limit: 0,
                remaining: 0,
                reset_s: 0,
                policy: HeaderValue::from_static("0;w=1"),
            },
            retry_after_ms: 0,
        };
    };
    let w = &limits.windows[i];
    let c = counts[i];
    let mut reset_s = ceil_s(w.window_ms.saturating_sub(c.elapsed_ms)).max(1);
    if !allowed {
        remaining = 0;
        reset_s = ceil_s(retry).max(1);
    }
    Decision {
        allowed,
        status: RateLimitStatus {
            limit: w.limit,
            remaining,
            reset_s,
            policy: w.policy.clone(),
        },
        retry_after_ms: if allowed { 0 } else { retry },
    }
}

/// GCRA decision. `tat_us` is the key's theoretical arrival time before the request
/// (0 for a new key); returns the decision and the new TAT to store when allowed.
#[inline]
pub fn decide_token(tb: &TokenBucket, tat_us: u64, now_us: u64) -> (Decision, u64) {
    let new_tat = tat_us.max(now_us) + tb.interval_us;
    let ahead = new_tat - now_us;
    let tol = tb.tolerance_us();
    if ahead <= tol {
        let remaining = (tol - ahead) / tb.interval_us;
        (
            Decision {
                allowed: true,
                status: RateLimitStatus {
                    limit: tb.burst,
                    remaining,
                    reset_s: ahead.div_ceil(1_000_000).max(1),
                    policy: tb.policy.clone(),
                },
                retry_after_ms: 0,
            },
            new_tat,
        )
    } else {
        let wait_ms = (ahead - tol).div_ceil(1000).max(1);
        (
            Decision {
                allowed: false,
                status: RateLimitStatus {
                    limit: tb.burst,
                    remaining: 0,
                    reset_s: ceil_s(wait_ms).max(1),
                    policy: tb.policy.clone(),
                },
                retry_after_ms: wait_ms,
            },
            tat_us,
        )
    }
}

/// A limiter key: a kind tag and the bytes naming the client (username, IP, header value,
/// route name). Keys up to 64 bytes (tag included) stay on the stack.
pub struct KeyBuf {
    len: usize,
    inline: [u8; 64],
    heap: Vec<u8>,
}

impl KeyBuf {
    pub fn new(tag: u8, parts: &[&[u8]]) -> KeyBuf {
        let total = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut k = KeyBuf {
            len: total,
            inline: [0; 64],
            heap: Vec::new(),
        };
        if total <= k.inline.len() {
            k.inline[0] = tag;
            let mut at = 1;
            for p in parts {
                k.inline[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        } else {
            k.heap.reserve_exact(total);
            k.heap.push(tag);
            for p in parts {
                k.heap.extend_from_slice(p);
            }
        }
        k
    }

    /// The key of a client IP (`None`: one shared "unknown" key).
    pub fn ip(ip: Option<std::net::IpAddr>) -> KeyBuf {
        match ip {
            Some(std::net::IpAddr::V4(v4)) => KeyBuf::new(b'4', &[&v4.octets()]),
            Some(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => KeyBuf::new(b'4', &[&v4.octets()]),
                None => KeyBuf::new(b'6', &[&v6.octets()]),
            },
            None => KeyBuf::new(b'-', &[]),
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

// Limiter state that outlives config generations lives in the app's
// [`crate::util::registry::Registry`], keyed by identity: a store is dropped once no runtime
// uses it any more.

/// The local rate-limit counters of the limit named `id`.
pub fn local_store(reg: &Registry, id: &str) -> Arc<LocalStore> {
    reg.get_or_insert_with(id, LocalStore::default)
}

/// The in-flight counters of the concurrency limit named `id`.
pub fn concurrency_store(reg: &Registry, id: &str) -> Arc<ConcurrencyStore> {
    reg.get_or_insert_with(id, ConcurrencyStore::default)
}

/// The shared connection for a Redis deployment (one per distinct spec in the process).
/// Fails (with a message free of secrets) on an invalid URL or address.
pub fn redis_backend(reg: &Registry, spec: &redis::RedisSpec) -> Result<Arc<RedisBackend>, String> {
    reg.try_get_or_insert_with(&spec.identity(), || RedisBackend::new(spec))
}

/// Number of live local and concurrency stores (tests).
pub fn live_stores(reg: &Registry) -> usize {
    reg.count::<LocalStore>() + reg.count::<ConcurrencyStore>()
}

// ---------------------------------------------------------------------------------------------
// Metrics: the `rate_limit_*` families
// ---------------------------------------------------------------------------------------------

/// `rate_limit_hits_total{client_id}` for requests without a consumer.
pub const ANONYMOUS: &str = "anonymous";

struct Families {
    hits: prometheus::IntCounterVec,
    backend_errors: prometheus::IntCounter,
}

static FAMILIES: once_cell::sync::Lazy<Families> = once_cell::sync::Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    // Read at scrape time from the Redis backends' down-time bookkeeping.
    r.on_scrape(|_, out| {
        use prometheus::core::Collector;
        if let Ok(c) = prometheus::Counter::new(
            "rate_limit_backend_fallback_seconds_total",
            "Time during which a rate-limit Redis backend gave no answers (from a failed call to the next answered one): requests took the fault_tolerant decision.",
        ) {
            c.inc_by(redis::fallback_seconds());
            out.extend(c.collect());
        }
    });
    Families {
        hits: r.counter_vec(
            "rate_limit_hits_total",
            "Requests refused by rate-limiting, by consumer (or anonymous) and route.",
            &["client_id", "route"],
        ),
        backend_errors: r.counter(
            "rate_limit_backend_errors_total",
            "Rate-limit backend (Redis) failures.",
        ),
    }
});

/// Registers the `rate_limit_*` families (once, at startup; later calls do nothing).
pub fn register_metrics() {
    once_cell::sync::Lazy::force(&FAMILIES);
}

/// Creates (at 0) or removes the anonymous `rate_limit_hits_total` series of `route`.
pub fn hits_series(route: &str, create: bool) {
    if create {
        FAMILIES.hits.with_label_values(&[ANONYMOUS, route]);
    } else {
        let _ = FAMILIES.hits.remove_label_values(&[ANONYMOUS, route]);
    }
}

/// `rate_limit_hits_total{client_id,route}`: one request refused by rate-limiting
/// (`client_id`: the consumer's name, or [`ANONYMOUS`]; consumer names come from the config,
/// so the label stays bounded).
pub fn record_hit(route: &str, consumer: Option<&str>) {
    FAMILIES
        .hits
        .with_label_values(&[consumer.unwrap_or(ANONYMOUS), route])
        .inc();
}

/// `rate_limit_backend_errors_total`: the shared (Redis) backend failed or was too slow.
pub fn record_backend_error() {
    FAMILIES.backend_errors.inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(limit: u64, window_ms: u64) -> WindowLimit {
        WindowLimit {
            slot: 1,
            window_ms,
            limit,
            policy: policy_value(limit, window_ms / 1000),
        }
    }

    #[test]
    fn estimate_rounds_previous_bucket_up() {
        let c = WindowCounts {
            curr: 2,
            prev: 3,
            elapsed_ms: 1,
        };
        // 3 * 59_999 / 60_000 = 2.99995 -> 3
        assert_eq!(estimate(c, 60_000), 5);
        let c = WindowCounts {
            curr: 0,
            prev: 10,
            elapsed_ms: 30_000,
        };
        assert_eq!(estimate(c, 60_000), 5);
        let c = WindowCounts {
            curr: 0,
            prev: 10,
            elapsed_ms: 60_000,
        };
        assert_eq!(estimate(c, 60_000), 0);
    }

    #[test]
    fn wait_is_exactly_when_the_next_request_fits() {
        let w = lim(5, 60_000);
        for (curr, prev, elapsed) in [(5, 0, 10_000), (5, 7, 0), (2, 6, 1_000), (0, 9, 1_000)] {
            let c = WindowCounts {
                curr,
                prev,
                elapsed_ms: elapsed,
            };
            let wait = wait_ms(c, &w);
            assert!(wait > 0, "{c:?} is full");
            // Replay time forward by `wait` (rolling buckets) and check it fits, and that
            // one millisecond earlier it did not.
            let at = |dt: u64| {
                let t = elapsed + dt;
                if t < 60_000 {
                    WindowCounts {
                        curr,
                        prev,
                        elapsed_ms: t,
                    }
                } else if t < 120_000 {
                    WindowCounts {
                        curr: 0,
                        prev: curr,
                        elapsed_ms: t - 60_000,
                    }
                } else {
                    WindowCounts::default()
                }
            };
            assert!(estimate(at(wait), 60_000) < 5, "{c:?} wait {wait}");
            assert!(estimate(at(wait - 1), 60_000) >= 5, "{c:?} wait {wait}");
        }
    }

    #[test]
    fn tightest_window_is_reported() {
        let limits = Limits::from_slots([Some(10), Some(20), None, None]);
        let counts = [
            WindowCounts {
                curr: 1,
                prev: 0,
                elapsed_ms: 400,
            },
            WindowCounts {
                curr: 17,
                prev: 0,
                elapsed_ms: 30_000,
            },
        ];
        let d = decide_windows(&limits, &counts);
        assert!(d.allowed);
        assert_eq!(d.status.limit, 20);
        assert_eq!(d.status.remaining, 2);
        assert_eq!(d.status.reset_s, 30);
        assert_eq!(d.status.policy, "20;w=60");
    }

    #[test]
    fn token_bucket_burst_then_rate() {
        let tb = TokenBucket::new(2.0, 3);
        let mut tat = 0;
        let now = 1_000_000_000;
        for i in 0..3 {
            let (d, t) = decide_token(&tb, tat, now);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.status.remaining, 2 - i);
            tat = t;
        }
        let (d, _) = decide_token(&tb, tat, now);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 500);
        let (d, _) = decide_token(&tb, tat, now + 500_000);
        assert!(d.allowed);
        assert_eq!(d.status.remaining, 0);
    }

    #[test]
    fn keys_inline_and_heap() {
        let k = KeyBuf::new(b'h', &[b"abc"]);
        assert_eq!(k.as_bytes(), b"habc");
        let long = vec![b'x'; 200];
        let k = KeyBuf::new(b'h', &[&long]);
        assert_eq!(k.as_bytes().len(), 201);
        assert_eq!(k.as_bytes()[0], b'h');
        let a = KeyBuf::ip(Some("::ffff:10.0.0.1".parse().unwrap()));
        let b = KeyBuf::ip(Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn registry_keeps_stores_while_used() {
        let r = Registry::default();
        let a = local_store(&r, "x");
        let b = local_store(&r, "x");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &local_store(&r, "y")));
        drop((a, b));
        assert_eq!(live_stores(&r), 0, "dropped when no runtime holds it");
    }
}
