//! Security review, bodies and tunnels, against the real gateway binary and real upstreams:
//! - response-transformer masking holds whatever the client's `Accept-Encoding`: the
//!   upstream is asked for identity, and a compressed answer arriving anyway is refused
//!   (JSON 502, counted) instead of passing unmasked;
//! - rate-limit keys chosen by clients (`limit_by: header`) cost a fixed size, locally
//!   (gateway RSS stays bounded after 8,000 distinct 31 KB keys) and in Redis (key names hold
//!   a fixed-length digest, never the value);
//! - an upstream `101` opens a tunnel only when it completes the WebSocket handshake.
use crate::common;

use common::*;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Full = http_body_util::Full<bytes::Bytes>;

// ---------------------------------------------------------------------------------------------
// 3. Masking with Accept-Encoding: gzip
// ---------------------------------------------------------------------------------------------

const USERS: &str = r#"{"users":[{"name":"Ada","email":"ada@example.com","ssn":"078-05-1120"}]}"#;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("not gzip ({e}): {:?}", String::from_utf8_lossy(data)));
    out
}

/// An upstream serving [`USERS`] as JSON, gzip-compressed when the request's
/// `Accept-Encoding` names gzip (like most web servers), or always with `always_gzip` (an
/// upstream that ignores `Accept-Encoding`). Records each request's `Accept-Encoding`.
fn users_upstream(always_gzip: bool) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let (port, _task) = spawn_http(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let ae = req
                .headers()
                .get("accept-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let _ = req.into_body().collect().await;
            let wants_gzip = ae.to_ascii_lowercase().contains("gzip");
            log.lock().unwrap().push(ae);
            let mut resp = Response::builder()
                .status(200)
                .header("content-type", "application/json");
            let body = if always_gzip || wants_gzip {
                resp = resp.header("content-encoding", "gzip");
                gzip(USERS.as_bytes())
            } else {
                USERS.as_bytes().to_vec()
            };
            Ok::<_, std::convert::Infallible>(resp.body(Full::from(body)).unwrap())
        }
    });
    (port, seen)
}

fn masking_gateway(port: u16) -> Gateway {
    let target = target_addr(&format!("127.0.0.1:{port}"));
    let mask = "plugins:\n  - name: response-transformer\n    config: { remove: { json: [email, ssn] } }\n";
    Cfg::new()
        .upstream("u", &[target], "")
        .route_u("users", mask)
        .route(
            "users-gz",
            &["/gz/users"],
            "u",
            &format!("{mask}  - name: response-compression\n    config: {{ min_size: 0 }}\n"),
        )
        .start()
}

fn get_with(gw: &Gateway, path: &str, accept_encoding: &str) -> RawResponse {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {accept_encoding}\r\nConnection: close\r\n\r\n"
    );
    let (raw, _) = raw_request(gw.port, req.as_bytes(), Duration::from_secs(10));
    parse_response(&raw).unwrap_or_else(|| panic!("no response: {raw:?}\n{}", gw.diagnostics()))
}

fn assert_masked(body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    assert!(
        text.contains("Ada"),
        "{what}: the body is the users list: {text}"
    );
    assert!(
        !text.contains("ada@example.com") && !text.contains("078-05-1120"),
        "{what}: email and SSN are masked: {text}"
    );
}

#[tokio::test]
async fn masking_holds_when_the_client_accepts_gzip() {
    let (port, seen) = users_upstream(false);
    let gw = masking_gateway(port);

    // Every browser sends gzip: the upstream must still be asked for identity.
    for ae in ["gzip", "gzip, deflate, br", "identity"] {
        let r = get_with(&gw, "/users/list", ae);
        assert_eq!(r.status, 200, "{ae}: {}", r.text());
        assert_eq!(r.header("content-encoding"), None, "{ae}");
        assert_masked(&r.body, ae);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["identity", "identity", "identity"],
        "the upstream is asked for the identity body"
    );

    // With response-compression the client still gets gzip, of the masked body.
    let r = get_with(&gw, "/gz/users/list", "gzip");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_masked(&gunzip(&r.body), "compressed for the client");
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some("identity")
    );
}

