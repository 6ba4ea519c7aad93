//! `request-mirror` against the real binary, with a primary and a shadow backend that count
//! and record what they get: every sampled request reaches the shadow with the method, the
//! rewritten path, the body and the added header, once even when the primary is retried; a
//! 0.3 sample holds within 5 sigma over 1,000 requests; a shadow that is down or 5 s slow
//! changes neither the client's answers nor their p99 latency (measured against a route
//! without the mirror on the same gateway), its failures and timeouts are counted, and the
//! queue stays bounded (drops counted); a body over `max_body` and a request refused by
//! key-auth are not mirrored; config errors name the path and line.
use crate::common;

use common::*;
use std::time::{Duration, Instant};

/// The `plugins:` block of a route with request-mirror and `config` (a YAML flow mapping
/// body).
fn mirror(config: &str) -> String {
    format!("plugins:\n  - name: request-mirror\n    config: {{ {config} }}")
}

/// Upstreams `primary` and `shadow` and route `/m` to `primary` with `route` (the route's
/// YAML lines: its plugins and options).
fn with_shadow(primary: &Backend, shadow: &Backend, route: &str) -> Cfg {
    Cfg::new()
        .upstream("primary", &[target(primary)], "")
        .upstream("shadow", &[target(shadow)], "")
        .route("m", &["/m"], "primary", route)
}

/// A gateway with routes `/base` (no mirror) and `/m` (mirror with `config`) to `primary`;
/// the shadow upstream `shadow` has `shadow_target`.
fn gateway(primary: &Backend, shadow_target: &str, config: &str) -> Gateway {
    Cfg::new()
        .upstream("primary", &[target(primary)], "")
        .upstream("shadow", &[shadow_target.to_string()], "")
        .route("base", &["/base"], "primary", "")
        .route("m", &["/m"], "primary", &mirror(config))
        .start()
}

fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metric(text, name, labels).unwrap_or(0.0) as u64
}

/// `mirror_requests_total{route="m",result}`.
fn mirrored(m: &str, result: &str) -> u64 {
    counter(
        m,
        "mirror_requests_total",
        &[("route", "m"), ("upstream", "shadow"), ("result", result)],
    )
}

/// `mirror_dropped_total{route="m",reason}`.
fn dropped(m: &str, reason: &str) -> u64 {
    counter(
        m,
        "mirror_dropped_total",
        &[("route", "m"), ("upstream", "shadow"), ("reason", reason)],
    )
}

