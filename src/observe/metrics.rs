//! Prometheus metrics: one registry for the process ([`Families`], from [`registry`]) into
//! which every part of the gateway registers the families it owns, as linkerd2-proxy's
//! `XMetrics::register(&mut Registry)` does: this module owns the request and upstream
//! families of the contract (`http_requests_total`, `http_request_duration_seconds`,
//! `upstream_request_duration_seconds`, `http_active_connections`, `config_reloads_total`,
//! `config_info`, retries, circuit-breaker ejections, health check results), the access-log
//! drop counter, build info, certificate expiry and the process collector;
//! features and plugins register theirs (`rate_limit_*`, `cache_*`, `forward_auth_*`, ...)
//! from their own modules, at startup (the app calls each one's `register_metrics`), and
//! families read at scrape time from state their owners keep (accept counters, target
//! health, retry budgets) through [`Families::on_scrape`]. Served as text on admin
//! `GET /metrics` ([`render`]).
//!
//! Requests are recorded in Pingora's `logging` phase (see `crate::logging`) without a
//! lock: every route gets a [`RouteMetrics`] when a config is installed (start and every
//! reload), and it caches the counter/histogram handles per (method, status) in a
//! copy-on-write vector behind an `ArcSwap`. A lookup is one atomic load and a binary search;
//! only the first request of a new (method, status) pair of a route takes the slow path
//! (`with_label_values`, a hash and a lock inside the prometheus crate). Families owned
//! elsewhere follow the same rule: handles are resolved at load, never per request.
//!
//! Labels are config names only (route, upstream as `service`, target address as written in
//! the config) and a fixed method set, so cardinality is bounded by the config. Requests that
//! match no route are recorded with `route=""` and `service=""` (an empty label value, which
//! no config name can be).

// Documented exception to the crate-wide `clippy::expect_used` deny: every `expect` in this
// module builds or registers a metric from constant names, labels and buckets, which cannot
// fail at run time (and would fail every test at startup if one were ever wrong).
#![allow(clippy::expect_used)]

use arc_swap::ArcSwap;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

/// `http_request_duration_seconds` buckets (the contract's).
pub const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// `upstream_request_duration_seconds` buckets (the contract's "0.01 … 5").
pub const UPSTREAM_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The method label: a fixed set, anything else is `OTHER` (Pingora accepts any token as a
/// method, and a label must not be client-controlled).
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Index into [`METHODS`].
#[inline]
pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => 9,
    }
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

/// Families built at scrape time from state their owner keeps (atomics, the current
/// snapshot), appended to the registered ones. The snapshot is handed over type-erased
/// (this module sits below it): an owner that reads it downcasts it.
pub type Scrape = Box<dyn Fn(&dyn Any, &mut Vec<MetricFamily>) + Send + Sync>;

/// Creates (`create`) or removes the series plugin `plugin` keeps for `route`, when a config
/// starts or stops using the plugin on that route.
pub type RouteSeries = fn(plugin: &str, route: &str, create: bool);

/// The process's one metric registry.
pub struct Families {
    registry: Registry,
    scrapes: Mutex<Vec<Scrape>>,
    route_series: Mutex<Option<RouteSeries>>,
}

static REGISTRY: Lazy<Families> = Lazy::new(|| {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    if let Err(e) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!("process metrics unavailable: {e}");
    }
    Families {
        registry,
        scrapes: Mutex::new(Vec::new()),
        route_series: Mutex::new(None),
    }
});

/// The process's metric registry.
#[inline]
pub fn registry() -> &'static Families {
    &REGISTRY
}

