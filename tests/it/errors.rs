//! Gateway-made errors: 502, 504, 413, 414, 431 (JSON bodies, no upstream leaks).
use crate::common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn bad_gateway_when_every_target_refuses() {
    let (d1, d2) = (dead_addr(), dead_addr());
    let gw = one_upstream(&[target_addr(&d1), target_addr(&d2)], "", "/e", "");

    let (s, body) = gw
        .get_with("/e/x", &[("X-Request-ID", "req-502-check")])
        .await;
    assert_eq!(s, 502, "{body}");
    let v = assert_error_body(&body, "bad_gateway");
    assert_eq!(v["request_id"], "req-502-check");
    for d in [&d1, &d2] {
        let port = d.rsplit(':').next().unwrap();
        assert!(!body.contains(port), "body leaks upstream port: {body}");
    }
    assert!(
        !body.to_lowercase().contains("refused"),
        "leaks error text: {body}"
    );

    // POST too (connect failures are never a partial request)
    let (s, body) = gw
        .send(gw.client.post(gw.url("/e/x")).body("payload"))
        .await;
    assert_eq!(s, 502, "{body}");
    assert_error_body(&body, "bad_gateway");
}

#[tokio::test]
async fn bad_gateway_when_upstream_hangs_up() {
    let a = Backend::start("a");
    a.set_hangup(true);
    let gw = one_upstream(&[target(&a)], "retries: 0", "/e", "");

    let (s, body) = gw.send(gw.client.get(gw.url("/e/x"))).await;
    assert_eq!(s, 502, "{body}");
    assert_error_body(&body, "bad_gateway");
    assert!(!body.contains(&a.port().to_string()), "{body}");
    assert_eq!(a.hits(), 1);

    // the gateway keeps serving once the upstream behaves again
    a.set_hangup(false);
    let (s, body) = gw.send(gw.client.get(gw.url("/e/x"))).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn gateway_timeout_on_read_timeout() {
    let a = Backend::start("a");
    a.set_delay(Duration::from_millis(1500));
    let gw = one_upstream(
        &[target(&a)],
        "retries: 0\ntimeouts: { connect: 1s, read: 300ms, write: 1s }",
        "/e",
        "",
    );

    let t0 = Instant::now();
    let (s, body) = gw.send(gw.client.get(gw.url("/e/slow"))).await;
    let took = t0.elapsed();
    assert_eq!(s, 504, "{body}");
    assert_error_body(&body, "gateway_timeout");
    assert!(!body.contains(&a.port().to_string()), "{body}");
    assert!(
        took < Duration::from_millis(1400),
        "read timeout 300ms but the answer took {took:?}"
    );
    assert_eq!(a.hits(), 1);
}

/// Backend `a` behind route `r` on `/e`, with `server.max_body_bytes: max`.
fn body_limited(max: &str) -> (Backend, Gateway) {
    let a = Backend::start("a");
    let gw = Cfg::new()
        .server(&format!("max_body_bytes: {max}"))
        .upstream("u", &[target(&a)], "")
        .route("r", &["/e"], "u", "")
        .start();
    (a, gw)
}

/// The response to `req` sent over raw TCP.
fn exchange(port: u16, req: &[u8]) -> RawResponse {
    let (raw, _) = raw_request(port, req, Duration::from_secs(5));
    parse_response(&raw)
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)))
}

/// POST with a Content-Length of `len` and the full body, over raw TCP.
fn post_raw(port: u16, path: &str, len: usize) -> RawResponse {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'x', len));
    exchange(port, &req)
}

#[tokio::test]
async fn payload_too_large_by_content_length() {
    let (a, gw) = body_limited("1024");

    // at the limit: passes
    let r = post_raw(gw.port, "/e/ok", 1024);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.hits(), 1);
    assert_eq!(a.last_request().unwrap().body.len(), 1024);

    let r = post_raw(gw.port, "/e/big", 4096);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_error_body(&r.text(), "payload_too_large");
    assert_eq!(
        a.hits(),
        1,
        "an oversized Content-Length must not reach the upstream"
    );
}

