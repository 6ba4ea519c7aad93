//! `forward-auth` (request_filter, upstream_request_filter): an external authorizer, like
//! NGINX `auth_request`, Traefik ForwardAuth or an AWS Lambda authorizer. Before proxying,
//! the gateway asks an auth service (`url`) whether the request may pass.
//!
//! The auth call carries no body, only headers: the configured `request_headers` copied from
//! the client request (default `Authorization`), and what the gateway knows about the
//! request: `X-Forwarded-Method`, `X-Forwarded-Uri` (path and query), `X-Forwarded-Host`,
//! `X-Forwarded-Proto`, `X-Forwarded-For` (the client IP the gateway computed, see
//! [`crate::request::client_ip`]) and `X-Request-ID`. Its method is `method` (default GET;
//! `original` uses the client's).
//!
//! - 2xx: the request passes. The configured `upstream_headers` of the auth response are
//!   added to the request (`X-User-Id`, ...). The client's own copies of those headers are
//!   removed on every request this plugin sees, whatever the outcome, so a client can never
//!   spoof them. With `consumer_header`, that auth-response header names one of the
//!   `consumers` (by `username`): it becomes the request's consumer for `acl`,
//!   `rate-limiting` / `concurrency-limiting` with `limit_by: consumer`, the access log and
//!   `X-Consumer-Username`.
//! - 401 / 403: the client gets the contract's JSON `unauthorized` / `forbidden` with the
//!   configured `client_headers` of the auth response (default `WWW-Authenticate`).
//! - Any other status, a connection failure or a timeout: 503 `service_unavailable`. The
//!   message never names the auth service; the log names its scheme, host and path only.
//!
//! The identity headers are written into the downstream request head in `request_filter`,
//! so later plugins see them too, and set again on the upstream request in
//! `upstream_request_filter` (after Pingora removed what the client's `Connection` names).
//! Client copies are dropped in every spelling (`X_User_Id` too) by
//! [`crate::owned_headers`], the upstream_headers being identity headers of the route. In the
//! downstream head, `rate-limiting` with `limit_by: header, header_name: X-User-Id` counts
//! per user, and `proxy-cache` keys its objects on them (one user's answer never reaches
//! another).
//!
//! Decisions (allow and deny, never failures) are cached for `cache.ttl` in a bounded,
//! sharded LRU keyed by the SHA-256 of the request headers named in `cache.key` (plus the
//! method and path when asked), so credentials are never kept as map keys. The HTTP client
//! (one pooled `reqwest` client per plugin entry) and the cache are kept by the identity of
//! the entry (its place and its exact config) in the app's registry of weak references
//! ([`crate::util::registry`]): a reload that leaves the entry unchanged keeps both; a
//! changed entry starts afresh.
//!
//! The network part of the hook is boxed, so the plugin enum's request future stays small for
//! every plugin, and a cache hit neither calls nor boxes anything.

use super::{phase, BuildEnv, Hooks, Outcome, Reply};
use crate::config::compile::{Compiler, ErrorSink};
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use lru::LruCache;
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static(crate::request::REQUEST_ID_HEADER);

/// Bytes of auth-response headers copied per decision; an auth service answering with more is
/// treated as failing (it would bloat every upstream request and the cache).
const MAX_COPIED_HEADER_BYTES: usize = 16 * 1024;
/// Body bytes of an auth response read (and thrown away) so its connection can be reused;
/// beyond this the connection is dropped instead.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// Idle pooled connections to the auth service are kept this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// At most one failure warning per plugin entry in this interval (a down auth service must
/// not flood the log).
const WARN_EVERY_MS: u64 = 1000;
/// The 503 message: names no address, no URL, no upstream text.
const UNAVAILABLE: &str = "The authorization service is unavailable";

/// `forward_auth_*_total{result}` values.
pub const RESULTS: &[&str] = &["allow", "deny", "error"];

/// The `forward_auth_*` families.
struct Families {
    calls: IntCounterVec,
    cache_hits: IntCounterVec,
    duration: HistogramVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        calls: r.counter_vec(
            "forward_auth_calls_total",
            "Calls to a forward-auth service by route and result (allow, deny, error: other status, connection failure or timeout).",
            &["route", "result"],
        ),
        cache_hits: r.counter_vec(
            "forward_auth_cache_hits_total",
            "forward-auth decisions served from its cache without a call, by route and result (allow, deny).",
            &["route", "result"],
        ),
        duration: r.histogram_vec(
            "forward_auth_call_duration_seconds",
            "Time of a call to a forward-auth service, by route, in seconds.",
            &["route"],
            crate::observe::metrics::UPSTREAM_BUCKETS,
        ),
    }
});