impl Families {
    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    /// Registers a counter family with `labels`.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
        )
    }

    /// Registers a counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(
            IntCounter::with_opts(Opts::new(name, help)).expect("valid metric definition"),
        )
    }

    /// Registers a gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::with_opts(Opts::new(name, help)).expect("valid metric definition"))
    }

    /// Registers a gauge family with `labels`.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
        )
    }

    /// Registers a histogram family with `labels` and `buckets`.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        self.register(
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid metric definition"),
        )
    }

    /// Adds families built at every scrape (call once per owner, at startup).
    pub fn on_scrape(&self, f: impl Fn(&dyn Any, &mut Vec<MetricFamily>) + Send + Sync + 'static) {
        self.scrapes.lock().push(Box::new(f));
    }

    /// Sets who creates and removes plugins' per-route series ([`install`] calls it for every
    /// (plugin, route) pair a new config adds or drops).
    pub fn on_route_plugins(&self, f: RouteSeries) {
        *self.route_series.lock() = Some(f);
    }
}

/// The families this module owns.
pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub active_connections: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub upgrade_handover_failures: IntCounter,
    pub upstream_retries: IntCounterVec,
    pub ejections: IntCounterVec,
    /// TLS handshakes with an upstream target that failed (certificate, protocol).
    pub upstream_tls_failures: IntCounterVec,
    pub health_checks: IntCounterVec,
    pub access_log_dropped: IntCounter,
    table: ArcSwap<RouteTable>,
    /// Serializes [`install`] (reloads are already one at a time; this covers tests).
    install_lock: Mutex<Option<(String, String)>>,
}

impl Metrics {
    fn new() -> Metrics {
        let r = registry();
        let request_labels = &["method", "route", "status_code", "service"];
        let config_info = {
            let v = IntGaugeVec::new(
                Opts::new(
                    "config_info",
                    "The config in use: its load version in this process and file hash (always 1).",
                ),
                &["version", "hash"],
            )
            .expect("valid metric definition");
            r.register(v)
        };
        let m = Metrics {
            requests: r.counter_vec(
                "http_requests_total",
                "Requests answered, by method, route, status code and upstream service.",
                request_labels,
            ),
            request_duration: r.histogram_vec(
                "http_request_duration_seconds",
                "Time from the request head to the end of the response, in seconds.",
                request_labels,
                REQUEST_BUCKETS,
            ),
            upstream_duration: r.histogram_vec(
                "upstream_request_duration_seconds",
                "Time from choosing an upstream target to its response head, per attempt, in seconds.",
                &["service", "status_code"],
                UPSTREAM_BUCKETS,
            ),
            active_connections: r.gauge(
                "http_active_connections",
                "Open downstream connections (HTTP/1 and HTTP/2, idle keep-alive included).",
            ),
            config_reloads: r.counter_vec(
                "config_reloads_total",
                "Config reloads (SIGHUP or POST /reload) by result.",
                &["result"],
            ),
            config_info,
            upgrade_handover_failures: r.counter(
                "upgrade_handover_failures_total",
                "Binary upgrades (SIGQUIT or SIGUSR2) whose listening-socket handover failed; the process kept serving.",
            ),
            upstream_retries: r.counter_vec(
                "upstream_retries_total",
                "Extra upstream attempts (retries) by upstream service.",
                &["service"],
            ),
            ejections: r.counter_vec(
                "circuit_breaker_ejections_total",
                "Targets ejected by the passive circuit breaker.",
                &["upstream", "target"],
            ),
            upstream_tls_failures: r.counter_vec(
                "upstream_tls_handshake_failures_total",
                "TLS handshakes with upstream targets that failed (certificate not trusted or not matching, protocol error).",
                &["upstream", "target"],
            ),
            health_checks: r.counter_vec(
                "health_check_results_total",
                "Active health check probes by upstream, target and result (success, failure).",
                &["upstream", "target", "result"],
            ),
            access_log_dropped: r.counter(
                "access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up.",
            ),
            table: ArcSwap::from_pointee(RouteTable::default()),
            install_lock: Mutex::new(None),
        };
        for result in ["success", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }
}

static METRICS: Lazy<Metrics> = Lazy::new(Metrics::new);

/// The families this module owns.
#[inline]
pub fn metrics() -> &'static Metrics {
    &METRICS
}

// ---------------------------------------------------------------------------------------------
// Per-route handles
// ---------------------------------------------------------------------------------------------

