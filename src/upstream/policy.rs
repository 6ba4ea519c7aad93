//! What the resilience features keep per upstream, per route and per request: the
//! compiled retry back-off, retry budget and route timeout, the counters that outlive a
//! config snapshot ([`Registry`], held by [`super::StateRegistry`]) and a request's deadline.
//! Compiled and decided on per request by [`crate::resilience`]; here, below it, because
//! every [`super::Upstream`] holds its [`UpstreamPolicy`] and the request context its
//! [`RequestState`].

use super::budget::{BudgetConfig, BudgetState};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exponential back-off with full jitter (AWS): before retry `n` (1-based) wait a uniformly
/// random time in `[0, min(max, base × 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The upper end of the wait before retry `n`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << shift).min(self.max)
    }

    /// A jittered wait before retry `n`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_micros() as u64;
        Duration::from_micros(rand::random_range(0..=ceiling))
    }
}

/// The compiled `retry_budget` with its state.
#[derive(Debug)]
pub struct Budget {
    pub config: BudgetConfig,
    pub state: Arc<BudgetState>,
}

/// What an upstream adds to the retry policy.
#[derive(Debug, Default)]
pub struct UpstreamPolicy {
    pub backoff: Option<Backoff>,
    /// `None` when switched off or when the upstream never retries (`retries: 0`).
    pub budget: Option<Budget>,
    pub stats: Arc<UpstreamStats>,
}

/// `routes[].timeout`.
#[derive(Debug)]
pub struct RouteTimeout {
    pub limit: Duration,
    pub stats: Arc<RouteStats>,
}

/// Counters of one upstream (by name, across reloads).
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub budget_refused: AtomicU64,
    pub deadline_refused: AtomicU64,
    pub backoffs: AtomicU64,
    pub backoff_micros: AtomicU64,
}

/// Counters of one route (by name, across reloads).
#[derive(Debug, Default)]
pub struct RouteStats {
    pub timeouts: AtomicU64,
}

/// Budget state and counters kept across config generations by upstream and route name
/// (held by [`super::StateRegistry`]). Only config loads take the lock.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    budgets: HashMap<String, Arc<BudgetState>>,
    upstreams: HashMap<String, Arc<UpstreamStats>>,
    routes: HashMap<String, Arc<RouteStats>>,
}

impl Registry {
    /// The budget counts of `upstream`; a changed `window` (bucket length) starts afresh.
    pub fn budget(&self, upstream: &str, bucket_ms: u64) -> Arc<BudgetState> {
        let mut g = self.inner.lock();
        match g.budgets.get(upstream) {
            Some(b) if b.bucket_ms() == bucket_ms => b.clone(),
            _ => {
                let b = Arc::new(BudgetState::new(bucket_ms));
                g.budgets.insert(upstream.to_string(), b.clone());
                b
            }
        }
    }

    pub fn upstream_stats(&self, upstream: &str) -> Arc<UpstreamStats> {
        self.inner
            .lock()
            .upstreams
            .entry(upstream.to_string())
            .or_default()
            .clone()
    }

    pub fn route_stats(&self, route: &str) -> Arc<RouteStats> {
        self.inner
            .lock()
            .routes
            .entry(route.to_string())
            .or_default()
            .clone()
    }

    /// Forgets upstreams and routes the new config no longer has (after a reload is
    /// swapped in).
    pub fn retain<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a str>,
        routes: impl IntoIterator<Item = &'a str>,
    ) {
        let ups: HashSet<&str> = upstreams.into_iter().collect();
        let routes: HashSet<&str> = routes.into_iter().collect();
        let mut g = self.inner.lock();
        g.budgets.retain(|k, _| ups.contains(k.as_str()));
        g.upstreams.retain(|k, _| ups.contains(k.as_str()));
        g.routes.retain(|k, _| routes.contains(k.as_str()));
    }
}

/// This request's deadline and pending back-off (in `RequestCtx::resilience`; decided by
/// [`crate::resilience`]).
#[derive(Debug, Default)]
pub struct RequestState {
    /// Arrival + `routes[].timeout` (or + a gRPC client's `grpc-timeout` when that is
    /// sooner), set at the first attempt.
    pub deadline: Option<Instant>,
    /// To wait before the next attempt (decided with the retry).
    pub backoff: Duration,
    /// The deadline ended this request (counted once).
    pub expired: bool,
    /// A gRPC client's `grpc-timeout` (set by `grpc::note_deadline`).
    pub client_timeout: Option<Duration>,
    /// `deadline` is the client's, not the route's (its expiry is no route timeout).
    pub from_client: bool,
}
