//! request-transformer and response-transformer against real upstreams: header and query
//! edits in both directions, template variables, JSON remove/rename through nested arrays,
//! the envelope, and every case where a body must pass untouched (non-JSON, over the cap
//! by Content-Length or while chunked, invalid JSON, HEAD) or be refused (compressed); with
//! proxy-cache, rewritten (and error-responses' replaced) bodies on MISS, HIT and after a
//! revalidation.
use crate::common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// A raw upstream: scripted response bytes per path, written in parts (so the gateway sees
// several body chunks), keep-alive.
// ---------------------------------------------------------------------------------------------

type Script = Vec<Vec<u8>>;
/// Per path: (ETag, script) answered to a request whose `If-None-Match` is that ETag.
type Conditional = Arc<Mutex<HashMap<String, (String, Script)>>>;

struct RawUpstream {
    port: u16,
    hits: Arc<AtomicUsize>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    conditional: Conditional,
    /// Requests answered from `conditional`.
    revalidations: Arc<AtomicUsize>,
}

impl RawUpstream {
    fn start() -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let scripts: Arc<Mutex<HashMap<String, Script>>> = Arc::default();
        let conditional: Conditional = Arc::default();
        let revalidations = Arc::new(AtomicUsize::new(0));
        let (h, s, c, r) = (
            hits.clone(),
            scripts.clone(),
            conditional.clone(),
            revalidations.clone(),
        );
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (h, s, c, r) = (h.clone(), s.clone(), c.clone(), r.clone());
                std::thread::spawn(move || serve(conn, h, s, c, r));
            }
        });
        RawUpstream {
            port,
            hits,
            scripts,
            conditional,
            revalidations,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn on(&self, path: &str, script: Script) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    /// For `path`, `script` answers a request with `If-None-Match: etag`.
    fn on_match(&self, path: &str, etag: &str, script: Script) {
        self.conditional
            .lock()
            .unwrap()
            .insert(path.to_string(), (etag.to_string(), script));
    }
}

fn serve(
    mut c: TcpStream,
    hits: Arc<AtomicUsize>,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    conditional: Conditional,
    revalidations: Arc<AtomicUsize>,
) {
    let _ = c.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        // One request head (the gateway sends no bodies in these tests).
        let Some(head) = read_head(&mut c, &mut buf) else {
            return;
        };
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let path = target.split('?').next().unwrap_or("/").to_string();
        let if_none_match = head.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("if-none-match")
                .then(|| v.trim().to_string())
        });
        let matched = conditional
            .lock()
            .unwrap()
            .get(&path)
            .filter(|(etag, _)| if_none_match.as_deref() == Some(etag.as_str()))
            .map(|(_, script)| script.clone());
        if matched.is_some() {
            revalidations.fetch_add(1, Ordering::SeqCst);
        }
        let script = matched.or_else(|| scripts.lock().unwrap().get(&path).cloned());
        let Some(script) = script else {
            let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        hits.fetch_add(1, Ordering::SeqCst);
        // Parts after the first 15 ms apart.
        let parts = script.iter().enumerate().map(|(i, part)| {
            let gap = if i > 0 { 15 } else { 0 };
            (Duration::from_millis(gap), part.as_slice())
        });
        if !write_script(&mut c, head.starts_with("HEAD "), parts) {
            return;
        }
    }
}

/// A response with Content-Length, written in one go.
fn fixed(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Script {
    let mut r = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len()).into_bytes();
    for (n, v) in headers {
        r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    vec![r]
}

/// A chunked response: the head, then each part as its own chunk and write.
fn chunked(status: u16, headers: &[(&str, &str)], parts: &[&[u8]]) -> Script {
    let mut head = format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n").into_bytes();
    for (n, v) in headers {
        head.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut out = vec![head];
    for p in parts {
        let mut c = format!("{:x}\r\n", p.len()).into_bytes();
        c.extend_from_slice(p);
        c.extend_from_slice(b"\r\n");
        out.push(c);
    }
    out.push(b"0\r\n\r\n".to_vec());
    out
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// GET over a fresh connection, raw: (response, raw bytes).
fn raw_get(gw: &Gateway, path: &str, extra: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
    let (raw, _) = raw_request(gw.port, req.as_bytes(), Duration::from_secs(5));
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "no response for {path}: {:?}\n{}",
            String::from_utf8_lossy(&raw),
            gw.diagnostics()
        )
    })
}