struct RequestHandles {
    requests: IntCounter,
    duration: Histogram,
}

/// Label handles of one route (and its upstream), resolved once and reused.
pub struct RouteMetrics {
    route: String,
    service: String,
    /// (method index << 16 | status) -> handles, sorted by key. Copy-on-write: readers never
    /// lock; a miss copies the vector under `grow`.
    cache: ArcSwap<Vec<(u32, RequestHandles)>>,
    grow: Mutex<()>,
    upstream: Option<Arc<UpstreamMetrics>>,
    /// The same route's handles for the other upstreams that served it (a plugin's
    /// `RequestCtx::upstream_override`), made at the first such request. Copy-on-write like
    /// `cache`; as few as the upstreams a route's rules name.
    others: ArcSwap<Vec<Arc<RouteMetrics>>>,
}

/// Label handles of one upstream.
pub struct UpstreamMetrics {
    service: String,
    retries: IntCounter,
    /// status -> `upstream_request_duration_seconds` child, sorted.
    durations: ArcSwap<Vec<(u16, Histogram)>>,
    grow: Mutex<()>,
}

impl UpstreamMetrics {
    fn new(service: &str) -> UpstreamMetrics {
        let m = metrics();
        UpstreamMetrics {
            service: service.to_string(),
            retries: m.upstream_retries.with_label_values(&[service]),
            durations: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
        }
    }

    /// One upstream response head after `secs`.
    pub fn observe(&self, status: u16, secs: f64) {
        {
            let cur = self.durations.load();
            if let Ok(i) = cur.binary_search_by_key(&status, |e| e.0) {
                cur[i].1.observe(secs);
                return;
            }
        }
        self.child(status).observe(secs);
    }

    fn child(&self, status: u16) -> Histogram {
        let _g = self.grow.lock();
        let cur = self.durations.load_full();
        if let Ok(i) = cur.binary_search_by_key(&status, |e| e.0) {
            return cur[i].1.clone();
        }
        let h = metrics()
            .upstream_duration
            .with_label_values(&[self.service.as_str(), &status.to_string()]);
        let mut next: Vec<(u16, Histogram)> = cur.iter().cloned().collect();
        next.push((status, h.clone()));
        next.sort_by_key(|e| e.0);
        self.durations.store(Arc::new(next));
        h
    }

    #[inline]
    pub fn retried(&self, n: u64) {
        self.retries.inc_by(n);
    }

    fn remove_series(&self) {
        let m = metrics();
        for (status, _) in self.durations.load().iter() {
            let _ = m
                .upstream_duration
                .remove_label_values(&[self.service.as_str(), &status.to_string()]);
        }
        let _ = m
            .upstream_retries
            .remove_label_values(&[self.service.as_str()]);
    }
}

impl RouteMetrics {
    fn new(route: &str, upstream: Option<Arc<UpstreamMetrics>>) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            service: upstream
                .as_ref()
                .map(|u| u.service.clone())
                .unwrap_or_default(),
            cache: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
            upstream,
            others: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// One finished request, counted under the upstream that served it: `served` when a
    /// plugin picked an upstream other than the route's, else the route's own series.
    #[inline]
    pub fn record_served(&self, served: Option<&str>, method: usize, status: u16, secs: f64) {
        match served {
            Some(name) if name != self.service => {
                {
                    let others = self.others.load();
                    if let Some(rm) = others.iter().find(|o| o.service == name) {
                        rm.record(method, status, secs);
                        return;
                    }
                }
                self.add_other(name);
                let others = self.others.load();
                if let Some(rm) = others.iter().find(|o| o.service == name) {
                    rm.record(method, status, secs);
                }
            }
            _ => self.record(method, status, secs),
        }
    }

    /// Drops (with their series) the handles of other upstreams for which `keep` is false.
    fn retain_others(&self, keep: impl Fn(&str) -> bool) {
        let _g = self.grow.lock();
        let cur = self.others.load_full();
        if cur.iter().all(|o| keep(&o.service)) {
            return;
        }
        let mut next = Vec::with_capacity(cur.len());
        for o in cur.iter() {
            if keep(&o.service) {
                next.push(o.clone());
            } else {
                o.remove_series();
            }
        }
        self.others.store(Arc::new(next));
    }

