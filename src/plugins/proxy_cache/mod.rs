//! `proxy-cache`: Pingora's HTTP cache in front of a route, backed by the bounded LRU store
//! of [`store`]; [`key`] builds the cache key, [`stores`] keeps the stores across reloads
//! (and purges them: admin `POST /cache/purge`, [`broadcast`] to the other nodes).
//!
//! Pingora runs its cache phases between `request_filter` and `upstream_peer`, so every
//! request plugin (auth, ACL, rate limits) has already passed when a cached answer is
//! served. The plugin serves the cache phases of its chain ([`phase::CACHE`]):
//!
//! | Pingora hook             | here                         |
//! |--------------------------|------------------------------|
//! | `request_cache_filter`   | enable, or `BYPASS` (method, `Authorization`, upgrade, unkeyed forwarding headers) |
//! | `cache_key_callback`     | [`key`], keyed also on the chain's identity headers |
//! | `cache_miss`             | `MISS`                       |
//! | `cache_hit_filter`       | `HIT` or `EXPIRED`           |
//! | `response_cache_filter`  | `Cache-Control`, `Set-Cookie`, `Vary: *`, `status`, `ttl` |
//! | `cache_vary_filter`      | [`variance`]: the upstream's `Vary` |
//! | `should_serve_stale`     | [`should_serve_stale`]       |
//! | `response_filter`        | `settle_cache` (the status from the cache phase), then the `response` hook adds `X-Cache-Status` |
//!
//! Stores outlive reloads (see [`stores`]); `install` applies a new config to them.

pub mod broadcast;
pub mod key;
pub mod store;
pub mod stores;

use crate::config::units::{ByteSize, Dur};
use crate::ctx::RequestCtx;
use crate::ctx::Runtime;
use crate::plugins::{phase, Answer, Build, Hooks};
use crate::util::registry::Registry;
use http::header::{AUTHORIZATION, SET_COOKIE, UPGRADE, VARY};
use http::{HeaderName, Method};
use once_cell::sync::{Lazy, OnceCell};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{
    filters, CacheKey, CacheMeta, CacheMetaDefaults, CacheOptionOverrides, CachePhase,
    ForcedFreshness, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorSource;
use prometheus::IntCounterVec;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::EntryTag;
use stores::StoreId;

pub const X_CACHE_STATUS: &str = "x-cache-status";
pub const HIT: &str = "HIT";
pub const MISS: &str = "MISS";
pub const STALE: &str = "STALE";
pub const EXPIRED: &str = "EXPIRED";
pub const BYPASS: &str = "BYPASS";
/// Every `X-Cache-Status` value (the `status` label of `cache_requests_total`).
pub const STATUSES: &[&str] = &[HIT, MISS, STALE, EXPIRED, BYPASS];

/// `cache_requests_total{route,status}`.
static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    crate::observe::metrics::registry().counter_vec(
        "cache_requests_total",
        "proxy-cache lookups by route and X-Cache-Status.",
        &["route", "status"],
    )
});

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    ttl: Dur,
    methods: Vec<String>,
    status: Vec<u16>,
    stale_while_revalidate: Dur,
    stale_if_error: Dur,
    vary_headers: Vec<String>,
    max_body_bytes: ByteSize,
    memory: ByteSize,
    lock_timeout: Dur,
    cache_authorized: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Dur::secs(300),
            methods: vec!["GET".into(), "HEAD".into()],
            status: vec![200, 301, 404],
            stale_while_revalidate: Dur::secs(0),
            stale_if_error: Dur::secs(0),
            vary_headers: Vec::new(),
            max_body_bytes: ByteSize(1024 * 1024),
            memory: ByteSize(256 * 1024 * 1024),
            lock_timeout: Dur::secs(10),
            cache_authorized: false,
        }
    }
}

/// Per-request cache state (`RequestCtx::plugins.proxy_cache`; the status itself is
/// `RequestCtx::cache_status`, which the access log reads).
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheState {
    /// Pingora's cache was enabled for this request.
    pub enabled: bool,
    /// The background refresh of stale-while-revalidate (a Pingora subrequest): no header,
    /// not counted.
    pub background: bool,
    /// `cache_requests_total` was incremented.
    pub counted: bool,
}

