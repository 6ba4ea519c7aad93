//! proxy-cache against real upstreams: MISS/HIT, what is never cached, Vary, key
//! normalization, the cache lock, stale-if-error, stale-while-revalidate, eviction under the
//! memory cap, admin purge (and its token), survival across a reload.
use crate::common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// `plugins:` block of a route with proxy-cache and `config` (YAML flow mapping body).
fn cached(config: &str) -> String {
    format!("plugins:\n  - name: proxy-cache\n    config: {{ {config} }}")
}

/// A gateway with one cached route `c` on `/c` to `b`.
fn one_route(b: &Backend, config: &str) -> Gateway {
    Cfg::new()
        .upstream("u", &[target(b)], "retries: 0")
        .route_u("c", &cached(config))
        .start()
}

struct Got {
    status: u16,
    cache: String,
    age: Option<u64>,
    body: String,
}

async fn get_h(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = gw.client.get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()));
    let status = r.status().as_u16();
    let h = r.headers();
    let cache = h
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let age = h
        .get("age")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Got {
        status,
        cache,
        age,
        body: r.text().await.unwrap_or_default(),
    }
}

async fn get(gw: &Gateway, path: &str) -> Got {
    get_h(gw, path, &[]).await
}

/// The `/status` cache entry of store `name`.
async fn store_status(gw: &Gateway, name: &str) -> Value {
    let st = gw.status_json().await;
    st["cache"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["store"] == name).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn miss_then_hit_with_one_upstream_fetch() {
    let b = Backend::start("b");
    let gw = one_route(&b, "ttl: 1m");

    let first = get(&gw, "/c/item").await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    assert_eq!(first.age, None, "a fresh upstream answer has no Age");
    let second = get(&gw, "/c/item").await;
    assert_eq!((second.status, second.cache.as_str()), (200, "HIT"));
    assert_eq!(second.body, first.body, "same body from the cache");
    assert!(second.age.is_some(), "a hit carries Age");
    assert_eq!(b.hits(), 1, "one upstream fetch");

    // HEAD is answered from the GET object.
    let r = gw.client.head(gw.url("/c/item")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache-status"], "HIT");
    assert_eq!(b.hits(), 1);

    // A HEAD miss fetches with GET upstream and stores the object for GETs.
    let r = gw
        .client
        .head(gw.url("/c/head-first"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache-status"], "MISS");
    assert_eq!(b.last_request().unwrap().method, "GET");
    let g = get(&gw, "/c/head-first").await;
    assert_eq!(g.cache, "HIT");
    assert!(g.body.contains("/c/head-first"), "{}", g.body);
    assert_eq!(b.hits(), 2);
    b.reset();
    assert_eq!(get(&gw, "/c/item").await.cache, "HIT");

    // Methods not cached bypass it.
    let r = gw.client.post(gw.url("/c/item")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache-status"], "BYPASS");
    assert_eq!(b.hits(), 1);

    // Age grows.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = get(&gw, "/c/item").await;
    assert_eq!(third.cache, "HIT");
    assert!(third.age.unwrap_or(0) >= 1, "Age counts seconds in cache");

    // Counted per route and status.
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "cache_requests_total",
            &[("route", "c"), ("status", "HIT")]
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "cache_requests_total",
            &[("route", "c"), ("status", "MISS")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "cache_requests_total",
            &[("route", "c"), ("status", "BYPASS")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn never_cached_no_store_private_no_cache_set_cookie() {
    let cases: &[(&str, &str)] = &[
        ("cache-control", "no-store"),
        ("cache-control", "private, max-age=60"),
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("set-cookie", "session=abc"),
    ];
    for (name, value) in cases {
        let b = Backend::start("b");
        b.set_extra_headers(&[(name, value)]);
        let gw = one_route(&b, "");
        for _ in 0..3 {
            let g = get(&gw, "/c/x").await;
            assert_eq!(g.status, 200);
            assert_eq!(g.cache, "MISS", "{name}: {value}");
        }
        assert_eq!(b.hits(), 3, "{name}: {value} must not be cached");
    }

    // A status outside `status` is not cached either.
    let b = Backend::start("b");
    b.set_status(500);
    let gw = one_route(&b, "");
    get(&gw, "/c/x").await;
    get(&gw, "/c/x").await;
    assert_eq!(b.hits(), 2);

    // Upstream max-age beats the configured ttl; s-maxage beats max-age.
    let b = Backend::start("b");
    b.set_extra_headers(&[("cache-control", "max-age=1")]);
    let gw = one_route(&b, "ttl: 1h");
    assert_eq!(get(&gw, "/c/x").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/x").await.cache, "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&gw, "/c/x").await.cache, "EXPIRED");
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn authorization_bypasses_unless_cache_authorized() {
    let b = Backend::start("b");
    let gw = Cfg::new()
        .upstream("u", &[target(&b)], "retries: 0")
        .route_u("c", &cached(""))
        .route_u("a", &cached("cache_authorized: true"))
        .start();
    let auth = [("authorization", "Bearer t0k3n")];

    // Not served from the cache...
    assert_eq!(get(&gw, "/c/x").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/x").await.cache, "HIT");
    let g = get_h(&gw, "/c/x", &auth).await;
    assert_eq!((g.status, g.cache.as_str()), (200, "BYPASS"));
    assert_eq!(b.hits(), 2);
    // ...and not stored.
    assert_eq!(get_h(&gw, "/c/y", &auth).await.cache, "BYPASS");
    assert_eq!(get_h(&gw, "/c/y", &auth).await.cache, "BYPASS");
    assert_eq!(b.hits(), 4, "every authorized request goes upstream");
    assert_eq!(get(&gw, "/c/y").await.cache, "MISS", "nothing was stored");

    // cache_authorized: true caches them.
    b.reset();
    assert_eq!(get_h(&gw, "/a/x", &auth).await.cache, "MISS");
    assert_eq!(get_h(&gw, "/a/x", &auth).await.cache, "HIT");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn vary_and_vary_headers_make_separate_objects() {
    let b = Backend::start("b");
    b.set_extra_headers(&[("vary", "Accept-Encoding")]);
    let gw = Cfg::new()
        .upstream("u", &[target(&b)], "retries: 0")
        .route_u("c", &cached(""))
        .route_u("t", &cached("vary_headers: [X-Tenant]"))
        .start();
    let gz = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];
    assert_eq!(get_h(&gw, "/c/v", &gz).await.cache, "MISS");
    assert_eq!(get_h(&gw, "/c/v", &gz).await.cache, "HIT");
    let g = get_h(&gw, "/c/v", &br).await;
    assert_eq!(g.cache, "MISS", "another Accept-Encoding is another object");
    assert!(g.body.contains("\"accept-encoding\":\"br\""), "{}", g.body);
    let g = get_h(&gw, "/c/v", &br).await;
    assert_eq!(g.cache, "HIT");
    assert!(g.body.contains("\"accept-encoding\":\"br\""), "{}", g.body);
    let g = get_h(&gw, "/c/v", &gz).await;
    assert_eq!(g.cache, "HIT");
    assert!(
        g.body.contains("\"accept-encoding\":\"gzip\""),
        "{}",
        g.body
    );
    assert_eq!(b.hits(), 2);

    // vary_headers: part of the key.
    b.reset();
    let ta = [("x-tenant", "a"), ("accept-encoding", "gzip")];
    let tb = [("x-tenant", "b"), ("accept-encoding", "gzip")];
    assert_eq!(get_h(&gw, "/t/v", &ta).await.cache, "MISS");
    assert_eq!(get_h(&gw, "/t/v", &tb).await.cache, "MISS");
    let g = get_h(&gw, "/t/v", &ta).await;
    assert_eq!(g.cache, "HIT");
    assert!(g.body.contains("\"x-tenant\":\"a\""), "{}", g.body);
    assert_eq!(get_h(&gw, "/t/v", &tb).await.cache, "HIT");
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn query_order_and_host_in_the_key() {
    let b = Backend::start("b");
    let gw = one_route(&b, "");
    assert_eq!(get(&gw, "/c/q?a=1&b=2").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/q?b=2&a=1").await.cache, "HIT");
    assert_eq!(get(&gw, "/c/q?a=1&b=2&").await.cache, "HIT");
    assert_eq!(get(&gw, "/c/q?a=1&b=3").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/q").await.cache, "MISS");
    assert_eq!(b.hits(), 3);
    // Another host is another object.
    let g = get_h(&gw, "/c/q?a=1&b=2", &[("host", "other.example")]).await;
    assert_eq!(g.cache, "MISS");
    assert_eq!(b.hits(), 4);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_fetch() {
    let b = Backend::start("b");
    b.set_delay(Duration::from_millis(500));
    let gw = one_route(&b, "");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = gw.client.clone();
        let url = gw.url("/c/slow");
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.expect("request");
            let status = r.status().as_u16();
            let cache = r.headers()["x-cache-status"].to_str().unwrap().to_string();
            (status, cache, r.text().await.unwrap())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(b.hits(), 1, "the cache lock lets one request fetch");
    assert!(results.iter().all(|(s, ..)| *s == 200));
    assert!(results.iter().all(|(.., body)| *body == results[0].2));
    let misses = results.iter().filter(|(_, c, _)| c == "MISS").count();
    let hits = results.iter().filter(|(_, c, _)| c == "HIT").count();
    assert_eq!((misses, hits), (1, 19), "{results:?}");
}

#[tokio::test]
async fn stale_if_error_serves_stale_while_the_upstream_is_down() {
    let b = Backend::start("b");
    let down = Backend::start("down");
    let gw = Cfg::new()
        .upstream("u", &[target(&b)], "retries: 0")
        .upstream("d", &[target(&down)], "retries: 0")
        .route_u("c", &cached("ttl: 1s, stale_if_error: 1m"))
        .route("n", &["/n"], "d", &cached("ttl: 1s"))
        .start();
    b.set_body(Some("{\"v\":1}"));
    down.set_body(Some("{\"v\":1}"));
    assert_eq!(get(&gw, "/c/x").await.cache, "MISS");
    assert_eq!(get(&gw, "/n/x").await.cache, "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Upstream refuses connections: the stale object is served.
    b.stop();
    down.stop();
    let g = get(&gw, "/c/x").await;
    assert_eq!((g.status, g.cache.as_str()), (200, "STALE"), "{}", g.body);
    assert_eq!(g.body, "{\"v\":1}");
    // Without stale_if_error the client gets the error.
    let g = get(&gw, "/n/x").await;
    assert_eq!(g.status, 502, "{}", g.body);
    assert_error_body(&g.body, "bad_gateway");

    // Upstream answers 5xx: stale too.
    b.restart();
    b.set_status(503);
    let g = get(&gw, "/c/x").await;
    assert_eq!((g.status, g.cache.as_str()), (200, "STALE"));
    assert_eq!(g.body, "{\"v\":1}");

    // Back to normal: refetched.
    b.set_status(200);
    b.set_body(Some("{\"v\":2}"));
    let g = get(&gw, "/c/x").await;
    assert_eq!((g.status, g.cache.as_str()), (200, "EXPIRED"));
    assert_eq!(g.body, "{\"v\":2}");
    assert_eq!(get(&gw, "/c/x").await.cache, "HIT");
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_in_the_background() {
    let b = Backend::start("b");
    let gw = one_route(&b, "ttl: 1s, stale_while_revalidate: 1m");
    b.set_body(Some("v1"));
    assert_eq!(get(&gw, "/c/x").await.cache, "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    b.set_body(Some("v2"));
    b.set_delay(Duration::from_millis(1000));
    let t = Instant::now();
    let g = get(&gw, "/c/x").await;
    let took = t.elapsed();
    assert_eq!(
        (g.status, g.cache.as_str(), g.body.as_str()),
        (200, "STALE", "v1")
    );
    assert!(
        took < Duration::from_millis(700),
        "stale answer must not wait for the refresh: {took:?}"
    );
    // The refresh happens in the background.
    assert!(wait_until(Duration::from_secs(3), || b.hits() == 2).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let g = get(&gw, "/c/x").await;
        if g.cache == "HIT" && g.body == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "refreshed object never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.hits(), 2, "one background refresh");
}

#[tokio::test]
async fn eviction_keeps_memory_under_the_cap() {
    let b = Backend::start("b");
    b.set_body(Some(&"x".repeat(2000)));
    let gw = one_route(&b, "memory: 32kb");
    for i in 0..40 {
        assert_eq!(get(&gw, &format!("/c/p{i}")).await.cache, "MISS");
        let st = store_status(&gw, "c").await;
        assert!(
            st["used_bytes"].as_u64().unwrap() <= 32 * 1024,
            "over the cap after {i}: {st}"
        );
    }
    let st = store_status(&gw, "c").await;
    assert_eq!(st["capacity_bytes"], 32 * 1024);
    let objects = st["objects"].as_u64().unwrap();
    assert!((8..=15).contains(&objects), "{st}");
    assert_eq!(st["evictions"].as_u64().unwrap(), 40 - objects, "{st}");
    // Most recent still cached, the oldest evicted.
    assert_eq!(get(&gw, "/c/p39").await.cache, "HIT");
    assert_eq!(get(&gw, "/c/p0").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/p1").await.cache, "MISS");
    assert_eq!(b.hits(), 42);

    // Bodies over max_body_bytes are served but not stored.
    b.set_body(Some(&"y".repeat(3000)));
    let gw = one_route(&b, "max_body_bytes: 2kb");
    let g = get(&gw, "/c/big").await;
    assert_eq!(g.body.len(), 3000);
    assert_eq!(get(&gw, "/c/big").await.cache, "MISS");
    assert_eq!(store_status(&gw, "c").await["objects"], 0);
}

fn with_token(cfg: Cfg, token: &str) -> Gateway {
    let yaml = cfg
        .yaml()
        .replacen("admin:\n", &format!("admin:\n  token: {token}\n"), 1);
    Gateway::start_in(&yaml, cfg.dir)
}

async fn purge(gw: &Gateway, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.expect("purge");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn purge_by_path_and_route_needs_the_token() {
    let b = Backend::start("b");
    let cfg = Cfg::new()
        .upstream("u", &[target(&b)], "retries: 0")
        .route_u("c", &cached(""))
        .route_u("d", &cached(""));
    let gw = with_token(cfg, "s3cret");
    for p in ["/c/1", "/c/1?page=2", "/c/2", "/d/1"] {
        assert_eq!(get(&gw, p).await.cache, "MISS");
    }
    let g = get_h(&gw, "/c/1", &[("host", "other.example")]).await;
    assert_eq!(g.cache, "MISS");

    // Without or with a wrong token: 401, nothing purged.
    let body = r#"{"route": "c", "path": "/c/1"}"#;
    assert_eq!(purge(&gw, None, body).await.0, 401);
    assert_eq!(purge(&gw, Some("nope"), body).await.0, 401);
    assert_eq!(get(&gw, "/c/1").await.cache, "HIT");

    // Every variant of the path: both query strings and both hosts.
    let (s, v) = purge(&gw, Some("s3cret"), body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["purged"], 3, "{v}");
    assert_eq!(get(&gw, "/c/1").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/1?page=2").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/2").await.cache, "HIT", "other paths stay");

    // One query only.
    let (s, v) = purge(
        &gw,
        Some("s3cret"),
        r#"{"route": "c", "path": "/c/1?page=2"}"#,
    )
    .await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(get(&gw, "/c/1").await.cache, "HIT");

    // A whole route.
    let (s, v) = purge(&gw, Some("s3cret"), r#"{"route": "c"}"#).await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(get(&gw, "/c/2").await.cache, "MISS");
    assert_eq!(get(&gw, "/d/1").await.cache, "HIT", "other routes stay");

    // Errors.
    let (s, v) = purge(&gw, Some("s3cret"), r#"{"route": "nope"}"#).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (s, _) = purge(&gw, Some("s3cret"), "not json").await;
    assert_eq!(s, 400);
    let (s, _) = purge(&gw, Some("s3cret"), r#"{"route": "c", "path": "no-slash"}"#).await;
    assert_eq!(s, 400);
    let r = gw
        .client
        .get(gw.admin_url("/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
}

#[tokio::test]
async fn cache_survives_a_reload() {
    let b = Backend::start("b");
    let other = Backend::start("o");
    let base = || {
        Cfg::new()
            .upstream("u", &[target(&b)], "retries: 0")
            .route_u("c", &cached("ttl: 1h"))
    };
    let gw = base().start();
    assert_eq!(get(&gw, "/c/x").await.cache, "MISS");
    assert_eq!(get(&gw, "/c/x").await.cache, "HIT");

    // An unrelated change: a new route and upstream.
    gw.write_config(
        base()
            .upstream("o", &[target(&other)], "")
            .route("o", &["/o"], "o", ""),
    );
    let (s, v) = gw.admin_reload().await;
    assert_eq!((s, v["result"].as_str()), (200, Some("success")), "{v}");
    assert_eq!(get(&gw, "/o/x").await.status, 200, "new config in use");
    assert_eq!(
        get(&gw, "/c/x").await.cache,
        "HIT",
        "cache kept over the reload"
    );
    assert_eq!(b.hits(), 1);

    // The route drops proxy-cache: its objects go.
    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&b)], "retries: 0")
            .route_u("c", ""),
    );
    assert_eq!(gw.admin_reload().await.0, 200);
    assert_eq!(store_status(&gw, "c").await["objects"], 0);
    gw.write_config(base());
    assert_eq!(gw.admin_reload().await.0, 200);
    assert_eq!(get(&gw, "/c/x").await.cache, "MISS");
}

#[tokio::test]
async fn global_entry_and_invalid_config() {
    let b = Backend::start("b");
    let gw = Cfg::new()
        .upstream("u", &[target(&b)], "retries: 0")
        .route_u("one", "")
        .route_u("two", "")
        .route_u("off", "plugins:\n  - name: proxy-cache\n    enabled: false")
        .top("plugins:\n  - name: proxy-cache\n    config: { memory: 1mb }\n")
        .start();
    // Same path under two routes: namespaced by route, never shared.
    assert_eq!(get(&gw, "/one/x").await.cache, "MISS");
    assert_eq!(get(&gw, "/two/x").await.cache, "MISS");
    assert_eq!(get(&gw, "/one/x").await.cache, "HIT");
    assert_eq!(get(&gw, "/off/x").await.cache, "");
    let st = store_status(&gw, "*global*").await;
    assert_eq!(st["objects"], 2, "{st}");
    assert_eq!(st["routes"], serde_json::json!(["one", "two"]), "{st}");

    let conf = |config: &str| {
        format!(
            "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:1\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: proxy-cache\n        config: {{ {config} }}\n"
        )
    };
    let (code, err) = Gateway::validate(&conf("ttl: 5"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("routes[0].plugins[0].config.ttl"), "{err}");
    let (code, err) = Gateway::validate(&conf(
        "methods: [GET, POST], status: [200, 206], vary_headers: [\"bad header\"]",
    ));
    assert_eq!(code, 1, "{err}");
    for path in [
        "config.methods[1]",
        "config.status[1]",
        "config.vary_headers[0]",
    ] {
        assert!(
            err.contains(&format!("routes[0].plugins[0].{path}")),
            "{path}: {err}"
        );
    }
    let (code, err) = Gateway::validate(&conf("ttl: 10m, memory: 64mb, stale_if_error: 1h"));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn authenticated_routes_cache_per_consumer_after_auth() {
    let b = Backend::start("b");
    let gw = Cfg::new()
        .upstream("u", &[target(&b)], "retries: 0")
        .route_u("k", "plugins:\n  - name: key-auth\n  - name: proxy-cache")
        .top(
            "consumers:\n  - username: alice\n    keyauth_credentials: [{ key: alice-key-0001 }]\n  - username: bob\n    keyauth_credentials: [{ key: bob-key-0002 }]\n",
        )
        .start();
    let alice = [("x-api-key", "alice-key-0001")];
    let bob = [("x-api-key", "bob-key-0002")];
    let g = get_h(&gw, "/k/me", &alice).await;
    assert_eq!((g.status, g.cache.as_str()), (200, "MISS"));
    assert!(
        g.body.contains("\"x-consumer-username\":\"alice\""),
        "{}",
        g.body
    );
    assert_eq!(get_h(&gw, "/k/me", &alice).await.cache, "HIT");
    // Another consumer never gets alice's object.
    let g = get_h(&gw, "/k/me", &bob).await;
    assert_eq!(g.cache, "MISS");
    assert!(
        g.body.contains("\"x-consumer-username\":\"bob\""),
        "{}",
        g.body
    );
    let g = get_h(&gw, "/k/me", &bob).await;
    assert_eq!(g.cache, "HIT");
    assert!(
        g.body.contains("\"x-consumer-username\":\"bob\""),
        "{}",
        g.body
    );
    // Auth runs before the cache: no key, no cached answer.
    let g = get(&gw, "/k/me").await;
    assert_eq!(g.status, 401);
    assert_eq!(g.cache, "", "refused before the cache phase");
    assert_eq!(b.hits(), 2);
}
