//! `concurrency-limiting` against the real binary: N+1 concurrent requests to a slow
//! upstream give exactly one 429, and the slot comes back on every path (answered, upstream
//! failure, client gone).
use crate::common;

use common::*;
use std::time::{Duration, Instant};

fn plugin(cfg: &str) -> String {
    format!("plugins:\n  - name: concurrency-limiting\n    config: {cfg}")
}

async fn status(gw: &Gateway, path: &str) -> (u16, String) {
    gw.send(gw.client.get(gw.url(path))).await
}

#[tokio::test]
async fn one_over_max_in_flight_is_refused_then_slots_come_back() {
    let a = Backend::start("a");
    a.set_delay(Duration::from_millis(800));
    let gw = one_route(&a, "/r", &plugin("{ max: 3 }"));

    let started = Instant::now();
    let reqs = (0..4).map(|_| status(&gw, "/r"));
    let results = futures_join(reqs).await;
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert_eq!(ok, 3, "{results:?}");
    assert_error_body(&refused[0].1, "too_many_concurrent_requests");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(a.max_in_flight(), 3, "the upstream never saw more than max");

    // Every slot was released: max requests in flight again, all accepted.
    a.reset();
    let results = futures_join((0..3).map(|_| status(&gw, "/r"))).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(a.max_in_flight(), 3);
}

#[tokio::test]
async fn slots_are_released_on_upstream_errors_and_client_aborts() {
    let a = Backend::start("a");
    let dead = dead_addr();
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .upstream("gone", &[target_addr(&dead)], "retries: 0")
        .route_u("r", &plugin("{ max: 1, limit_by: route }"))
        .route("g", &["/g"], "gone", &plugin("{ max: 1, limit_by: route }"))
        .start();

    // Upstream refused: 502 each time, never 429 (the slot is freed after each).
    for _ in 0..3 {
        let (s, body) = status(&gw, "/g").await;
        assert_eq!(s, 502, "{body}");
    }

    // The client goes away while the upstream is slow: the slot is freed when the gateway
    // notices, not when the upstream finally answers.
    a.set_delay(Duration::from_millis(3000));
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(impatient.get(gw.url("/r")).send().await.is_err());
    a.set_delay(Duration::from_millis(0));
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let (s, body) = status(&gw, "/r").await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 429, "{body}");
        assert!(
            Instant::now() < deadline,
            "slot still held 1.5 s after the client left (upstream answers at 3 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn per_ip_keys_are_independent() {
    let a = Backend::start("a");
    a.set_delay(Duration::from_millis(600));
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&a)], "")
        .route_u("r", &plugin("{ max: 1, limit_by: ip }"))
        .start();
    let ask = |ip: &'static str| {
        let gw = &gw;
        async move { gw.get_with("/r", &[("x-forwarded-for", ip)]).await.0 }
    };
    let (x1, x2, y) = tokio::join!(ask("192.0.2.1"), ask("192.0.2.1"), ask("192.0.2.2"));
    let mut xs = [x1, x2];
    xs.sort();
    assert_eq!(xs, [200, 429], "same client: one in flight");
    assert_eq!(y, 200, "another client has its own slot");
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out = Vec::new();
    let mut pending: Vec<_> = futs.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in results {
        out.extend(r);
    }
    out
}