fn gateway_for(up: &RawUpstream, plugin_config: &str) -> Gateway {
    Cfg::new()
        .upstream("u", &[target_addr(&up.addr())], "retries: 0")
        .route_root(&format!(
            "plugins:\n  - name: response-transformer\n    config:\n{plugin_config}"
        ))
        .top("plugins:\n  - name: correlation-id\n")
        .start()
}

/// A plugin list with just the `kind` transformer (request- or response-) and its `config`.
fn transformer(kind: &str, config: &str) -> String {
    format!(
        "plugins:\n  - name: {kind}\n    config:\n{}",
        indent6(config)
    )
}

fn indent6(s: &str) -> String {
    s.lines().map(|l| format!("      {l}\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// request-transformer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn request_headers_and_query_are_transformed_with_variables() {
    let a = Backend::start("a");
    let cfg = r#"remove: { headers: [X-Remove-Me], querystring: [drop] }
rename: { headers: ["X-Old:X-New"], querystring: ["old:new"] }
replace: { headers: ["X-Replace:replaced", "X-Absent:nope"], querystring: ["rep:R", "absent:x"] }
add:
  headers: ["X-Added:yes", "X-Present:not-used", "X-Client:ip=$(client_ip)", "X-Req:$(request_id)", "X-Consumer:$(consumer)"]
  querystring: ["added:a b&c", "present:no", "rid:$(request_id)"]
"#;
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route_u("r", &transformer("request-transformer", cfg))
        .route_u("plain", "")
        .top("plugins:\n  - name: correlation-id\n")
        .start();

    let resp = gw
        .get_response(
            "/r/x?drop=1&old=2&rep=3&present=keep&keep=4&drop=5",
            &[
                ("x-request-id", "trace-42"),
                ("x-remove-me", "gone"),
                ("x-old", "v1"),
                ("x-new", "overwritten"),
                ("x-replace", "orig"),
                ("x-present", "mine"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-42",
        "correlation id still echoed"
    );
    let up = a.last_request().unwrap();
    assert_eq!(
        up.header("x-request-id"),
        Some("trace-42"),
        "id still sent upstream"
    );
    assert_eq!(up.header("x-remove-me"), None);
    assert_eq!(up.header("x-old"), None);
    assert_eq!(
        up.header_joined("x-new").as_deref(),
        Some("v1"),
        "rename replaces"
    );
    assert_eq!(up.header("x-replace"), Some("replaced"));
    assert_eq!(up.header("x-absent"), None, "replace only when present");
    assert_eq!(up.header("x-added"), Some("yes"));
    assert_eq!(up.header("x-present"), Some("mine"), "add only when absent");
    assert_eq!(up.header("x-client"), Some("ip=127.0.0.1"));
    assert_eq!(up.header("x-req"), Some("trace-42"));
    assert_eq!(
        up.header("x-consumer"),
        None,
        "$(consumer) without a consumer: entry skipped"
    );
    assert_eq!(up.path, "/r/x");
    assert_eq!(
        up.query.as_deref(),
        Some("new=2&rep=R&present=keep&keep=4&added=a%20b%26c&rid=trace-42"),
        "{up:?}"
    );

    // Without a query at all, `add` still applies.
    gw.get("/r").await;
    let up = a.last_request().unwrap();
    let q = up.query.unwrap_or_default();
    assert!(q.starts_with("added=a%20b%26c&present=no&rid="), "{q}");

    // Another route is untouched.
    gw.client
        .get(gw.url("/plain?drop=1"))
        .header("x-remove-me", "stays")
        .send()
        .await
        .unwrap();
    let up = a.last_request().unwrap();
    assert_eq!(up.header("x-remove-me"), Some("stays"));
    assert_eq!(up.query.as_deref(), Some("drop=1"));
}

#[tokio::test]
async fn request_header_rename_keeps_every_value() {
    let a = Backend::start("a");
    let gw = one_route(&a, "/", "plugins:\n  - name: request-transformer\n    config: { rename: { headers: [\"X-Tag:X-Label\"] } }");
    gw.client
        .get(gw.url("/"))
        .header("x-tag", "one")
        .header("x-tag", "two")
        .send()
        .await
        .unwrap();
    let up = a.last_request().unwrap();
    assert_eq!(up.header_joined("x-label").as_deref(), Some("one, two"));
    assert_eq!(up.header("x-tag"), None);
}

// ---------------------------------------------------------------------------------------------
// response-transformer: headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn response_headers_are_transformed_but_not_on_gateway_errors() {
    let a = Backend::start("a");
    a.set_extra_headers(&[
        ("x-internal", "secret"),
        ("x-old-resp", "v"),
        ("x-replace-resp", "orig"),
    ]);
    let cfg = r#"remove: { headers: [X-Internal] }
rename: { headers: ["X-Old-Resp:X-New-Resp"] }
replace: { headers: ["X-Replace-Resp:new", "X-Not-There:x"] }
add: { headers: ["X-Added-Resp:1", "X-Backend:not-used", "X-Trace:$(request_id)"] }
"#;
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .upstream("dead", &[target_addr(&dead_addr())], "retries: 0")
        .route_u("r", &transformer("response-transformer", cfg))
        .route(
            "d",
            &["/d"],
            "dead",
            &transformer("response-transformer", cfg),
        )
        .top("plugins:\n  - name: correlation-id\n")
        .start();
    let resp = gw.get_response("/r", &[("x-request-id", "rid-7")]).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(h.get("x-internal").is_none());
    assert!(h.get("x-old-resp").is_none());
    assert_eq!(h["x-new-resp"], "v");
    assert_eq!(h["x-replace-resp"], "new");
    assert!(h.get("x-not-there").is_none());
    assert_eq!(h["x-added-resp"], "1");
    assert_eq!(h["x-backend"], "a", "add only when absent");
    assert_eq!(h["x-trace"], "rid-7");
    assert_eq!(h["x-request-id"], "rid-7", "correlation id unaffected");
    // No JSON rule: the body is the upstream's, with its Content-Length.
    assert!(h.get("content-length").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["backend"], "a");

    // A gateway-made 502 is not transformed.
    let resp = gw.get("/d").await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().get("x-added-resp").is_none());
    assert_error_body(&resp.text().await.unwrap(), "bad_gateway");
}

// ---------------------------------------------------------------------------------------------
// response-transformer: JSON bodies
// ---------------------------------------------------------------------------------------------

const NESTED: &str = r#"{
  "data": [
    {"id": 1, "user_name": "ada", "password": "x", "roles": [{"name": "admin", "internal_id": 7}]},
    [[{"user_name": "alan", "password": "y"}]]
  ],
  "password": "top",
  "big": 12345678901234567890123
}"#;

#[tokio::test]
async fn json_fields_removed_and_renamed_through_nested_arrays() {
    let up = RawUpstream::start();
    up.on("/fixed", fixed(200, &[JSON], NESTED.as_bytes()));
    let parts: Vec<&[u8]> = NESTED.as_bytes().chunks(17).collect();
    up.on("/chunked", chunked(200, &[JSON], &parts));
    let gw = gateway_for(
        &up,
        "      remove: { json: [password, internal_id] }\n      rename: { json: [\"user_name:name\"] }\n",
    );
    let want = json!({
        "data": [
            {"id": 1, "name": "ada", "roles": [{"name": "admin"}]},
            [[{"name": "alan"}]]
        ]
    });
    for path in ["/fixed", "/chunked"] {
        let r = raw_get(&gw, path, "");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-length"), None, "{path}: length is gone");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{path}");
        let mut v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {}", r.text()));
        // Numbers are copied, not round-tripped through f64.
        assert!(
            r.text().ends_with(r#""big":12345678901234567890123}"#),
            "{path}: {}",
            r.text()
        );
        v.as_object_mut().unwrap().remove("big");
        assert_eq!(v, want, "{path}");
        assert!(r.header("x-request-id").is_some());
    }

    // Keep-alive survives a rewritten body: a second request on the same connection.
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /fixed HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = Vec::new();
    while !first.ends_with(b"0\r\n\r\n") {
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).expect("first response");
        assert!(n > 0, "closed after a rewritten body");
        first.extend_from_slice(&tmp[..n]);
    }
    let r1 = parse_response(&first).unwrap();
    assert!(serde_json::from_slice::<Value>(&r1.body).is_ok());
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (raw, _) = read_until_close(&mut s, Duration::from_secs(5));
    let r2 = parse_response(&raw).expect("second response on the same connection");
    assert_eq!(r2.status, 200);
    assert!(serde_json::from_slice::<Value>(&r2.body).is_ok());
    assert_eq!(up.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn envelope_wraps_with_success_and_request_id() {
    let up = RawUpstream::start();
    up.on("/ok", fixed(200, &[JSON], br#"{"id": 1, "secret": "s"}"#));
    up.on(
        "/missing",
        fixed(
            404,
            &[("Content-Type", "application/problem+json")],
            br#"{"title": "no such user"}"#,
        ),
    );
    up.on("/list", chunked(201, &[JSON], &[b"[1,", b" 2]"]));
    let gw = gateway_for(
        &up,
        "      remove: { json: [secret] }\n      envelope: { enabled: true, version: v2 }\n",
    );

    let r = raw_get(&gw, "/ok", "X-Request-ID: env-1\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), None);
    let v: Value = serde_json::from_slice(&r.body).expect("valid JSON");
    assert_eq!(v["success"], true);
    assert_eq!(v["data"], json!({"id": 1}));
    assert_eq!(v["meta"]["request_id"], "env-1");
    assert_eq!(v["meta"]["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(v["meta"]["version"], "v2");
    let ts = v["meta"]["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339 UTC timestamp: {ts}"
    );
    assert_eq!(v.as_object().unwrap().len(), 3);

    let r = raw_get(&gw, "/missing", "");
    assert_eq!(r.status, 404);
    let v: Value = serde_json::from_slice(&r.body).expect("valid JSON");
    assert_eq!(v["success"], false);
    assert_eq!(v["data"]["title"], "no such user");
    assert_eq!(v["meta"]["request_id"].as_str(), r.header("x-request-id"));

    let r = raw_get(&gw, "/list", "");
    assert_eq!(r.status, 201);
    let v: Value = serde_json::from_slice(&r.body).expect("valid JSON");
    assert_eq!(v["success"], true);
    assert_eq!(v["data"], json!([1, 2]));
}

#[tokio::test]
async fn bodies_that_must_pass_untouched() {
    let up = RawUpstream::start();
    let looks_json = br#"{"password": "x", "keep": 1}"#;
    up.on(
        "/text",
        fixed(200, &[("Content-Type", "text/plain")], looks_json),
    );
    up.on("/none", fixed(200, &[], looks_json));
    up.on(
        "/gzip",
        fixed(
            200,
            &[JSON, ("Content-Encoding", "gzip")],
            b"\x1f\x8b\x08\x00\xff{\"password\":1}\x00\x01",
        ),
    );
    up.on(
        "/gzip-chunked",
        chunked(
            200,
            &[JSON, ("Content-Encoding", "gzip")],
            &[b"\x1f\x8b\x08", b"\x00{\"password\":1}"],
        ),
    );
    let mut big = String::from("{\"password\":\"p\",\"pad\":\"");
    big.push_str(&"x".repeat(3000));
    big.push_str("\"}");
    up.on("/big", fixed(200, &[JSON], big.as_bytes()));
    let parts: Vec<&[u8]> = big.as_bytes().chunks(700).collect();
    up.on("/big-chunked", chunked(200, &[JSON], &parts));
    let invalid = br#"{"password": "x", "#;
    up.on("/invalid", fixed(200, &[JSON], invalid));
    up.on(
        "/invalid-chunked",
        chunked(200, &[JSON], &[b"{\"password\"", b": nope}"]),
    );
    let ok = br#"{"password":"x","keep":1}"#;
    up.on("/small", fixed(200, &[JSON], ok));
    let gw = gateway_for(
        &up,
        "      remove: { json: [password] }\n      max_body_bytes: 2kb\n",
    );

    for (path, want, framing) in [
        ("/text", &looks_json[..], "length"),
        ("/none", &looks_json[..], "length"),
        ("/big", big.as_bytes(), "length"),
        ("/big-chunked", big.as_bytes(), "chunked"),
        ("/invalid", &invalid[..], "chunked"),
        ("/invalid-chunked", &b"{\"password\": nope}"[..], "chunked"),
    ] {
        let r = raw_get(&gw, path, "");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, want, "{path}: body must pass byte for byte");
        match framing {
            "length" => assert_eq!(
                r.header("content-length"),
                Some(want.len().to_string().as_str()),
                "{path}: Content-Length kept"
            ),
            _ => assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{path}"),
        }
    }

    // Each pass-through is counted by reason (series exist from startup).
    let samples = parse_metrics(&gw.metrics_text().await);
    let skipped = |reason: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "response_transform_skipped_total"
                    && s.labels.get("route").map(String::as_str) == Some("r")
                    && s.labels.get("reason").map(String::as_str) == Some(reason)
            })
            .map(|s| s.value)
    };
    assert_eq!(skipped("too_large"), Some(2.0));
    assert_eq!(skipped("invalid_json"), Some(2.0));

    // A compressed JSON body cannot be rewritten and must not pass unmasked: the gateway's
    // JSON 502 (the upstream was asked for identity and ignored it), counted.
    for path in ["/gzip", "/gzip-chunked"] {
        let r = raw_get(&gw, path, "");
        assert_eq!(r.status, 502, "{path}");
        assert_error_body(&r.text(), "bad_gateway");
        assert!(!r.text().contains("password"), "{path}");
    }
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "response_transform_refused_total", &[("route", "r")]),
        Some(2.0)
    );

    // Under the cap it is rewritten (the same route, so the skips above were not config).
    let r = raw_get(&gw, "/small", "");
    assert_eq!(r.body, br#"{"keep":1}"#);
    assert_eq!(r.header("content-length"), None);

    // HEAD: no body, the upstream's Content-Length stays.
    let req = b"HEAD /small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (raw, _) = raw_request(gw.port, req, Duration::from_secs(5));
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", ok.len())),
        "{head}"
    );
}

#[tokio::test]
async fn json_with_content_length_rewritten_via_reqwest() {
    // The same through an ordinary client: no Content-Length, a body that parses.
    let up = RawUpstream::start();
    up.on(
        "/u",
        fixed(
            200,
            &[JSON, ("ETag", "\"abc\""), ("Accept-Ranges", "bytes")],
            br#"[{"email":"a@x","name":"A"},{"email":"b@x","name":"B"}]"#,
        ),
    );
    let gw = gateway_for(&up, "      remove: { json: [email] }\n");
    let resp = gw.get("/u").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    assert!(resp.headers().get("accept-ranges").is_none());
    assert_eq!(resp.headers()["etag"], "W/\"abc\"", "rewritten: weak ETag");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!([{"name": "A"}, {"name": "B"}]));
}