/// Waits until `f` of the metrics text holds (5 s); the last text.
async fn metrics_until(gw: &Gateway, limit: Duration, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let m = gw.metrics_text().await;
        if f(&m) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `b`'s hit count stops moving (unchanged for 300 ms, 10 s at most).
async fn settled_hits(b: &Backend) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = b.hits();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = b.hits();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    last
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// `n` sequential GETs of `/base/x` and `/m/x`, interleaved so both see the same conditions;
/// every answer must be the primary's 200. The latencies of each route.
async fn interleaved(gw: &Gateway, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut base = Vec::with_capacity(n);
    let mut mirrored = Vec::with_capacity(n);
    for i in 0..n {
        for (path, into) in [("/base/x", &mut base), ("/m/x", &mut mirrored)] {
            let t = Instant::now();
            let r = gw
                .client
                .get(gw.url(&format!("{path}?i={i}")))
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            into.push(t.elapsed());
            assert_eq!((status, backend_of(&body).as_str()), (200, "primary"));
        }
    }
    (base, mirrored)
}

/// The gateway's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn every_request_reaches_the_shadow_as_it_went_upstream() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    shadow.set_body(Some("{\"backend\":\"shadow\"}"));
    let gw = with_shadow(
        &primary,
        &shadow,
        &format!(
            "strip_path: true\npreserve_host: false\n{}",
            mirror("upstream: shadow, headers: { X-Mirror: \"1\" }")
        ),
    )
    .start();

    let mut sent = Vec::new();
    for i in 0..5 {
        let (s, body) = gw.get_with(&format!("/m/items/{i}?q={i}"), &[]).await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "primary"));
        sent.push(("GET".to_string(), format!("/items/{i}?q={i}"), Vec::new()));
    }
    for i in 0..5 {
        let payload = format!("{{\"order\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 1000));
        let (s, body) = gw
            .send(
                gw.client
                    .post(gw.url(&format!("/m/orders?n={i}")))
                    .header("content-type", "application/json")
                    .body(payload.clone()),
            )
            .await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "primary"));
        sent.push((
            "POST".to_string(),
            format!("/orders?n={i}"),
            payload.into_bytes(),
        ));
    }
    assert!(
        // Recorded once the body is read (a hit counts at the head): wait for the records.
        wait_until(Duration::from_secs(5), || shadow.requests().len() == 10).await,
        "shadow hits {}, recorded {}",
        shadow.hits(),
        shadow.requests().len()
    );
    let got = shadow.requests();
    for (method, uri, body) in &sent {
        let r = got
            .iter()
            .find(|r| &r.uri == uri)
            .unwrap_or_else(|| panic!("{uri} not mirrored: {got:?}"));
        assert_eq!(&r.method, method, "{uri}");
        assert_eq!(&r.body, body, "{uri}");
        assert_eq!(r.header("x-mirror"), Some("1"), "{uri}");
        // `preserve_host: false`: each upstream gets its own target's address.
        assert_eq!(r.header("host"), Some(shadow.addr().as_str()), "{uri}");
        assert!(r.header("x-forwarded-for").is_some(), "{uri}: {r:?}");
        if !body.is_empty() {
            assert_eq!(
                r.header("content-length"),
                Some(body.len().to_string().as_str())
            );
            assert_eq!(r.header("content-type"), Some("application/json"));
        }
    }
    // The primary got the same requests, without the mirror's header.
    assert_eq!(primary.hits(), 10);
    assert!(primary.requests().iter().all(
        |r| r.header("x-mirror").is_none() && r.header("host") == Some(primary.addr().as_str())
    ));
    let m = metrics_until(&gw, Duration::from_secs(5), |m| mirrored(m, "sent") == 10).await;
    assert_eq!(mirrored(&m, "sent"), 10, "{m}");
    assert_eq!(mirrored(&m, "failed") + mirrored(&m, "timeout"), 0);
    // The shadow is not in the request metrics: every request counts once, under the primary.
    let all = parse_metrics(&m);
    let by_service = |svc: &str| {
        samples(
            &all,
            "http_requests_total",
            &[("route", "m"), ("service", svc)],
        )
        .iter()
        .map(|s| s.value)
        .sum::<f64>() as u64
    };
    assert_eq!((by_service("primary"), by_service("shadow")), (10, 0));
}

#[tokio::test]
async fn a_retried_request_is_mirrored_once() {
    let failing = Backend::start("failing");
    failing.set_status(503);
    let good = Backend::start("primary");
    let shadow = Backend::start("shadow");
    let gw = Cfg::new()
        .upstream("primary", &[target(&failing), target(&good)], "retries: 1")
        .upstream("shadow", &[target(&shadow)], "")
        .route("m", &["/m"], "primary", &mirror("upstream: shadow"))
        .start();
    for i in 0..10 {
        let (s, body) = gw.get_with(&format!("/m/r{i}"), &[]).await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "primary"));
    }
    assert!(failing.hits() >= 4, "some requests were retried");
    assert_eq!(settled_hits(&shadow).await, 10, "{:?}", shadow.requests());
}