pub struct ProxyCache {
    /// The global `plugins:` entry (one store shared by its routes).
    global: bool,
    ttl: Duration,
    get: bool,
    head: bool,
    status: Vec<u16>,
    swr: u32,
    sie: u32,
    vary: Vec<HeaderName>,
    max_body: usize,
    memory: usize,
    lock: Option<&'static CacheKeyLockImpl>,
    lock_timeout: Duration,
    cache_authorized: bool,
    /// Forwarding and override headers (`X-Forwarded-Host`, `X-Original-URL`, ...) not in
    /// `vary_headers`: a request carrying one bypasses the cache.
    unkeyed_forwarding: Vec<HeaderName>,
    /// Where the store lives (the app's registry).
    registry: Registry,
    store: OnceCell<&'static store::Store>,
}

impl std::fmt::Debug for ProxyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCache")
            .field("global", &self.global)
            .field("ttl", &self.ttl)
            .field("get", &self.get)
            .field("head", &self.head)
            .field("status", &self.status)
            .field("stale_while_revalidate", &self.swr)
            .field("stale_if_error", &self.sie)
            .field("vary_headers", &self.vary)
            .field("max_body_bytes", &self.max_body)
            .field("memory", &self.memory)
            .field("lock_timeout", &self.lock_timeout)
            .field("cache_authorized", &self.cache_authorized)
            .finish()
    }
}

