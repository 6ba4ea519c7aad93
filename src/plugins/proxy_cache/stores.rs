//! The stores and cache locks of the `proxy-cache` plugin that outlive config reloads, and
//! the admin and broadcast purges that act on them.
//!
//! Pingora's `HttpCache::enable` takes `'static` references, so stores and cache locks are
//! created once and pinned in the app's registry ([`Registry::pinned`]): one [`Store`] per
//! proxy-cache entry, named by what is stable across reloads ([`StoreId`]: the route name
//! for a route's entry, `Global` for the global entry), and one `CacheLock` per distinct
//! `lock_timeout`. Both sets are bounded by the configs ever loaded; a store no route uses
//! any more is emptied, not freed.

use super::store::{Stats, Store};
use super::{broadcast, key};

use crate::util::registry::Registry;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Which store a proxy-cache entry uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreId {
    /// The global `plugins:` entry (shared by every route that uses it).
    Global,
    /// A route's own entry.
    Route(String),
}

impl StoreId {
    pub fn label(&self) -> &str {
        match self {
            StoreId::Global => "*global*",
            StoreId::Route(r) => r,
        }
    }
}

impl StoreId {
    /// Registry key (a route may be named like the global store's label).
    fn key(&self) -> String {
        match self {
            StoreId::Global => "global".into(),
            StoreId::Route(r) => format!("route {r}"),
        }
    }
}

/// One store, pinned in the app's registry for the life of the process.
struct Registered {
    id: StoreId,
    store: Store,
    /// Routes using it in the current config.
    routes: Mutex<Vec<String>>,
}

/// Bytes held by all stores (the `cache_size_bytes` gauge).
static TOTAL_BYTES: AtomicI64 = AtomicI64::new(0);

fn registered(reg: &Registry, id: &StoreId, capacity: usize) -> &'static Registered {
    reg.pinned(&id.key(), || Registered {
        id: id.clone(),
        store: Store::new(id.label(), capacity),
        routes: Mutex::new(Vec::new()),
    })
}

/// The store for `id` in `reg`, created with `capacity` bytes the first time.
pub fn store(reg: &Registry, id: &StoreId, capacity: usize) -> &'static Store {
    &registered(reg, id, capacity).store
}

/// The cache lock whose writers may hold a key for `timeout` (readers wait at most as long).
pub fn lock(reg: &Registry, timeout: Duration) -> &'static CacheKeyLockImpl {
    reg.pinned(&format!("{}ns", timeout.as_nanos()), || {
        CacheLock::new(timeout)
    })
}

/// What the current config wants of one store.
#[derive(Debug, Default)]
pub struct Wanted {
    pub capacity: usize,
    pub routes: Vec<String>,
}

/// Applies a newly installed config: capacities, which routes use which store. Objects of
/// routes that no longer use a store are dropped; a store nobody uses is emptied.
pub fn apply(reg: &Registry, wanted: &HashMap<StoreId, Wanted>) {
    for (id, w) in wanted {
        registered(reg, id, w.capacity);
    }
    for r in reg.all_pinned::<Registered>() {
        let mut current = r.routes.lock();
        match wanted.get(&r.id) {
            Some(w) => {
                r.store.set_capacity(w.capacity);
                let mut routes = w.routes.clone();
                routes.sort();
                routes.dedup();
                if routes != *current && !r.store.is_empty() {
                    r.store.retain_routes(&routes);
                }
                *current = routes;
            }
            None => {
                if !r.store.is_empty() {
                    r.store.clear();
                }
                current.clear();
            }
        }
    }
}

/// Purges `route`'s objects from every store: all of them, or every variant of `path`
/// (only those with the normalized `query` when given). Returns how many were removed.
pub fn purge(reg: &Registry, route: &str, path: Option<&str>, query: Option<&str>) -> usize {
    reg.all_pinned::<Registered>()
        .iter()
        .map(|r| match path {
            Some(p) => r.store.purge_path(route, p, query),
            None => r.store.purge_route(route),
        })
        .sum()
}