/// request-transformer's JSON body rewrite is what both upstreams get.
#[tokio::test]
async fn a_rewritten_body_is_mirrored_as_rewritten() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    let gw = with_shadow(&primary, &shadow, "plugins:\n  - name: request-transformer\n    config:\n      remove: { json: [password] }\n      add: { headers: [\"X-Added:yes\"] }\n  - name: request-mirror\n    config: { upstream: shadow }")
        .start();
    let (s, _) = gw
        .send(
            gw.client
                .post(gw.url("/m/users"))
                .header("content-type", "application/json")
                .body(r#"{"name":"ann","password":"hunter2"}"#),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(settled_hits(&shadow).await, 1);
    let (p, m) = (
        primary.last_request().unwrap(),
        shadow.last_request().unwrap(),
    );
    assert_eq!(
        p.body,
        br#"{"name":"ann"}"#,
        "{:?}",
        String::from_utf8_lossy(&p.body)
    );
    assert_eq!(m.body, p.body, "{:?}", String::from_utf8_lossy(&m.body));
    assert_eq!(m.header("x-added"), Some("yes"));
    assert_eq!(
        m.header("content-length"),
        Some(p.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_sample_sends_its_share() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    let gw = gateway(&primary, &target(&shadow), "upstream: shadow, sample: 0.3");
    const N: usize = 1000;
    let mut left = N;
    while left > 0 {
        let batch = left.min(50);
        left -= batch;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..batch {
            let req = gw.client.get(gw.url(&format!("/m/s{left}-{i}")));
            set.spawn(async move {
                let r = req.send().await.expect("request");
                let s = r.status().as_u16();
                (s, backend_of(&r.text().await.unwrap_or_default()))
            });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("task"), (200, "primary".to_string()));
        }
    }
    assert_eq!(primary.hits(), N);
    let got = settled_hits(&shadow).await;
    // Binomial(1000, 0.3): mean 300, sigma 14.5; 5 sigma either side.
    let sigma = (N as f64 * 0.3 * 0.7).sqrt();
    let (lo, hi) = (300.0 - 5.0 * sigma, 300.0 + 5.0 * sigma);
    assert!(
        (lo..=hi).contains(&(got as f64)),
        "{got} of {N} mirrored, expected {lo:.0}..{hi:.0}"
    );
    let m = metrics_until(&gw, Duration::from_secs(5), |m| {
        mirrored(m, "sent") == got as u64
    })
    .await;
    assert_eq!(mirrored(&m, "sent"), got as u64, "{m}");
    // Sampled out is not a drop.
    for reason in ["queue_full", "body_too_large", "incomplete"] {
        assert_eq!(dropped(&m, reason), 0, "{reason}");
    }
}

#[tokio::test]
async fn a_shadow_that_is_down_changes_nothing_for_clients() {
    let primary = Backend::start("primary");
    let gw = gateway(&primary, &target_addr(&dead_addr()), "upstream: shadow");
    // Warm both routes' connections.
    interleaved(&gw, 10).await;
    let (base, with_mirror) = interleaved(&gw, 300).await;
    let (pb, pm) = (p99(base), p99(with_mirror));
    assert!(
        pm <= pb + Duration::from_millis(50),
        "p99 with a dead shadow {pm:?}, without a mirror {pb:?}"
    );
    let m = metrics_until(&gw, Duration::from_secs(5), |m| {
        mirrored(m, "failed") == 310
    })
    .await;
    assert_eq!(mirrored(&m, "failed"), 310, "{m}");
    assert_eq!(mirrored(&m, "sent"), 0);
    // The shadow's failures are no one's else: the primary's series count every request
    // once, with its answer.
    assert_eq!(
        counter(
            &m,
            "http_requests_total",
            &[
                ("route", "m"),
                ("service", "primary"),
                ("status_code", "200"),
                ("method", "GET")
            ]
        ),
        310
    );
    println!("p99 without mirror {pb:?}, with a dead shadow {pm:?}");
}

#[tokio::test]
async fn a_slow_shadow_times_out_and_the_queue_stays_bounded() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    shadow.set_delay(Duration::from_secs(5));
    let gw = gateway(&primary, &target(&shadow), "upstream: shadow, queue: 4");
    let rss_before = rss_kib(gw.pid);
    interleaved(&gw, 10).await;
    let (base, with_mirror) = interleaved(&gw, 300).await;
    let (pb, pm) = (p99(base), p99(with_mirror));
    assert!(
        pm <= pb + Duration::from_millis(50),
        "p99 with a 5 s shadow {pm:?}, without a mirror {pb:?}"
    );
    // A burst on top: every answer still the primary's.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let req = gw.client.get(gw.url(&format!("/m/burst{i}")));
        set.spawn(async move {
            let r = req.send().await.expect("request");
            (r.status().as_u16(), backend_of(&r.text().await.unwrap()))
        });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("task"), (200, "primary".to_string()));
    }
    // Never more than `queue` copies at the shadow at once; each slot is freed by the 2 s
    // timeout.
    assert!(
        shadow.max_in_flight() <= 4,
        "{} at once",
        shadow.max_in_flight()
    );
    let total = 510;
    let m = metrics_until(&gw, Duration::from_secs(8), |m| {
        mirrored(m, "timeout")
            + mirrored(m, "sent")
            + mirrored(m, "failed")
            + dropped(m, "queue_full")
            == total
    })
    .await;
    assert_eq!(
        mirrored(&m, "timeout")
            + mirrored(&m, "sent")
            + mirrored(&m, "failed")
            + dropped(&m, "queue_full"),
        total,
        "{m}"
    );
    assert!(mirrored(&m, "timeout") >= 4, "{m}");
    assert_eq!(mirrored(&m, "sent"), 0, "{m}");
    assert!(dropped(&m, "queue_full") >= 400, "{m}");
    let rss_after = rss_kib(gw.pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
    println!(
        "p99 without mirror {pb:?}, with a 5 s shadow {pm:?}; timeouts {}, queue_full {}; RSS {rss_before} -> {rss_after} KiB",
        mirrored(&m, "timeout"),
        dropped(&m, "queue_full")
    );
}