#[tokio::test]
async fn compressed_answer_to_a_masking_route_fails_closed() {
    let (port, seen) = users_upstream(true);
    let gw = masking_gateway(port);

    for path in ["/users/list", "/gz/users/list"] {
        let r = get_with(&gw, path, "gzip");
        assert_eq!(r.status, 502, "{path}: {:?}", r.text());
        assert_error_body(&r.text(), "bad_gateway");
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert!(
            !r.body.starts_with(b"\x1f\x8b"),
            "{path}: no compressed bytes reach the client"
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 2, "one upstream call each");
    assert!(seen.lock().unwrap().iter().all(|ae| ae == "identity"));

    let text = gw.metrics_text().await;
    for route in ["users", "users-gz"] {
        assert_eq!(
            metric(
                &text,
                "response_transform_refused_total",
                &[("route", route)]
            ),
            Some(1.0),
            "{route}: counted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Rate-limit keys cost a fixed size
// ---------------------------------------------------------------------------------------------

/// Reads one response with a Content-Length body from a keep-alive connection: the status.
fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap_or(0);
                buf.drain(..end + 4 + len);
                return status;
            }
        }
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `n` keep-alive GETs (a new connection every 500, under the gateway's default of
/// 1000 requests per connection), request `i` with `X-Tenant: key(i)`; returns the statuses.
fn tenant_requests(port: u16, n: usize, key: impl Fn(usize) -> String) -> Vec<u16> {
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.set_nodelay(true);
        s
    };
    let mut s = connect();
    let mut buf = Vec::new();
    (0..n)
        .map(|i| {
            if i > 0 && i % 500 == 0 {
                s = connect();
                buf.clear();
            }
            let req = format!("GET /t HTTP/1.1\r\nHost: t\r\nX-Tenant: {}\r\n\r\n", key(i));
            s.write_all(req.as_bytes()).unwrap();
            read_one(&mut s, &mut buf)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_large_rate_limit_keys_keep_memory_bounded() {
    let (_a, cfg) = upstream_u();
    let gw = cfg
        .route_u("t", "plugins:\n  - name: rate-limiting\n    config: { day: 3, limit_by: header, header_name: X-Tenant }\n")
        .start();
    let port = gw.port;
    // Warm up (connections, buffers, the limiter's tables) before the baseline.
    let warm = tenant_requests(port, 200, |i| format!("warm-{i}"));
    assert!(warm.iter().all(|&s| s == 200));
    let before = rss_kb(gw.pid);

    // 8,000 distinct 31 KB values (under the 32 KB head limit), four connections at once.
    // Stored as they came that is some 250 MB (the review measured 16 -> 678 MB for 20,000);
    // fewer than the review's 20,000 because a debug gateway spends ~2 ms of CPU on each
    // 31 KB head, and the bound below holds all the same.
    const PER_THREAD: usize = 2_000;
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let pad = "v".repeat(31_000);
                tenant_requests(port, PER_THREAD, |i| format!("{t}-{i}-{pad}"))
            })
        })
        .collect();
    for t in threads {
        let statuses = t.join().expect("client thread");
        assert!(
            statuses.iter().all(|&s| s == 200),
            "each distinct key is within its limit"
        );
    }
    let after = rss_kb(gw.pid);
    let grown_mb = after.saturating_sub(before) / 1024;
    eprintln!(
        "8,000 keys of 31 KB in {:?}: RSS {} -> {} MB",
        started.elapsed(),
        before / 1024,
        after / 1024
    );
    assert!(
        grown_mb < 64,
        "RSS grew by {grown_mb} MB for 8,000 keys ({} -> {} kB)",
        before,
        after
    );

    // Still limited per key: a large key's 4th request in the day is refused, others pass.
    let big = |c: char| format!("{c}-{}", "k".repeat(31_000));
    let statuses = tenant_requests(port, 4, |_| big('x'));
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(tenant_requests(port, 1, |_| big('y')), [200]);
    // A flood key seen once has two left.
    let key0 = format!("0-0-{}", "v".repeat(31_000));
    assert_eq!(tenant_requests(port, 3, |_| key0.clone()), [200, 200, 429]);
}

#[tokio::test]
async fn redis_rate_limit_keys_hold_a_fixed_length_digest() {
    let Some(redis) = Redis::start() else { return };
    let a = Backend::start("a");
    let url = redis.url();
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route_u("t", &format!("plugins:\n  - name: rate-limiting\n    config: {{ minute: 2, limit_by: header, header_name: X-Tenant, policy: redis, redis: {{ url: \"{url}\", timeout: 500ms }}, fault_tolerant: false }}\n"))
        .start();
    let big = format!("big-{}", "v".repeat(31_000));
    assert_eq!(
        tenant_requests(gw.port, 3, |_| big.clone()),
        [200, 200, 429],
        "limited per key through Redis"
    );
    assert_eq!(tenant_requests(gw.port, 1, |_| "tenant-a".into()), [200]);

    let keys = redis.command(&["KEYS", "*"]).expect("KEYS");
    assert_eq!(keys.len(), 2, "one counter per key: {keys:?}");
    let len = keys[0].len();
    for k in &keys {
        let name = String::from_utf8_lossy(k);
        assert_eq!(k.len(), len, "fixed length: {name}");
        assert!(k.len() < 128, "short: {name}");
        assert!(
            !name.contains("vvvvvvvv") && !name.contains("tenant-a"),
            "no raw value in {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. A 101 must complete the handshake
// ---------------------------------------------------------------------------------------------

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A raw TCP upstream. `/bare`: answers `101` with no headers, then records every byte that
/// follows (what a tunnel would carry). Otherwise: a proper WebSocket `101` (the accept for
/// the request's key), then "hello" and an echo of each read prefixed with "echo:".
fn ws_upstream() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let tunneled: Arc<Mutex<Vec<u8>>> = Arc::default();
    let log = tunneled.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let rest = head.split_off(end);
                let text = String::from_utf8_lossy(&head).to_string();
                if text.starts_with("GET /bare") {
                    let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
                    log.lock().unwrap().extend_from_slice(&rest);
                    loop {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => log.lock().unwrap().extend_from_slice(&b[..n]),
                        }
                    }
                }
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let accept = if key == WS_KEY {
                    WS_ACCEPT
                } else {
                    "unknown-key"
                };
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\nhello"
                );
                if s.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&b[..n]);
                            if s.write_all(&out).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, tunneled)
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads until `want` appears in what was read (or `limit` passes); returns all of it.
fn read_until(s: &mut TcpStream, want: &[u8], limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(want.len()).any(|w| w == want) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    got
}

