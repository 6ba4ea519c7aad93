//! Prometheus metrics: the contract's families (`http_requests_total`,
//! `http_request_duration_seconds`, `upstream_request_duration_seconds`,
//! `http_active_connections`, `rate_limit_*`, `cache_*`, `upstream_target_healthy`,
//! `config_reloads_total`, `config_info`) plus retries, circuit-breaker ejections, health
//! check results, access-log drops and the process collector, served as text on admin
//! `GET /metrics`.
//!
//! Requests are recorded in Pingora's `logging` phase (see [`super::on_logging`]) without a
//! lock: every route gets a [`RouteMetrics`] when a config is installed (start and every
//! reload), and it caches the counter/histogram handles per (method, status) in a
//! copy-on-write vector behind an `ArcSwap`. A lookup is one atomic load and a binary search;
//! only the first request of a new (method, status) pair of a route takes the slow path
//! (`with_label_values`, a hash and a lock inside the prometheus crate).
//!
//! Labels are config names only (route, upstream as `service`, target address as written in
//! the config) and a fixed method set, so cardinality is bounded by the config. Requests that
//! match no route are recorded with `route=""` and `service=""` (an empty label value, which
//! no config name can be).

// Documented exception to the crate-wide `clippy::expect_used` deny: every `expect` in this
// module builds or registers a metric from constant names, labels and buckets, which cannot
// fail at run time (and would fail every test at startup if one were ever wrong).
#![allow(clippy::expect_used)]

use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
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

/// `cache_requests_total{status}` values (the `X-Cache-Status` values of `proxy-cache`).
pub const CACHE_STATUSES: &[&str] = &["HIT", "MISS", "STALE", "EXPIRED", "BYPASS"];
/// `response_transform_skipped_total{reason}` values.
pub const TRANSFORM_SKIP_REASONS: &[&str] = &["too_large", "invalid_json"];
/// `request_transform_bodies_total{result}` values (request-transformer `json` rules).
pub const REQUEST_BODY_RESULTS: &[&str] = &[
    "rewritten",
    "unchanged",
    "too_large",
    "invalid_json",
    "compressed",
];
/// `jwt_jwks_fetches_total{outcome}` values.
pub const JWKS_FETCH_OUTCOMES: [&str; 3] = ["success", "error", "invalid"];
/// `jwt_jwks_unknown_kid_refusals_total{reason}` values.
pub const JWKS_UNKNOWN_KID_REASONS: [&str; 3] = ["rate_limited", "timeout", "not_in_set"];
/// `response_compressed_total{encoding}` and `response_compression_*_bytes_total{encoding}`
/// values (the `Content-Encoding` tokens of `response-compression`).
pub const COMPRESSION_ENCODINGS: &[&str] = &["br", "gzip", "zstd"];
/// `rate_limit_hits_total{client_id}` for requests without a consumer.
pub const ANONYMOUS: &str = "anonymous";