#[tokio::test]
async fn bodies_over_max_body_are_not_mirrored() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    let gw = gateway(
        &primary,
        &target(&shadow),
        "upstream: shadow, max_body: 1kb",
    );
    let big = "b".repeat(1025);
    let (s, body) = gw
        .send(gw.client.post(gw.url("/m/big")).body(big.clone()))
        .await;
    assert_eq!((s, backend_of(&body).as_str()), (200, "primary"));
    assert_eq!(primary.last_request().unwrap().body, big.as_bytes());
    let fits = "f".repeat(1024);
    let (s, _) = gw
        .send(gw.client.post(gw.url("/m/fits")).body(fits.clone()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(settled_hits(&shadow).await, 1);
    let r = shadow.last_request().unwrap();
    assert_eq!(
        (r.path.as_str(), r.body.as_slice()),
        ("/m/fits", fits.as_bytes())
    );
    let m = metrics_until(&gw, Duration::from_secs(5), |m| mirrored(m, "sent") == 1).await;
    assert_eq!(dropped(&m, "body_too_large"), 1, "{m}");
    assert_eq!(mirrored(&m, "sent"), 1, "{m}");
}

#[tokio::test]
async fn refused_requests_are_not_mirrored() {
    let primary = Backend::start("primary");
    let shadow = Backend::start("shadow");
    let gw = with_shadow(&primary, &shadow, "plugins:\n  - name: key-auth\n  - name: request-mirror\n    config: { upstream: shadow }")
        .top("consumers:\n  - username: alice\n    keyauth_credentials: [{ key: \"alice-key-7f3a9c0e5b2d41\" }]\n")
        .start();
    for _ in 0..5 {
        let (s, _) = gw.get_with("/m/secret", &[]).await;
        assert_eq!(s, 401);
    }
    let (s, _) = gw
        .get_with("/m/secret", &[("X-API-Key", "alice-key-7f3a9c0e5b2d41")])
        .await;
    assert_eq!(s, 200);
    assert_eq!(settled_hits(&shadow).await, 1, "only the admitted request");
    let r = shadow.last_request().unwrap();
    // As it went upstream: the consumer named by the gateway, the key hidden.
    assert_eq!(r.header("x-consumer-username"), Some("alice"));
    assert_eq!(r.header("x-api-key"), None);
    // `preserve_host` (the default): the client's Host, as the primary got it.
    assert_eq!(
        r.header("host"),
        primary.last_request().unwrap().header("host")
    );
    assert_eq!(primary.hits(), 1);
}

#[test]
fn config_errors_name_path_and_line() {
    let cases = [
        (
            "upstream: nowhere",
            "config.upstream",
            "unknown upstream \"nowhere\"",
        ),
        ("sample: 0.5", "config.upstream", "required"),
        (
            "upstream: shadow, sample: 1.5",
            "config.sample",
            "from 0.0 to 1.0",
        ),
        ("upstream: shadow, queue: 0", "config.queue", "from 1 to"),
        (
            "upstream: shadow, timeout: 0s",
            "config.timeout",
            "more than 0",
        ),
        (
            "upstream: shadow, headers: { \"bad name\": x }",
            "config.headers.bad name",
            "invalid header name",
        ),
        (
            "upstream: shadow, headers: { Connection: close }",
            "config.headers.Connection",
            "the gateway's to set",
        ),
        (
            "upstream: shadow, max_body: lots",
            "config.max_body",
            "invalid size",
        ),
        (
            "upstream: shadow, mirror: all",
            "config",
            "unknown field `mirror`",
        ),
    ];
    for (cfg, path, msg) in cases {
        let yaml = format!(
            "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\n  - name: shadow\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: request-mirror\n        config: {{ {cfg} }}\n"
        );
        let (code, out) = Gateway::validate(&yaml);
        assert_ne!(code, 0, "{cfg}: {out}");
        assert!(
            out.contains(&format!("routes[0].plugins[0].{path}")) && out.contains(msg),
            "{cfg}: {out}"
        );
        assert!(out.contains("line 12"), "{cfg}: {out}");
    }
    // Without `config` at all: the upstream is required.
    let yaml = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: request-mirror\n";
    let (code, out) = Gateway::validate(yaml);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("routes[0].plugins[0].config.upstream") && out.contains("line 9"),
        "{out}"
    );
}

