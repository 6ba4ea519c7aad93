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

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch.
pub fn rfc3339_millis(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let millis = since_epoch.subsec_millis();
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// (year, month, day) of the proleptic Gregorian calendar, `days` after 1970-01-01 (before
/// it when negative): Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u8, d as u8)
}