    /// Slow path of [`Self::record_served`]: the handles for `service` on this route.
    #[cold]
    fn add_other(&self, service: &str) {
        let _g = self.grow.lock();
        let cur = self.others.load_full();
        if cur.iter().any(|o| o.service == service) {
            return;
        }
        let mut next: Vec<Arc<RouteMetrics>> = cur.iter().cloned().collect();
        next.push(Arc::new(RouteMetrics {
            route: self.route.clone(),
            service: service.to_string(),
            cache: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
            upstream: None,
            others: ArcSwap::from_pointee(Vec::new()),
        }));
        self.others.store(Arc::new(next));
    }

    pub fn upstream(&self) -> Option<&UpstreamMetrics> {
        self.upstream.as_deref()
    }

    /// Runs `f` on the handles of the upstream that served: `chosen` when a plugin picked an
    /// upstream other than the route's (`RequestCtx::upstream_override`), else the route's.
    #[inline]
    pub fn with_upstream(&self, chosen: Option<&str>, f: impl FnOnce(&UpstreamMetrics)) {
        match chosen {
            Some(name) if name != self.service => {
                let table = metrics().table.load();
                match table.upstreams.get(name) {
                    Some(um) => f(um),
                    None => f(&UpstreamMetrics::new(name)),
                }
            }
            _ => {
                if let Some(u) = self.upstream() {
                    f(u)
                }
            }
        }
    }

    /// One finished request.
    #[inline]
    pub fn record(&self, method: usize, status: u16, secs: f64) {
        let key = ((method as u32) << 16) | status as u32;
        {
            let cur = self.cache.load();
            if let Ok(i) = cur.binary_search_by_key(&key, |e| e.0) {
                let h = &cur[i].1;
                h.requests.inc();
                h.duration.observe(secs);
                return;
            }
        }
        let (c, h) = self.child(key);
        c.inc();
        h.observe(secs);
    }

    /// The label values (method, route, status, service) of the series `key` names.
    fn with_labels<R>(&self, key: u32, f: impl FnOnce(&[&str; 4]) -> R) -> R {
        let method = METHODS
            .get((key >> 16) as usize)
            .copied()
            .unwrap_or("OTHER");
        let status = (key & 0xffff).to_string();
        f(&[
            method,
            self.route.as_str(),
            status.as_str(),
            self.service.as_str(),
        ])
    }

    fn child(&self, key: u32) -> (IntCounter, Histogram) {
        let _g = self.grow.lock();
        let cur = self.cache.load_full();
        if let Ok(i) = cur.binary_search_by_key(&key, |e| e.0) {
            return (cur[i].1.requests.clone(), cur[i].1.duration.clone());
        }
        let m = metrics();
        let (requests, duration) = self.with_labels(key, |labels| {
            (
                m.requests.with_label_values(labels),
                m.request_duration.with_label_values(labels),
            )
        });
        let mut next: Vec<(u32, RequestHandles)> = cur
            .iter()
            .map(|(k, h)| {
                (
                    *k,
                    RequestHandles {
                        requests: h.requests.clone(),
                        duration: h.duration.clone(),
                    },
                )
            })
            .collect();
        next.push((
            key,
            RequestHandles {
                requests: requests.clone(),
                duration: duration.clone(),
            },
        ));
        next.sort_by_key(|e| e.0);
        self.cache.store(Arc::new(next));
        (requests, duration)
    }

    fn remove_series(&self) {
        let m = metrics();
        for (key, _) in self.cache.load().iter() {
            self.with_labels(*key, |labels| {
                let _ = m.requests.remove_label_values(labels);
                let _ = m.request_duration.remove_label_values(labels);
            });
        }
        for o in self.others.load().iter() {
            o.remove_series();
        }
    }
}

