//! Resilience of the upstream exchange: the route's total timeout across retries
//! (`routes[].timeout`), back-off with jitter before a retry (`upstreams[].retry_backoff`)
//! and the retry budget (`upstreams[].retry_budget`, see [`crate::upstream::budget`]).
//!
//! Pingora phases served:
//! - `upstream_peer`: [`before_attempt`] sets the deadline and deposits into the budget on the
//!   first attempt, sleeps the back-off before a retry and refuses an attempt once the
//!   deadline has passed (504); [`cap_timeouts`] cuts the attempt's connect, read and write
//!   timeouts to the time left.
//! - `fail_to_connect`, `error_while_proxy`, `upstream_response_filter` (the retry policy in
//!   [`crate::forward`]): [`note_error`] recognises a timeout that ran into the deadline;
//!   [`allow_retry`] is the last word on a retry the policy would make: not after the
//!   deadline, not when the back-off would end past it, not when the budget is spent.
//! - `response_body_filter`: [`check_body`] ends a response whose body is still streaming
//!   when the deadline passes.
//!
//! Counters live in [`crate::upstream::policy::Registry`] (by upstream and route name, so they survive reloads) and
//! are read at scrape time by [`metric_families`]. With none of the features configured a
//! request pays one branch per phase, plus the budget deposit (one compare-and-swap) while
//! the budget is on.

use crate::config::diag::Compiler;
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
use crate::ctx::Runtime;
use crate::errors;
use crate::upstream::budget::BudgetConfig;
use crate::upstream::policy::{Backoff, Budget, Registry, RouteTimeout, UpstreamPolicy};
use crate::util::clock::now_ms;
use pingora::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A timeout that fires this close to the deadline is the deadline's doing.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);
/// Longest `retry_backoff.max` accepted.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// `retry_budget.window` bounds (the bucket counters are sized for these).
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Largest `retry_budget.ratio` accepted.
const MAX_RATIO: f64 = 10.0;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Compiles `retry_backoff` and `retry_budget` of upstream `u` at YAML path `p`.
pub fn compile_upstream(
    c: &mut Compiler,
    p: &str,
    u: &crate::config::raw::RawUpstream,
    registry: &Registry,
) -> UpstreamPolicy {
    let backoff = u.retry_backoff.as_ref().map(|b| {
        let bp = format!("{p}.retry_backoff");
        if b.base.0.is_zero() {
            c.error(&format!("{bp}.base"), "must be greater than 0");
        }
        if b.max.0 < b.base.0 {
            c.error(&format!("{bp}.max"), "must not be less than base");
        }
        if b.max.0 > MAX_BACKOFF {
            c.error(&format!("{bp}.max"), "must be at most 60s");
        }
        Backoff {
            base: b.base.0,
            max: b.max.0.max(b.base.0),
        }
    });
    let rb = &u.retry_budget;
    let bp = format!("{p}.retry_budget");
    if !rb.ratio.is_finite() || rb.ratio < 0.0 || rb.ratio > MAX_RATIO {
        c.error(
            &format!("{bp}.ratio"),
            format!("must be between 0 and {MAX_RATIO} (retries per request)"),
        );
    }
    if rb.window.0 < MIN_WINDOW || rb.window.0 > MAX_WINDOW {
        c.error(&format!("{bp}.window"), "must be between 1s and 60s");
    }
    let budget = (rb.enabled && u.retries > 0).then(|| {
        let config = BudgetConfig {
            ratio: if rb.ratio.is_finite() {
                rb.ratio.clamp(0.0, MAX_RATIO)
            } else {
                0.0
            },
            min_retries_per_second: rb.min_retries_per_second,
            window: rb.window.0.clamp(MIN_WINDOW, MAX_WINDOW),
        };
        Budget {
            state: registry.budget(&u.name, config.bucket_ms()),
            config,
        }
    });
    UpstreamPolicy {
        backoff,
        budget,
        stats: registry.upstream_stats(&u.name),
    }
}

