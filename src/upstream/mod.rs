//! Upstream pools (serves Pingora's `upstream_peer` phase and the retry hooks).
//!
//! An [`Upstream`] is compiled once per config; the per-target [`TargetState`] (health,
//! circuit breaker, in-flight count) lives in a [`StateRegistry`] keyed by
//! `(upstream name, target addr)`, so a reload that keeps a target keeps its state.
//!
//! The targets themselves are a [`TargetSet`] behind an `ArcSwap`: fixed for `targets:`, and
//! swapped whole by [`discovery`] when a DNS answer changes. A request takes the set once in
//! `upstream_peer` and keeps it for all its attempts, so indexes stay meaningful and the
//! request path never takes a lock.

pub mod budget;
pub mod discovery;
pub mod health;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod select;

use crate::config::raw::Balance;
use crate::util::clock::now_ms;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use select::{InflightGuard, Selection};

/// The config in use now, as the background services here (health checks, DNS discovery)
/// read it at every tick: the app's shared state implements it over the live snapshot. A
/// trait, so this module stays below that snapshot (which holds the plugin chains).
pub trait LiveConfig: Send + Sync + 'static {
    /// Calls `f` with the upstreams of the snapshot in use now.
    fn with_upstreams(&self, f: &mut dyn FnMut(&[Arc<Upstream>]));
    /// State kept across snapshots.
    fn states(&self) -> &StateRegistry;
}

/// The loop of a background scheduler (health checks, DNS discovery): calls `run_due` every
/// `tick` until the server shuts down. A tick that comes late is not made up for with a burst
/// (`Delay`): each run looks at what is due now anyway.
pub(crate) async fn tick_until_shutdown(
    tick: Duration,
    mut shutdown: pingora::server::ShutdownWatch,
    run_due: impl Fn(),
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = interval.tick() => run_due(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `None`: TCP connect check.
    pub path: Option<String>,
    /// `host`: the `Host` of path checks and, host part alone, the TLS server name of the
    /// checks of a TLS upstream (`None`: the target's own).
    pub host: Option<String>,
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
    /// As written in the config, or `ip:port` of a discovered address (shown in /status and
    /// metrics, and the key of its state).
    pub addr: String,
    /// `host:port` sent as `Host` (unless `preserve_host`) and whose host is the TLS server
    /// name: `addr` for a configured target, the DNS name for a discovered one.
    pub host: String,
    pub sock: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub state: Arc<TargetState>,
}

/// The targets of an upstream at one moment, with the schedule built for them.
#[derive(Debug)]
pub struct TargetSet {
    /// Primaries first, then backups; `primaries` counts the former.
    pub targets: Vec<Target>,
    pub primaries: usize,
    pub selector: select::Selector,
}

impl TargetSet {
    pub fn new(balance: Balance, mut primaries: Vec<Target>, backups: Vec<Target>) -> TargetSet {
        let selector = select::Selector::build(balance, &primaries);
        let n = primaries.len();
        primaries.extend(backups);
        TargetSet {
            targets: primaries,
            primaries: n,
            selector,
        }
    }

    pub fn backups(&self) -> &[Target] {
        &self.targets[self.primaries..]
    }
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    /// The current targets (swapped by DNS discovery; fixed otherwise).
    pub set: ArcSwap<TargetSet>,
    /// `discovery`: where the targets come from when they are not listed.
    pub discovery: Option<discovery::Discovery>,
    pub keepalive: usize,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub health_check: Option<HealthCheck>,
    pub passive: Option<Passive>,
    /// Rotating start point for round robin, the weighted schedule and tie breaks.
    pub cursor: AtomicUsize,
    /// `retry_backoff`, `retry_budget` and their counters.
    pub resilience: policy::UpstreamPolicy,
    /// `tls` and `protocol`: how connections to the targets are made.
    pub transport: peer::Transport,
}

impl Upstream {
    /// The current target set (one atomic load and reference count).
    #[inline]
    pub fn targets(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }
}

/// Target state shared across config generations, keyed by `(upstream, addr)`.
#[derive(Debug, Default)]
pub struct StateRegistry {
    states: Mutex<HashMap<(String, String), Arc<TargetState>>>,
    /// Retry budgets and resilience counters by upstream and route name.
    pub resilience: policy::Registry,
    /// Last good DNS answers by upstream, kept across reloads.
    pub discovery: discovery::Registry,
}

impl StateRegistry {
    pub fn get_or_create(&self, upstream: &str, addr: &str) -> Arc<TargetState> {
        self.states
            .lock()
            .entry((upstream.to_string(), addr.to_string()))
            .or_default()
            .clone()
    }

    /// The state of `(upstream, addr)` and whether it was made now (by `init`).
    pub fn get_or_insert_with(
        &self,
        upstream: &str,
        addr: &str,
        init: impl FnOnce() -> TargetState,
    ) -> (Arc<TargetState>, bool) {
        let mut states = self.states.lock();
        let key = (upstream.to_string(), addr.to_string());
        if let Some(st) = states.get(&key) {
            return (st.clone(), false);
        }
        let st = Arc::new(init());
        states.insert(key, st.clone());
        (st, true)
    }

    /// Forgets the state of one target (a discovered address that left the DNS answer).
    pub fn forget(&self, upstream: &str, addr: &str) {
        self.states
            .lock()
            .remove(&(upstream.to_string(), addr.to_string()));
    }

    /// Forgets targets no longer in any upstream (called after a reload is swapped in).
    pub fn retain(&self, keep: &[(String, String)]) {
        let keep: std::collections::HashSet<&(String, String)> = keep.iter().collect();
        self.states.lock().retain(|k, _| keep.contains(k));
    }
}
