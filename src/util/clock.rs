//! Cheap clocks for counters kept in atomics.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since process start: a cheap monotonic clock for atomics (target health,
/// circuit breakers, retry budgets, flood windows).
pub fn now_ms() -> u64 {
    static START: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// Microseconds since the Unix epoch, read from the monotonic clock (wall time is sampled
/// once, so a clock step does not move rate-limit windows).
#[inline]
pub fn now_us() -> u64 {
    static BASE: once_cell::sync::Lazy<(Instant, u64)> = once_cell::sync::Lazy::new(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        (Instant::now(), wall)
    });
    BASE.1 + BASE.0.elapsed().as_micros() as u64
}
