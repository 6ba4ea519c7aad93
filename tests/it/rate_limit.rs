//! `rate-limiting` with `policy: local` against the real binary: exact counts per window and
//! key, the client headers, keys by header / IP / consumer tier / global, token bucket
//! bursts, spoofed X-Forwarded-For, and counters that survive a reload.
use crate::common;

use common::*;
use reqwest::header::HeaderMap;
use std::time::Duration;

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn h(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn num(&self, name: &str) -> u64 {
        self.h(name)
            .unwrap_or_else(|| panic!("missing {name} in {:?}", self.headers))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {:?}", self.h(name)))
    }
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = gw.client.get(gw.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

/// `rate_limit_hits_total` of `client` on route `r`: its refused requests.
async fn refused(gw: &Gateway, client: &str) -> f64 {
    gw.series_value(&format!(
        "rate_limit_hits_total{{client_id=\"{client}\",route=\"r\"}}"
    ))
    .await
}

/// How many of the GETs (path, X-Forwarded-For) were let through.
async fn allowed(gw: &Gateway, requests: impl Iterator<Item = (&str, String)>) -> usize {
    let mut ok = 0;
    for (path, client) in requests {
        if call(gw, path, &[("x-forwarded-for", &client)]).await.status == 200 {
            ok += 1;
        }
    }
    ok
}

fn plugin(cfg: &str) -> String {
    format!("plugins:\n  - name: rate-limiting\n    config: {cfg}")
}

#[tokio::test]
async fn exact_count_per_minute_then_429_with_headers() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("r", &plugin("{ minute: 5, limit_by: ip }"))
        .route_u("free", "")
        .start();

    for i in 0..5u64 {
        let r = call(&gw, "/r", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.num("x-ratelimit-limit"), 5);
        assert_eq!(r.num("x-ratelimit-remaining"), 4 - i);
        let reset = r.num("x-ratelimit-reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
        assert_eq!(r.h("ratelimit-policy"), Some("5;w=60"));
    }
    let r = call(&gw, "/r", &[]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_error_body(&r.body, "rate_limit_exceeded");
    let retry = r.num("retry-after");
    assert!((1..=120).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    assert_eq!(r.num("x-ratelimit-limit"), 5);
    assert_eq!(r.num("x-ratelimit-reset"), retry);
    // Refusals are not counted upstream, and do not consume budget.
    assert_eq!(call(&gw, "/r", &[]).await.status, 429);
    assert_eq!(a.hits(), 5, "refused requests never reach the upstream");
    // A route without the plugin is untouched and has no headers.
    let r = call(&gw, "/free", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.h("x-ratelimit-limit").is_none());
    assert_eq!(refused(&gw, "anonymous").await, 2.0);
}

#[tokio::test]
async fn separate_header_keys_are_independent_and_headers_can_be_hidden() {
    let (_a, cfg) = upstream_u();
    let gw = cfg
        .route_u(
            "r",
            &plugin("{ minute: 2, limit_by: header, header_name: X-Tenant }"),
        )
        .route_u(
            "quiet",
            &plugin("{ minute: 1, limit_by: ip, hide_client_headers: true }"),
        )
        .start();

    for tenant in ["acme", "globex", "initech"] {
        for _ in 0..2 {
            let r = call(&gw, "/r", &[("x-tenant", tenant)]).await;
            assert_eq!(r.status, 200, "{tenant}");
        }
        let r = call(&gw, "/r", &[("x-tenant", tenant)]).await;
        assert_eq!(r.status, 429, "{tenant} third request");
    }
    // Without the header: the client IP is the key, a budget of its own.
    assert_eq!(call(&gw, "/r", &[]).await.status, 200);
    assert_eq!(call(&gw, "/r", &[]).await.status, 200);
    assert_eq!(call(&gw, "/r", &[]).await.status, 429);

    let r = call(&gw, "/quiet", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.h("x-ratelimit-limit").is_none() && r.h("ratelimit-policy").is_none());
    let r = call(&gw, "/quiet", &[]).await;
    assert_eq!(r.status, 429);
    assert!(r.h("retry-after").is_some(), "Retry-After even when hidden");
    assert!(r.h("x-ratelimit-remaining").is_none());
}

#[tokio::test]
async fn spoofed_forwarded_for_from_untrusted_peer_is_one_key() {
    let a = Backend::start("a");
    let route = plugin("{ minute: 3, limit_by: ip }");
    // No trusted proxies: X-Forwarded-For is ignored, the peer (127.0.0.1) is the key.
    let gw = one_route(&a, "/r", &route);
    let ok = allowed(&gw, (0..8).map(|i| ("/r", format!("203.0.113.{i}")))).await;
    assert_eq!(ok, 3, "every spoofed address counts as the real peer");

    // Behind a trusted proxy the forwarded address is the client: separate keys.
    let trusted = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&a)], "")
        .route_u("r", &route)
        .start();
    let clients = (0..8).map(|i| ("/r", format!("203.0.113.{i}")));
    let ok = allowed(&trusted, clients).await;
    assert_eq!(ok, 8, "one request per distinct forwarded client");
}

#[tokio::test]
async fn consumer_tiers_apply_after_key_auth() {
    let (_a, cfg) = upstream_u();
    let gw = cfg
        .route_u("r", "plugins:\n  - name: key-auth\n  - name: rate-limiting\n    config: { minute: 2, limit_by: consumer }")
        .route_u("open", &plugin("{ minute: 2, limit_by: consumer }"))
        .top(
            "tiers:\n  gold: { minute: 4, hour: 100 }\nconsumers:\n  - username: goldie\n    tier: gold\n    keyauth_credentials: [{ key: gold-key-123 }]\n  - username: plain\n    keyauth_credentials: [{ key: plain-key-456 }]\n",
        )
        .start();

    let count = |key: &'static str| {
        let gw = &gw;
        async move {
            let mut ok = 0;
            let mut last = None;
            for _ in 0..6 {
                let r = call(gw, "/r", &[("x-api-key", key)]).await;
                if r.status == 200 {
                    ok += 1;
                    last = Some((
                        r.num("x-ratelimit-limit"),
                        r.h("ratelimit-policy").map(str::to_string),
                    ));
                } else {
                    assert_eq!(r.status, 429, "{}", r.body);
                }
            }
            (ok, last)
        }
    };
    let (gold, gold_last) = count("gold-key-123").await;
    assert_eq!(gold, 4, "tier gold: minute 4 replaces the plugin's 2");
    assert_eq!(gold_last, Some((4, Some("4;w=60".to_string()))));
    let (plain, plain_last) = count("plain-key-456").await;
    assert_eq!(plain, 2, "no tier: the plugin's minute 2");
    assert_eq!(plain_last, Some((2, Some("2;w=60".to_string()))));
    // Anonymous requests (a route without key-auth) count by IP.
    assert_eq!(call(&gw, "/open", &[]).await.status, 200);
    assert_eq!(call(&gw, "/open", &[]).await.status, 200);
    assert_eq!(call(&gw, "/open", &[]).await.status, 429);

    assert_eq!(refused(&gw, "goldie").await, 2.0);
    assert_eq!(refused(&gw, "plain").await, 4.0);
}