/// Creates (at 0) or removes the `forward_auth_*` series of `route`.
fn route_series(route: &str, create: bool) {
    let f = &*FAMILIES;
    for r in RESULTS {
        let labels = [route, r];
        if create {
            f.calls.with_label_values(&labels);
        } else {
            let _ = f.calls.remove_label_values(&labels);
        }
        if *r != "error" {
            if create {
                f.cache_hits.with_label_values(&labels);
            } else {
                let _ = f.cache_hits.remove_label_values(&labels);
            }
        }
    }
    if create {
        f.duration.with_label_values(&[route]);
    } else {
        let _ = f.duration.remove_label_values(&[route]);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CacheConfig {
    ttl: Dur,
    /// Request headers whose values key the cache; `None`: the `request_headers`.
    key: Option<Vec<String>>,
    include_method: bool,
    include_path: bool,
    max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Dur::secs(300),
            key: None,
            include_method: false,
            include_path: false,
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    url: Option<String>,
    method: String,
    timeout: Dur,
    connect_timeout: Option<Dur>,
    request_headers: Vec<String>,
    upstream_headers: Vec<String>,
    client_headers: Vec<String>,
    consumer_header: Option<String>,
    run_on_preflight: bool,
    ca_file: Option<String>,
    cache: CacheConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            method: "GET".into(),
            timeout: Dur::secs(1),
            connect_timeout: None,
            request_headers: vec!["Authorization".into()],
            upstream_headers: Vec::new(),
            client_headers: vec!["WWW-Authenticate".into()],
            consumer_header: None,
            run_on_preflight: true,
            ca_file: None,
            cache: CacheConfig::default(),
        }
    }
}

/// Method of the auth call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthMethod {
    Fixed(Method),
    /// The client request's method.
    Original,
}

/// What the auth service decided (what the cache keeps).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// `upstream_headers` values of the auth response, in configured order.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// `consumer_header` value of the auth response.
        consumer: Option<Box<str>>,
    },
    Deny {
        /// 401 or 403.
        status: u16,
        /// `client_headers` values of the auth response.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// Why the auth call failed (never cached; logged without address or secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    Timeout,
    Connect,
    /// The auth service answered with a status that is neither 2xx nor 401/403.
    Status(u16),
    /// More than [`MAX_COPIED_HEADER_BYTES`] of headers to copy.
    HeadersTooLarge,
    /// The request could not be sent or the response was malformed.
    Other,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("timed out"),
            CallError::Connect => f.write_str("connection failed"),
            CallError::Status(s) => write!(f, "answered status {s}"),
            CallError::HeadersTooLarge => f.write_str("answered with too many header bytes"),
            CallError::Other => f.write_str("request failed"),
        }
    }
}

struct Entry {
    expires: Instant,
    decision: Arc<Decision>,
}

type Shard = Mutex<LruCache<[u8; 32], Entry>>;

/// Bounded LRU of decisions, sharded by the first byte of the key digest.
struct DecisionCache {
    ttl: Duration,
    shards: Vec<Shard>,
}

impl DecisionCache {
    fn new(ttl: Duration, max_entries: usize) -> Option<DecisionCache> {
        if ttl.is_zero() {
            return None;
        }
        // Small caches keep one shard, so `max_entries` is what they hold.
        let n = if max_entries >= 1024 { 8 } else { 1 };
        let per_shard = NonZeroUsize::new(max_entries.div_ceil(n))?;
        Some(DecisionCache {
            ttl,
            shards: (0..n)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        })
    }