/// Every metric family of the process, in one registry of our own.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub active_connections: IntGauge,
    pub rate_limit_hits: IntCounterVec,
    pub rate_limit_backend_errors: IntCounter,
    pub cache_requests: IntCounterVec,
    pub cache_size_bytes: IntGauge,
    pub cache_evictions: IntCounter,
    pub config_reloads: IntCounterVec,
    pub config_info: IntGaugeVec,
    pub upgrade_handover_failures: IntCounter,
    pub upstream_retries: IntCounterVec,
    pub ejections: IntCounterVec,
    /// TLS handshakes with an upstream target that failed (certificate, protocol).
    pub upstream_tls_failures: IntCounterVec,
    pub health_checks: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub transform_skipped: IntCounterVec,
    pub transform_refused: IntCounterVec,
    /// `opentelemetry` export (`otel_*`); the dropped reasons resolved once.
    pub otel_spans_exported: IntCounter,
    pub otel_spans_dropped_queue_full: IntCounter,
    pub otel_spans_dropped_export_failed: IntCounter,
    pub otel_export_failures: IntCounter,
    pub forward_auth_calls: IntCounterVec,
    pub forward_auth_cache_hits: IntCounterVec,
    pub forward_auth_duration: HistogramVec,
    pub request_bodies: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_keys_ignored: IntGaugeVec,
    pub jwks_unknown_kid: IntCounterVec,
    pub compressed: IntCounterVec,
    pub compression_in: IntCounterVec,
    pub compression_out: IntCounterVec,
    table: ArcSwap<RouteTable>,
    /// Serializes [`install`] (reloads are already one at a time; this covers tests).
    install_lock: Mutex<Option<(String, String)>>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!("process metrics unavailable: {e}");
        }
        let request_labels = &["method", "route", "status_code", "service"];
        let otel_dropped = counter_vec(
            &r,
            "otel_spans_dropped_total",
            "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector did not take them).",
            &["reason"],
        );
        let m = Metrics {
            requests: counter_vec(
                &r,
                "http_requests_total",
                "Requests answered, by method, route, status code and upstream service.",
                request_labels,
            ),
            request_duration: histogram_vec(
                &r,
                "http_request_duration_seconds",
                "Time from the request head to the end of the response, in seconds.",
                request_labels,
                REQUEST_BUCKETS,
            ),
            upstream_duration: histogram_vec(
                &r,
                "upstream_request_duration_seconds",
                "Time from choosing an upstream target to its response head, per attempt, in seconds.",
                &["service", "status_code"],
                UPSTREAM_BUCKETS,
            ),
            active_connections: gauge(
                &r,
                "http_active_connections",
                "Open downstream connections (HTTP/1 and HTTP/2, idle keep-alive included).",
            ),
            rate_limit_hits: counter_vec(
                &r,
                "rate_limit_hits_total",
                "Requests refused by rate-limiting, by consumer (or anonymous) and route.",
                &["client_id", "route"],
            ),
            rate_limit_backend_errors: counter(
                &r,
                "rate_limit_backend_errors_total",
                "Rate-limit backend (Redis) failures.",
            ),
            cache_requests: counter_vec(
                &r,
                "cache_requests_total",
                "proxy-cache lookups by route and X-Cache-Status.",
                &["route", "status"],
            ),
            cache_size_bytes: gauge(
                &r,
                "cache_size_bytes",
                "Bytes held by the proxy-cache memory store.",
            ),
            cache_evictions: counter(
                &r,
                "cache_evictions_total",
                "Entries evicted from the proxy-cache memory store.",
            ),
            config_reloads: counter_vec(
                &r,
                "config_reloads_total",
                "Config reloads (SIGHUP or POST /reload) by result.",
                &["result"],
            ),
            config_info: {
                let v = IntGaugeVec::new(
                    Opts::new(
                        "config_info",
                        "The config in use: its load version in this process and file hash (always 1).",
                    ),
                    &["version", "hash"],
                )
                .expect("valid metric definition");
                r.register(Box::new(v.clone()))
                    .expect("metric registered once");
                v
            },
            upgrade_handover_failures: counter(
                &r,
                "upgrade_handover_failures_total",
                "Binary upgrades (SIGQUIT or SIGUSR2) whose listening-socket handover failed; the process kept serving.",
            ),
            upstream_retries: counter_vec(
                &r,
                "upstream_retries_total",
                "Extra upstream attempts (retries) by upstream service.",
                &["service"],
            ),
            ejections: counter_vec(
                &r,
                "circuit_breaker_ejections_total",
                "Targets ejected by the passive circuit breaker.",
                &["upstream", "target"],
            ),
            upstream_tls_failures: counter_vec(
                &r,
                "upstream_tls_handshake_failures_total",
                "TLS handshakes with upstream targets that failed (certificate not trusted or not matching, protocol error).",
                &["upstream", "target"],
            ),
            health_checks: counter_vec(
                &r,
                "health_check_results_total",
                "Active health check probes by upstream, target and result (success, failure).",
                &["upstream", "target", "result"],
            ),
            access_log_dropped: counter(
                &r,
                "access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up.",
            ),
            transform_skipped: counter_vec(
                &r,
                "response_transform_skipped_total",
                "JSON bodies response-transformer passed through unmodified, by route and reason (too_large, invalid_json).",
                &["route", "reason"],
            ),
            transform_refused: counter_vec(
                &r,
                "response_transform_refused_total",
                "Upstream answers refused with 502 because their JSON body came encoded (Content-Encoding other than identity) to a route with response-transformer body rules.",
                &["route"],
            ),
            otel_spans_exported: counter(
                &r,
                "otel_spans_exported_total",
                "Spans the OTLP collector accepted (opentelemetry plugin).",
            ),
            otel_spans_dropped_queue_full: otel_dropped.with_label_values(&["queue_full"]),
            otel_spans_dropped_export_failed: otel_dropped.with_label_values(&["export_failed"]),
            otel_export_failures: counter(
                &r,
                "otel_export_failures_total",
                "OTLP export calls that failed (error, timeout or non-2xx answer).",
            ),
            forward_auth_calls: counter_vec(
                &r,
                "forward_auth_calls_total",
                "Calls to a forward-auth service by route and result (allow, deny, error: other status, connection failure or timeout).",
                &["route", "result"],
            ),
            forward_auth_cache_hits: counter_vec(
                &r,
                "forward_auth_cache_hits_total",
                "forward-auth decisions served from its cache without a call, by route and result (allow, deny).",
                &["route", "result"],
            ),
            forward_auth_duration: histogram_vec(
                &r,
                "forward_auth_call_duration_seconds",
                "Time of a call to a forward-auth service, by route, in seconds.",
                &["route"],
                UPSTREAM_BUCKETS,
            ),
            request_bodies: counter_vec(
                &r,
                "request_transform_bodies_total",
                "JSON request bodies request-transformer read, by route and result (rewritten, unchanged; refused: too_large, invalid_json, compressed).",
                &["route", "result"],
            ),
            jwks_fetches: counter_vec(
                &r,
                "jwt_jwks_fetches_total",
                "JWKS key set fetches (or file reads) by source and outcome (success, error, invalid).",
                &["source", "outcome"],
            ),
            jwks_keys: gauge_vec(
                &r,
                "jwt_jwks_keys",
                "Usable keys in the current JWKS key set, by source.",
                &["source"],
            ),
            jwks_keys_ignored: gauge_vec(
                &r,
                "jwt_jwks_keys_ignored",
                "Keys of the last JWKS document that cannot be used (other use, type, curve or alg), by source.",
                &["source"],
            ),
            jwks_unknown_kid: counter_vec(
                &r,
                "jwt_jwks_unknown_kid_refusals_total",
                "Tokens refused because the JWKS key set has no key with their kid, by source and reason (rate_limited, timeout, not_in_set).",
                &["source", "reason"],
            ),
            compressed: counter_vec(
                &r,
                "response_compressed_total",
                "Answers response-compression compressed, by route and encoding (br, gzip, zstd).",
                &["route", "encoding"],
            ),
            compression_in: counter_vec(
                &r,
                "response_compression_in_bytes_total",
                "Identity body bytes response-compression encoded, by encoding.",
                &["encoding"],
            ),
            compression_out: counter_vec(
                &r,
                "response_compression_out_bytes_total",
                "Compressed body bytes response-compression produced, by encoding.",
                &["encoding"],
            ),
            registry: r,
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

/// The process-wide metrics.
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
        }
    }

    pub fn upstream(&self) -> Option<&UpstreamMetrics> {
        self.upstream.as_deref()
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

    fn child(&self, key: u32) -> (IntCounter, Histogram) {
        let _g = self.grow.lock();
        let cur = self.cache.load_full();
        if let Ok(i) = cur.binary_search_by_key(&key, |e| e.0) {
            return (cur[i].1.requests.clone(), cur[i].1.duration.clone());
        }
        let method = METHODS
            .get((key >> 16) as usize)
            .copied()
            .unwrap_or("OTHER");
        let status = (key & 0xffff).to_string();
        let labels = [
            method,
            self.route.as_str(),
            status.as_str(),
            self.service.as_str(),
        ];
        let m = metrics();
        let requests = m.requests.with_label_values(&labels);
        let duration = m.request_duration.with_label_values(&labels);
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
            let method = METHODS
                .get((key >> 16) as usize)
                .copied()
                .unwrap_or("OTHER");
            let status = (key & 0xffff).to_string();
            let labels = [
                method,
                self.route.as_str(),
                status.as_str(),
                self.service.as_str(),
            ];
            let _ = m.requests.remove_label_values(&labels);
            let _ = m.request_duration.remove_label_values(&labels);
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

impl Shape {
    pub fn of(rt: &Runtime) -> Shape {
        Shape {
            routes: rt
                .routes
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        r.upstream.name.clone(),
                        r.plugins.names().iter().map(|s| s.to_string()).collect(),
                    )
                })
                .collect(),
            upstreams: rt
                .upstreams
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        u.targets().targets.iter().map(|t| t.addr.clone()).collect(),
                        u.health_check.is_some(),
                        u.passive.is_some(),
                    )
                })
                .collect(),
        }
    }
}

