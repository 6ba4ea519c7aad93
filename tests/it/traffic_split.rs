//! `traffic-split` against the real binary with real backends counting hits: the weighted
//! split holds within ±2 % over 2,000 requests, matching rules (header, cookie, query) win,
//! no rule means the route's upstream, retries stay within the chosen upstream, the
//! `upstream_*` metrics, `http_requests_total`'s `service` label and the access log name the
//! upstream that served, proxy-cache keeps each side's answers apart, sticky clients
//! never flip, and unknown upstream names are load errors with path and line.
use crate::common;

use common::*;
use std::time::Duration;

fn plugin(cfg: &str) -> String {
    format!(
        "plugins:\n  - name: traffic-split\n    config:\n{}",
        indent_by(cfg, 6)
    )
}

fn indent_by(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// `n` GETs of `path`, 50 at a time; the backend name of each answer.
async fn backends(gw: &Gateway, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(50);
        left -= batch;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let req = gw.client.get(gw.url(path));
            set.spawn(async move {
                let r = req.send().await.expect("request");
                assert_eq!(r.status().as_u16(), 200);
                backend_of(&r.text().await.unwrap())
            });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.expect("task"));
        }
    }
    out
}

/// Backends `v1` and `v2` behind upstreams `api-v1` and `api-v2`.
fn two_versions() -> (Backend, Backend, Cfg) {
    let v1 = Backend::start("v1");
    let v2 = Backend::start("v2");
    let cfg =
        Cfg::new()
            .upstream("api-v1", &[target(&v1)], "")
            .upstream("api-v2", &[target(&v2)], "");
    (v1, v2, cfg)
}

trait SplitRoutes {
    /// Route `api` on `/api`, to `api-v1` unless traffic-split `config` picks another.
    fn split_api(self, config: &str) -> Cfg;
}

impl SplitRoutes for Cfg {
    fn split_api(self, config: &str) -> Cfg {
        self.route("api", &["/api"], "api-v1", &plugin(config))
    }
}