// ---------------------------------------------------------------------------------------------
// With proxy-cache: MISS, HIT and after a revalidation
// ---------------------------------------------------------------------------------------------

/// The answer to a matching `If-None-Match`: 304, fresh for another second.
fn not_modified(etag: &str) -> Script {
    vec![
        format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nCache-Control: max-age=1\r\n\r\n")
            .into_bytes(),
    ]
}

/// GET over a fresh connection that the gateway must close after one complete answer:
/// (response, raw bytes).
fn closed_get(gw: &Gateway, path: &str) -> (RawResponse, Vec<u8>) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (r, raw, closed) = gw.raw_exchange(req.as_bytes(), Duration::from_secs(5));
    assert!(closed, "{path}: connection not closed after the answer");
    (r, raw)
}

/// The body is exactly what the head announces: `Content-Length` bytes, or a terminated
/// chunked stream.
fn assert_framed(raw: &[u8], r: &RawResponse, what: &str) {
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    match r.header("content-length") {
        Some(cl) => {
            assert_eq!(r.header("transfer-encoding"), None, "{what}");
            assert_eq!(
                raw.len() - body_at,
                cl.parse::<usize>().unwrap(),
                "{what}: body bytes differ from Content-Length"
            );
        }
        None => {
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{what}");
            assert!(
                raw.ends_with(b"\r\n0\r\n\r\n"),
                "{what}: chunked body not terminated"
            );
        }
    }
}

