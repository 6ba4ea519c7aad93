//! `server.flood`: per client IP caps on new connections and on requests per second, at the
//! accept path (`EdgeGuard`, before the TLS handshake) and in `early_request_filter` (before
//! routing and every plugin). Off by default.
//!
//! Counts live in pingora-limits' [`Rate`]: a count-min sketch per one-second window, of a
//! fixed size whatever the number of addresses (about 1 MB per cap, allocated when the cap is
//! first used). A sketch never under-counts: under a flood from very many addresses it errs
//! towards refusing, never towards letting a flooding address through.

use pingora_limits::rate::Rate;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Connections closed at accept because their address was over
/// `server.flood.connections_per_ip_per_second`.
pub static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Requests answered 429 because their client IP was over
/// `server.flood.requests_per_ip_per_second`.
pub static REQUESTS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Registers the `downstream_flood_*` counters above (read at scrape time; once, at startup).
pub fn register_metrics() {
    crate::observe::metrics::registry().on_scrape(|_, out| {
        use crate::observe::metrics::scraped_counter;
        scraped_counter(
            "downstream_flood_connections_refused_total",
            "Connections closed at accept because their address was over server.flood.connections_per_ip_per_second.",
            CONNECTIONS_REFUSED.load(Ordering::Relaxed),
            out,
        );
        scraped_counter(
            "downstream_flood_requests_refused_total",
            "Requests answered 429 because their client IP was over server.flood.requests_per_ip_per_second.",
            REQUESTS_REFUSED.load(Ordering::Relaxed),
            out,
        );
    });
}

/// Sketch rows and columns: 4 x 16384 counters per window (two windows, 8 bytes each: 1 MB).
/// Wide enough that thousands of addresses at once rarely share every row with one another.
const HASHES: usize = 4;
const SLOTS: usize = 16 * 1024;

static CONNECTIONS: OnceLock<Rate> = OnceLock::new();
static REQUESTS: OnceLock<Rate> = OnceLock::new();
static LAST_LOG: AtomicU64 = AtomicU64::new(0);

fn rate(cell: &'static OnceLock<Rate>) -> &'static Rate {
    cell.get_or_init(|| Rate::new_with_estimator_config(Duration::from_secs(1), HASHES, SLOTS))
}

/// Counts one event for `ip`; true when it is over `cap` this second (`cap` 0: no cap).
fn over(cell: &'static OnceLock<Rate>, ip: IpAddr, cap: u32) -> bool {
    if cap == 0 {
        return false;
    }
    rate(cell).observe(&ip, 1) > cap as isize
}

/// One warning a second at most: a flood must not flood the log too.
fn log(what: &str, ip: IpAddr, cap: u32) {
    let now = crate::util::clock::now_ms() / 1000;
    if LAST_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(
            client_ip = %ip,
            cap,
            "server.flood: {what} over {cap} per second from {ip} refused (one line a second at most)"
        );
    }
}

/// A new connection from `ip`: false when it must be closed at once.
pub fn admit_connection(ip: IpAddr, cap: u32) -> bool {
    if over(&CONNECTIONS, ip, cap) {
        CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
        log("connections", ip, cap);
        return false;
    }
    true
}

/// A new request from client `ip`: false when it gets a 429.
pub fn admit_request(ip: IpAddr, cap: u32) -> bool {
    if over(&REQUESTS, ip, cap) {
        REQUESTS_REFUSED.fetch_add(1, Ordering::Relaxed);
        log("requests", ip, cap);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_off_at_zero() {
        static CELL: OnceLock<Rate> = OnceLock::new();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..100).all(|_| !over(&CELL, a, 0)), "0: no cap");
        // Within one window (a window boundary in between at most doubles what passes).
        let passed = (0..20).filter(|_| !over(&CELL, a, 3)).count();
        assert!((3..=6).contains(&passed), "{passed}");
        assert!(!over(&CELL, b, 3), "another address has its own count");
    }
}