/// The handles of one installed config, indexed like `Runtime::routes`.
#[derive(Default)]
struct RouteTable {
    /// Identity of the runtime the indexes refer to (the `Weak` keeps the address from being
    /// reused while this table exists).
    runtime: Weak<Runtime>,
    routes: Vec<Arc<RouteMetrics>>,
    by_name: HashMap<String, Arc<RouteMetrics>>,
    upstreams: HashMap<String, Arc<UpstreamMetrics>>,
    unmatched: Option<Arc<RouteMetrics>>,
    shape: Shape,
}

/// Builds the handles for a config and creates every series the contract wants from the
/// start; called at load and after every successful reload. Series of routes, upstreams and
/// targets that are gone are removed, so `/metrics` follows the config.
pub fn install(rt: &Arc<Runtime>) {
    install_shape(
        Arc::downgrade(rt),
        Shape::of(rt),
        &rt.version.to_string(),
        &rt.hash,
    );
}

fn install_shape(runtime: Weak<Runtime>, shape: Shape, version: &str, hash: &str) {
    let m = metrics();
    let mut last_info = m.install_lock.lock();
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
            Some(rm) if rm.service == *upstream => rm.clone(),
            _ => Arc::new(RouteMetrics::new(name, um)),
        };
        rm.child(((method_index(&http::Method::GET) as u32) << 16) | 200);
        if plugins.iter().any(|p| p == "rate-limiting") {
            m.rate_limit_hits.with_label_values(&[ANONYMOUS, name]);
        }
        if plugins.iter().any(|p| p == "proxy-cache") {
            for s in CACHE_STATUSES {
                m.cache_requests.with_label_values(&[name.as_str(), s]);
            }
        }
        if plugins.iter().any(|p| p == "response-transformer") {
            for r in TRANSFORM_SKIP_REASONS {
                m.transform_skipped.with_label_values(&[name.as_str(), r]);
            }
            m.transform_refused.with_label_values(&[name.as_str()]);
        }
        if plugins.iter().any(|p| p == "forward-auth") {
            forward_auth_series(name, true);
        }
        if plugins.iter().any(|p| p == "request-transformer") {
            for r in REQUEST_BODY_RESULTS {
                m.request_bodies.with_label_values(&[name.as_str(), r]);
            }
        }
        if plugins.iter().any(|p| p == "response-compression") {
            for e in COMPRESSION_ENCODINGS {
                m.compressed.with_label_values(&[name.as_str(), e]);
                m.compression_in.with_label_values(&[e]);
                m.compression_out.with_label_values(&[e]);
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
    let has = |route: &str, plugin: &str| {
        shape
            .routes
            .iter()
            .any(|(r, _, ps)| r == route && ps.iter().any(|p| p == plugin))
    };
    for (name, _, plugins) in &old.shape.routes {
        if plugins.iter().any(|p| p == "rate-limiting") && !has(name, "rate-limiting") {
            let _ = m.rate_limit_hits.remove_label_values(&[ANONYMOUS, name]);
        }
        if plugins.iter().any(|p| p == "proxy-cache") && !has(name, "proxy-cache") {
            for s in CACHE_STATUSES {
                let _ = m.cache_requests.remove_label_values(&[name.as_str(), s]);
            }
        }
        if plugins.iter().any(|p| p == "response-transformer") && !has(name, "response-transformer")
        {
            for r in TRANSFORM_SKIP_REASONS {
                let _ = m.transform_skipped.remove_label_values(&[name.as_str(), r]);
            }
            let _ = m.transform_refused.remove_label_values(&[name.as_str()]);
        }
        if plugins.iter().any(|p| p == "forward-auth") && !has(name, "forward-auth") {
            forward_auth_series(name, false);
        }
        if plugins.iter().any(|p| p == "request-transformer") && !has(name, "request-transformer") {
            for r in REQUEST_BODY_RESULTS {
                let _ = m.request_bodies.remove_label_values(&[name.as_str(), r]);
            }
        }
        if plugins.iter().any(|p| p == "response-compression") && !has(name, "response-compression")
        {
            for e in COMPRESSION_ENCODINGS {
                let _ = m.compressed.remove_label_values(&[name.as_str(), e]);
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

/// The handles for route `index` of `rt` (`None`: the request matched no route). One atomic
/// load on the fast path; a request still running on a replaced config looks its route up by
/// name, or gets fresh handles if the route is gone.
pub fn route_metrics(rt: &Arc<Runtime>, index: Option<usize>) -> Arc<RouteMetrics> {
    let table = metrics().table.load();
    let same = std::ptr::eq(table.runtime.as_ptr(), Arc::as_ptr(rt));
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
    let Some(route) = rt.routes.get(i) else {
        return Arc::new(RouteMetrics::new("", None));
    };
    match table.by_name.get(&route.name) {
        Some(rm) if rm.service == route.upstream.name => rm.clone(),
        _ => {
            let um = table
                .upstreams
                .get(&route.upstream.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(UpstreamMetrics::new(&route.upstream.name)));
            Arc::new(RouteMetrics::new(&route.name, Some(um)))
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

/// Handle of `rate_limit_hits_total{client_id,route}` for a plugin to keep (`client_id`:
/// consumer name, or `None` for [`ANONYMOUS`]). Consumer names come from the config, so the
/// label stays bounded.
pub fn rate_limit_hits(route: &str, consumer: Option<&str>) -> IntCounter {
    metrics()
        .rate_limit_hits
        .with_label_values(&[consumer.unwrap_or(ANONYMOUS), route])
}

/// One request refused by rate-limiting.
pub fn rate_limit_hit(route: &str, consumer: Option<&str>) {
    rate_limit_hits(route, consumer).inc();
}

/// `response_transform_skipped_total{route,reason}`: a JSON body passed through unmodified
/// (`reason`: one of [`TRANSFORM_SKIP_REASONS`]).
pub fn transform_skipped(route: &str, reason: &str) {
    metrics()
        .transform_skipped
        .with_label_values(&[route, reason])
        .inc();
}

/// `response_transform_refused_total{route}`: an encoded body refused with 502.
pub fn transform_refused(route: &str) {
    metrics()
        .transform_refused
        .with_label_values(&[route])
        .inc();
}

/// Creates (at 0) or removes the `forward_auth_*` series of `route`.
fn forward_auth_series(route: &str, create: bool) {
    let m = metrics();
    for r in crate::plugins::forward_auth::RESULTS {
        let calls = [route, r];
        if create {
            m.forward_auth_calls.with_label_values(&calls);
        } else {
            let _ = m.forward_auth_calls.remove_label_values(&calls);
        }
        if *r != "error" {
            if create {
                m.forward_auth_cache_hits.with_label_values(&calls);
            } else {
                let _ = m.forward_auth_cache_hits.remove_label_values(&calls);
            }
        }
    }
    if create {
        m.forward_auth_duration.with_label_values(&[route]);
    } else {
        let _ = m.forward_auth_duration.remove_label_values(&[route]);
    }
}

/// `request_transform_bodies_total{route,result}`: a JSON request body request-transformer
/// read (`result`: one of [`REQUEST_BODY_RESULTS`]).
pub fn request_body_transform(route: &str, result: &str) {
    metrics()
        .request_bodies
        .with_label_values(&[route, result])
        .inc();
}

/// Handle of `response_compressed_total{route,encoding}` (`encoding`: one of
/// [`COMPRESSION_ENCODINGS`]).
pub fn compressed_responses(route: &str, encoding: &str) -> IntCounter {
    metrics().compressed.with_label_values(&[route, encoding])
}

/// Handles of `response_compression_in_bytes_total{encoding}` and
/// `response_compression_out_bytes_total{encoding}`.
pub fn compression_bytes(encoding: &str) -> (IntCounter, IntCounter) {
    let m = metrics();
    (
        m.compression_in.with_label_values(&[encoding]),
        m.compression_out.with_label_values(&[encoding]),
    )
}

/// `rate_limit_backend_errors_total`: the shared (Redis) backend failed.
pub fn rate_limit_backend_error() {
    metrics().rate_limit_backend_errors.inc();
}

/// Handle of `cache_requests_total{route,status}` (`status`: one of [`CACHE_STATUSES`]).
pub fn cache_requests(route: &str, status: &str) -> IntCounter {
    metrics().cache_requests.with_label_values(&[route, status])
}

/// One proxy-cache lookup with its `X-Cache-Status`.
pub fn cache_request(route: &str, status: &str) {
    cache_requests(route, status).inc();
}

/// `cache_size_bytes`: current bytes in the cache store.
pub fn set_cache_size_bytes(bytes: u64) {
    metrics()
        .cache_size_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// `cache_evictions_total`.
pub fn cache_evicted(entries: u64) {
    metrics().cache_evictions.inc_by(entries);
}

/// `otel_spans_exported_total`: the collector took `n` spans.
pub fn otel_spans_exported(n: u64) {
    metrics().otel_spans_exported.inc_by(n);
}

/// `otel_spans_dropped_total{reason="queue_full"}`: one span found the export queue full.
pub fn otel_spans_dropped_queue_full() {
    metrics().otel_spans_dropped_queue_full.inc();
}

/// `otel_spans_dropped_total{reason="export_failed"}`: `n` spans of a failed export.
pub fn otel_spans_dropped_export_failed(n: u64) {
    metrics().otel_spans_dropped_export_failed.inc_by(n);
}

/// `upgrade_handover_failures_total`: a SIGQUIT/SIGUSR2 handover failed, still serving.
pub fn upgrade_handover_failed() {
    metrics().upgrade_handover_failures.inc();
}

/// `otel_export_failures_total`: one failed export call.
pub fn otel_export_failure() {
    metrics().otel_export_failures.inc();
}

/// Handle of `jwt_jwks_fetches_total{source,outcome}` (`source`: a configured JWKS URL or
/// file, so the label stays bounded by the config).
pub fn jwks_fetches(source: &str, outcome: &str) -> IntCounter {
    metrics().jwks_fetches.with_label_values(&[source, outcome])
}

/// Handle of `jwt_jwks_keys{source}`.
pub fn jwks_keys(source: &str) -> IntGauge {
    metrics().jwks_keys.with_label_values(&[source])
}

/// Handle of `jwt_jwks_keys_ignored{source}`.
pub fn jwks_keys_ignored(source: &str) -> IntGauge {
    metrics().jwks_keys_ignored.with_label_values(&[source])
}

/// Handle of `jwt_jwks_unknown_kid_refusals_total{source,reason}`.
pub fn jwks_unknown_kid(source: &str, reason: &str) -> IntCounter {
    metrics()
        .jwks_unknown_kid
        .with_label_values(&[source, reason])
}

/// Removes the series of a JWKS source no config uses any more.
pub fn jwks_forget(source: &str) {
    let m = metrics();
    for o in JWKS_FETCH_OUTCOMES {
        let _ = m.jwks_fetches.remove_label_values(&[source, o]);
    }
    for r in JWKS_UNKNOWN_KID_REASONS {
        let _ = m.jwks_unknown_kid.remove_label_values(&[source, r]);
    }
    let _ = m.jwks_keys.remove_label_values(&[source]);
    let _ = m.jwks_keys_ignored.remove_label_values(&[source]);
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Decrements `http_active_connections` when the connection task ends (also when it is
/// cancelled).
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

/// Wraps a Pingora `ServerApp` (the HTTP proxy) to count open downstream connections: Pingora
/// has no connection open/close hook in `ProxyHttp`, but `ServerApp::process_new` runs once
/// per accepted connection (after the TLS handshake) for the connection's whole life,
/// keep-alive loop and HTTP/2 streams included.
pub struct CountConnections<A> {
    inner: Arc<A>,
}

impl<A> CountConnections<A> {
    pub fn new(inner: A) -> Self {
        CountConnections {
            inner: Arc::new(inner),
        }
    }
}

#[async_trait::async_trait]
impl<A> pingora::apps::ServerApp for CountConnections<A>
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let _open = ConnectionGuard::open();
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

// ---------------------------------------------------------------------------------------------
// Exposition
// ---------------------------------------------------------------------------------------------

/// `upstream_dns_*`: read from the discovery state of `rt` at scrape time, so an upstream
/// that stops using discovery leaves no series behind.
fn discovery_families(rt: &Runtime, families: &mut Vec<prometheus::proto::MetricFamily>) {
    use crate::upstream::discovery::LookupResult;
    if !rt.upstreams.iter().any(|u| u.discovery.is_some()) {
        return;
    }
    let lookups = IntCounterVec::new(
        Opts::new(
            "upstream_dns_resolutions_total",
            "DNS lookups of upstreams with discovery, by result (ok, empty: no address, error: no answer).",
        ),
        &["upstream", "result"],
    )
    .expect("valid metric definition");
    let addresses = IntGaugeVec::new(
        Opts::new(
            "upstream_dns_addresses",
            "Addresses in the last good DNS answer of an upstream with discovery (its targets).",
        ),
        &["upstream"],
    )
    .expect("valid metric definition");
    let age = prometheus::GaugeVec::new(
        Opts::new(
            "upstream_dns_answer_age_seconds",
            "Seconds since the last good DNS answer of an upstream with discovery (grows while lookups fail).",
        ),
        &["upstream"],
    )
    .expect("valid metric definition");
    for u in &rt.upstreams {
        let Some(d) = &u.discovery else {
            continue;
        };
        for r in LookupResult::ALL {
            lookups
                .with_label_values(&[u.name.as_str(), r.as_str()])
                .inc_by(d.state.count(r));
        }
        addresses
            .with_label_values(&[u.name.as_str()])
            .set(d.state.target_count() as i64);
        if let Some(a) = d.state.age_seconds() {
            age.with_label_values(&[u.name.as_str()]).set(a);
        }
    }
    families.extend(lookups.collect());
    families.extend(addresses.collect());
    families.extend(age.collect());
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text exposition: every registered family plus `upstream_target_healthy`,
/// which is read from the live target state of `rt` at scrape time (1: passes its health
/// checks or is unchecked, and the circuit breaker has not ejected it; 0 otherwise).
pub fn render(rt: &Runtime) -> String {
    let mut families = metrics().registry.gather();
    let healthy = IntGaugeVec::new(
        Opts::new(
            "upstream_target_healthy",
            "1 when the target may get traffic (healthy or unchecked, not ejected), else 0.",
        ),
        &["upstream", "target"],
    )
    .expect("valid metric definition");
    let now = crate::upstream::now_ms();
    for u in &rt.upstreams {
        for t in &u.targets().targets {
            healthy
                .with_label_values(&[u.name.as_str(), t.addr.as_str()])
                .set(i64::from(t.state.available(now)));
        }
    }
    families.extend(healthy.collect());
    discovery_families(rt, &mut families);
    // Counters kept as plain atomics by the accept path (src/edge.rs), read at scrape time.
    for (name, help, v) in [
        (
            "downstream_connections_refused_total",
            "Connections closed at accept because server.max_connections was reached.",
            &crate::edge::CONNECTIONS_REFUSED,
        ),
        (
            "downstream_header_timeouts_total",
            "Connections closed because a request head missed server.header_timeout.",
            &crate::edge::HEADER_TIMEOUTS,
        ),
        (
            "downstream_chunk_extensions_refused_total",
            "Requests refused (400, connection closed) because a chunk-size line carried an extension.",
            &crate::edge::CHUNK_EXTENSIONS,
        ),
        (
            "downstream_flood_connections_refused_total",
            "Connections closed at accept because their address was over server.flood.connections_per_ip_per_second.",
            &crate::flood::CONNECTIONS_REFUSED,
        ),
        (
            "downstream_flood_requests_refused_total",
            "Requests answered 429 because their client IP was over server.flood.requests_per_ip_per_second.",
            &crate::flood::REQUESTS_REFUSED,
        ),
        (
            "downstream_tls_handshake_failures_total",
            "TLS handshakes on server.tls listeners that failed (outside the version or cipher suite policy, bad client) or timed out.",
            &crate::tls::HANDSHAKE_FAILURES,
        ),
    ] {
        if let Ok(c) = prometheus::IntCounter::new(name, help) {
            c.inc_by(v.load(std::sync::atomic::Ordering::Relaxed));
            families.extend(c.collect());
        }
    }
    if let Ok(c) = prometheus::Counter::new(
        "rate_limit_backend_fallback_seconds_total",
        "Time during which a rate-limit Redis backend gave no answers (from a failed call to the next answered one): requests took the fault_tolerant decision.",
    ) {
        c.inc_by(crate::limits::redis::fallback_seconds());
        families.extend(c.collect());
    }
    families.extend(crate::probe::metric_families());
    families.extend(crate::resilience::metric_families(rt));
    families.extend(super::build_info::metric_families());
    families.extend(super::certs::metric_families());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!("cannot encode metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

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
