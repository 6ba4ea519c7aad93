//! Resilience: the route's total timeout across retries (`routes[].timeout`), retry back-off
//! with jitter (`upstreams[].retry_backoff`) and the retry budget (`upstreams[].retry_budget`),
//! against real upstreams, with upstream-side attempt counts and the metrics.
use crate::common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn hits(backends: &[&Backend]) -> usize {
    backends.iter().map(|b| b.hits()).sum()
}

async fn metric_value(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gw.metrics_text().await;
    metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

#[tokio::test]
async fn total_timeout_bounds_retries_of_slow_targets() {
    // Three targets that never answer in time; each attempt's own read timeout is 2 s and up
    // to two retries are allowed, so without a route timeout the client waits 6 s; with the
    // route's 2.5 s but uncapped attempts it would still wait 4 s (the second attempt's full
    // read timeout).
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    for x in [&a, &b, &c] {
        x.set_delay(Duration::from_secs(8));
    }
    let gw = Cfg::new()
        .upstream(
            "slow",
            &[target(&a), target(&b), target(&c)],
            "timeouts: { connect: 1s, read: 2s, write: 1s }\nretries: 2",
        )
        .route("r", &["/t"], "slow", "timeout: 2500ms")
        .start();

    let t0 = Instant::now();
    let (status, body) = gw.send(gw.client.get(gw.url("/t/1"))).await;
    let took = t0.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_error_body(&body, "gateway_timeout");
    assert!(
        took >= Duration::from_millis(2300) && took < Duration::from_millis(3500),
        "answered after {took:?}: the route timeout is 2.5 s"
    );
    // Attempt 1 used its whole 2 s read timeout, attempt 2 got the 0.5 s left, no third.
    assert!(
        wait_until(Duration::from_secs(2), || hits(&[&a, &b, &c]) == 2).await,
        "upstream attempts: {}",
        hits(&[&a, &b, &c])
    );
    assert_eq!(
        metric_value(&gw, "route_timeouts_total", &[("route", "r")]).await,
        1.0
    );
    // The third attempt was wanted by the retry policy and refused for the deadline.
    assert_eq!(
        metric_value(
            &gw,
            "upstream_retries_skipped_total",
            &[("service", "slow"), ("reason", "deadline")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn total_timeout_shorter_than_one_attempt_and_fast_requests_unaffected() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_delay(Duration::from_secs(3));
    b.set_delay(Duration::from_secs(3));
    let gw = Cfg::new()
        .upstream("u", &[target(&a), target(&b)], "retries: 3")
        .route("r", &["/t"], "u", "timeout: 400ms")
        .route_u("plain", "")
        .start();

    let t0 = Instant::now();
    let (status, body) = gw.send(gw.client.get(gw.url("/t"))).await;
    let took = t0.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_error_body(&body, "gateway_timeout");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(hits(&[&a, &b]), 1, "no retry after the deadline");

    // Fast answers pass through the same route untouched.
    a.set_delay(Duration::ZERO);
    b.set_delay(Duration::ZERO);
    for _ in 0..4 {
        let (status, _) = gw.send(gw.client.get(gw.url("/t"))).await;
        assert_eq!(status, 200);
    }
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "route_timeouts_total", &[("route", "r")]),
        Some(1.0)
    );
    // Routes without a timeout have no series.
    assert_eq!(
        metric(&text, "route_timeouts_total", &[("route", "plain")]),
        None
    );
}

/// A raw upstream: answers every request with a 200 head announcing 1000 bytes, then sends
/// 10 bytes every 150 ms (well inside any read timeout), forever.
fn dripping_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
                );
                for _ in 0..100 {
                    if s.write_all(b"0123456789").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn total_timeout_cuts_a_body_still_streaming() {
    let addr = dripping_upstream();
    let gw = Cfg::new()
        .upstream(
            "drip",
            &[target_addr(&addr)],
            "timeouts: { connect: 1s, read: 5s, write: 5s }",
        )
        .route("r", &["/"], "drip", "timeout: 1s")
        .start();

    let t0 = Instant::now();
    let resp = gw.get("/stream").await;
    assert_eq!(resp.status().as_u16(), 200, "the head arrived in time");
    let body = resp.bytes().await;
    let took = t0.elapsed();
    assert!(
        body.is_err(),
        "the body (15 s long) must be cut, got {} bytes",
        body.map(|b| b.len()).unwrap_or(0)
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "cut after {took:?}: the route timeout is 1 s"
    );
    assert_eq!(
        metric_value(&gw, "route_timeouts_total", &[("route", "r")]).await,
        1.0
    );
}

#[tokio::test]
async fn backoff_spaces_retries() {
    let a = Backend::start("a");
    a.set_status(503);
    let gw = one_upstream(
        &[target(&a)],
        "retries: 1\nretry_backoff: { base: 200ms, max: 200ms }",
        "/b",
        "",
    );

    let mut total = Duration::ZERO;
    for _ in 0..10 {
        let t0 = Instant::now();
        let (status, _) = gw.send(gw.client.get(gw.url("/b"))).await;
        let took = t0.elapsed();
        assert_eq!(
            status, 503,
            "the last attempt's upstream 503 passes through"
        );
        assert!(
            took < Duration::from_millis(1000),
            "one wait is at most 200 ms: {took:?}"
        );
        total += took;
    }
    assert_eq!(a.hits(), 20, "every request was retried once");
    // Full jitter: each wait is uniform in [0, 200 ms]; ten of them sum to ~1 s, and below
    // 300 ms with a probability of about 1e-5. Without back-off the ten take a few ms.
    assert!(
        total >= Duration::from_millis(300),
        "ten retries waited {total:?} in all"
    );
    // Retries are counted in the logging phase, after the answer went out: poll briefly.
    let mut text = gw.metrics_text().await;
    for _ in 0..40 {
        if metric(&text, "upstream_retries_total", &[("service", "u")]) == Some(10.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = gw.metrics_text().await;
    }
    assert_eq!(
        metric(&text, "upstream_retry_backoffs_total", &[("service", "u")]),
        Some(10.0)
    );
    let waited = metric(
        &text,
        "upstream_retry_backoff_seconds_total",
        &[("service", "u")],
    )
    .expect("backoff seconds");
    assert!(
        waited >= 0.3 && waited <= total.as_secs_f64(),
        "waited {waited} s of {total:?}"
    );
    assert_eq!(
        metric(&text, "upstream_retries_total", &[("service", "u")]),
        Some(10.0)
    );
}

#[tokio::test]
async fn backoff_never_runs_past_the_route_timeout() {
    let a = Backend::start("a");
    a.set_status(503);
    let gw = one_upstream(
        &[target(&a)],
        "retries: 2\nretry_backoff: { base: 60s, max: 60s }",
        "/b",
        "timeout: 200ms",
    );

    // A wait drawn from [0, 60 s] fits in the 200 ms left with a chance of 1 in 300: as a
    // rule there is no retry at all, and the client gets the upstream's 503 at once.
    let mut retried = 0;
    for _ in 0..5 {
        let before = a.hits();
        let t0 = Instant::now();
        let (status, _) = gw.send(gw.client.get(gw.url("/b"))).await;
        assert_eq!(status, 503);
        assert!(
            t0.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t0.elapsed()
        );
        retried += a.hits() - before - 1;
    }
    let skipped = metric_value(
        &gw,
        "upstream_retries_skipped_total",
        &[("service", "u"), ("reason", "deadline")],
    )
    .await;
    assert!(skipped >= 4.0, "skipped for the deadline: {skipped}");
    assert!(retried <= 1, "retries that fit: {retried}");
}

#[tokio::test]
async fn budget_caps_retries_during_an_outage() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(503);
    b.set_status(503);
    // 20% of requests plus 1 a second over 10 s: 0.2 x 50 + 10 = 20 retries for 50 requests.
    let gw = one_upstream(
        &[target(&a), target(&b)],
        "retries: 3\nretry_budget: { ratio: 0.2, min_retries_per_second: 1, window: 10s }",
        "/o",
        "",
    );

    let n = 50;
    for i in 0..n {
        let (status, body) = gw.send(gw.client.get(gw.url(&format!("/o/{i}")))).await;
        assert_eq!(status, 503, "the upstream's own 503, as without retries");
        assert!(
            backend_of(&body) == "a" || backend_of(&body) == "b",
            "{body}"
        );
    }
    let attempts = hits(&[&a, &b]);
    let max = n + n / 5 + 10;
    assert!(
        attempts <= max && attempts >= max - 5,
        "upstream attempts {attempts}: {n} requests may add at most {} retries (4x would be {})",
        max - n,
        4 * n
    );
    let text = gw.metrics_text().await;
    let refused = metric(
        &text,
        "upstream_retries_skipped_total",
        &[("service", "u"), ("reason", "budget")],
    )
    .unwrap();
    assert!(refused >= 30.0, "retries refused by the budget: {refused}");
    assert_eq!(
        metric(&text, "upstream_retries_total", &[("service", "u")]),
        Some((attempts - n) as f64)
    );

    // The same outage with the budget off: every request makes all its attempts.
    let (a2, b2) = (Backend::start("a2"), Backend::start("b2"));
    a2.set_status(503);
    b2.set_status(503);
    let gw2 = one_upstream(
        &[target(&a2), target(&b2)],
        "retries: 3\nretry_budget: { enabled: false }",
        "/o",
        "",
    );
    for _ in 0..10 {
        let (status, _) = gw2.send(gw2.client.get(gw2.url("/o"))).await;
        assert_eq!(status, 503);
    }
    assert_eq!(hits(&[&a2, &b2]), 40);
}

#[tokio::test]
async fn budget_is_kept_across_reloads() {
    let a = Backend::start("a");
    a.set_status(502);
    let upstream_extra =
        "retries: 1\nretry_budget: { ratio: 0, min_retries_per_second: 1, window: 10s }";
    let gw = one_upstream(&[target(&a)], upstream_extra, "/k", "");
    // A reserve of 10 retries a window, no ratio: 15 requests make 25 attempts.
    for _ in 0..15 {
        let (status, _) = gw.send(gw.client.get(gw.url("/k"))).await;
        assert_eq!(status, 502);
    }
    assert_eq!(a.hits(), 25);

    // Another route added, the upstream kept: its spent budget stays spent.
    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&a)], upstream_extra)
            .route("r", &["/k"], "u", "")
            .route("r2", &["/k2"], "u", ""),
    );
    let (status, body) = gw.admin_reload().await;
    assert_eq!(status, 200, "{body}");
    assert!(gw.wait_version(2, Duration::from_secs(5)).await);
    for _ in 0..5 {
        let (status, _) = gw.send(gw.client.get(gw.url("/k2"))).await;
        assert_eq!(status, 502);
    }
    assert_eq!(
        a.hits(),
        30,
        "no retry: the budget was carried over, not refilled"
    );
    assert_eq!(
        metric_value(
            &gw,
            "upstream_retries_skipped_total",
            &[("service", "u"), ("reason", "budget")]
        )
        .await,
        10.0,
        "counted before and after the reload"
    );
}

#[tokio::test]
async fn metrics_exist_from_startup() {
    let a = Backend::start("a");
    let gw = one_route(&a, "/", "timeout: 5s");
    let text = gw.metrics_text().await;
    promtool_check(&text);
    for reason in ["budget", "deadline"] {
        assert_eq!(
            metric(
                &text,
                "upstream_retries_skipped_total",
                &[("service", "u"), ("reason", reason)]
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        metric(&text, "upstream_retry_backoffs_total", &[("service", "u")]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "upstream_retry_backoff_seconds_total",
            &[("service", "u")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "route_timeouts_total", &[("route", "r")]),
        Some(0.0)
    );
}