/// What a config needs from the metrics: its routes, upstreams and targets by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// (route name, upstream name, plugin names), in `Runtime::routes` order.
    pub routes: Vec<(String, String, Vec<String>)>,
    /// (upstream name, target addrs, has active health check, has passive circuit breaker)
    pub upstreams: Vec<(String, Vec<String>, bool, bool)>,
}

/// The handles of one installed config, indexed like `Runtime::routes`.
struct RouteTable {
    /// Identity of the snapshot the indexes refer to (the `Weak` keeps the address from being
    /// reused while this table exists).
    runtime: Weak<dyn Any + Send + Sync>,
    routes: Vec<Arc<RouteMetrics>>,
    by_name: HashMap<String, Arc<RouteMetrics>>,
    upstreams: HashMap<String, Arc<UpstreamMetrics>>,
    unmatched: Option<Arc<RouteMetrics>>,
    shape: Shape,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            runtime: Weak::<()>::new(),
            routes: Vec::new(),
            by_name: HashMap::new(),
            upstreams: HashMap::new(),
            unmatched: None,
            shape: Shape::default(),
        }
    }
}

/// Builds the handles for a config (`runtime`: the snapshot's identity, `shape`: its names)
/// and creates every series the contract wants from the start; called at load and after
/// every successful reload. Series of routes, upstreams and targets that are gone are
/// removed, so `/metrics` follows the config.
pub fn install(runtime: Weak<dyn Any + Send + Sync>, shape: Shape, version: &str, hash: &str) {
    let m = metrics();
    let mut last_info = m.install_lock.lock();
    let route_series = *registry().route_series.lock();
    let old = m.table.load_full();

    let mut upstreams: HashMap<String, Arc<UpstreamMetrics>> = HashMap::new();
    for (name, _, _, _) in &shape.upstreams {
        let um = old
            .upstreams
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(UpstreamMetrics::new(name)));
        // `upstream_request_duration_seconds` exists from the start (at 0) for the usual answer.
        um.child(200);
        upstreams.insert(name.clone(), um);
    }
    let mut routes = Vec::with_capacity(shape.routes.len());
    let mut by_name = HashMap::with_capacity(shape.routes.len());
    for (name, upstream, plugins) in &shape.routes {
        let um = upstreams.get(upstream).cloned();
        let rm = match old.by_name.get(name) {
            Some(rm) if rm.service == *upstream => {
                // Served-by series of upstreams the new config no longer has go.
                rm.retain_others(|svc| upstreams.contains_key(svc));
                rm.clone()
            }
            _ => Arc::new(RouteMetrics::new(name, um)),
        };
        rm.child(((method_index(&http::Method::GET) as u32) << 16) | 200);
        // Every plugin of the route creates its series (at 0).
        if let Some(f) = route_series {
            for p in plugins {
                f(p, name, true);
            }
        }
        by_name.insert(name.clone(), rm.clone());
        routes.push(rm);
    }
    let unmatched = old
        .unmatched
        .clone()
        .unwrap_or_else(|| Arc::new(RouteMetrics::new("", None)));
    unmatched.child(((method_index(&http::Method::GET) as u32) << 16) | 404);

    for (name, targets, hc, passive) in &shape.upstreams {
        for t in targets {
            if *hc {
                for result in ["success", "failure"] {
                    m.health_checks.with_label_values(&[name, t, result]);
                }
            }
            if *passive {
                m.ejections.with_label_values(&[name, t]);
            }
        }
    }

    // Remove what the new config no longer has.
    for (name, rm) in &old.by_name {
        let kept = by_name.get(name).is_some_and(|n| Arc::ptr_eq(n, rm));
        if !kept {
            rm.remove_series();
        }
    }
    // A plugin a route no longer has removes that route's series.
    let has = |route: &str, plugin: &str| {
        shape
            .routes
            .iter()
            .any(|(r, _, ps)| r == route && ps.iter().any(|p| p == plugin))
    };
    if let Some(f) = route_series {
        for (name, _, plugins) in &old.shape.routes {
            for p in plugins.iter().filter(|p| !has(name, p)) {
                f(p, name, false);
            }
        }
    }
    for (name, um) in &old.upstreams {
        if !upstreams.contains_key(name) {
            um.remove_series();
        }
    }
    // Targets (by upstream) that keep a health check / a circuit breaker.
    let mut checked: HashSet<(&str, &str)> = HashSet::new();
    let mut breaking: HashSet<(&str, &str)> = HashSet::new();
    for (u, ts, hc, p) in &shape.upstreams {
        for t in ts {
            if *hc {
                checked.insert((u.as_str(), t.as_str()));
            }
            if *p {
                breaking.insert((u.as_str(), t.as_str()));
            }
        }
    }
    for (u, ts, hc, p) in &old.shape.upstreams {
        for t in ts {
            if *hc && !checked.contains(&(u.as_str(), t.as_str())) {
                for result in ["success", "failure"] {
                    let _ = m.health_checks.remove_label_values(&[u, t, result]);
                }
            }
            if *p && !breaking.contains(&(u.as_str(), t.as_str())) {
                let _ = m.ejections.remove_label_values(&[u, t]);
            }
        }
    }

    if let Some((v, h)) = last_info.take() {
        let _ = m.config_info.remove_label_values(&[&v, &h]);
    }
    m.config_info.with_label_values(&[version, hash]).set(1);
    *last_info = Some((version.to_string(), hash.to_string()));

    m.table.store(Arc::new(RouteTable {
        runtime,
        routes,
        by_name,
        upstreams,
        unmatched: Some(unmatched),
        shape,
    }));
}