/// Whole seconds, rounded up (Pingora keeps stale windows in seconds).
fn secs_ceil(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl ProxyCache {
    fn store_id(&self, route: &str) -> StoreId {
        if self.global {
            StoreId::Global
        } else {
            StoreId::Route(route.to_string())
        }
    }

    /// This entry's store (bound by [`install`], or on first use).
    fn store_for(&self, route: &str) -> &'static store::Store {
        self.store
            .get_or_init(|| stores::store(&self.registry, &self.store_id(route), self.memory))
    }

    fn method_cached(&self, m: &Method) -> bool {
        (*m == Method::GET && self.get) || (*m == Method::HEAD && self.head)
    }

    /// Decides whether and for how long a response is stored.
    fn cacheable(&self, req: &RequestHeader, resp: &ResponseHeader, route: &str) -> RespCacheable {
        use RespCacheable::Uncacheable;
        if !self.status.contains(&resp.status.as_u16()) {
            return Uncacheable(NoCacheReason::Custom("status not cached"));
        }
        if resp.headers.contains_key(SET_COOKIE) {
            return Uncacheable(NoCacheReason::Custom("set-cookie"));
        }
        if vary_names(resp).any(|n| n == "*") {
            return Uncacheable(NoCacheReason::Custom("vary *"));
        }
        let cc = CacheControl::from_resp_headers(resp);
        if cc
            .as_ref()
            .is_some_and(|cc| cc.no_store() || cc.private() || cc.no_cache())
        {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        let now = SystemTime::now();
        // s-maxage, then max-age, then Expires, then the configured ttl.
        let fresh_until = cc
            .as_ref()
            .and_then(|cc| cc.fresh_duration())
            .and_then(|d| now.checked_add(d))
            .or_else(|| filters::calculate_expires_header_time(resp))
            .or_else(|| {
                (!self.ttl.is_zero())
                    .then(|| now.checked_add(self.ttl))
                    .flatten()
            });
        let Some(fresh_until) = fresh_until.filter(|t| *t > now) else {
            return Uncacheable(NoCacheReason::OriginNotCache);
        };
        // Upstream stale-while-revalidate / stale-if-error win over the configured defaults;
        // must-revalidate, proxy-revalidate and s-maxage forbid serving stale.
        let defaults = CacheMetaDefaults::new(|_| None, self.swr, self.sie);
        let (swr, sie) = filters::calculate_serve_stale_durations(cc.as_ref(), &defaults);
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
        meta.extensions_mut().insert(EntryTag {
            route: Arc::from(route),
            path: req.uri.path().into(),
            query: key::normalize_query(req.uri.query().unwrap_or("")).into(),
        });
        RespCacheable::Cacheable(meta)
    }
}

fn vary_names(resp: &ResponseHeader) -> impl Iterator<Item = &str> {
    resp.headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

impl Hooks for ProxyCache {
    type State = CacheState;
    const PHASES: u32 = phase::RESPONSE | phase::CACHE;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let mut ok = true;
        let (mut get, mut head) = (false, false);
        for (i, m) in cfg.methods.iter().enumerate() {
            match m.to_ascii_uppercase().as_str() {
                "GET" => get = true,
                "HEAD" => head = true,
                _ => {
                    c.error(
                        &format!("{path}.config.methods[{i}]"),
                        format!("only GET and HEAD responses can be cached, not {m:?}"),
                    );
                    ok = false;
                }
            }
        }
        for (i, s) in cfg.status.iter().enumerate() {
            if !(200..=599).contains(s) || matches!(s, 206 | 304) {
                c.error(
                    &format!("{path}.config.status[{i}]"),
                    format!("status {s} cannot be cached (200-599 except 206 and 304)"),
                );
                ok = false;
            }
        }
        let mut vary = Vec::new();
        for (i, h) in cfg.vary_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => vary.push(n),
                Err(_) => {
                    c.error(
                        &format!("{path}.config.vary_headers[{i}]"),
                        format!("invalid header name {h:?}"),
                    );
                    ok = false;
                }
            }
        }
        vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        vary.dedup();
        if cfg.memory.0 == 0 {
            c.error(&format!("{path}.config.memory"), "must be greater than 0");
            ok = false;
        }
        if !ok {
            return None;
        }
        let lock_timeout = cfg.lock_timeout.0;
        let unkeyed_forwarding = crate::owned_headers::CACHE_SENSITIVE
            .iter()
            .map(|n| HeaderName::from_static(n))
            .filter(|n| !vary.contains(n))
            .collect();
        Some(ProxyCache {
            global: !path.starts_with("routes["),
            ttl: cfg.ttl.0,
            get,
            head,
            status: cfg.status,
            swr: secs_ceil(cfg.stale_while_revalidate.0),
            sie: secs_ceil(cfg.stale_if_error.0),
            vary,
            max_body: usize::try_from(cfg.max_body_bytes.0).unwrap_or(usize::MAX),
            memory: usize::try_from(cfg.memory.0).unwrap_or(usize::MAX),
            lock: (!lock_timeout.is_zero()).then(|| stores::lock(env.registry, lock_timeout)),
            lock_timeout,
            cache_authorized: cfg.cache_authorized,
            unkeyed_forwarding,
            registry: env.registry.clone(),
            store: OnceCell::new(),
        })
    }

    /// `response_filter` (and gateway-made answers): `X-Cache-Status` and
    /// `cache_requests_total{route,status}`.
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        let Some(status) = ctx.cache_status else {
            return Ok(());
        };
        if ctx.plugins.proxy_cache.background {
            return Ok(());
        }
        resp.insert_header(X_CACHE_STATUS, status)?;
        if !ctx.plugins.proxy_cache.counted {
            ctx.plugins.proxy_cache.counted = true;
            if let Some(r) = ctx.route() {
                REQUESTS.with_label_values(&[r.name.as_str(), status]).inc();
            }
        }
        Ok(())
    }

    /// `request_cache_filter`: enables Pingora's cache for a cacheable request of a cached
    /// route; a request with a method not cached, with `Authorization` (unless
    /// `cache_authorized`), asking for a protocol upgrade (WebSocket) or carrying a forwarding
    /// or override header that is not in `vary_headers` (only a trusted proxy's survive
    /// [`crate::owned_headers`]) bypasses it entirely: not served from the cache, not stored.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let Some(route) = ctx.route() else {
            return;
        };
        let req = session.req_header();
        if !self.method_cached(&req.method)
            || (!self.cache_authorized && req.headers.contains_key(AUTHORIZATION))
            || req.headers.contains_key(UPGRADE)
            || (ctx.peer_trusted
                && self
                    .unkeyed_forwarding
                    .iter()
                    .any(|n| req.headers.contains_key(n)))
        {
            ctx.cache_status = Some(BYPASS);
            return;
        }
        let store = self.store_for(&route.name);
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = self.lock.map(|_| self.lock_timeout);
        session
            .cache
            .enable(store, None, None, self.lock, Some(overrides));
        session.cache.set_max_file_size_bytes(self.max_body);
        ctx.plugins.proxy_cache.enabled = true;
        ctx.cache_status = Some(MISS);
    }

    /// `cache_key_callback`: also keyed on the chain's identity headers (forward-auth's
    /// `upstream_headers`: the upstream answers each identity differently, so each gets its
    /// own object).
    fn cache_key(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let Some(route) = ctx.route() else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a route");
        };
        let req = session.req_header();
        let parts = key::KeyParts {
            route: &route.name,
            host: key::request_host(&req.uri, &req.headers),
            path: req.uri.path(),
            query: req.uri.query(),
            consumer: ctx
                .consumer
                .and_then(|i| ctx.rt.consumers.get(i))
                .map(|c| c.username.as_str()),
            roles: ctx
                .plugins
                .jwt
                .as_ref()
                .and_then(|t| t.roles.as_ref())
                .map(|r| r.as_bytes()),
            // traffic-split's choice, when it is not the route's own upstream.
            upstream: ctx
                .upstream_override
                .as_ref()
                .map(|u| u.name.as_str())
                .filter(|u| *u != route.upstream.name),
        };
        let identity = route.plugins.identity_headers();
        let hash = key::primary_hash_with(&parts, &req.headers, &self.vary, identity);
        let mut k = CacheKey::new(Vec::new(), String::new());
        k.set_primary_bin_override(hash);
        Ok(k)
    }

    /// `cache_miss`: the object was not found (or not usable); this request fetches it.
    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        session.cache.cache_miss();
        ctx.cache_status = Some(MISS);
    }

    /// `cache_hit_filter`: remembers whether the object found was fresh.
    fn cache_hit_filter(
        &self,
        _meta: &CacheMeta,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Option<ForcedFreshness> {
        ctx.cache_status = Some(if is_fresh { HIT } else { EXPIRED });
        None
    }

    /// `response_cache_filter`.
    fn response_cache_filter(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        ctx: &RequestCtx,
    ) -> RespCacheable {
        match ctx.route() {
            Some(route) => self.cacheable(req, resp, &route.name),
            None => RespCacheable::Uncacheable(NoCacheReason::Custom("no route")),
        }
    }

    /// `cache_vary_filter`: [`variance`]; when response-compression asks the upstream for
    /// identity bodies, without `Accept-Encoding`.
    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> Option<HashBinary> {
        let skip = ctx
            .plugins
            .response_compression
            .ignores_accept_encoding()
            .then_some("accept-encoding");
        variance_except(meta, req, skip)
    }

    fn should_serve_stale(&self, error: Option<&Error>) -> bool {
        should_serve_stale(error)
    }

    /// Start of `response_filter`: the final `X-Cache-Status` from Pingora's cache phase.
    fn settle_cache(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if !ctx.plugins.proxy_cache.enabled {
            return;
        }
        if session.subrequest_ctx.is_some() {
            ctx.plugins.proxy_cache.background = true;
        }
        let status = match session.cache.phase() {
            CachePhase::Hit => HIT,
            CachePhase::StaleUpdating => STALE,
            CachePhase::Stale => {
                // Served because the upstream failed: Pingora does not reuse the client
                // connection after a failed attempt, so say so instead of closing silently.
                session.set_keepalive(None);
                STALE
            }
            CachePhase::Miss => MISS,
            CachePhase::Expired | CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                EXPIRED
            }
            CachePhase::Bypass => BYPASS,
            // Disabled on the way (uncacheable response, lock timeout, too large): what the
            // lookup found.
            _ => ctx.cache_status.unwrap_or(MISS),
        };
        ctx.cache_status = Some(status);
    }

    /// Applies a newly installed config to the stores: capacities, which routes use which
    /// store (objects of routes that left a store are dropped). Called at startup and after
    /// every successful reload.
    fn install(_rt: &Runtime, registry: &Registry, instances: &[(&str, &Self)]) {
        let mut wanted: HashMap<StoreId, stores::Wanted> = HashMap::new();
        for (route, pc) in instances {
            let w = wanted.entry(pc.store_id(route)).or_default();
            w.capacity = pc.memory;
            w.routes.push(route.to_string());
        }
        stores::apply(registry, &wanted);
        for (route, pc) in instances {
            pc.store_for(route);
        }
    }

    /// The cache families: `cache_requests_total` here, the stores' in [`stores`].
    fn register_metrics() {
        Lazy::force(&REQUESTS);
        stores::register_metrics();
    }

    /// `cache_requests_total{route,status}` exists from the start for every status.
    fn route_series(route: &str, create: bool) {
        for s in STATUSES {
            if create {
                REQUESTS.with_label_values(&[route, s]);
            } else {
                let _ = REQUESTS.remove_label_values(&[route, s]);
            }
        }
    }

    /// The `cache.purge_broadcast` subscriber (it follows reloads through `live`).
    fn background_services(
        live: &Arc<crate::ctx::Live>,
        registry: &Registry,
    ) -> Vec<Box<dyn pingora::services::ServiceWithDependents>> {
        let live = live.clone();
        vec![Box::new(pingora::services::background::background_service(
            "cache purge broadcast",
            broadcast::Subscriber::new(
                move || live.snapshot().cache.purge_broadcast.clone(),
                registry.clone(),
            ),
        ))]
    }

    /// `POST /cache/purge`.
    const ADMIN_ENDPOINTS: &'static [(&'static str, &'static str)] = &[("POST", "/cache/purge")];

    async fn admin(
        rt: &Runtime,
        registry: &Registry,
        req: &crate::plugins::AdminRequest<'_>,
    ) -> Option<(http::StatusCode, serde_json::Value)> {
        Some(stores::purge_endpoint(req.body, rt, registry).await)
    }

    /// `cache`: one line per store.
    fn status_section(
        _rt: &Runtime,
        registry: &Registry,
    ) -> Option<(&'static str, serde_json::Value)> {
        Some(("cache", stores::status(registry)))
    }
}