#[tokio::test]
async fn bare_101_is_refused_and_a_real_websocket_upgrade_tunnels() {
    let (port, tunneled) = ws_upstream();
    let gw = Cfg::new()
        .upstream("ws", &[target_addr(&format!("127.0.0.1:{port}"))], "")
        .route("ws", &["/"], "ws", "")
        .start();

    // A bare 101: the gateway's JSON 502, the connection closed, nothing tunneled.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(upgrade_request("/bare").as_bytes()).unwrap();
    let (raw, closed) = read_until_close(&mut s, Duration::from_secs(5));
    let r = parse_response(&raw)
        .unwrap_or_else(|| panic!("no response: {raw:?}\n{}", gw.diagnostics()));
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&raw));
    assert_error_body(&r.text(), "bad_gateway");
    assert!(closed, "the connection is closed after the 502");
    // What a client sends next never reaches the upstream.
    let _ = s.write_all(b"GET /internal HTTP/1.1\r\nHost: internal\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !String::from_utf8_lossy(&tunneled.lock().unwrap()).contains("/internal"),
        "nothing is tunneled"
    );

    // A key the upstream answers wrongly: refused too.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let wrong = upgrade_request("/ws").replace(WS_KEY, "AQIDBAUGBwgJCgsMDQ4PEA==");
    s.write_all(wrong.as_bytes()).unwrap();
    let (raw, _) = read_until_close(&mut s, Duration::from_secs(5));
    assert!(
        raw.starts_with(b"HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    // A real handshake: the 101 reaches the client and bytes flow both ways.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let got = read_until(&mut s, b"hello", Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains(&format!(
            "sec-websocket-accept: {}",
            WS_ACCEPT.to_ascii_lowercase()
        )),
        "{text}"
    );
    assert!(text.ends_with("hello"), "upstream to client: {text}");
    s.write_all(b"ping").unwrap();
    let got = read_until(&mut s, b"echo:ping", Duration::from_secs(5));
    assert!(
        got.windows(9).any(|w| w == b"echo:ping"),
        "client to upstream and back: {:?}",
        String::from_utf8_lossy(&got)
    );
}