/// The handles for route `index` of the snapshot at `snapshot` (`None`: the request matched
/// no route; `names`: a route's name and upstream name by index). One atomic load on the fast
/// path; a request still running on a replaced config looks its route up by name, or gets
/// fresh handles if the route is gone.
pub fn route_metrics<'a>(
    snapshot: *const (),
    index: Option<usize>,
    names: impl FnOnce(usize) -> Option<(&'a str, &'a str)>,
) -> Arc<RouteMetrics> {
    let table = metrics().table.load();
    let same = std::ptr::eq(table.runtime.as_ptr().cast::<()>(), snapshot);
    let Some(i) = index else {
        return table
            .unmatched
            .clone()
            .unwrap_or_else(|| Arc::new(RouteMetrics::new("", None)));
    };
    if same {
        if let Some(rm) = table.routes.get(i) {
            return rm.clone();
        }
    }
    let Some((route, upstream)) = names(i) else {
        return Arc::new(RouteMetrics::new("", None));
    };
    match table.by_name.get(route) {
        Some(rm) if rm.service == upstream => rm.clone(),
        _ => {
            let um = table
                .upstreams
                .get(upstream)
                .cloned()
                .unwrap_or_else(|| Arc::new(UpstreamMetrics::new(upstream)));
            Arc::new(RouteMetrics::new(route, Some(um)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording functions for other modules (plugins, health checks, reload)
// ---------------------------------------------------------------------------------------------

/// `config_reloads_total{result}`.
pub fn config_reload(ok: bool) {
    metrics()
        .config_reloads
        .with_label_values(&[if ok { "success" } else { "error" }])
        .inc();
}

/// `health_check_results_total{upstream,target,result}`: one active probe.
pub fn health_check_result(upstream: &str, target: &str, ok: bool) {
    metrics()
        .health_checks
        .with_label_values(&[upstream, target, if ok { "success" } else { "failure" }])
        .inc();
}

/// A discovered address left its upstream: its per-target series go with it (a name whose
/// addresses keep changing would otherwise grow `/metrics` without bound).
pub fn forget_target(upstream: &str, target: &str) {
    let m = metrics();
    for result in ["success", "failure"] {
        let _ = m
            .health_checks
            .remove_label_values(&[upstream, target, result]);
    }
    let _ = m.ejections.remove_label_values(&[upstream, target]);
    let _ = m
        .upstream_tls_failures
        .remove_label_values(&[upstream, target]);
}

/// `upstream_tls_handshake_failures_total{upstream,target}`: a handshake with a target failed.
pub fn upstream_tls_failure(upstream: &str, target: &str) {
    metrics()
        .upstream_tls_failures
        .with_label_values(&[upstream, target])
        .inc();
}

pub fn circuit_ejection(upstream: &str, target: &str) {
    metrics()
        .ejections
        .with_label_values(&[upstream, target])
        .inc();
}

/// `upgrade_handover_failures_total`: a SIGQUIT/SIGUSR2 handover failed, still serving.
pub fn upgrade_handover_failed() {
    metrics().upgrade_handover_failures.inc();
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Counts an open downstream connection in `http_active_connections` for as long as it lives:
/// [`crate::edge::EdgeGuard`] holds one for each accepted connection (Pingora has no
/// connection open/close hook in `ProxyHttp`, but `ServerApp::process_new` runs once per
/// accepted connection for its whole life, keep-alive loop and HTTP/2 streams included).
/// Decrements when the connection task ends (also when it is cancelled).
pub struct ConnectionGuard(());

impl ConnectionGuard {
    pub fn open() -> ConnectionGuard {
        metrics().active_connections.inc();
        ConnectionGuard(())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics().active_connections.dec();
    }
}

// ---------------------------------------------------------------------------------------------
// Exposition
// ---------------------------------------------------------------------------------------------

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text exposition: every registered family, plus those built at scrape time
/// from `rt` (the snapshot in use, type-erased) and from state their owners keep
/// ([`Families::on_scrape`]), sorted by name.
pub fn render(rt: &dyn Any) -> String {
    let r = registry();
    let mut families = r.registry.gather();
    for scrape in r.scrapes.lock().iter() {
        scrape(rt, &mut families);
    }
    families.extend(super::build_info::metric_families());
    families.extend(super::certs::metric_families());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!("cannot encode metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A counter family with one series and no labels, read from `value` at scrape time (the
/// owner keeps a plain atomic, incremented without the prometheus crate).
pub fn scraped_counter(name: &str, help: &str, value: u64, out: &mut Vec<MetricFamily>) {
    if let Ok(c) = IntCounter::new(name, help) {
        c.inc_by(value);
        out.extend(c.collect());
    }
}

/// One metric label's values as a const array (`$all`) and an enum of the same values in the
/// same order (`Enum as usize` indexes the array), so the index a counter is found by and
/// the label it was created with cannot drift apart.
macro_rules! label_values {
    (
        $(#[$m:meta])* $vis:vis const $all:ident;
        $(#[$em:meta])* $evis:vis enum $name:ident { $( $variant:ident = $label:literal, )* }
    ) => {
        $(#[$m])*
        $vis const $all: &[&str] = &[$( $label, )*];
        $(#[$em])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $evis enum $name {
            $( $variant, )*
        }
    };
}
pub(crate) use label_values;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(METHODS[method_index(&http::Method::GET)], "GET");
        let odd = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(METHODS[method_index(&odd)], "OTHER");
    }

    #[test]
    fn handles_are_cached_and_counted() {
        let rm = RouteMetrics::new(
            "unit-route",
            Some(Arc::new(UpstreamMetrics::new("unit-svc"))),
        );
        for _ in 0..3 {
            rm.record(0, 201, 0.002);
        }
        rm.record(2, 500, 0.3);
        let c = metrics()
            .requests
            .with_label_values(&["GET", "unit-route", "201", "unit-svc"]);
        assert_eq!(c.get(), 3);
        let h = metrics().request_duration.with_label_values(&[
            "POST",
            "unit-route",
            "500",
            "unit-svc",
        ]);
        assert_eq!(h.get_sample_count(), 1);
        assert_eq!(rm.cache.load().len(), 2);
        rm.upstream().unwrap().observe(503, 0.02);
        rm.upstream().unwrap().observe(503, 0.03);
        let u = metrics()
            .upstream_duration
            .with_label_values(&["unit-svc", "503"]);
        assert_eq!(u.get_sample_count(), 2);
    }
}