/// `cache_vary_filter`: the variance of a stored response for this request, from the
/// response's `Vary` header names and the request's values of them.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    variance_except(meta, req, None)
}

/// [`variance`] without the header `skip` (lowercase): response-compression asks the
/// upstream for identity bodies, so an upstream `Vary: Accept-Encoding` does not make one
/// object per client `Accept-Encoding`.
pub fn variance_except(
    meta: &CacheMeta,
    req: &RequestHeader,
    skip: Option<&str>,
) -> Option<HashBinary> {
    let mut names: Vec<String> = vary_names(meta.response_header())
        .map(str::to_ascii_lowercase)
        .filter(|n| Some(n.as_str()) != skip)
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut vb = VarianceBuilder::new();
    for name in names {
        let mut value = Vec::new();
        for (i, v) in req.headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                value.extend_from_slice(b", ");
            }
            value.extend_from_slice(v.as_bytes());
        }
        vb.add_owned_name_value(name, value);
    }
    vb.finalize()
}

/// `should_serve_stale`: during stale-while-revalidate (`error` is `None`) always within the
/// object's window (Pingora checks the window first); on an error, for any failure that is
/// not the client's (upstream down, timeout, 5xx, no healthy target).
pub fn should_serve_stale(error: Option<&Error>) -> bool {
    match error {
        None => true,
        Some(e) => e.esource() != &ErrorSource::Downstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc() -> ProxyCache {
        ProxyCache {
            global: false,
            ttl: Duration::from_secs(300),
            get: true,
            head: true,
            status: vec![200, 301, 404],
            swr: 0,
            sie: 7,
            vary: Vec::new(),
            max_body: 1 << 20,
            memory: 1 << 20,
            lock: None,
            lock_timeout: Duration::ZERO,
            cache_authorized: false,
            unkeyed_forwarding: Vec::new(),
            registry: Registry::default(),
            store: OnceCell::new(),
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn ttl_of(r: &ResponseHeader) -> Option<u64> {
        let req = RequestHeader::build("GET", b"/a?b=2&a=1", None).unwrap();
        match pc().cacheable(&req, r, "route") {
            RespCacheable::Cacheable(m) => {
                let tag = m.extensions().get::<EntryTag>().unwrap();
                assert_eq!(&*tag.route, "route");
                assert_eq!(&*tag.path, "/a");
                assert_eq!(&*tag.query, "a=1&b=2");
                Some(m.fresh_sec())
            }
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn cache_control_and_defaults() {
        assert_eq!(ttl_of(&resp(200, &[])), Some(300), "default ttl");
        assert_eq!(
            ttl_of(&resp(200, &[("cache-control", "max-age=60")])),
            Some(60)
        );
        assert_eq!(
            ttl_of(&resp(200, &[("cache-control", "max-age=60, s-maxage=30")])),
            Some(30),
            "s-maxage wins for a shared cache"
        );
        for cc in [
            "no-store",
            "private",
            "no-cache",
            "max-age=0",
            "private, max-age=60",
        ] {
            assert_eq!(ttl_of(&resp(200, &[("cache-control", cc)])), None, "{cc}");
        }
        assert_eq!(ttl_of(&resp(200, &[("set-cookie", "a=b")])), None);
        assert_eq!(ttl_of(&resp(200, &[("vary", "Accept, *")])), None);
        assert_eq!(ttl_of(&resp(500, &[("cache-control", "max-age=60")])), None);
        assert_eq!(ttl_of(&resp(404, &[])), Some(300));
        assert_eq!(
            ttl_of(&resp(200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")])),
            None
        );
    }

    #[test]
    fn stale_windows_from_config_and_upstream() {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let windows = |r: &ResponseHeader| match pc().cacheable(&req, r, "r") {
            RespCacheable::Cacheable(m) => (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            RespCacheable::Uncacheable(_) => panic!("uncacheable"),
        };
        assert_eq!(windows(&resp(200, &[])), (0, 7));
        assert_eq!(
            windows(&resp(
                200,
                &[("cache-control", "max-age=5, stale-while-revalidate=9")]
            )),
            (9, 7)
        );
        assert_eq!(
            windows(&resp(
                200,
                &[("cache-control", "max-age=5, must-revalidate")]
            )),
            (0, 0)
        );
    }

    #[test]
    fn vary_variance() {
        let meta = |vary: &str| {
            let now = SystemTime::now();
            CacheMeta::new(now, now, 0, 0, resp(200, &[("vary", vary)]))
        };
        let req = |ae: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            if let Some(v) = ae {
                r.insert_header("accept-encoding", v).unwrap();
            }
            r
        };
        let m = meta("Accept-Encoding");
        assert_ne!(
            variance(&m, &req(Some("gzip"))),
            variance(&m, &req(Some("br")))
        );
        assert_eq!(
            variance(&m, &req(Some("gzip"))),
            variance(&m, &req(Some("gzip")))
        );
        assert!(variance(&m, &req(None)).is_some());
        let now = SystemTime::now();
        let plain = CacheMeta::new(now, now, 0, 0, resp(200, &[]));
        assert_eq!(variance(&plain, &req(Some("gzip"))), None);
    }

    #[test]
    fn stale_on_upstream_errors_only() {
        assert!(should_serve_stale(None));
        let up = Error::new(ErrorType::ConnectRefused).into_up();
        assert!(should_serve_stale(Some(&up)));
        let down = Error::new(ErrorType::ReadError).into_down();
        assert!(!should_serve_stale(Some(&down)));
    }
}