    fn shard(&self, key: &[u8; 32]) -> Option<&Shard> {
        self.shards.get(key[0] as usize % self.shards.len().max(1))
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Arc<Decision>> {
        let mut shard = self.shard(key)?.lock();
        let fresh = shard
            .get(key)
            .map(|e| (e.expires > now).then(|| e.decision.clone()))?;
        if fresh.is_none() {
            shard.pop(key);
        }
        fresh
    }

    fn put(&self, key: [u8; 32], decision: Arc<Decision>, now: Instant) {
        if let Some(s) = self.shard(&key) {
            s.lock().put(
                key,
                Entry {
                    expires: now + self.ttl,
                    decision,
                },
            );
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// What survives a reload that leaves the plugin entry unchanged.
struct State {
    client: reqwest::Client,
    cache: Option<DecisionCache>,
    /// Last failure warning, in ms since `born`.
    last_warn_ms: AtomicU64,
    born: Instant,
}

impl State {
    /// True at most once per [`WARN_EVERY_MS`].
    fn may_warn(&self) -> bool {
        let now = self.born.elapsed().as_millis() as u64 + WARN_EVERY_MS;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Metric handles of a route entry, resolved once at load.
struct Handles {
    calls: [IntCounter; 3],
    hits: [IntCounter; 2],
    duration: Histogram,
}

impl Handles {
    fn new(route: &str) -> Handles {
        let f = &*FAMILIES;
        let call = |r: &str| f.calls.with_label_values(&[route, r]);
        let hit = |r: &str| f.cache_hits.with_label_values(&[route, r]);
        Handles {
            calls: [call("allow"), call("deny"), call("error")],
            hits: [hit("allow"), hit("deny")],
            duration: f.duration.with_label_values(&[route]),
        }
    }
}

/// What to count.
#[derive(Clone, Copy)]
enum Count {
    Call(usize, Duration),
    Hit(usize),
}

pub struct ForwardAuth {
    url: reqwest::Url,
    /// `scheme://host[:port]/path` for logs: no credentials, no query.
    target: String,
    method: AuthMethod,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    /// `consumers[].username` -> index into `Runtime::consumers` (this config's).
    consumers: HashMap<String, usize>,
    run_on_preflight: bool,
    key_headers: Vec<HeaderName>,
    key_method: bool,
    key_path: bool,
    state: Arc<State>,
    /// Name of the route of a route entry (`None`: a global entry, which labels by the
    /// request's route).
    route: Option<Box<str>>,
    /// A route entry's metric handles, resolved at its first request (not at load, so a config
    /// that fails to load leaves no series behind).
    handles: OnceCell<Handles>,
}

impl fmt::Debug for ForwardAuth {
    // The URL may carry a secret in its query: only the redacted target is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("target", &self.target)
            .field("method", &self.method)
            .field("request_headers", &self.request_headers)
            .field("upstream_headers", &self.upstream_headers)
            .field("client_headers", &self.client_headers)
            .field("consumer_header", &self.consumer_header)
            .field("run_on_preflight", &self.run_on_preflight)
            .field("cached", &self.state.cache.as_ref().map(DecisionCache::len))
            .finish()
    }
}

/// Connection-level headers and the ones the HTTP layer computes: never copied either way.
fn framing(h: &HeaderName) -> bool {
    *h == CONNECTION
        || *h == TRANSFER_ENCODING
        || *h == CONTENT_LENGTH
        || *h == TE
        || *h == TRAILER
        || *h == UPGRADE
        || *h == HOST
        || matches!(h.as_str(), "keep-alive" | "proxy-connection" | "expect")
}

/// Headers the gateway sets on the auth call itself.
fn set_on_call(h: &HeaderName) -> bool {
    [
        &X_FORWARDED_METHOD,
        &X_FORWARDED_URI,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_FOR,
        &X_REQUEST_ID,
    ]
    .contains(&h)
}

/// Headers the gateway sets (or strips) on the upstream request after the plugins ran
/// (`forward::rewrite_request`): a copy from the auth service would be lost or wrong. Any
/// spelling counts (`X_Real_IP` is `X-Real-IP` to a CGI-style upstream).
fn set_upstream(h: &HeaderName) -> bool {
    let n = h.as_str().as_bytes();
    crate::owned_headers::IDENTITY
        .iter()
        .chain(&["x-forwarded-for", "x-forwarded-proto"])
        .any(|o| crate::owned_headers::same_name(n, o.as_bytes()))
}

use super::cors::is_cors_preflight;

/// Parses a list of header names, reporting each bad or refused one at its own path.
fn header_list(
    s: &mut ErrorSink,
    path: &str,
    names: &[String],
    refuse: &dyn Fn(&HeaderName) -> Option<&'static str>,
) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => {
                if let Some(why) = refuse(&h) {
                    s.error(&p, format!("{n:?} {why}"));
                } else if !out.contains(&h) {
                    out.push(h);
                }
            }
            Err(_) => s.error(&p, format!("invalid header name {n:?}")),
        }
    }
    out
}

/// `scheme://host[:port]/path` of `url`.
fn redacted(url: &reqwest::Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(url.path());
    s
}

impl ForwardAuth {
    fn count(&self, ctx: &RequestCtx, what: Count) {
        if let Some(route) = &self.route {
            let h = self.handles.get_or_init(|| Handles::new(route));
            match what {
                Count::Call(i, took) => {
                    if let Some(c) = h.calls.get(i) {
                        c.inc();
                    }
                    h.duration.observe(took.as_secs_f64());
                }
                Count::Hit(i) => {
                    if let Some(c) = h.hits.get(i) {
                        c.inc();
                    }
                }
            }
            return;
        }
        // A global entry serves many routes: label by the request's.
        let route = ctx.route().map_or("", |r| r.name.as_str());
        let f = &*FAMILIES;
        match what {
            Count::Call(i, took) => {
                let r = RESULTS.get(i).copied().unwrap_or("error");
                f.calls.with_label_values(&[route, r]).inc();
                f.duration
                    .with_label_values(&[route])
                    .observe(took.as_secs_f64());
            }
            Count::Hit(i) => {
                let r = RESULTS.get(i).copied().unwrap_or("allow");
                f.cache_hits.with_label_values(&[route, r]).inc();
            }
        }
    }

    /// SHA-256 of the cache key material: each `cache.key` header (every value, length
    /// prefixed; absent and empty differ), then the method and path+query when configured.
    fn cache_key(&self, req: &RequestHeader) -> [u8; 32] {
        let mut h = Sha256::new();
        for name in &self.key_headers {
            let values = req.headers.get_all(name);
            h.update((values.iter().count() as u32).to_le_bytes());
            for v in values {
                h.update((v.len() as u32).to_le_bytes());
                h.update(v.as_bytes());
            }
        }
        if self.key_method {
            let m = req.method.as_str();
            h.update((m.len() as u32).to_le_bytes());
            h.update(m.as_bytes());
        }
        if self.key_path {
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            h.update((pq.len() as u32).to_le_bytes());
            h.update(pq.as_bytes());
        }
        h.finalize().into()
    }

    /// The hook without a session (unit tests call it directly). `tls`: the client connection
    /// is HTTPS.
    pub async fn authorize(
        &self,
        req: &mut RequestHeader,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Outcome {
        // Whatever happens next, the client's own copies never go upstream.
        for name in &self.upstream_headers {
            req.remove_header(name);
        }
        if !self.run_on_preflight && is_cors_preflight(req) {
            return Outcome::Continue;
        }
        let now = Instant::now();
        let key = self.state.cache.as_ref().map(|_| self.cache_key(req));
        let cached = match (&self.state.cache, &key) {
            (Some(cache), Some(k)) => cache.get(k, now),
            _ => None,
        };
        let decision = match cached {
            Some(d) => {
                self.count(
                    ctx,
                    Count::Hit(usize::from(!matches!(*d, Decision::Allow { .. }))),
                );
                d
            }
            None => {
                let started = Instant::now();
                let res = Box::pin(self.call(req, tls, ctx)).await;
                let took = started.elapsed();
                match res {
                    Ok(d) => {
                        let d = Arc::new(d);
                        let i = usize::from(!matches!(*d, Decision::Allow { .. }));
                        self.count(ctx, Count::Call(i, took));
                        if let (Some(cache), Some(k)) = (&self.state.cache, key) {
                            cache.put(k, d.clone(), Instant::now());
                        }
                        d
                    }
                    Err(e) => {
                        self.count(ctx, Count::Call(2, took));
                        if self.state.may_warn() {
                            tracing::warn!(
                                route = ctx.route().map_or("", |r| r.name.as_str()),
                                request_id = %ctx.request_id,
                                auth_service = %self.target,
                                "forward-auth: the auth service {e}; answering 503"
                            );
                        } else {
                            tracing::debug!(request_id = %ctx.request_id, "forward-auth: the auth service {e}");
                        }
                        return Outcome::Respond(Reply::error_with(
                            503,
                            "service_unavailable",
                            UNAVAILABLE,
                        ));
                    }
                }
            }
        };
        match &*decision {
            Decision::Allow { headers, consumer } => {
                for (n, v) in headers {
                    if req.append_header(n.clone(), v.clone()).is_err() {
                        return Outcome::Respond(Reply::error(500));
                    }
                }
                ctx.plugins.forward_auth = Some(decision.clone());
                if let Some(i) = consumer
                    .as_deref()
                    .and_then(|name| self.consumers.get(name))
                {
                    ctx.consumer = Some(*i);
                }
                Outcome::Continue
            }
            Decision::Deny { status, headers } => {
                let mut reply = Reply::error(*status);
                reply.headers.extend(headers.iter().cloned());
                Outcome::Respond(reply)
            }
        }
    }

    /// The headers of the auth call.
    fn call_headers(&self, req: &RequestHeader, tls: bool, ctx: &RequestCtx) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.request_headers.len() + 6);
        for name in &self.request_headers {
            for v in req.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(req.method.as_str()) {
            h.insert(X_FORWARDED_METHOD, v);
        }
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = HeaderValue::from_str(pq) {
            h.insert(X_FORWARDED_URI, v);
        }
        let host = req.headers.get(HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(v) = host {
            h.insert(X_FORWARDED_HOST, v);
        }
        // Behind a trusted proxy its X-Forwarded-Proto stands (as upstream, see forward.rs).
        let proto = crate::request::forwarded_proto(&req.headers)
            .filter(|_| ctx.peer_trusted)
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .unwrap_or(HeaderValue::from_static(if tls { "https" } else { "http" }));
        h.insert(X_FORWARDED_PROTO, proto);
        if let Some(ip) = ctx.client_ip {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            h.insert(X_REQUEST_ID, v);
        }
        h
    }

    /// One call to the auth service.
    async fn call(
        &self,
        req: &RequestHeader,
        tls: bool,
        ctx: &RequestCtx,
    ) -> Result<Decision, CallError> {
        let method = match &self.method {
            AuthMethod::Fixed(m) => m.clone(),
            AuthMethod::Original => req.method.clone(),
        };
        let headers = self.call_headers(req, tls, ctx);
        let mut resp = self
            .state
            .client
            .request(method, self.url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    CallError::Timeout
                } else if e.is_connect() {
                    CallError::Connect
                } else {
                    CallError::Other
                }
            })?;
        let status = resp.status().as_u16();
        let pick = |names: &[HeaderName]| -> Result<Vec<(HeaderName, HeaderValue)>, CallError> {
            let mut out = Vec::new();
            let mut bytes = 0;
            for n in names {
                for v in resp.headers().get_all(n) {
                    bytes += n.as_str().len() + v.len();
                    if bytes > MAX_COPIED_HEADER_BYTES {
                        return Err(CallError::HeadersTooLarge);
                    }
                    out.push((n.clone(), v.clone()));
                }
            }
            Ok(out)
        };
        let decision = match status {
            200..=299 => Decision::Allow {
                headers: pick(&self.upstream_headers)?,
                consumer: self
                    .consumer_header
                    .as_ref()
                    .and_then(|h| resp.headers().get(h))
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.trim().into()),
            },
            401 | 403 => Decision::Deny {
                status,
                headers: pick(&self.client_headers)?,
            },
            s => return Err(CallError::Status(s)),
        };
        // Read the (ignored) body so the connection goes back to the pool; a large or slow one
        // is cut (the connection is then dropped), still within the client's timeout.
        let mut drained = 0;
        while let Ok(Some(chunk)) = resp.chunk().await {
            drained += chunk.len();
            if drained > MAX_DRAIN_BYTES {
                break;
            }
        }
        Ok(decision)
    }
}

