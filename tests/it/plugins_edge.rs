//! The request-edge plugins: ip-restriction, request-size-limiting, correlation-id and
//! security-headers, global and per route, against real upstreams.
use crate::common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn ip_restriction_allow_and_deny() {
    let a = Backend::start("a");
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&a)], "")
        .route_root("plugins:\n  - name: ip-restriction\n    config: { allow: [\"10.0.0.0/8\"], deny: [\"10.9.0.0/16\"] }")
        .start();
    let ask = |ip: &'static str| {
        let req = gw.client.get(gw.url("/x")).header("x-forwarded-for", ip);
        gw.send(req)
    };
    assert_eq!(ask("10.1.2.3").await.0, 200);
    let (s, body) = ask("10.9.1.1").await;
    assert_eq!(s, 403);
    assert_error_body(&body, "ip_forbidden");
    let (s, body) = ask("192.0.2.7").await;
    assert_eq!(s, 403);
    assert_error_body(&body, "ip_forbidden");
    assert_eq!(a.hits(), 1, "refused requests never reach the upstream");
}

#[tokio::test]
async fn request_size_limiting_by_length_and_chunked() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u(
            "small",
            "plugins:\n  - name: request-size-limiting\n    config: { allowed_payload_size: 1kb }",
        )
        .route_u("big", "")
        .start();

    let (s, _) = gw
        .send(gw.client.post(gw.url("/small")).body(vec![b'x'; 1024]))
        .await;
    assert_eq!(s, 200);
    let (s, body) = gw
        .send(gw.client.post(gw.url("/small")).body(vec![b'x'; 1025]))
        .await;
    assert_eq!(s, 413);
    assert_error_body(&body, "payload_too_large");
    assert_eq!(
        a.hits(),
        1,
        "Content-Length over the limit never connects upstream"
    );

    // Chunked, no Content-Length: cut off as it crosses the limit.
    let mut req = b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (raw, _) = raw_request(gw.port, &req, Duration::from_secs(3));
    let resp = parse_response(&raw).expect("response");
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_error_body(&resp.text(), "payload_too_large");

    // The other route keeps the server-wide limit.
    let (s, _) = gw
        .send(gw.client.post(gw.url("/big")).body(vec![b'x'; 4096]))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn correlation_id_generated_kept_echoed_and_in_errors() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("r", "")
        .top("plugins:\n  - name: correlation-id\n")
        .start();

    // Generated, sent upstream and echoed.
    let resp = gw.get("/r").await;
    assert_eq!(resp.status(), 200);
    let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(echoed.len(), 36);
    let up = a.last_request().unwrap();
    assert_eq!(up.header("x-request-id"), Some(echoed.as_str()));

    // Kept when valid.
    let resp = gw.get_response("/r", &[("x-request-id", "abc-123")]).await;
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    assert_eq!(
        a.last_request().unwrap().header("x-request-id"),
        Some("abc-123")
    );

    // Replaced when invalid.
    let resp = gw
        .get_response("/r", &[("x-request-id", "bad id with spaces")])
        .await;
    assert_ne!(resp.headers()["x-request-id"], "bad id with spaces");

    // In a 404 (no route: global plugins still apply) both header and body carry it.
    let resp = gw
        .get_response("/nowhere", &[("x-request-id", "trace-404")])
        .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "trace-404");
    let v = assert_error_body(&resp.text().await.unwrap(), "not_found");
    assert_eq!(v["request_id"], "trace-404");
}

#[tokio::test]
async fn correlation_id_custom_header() {
    let a = Backend::start("a");
    let gw = one_route(&a, "/r", "plugins:\n  - name: correlation-id\n    config: { header_name: X-Correlation-ID, echo_downstream: false }");
    let resp = gw
        .get_response("/r", &[("x-correlation-id", "corr-7")])
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-correlation-id").is_none(), "echo off");
    assert_eq!(
        a.last_request().unwrap().header("x-correlation-id"),
        Some("corr-7")
    );
}

#[tokio::test]
async fn security_headers_on_proxied_and_gateway_answers() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .upstream("dead", &[target_addr(&dead_addr())], "retries: 0")
        .route_u("r", "")
        .route("d", &["/d"], "dead", "")
        .route_u("off", "plugins:\n  - name: security-headers\n    enabled: false")
        .top("plugins:\n  - name: security-headers\n    config:\n      headers: { X-Frame-Options: SAMEORIGIN, Strict-Transport-Security: max-age=31536000 }\n")
        .start();
    a.set_extra_headers(&[("server", "nginx/1.0"), ("x-powered-by", "PHP/5")]);

    for path in ["/r", "/nowhere", "/d"] {
        let resp = gw.get(path).await;
        let h = resp.headers();
        assert_eq!(h["x-frame-options"], "SAMEORIGIN", "{path}");
        assert_eq!(h["strict-transport-security"], "max-age=31536000", "{path}");
        assert!(h.get("x-powered-by").is_none(), "{path}");
        assert!(
            h.get("server").is_none_or(|v| v != "nginx/1.0"),
            "{path}: upstream Server leaked"
        );
    }
    let resp = gw.get("/off").await;
    assert!(
        resp.headers().get("x-frame-options").is_none(),
        "disabled on this route"
    );
    assert_eq!(resp.headers()["x-powered-by"], "PHP/5");
}
