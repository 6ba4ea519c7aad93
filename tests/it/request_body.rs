//! request-transformer JSON body rules against the real gateway binary and real upstreams:
//! the seed's `_meta` (`$(now)`, `$(client_ip)`, `$(request_id)`), remove / rename /
//! replace on nested paths, an exact upstream `Content-Length` (also for chunked and
//! `Expect: 100-continue` requests and for bodies past Pingora's 64 KB replay buffer),
//! what passes untouched (non-JSON, empty) and what is refused (over the cap, invalid JSON,
//! compressed), the same rewritten body on a retried attempt, HTTP/2 clients, `$(latency)`
//! on responses, the `request_transform_bodies_total` metric and config errors; and bolero
//! fuzzing of the body rewriter against a reference model over `serde_json::Value`.
use crate::common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PLUGINS: &str = r#"plugins:
  - name: correlation-id
  - name: request-transformer
    config:
      remove: { json: [password, user.ssn] }
      rename: { json: ["user.name:user.fullName"] }
      replace: { json: ["source:gateway"] }
      add:
        headers: ["X-Rid:$(request_id)", "X-Arrived:$(now)"]
        json: ["_meta.requestedAt:$(now)", "_meta.clientIp:$(client_ip)", "_meta.requestId:$(request_id)", "_meta.version:2"]
        json_types: [string, string, string, number]
      max_body_bytes: 256kb
  - name: response-transformer
    config:
      add: { headers: ["X-Response-Time:$(latency)"] }
"#;