impl Hooks for ForwardAuth {
    /// The allow decision (its `upstream_headers` values), set again upstream.
    type State = Option<Arc<Decision>>;
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;

    fn build(
        c: &mut Compiler,
        path: &str,
        config: Option<&serde_yaml::Value>,
        env: &BuildEnv,
    ) -> Option<Self> {
        let cfg: Config = c.plugin_config(path, config)?;
        let cp = format!("{path}.config");
        let mut s = ErrorSink { c, failed: false };

        // url: parsed once; the value itself never goes into an error (it may hold a secret).
        let url = match cfg.url.as_deref().map(reqwest::Url::parse) {
            None => {
                s.error(
                    &format!("{cp}.url"),
                    "is required (the auth service's http:// or https:// URL)",
                );
                None
            }
            Some(Err(e)) => {
                s.error(&format!("{cp}.url"), format!("is not a valid URL: {e}"));
                None
            }
            Some(Ok(u)) => {
                let why = if !matches!(u.scheme(), "http" | "https") {
                    Some("must be an http:// or https:// URL")
                } else if u.host_str().is_none_or(str::is_empty) {
                    Some("needs a host")
                } else if !u.username().is_empty() || u.password().is_some() {
                    Some("must not carry credentials (user:password@); the client's request_headers are sent instead")
                } else if u.fragment().is_some() {
                    Some("must not have a #fragment")
                } else {
                    None
                };
                match why {
                    Some(w) => {
                        s.error(&format!("{cp}.url"), w);
                        None
                    }
                    None => Some(u),
                }
            }
        };

        let method = if cfg.method.eq_ignore_ascii_case("original") {
            AuthMethod::Original
        } else {
            match Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => AuthMethod::Fixed(m),
                Err(_) => {
                    s.error(
                        &format!("{cp}.method"),
                        format!(
                            "invalid method {:?} (a method such as GET, or original)",
                            cfg.method
                        ),
                    );
                    AuthMethod::Fixed(Method::GET)
                }
            }
        };