#[tokio::test]
async fn weighted_split_holds_and_matching_rules_win() {
    let (v1, v2, cfg) = two_versions();
    let gw = start_with_access_log(
        cfg
            .split_api("rules:\n  - match: { headers: { X-Canary: \"1\" } }\n    upstreams: [{ name: api-v2 }]\n  - match: { cookies: { beta: \"yes\" } }\n    upstreams: [{ name: api-v2 }]\n  - match: { query: { v: \"2\" } }\n    upstreams: [{ name: api-v2 }]\n  - upstreams: [{ name: api-v2, weight: 20 }, { name: api-v1, weight: 80 }]")
            .route(
                "other",
                &["/other"],
                "api-v1",
                &plugin("rules:\n  - match: { headers: { X-Canary: \"1\" } }\n    upstreams: [{ name: api-v2 }]"),
            ),
        "access.log",
    );

    let seen = backends(&gw, "/api", 2000).await;
    let to_v2 = seen.iter().filter(|b| *b == "v2").count();
    let to_v1 = seen.iter().filter(|b| *b == "v1").count();
    assert_eq!(to_v1 + to_v2, 2000);
    assert!(
        (360..=440).contains(&to_v2),
        "20 % ± 2 % of 2000 to v2, got {to_v2}"
    );
    assert_eq!(v2.hits(), to_v2, "the backends counted the same");
    assert_eq!(v1.hits(), to_v1);

    // Matching rules: header, cookie, query.
    v1.reset();
    v2.reset();
    for _ in 0..20 {
        let (s, body) = gw
            .send(gw.client.get(gw.url("/api")).header("X-Canary", "1"))
            .await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "v2"));
        let (s, body) = gw
            .send(
                gw.client
                    .get(gw.url("/api"))
                    .header("Cookie", "a=b; beta=yes; c=d"),
            )
            .await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "v2"));
        let (s, body) = gw.send(gw.client.get(gw.url("/api/x?a=1&v=2"))).await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "v2"));
    }
    assert_eq!((v1.hits(), v2.hits()), (0, 60));

    // No rule matches: the route's upstream.
    let seen = backends(&gw, "/other", 40).await;
    assert!(seen.iter().all(|b| b == "v1"), "{seen:?}");

    // The upstream metrics name the upstream that served.
    let m = gw.metrics_text().await;
    let count = |svc: &str| {
        parse_metrics(&m)
            .iter()
            .filter(|s| {
                s.name == "upstream_request_duration_seconds_count"
                    && s.labels.get("service").map(String::as_str) == Some(svc)
            })
            .map(|s| s.value)
            .sum::<f64>()
    };
    assert_eq!(count("api-v2") as usize, to_v2 + 60);
    assert_eq!(count("api-v1") as usize, to_v1 + 40);
    // So does `http_requests_total`'s `service` label, per route.
    let requests = |route: &str, svc: &str| {
        metric(
            &m,
            "http_requests_total",
            &[
                ("route", route),
                ("service", svc),
                ("method", "GET"),
                ("status_code", "200"),
            ],
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!(requests("api", "api-v2"), to_v2 + 60, "{m}");
    assert_eq!(requests("api", "api-v1"), to_v1);
    assert_eq!(requests("other", "api-v1"), 40);
    assert_eq!(requests("other", "api-v2"), 0);

    // So does the access log.
    let log = gw.dir().join("access.log");
    assert!(
        wait_until(Duration::from_secs(5), || file_lines(&log).len() >= 2100).await,
        "access log lines"
    );
    let lines = file_lines(&log);
    let logged_v2 = lines
        .iter()
        .filter(|l| l.contains("\"upstream\":\"api-v2\""))
        .count();
    assert_eq!(logged_v2, to_v2 + 60);
    let line = lines
        .iter()
        .find(|l| l.contains("\"upstream\":\"api-v2\""))
        .unwrap();
    assert!(
        line.contains(&format!("\"target\":\"{}\"", v2.addr())),
        "{line}"
    );
}

/// A reload that drops an upstream drops the route's series counted under it.
#[tokio::test]
async fn a_dropped_upstream_leaves_no_served_by_series() {
    let v1 = Backend::start("v1");
    let v2 = Backend::start("v2");
    let cfg = |with_v2: bool| {
        let c = Cfg::new().upstream("api-v1", &[target(&v1)], "");
        if with_v2 {
            c.upstream("api-v2", &[target(&v2)], "").route(
                "api",
                &["/api"],
                "api-v1",
                &plugin("rules:\n  - upstreams: [{ name: api-v2 }]"),
            )
        } else {
            c.route("api", &["/api"], "api-v1", "")
        }
    };
    let gw = cfg(true).start();
    for _ in 0..5 {
        let (s, body) = gw.get_with("/api/x", &[]).await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "v2"));
    }
    fn labels(svc: &str) -> [(&str, &str); 4] {
        [
            ("route", "api"),
            ("service", svc),
            ("method", "GET"),
            ("status_code", "200"),
        ]
    }
    let served = |m: &str, svc: &str| metric(m, "http_requests_total", &labels(svc));
    assert_eq!(
        gw.metric_reaching("http_requests_total", &labels("api-v2"), 5.0)
            .await,
        Some(5.0)
    );
    gw.write_config(cfg(false));
    let r = gw
        .client
        .post(gw.admin_url("/reload"))
        .send()
        .await
        .expect("POST /reload");
    assert_eq!(r.status().as_u16(), 200);
    let (s, body) = gw.get_with("/api/x", &[]).await;
    assert_eq!((s, backend_of(&body).as_str()), (200, "v1"));
    assert_eq!(
        gw.metric_reaching("http_requests_total", &labels("api-v1"), 1.0)
            .await,
        Some(1.0)
    );
    let m = gw.metrics_text().await;
    assert_eq!(served(&m, "api-v2"), None, "{m}");
}

/// With proxy-cache on the route, each side's answer is cached apart: a v2 client never
/// gets v1's cached object, nor the other way round.
#[tokio::test]
async fn cached_answers_stay_on_their_side() {
    let v1 = Backend::start("v1");
    let v2 = Backend::start("v2");
    let gw = Cfg::new()
        .upstream("api-v1", &[target(&v1)], "")
        .upstream("api-v2", &[target(&v2)], "")
        .route(
            "api",
            &["/api"],
            "api-v1",
            "plugins:\n  - name: proxy-cache\n    config: { ttl: 1m }\n  - name: traffic-split\n    config:\n      rules:\n        - match: { headers: { X-Canary: \"1\" } }\n          upstreams: [{ name: api-v2 }]\n        - match: { headers: { X-Canary: \"0\" } }\n          upstreams: [{ name: api-v1 }]",
        )
        .start();
    let get = |canary: Option<&'static str>| {
        let mut req = gw.client.get(gw.url("/api/item"));
        if let Some(c) = canary {
            req = req.header("X-Canary", c);
        }
        async move {
            let r = req.send().await.expect("request");
            let cache = r
                .headers()
                .get("x-cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            assert_eq!(r.status().as_u16(), 200);
            (backend_of(&r.text().await.unwrap()), cache)
        }
    };
    // v1 (the route's upstream) fills the cache first.
    assert_eq!(get(None).await, ("v1".to_string(), "MISS".to_string()));
    assert_eq!(get(None).await, ("v1".to_string(), "HIT".to_string()));
    // A v2 client gets v2's own answer, then v2's cached one.
    assert_eq!(get(Some("1")).await, ("v2".to_string(), "MISS".to_string()));
    assert_eq!(get(Some("1")).await, ("v2".to_string(), "HIT".to_string()));
    // The route's own upstream chosen by a rule shares the route's objects.
    assert_eq!(get(Some("0")).await, ("v1".to_string(), "HIT".to_string()));
    assert_eq!(get(None).await, ("v1".to_string(), "HIT".to_string()));
    assert_eq!((v1.hits(), v2.hits()), (1, 1));
}