#[tokio::test]
async fn rewritten_json_on_miss_hit_and_after_revalidation() {
    // After expiry the gateway revalidates (the upstream answers 304) and serves the stored
    // body by a path that ends it with Pingora's `Done`, not an end-of-stream chunk: the
    // body held back for the rewrite must still go out, rewritten.
    let up = RawUpstream::start();
    let doc =
        br#"{"id":1,"user_name":"ada","password":"p","roles":[{"name":"admin","password":"q"}]}"#;
    let cc = ("Cache-Control", "max-age=1");
    let parts: Vec<&[u8]> = doc.chunks(20).collect();
    let paths = [
        ("/doc", "\"d1\""),
        ("/chunked", "\"c1\""),
        ("/env", "\"e1\""),
    ];
    up.on("/doc", fixed(200, &[JSON, cc, ("ETag", paths[0].1)], doc));
    up.on(
        "/chunked",
        chunked(200, &[JSON, cc, ("ETag", paths[1].1)], &parts),
    );
    up.on("/env", fixed(200, &[JSON, cc, ("ETag", paths[2].1)], doc));
    for (path, etag) in paths {
        up.on_match(path, etag, not_modified(etag));
    }
    let gw = Cfg::new()
        .upstream("u", &[target_addr(&up.addr())], "retries: 0")
        .route(
            "rules",
            &["/doc", "/chunked"],
            "u",
            "plugins:\n  - name: proxy-cache\n  - name: response-transformer\n    config:\n      remove: { json: [password] }\n      rename: { json: [\"user_name:name\"] }\n",
        )
        .route_u("env", "plugins:\n  - name: proxy-cache\n  - name: response-transformer\n    config:\n      remove: { json: [password] }\n      envelope: { enabled: true }\n")
        .top("plugins:\n  - name: correlation-id\n")
        .start();

    let check = |path: &str, etag: &str, cache: &str| {
        let what = format!("{path} ({cache})");
        let (r, raw) = closed_get(&gw, path);
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.header("x-cache-status"), Some(cache), "{what}");
        assert_framed(&raw, &r, &what);
        assert_eq!(
            r.header("content-length"),
            None,
            "{what}: rewritten, so chunked"
        );
        assert_eq!(
            r.header("etag"),
            Some(format!("W/{etag}").as_str()),
            "{what}"
        );
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", r.text()));
        if path == "/env" {
            assert_eq!(v["success"], true, "{what}");
            assert_eq!(
                v["data"],
                json!({"id": 1, "user_name": "ada", "roles": [{"name": "admin"}]}),
                "{what}"
            );
            // The envelope is this answer's, not the stored one's.
            let id = r.header("x-request-id");
            assert!(id.is_some(), "{what}");
            assert_eq!(v["meta"]["request_id"].as_str(), id, "{what}");
        } else {
            assert_eq!(
                v,
                json!({"id": 1, "name": "ada", "roles": [{"name": "admin"}]}),
                "{what}"
            );
        }
    };

    for (path, etag) in paths {
        check(path, etag, "MISS");
        check(path, etag, "HIT");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);
    std::thread::sleep(Duration::from_millis(2100));
    for (path, etag) in paths {
        // Revalidated (304), then fresh again for a second.
        check(path, etag, "EXPIRED");
        check(path, etag, "HIT");
    }
    assert_eq!(up.revalidations.load(Ordering::SeqCst), 3);
    assert_eq!(up.hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn rewritten_json_served_stale_on_an_upstream_5xx() {
    // `stale_if_error` on an upstream 503 serves the stored body by the same path as a
    // revalidation (ended by `Done`): rewritten all the same.
    let up = RawUpstream::start();
    let doc = br#"{"id":7,"password":"p"}"#;
    up.on(
        "/doc",
        fixed(
            200,
            &[JSON, ("Cache-Control", "max-age=1"), ("ETag", "\"s1\"")],
            doc,
        ),
    );
    let gw = one_upstream(&[target_addr(&up.addr())], "retries: 0", "/", "plugins:\n  - name: proxy-cache\n    config: { stale_if_error: 1m }\n  - name: response-transformer\n    config:\n      remove: { json: [password] }\n");
    let (r, _) = closed_get(&gw, "/doc");
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert_eq!(r.body, br#"{"id":7}"#);
    up.on(
        "/doc",
        fixed(503, &[JSON], br#"{"error":"down","password":"x"}"#),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let (r, raw) = closed_get(&gw, "/doc");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache-status"), Some("STALE"));
    assert_framed(&raw, &r, "STALE");
    assert_eq!(r.body, br#"{"id":7}"#, "{:?}", r.text());
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn error_responses_replacement_on_miss_hit_and_after_revalidation() {
    // error-responses (`upstream: true`) drops the upstream's body and sends its own at the
    // end: a cached 404 served after a revalidation must carry the replacement too.
    let up = RawUpstream::start();
    let etag = "\"g1\"";
    up.on(
        "/gone",
        fixed(
            404,
            &[JSON, ("Cache-Control", "max-age=1"), ("ETag", etag)],
            br#"{"upstream":"not found","detail":"internal"}"#,
        ),
    );
    up.on_match("/gone", etag, not_modified(etag));
    let gw = Cfg::new()
        .upstream("u", &[target_addr(&up.addr())], "retries: 0")
        .route_root("plugins:\n  - name: proxy-cache\n  - name: error-responses\n    config:\n      upstream: true\n      responses:\n        404: { body: '{\"error\":\"gone\",\"request_id\":\"$(request_id)\"}' }\n")
        .top("plugins:\n  - name: correlation-id\n")
        .start();

    let check = |cache: &str| {
        let (r, raw) = closed_get(&gw, "/gone");
        assert_eq!(r.status, 404, "{cache}");
        assert_eq!(r.header("x-cache-status"), Some(cache), "{cache}");
        assert_framed(&raw, &r, cache);
        let id = r.header("x-request-id").unwrap_or_default();
        assert!(!id.is_empty(), "{cache}");
        assert_eq!(
            r.text(),
            format!(r#"{{"error":"gone","request_id":"{id}"}}"#),
            "{cache}"
        );
    };
    check("MISS");
    check("HIT");
    std::thread::sleep(Duration::from_millis(2100));
    check("EXPIRED");
    check("HIT");
    assert_eq!(up.revalidations.load(Ordering::SeqCst), 1);
    assert_eq!(up.hits.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_entries_are_config_errors_with_path_and_line() {
    let (_, err) = assert_plugins_refused(
        r#"      - name: request-transformer
        config:
          add:
            headers: ["X-Ok:1", "no-colon", "X-Var:$(nope)"]
          remove:
            headers: [Content-Length]
          rename:
            querystring: ["onlyone"]
      - name: response-transformer
        config:
          rename:
            json: ["a:b", "c:b"]
"#,
        &[
            "routes[0].plugins[0].config.add.headers[1]: expected \"Name:value\", got \"no-colon\" (line 12)",
            "routes[0].plugins[0].config.add.headers[2]: unknown variable \"$(nope)\"",
            "routes[0].plugins[0].config.remove.headers[0]: header \"Content-Length\" cannot be transformed",
            "routes[0].plugins[0].config.rename.querystring[0]: expected \"from:to\", got \"onlyone\" (line 16)",
            "routes[0].plugins[1].config.rename.json[1]: two renames into \"b\"",
        ],
    );
    assert!(err.contains("(line 14)"), "{err}");
    assert!(err.contains("(line 20)"), "{err}");
}