        let timeout = cfg.timeout.0;
        if timeout.is_zero() {
            s.error(&format!("{cp}.timeout"), "must be greater than 0");
        }
        let connect_timeout = match cfg.connect_timeout {
            None => timeout,
            Some(Dur(d)) => {
                if d.is_zero() {
                    s.error(&format!("{cp}.connect_timeout"), "must be greater than 0");
                } else if d > timeout {
                    s.error(
                        &format!("{cp}.connect_timeout"),
                        "must not be longer than timeout (the whole call)",
                    );
                }
                d
            }
        };

        let request_headers = header_list(
            &mut s,
            &format!("{cp}.request_headers"),
            &cfg.request_headers,
            &|h| {
                if framing(h) {
                    Some("is a connection header and is never copied")
                } else if set_on_call(h) {
                    Some("is set by the gateway on the auth call")
                } else {
                    None
                }
            },
        );
        let upstream_headers = header_list(
            &mut s,
            &format!("{cp}.upstream_headers"),
            &cfg.upstream_headers,
            &|h| {
                if framing(h) || *h == CONTENT_TYPE {
                    Some("is a connection or body header and is never copied")
                } else if set_upstream(h) {
                    Some("is set by the gateway on the upstream request")
                } else {
                    // Authorization and Cookie are allowed: an auth service may swap the
                    // client's credential for an internal one (token exchange).
                    None
                }
            },
        );
        for (i, h) in cfg.upstream_headers.iter().enumerate() {
            if let Ok(n) = HeaderName::from_bytes(h.as_bytes()) {
                if request_headers.contains(&n) {
                    s.error(
                        &format!("{cp}.upstream_headers[{i}]"),
                        format!("{h:?} is also in request_headers: the client's value would be sent to the auth service, then replaced"),
                    );
                }
            }
        }
        let client_headers = header_list(
            &mut s,
            &format!("{cp}.client_headers"),
            &cfg.client_headers,
            &|h| {
                (framing(h) || *h == CONTENT_TYPE)
                    .then_some("is a connection or body header and is never copied")
            },
        );
        let consumer_header = cfg.consumer_header.as_ref().and_then(|n| {
            let h = HeaderName::from_bytes(n.as_bytes()).ok();
            if h.is_none() {
                s.error(
                    &format!("{cp}.consumer_header"),
                    format!("invalid header name {n:?}"),
                );
            }
            h
        });

        let cache_cfg = &cfg.cache;
        let key_headers = match &cache_cfg.key {
            None => request_headers.clone(),
            Some(k) => header_list(&mut s, &format!("{cp}.cache.key"), k, &|_| None),
        };
        if !cache_cfg.ttl.0.is_zero() {
            if cache_cfg.max_entries == 0 {
                s.error(
                    &format!("{cp}.cache.max_entries"),
                    "must be at least 1 (cache.ttl: 0s switches the cache off)",
                );
            }
            if key_headers.is_empty() {
                s.error(
                    &format!("{cp}.cache.key"),
                    "needs at least one header: without one every client would share one cached decision (cache.ttl: 0s switches the cache off)",
                );
            }
            // A header the auth service sees but the cache key ignores would let two clients
            // that differ only in it share a decision.
            for (i, n) in cfg.request_headers.iter().enumerate() {
                if let Ok(h) = HeaderName::from_bytes(n.as_bytes()) {
                    if !key_headers.is_empty()
                        && !key_headers.contains(&h)
                        && !set_on_call(&h)
                        && !framing(&h)
                    {
                        s.error(
                            &format!("{cp}.request_headers[{i}]"),
                            format!("{n:?} is sent to the auth service but is not in cache.key: clients that differ only in it would share a cached decision (add it to cache.key, or set cache.ttl: 0s)"),
                        );
                    }
                }
            }
        }

        let ca = cfg.ca_file.as_ref().and_then(|f| {
            let p = s.c.file(f);
            let certs = std::fs::read(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
                .and_then(|pem| {
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|_| format!("{} holds no valid PEM certificate", p.display()))?;
                    if certs.is_empty() {
                        return Err(format!("{} holds no PEM certificate", p.display()));
                    }
                    // The file's content is part of the entry's identity (a renewed CA gets
                    // a new client on reload).
                    Ok((certs, hex::encode(Sha256::digest(&pem))))
                });
            match certs {
                Ok(v) => Some(v),
                Err(e) => {
                    s.error(&format!("{cp}.ca_file"), e);
                    None
                }
            }
        });

