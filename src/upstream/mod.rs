//! Upstream pools (serves Pingora's `upstream_peer` phase and the retry hooks).
//!
//! An [`Upstream`] is compiled once per config; the per-target [`TargetState`] (health,
//! circuit breaker, in-flight count) lives in a [`StateRegistry`] keyed by
//! `(upstream name, target addr)`, so a reload that keeps a target keeps its state.

pub mod budget;
pub mod health;
pub mod peer;
pub mod select;

use crate::config::raw::Balance;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use select::{InflightGuard, Selection};

/// Milliseconds since process start: a cheap monotonic clock for atomics.
pub fn now_ms() -> u64 {
    static START: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    START.elapsed().as_millis() as u64
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `None`: TCP connect check.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Passive {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

/// State of one target that outlives a config snapshot.
#[derive(Debug)]
pub struct TargetState {
    /// Result of active health checks; true until a check says otherwise.
    pub healthy: AtomicBool,
    pub consecutive_ok: AtomicU32,
    pub consecutive_fail: AtomicU32,
    /// `now_ms()` at which the next active check is due.
    pub next_check_ms: AtomicU64,
    pub checking: AtomicBool,
    /// Passive circuit breaker: ejected until this `now_ms()`.
    pub ejected_until_ms: AtomicU64,
    passive: Mutex<PassiveWindow>,
    /// Requests in flight (least_conn).
    pub inflight: AtomicUsize,
}

#[derive(Debug, Default)]
struct PassiveWindow {
    window_start_ms: u64,
    fails: u32,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            healthy: AtomicBool::new(true),
            consecutive_ok: AtomicU32::new(0),
            consecutive_fail: AtomicU32::new(0),
            next_check_ms: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            passive: Mutex::new(PassiveWindow::default()),
            inflight: AtomicUsize::new(0),
        }
    }
}

impl TargetState {
    /// Usable for new requests: active checks pass and the circuit is closed.
    #[inline]
    pub fn available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Records a failed live request; returns true when this failure ejected the target.
    pub fn record_failure(&self, passive: &Passive) -> bool {
        let now = now_ms();
        let window = passive.fail_timeout.as_millis() as u64;
        let mut w = self.passive.lock();
        if now.saturating_sub(w.window_start_ms) > window || w.fails == 0 {
            w.window_start_ms = now;
            w.fails = 0;
        }
        w.fails += 1;
        if w.fails >= passive.max_fails {
            w.fails = 0;
            self.ejected_until_ms.store(now + window, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[derive(Debug)]
pub struct Target {
    /// As written in the config (shown in /status and metrics).
    pub addr: String,
    pub sock: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub state: Arc<TargetState>,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    /// Primaries first, then backups; `primaries` counts the former.
    pub targets: Vec<Target>,
    pub primaries: usize,
    pub keepalive: usize,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub health_check: Option<HealthCheck>,
    pub passive: Option<Passive>,
    pub selector: select::Selector,
    /// Rotating start point for round robin, the weighted schedule and tie breaks.
    pub cursor: AtomicUsize,
    /// `retry_backoff`, `retry_budget` and their counters.
    pub resilience: crate::resilience::UpstreamPolicy,
    /// `tls` and `protocol`: how connections to the targets are made.
    pub transport: peer::Transport,
}

impl Upstream {
    pub fn backups(&self) -> &[Target] {
        &self.targets[self.primaries..]
    }
}

/// Target state shared across config generations, keyed by `(upstream, addr)`.
#[derive(Debug, Default)]
pub struct StateRegistry {
    states: Mutex<HashMap<(String, String), Arc<TargetState>>>,
    /// Retry budgets and resilience counters by upstream and route name.
    pub resilience: crate::resilience::Registry,
}

impl StateRegistry {
    pub fn get_or_create(&self, upstream: &str, addr: &str) -> Arc<TargetState> {
        self.states
            .lock()
            .entry((upstream.to_string(), addr.to_string()))
            .or_default()
            .clone()
    }

    /// Forgets targets no longer in any upstream (called after a reload is swapped in).
    pub fn retain(&self, keep: &[(String, String)]) {
        let keep: std::collections::HashSet<&(String, String)> = keep.iter().collect();
        self.states.lock().retain(|k, _| keep.contains(k));
    }
}