#[tokio::test]
async fn payload_too_large_with_size_unit() {
    let (a, gw) = body_limited("2kb");

    assert_eq!(post_raw(gw.port, "/e/ok", 2048).status, 200);
    let r = post_raw(gw.port, "/e/big", 2049);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_error_body(&r.text(), "payload_too_large");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn payload_too_large_chunked() {
    let (a, gw) = body_limited("1024");

    let chunk = "y".repeat(512);
    let mut req = String::from(
        "POST /e/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        req.push_str(&format!("200\r\n{chunk}\r\n"));
    }
    req.push_str("0\r\n\r\n");
    let r = exchange(gw.port, req.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert_error_body(&r.text(), "payload_too_large");
    // whatever reached the upstream, it never got the whole 2048-byte body
    assert!(a.requests().iter().all(|q| q.body.len() < 2048));

    // a small chunked body passes
    let small = "POST /e/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    let (raw, _) = raw_request(gw.port, small.as_bytes(), Duration::from_secs(5));
    let r = parse_response(&raw).expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    // The cut-off request above may be recorded by the backend after this one (its body
    // ended with the aborted connection), so look for the small body among all requests.
    assert!(
        a.requests().iter().any(|q| q.body == b"0123456789abcdef"),
        "small chunked body did not reach the upstream intact"
    );
}

#[tokio::test]
async fn uri_too_long() {
    let a = Backend::start("a");
    let gw = one_route(&a, "/e", "");

    let target = format!("/e/x?q={}", "a".repeat(20 * 1024));
    let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = exchange(gw.port, req.as_bytes());
    assert_eq!(r.status, 414, "{}", r.text());
    assert_error_body(&r.text(), "uri_too_long");
    assert_eq!(a.hits(), 0);

    // a 4 KB target is fine under the 8kb default
    let ok = format!("/e/x?q={}", "a".repeat(4 * 1024));
    let (s, body) = gw.send(gw.client.get(gw.url(&ok))).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test]
async fn uri_too_long_custom_limit() {
    let a = Backend::start("a");
    let gw = Cfg::new()
        .server("max_uri_bytes: 1kb")
        .upstream("u", &[target(&a)], "")
        .route("r", &["/e"], "u", "")
        .start();

    let (s, body) = gw
        .send(gw.client.get(gw.url(&format!("/e/{}", "b".repeat(2000)))))
        .await;
    assert_eq!(s, 414, "{body}");
    assert_error_body(&body, "uri_too_long");
    let (s, _) = gw
        .send(gw.client.get(gw.url(&format!("/e/{}", "b".repeat(500)))))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn header_fields_too_large() {
    let a = Backend::start("a");
    let gw = one_route(&a, "/e", "");

    let req = format!(
        "GET /e/x HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "h".repeat(40 * 1024)
    );
    let r = exchange(gw.port, req.as_bytes());
    assert_eq!(r.status, 431, "{}", r.text());
    assert_error_body(&r.text(), "request_header_fields_too_large");
    assert_eq!(a.hits(), 0);

    // 8 KB of headers are fine under the 32kb default
    let (s, body) = gw
        .send(
            gw.client
                .get(gw.url("/e/x"))
                .header("X-Big", "h".repeat(8 * 1024)),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn error_bodies_carry_the_request_id() {
    let gw = one_upstream(&[target_addr(&dead_addr())], "", "/e", "");

    // generated ids differ between requests
    let (_, b1) = gw.send(gw.client.get(gw.url("/e/1"))).await;
    let (_, b2) = gw.send(gw.client.get(gw.url("/e/2"))).await;
    let v1 = assert_error_body(&b1, "bad_gateway");
    let v2 = assert_error_body(&b2, "bad_gateway");
    assert_ne!(v1["request_id"], v2["request_id"]);

    // 404 and 414 keep a valid incoming id
    let (s, body) = gw.get_with("/none", &[("X-Request-ID", "id-404")]).await;
    assert_eq!(s, 404);
    assert_eq!(
        assert_error_body(&body, "not_found")["request_id"],
        "id-404"
    );
    let req = format!(
        "GET /e/{} HTTP/1.1\r\nHost: t\r\nX-Request-ID: id-414\r\nConnection: close\r\n\r\n",
        "z".repeat(20 * 1024)
    );
    let (raw, _) = raw_request(gw.port, req.as_bytes(), Duration::from_secs(5));
    let r = parse_response(&raw).expect("414 response");
    assert_eq!(r.status, 414);
    assert_eq!(
        assert_error_body(&r.text(), "uri_too_long")["request_id"],
        "id-414"
    );
}