        if s.failed {
            return None;
        }
        let url = url?;

        // Identity: where the entry is and exactly what it says. Only a digest is kept.
        let text = config
            .map(|v| serde_yaml::to_string(v).unwrap_or_default())
            .unwrap_or_default();
        let (ca, ca_digest) = match ca {
            Some((certs, digest)) => (Some(certs), digest),
            None => (None, String::new()),
        };
        let id =
            crate::limits::identity(&["forward-auth", env.route.unwrap_or(""), &text, &ca_digest]);
        // Kept by identity in the app's registry: weak, so a state dies with the last runtime
        // using it.
        let state = env
            .registry
            .try_get_or_insert_with(&id, || -> Result<State, String> {
                let mut b = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(connect_timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    // The auth service is reached directly: HTTP(S)_PROXY of the environment
                    // must not reroute credentials.
                    .no_proxy()
                    .tcp_nodelay(true)
                    .pool_idle_timeout(POOL_IDLE)
                    .user_agent(concat!(
                        "gatehouse/",
                        env!("CARGO_PKG_VERSION"),
                        " forward-auth"
                    ));
                for cert in ca.into_iter().flatten() {
                    b = b.add_root_certificate(cert);
                }
                let client = b
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
                Ok(State {
                    client,
                    cache: DecisionCache::new(cache_cfg.ttl.0, cache_cfg.max_entries),
                    last_warn_ms: AtomicU64::new(0),
                    born: Instant::now(),
                })
            });
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                s.error(&cp, e);
                return None;
            }
        };
        let consumers = if consumer_header.is_some() {
            env.consumer_index()
        } else {
            HashMap::new()
        };
        Some(ForwardAuth {
            target: redacted(&url),
            url,
            method,
            request_headers,
            upstream_headers,
            client_headers,
            consumer_header,
            consumers,
            run_on_preflight: cfg.run_on_preflight,
            key_headers,
            key_method: cache_cfg.include_method,
            key_path: cache_cfg.include_path,
            state,
            route: env.route.map(Box::from),
            handles: OnceCell::new(),
        })
    }
    /// `request_filter`.
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        self.authorize(session.req_header_mut(), tls, ctx).await
    }
    /// The `upstream_headers` names: identity headers of the route ([`crate::owned_headers`]).
    fn identity_headers(&self) -> &[HeaderName] {
        &self.upstream_headers
    }
    /// `upstream_request_filter`: the identity headers of the auth answer, set again here
    /// because Pingora removes the headers a client's `Connection` names between
    /// `request_filter` and this phase; and the consumer named by `consumer_header`, if any.
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        for name in &self.upstream_headers {
            req.remove_header(name);
        }
        if let Some(Decision::Allow { headers, .. }) = ctx.plugins.forward_auth.as_deref() {
            for (n, v) in headers {
                req.append_header(n.clone(), v.clone())?;
            }
        }
        if self.consumer_header.is_some() {
            super::send_consumer(req, ctx)?;
        }
        Ok(())
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// The `forward_auth_*` series of `route` exist from the start (at 0).
    fn route_series(route: &str, create: bool) {
        route_series(route, create);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::plugins::Plugin;
    use crate::runtime::Runtime;
    use crate::upstream::StateRegistry;
    use crate::util::registry::Registry;
    use std::path::Path;

    /// A config whose forward-auth `config:` lines start at line 12.
    fn yaml(route: &str, config_lines: &str) -> String {
        let mut y = format!(
            "server: {{ listen: [\"127.0.0.1:18080\"] }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: {route}\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: forward-auth\n        config:\n"
        );
        for l in config_lines.lines() {
            y.push_str("          ");
            y.push_str(l);
            y.push('\n');
        }
        y.push_str("consumers:\n  - { username: alice, roles: [reader] }\n");
        y
    }

    fn load(y: &str) -> Result<Arc<Runtime>, config::ConfigErrors> {
        load_in(&Registry::default(), y)
    }

    /// [`load`] with the state that survives reloads in `reg`.
    fn load_in(reg: &Registry, y: &str) -> Result<Arc<Runtime>, config::ConfigErrors> {
        config::load_str(y, Path::new("."), &StateRegistry::default(), reg, 1).map(Arc::new)
    }

    fn plugin(rt: &Runtime) -> &ForwardAuth {
        rt.routes
            .first()
            .and_then(|r| {
                r.plugins.plugins.iter().find_map(|p| match &**p {
                    Plugin::ForwardAuth(f) => Some(f),
                    _ => None,
                })
            })
            .expect("forward-auth on the first route")
    }

    /// The one error of `config_lines`: (path, line, message).
    fn error(config_lines: &str) -> (String, Option<usize>, String) {
        let errs = load(&yaml("r", config_lines)).expect_err("config must be refused");
        assert_eq!(errs.0.len(), 1, "exactly one error: {errs:?}");
        let e = &errs.0[0];
        (e.path.clone(), e.line, e.message.clone())
    }

    const P: &str = "routes[0].plugins[0].config";

    #[test]
    fn config_errors_name_path_and_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("url: ftp://auth.local/check", "url", 12, "http:// or https://"),
            ("method: GET", "url", 11, "is required"),
            ("url: http://a/\nmethod: \"NOT A METHOD\"", "method", 13, "invalid method"),
            ("url: http://a/\ntimeout: 0s", "timeout", 13, "greater than 0"),
            ("url: http://a/\ntimeout: 5x", "timeout", 13, "unknown unit"),
            (
                "url: http://a/\ntimeout: 500ms\nconnect_timeout: 1s",
                "connect_timeout",
                14,
                "longer than timeout",
            ),
            (
                "url: http://a/\nrequest_headers: [Authorization, Host]",
                "request_headers[1]",
                13,
                "connection header",
            ),
            (
                "url: http://a/\nrequest_headers:\n  - Authorization\n  - X-Forwarded-Uri",
                "request_headers[1]",
                15,
                "set by the gateway on the auth call",
            ),
            (
                "url: http://a/\nrequest_headers: [\"bad header\"]\ncache: { ttl: 0s }",
                "request_headers[0]",
                13,
                "invalid header name",
            ),
            (
                "url: http://a/\nupstream_headers: [X-User-Id, X-Consumer-Username]",
                "upstream_headers[1]",
                13,
                "set by the gateway on the upstream request",
            ),
            (
                "url: http://a/\nupstream_headers: [Content-Length]",
                "upstream_headers[0]",
                13,
                "never copied",
            ),
            (
                "url: http://a/\nupstream_headers: [Authorization]",
                "upstream_headers[0]",
                13,
                "also in request_headers",
            ),
            (
                "url: http://a/\nclient_headers: [Content-Type]",
                "client_headers[0]",
                13,
                "never copied",
            ),
            (
                "url: http://a/\nrequest_headers: [Authorization, Cookie]\ncache:\n  key: [Authorization]",
                "request_headers[1]",
                13,
                "not in cache.key",
            ),
            (
                "url: http://a/\ncache:\n  max_entries: 0",
                "cache.max_entries",
                14,
                "at least 1",
            ),
            (
                "url: http://a/\ncache: { key: [] }",
                "cache.key",
                13,
                "at least one header",
            ),
            ("url: http://a/\ncache: { ttl: 5m, size: 3 }", "cache.size", 13, "unknown field"),
            ("url: http://a/\nbogus: 1", "bogus", 13, "unknown field"),
            (
                "url: http://a/\nca_file: /nonexistent/gatehouse-ca.pem",
                "ca_file",
                13,
                "cannot read",
            ),
        ];
        for (text, path, line, msg) in cases {
            let (p, l, m) = error(text);
            assert_eq!(p, format!("{P}.{path}"), "{text}");
            assert_eq!(l, Some(*line), "{text}: {m}");
            assert!(m.contains(msg), "{text}: {m}");
        }
    }

    #[test]
    fn url_credentials_refused_without_echo() {
        let (p, l, m) = error("url: \"http://svc:hunter2-secret@auth.local/check\"");
        assert_eq!(p, format!("{P}.url"));
        assert_eq!(l, Some(12));
        assert!(m.contains("credentials"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn defaults_and_debug_redaction() {
        let rt = load(&yaml(
            "r",
            "url: \"http://auth.local:9000/check?token=q-secret\"",
        ))
        .expect("valid config");
        let p = plugin(&rt);
        assert_eq!(p.method, AuthMethod::Fixed(Method::GET));
        assert_eq!(p.request_headers, vec![http::header::AUTHORIZATION]);
        assert_eq!(p.key_headers, p.request_headers);
        assert_eq!(p.client_headers, vec![http::header::WWW_AUTHENTICATE]);
        assert!(p.upstream_headers.is_empty());
        assert!(p.run_on_preflight);
        assert_eq!(p.target, "http://auth.local:9000/check");
        let cache = p.state.cache.as_ref().expect("cache on by default");
        assert_eq!(cache.ttl, Duration::from_secs(300));
        let dbg = format!("{:?}", rt);
        assert!(!dbg.contains("q-secret"), "{dbg}");

        // `original`, cache off (an empty key is fine then), a key wider than the headers.
        let rt = load(&yaml(
            "r",
            "url: https://auth.local/\nmethod: original\ncache: { ttl: 0s, key: [] }",
        ))
        .expect("valid");
        assert_eq!(plugin(&rt).method, AuthMethod::Original);
        assert!(plugin(&rt).state.cache.is_none());
        let rt = load(&yaml(
            "r",
            "url: http://a/\nrequest_headers: [Cookie]\ncache: { key: [Cookie, X-Tenant] }",
        ))
        .expect("valid");
        assert_eq!(plugin(&rt).key_headers.len(), 2);
    }

    #[test]
    fn state_survives_an_identical_entry_only() {
        let reg = Registry::default();
        let a = load_in(&reg, &yaml("keep-r", "url: http://keep.local/a")).expect("valid");
        let b = load_in(&reg, &yaml("keep-r", "url: http://keep.local/a")).expect("valid");
        assert!(Arc::ptr_eq(&plugin(&a).state, &plugin(&b).state));
        let other_cfg = load_in(&reg, &yaml("keep-r", "url: http://keep.local/b")).expect("valid");
        assert!(!Arc::ptr_eq(&plugin(&a).state, &plugin(&other_cfg).state));
        let other_route =
            load_in(&reg, &yaml("keep-s", "url: http://keep.local/a")).expect("valid");
        assert!(!Arc::ptr_eq(&plugin(&a).state, &plugin(&other_route).state));
        // Once no runtime holds it, the state goes.
        let weak = Arc::downgrade(&plugin(&a).state);
        drop((a, b));
        assert!(weak.upgrade().is_none());
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).expect("head");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn cache_key_material() {
        let rt = load(&yaml(
            "r",
            "url: http://ck.local/\nrequest_headers: [Authorization, Cookie]",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let k = |r: &RequestHeader| p.cache_key(r);
        let a = req("GET", "/x", &[("authorization", "Bearer a")]);
        assert_eq!(
            k(&a),
            k(&req("POST", "/y?z", &[("authorization", "Bearer a")]))
        );
        assert_ne!(
            k(&a),
            k(&req("GET", "/x", &[("authorization", "Bearer b")]))
        );
        // Absent and empty differ; a value moved between headers differs.
        assert_ne!(
            k(&req("GET", "/", &[])),
            k(&req("GET", "/", &[("authorization", "")]))
        );
        assert_ne!(
            k(&req("GET", "/", &[("authorization", "x")])),
            k(&req("GET", "/", &[("cookie", "x")]))
        );
        // Two values are not one joined value.
        assert_ne!(
            k(&req("GET", "/", &[("cookie", "a"), ("cookie", "b")])),
            k(&req("GET", "/", &[("cookie", "ab")]))
        );

        let rt = load(&yaml(
            "r",
            "url: http://ck2.local/\ncache: { include_method: true, include_path: true }",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let h = [("authorization", "Bearer a")];
        let base = p.cache_key(&req("GET", "/x?1", &h));
        assert_ne!(base, p.cache_key(&req("POST", "/x?1", &h)));
        assert_ne!(base, p.cache_key(&req("GET", "/x?2", &h)));
        assert_eq!(base, p.cache_key(&req("GET", "/x?1", &h)));
    }

    #[test]
    fn decision_cache_expires_and_is_bounded() {
        let c = DecisionCache::new(Duration::from_secs(10), 2).expect("cache");
        let allow = || {
            Arc::new(Decision::Allow {
                headers: Vec::new(),
                consumer: None,
            })
        };
        let t0 = Instant::now();
        c.put([1; 32], allow(), t0);
        assert!(c.get(&[1; 32], t0 + Duration::from_secs(9)).is_some());
        assert!(c.get(&[1; 32], t0 + Duration::from_secs(10)).is_none());
        assert_eq!(c.len(), 0, "an expired entry is dropped when found");
        for i in 0..5u8 {
            c.put([i; 32], allow(), t0);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&[4; 32], t0).is_some() && c.get(&[0; 32], t0).is_none());
        assert!(DecisionCache::new(Duration::ZERO, 10).is_none());
        let big = DecisionCache::new(Duration::from_secs(1), 10_000).expect("cache");
        assert_eq!(big.shards.len(), 8);
    }

    #[test]
    fn call_headers_carry_the_request_and_only_the_chosen_headers() {
        let rt = load(&yaml(
            "r",
            "url: http://ch.local/\nrequest_headers: [Authorization, Cookie]",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let mut ctx = RequestCtx::new(rt.clone());
        ctx.request_id = "req-1".into();
        ctx.client_ip = Some("203.0.113.7".parse().expect("ip"));
        let r = req(
            "DELETE",
            "/api/items/7?force=1",
            &[
                ("host", "api.example.com"),
                ("authorization", "Bearer t"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x-api-key", "not-for-the-auth-service"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let h = p.call_headers(&r, false, &ctx);
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-method"), Some("DELETE"));
        assert_eq!(get("x-forwarded-uri"), Some("/api/items/7?force=1"));
        assert_eq!(get("x-forwarded-host"), Some("api.example.com"));
        // The peer is not a trusted proxy: its X-Forwarded-Proto is not believed.
        assert_eq!(get("x-forwarded-proto"), Some("http"));
        assert_eq!(get("x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(get("x-request-id"), Some("req-1"));
        assert_eq!(get("authorization"), Some("Bearer t"));
        assert_eq!(h.get_all("cookie").iter().count(), 2);
        assert!(h.get("x-api-key").is_none());
        assert!(h.get("host").is_none());
        assert_eq!(h.len(), 9);
        ctx.peer_trusted = true;
        let h = p.call_headers(&r, false, &ctx);
        assert_eq!(
            h.get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
            Some("https")
        );
    }

    #[test]
    fn preflight_detection() {
        let pre = [
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ];
        assert!(is_cors_preflight(&req("OPTIONS", "/", &pre)));
        assert!(!is_cors_preflight(&req("GET", "/", &pre)));
        assert!(!is_cors_preflight(&req(
            "OPTIONS",
            "/",
            &[("origin", "https://app.example")]
        )));
    }

    #[tokio::test]
    async fn failure_answers_503_and_strips_spoofed_headers() {
        // Nothing listens on port 9 of 127.0.0.1 (discard; refused here).
        let rt = load(&yaml(
            "r",
            "url: http://127.0.0.1:9/check\nupstream_headers: [X-User-Id]\ntimeout: 2s",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let mut ctx = RequestCtx::new(rt.clone());
        ctx.route = Some(0);
        let mut r = req("GET", "/", &[("x-user-id", "spoofed")]);
        let Outcome::Respond(reply) = p.authorize(&mut r, false, &mut ctx).await else {
            panic!("an unreachable auth service must refuse");
        };
        assert_eq!(reply.status, 503);
        assert_eq!(reply.code, Some("service_unavailable"));
        assert!(!reply.message.contains("127.0.0.1"));
        assert!(r.headers.get("x-user-id").is_none());
        assert_eq!(p.state.cache.as_ref().map(DecisionCache::len), Some(0));
    }
}