/// Compiles `routes[i].timeout` (`p`: the route's YAML path).
pub fn compile_route_timeout(
    c: &mut Compiler,
    p: &str,
    name: &str,
    timeout: Option<Dur>,
    registry: &Registry,
) -> Option<RouteTimeout> {
    let t = timeout?;
    if t.0.is_zero() {
        c.error(
            &format!("{p}.timeout"),
            "must be greater than 0 (leave it out for no total timeout)",
        );
        return None;
    }
    Some(RouteTimeout {
        limit: t.0,
        stats: registry.route_stats(name),
    })
}

// ---------------------------------------------------------------------------------------------
// Per request
// ---------------------------------------------------------------------------------------------

fn expire(ctx: &mut RequestCtx) {
    if ctx.resilience.expired {
        return;
    }
    ctx.resilience.expired = true;
    if ctx.resilience.from_client {
        return;
    }
    if let Some(t) = ctx.route().and_then(|r| r.timeout.as_ref()) {
        t.stats.timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

fn deadline_passed(deadline: Instant) -> bool {
    Instant::now() + DEADLINE_SLACK >= deadline
}

/// `upstream_peer`, before a target is picked. First attempt: the deadline is set from the
/// request's arrival and the request is deposited in the upstream's budget. A retry: the
/// back-off decided with it is slept (the failed target's least_conn slot released first).
/// Either way, an attempt never starts after the deadline: 504.
pub async fn before_attempt(ctx: &mut RequestCtx) -> Result<()> {
    if ctx.attempts == 0 {
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let deadline = route.timeout.as_ref().map(|t| ctx.started + t.limit);
        if let Some(b) = ctx.upstream().and_then(|u| u.resilience.budget.as_ref()) {
            b.state.deposit(now_ms());
        }
        // A gRPC client's own deadline, when it comes first.
        let client = ctx.resilience.client_timeout.map(|t| ctx.started + t);
        ctx.resilience.from_client = client.is_some_and(|c| deadline.is_none_or(|d| c < d));
        ctx.resilience.deadline = if ctx.resilience.from_client {
            client
        } else {
            deadline
        };
    } else if !ctx.resilience.backoff.is_zero() {
        let wait = std::mem::take(&mut ctx.resilience.backoff);
        ctx.inflight = None;
        tokio::time::sleep(wait).await;
    }
    if let Some(deadline) = ctx.resilience.deadline {
        if Instant::now() >= deadline {
            expire(ctx);
            return Err(errors::status_error(
                504,
                "route timeout passed before an upstream attempt",
            ));
        }
    }
    Ok(())
}

/// `upstream_peer`: the attempt's connect, read and write timeouts never reach past the
/// deadline.
pub fn cap_timeouts(peer: &mut HttpPeer, ctx: &RequestCtx) {
    let Some(deadline) = ctx.resilience.deadline else {
        return;
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let o = &mut peer.options;
    for t in [
        &mut o.connection_timeout,
        &mut o.total_connection_timeout,
        &mut o.read_timeout,
        &mut o.write_timeout,
    ] {
        if t.is_none_or(|d| d > left) {
            *t = Some(left);
        }
    }
}

/// An attempt failed with `e`: an upstream timeout that ran into the deadline (the attempt's
/// timeouts were cut to it) expires the request.
pub fn note_error(ctx: &mut RequestCtx, e: &Error) {
    let Some(deadline) = ctx.resilience.deadline else {
        return;
    };
    let timeout = e.esource() == &ErrorSource::Upstream
        && matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
    if timeout && deadline_passed(deadline) {
        expire(ctx);
    }
}

/// The retry policy would retry: may it? Not once the deadline has passed (or the back-off
/// would end past it), not when the upstream's budget is spent. When allowed, the back-off
/// to sleep in the next `upstream_peer` is decided here and the retry is withdrawn from the
/// budget. Refusals are counted per upstream; the request keeps the failure it has (an
/// expiry is counted only where a timeout fired, in [`note_error`]).
pub fn allow_retry(ctx: &mut RequestCtx) -> bool {
    let Some(up) = ctx.upstream().cloned() else {
        return true;
    };
    let policy = &up.resilience;
    let backoff = policy
        .backoff
        .map_or(Duration::ZERO, |b| b.delay(ctx.attempts));
    if let Some(deadline) = ctx.resilience.deadline {
        if deadline_passed(deadline) || Instant::now() + backoff >= deadline {
            policy
                .stats
                .deadline_refused
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
    }
    if let Some(b) = &policy.budget {
        if !b.state.try_withdraw(&b.config, now_ms()) {
            policy.stats.budget_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    }
    if policy.backoff.is_some() {
        policy.stats.backoffs.fetch_add(1, Ordering::Relaxed);
        policy
            .stats
            .backoff_micros
            .fetch_add(backoff.as_micros() as u64, Ordering::Relaxed);
    }
    ctx.resilience.backoff = backoff;
    true
}

/// `response_body_filter`: a response still streaming when the deadline passes is ended
/// (its head is already out, so the client sees a cut body and a closed connection).
/// Upgraded connections (101) are never cut.
#[inline]
pub fn check_body(ctx: &mut RequestCtx, end_of_stream: bool) -> Result<()> {
    let Some(deadline) = ctx.resilience.deadline else {
        return Ok(());
    };
    if end_of_stream || ctx.upstream_status == Some(101) || Instant::now() < deadline {
        return Ok(());
    }
    expire(ctx);
    Err(errors::status_error(
        504,
        "route timeout passed while the response body was streaming",
    ))
}

// ---------------------------------------------------------------------------------------------
// Metrics (read at scrape time)
// ---------------------------------------------------------------------------------------------

/// Registers [`metric_families`] (read at scrape time; once, at startup).
pub fn register_metrics() {
    crate::observe::metrics::registry().on_scrape(|rt, out| {
        if let Some(rt) = rt.downcast_ref::<Runtime>() {
            out.extend(metric_families(rt));
        }
    });
}

/// `upstream_retries_skipped_total{service,reason}` (`budget`, `deadline`),
/// `upstream_retry_backoffs_total{service}`, `upstream_retry_backoff_seconds_total{service}`
/// for every upstream of `rt`, and `route_timeouts_total{route}` for every route with a
/// `timeout`. Read from the registry's atomics, so they exist from startup at 0, follow the
/// config and keep counting across reloads.
pub fn metric_families(rt: &Runtime) -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    use prometheus::{CounterVec, IntCounterVec, Opts};
    let (Ok(skipped), Ok(backoffs), Ok(backoff_secs), Ok(timeouts)) = (
        IntCounterVec::new(
            Opts::new(
                "upstream_retries_skipped_total",
                "Retries the retry policy wanted but did not make, by upstream and reason (budget: retry_budget spent; deadline: the route timeout had passed or the back-off would end past it).",
            ),
            &["service", "reason"],
        ),
        IntCounterVec::new(
            Opts::new(
                "upstream_retry_backoffs_total",
                "Retries made after a retry_backoff wait, by upstream.",
            ),
            &["service"],
        ),
        CounterVec::new(
            Opts::new(
                "upstream_retry_backoff_seconds_total",
                "Time spent waiting in retry_backoff before retries, by upstream, in seconds.",
            ),
            &["service"],
        ),
        IntCounterVec::new(
            Opts::new(
                "route_timeouts_total",
                "Requests ended by their route's total timeout (504 before the response head, or a response body cut).",
            ),
            &["route"],
        ),
    ) else {
        return Vec::new();
    };
    for u in &rt.upstreams {
        let s = &u.resilience.stats;
        let name = u.name.as_str();
        skipped
            .with_label_values(&[name, "budget"])
            .inc_by(s.budget_refused.load(Ordering::Relaxed));
        skipped
            .with_label_values(&[name, "deadline"])
            .inc_by(s.deadline_refused.load(Ordering::Relaxed));
        backoffs
            .with_label_values(&[name])
            .inc_by(s.backoffs.load(Ordering::Relaxed));
        backoff_secs
            .with_label_values(&[name])
            .inc_by(s.backoff_micros.load(Ordering::Relaxed) as f64 / 1e6);
    }
    for r in &rt.routes {
        if let Some(t) = &r.timeout {
            timeouts
                .with_label_values(&[r.name.as_str()])
                .inc_by(t.stats.timeouts.load(Ordering::Relaxed));
        }
    }
    // Gathered through a registry of their own so the series come out sorted, like the
    // main registry's; a family without series (no route has a timeout) is left out.
    let reg = prometheus::Registry::new();
    let collectors: [Box<dyn Collector>; 4] = [
        Box::new(skipped),
        Box::new(backoffs),
        Box::new(backoff_secs),
        Box::new(timeouts),
    ];
    for c in collectors {
        if reg.register(c).is_err() {
            return Vec::new();
        }
    }
    reg.gather()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::StateRegistry;
    use std::collections::HashSet;
    use std::path::Path;
    use std::sync::Arc;

    fn load(yaml: &str, states: &StateRegistry) -> Result<Runtime, String> {
        crate::config::load_str(
            yaml,
            Path::new("."),
            states,
            &crate::util::registry::Registry::default(),
            1,
        )
        .map_err(|e| e.to_string())
    }

    const BASE: &str = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9\" }]\n";

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(25));
        assert_eq!(b.ceiling(2), Duration::from_millis(50));
        assert_eq!(b.ceiling(4), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(250));
        assert_eq!(b.ceiling(500), Duration::from_millis(250));
        let draws: Vec<Duration> = (0..200).map(|_| b.delay(3)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(100)));
        let distinct: HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "full jitter spreads the waits");
    }

    #[test]
    fn defaults() {
        let states = StateRegistry::default();
        let rt = load(
            &format!("{BASE}routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n"),
            &states,
        )
        .unwrap();
        let p = &rt.upstreams[0].resilience;
        assert!(p.backoff.is_none(), "back-off is off unless configured");
        let b = p.budget.as_ref().expect("budget on by default");
        assert_eq!(b.config.ratio, 0.2);
        assert_eq!(b.config.min_retries_per_second, 10);
        assert_eq!(b.config.window, Duration::from_secs(10));
        assert!(rt.routes[0].timeout.is_none());

        let rt = load(
            &format!("{BASE}    retries: 0\n    retry_backoff: {{}}\n"),
            &states,
        )
        .unwrap();
        let p = &rt.upstreams[0].resilience;
        assert!(p.budget.is_none(), "no budget bookkeeping without retries");
        assert_eq!(
            p.backoff,
            Some(Backoff {
                base: Duration::from_millis(25),
                max: Duration::from_millis(250)
            })
        );
    }

    #[test]
    fn config_errors_name_path_and_line() {
        let s = StateRegistry::default();
        let e = load(
            &format!("{BASE}    retry_backoff: {{ base: 0, max: 1s }}\n"),
            &s,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "upstreams[0].retry_backoff.base: must be greater than 0 (line 4)"
        );
        let e = load(
            &format!("{BASE}    retry_backoff:\n      base: 100ms\n      max: 50ms\n"),
            &s,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "upstreams[0].retry_backoff.max: must not be less than base (line 6)"
        );
        let e = load(
            &format!("{BASE}    retry_budget:\n      ratio: -1\n      window: 2m\n"),
            &s,
        )
        .unwrap_err();
        assert!(
            e.contains("upstreams[0].retry_budget.ratio: must be between 0 and 10 (retries per request) (line 5)"),
            "{e}"
        );
        assert!(
            e.contains("upstreams[0].retry_budget.window: must be between 1s and 60s (line 6)"),
            "{e}"
        );
        let e = load(&format!("{BASE}    retry_budget: {{ ratioo: 1 }}\n"), &s).unwrap_err();
        assert!(
            e.starts_with("upstreams[0].retry_budget.ratioo: unknown field `ratioo`"),
            "{e}"
        );
        assert!(e.ends_with("(line 4)"), "{e}");
        let e = load(
            &format!(
                "{BASE}routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    timeout: 0\n"
            ),
            &s,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "routes[0].timeout: must be greater than 0 (leave it out for no total timeout) (line 8)"
        );
        let e = load(
            &format!("{BASE}routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    timeout: 10\n"),
            &s,
        )
        .unwrap_err();
        assert!(
            e.starts_with("routes[0].timeout: duration 10 needs a unit"),
            "{e}"
        );
        assert!(e.ends_with("(line 8)"), "{e}");
    }

    #[test]
    fn budget_state_survives_reload_by_name() {
        let states = StateRegistry::default();
        let y1 = format!(
            "{BASE}    retry_budget: {{ ratio: 0, min_retries_per_second: 1, window: 10s }}\n"
        );
        let rt1 = load(&y1, &states).unwrap();
        let b1 = rt1.upstreams[0].resilience.budget.as_ref().unwrap();
        for _ in 0..10 {
            assert!(b1.state.try_withdraw(&b1.config, now_ms()));
        }
        assert!(!b1.state.try_withdraw(&b1.config, now_ms()));
        // Same upstream, other settings (ratio, retries): the spent budget carries over.
        let y2 = format!("{BASE}    retries: 2\n    retry_budget: {{ ratio: 0, min_retries_per_second: 1, window: 10s }}\n");
        let rt2 = load(&y2, &states).unwrap();
        let b2 = rt2.upstreams[0].resilience.budget.as_ref().unwrap();
        assert!(Arc::ptr_eq(&b1.state, &b2.state));
        assert!(!b2.state.try_withdraw(&b2.config, now_ms()));
        assert!(Arc::ptr_eq(
            &rt1.upstreams[0].resilience.stats,
            &rt2.upstreams[0].resilience.stats
        ));
        // Another window means other buckets: a fresh state.
        let y3 = format!(
            "{BASE}    retry_budget: {{ ratio: 0, min_retries_per_second: 1, window: 20s }}\n"
        );
        let rt3 = load(&y3, &states).unwrap();
        let b3 = rt3.upstreams[0].resilience.budget.as_ref().unwrap();
        assert!(!Arc::ptr_eq(&b1.state, &b3.state));
        assert!(b3.state.try_withdraw(&b3.config, now_ms()));
        // A renamed upstream is forgotten once the new config is in.
        let rt4 = load(&BASE.replace("name: u", "name: v"), &states).unwrap();
        states.resilience.retain(
            rt4.upstreams.iter().map(|u| u.name.as_str()),
            rt4.routes.iter().map(|r| r.name.as_str()),
        );
        let rt5 = load(&y1, &states).unwrap();
        assert!(!Arc::ptr_eq(
            &rt1.upstreams[0].resilience.stats,
            &rt5.upstreams[0].resilience.stats
        ));
    }

    #[test]
    fn metrics_exist_at_zero() {
        let states = StateRegistry::default();
        let rt = load(
            &format!("{BASE}routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    timeout: 2s\n  - name: s\n    paths: [\"/s\"]\n    upstream: u\n"),
            &states,
        )
        .unwrap();
        rt.upstreams[0]
            .resilience
            .stats
            .budget_refused
            .fetch_add(3, Ordering::Relaxed);
        let fams = metric_families(&rt);
        let names: Vec<&str> = fams.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "route_timeouts_total",
                "upstream_retries_skipped_total",
                "upstream_retry_backoff_seconds_total",
                "upstream_retry_backoffs_total",
            ]
        );
        let skipped: Vec<&str> = fams[1]
            .get_metric()
            .iter()
            .filter_map(|m| m.get_label().iter().find(|l| l.name() == "reason"))
            .map(|l| l.value())
            .collect();
        assert_eq!(skipped, ["budget", "deadline"], "series sorted");
        let budget = fams[1]
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.value() == "budget"))
            .unwrap();
        assert_eq!(budget.get_counter().get_value(), 3.0);
        assert_eq!(fams[0].get_metric().len(), 1, "only routes with a timeout");
        let rt = load(BASE, &states).unwrap();
        let names: Vec<String> = metric_families(&rt)
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n == "route_timeouts_total"),
            "{names:?}"
        );
    }
}
