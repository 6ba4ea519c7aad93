//! Admin `GET /metrics`: every contract series from startup, counts per route and status,
//! the contract's buckets, connection gauge, retries / ejections / health check results,
//! bounded labels, and `promtool check metrics`.
use crate::common;

use std::time::Duration;

use common::*;

const REQUEST_BUCKETS: &[&str] = &[
    "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];
const UPSTREAM_BUCKETS: &[&str] = &[
    "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf",
];

fn req(
    method: &'static str,
    route: &'static str,
    status: &'static str,
    service: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("method", method),
        ("route", route),
        ("status_code", status),
        ("service", service),
    ]
}

fn les(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<String> {
    let all = parse_metrics(text);
    samples(&all, name, labels)
        .into_iter()
        .filter(|s| s.labels.len() == labels.len() + 1)
        .map(|s| s.labels["le"].clone())
        .collect()
}

#[tokio::test]
async fn counts_per_route_and_status_with_contract_buckets() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    b.set_status(404);
    let dead = dead_addr();
    let gw = Cfg::new()
        .upstream("ua", &[target(&a)], "")
        .upstream("ub", &[target(&b)], "")
        .upstream("ud", &[target_addr(&dead)], "")
        .route("r1", &["/one"], "ua", "")
        .route("r2", &["/two"], "ub", "")
        .route("r3", &["/three"], "ud", "")
        .start();
    let hash = gw.status_json().await["hash"].as_str().unwrap().to_string();

    // From startup, before any request: every contract family and its series.
    let t = gw.metrics_text().await;
    promtool_check(&t);
    for (route, service) in [("r1", "ua"), ("r2", "ub"), ("r3", "ud")] {
        assert_eq!(
            metric(
                &t,
                "http_requests_total",
                &req("GET", route, "200", service)
            ),
            Some(0.0),
            "{t}"
        );
        assert_eq!(
            metric(
                &t,
                "http_request_duration_seconds_count",
                &req("GET", route, "200", service)
            ),
            Some(0.0)
        );
        assert_eq!(
            metric(
                &t,
                "upstream_request_duration_seconds_count",
                &[("service", service), ("status_code", "200")]
            ),
            Some(0.0)
        );
        assert_eq!(
            metric(&t, "upstream_retries_total", &[("service", service)]),
            Some(0.0)
        );
    }
    assert_eq!(
        metric(&t, "http_requests_total", &req("GET", "", "404", "")),
        Some(0.0)
    );
    assert_eq!(
        les(
            &t,
            "http_request_duration_seconds_bucket",
            &req("GET", "r1", "200", "ua")
        ),
        REQUEST_BUCKETS
    );
    assert_eq!(
        les(
            &t,
            "upstream_request_duration_seconds_bucket",
            &[("service", "ua"), ("status_code", "200")]
        ),
        UPSTREAM_BUCKETS
    );
    // unchecked targets count as healthy, including one nobody listens on
    for (up, addr) in [("ua", a.addr()), ("ub", b.addr()), ("ud", dead.clone())] {
        assert_eq!(
            metric(
                &t,
                "upstream_target_healthy",
                &[("upstream", up), ("target", &addr)]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        metric(&t, "config_reloads_total", &[("result", "success")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&t, "config_reloads_total", &[("result", "error")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&t, "config_info", &[("version", "1"), ("hash", &hash)]),
        Some(1.0)
    );
    assert_eq!(
        metric(&t, "rate_limit_backend_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(metric(&t, "cache_size_bytes", &[]), Some(0.0));
    assert_eq!(metric(&t, "cache_evictions_total", &[]), Some(0.0));
    assert_eq!(metric(&t, "access_log_dropped_total", &[]), Some(0.0));
    assert!(metric(&t, "http_active_connections", &[]).is_some());
    for fam in ["rate_limit_hits_total", "cache_requests_total"] {
        assert!(
            t.contains(&format!("# TYPE {fam} counter")) || !t.contains(fam),
            "{fam}"
        );
    }
    if cfg!(target_os = "linux") {
        assert!(metric(&t, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);
        assert!(metric(&t, "process_open_fds", &[]).unwrap_or(0.0) > 0.0);
    }

    // Traffic: 7 GET + 3 POST on r1 (200), 4 GET on r2 (the upstream's 404),
    // 2 GET + 1 DELETE matching no route, 2 GET on r3 (502: nothing listens).
    for _ in 0..7 {
        assert_eq!(gw.send(gw.client.get(gw.url("/one/x"))).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            gw.send(gw.client.post(gw.url("/one")).body("hi")).await.0,
            200
        );
    }
    for _ in 0..4 {
        assert_eq!(gw.send(gw.client.get(gw.url("/two/y?id=7"))).await.0, 404);
    }
    for _ in 0..2 {
        assert_eq!(
            gw.send(gw.client.get(gw.url("/nowhere/secret-path")))
                .await
                .0,
            404
        );
    }
    assert_eq!(gw.send(gw.client.delete(gw.url("/nowhere"))).await.0, 404);
    for _ in 0..2 {
        assert_eq!(gw.send(gw.client.get(gw.url("/three"))).await.0, 502);
    }

    // 19 requests: wait until the last one's logging phase ran
    let all_of = |t: &str| -> f64 {
        samples(&parse_metrics(t), "http_requests_total", &[])
            .iter()
            .map(|s| s.value)
            .sum()
    };
    for _ in 0..100 {
        if all_of(&gw.metrics_text().await) >= 19.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = gw.metrics_text().await;
    promtool_check(&t);
    let expect = [
        (req("GET", "r1", "200", "ua"), 7.0),
        (req("POST", "r1", "200", "ua"), 3.0),
        (req("GET", "r2", "404", "ub"), 4.0),
        (req("GET", "", "404", ""), 2.0),
        (req("DELETE", "", "404", ""), 1.0),
        (req("GET", "r3", "502", "ud"), 2.0),
        (req("GET", "r2", "200", "ub"), 0.0),
    ];
    for (labels, n) in &expect {
        assert_eq!(
            metric(&t, "http_requests_total", labels),
            Some(*n),
            "{labels:?}\n{t}"
        );
        assert_eq!(
            metric(&t, "http_request_duration_seconds_count", labels),
            Some(*n),
            "{labels:?}"
        );
        if *n > 0.0 {
            let inf: Vec<(&str, &str)> = labels.iter().copied().chain([("le", "+Inf")]).collect();
            assert_eq!(
                metric(&t, "http_request_duration_seconds_bucket", &inf),
                Some(*n)
            );
            assert!(metric(&t, "http_request_duration_seconds_sum", labels).unwrap() > 0.0);
        }
    }
    let all = parse_metrics(&t);
    let total: f64 = samples(&all, "http_requests_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 19.0, "every request counted once");
    assert_eq!(
        metric(
            &t,
            "upstream_request_duration_seconds_count",
            &[("service", "ua"), ("status_code", "200")]
        ),
        Some(10.0)
    );
    assert_eq!(
        metric(
            &t,
            "upstream_request_duration_seconds_count",
            &[("service", "ub"), ("status_code", "404")]
        ),
        Some(4.0)
    );
    // labels are config names: no request path or query ever becomes a label
    for s in &all {
        for v in s.labels.values() {
            assert!(
                !v.contains('/') && !v.contains("nowhere") && !v.contains("id=7"),
                "{s:?}"
            );
        }
    }

    // Connections: the last answers (502) closed gw.client's connection, so none is open;
    // two keep-alive clients are counted until they go away.
    assert!(wait_metric(&gw, "http_active_connections", &[], 0.0).await);
    let c1 = client();
    let c2 = client();
    assert_eq!(gw.send(c1.get(gw.url("/one"))).await.0, 200);
    assert!(wait_metric(&gw, "http_active_connections", &[], 1.0).await);
    assert_eq!(gw.send(c2.get(gw.url("/one"))).await.0, 200);
    assert!(wait_metric(&gw, "http_active_connections", &[], 2.0).await);
    drop(c1);
    drop(c2);
    assert!(
        wait_metric(&gw, "http_active_connections", &[], 0.0).await,
        "closed connections still counted"
    );
}

/// Poll `/metrics` until `name{labels}` equals `want` (the `logging` phase runs just after the
/// response is sent, so a count may lag the client by a moment).
async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) -> bool {
    for _ in 0..100 {
        if metric(&gw.metrics_text().await, name, labels) == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{name} {labels:?} never became {want}:\n{}",
        gw.metrics_text().await
    );
    false
}

#[tokio::test]
async fn retries_ejections_and_health_checks_are_counted() {
    let a = Backend::start("a");
    let h = Backend::start("h");
    let dead = dead_addr();
    let gw = Cfg::new()
        .upstream(
            "ur",
            &[target_addr(&dead), target(&a)],
            "retries: 1\npassive: { max_fails: 1, fail_timeout: 30s }",
        )
        .upstream("uh", &[target(&h)], HC_HTTP)
        .route("rr", &["/r"], "ur", "")
        .route("rh", &["/h"], "uh", "")
        .start();

    let t = gw.metrics_text().await;
    assert_eq!(
        metric(
            &t,
            "circuit_breaker_ejections_total",
            &[("upstream", "ur"), ("target", &dead)]
        ),
        Some(0.0)
    );
    for result in ["success", "failure"] {
        assert!(
            metric(
                &t,
                "health_check_results_total",
                &[
                    ("upstream", "uh"),
                    ("target", &h.addr()),
                    ("result", result)
                ]
            )
            .is_some(),
            "{result} series missing from startup\n{t}"
        );
    }

    // round robin: one of the first two requests tries the dead target first, then retries
    for _ in 0..4 {
        assert_eq!(gw.send(gw.client.get(gw.url("/r"))).await.0, 200);
    }
    assert!(
        wait_metric(
            &gw,
            "http_requests_total",
            &req("GET", "rr", "200", "ur"),
            4.0
        )
        .await
    );
    let t = gw.metrics_text().await;
    assert_eq!(
        metric(&t, "upstream_retries_total", &[("service", "ur")]),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        metric(
            &t,
            "circuit_breaker_ejections_total",
            &[("upstream", "ur"), ("target", &dead)]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &t,
            "upstream_target_healthy",
            &[("upstream", "ur"), ("target", &dead)]
        ),
        Some(0.0),
        "an ejected target is not healthy"
    );
    assert_eq!(
        metric(
            &t,
            "upstream_target_healthy",
            &[("upstream", "ur"), ("target", &a.addr())]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&t, "http_requests_total", &req("GET", "rr", "200", "ur")),
        Some(4.0)
    );

    // active checks: results counted per target, the gauge follows the verdict
    h.set_health(500);
    assert!(
        gw.wait_target_health("uh", &h.addr(), false, Duration::from_secs(5))
            .await
    );
    let t = gw.metrics_text().await;
    let fails = metric(
        &t,
        "health_check_results_total",
        &[
            ("upstream", "uh"),
            ("target", &h.addr()),
            ("result", "failure"),
        ],
    )
    .unwrap();
    let oks = metric(
        &t,
        "health_check_results_total",
        &[
            ("upstream", "uh"),
            ("target", &h.addr()),
            ("result", "success"),
        ],
    )
    .unwrap();
    assert!(fails >= 2.0, "failures {fails}");
    assert!(oks >= 1.0, "successes before the failure {oks}");
    assert_eq!(
        metric(
            &t,
            "upstream_target_healthy",
            &[("upstream", "uh"), ("target", &h.addr())]
        ),
        Some(0.0)
    );
    promtool_check(&t);
}

#[tokio::test]
async fn head_metrics_is_the_get_head_without_a_body() {
    // Monitoring probes (and `curl -I`) ask with HEAD.
    let b = Backend::start("b");
    let gw = one_route(&b, "/", "");
    let (raw, _) = raw_request(
        gw.admin_port,
        b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    let r = parse_response(&raw).expect("a response");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&raw));
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let len: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(len > 0, "the GET's length: {:?}", r.headers);
    assert!(r.body.is_empty(), "no body on HEAD");
}