#[tokio::test]
async fn sticky_clients_never_flip() {
    let (_v1, _v2, cfg) = two_versions();
    let gw = cfg
        .split_api("rules:\n  - upstreams: [{ name: api-v2, weight: 50 }, { name: api-v1, weight: 50 }]\nsticky: { cookie: gh_canary, ttl: 1h }")
        .start();

    let mut sides = std::collections::HashMap::new();
    for client in 0..40 {
        // A fresh client: no cookie, gets one.
        let r = gw.client.get(gw.url("/api")).send().await.unwrap();
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(set.starts_with("gh_canary="), "{set}");
        assert!(
            set.contains("Max-Age=3600") && set.contains("HttpOnly"),
            "{set}"
        );
        assert!(
            !set.contains("api-v"),
            "the cookie does not name the upstream: {set}"
        );
        let first = backend_of(&r.text().await.unwrap());
        let cookie = set.split(';').next().unwrap().to_string();
        // With its cookie: always the same side, no new cookie.
        for _ in 0..10 {
            let r = gw
                .get_response("/api", &[("Cookie", &format!("x=1; {cookie}"))])
                .await;
            assert!(r.headers().get("set-cookie").is_none());
            assert_eq!(
                backend_of(&r.text().await.unwrap()),
                first,
                "client {client} flipped"
            );
        }
        *sides.entry(first).or_insert(0) += 1;
    }
    assert_eq!(sides.len(), 2, "both sides got clients: {sides:?}");

    // A forged or stale cookie is ignored and replaced.
    let r = gw
        .get_response("/api", &[("Cookie", "gh_canary=api-v2")])
        .await;
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("gh_canary="));
}

#[tokio::test]
async fn retries_stay_within_the_chosen_upstream() {
    let v1 = Backend::start("v1");
    let bad = Backend::start("bad");
    let good = Backend::start("good");
    bad.set_status(503);
    let gw = Cfg::new()
        .upstream("api-v1", &[target(&v1)], "")
        .upstream("api-v2", &[target(&bad), target(&good)], "retries: 1")
        .split_api("rules:\n  - upstreams: [{ name: api-v2 }]")
        .start();
    for _ in 0..10 {
        let (s, body) = gw.send(gw.client.get(gw.url("/api"))).await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "good"), "{body}");
    }
    assert_eq!(v1.hits(), 0, "a retry never leaves the chosen upstream");
    assert!(bad.hits() > 0);
    // Counted in the logging phase, which may finish just after the client got its answer.
    let retries = gw
        .metric_reaching(
            "upstream_retries_total",
            &[("service", "api-v2")],
            bad.hits() as f64,
        )
        .await;
    assert_eq!(retries, Some(bad.hits() as f64));
}

#[test]
fn unknown_upstreams_and_bad_settings_are_load_errors_with_path_and_line() {
    let cases = [
        (
            "rules:\n  - upstreams: [{ name: api-v3 }]",
            "config.rules[0].upstreams[0].name",
            "unknown upstream \"api-v3\"",
            "line 12",
        ),
        (
            "rules:\n  - upstreams: [{ name: u, weight: 0 }]",
            "config.rules[0].upstreams",
            "weight above 0",
            "line 12",
        ),
        (
            "rules:\n  - upstreams: []",
            "config.rules[0].upstreams",
            "needs 1 to 255",
            "line 12",
        ),
        ("rules: []", "config.rules", "at least one rule", "line 11"),
        (
            "rules:\n  - upstreams: [{ name: u }]\nsticky: { cookie: \"a b\" }",
            "config.sticky.cookie",
            "invalid cookie name",
            "line 13",
        ),
        (
            "rules:\n  - match: { head: { a: b } }\n    upstreams: [{ name: u }]",
            "config.rules[0].match",
            "head",
            "line 12",
        ),
    ];
    for (cfg, path, msg, line) in cases {
        let yaml = format!(
            "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: traffic-split\n        config:\n{}",
            indent_by(cfg, 10)
        );
        let (code, out) = Gateway::validate(&yaml);
        assert_ne!(code, 0, "{cfg}: {out}");
        assert!(
            out.contains(&format!("routes[0].plugins[0].{path}")) && out.contains(msg),
            "{cfg}: {out}"
        );
        assert!(out.contains(line), "{cfg}: {out}");
    }
}