#[tokio::test]
async fn token_bucket_allows_the_burst_then_the_rate() {
    let a = Backend::start("a");
    let gw = one_route(
        &a,
        "/r",
        &plugin("{ algorithm: token_bucket, rate: 2, burst: 4, limit_by: ip }"),
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(&gw, "/r", &[]).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "burst of 4");
    let r = call(&gw, "/r", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.num("retry-after"), 1);
    assert_eq!(r.h("ratelimit-policy"), Some("4;w=2"));
    // Refill: one token every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(call(&gw, "/r", &[]).await.status, 200);
    assert_eq!(call(&gw, "/r", &[]).await.status, 429);
}

#[tokio::test]
async fn global_limit_is_one_budget_for_every_client_and_route() {
    let a = Backend::start("a");
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&a)], "")
        .route_u("r1", "")
        .route_u("r2", "")
        .top("plugins:\n  - name: rate-limiting\n    config: { minute: 5, limit_by: global }\n")
        .start();
    let requests = (0..12).map(|i| {
        let path = if i % 2 == 0 { "/r1" } else { "/r2" };
        (path, format!("198.51.100.{i}"))
    });
    let together = "5 per minute for everyone together";
    assert_eq!(allowed(&gw, requests).await, 5, "{together}");
}

#[tokio::test]
async fn limit_by_route_on_a_global_plugin_counts_each_route() {
    let (_a, cfg) = upstream_u();
    let gw = cfg
        .route_u("r1", "")
        .route_u("r2", "")
        .top("plugins:\n  - name: rate-limiting\n    config: { minute: 2, limit_by: route }\n")
        .start();
    for path in ["/r1", "/r2"] {
        assert_eq!(call(&gw, path, &[]).await.status, 200);
        assert_eq!(call(&gw, path, &[]).await.status, 200);
        assert_eq!(call(&gw, path, &[]).await.status, 429, "{path}");
    }
}

#[tokio::test]
async fn counters_survive_a_reload_that_keeps_the_limit() {
    let (_a, base) = upstream_u();
    let cfg = base
        .route_u("r", &plugin("{ minute: 4, limit_by: ip }"))
        .route_u("other", "");
    let before = cfg.yaml();
    let gw = cfg.start();
    for _ in 0..3 {
        assert_eq!(call(&gw, "/r", &[]).await.status, 200);
    }
    // An unrelated change: a new route in front of ours, another one edited.
    let after = before
        .replace(
            "routes:\n",
            "routes:\n  - name: added\n    paths: [\"/added\"]\n    upstream: u\n",
        )
        .replace("paths: [\"/other\"]", "paths: [\"/other\", \"/other2\"]");
    assert_ne!(before, after);
    std::fs::write(gw.dir().join("gatehouse.yaml"), &after).unwrap();
    let (status, body) = gw.admin_reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        call(&gw, "/added", &[]).await.status,
        200,
        "new config in use"
    );

    let r = call(&gw, "/r", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.num("x-ratelimit-remaining"),
        0,
        "the 4th request of the minute"
    );
    assert_eq!(call(&gw, "/r", &[]).await.status, 429);

    // Changing the limit itself starts afresh.
    let changed = after.replace("{ minute: 4, limit_by: ip }", "{ minute: 2, limit_by: ip }");
    std::fs::write(gw.dir().join("gatehouse.yaml"), &changed).unwrap();
    let (status, body) = gw.admin_reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&gw, "/r", &[]).await.status, 200);
    assert_eq!(call(&gw, "/r", &[]).await.status, 200);
    assert_eq!(call(&gw, "/r", &[]).await.status, 429);
}

#[test]
fn invalid_configs_are_refused_with_the_key_path() {
    let (code, err) = Gateway::validate(
        "server: { listen: [\"127.0.0.1:1\"] }\nupstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: rate-limiting\n        config: { algorithm: token_bucket, burst: 3 }\n      - name: concurrency-limiting\n        config: { max: 0 }\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "routes[0].plugins[0].config.rate: algorithm: token_bucket needs a rate (line 11)"
        ),
        "{err}"
    );
    assert!(
        err.contains("routes[0].plugins[1].config.max: must be at least 1 (line 13)"),
        "{err}"
    );
}
