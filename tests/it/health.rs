//! Active (HTTP and TCP) health checks, /status health, 503 and passive circuit breaking.
use crate::common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

/// `n` sequential GETs: (statuses, backend names).
async fn run(gw: &Gateway, n: usize) -> (Vec<u16>, Vec<String>) {
    let mut st = Vec::new();
    let mut names = Vec::new();
    for _ in 0..n {
        let (s, body) = gw.send(gw.client.get(gw.url("/hc/x"))).await;
        st.push(s);
        names.push(backend_of(&body));
    }
    (st, names)
}

#[tokio::test]
async fn http_check_ejects_and_readmits() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(&[target(&a), target(&b)], HC_HTTP, "/hc", "");

    // the checker probes /health on its own, and probes are not traffic
    assert!(
        wait_until(WAIT, || a.health_hits() >= 2 && b.health_hits() >= 2).await,
        "no active probes seen (a={}, b={})",
        a.health_hits(),
        b.health_hits()
    );
    assert_eq!(a.hits() + b.hits(), 0, "probes must use GET /health only");

    a.set_health(500);
    gw.wait_target_health("u", &a.addr(), false, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset();
    b.reset();
    let (st, names) = run(&gw, 20).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!(a.hits(), 0, "unhealthy target got traffic: {names:?}");
    assert_eq!(b.hits(), 20);

    a.set_health(200);
    gw.wait_target_health("u", &a.addr(), true, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset();
    b.reset();
    let (st, _) = run(&gw, 20).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert!(
        a.hits() >= 5,
        "recovered target not readmitted: a={} b={}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test]
async fn tcp_check_ejects_stopped_backend() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(
        &[target(&a), target(&b)],
        &format!("retries: 0\n{HC_TCP}"),
        "/hc",
        "",
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.health_hits(), 0, "TCP check must not send HTTP requests");
    assert_eq!(a.hits(), 0, "TCP check must not send HTTP requests");

    a.stop();
    gw.wait_target_health("u", &a.addr(), false, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.reset();
    // retries: 0, so only ejection keeps clients away from the dead target
    let (st, names) = run(&gw, 20).await;
    assert!(
        st.iter().all(|s| *s == 200),
        "requests went to the stopped target: {st:?}"
    );
    assert!(names.iter().all(|n| n == "b"));
    assert_eq!(b.hits(), 20);

    a.restart();
    gw.wait_target_health("u", &a.addr(), true, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset();
    let (st, _) = run(&gw, 20).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert!(
        a.hits() >= 5,
        "restarted target not readmitted: {}",
        a.hits()
    );
}

#[tokio::test]
async fn status_shows_target_health() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(&[target_w(&a, 2), target_backup(&b)], HC_HTTP, "/hc", "");

    let st = gw.status_json().await;
    assert!(
        st["version"].is_string() || st["version"].is_number(),
        "{st}"
    );
    assert!(st["hash"].is_string(), "{st}");
    assert!(
        st["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "r")),
        "{st}"
    );
    let u = st["upstreams"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["name"] == "u"))
        .unwrap_or_else(|| panic!("upstream u missing: {st}"))
        .clone();
    let targets = u["targets"].as_array().expect("targets").clone();
    assert_eq!(targets.len(), 2, "{u}");
    let ta = targets.iter().find(|t| t["addr"] == a.addr()).expect("a");
    let tb = targets.iter().find(|t| t["addr"] == b.addr()).expect("b");
    assert_eq!(ta["weight"], 2, "{ta}");
    assert_eq!(ta["backup"], false, "{ta}");
    assert_eq!(tb["backup"], true, "{tb}");
    assert_eq!(tb["weight"], 1, "default weight: {tb}");

    a.set_health(503);
    assert!(
        gw.wait_target_health("u", &a.addr(), false, WAIT).await,
        "/status never showed a unhealthy: {}",
        gw.status_json().await
    );
    assert_eq!(gw.target_healthy("u", &b.addr()).await, Some(true));
    a.set_health(200);
    assert!(
        gw.wait_target_health("u", &a.addr(), true, WAIT).await,
        "/status never showed a healthy again: {}",
        gw.status_json().await
    );
}

#[tokio::test]
async fn all_targets_down_is_503() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(&[target(&a), target(&b)], HC_HTTP, "/hc", "");

    a.set_health(500);
    b.set_health(500);
    gw.wait_target_health("u", &a.addr(), false, WAIT).await;
    gw.wait_target_health("u", &b.addr(), false, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.reset();
    b.reset();
    let (s, body) = gw
        .get_with("/hc/x", &[("X-Request-ID", "all-down-1")])
        .await;
    assert_eq!(s, 503, "{body}");
    let v = assert_error_body(&body, "service_unavailable");
    assert_eq!(v["request_id"], "all-down-1");
    assert!(!body.contains(&a.port().to_string()) && !body.contains(&b.port().to_string()));
    assert_eq!(
        a.hits() + b.hits(),
        0,
        "no request may reach an unhealthy target"
    );
}

#[tokio::test]
async fn passive_ejects_after_connection_failures() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = one_upstream(
        &[target(&a), target(&b)],
        "retries: 0\npassive: { max_fails: 2, fail_timeout: 10s }",
        "/hc",
        "",
    );

    a.stop();
    // warm-up: a collects its failures (clients may see 502 here, retries are off)
    let (warm, _) = run(&gw, 10).await;
    let failed = warm.iter().filter(|s| **s != 200).count();
    assert!(
        failed <= 3,
        "more than max_fails failures reached clients: {warm:?}"
    );
    b.reset();
    let (st, names) = run(&gw, 20).await;
    assert!(
        st.iter().all(|s| *s == 200),
        "circuit should be open for the dead target: {st:?}"
    );
    assert!(names.iter().all(|n| n == "b"));
    assert_eq!(b.hits(), 20);
}

#[tokio::test]
async fn passive_ejects_after_502s() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(502);
    let gw = one_upstream(
        &[target(&a), target(&b)],
        "retries: 0\npassive: { max_fails: 2, fail_timeout: 10s }",
        "/hc",
        "",
    );

    let _ = run(&gw, 10).await;
    assert!(
        (2..=3).contains(&a.hits()),
        "a should have been tried max_fails times: {}",
        a.hits()
    );
    a.reset();
    b.reset();
    let (st, _) = run(&gw, 20).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!(a.hits(), 0, "failing target still gets traffic");
    assert_eq!(b.hits(), 20);
}
