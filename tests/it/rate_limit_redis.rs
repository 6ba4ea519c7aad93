//! `rate-limiting` with `policy: redis` against a real `redis-server` that each test starts
//! on a free port (skipped with a notice when redis-server is not installed; a failure when
//! `CI=true`): two gateways share one limit; Redis stopped or frozen mid-test lets traffic
//! through with `fault_tolerant` (503 without it); a restarted Redis is used again.
use crate::common;

use common::*;
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret-redis-pw";

/// A password-protected redis-server, or None (after a notice) when it is not installed.
fn start_redis() -> Option<Redis> {
    redis_installed().then(|| Redis::builder().password(PASSWORD).spawn())
}

fn redis_plugin(url: &str, extra: &str) -> String {
    format!(
        "plugins:\n  - name: rate-limiting\n    config: {{ minute: MINUTE, limit_by: ip, policy: redis, redis: {{ url: \"{url}\", timeout: 100ms }}{extra} }}"
    )
}

async fn get(gw: &Gateway, path: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()))
}

#[tokio::test]
async fn two_gateways_share_one_limit() {
    let Some(redis) = start_redis() else { return };
    let a = Backend::start("a");
    let route = redis_plugin(&redis.url(), "").replace("MINUTE", "6");
    let gw1 = one_route(&a, "/r", &route);
    let gw2 = one_route(&a, "/r", &route);

    let mut ok = 0;
    let mut remaining = Vec::new();
    for i in 0..12 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        let r = get(gw, "/r").await;
        match r.status().as_u16() {
            200 => {
                ok += 1;
                remaining.push(
                    r.headers()["x-ratelimit-remaining"]
                        .to_str()
                        .unwrap()
                        .to_string(),
                );
            }
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                assert_eq!(r.headers()["x-ratelimit-limit"], "6");
            }
            s => panic!("status {s}: {}", r.text().await.unwrap_or_default()),
        }
    }
    assert_eq!(ok, 6, "one combined budget of 6 across both nodes");
    assert_eq!(remaining, ["5", "4", "3", "2", "1", "0"]);
    assert_eq!(a.hits(), 6);
    assert!(
        !gw1.stderr().contains(PASSWORD) && !gw2.stderr().contains(PASSWORD),
        "the Redis password never reaches the logs"
    );
}

#[tokio::test]
async fn redis_down_or_slow_fault_tolerant_passes_strict_refuses_and_recovery_counts_again() {
    let Some(mut redis) = start_redis() else {
        return;
    };
    let a = Backend::start("a");
    let url = redis.url();
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route(
            "tolerant",
            &["/t"],
            "u",
            &redis_plugin(&url, "").replace("MINUTE", "3"),
        )
        .route(
            "strict",
            &["/s"],
            "u",
            &redis_plugin(&url, ", fault_tolerant: false").replace("MINUTE", "1000"),
        )
        .start();

    let statuses = |path: &'static str, n: usize| {
        let gw = &gw;
        async move {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(get(gw, path).await.status().as_u16());
            }
            v
        }
    };
    assert_eq!(statuses("/t", 5).await, [200, 200, 200, 429, 429]);
    assert_eq!(statuses("/s", 2).await, [200, 200]);
    assert_eq!(
        gw.series_value("rate_limit_backend_errors_total").await,
        0.0
    );

    // Redis stops: the tolerant route lets everything through (no headers: no counts),
    // the strict one answers 503.
    redis.stop();
    for _ in 0..4 {
        let r = get(&gw, "/t").await;
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("x-ratelimit-remaining"));
    }
    let r = get(&gw, "/s").await;
    assert_eq!(r.status(), 503);
    assert_error_body(&r.text().await.unwrap(), "service_unavailable");
    assert!(gw.series_value("rate_limit_backend_errors_total").await >= 5.0);

    // Redis comes back (empty: --save ''): counting resumes by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gw, "/s").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "no reconnect within 10 s\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(statuses("/t", 5).await, [200, 200, 200, 429, 429]);

    // Redis frozen (accepts, never answers): each request waits at most the timeout.
    redis.freeze(true);
    let started = Instant::now();
    let r = get(&gw, "/t").await;
    assert_eq!(r.status(), 200, "fault tolerant: through without counting");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&gw, "/s").await.status(), 503);
    redis.freeze(false);

    let log = gw.stderr();
    assert!(log.contains("redis unavailable"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the Redis password never reaches the logs"
    );
}
