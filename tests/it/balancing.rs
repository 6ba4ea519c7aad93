//! Load-balancing algorithms and backup targets.
use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

/// `n` sequential GETs; the backend name of each answer, in order.
async fn picks(gw: &Gateway, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, body) = gw.send(gw.client.get(gw.url(path))).await;
        assert_eq!(s, 200, "{body}");
        out.push(backend_of(&body));
    }
    out
}

fn count(picks: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(p.clone()).or_insert(0) += 1;
    }
    m
}

fn longest_run(picks: &[String]) -> usize {
    let mut best = 0;
    let mut run = 0;
    for (i, p) in picks.iter().enumerate() {
        run = if i > 0 && picks[i - 1] == *p {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

#[tokio::test]
async fn weighted_three_to_one_is_smooth() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(
        &[target_w(&a, 3), target_w(&b, 1)],
        "balance: weighted",
        "/lb",
        "",
    );

    let first = picks(&gw, "/lb/w", 4).await;
    let c = count(&first);
    assert_eq!(
        (c.get("a").copied(), c.get("b").copied()),
        (Some(3), Some(1)),
        "first 4 picks of 3:1 must be three a and one b: {first:?}"
    );
    assert!(
        longest_run(&first) <= 2,
        "smooth weighted interleaves (a a b a), got {first:?}"
    );

    let rest = picks(&gw, "/lb/w", 396).await;
    let c = count(&rest);
    let na = c.get("a").copied().unwrap_or(0) + 3;
    let nb = c.get("b").copied().unwrap_or(0) + 1;
    assert!(
        (270..=330).contains(&na) && (70..=130).contains(&nb),
        "3:1 over 400 requests: a={na} b={nb}"
    );
    assert_eq!(a.hits() + b.hits(), 400);
}

#[tokio::test]
async fn round_robin_even_over_two_targets() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(&[target(&a), target(&b)], "balance: round_robin", "/lb", "");

    let p = picks(&gw, "/lb/rr", 100).await;
    let c = count(&p);
    for name in ["a", "b"] {
        let n = c.get(name).copied().unwrap_or(0);
        assert!((45..=55).contains(&n), "{name} got {n} of 100: {c:?}");
    }
    assert_eq!(a.hits() + b.hits(), 100);
}

#[tokio::test]
async fn round_robin_is_default_and_even_over_three_targets() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c3 = Backend::start("c");
    let gw = one_upstream(&[target(&a), target(&b), target(&c3)], "", "/lb", "");

    let p = picks(&gw, "/lb/rr", 150).await;
    let c = count(&p);
    for name in ["a", "b", "c"] {
        let n = c.get(name).copied().unwrap_or(0);
        assert!((45..=55).contains(&n), "{name} got {n} of 150: {c:?}");
    }
    // round robin never picks the same target twice in a row with 3 healthy targets
    assert_eq!(longest_run(&p), 1, "{p:?}");
}

/// GET as client `ip` (X-Forwarded-For from a trusted peer); the backend name.
async fn get_as(gw: &Gateway, ip: String) -> String {
    let req = gw
        .client
        .get(gw.url("/lb/ip"))
        .header("X-Forwarded-For", ip);
    let (s, body) = gw.send(req).await;
    assert_eq!(s, 200, "{body}");
    backend_of(&body)
}

#[tokio::test]
async fn ip_hash_is_sticky_and_spreads() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c3 = Backend::start("c");
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream(
            "u",
            &[target(&a), target(&b), target(&c3)],
            "balance: ip_hash",
        )
        .route("r", &["/lb"], "u", "")
        .start();

    // one client: always the same target
    let mut seen = HashSet::new();
    for _ in 0..20 {
        seen.insert(get_as(&gw, "198.51.100.23".to_string()).await);
    }
    assert_eq!(seen.len(), 1, "same client ip hit {seen:?}");

    // many clients: each sticky, together spread over more than one target
    let mut used = HashSet::new();
    for i in 0..30 {
        let ip = format!("10.{}.{}.7", i * 7 % 256, i);
        let first = get_as(&gw, ip.clone()).await;
        for _ in 0..2 {
            assert_eq!(get_as(&gw, ip.clone()).await, first, "client {ip} moved");
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "30 clients all hashed to {used:?}");
}

#[tokio::test]
async fn least_conn_prefers_idle_target() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_delay(Duration::from_millis(1500));
    let gw = one_upstream(&[target(&a), target(&b)], "balance: least_conn", "/lb", "");

    // Fire slow requests in the background until `a` holds at least one in flight.
    let mut background = Vec::new();
    for _ in 0..3 {
        let c = gw.client.clone();
        let url = gw.url("/lb/slow");
        background.push(tokio::spawn(async move { c.get(url).send().await }));
    }
    // All three must have arrived somewhere before the counts are taken: one still on its
    // way would land on `b` after the snapshot (seen on a loaded machine).
    let holding = wait_until(Duration::from_secs(3), || {
        a.in_flight() >= 1 && a.hits() + b.hits() >= 3
    })
    .await;
    assert!(
        holding,
        "no request reached a (a={}, b={})",
        a.hits(),
        b.hits()
    );
    let a_before = a.hits();
    let b_before = b.hits();

    // While `a` is busy, sequential requests should go to the idle `b`.
    let p = picks(&gw, "/lb/fast", 10).await;
    let to_b = p.iter().filter(|x| *x == "b").count();
    assert!(
        to_b >= 8,
        "least_conn sent {} of 10 to the busy target: {p:?}",
        10 - to_b
    );
    assert_eq!(b.hits() - b_before, to_b);
    assert_eq!(a.hits() - a_before, 10 - to_b);

    for h in background {
        let r = h.await.unwrap().expect("background request");
        assert_eq!(r.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn backup_only_when_primaries_unhealthy() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let gw = one_upstream(
        &[target(&a), target(&b), target_backup(&c)],
        &format!("retries: 0\n{HC_HTTP}"),
        "/lb",
        "",
    );

    let p = picks(&gw, "/lb/x", 20).await;
    assert_eq!(c.hits(), 0, "backup used while primaries healthy: {p:?}");
    assert!(a.hits() > 0 && b.hits() > 0);

    a.set_health(500);
    b.set_health(500);
    gw.wait_target_health("u", &a.addr(), false, Duration::from_secs(5))
        .await;
    gw.wait_target_health("u", &b.addr(), false, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset();
    b.reset();
    c.reset();
    let p = picks(&gw, "/lb/x", 10).await;
    assert!(
        p.iter().all(|x| x == "c"),
        "all primaries down: backup must serve: {p:?}"
    );
    assert_eq!((a.hits(), b.hits(), c.hits()), (0, 0, 10));

    // one primary recovers: the backup is released
    a.set_health(200);
    gw.wait_target_health("u", &a.addr(), true, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset();
    c.reset();
    let p = picks(&gw, "/lb/x", 10).await;
    assert!(p.iter().all(|x| x == "a"), "primary back: {p:?}");
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 0, 0));
}