/// One line per store for admin `/status`.
pub fn status(reg: &Registry) -> serde_json::Value {
    let list: Vec<serde_json::Value> = reg
        .all_pinned::<Registered>()
        .iter()
        .map(|r| {
            let st = r.store.stats();
            serde_json::json!({
                "store": r.id.label(),
                "routes": *r.routes.lock(),
                "capacity_bytes": st.capacity,
                "used_bytes": st.used,
                "objects": st.objects,
                "evictions": st.evictions,
                "evicted_bytes": st.evicted_bytes,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// Stats of the store registered under `id`.
pub fn stats(reg: &Registry, id: &StoreId) -> Option<Stats> {
    reg.all_pinned::<Registered>()
        .iter()
        .find(|r| r.id == *id)
        .map(|r| r.store.stats())
}

/// The store families: `cache_size_bytes`, `cache_evictions_total`.
struct Families {
    size_bytes: prometheus::IntGauge,
    evictions: prometheus::IntCounter,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        size_bytes: r.gauge(
            "cache_size_bytes",
            "Bytes held by the proxy-cache memory store.",
        ),
        evictions: r.counter(
            "cache_evictions_total",
            "Entries evicted from the proxy-cache memory store.",
        ),
    }
});

/// Registers the store families (once, at startup; later calls do nothing).
pub fn register_metrics() {
    Lazy::force(&FAMILIES);
}

/// Size and eviction bookkeeping of every store change (the `cache_size_bytes` gauge and
/// `cache_evictions_total` counter).
pub(crate) fn note_usage(delta_bytes: isize, evicted: u64) {
    let total = TOTAL_BYTES.fetch_add(delta_bytes as i64, Ordering::Relaxed) + delta_bytes as i64;
    FAMILIES.size_bytes.set(total.max(0));
    if evicted > 0 {
        FAMILIES.evictions.inc_by(evicted);
    }
}

/// Body of admin `POST /cache/purge`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    route: String,
    path: Option<String>,
}

/// Admin `POST /cache/purge` (the admin API checked the token and read the bounded body):
/// the JSON body `{"route": "products"}` or `{"route": "products", "path":
/// "/api/v1/products/1"}`; answers the status and JSON body. A path purges every variant of
/// it (hosts, query strings, `Vary` variants); a path with `?query` only that (normalized)
/// query.
pub async fn purge_endpoint(
    body: &[u8],
    rt: &crate::ctx::Runtime,
    reg: &Registry,
) -> (http::StatusCode, serde_json::Value) {
    use http::StatusCode;
    let bad = |msg: String| {
        (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "bad_request", "message": msg}),
        )
    };
    let req: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "expected {{\"route\": \"name\", \"path\": \"/optional/path\"}}: {e}"
            ))
        }
    };
    if !rt.routes.iter().any(|r| r.name == req.route) {
        return (
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "message": format!("no route named {:?}", req.route)}),
        );
    }
    let mut normalized: Option<(String, Option<String>)> = None;
    let purged = match &req.path {
        None => purge(reg, &req.route, None, None),
        Some(p) => {
            let (path, query) = match p.split_once('?') {
                Some((path, q)) => (path, Some(q)),
                None => (p.as_str(), None),
            };
            if !path.starts_with('/') {
                return bad("path must start with /".into());
            }
            let Some(path) = crate::util::percent::normalize_percent(path) else {
                return bad("path has an invalid percent-encoding".into());
            };
            let query = query.map(key::normalize_query);
            let n = purge(reg, &req.route, Some(&path), query.as_deref());
            normalized = Some((path.to_string(), query.map(|q| q.to_string())));
            n
        }
    };
    tracing::info!(route = %req.route, path = ?req.path, purged, "cache purge via admin API");
    let mut answer = serde_json::json!({"purged": purged, "route": req.route, "path": req.path});
    if let Some(b) = &rt.cache.purge_broadcast {
        // The same purge, validated and normalized, for every other node.
        let (path, query) = match &normalized {
            Some((p, q)) => (Some(p.as_str()), q.as_deref()),
            None => (None, None),
        };
        answer["broadcast"] = match broadcast::publish(b, &req.route, path, query).await {
            Ok(receivers) => serde_json::json!({"sent": true, "receivers": receivers}),
            Err(e) => {
                tracing::warn!(redis = %b.addr, "cache purge broadcast failed: {e}; other nodes keep their copies");
                serde_json::json!({"sent": false, "error": e})
            }
        };
    }
    (StatusCode::OK, answer)
}