/// What the HTTP/2 shadow got: (method, path and query, :authority, body).
type H2Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, Vec<u8>)>>>;

/// An h2c server (HTTP/2 with prior knowledge) answering 200 to everything.
async fn h2c_shadow() -> (u16, H2Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: H2Seen = Default::default();
    let st = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let st = st.clone();
                    tokio::spawn(async move {
                        let method = req.method().to_string();
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        st.lock().unwrap().push((method, pq, authority, got));
                        let ok = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut out) = respond.send_response(ok, false) {
                            let _ = out.send_data(bytes::Bytes::from_static(b"shadow"), true);
                        }
                    });
                }
            });
        }
    });
    (port, seen)
}

/// A shadow upstream with `protocol: h2c` gets its copies over HTTP/2, body included.
#[tokio::test]
async fn an_http2_shadow_gets_its_copies_over_http2() {
    let primary = Backend::start("primary");
    let (port, seen) = h2c_shadow().await;
    let gw = Cfg::new()
        .upstream("primary", &[target(&primary)], "")
        .upstream("shadow", &[target_port(port)], "protocol: h2c")
        .route(
            "m",
            &["/m"],
            "primary",
            &format!("preserve_host: false\n{}", mirror("upstream: shadow")),
        )
        .start();
    for i in 0..3 {
        let (s, body) = gw
            .send(
                gw.client
                    .post(gw.url(&format!("/m/h2?i={i}")))
                    .body(format!("payload {i}")),
            )
            .await;
        assert_eq!((s, backend_of(&body).as_str()), (200, "primary"));
    }
    let _ = gw.get_with("/m/h2-get", &[]).await;
    assert!(
        wait_until(Duration::from_secs(5), || seen.lock().unwrap().len() == 4).await,
        "{:?}",
        seen.lock().unwrap()
    );
    let got = seen.lock().unwrap().clone();
    for i in 0..3 {
        let r = got
            .iter()
            .find(|r| r.1 == format!("/m/h2?i={i}"))
            .unwrap_or_else(|| panic!("{i}: {got:?}"));
        assert_eq!(r.0, "POST");
        assert_eq!(r.2, format!("127.0.0.1:{port}"));
        assert_eq!(r.3, format!("payload {i}").as_bytes());
    }
    assert!(got.iter().any(|r| r.0 == "GET" && r.1 == "/m/h2-get"));
    let m = metrics_until(&gw, Duration::from_secs(5), |m| mirrored(m, "sent") == 4).await;
    assert_eq!(mirrored(&m, "sent"), 4, "{m}");
}