fn gateway(targets: &[String], upstream_extra: &str) -> Gateway {
    Cfg::new()
        .upstream("u", targets, upstream_extra)
        .route("r", &["/api"], "u", PLUGINS)
        .start()
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ` (the only form `$(now)`
/// produces); panics on anything else.
fn parse_rfc3339_millis(s: &str) -> i64 {
    let b = s.as_bytes();
    assert_eq!(b.len(), 24, "{s}");
    assert!(
        b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z',
        "{s}"
    );
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap_or_else(|_| panic!("{s}")) };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // days_from_civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000) + n(20..23)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The last request `b` received: (its body as JSON, the request).
fn received(b: &Backend) -> (Value, Recorded) {
    let r = b.last_request().expect("upstream got the request");
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "upstream body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.body)
        )
    });
    (v, r)
}

/// The upstream got a `Content-Length` equal to the body it read, and no chunked framing.
fn assert_exact_length(r: &Recorded) {
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "upstream Content-Length vs body received; headers {:?}",
        r.headers
    );
    assert!(
        r.header("transfer-encoding").is_none(),
        "no chunked framing upstream: {:?}",
        r.headers
    );
}

/// A raw HTTP/1.1 exchange: writes `parts` with a pause between them, reads the response
/// until the gateway closes (`Connection: close` in the head).
fn raw_exchange(port: u16, parts: &[&[u8]]) -> RawResponse {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = s.set_nodelay(true);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
        // The gateway may refuse and stop reading before the last part.
        if s.write_all(p).is_err() {
            break;
        }
    }
    let (raw, _) = read_until_close(&mut s, Duration::from_secs(10));
    parse_response(&raw)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&raw)))
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

/// `request_transform_bodies_total` of route `r` with `result`, from the metrics text `m`.
fn bodies(m: &str, result: &str) -> Option<f64> {
    let labels = [("route", "r"), ("result", result)];
    metric(m, "request_transform_bodies_total", &labels)
}

#[tokio::test]
async fn post_json_gets_meta_and_field_rules() {
    let b = Backend::start("b");
    let gw = gateway(&[target(&b)], "");
    let sent = json!({
        "user": {"name": "ada", "ssn": "123-45-6789", "roles": ["admin"]},
        "password": "hunter2",
        "source": "mobile",
        "items": [{"sku": "A1", "qty": 2}],
        "big": 12345678901234567890123_u128.to_string()
    });
    let before = now_millis();
    let resp = gw
        .client
        .post(gw.url("/api/orders"))
        .json(&sent)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let took = resp.headers()["x-response-time"]
        .to_str()
        .unwrap()
        .to_string();
    let (v, r) = received(&b);
    assert_exact_length(&r);
    assert_eq!(v["user"], json!({"fullName": "ada", "roles": ["admin"]}));
    assert!(v.get("password").is_none(), "password removed: {v}");
    assert_eq!(v["source"], "gateway", "replaced");
    assert_eq!(v["items"], sent["items"]);
    assert_eq!(v["big"], sent["big"]);
    let meta = &v["_meta"];
    assert_eq!(meta["clientIp"], "127.0.0.1");
    assert_eq!(
        meta["requestId"],
        rid.as_str(),
        "$(request_id) = X-Request-Id"
    );
    assert_eq!(meta["version"], 2, "json_types number");
    let at = parse_rfc3339_millis(meta["requestedAt"].as_str().expect("requestedAt"));
    assert!(
        at >= before - 1000 && at <= now_millis() + 1000,
        "requestedAt {at} not within the request ({before}..now)"
    );
    // The same variables in headers.
    assert_eq!(r.header("x-rid"), Some(rid.as_str()));
    let arrived = parse_rfc3339_millis(r.header("x-arrived").expect("X-Arrived"));
    assert!(
        (arrived - at).abs() <= 1,
        "$(now) names the request's arrival: {arrived} vs {at}"
    );
    // $(latency): milliseconds with decimals.
    let ms: f64 = took.parse().unwrap_or_else(|_| panic!("latency {took:?}"));
    assert!((0.0..10_000.0).contains(&ms), "{took}");
    assert_eq!(took.split('.').nth(1).map(str::len), Some(3), "{took}");

    let m = gw.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "request_transform_bodies_total",
            &[("route", "r"), ("result", "rewritten")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "request_transform_bodies_total",
            &[("route", "r"), ("result", "invalid_json")]
        ),
        Some(0.0),
        "series exist from the start"
    );
}

#[tokio::test]
async fn latency_covers_the_upstream_wait() {
    let b = Backend::start("b");
    b.set_delay(Duration::from_millis(40));
    let gw = gateway(&[target(&b)], "");
    let resp = gw.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    let took: f64 = resp.headers()["x-response-time"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        took >= 40.0,
        "latency {took} ms includes the 40 ms upstream wait"
    );
    // A GET without body is not touched: no body upstream, no Content-Length invented.
    let r = b.last_request().unwrap();
    assert!(r.body.is_empty());
    assert!(r.header("content-length").is_none(), "{:?}", r.headers);
}

#[tokio::test]
async fn chunked_request_is_rewritten_and_sent_with_content_length() {
    let b = Backend::start("b");
    let gw = gateway(&[target(&b)], "");
    let head = b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let c1 = chunk(br#"{"password":"x","user":{"na"#);
    let c2 = chunk(br#"me":"ada"},"n":[1,2,3]}"#);
    let resp = raw_exchange(gw.port, &[head, &c1, &c2, b"0\r\n\r\n"]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (v, r) = received(&b);
    assert_exact_length(&r);
    assert_eq!(v["user"], json!({"fullName": "ada"}));
    assert_eq!(v["n"], json!([1, 2, 3]));
    assert!(v.get("password").is_none());
    assert_eq!(v["_meta"]["clientIp"], "127.0.0.1");
}

#[tokio::test]
async fn expect_100_continue_gets_continue_and_the_body_is_rewritten() {
    let b = Backend::start("b");
    let gw = gateway(&[target(&b)], "");
    let body = br#"{"password":"x","k":1}"#;
    let head = format!("POST /api/c HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", body.len());
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The gateway asks for the body itself (it needs it before contacting the upstream).
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(std::time::Instant::now() < deadline, "no 100 Continue");
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 512];
        if let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
            assert!(n > 0, "closed before 100 Continue");
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(body).unwrap();
    let (raw, _) = read_until_close(&mut s, Duration::from_secs(10));
    let resp = parse_response(&raw).expect("final response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (v, r) = received(&b);
    assert_exact_length(&r);
    assert!(r.header("expect").is_none(), "Expect is not sent upstream");
    assert_eq!(v["k"], 1);
    assert!(v.get("password").is_none());
}

#[tokio::test]
async fn large_body_past_the_replay_buffer_keeps_an_exact_length() {
    // 150 KB with Content-Length: more than Pingora's 64 KB retry buffer, under the cap.
    let b = Backend::start("b");
    let gw = gateway(&[target(&b)], "");
    let items: Vec<Value> = (0..2500)
        .map(|i| json!({"id": i, "name": format!("item-{i:05}"), "tags": ["x", "y"]}))
        .collect();
    let sent = json!({"password": "p", "items": items});
    let text = sent.to_string();
    assert!(text.len() > 100 * 1024 && text.len() < 256 * 1024);
    let (status, body) = gw.post_typed("/api/bulk", "application/json", text).await;
    assert_eq!(status, 200, "{body}");
    let (v, r) = received(&b);
    assert_exact_length(&r);
    assert_eq!(v["items"], sent["items"]);
    assert!(v.get("password").is_none());
    assert!(v["_meta"]["requestId"].is_string());
}

#[tokio::test]
async fn bodies_that_pass_untouched() {
    let b = Backend::start("b");
    let gw = gateway(&[target(&b)], "");
    // Not JSON by Content-Type: byte for byte, even if it looks like JSON.
    for (ct, body) in [
        (
            "text/plain",
            &br#"{"password":"x",  "user":{"name":"a"}}"#[..],
        ),
        ("application/x-www-form-urlencoded", b"password=x&user=a"),
        ("application/jsonp", br#"{"password":"x"}"#),
    ] {
        let (s, _) = gw.post_typed("/api/p", ct, body.to_vec()).await;
        assert_eq!(s, 200, "{ct}");
        let r = b.last_request().unwrap();
        assert_eq!(r.body, body, "{ct} passes byte for byte");
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    // No Content-Type at all.
    let (s, _) = gw
        .send(gw.client.post(gw.url("/api/p")).body(r#"{"password":"x"}"#))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b.last_request().unwrap().body, br#"{"password":"x"}"#);
    // An empty JSON body: nothing to annotate, nothing invented.
    let (s, _) = gw.post_typed("/api/p", "application/json", "").await;
    assert_eq!(s, 200);
    let r = b.last_request().unwrap();
    assert!(r.body.is_empty(), "{:?}", String::from_utf8_lossy(&r.body));
    // An empty chunked JSON body: read (nothing), passed on as it came.
    let resp = raw_exchange(
        gw.port,
        &[b"POST /api/p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(b.last_request().unwrap().body.is_empty());
    // JSON that is not an object: valid, no path applies, sent as it came (with a length).
    let (s, _) = gw
        .post_typed(
            "/api/p",
            "application/vnd.api+json",
            "[ {\"password\": 1} ]",
        )
        .await;
    assert_eq!(s, 200);
    let r = b.last_request().unwrap();
    assert_eq!(r.body, b"[ {\"password\": 1} ]");
    assert_exact_length(&r);
    let m = gw.metrics_text().await;
    let count = |result| bodies(&m, result);
    assert_eq!(count("unchanged"), Some(1.0), "{m}");
    assert_eq!(count("rewritten"), Some(0.0));
}

#[tokio::test]
async fn refusals_over_the_cap_invalid_and_compressed() {
    let b = Backend::start("b");
    let gw = gateway(&[target(&b)], "");
    // Over max_body_bytes (256kb) by Content-Length: refused before reading.
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(300 * 1024));
    let (s, body) = gw
        .post_typed("/api/big", "application/json", big.clone())
        .await;
    assert_eq!(s, 413, "{body}");
    assert_error_body(&body, "payload_too_large");
    // Invalid JSON: 400 with the contract's error.
    let (s, body) = gw
        .post_typed("/api/bad", "application/json", r#"{"a": 1,"#)
        .await;
    assert_eq!(s, 400, "{body}");
    let e = assert_error_body(&body, "bad_request");
    assert!(
        e["message"].as_str().unwrap().contains("not valid JSON"),
        "{e}"
    );
    // Compressed: cannot be rewritten, refused (passing it would skip `remove: password`).
    let (s, body) = gw
        .post_with(
            "/api/gz",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0],
        )
        .await;
    assert_eq!(s, 415, "{body}");
    assert_error_body(&body, "unsupported_media_type");
    assert_eq!(b.hits(), 0, "nothing refused reached the upstream");

    // Chunked over 64 KB (no Content-Length: the most Pingora can replay). The last chunk
    // crosses the limit, so every byte sent is read before the refusal.
    let head = b"POST /api/chunked HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let fill = chunk(&[b' '; 64 * 1024 - 1]);
    let resp = raw_exchange(
        gw.port,
        &[head, b"1\r\n{\r\n", &fill, &chunk(b"          ")],
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_error_body(&resp.text(), "payload_too_large");
    // Chunked and small: fine.
    let resp = raw_exchange(gw.port, &[head, &chunk(br#"{"a":1}"#), b"0\r\n\r\n"]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(b.hits(), 1);

    let m = gw.metrics_text().await;
    let count = |result| bodies(&m, result);
    assert_eq!(count("too_large"), Some(2.0), "{m}");
    assert_eq!(count("invalid_json"), Some(1.0));
    assert_eq!(count("compressed"), Some(1.0));
    assert_eq!(count("rewritten"), Some(1.0));
}

#[tokio::test]
async fn server_body_limit_still_applies() {
    let b = Backend::start("b");
    let gw = Cfg::new()
        .server("max_body_bytes: 2kb")
        .upstream("u", &[target(&b)], "")
        .route("r", &["/api"], "u", PLUGINS)
        .start();
    // Chunked, so only the read notices: 413 from the server cap, under the plugin's.
    let head = b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let resp = raw_exchange(
        gw.port,
        &[head, b"1\r\n{\r\n", &chunk(&[b' '; 2047]), &chunk(b" ")],
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_error_body(&resp.text(), "payload_too_large");
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn retried_post_carries_the_same_rewritten_body() {
    // First target refuses connections: POST is retried on connect failures.
    let b = Backend::start("b");
    let gw = gateway(&[target_addr(&dead_addr()), target(&b)], "retries: 1");
    for i in 0..4 {
        let resp = gw
            .client
            .post(gw.url("/api/r"))
            .json(&json!({"i": i, "password": "p"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (v, r) = received(&b);
        assert_exact_length(&r);
        assert_eq!(v["i"], i);
        assert!(v.get("password").is_none());
        assert!(v["_meta"]["requestedAt"].is_string());
    }
    assert_eq!(b.hits(), 4);
}

#[tokio::test]
async fn retried_put_sends_identical_bytes_to_both_targets() {
    // a answers 502 (PUT is idempotent: retried on the other target). Both attempts must
    // get the same rewritten body, past the 64 KB replay buffer too.
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(502);
    let gw = gateway(&[target(&a), target(&b)], "retries: 1");
    for size in [100usize, 120 * 1024] {
        a.reset();
        b.reset();
        let sent = json!({"pad": "z".repeat(size), "password": "p", "user": {"name": "n"}});
        let mut ok = 0;
        for _ in 0..2 {
            let (s, body) = gw.send(gw.client.put(gw.url("/api/p")).json(&sent)).await;
            assert_eq!(s, 200, "{body}");
            ok += 1;
        }
        assert_eq!(ok, 2);
        let ra = a.requests();
        let rb = b.requests();
        assert!(
            !ra.is_empty() && !rb.is_empty(),
            "both targets tried ({size})"
        );
        let first_a = &ra[0];
        let same = rb
            .iter()
            .find(|r| r.header("x-rid") == first_a.header("x-rid"))
            .expect("the retry of a's request reached b");
        assert_eq!(
            first_a.body, same.body,
            "identical rewritten body on retry ({size})"
        );
        assert_exact_length(first_a);
        assert_exact_length(same);
        let v: Value = serde_json::from_slice(&same.body).unwrap();
        assert_eq!(v["user"], json!({"fullName": "n"}));
        assert_eq!(v["pad"].as_str().map(str::len), Some(size));
    }
}

#[test]
fn config_errors_name_the_json_entry() {
    let (yaml, err) = assert_plugins_refused(
        r#"      - name: request-transformer
        config:
          add:
            json: ["_meta.at:$(now)", "broken", "n:abc"]
            json_types: [string, string, number]
          rename:
            json: ["a:a.b"]
      - name: response-transformer
        config:
          add: { headers: ["X-T:$(latency)", "X-U:$(nope)"] }
"#,
        &[
            "routes[0].plugins[0].config.add.json[1]: expected \"path:value\", got \"broken\" (line 12)",
            "routes[0].plugins[0].config.add.json[2]: \"abc\" is not a JSON number (line 12)",
            "routes[0].plugins[0].config.rename.json[0]: cannot rename \"a\" into itself",
            "routes[0].plugins[1].config.add.headers[1]: unknown variable \"$(nope)\" (known: $(client_ip), $(request_id), $(consumer), $(now), $(latency))",
        ],
    );
    assert!(
        !err.contains("add.headers[0]"),
        "$(latency) is fine on responses: {err}"
    );
    // $(latency) on the request side is an error.
    let (code, err) = Gateway::validate(
        &yaml
            .replace("X-T:$(latency)", "X-T:1")
            .replace("\"_meta.at:$(now)\"", "\"_meta.at:$(latency)\""),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("config.add.json[0]: \"$(latency)\" is only known in response-transformer header values"),
        "{err}"
    );
}

#[tokio::test]
async fn http2_clients_get_the_same_rewrite() {
    let b = Backend::start("b");
    let tls_port = free_port();
    let (cfg, ca) = Cfg::new().tls_listener(tls_port, "");
    let gw = cfg
        .upstream("u", &[target(&b)], "")
        .route("r", &["/api"], "u", PLUGINS)
        .start();
    let c = https_client(&ca);
    for size in [10usize, 100 * 1024] {
        let sent = json!({"pad": "q".repeat(size), "password": "p"});
        let resp = c
            .post(format!("https://127.0.0.1:{tls_port}/api/h2"))
            .json(&sent)
            .send()
            .await
            .unwrap_or_else(|e| panic!("h2 POST: {e:?}\n{}", gw.stderr()));
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let (v, r) = received(&b);
        assert_exact_length(&r);
        assert_eq!(v["pad"].as_str().map(str::len), Some(size));
        assert!(v.get("password").is_none());
        assert_eq!(v["_meta"]["clientIp"], "127.0.0.1");
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing (bolero, bounded iterations under `cargo test`): the body rewriter never panics,
// refuses exactly the invalid inputs, and matches a reference model over serde_json::Value.
// ---------------------------------------------------------------------------------------------

mod fuzz {
    use crate::common::{assert_rewrite_sound, damage, Src};
    use bolero::check;
    use gatehouse::ctx::RequestCtx;
    use gatehouse::ctx::Runtime;
    use gatehouse::plugins::request_transformer::body::BodyRules;
    use gatehouse::plugins::request_transformer::RequestTransformer;
    use serde_json::{Map, Value};
    use std::sync::{Arc, OnceLock};

    /// Rule sets (YAML `config`) and their meaning for the reference model.
    struct RuleSet {
        yaml: &'static str,
        remove: &'static [&'static str],
        rename: &'static [(&'static str, &'static str)],
        replace: &'static [(&'static str, &'static str)],
        add: &'static [(&'static str, &'static str)],
    }

    const SETS: &[RuleSet] = &[
        RuleSet {
            yaml: r#"{ remove: { json: [a, b.c] }, rename: { json: ["c:d.a", "b.b:a"] }, replace: { json: ["d:R"] }, add: { json: ["a.b:1", "e:$(request_id)"], json_types: [number] } }"#,
            remove: &["a", "b.c"],
            rename: &[("c", "d.a"), ("b.b", "a")],
            replace: &[("d", r#""R""#)],
            add: &[("a.b", "1"), ("e", r#""rid-fuzz""#)],
        },
        RuleSet {
            yaml: r#"{ rename: { json: ["a.b:c", "c:a"] }, add: { json: ["a.b.c:v", "b:{}"], json_types: [string, json] } }"#,
            remove: &[],
            rename: &[("a.b", "c"), ("c", "a")],
            replace: &[],
            add: &[("a.b.c", r#""v""#), ("b", "{}")],
        },
        RuleSet {
            yaml: r#"{ remove: { json: [a.b] }, replace: { json: ["a:null", "b.a:[1,2]"], json_types: [json, json] }, add: { json: ["b.a.c:true", "c.d.e:x"], json_types: [boolean] } }"#,
            remove: &["a.b"],
            rename: &[],
            replace: &[("a", "null"), ("b.a", "[1,2]")],
            add: &[("b.a.c", "true"), ("c.d.e", r#""x""#)],
        },
        RuleSet {
            yaml: r#"{ rename: { json: ["a:b.c.d", "d.a:d.b"] }, remove: { json: [b.c.d.a] } }"#,
            remove: &["b.c.d.a"],
            rename: &[("a", "b.c.d"), ("d.a", "d.b")],
            replace: &[],
            add: &[],
        },
    ];

    fn runtimes() -> &'static Vec<Arc<Runtime>> {
        static RT: OnceLock<Vec<Arc<Runtime>>> = OnceLock::new();
        RT.get_or_init(|| {
            SETS.iter()
                .map(|set| {
                    let y = format!(
                        "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: request-transformer\n        config: {}\n",
                        set.yaml
                    );
                    Arc::new(
                        gatehouse::config::load_str(
                            &y,
                            std::path::Path::new("."),
                            &Default::default(),
                            &Default::default(),
                            1,
                        )
                        .unwrap_or_else(|e| panic!("{e}\n{y}")),
                    )
                })
                .collect()
        })
    }

    fn rules(rt: &Runtime) -> &BodyRules {
        let t = rt.routes[0].plugins.find::<RequestTransformer>();
        t.and_then(RequestTransformer::body).expect("json rules")
    }

    fn ctx(rt: &Arc<Runtime>) -> RequestCtx {
        let mut c = RequestCtx::new(rt.clone());
        c.request_id = "rid-fuzz".into();
        c
    }

    const KEYS: &[&str] = &["a", "b", "c", "d", "e", "x"];

    fn gen(s: &mut Src, depth: usize) -> Value {
        let kind = if depth == 0 {
            5
        } else if depth >= 4 {
            s.below(4)
        } else {
            s.below(6)
        };
        match kind {
            0 => Value::Null,
            1 => Value::Bool(s.u8() & 1 == 1),
            2 => Value::from(s.u8() as i64 - 100),
            3 => Value::String(["s", "", "q\"\\", "ü"][s.below(4)].into()),
            4 => Value::Array((0..s.below(3)).map(|_| gen(s, depth + 1)).collect()),
            _ => {
                let mut m = Map::new();
                for _ in 0..s.below(6) {
                    let k = KEYS[s.below(KEYS.len())].to_string();
                    let v = gen(s, depth + 1);
                    m.insert(k, v);
                }
                Value::Object(m)
            }
        }
    }

    fn split(path: &str) -> (Vec<&str>, &str) {
        let mut segs: Vec<&str> = path.split('.').collect();
        let last = segs.pop().unwrap();
        (segs, last)
    }

    fn obj_at<'v>(v: &'v mut Value, path: &[&str]) -> Option<&'v mut Map<String, Value>> {
        let mut cur = v.as_object_mut()?;
        for seg in path {
            cur = cur.get_mut(*seg)?.as_object_mut()?;
        }
        Some(cur)
    }

    fn can_create(v: &Value, path: &[&str]) -> bool {
        let Some(mut cur) = v.as_object() else {
            return false;
        };
        for seg in path {
            match cur.get(*seg) {
                None => return true,
                Some(Value::Object(m)) => cur = m,
                Some(_) => return false,
            }
        }
        true
    }

    fn obj_create<'v>(v: &'v mut Value, path: &[&str]) -> &'v mut Map<String, Value> {
        let mut cur = v.as_object_mut().unwrap();
        for seg in path {
            cur = cur
                .entry(seg.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .unwrap();
        }
        cur
    }

    /// The documented semantics over a parsed value.
    fn reference(mut v: Value, set: &RuleSet) -> Value {
        if !v.is_object() {
            return v;
        }
        for p in set.remove {
            let (parent, last) = split(p);
            if let Some(o) = obj_at(&mut v, &parent) {
                o.remove(last);
            }
        }
        for (from, to) in set.rename {
            let (fp, fl) = split(from);
            let (tp, tl) = split(to);
            if !can_create(&v, &tp) {
                continue;
            }
            let Some(taken) = obj_at(&mut v, &fp).and_then(|o| o.remove(fl)) else {
                continue;
            };
            obj_create(&mut v, &tp).insert(tl.to_string(), taken);
        }
        for (p, val) in set.replace {
            let (parent, last) = split(p);
            if let Some(o) = obj_at(&mut v, &parent) {
                if let Some(slot) = o.get_mut(last) {
                    *slot = serde_json::from_str(val).unwrap();
                }
            }
        }
        for (p, val) in set.add {
            let (parent, last) = split(p);
            if obj_at(&mut v, &parent).is_some_and(|o| o.contains_key(last)) {
                continue;
            }
            if !can_create(&v, &parent) {
                continue;
            }
            obj_create(&mut v, &parent)
                .insert(last.to_string(), serde_json::from_str(val).unwrap());
        }
        v
    }

    #[test]
    fn rewrite_matches_reference_model() {
        check!().with_iterations(4000).for_each(|bytes: &[u8]| {
            let rts = runtimes();
            let mut s = Src::new(bytes);
            let which = s.below(SETS.len());
            let (set, rt) = (&SETS[which], &rts[which]);
            let value = gen(&mut s, 0);
            let text = if s.u8() < 64 {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let mut out = Vec::new();
            let changed = rules(rt)
                .rewrite(text.as_bytes(), &ctx(rt), &mut out)
                .unwrap_or_else(|_| panic!("valid JSON refused: {text}"));
            let got: Value = if changed {
                serde_json::from_slice(&out).unwrap_or_else(|e| {
                    panic!("invalid output ({e}): {}", String::from_utf8_lossy(&out))
                })
            } else {
                value.clone()
            };
            let want = reference(value.clone(), set);
            assert_eq!(got, want, "set {which}, input {text}");
            // `changed` means a rule applied (a replace may write the value already there).
            if want != value {
                assert!(changed, "changed flag, set {which}, input {text}");
            }
        });
    }

    #[test]
    fn rewrite_refuses_exactly_invalid_bytes() {
        check!()
            .with_type::<(u8, Vec<u8>, Vec<u8>, Vec<(u16, u8)>)>()
            .with_iterations(4000)
            .for_each(|(which, raw, seed, edits)| {
                let rts = runtimes();
                let rt = &rts[*which as usize % rts.len()];
                let valid = serde_json::to_vec(&gen(&mut Src::new(seed), 0)).unwrap();
                let damaged = damage(valid, edits);
                for input in [raw.as_slice(), damaged.as_slice()] {
                    let mut out = Vec::new();
                    let result = rules(rt).rewrite(input, &ctx(rt), &mut out);
                    let wrote = result == Ok(true);
                    assert_rewrite_sound(input, result.is_ok(), wrote.then_some(out.as_slice()));
                }
            });
    }
}
