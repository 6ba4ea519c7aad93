//! response-compression against real upstreams and the real gateway binary: br, gzip and
//! zstd bodies (with Content-Length and chunked) decoded by the client equal the upstream's
//! bytes; Accept-Encoding q-values; every answer that must pass untouched; Vary, ETag and
//! framing headers; streaming (a chunk is sent before the upstream's next one); the rewrite of
//! response-transformer compressed (after a cache revalidation too); proxy-cache storing one
//! identity object that serves every client, revalidated answers included; metrics and
//! config errors.
use crate::common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A raw upstream: per path, a handler turns the request head into response parts, each
// written after its delay (so the gateway sees separate body chunks), keep-alive.
// ---------------------------------------------------------------------------------------------

/// Response bytes in parts: (delay before writing, bytes).
type Script = Vec<(Duration, Vec<u8>)>;
type Handler = Arc<dyn Fn(&Head) -> Script + Send + Sync>;

/// A request head as the upstream received it.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    /// lowercase names
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Upstream {
    port: u16,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Head>>>,
    handlers: Arc<Mutex<HashMap<String, Handler>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let up = Upstream {
            port,
            hits: Arc::default(),
            seen: Arc::default(),
            handlers: Arc::default(),
        };
        let (h, s, hs) = (up.hits.clone(), up.seen.clone(), up.handlers.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let (h, s, hs) = (h.clone(), s.clone(), hs.clone());
                std::thread::spawn(move || serve(conn, h, s, hs));
            }
        });
        up
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn on(&self, path: &str, f: impl Fn(&Head) -> Script + Send + Sync + 'static) {
        self.handlers
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(f));
    }

    /// The same script for every request.
    fn fixed(&self, path: &str, script: Script) {
        self.on(path, move |_| script.clone());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Head> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut c: TcpStream,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Head>>>,
    handlers: Arc<Mutex<HashMap<String, Handler>>>,
) {
    let _ = c.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        // One request head (the gateway sends no bodies in these tests).
        let Some(text) = read_head(&mut c, &mut buf) else {
            return;
        };
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("/").to_string();
        let head = Head {
            method,
            path: target.split('?').next().unwrap_or("/").to_string(),
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
        };
        let handler = handlers.lock().unwrap().get(&head.path).cloned();
        let Some(handler) = handler else {
            let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        hits.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(head.clone());
        let script = handler(&head);
        let parts = script.iter().map(|(delay, part)| (*delay, part.as_slice()));
        if !write_script(&mut c, head.method == "HEAD", parts) {
            return;
        }
    }
}

fn head_bytes(status: u16, headers: &[(&str, &str)], extra: &str) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} X\r\n{extra}").into_bytes();
    for (n, v) in headers {
        r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// A response with Content-Length, written in one go.
fn fixed(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Script {
    let mut r = head_bytes(
        status,
        headers,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    r.extend_from_slice(body);
    vec![(Duration::ZERO, r)]
}

/// A chunked response: the head and the first part, then each other part as its own chunk
/// and write, `gap` apart.
fn chunked(status: u16, headers: &[(&str, &str)], parts: &[&[u8]], gap: Duration) -> Script {
    let mut out = vec![(
        Duration::ZERO,
        head_bytes(status, headers, "Transfer-Encoding: chunked\r\n"),
    )];
    for (i, p) in parts.iter().enumerate() {
        let mut c = format!("{:x}\r\n", p.len()).into_bytes();
        c.extend_from_slice(p);
        c.extend_from_slice(b"\r\n");
        out.push((if i == 0 { Duration::ZERO } else { gap }, c));
    }
    out.push((Duration::ZERO, b"0\r\n\r\n".to_vec()));
    out
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A JSON document of about `size` bytes.
fn json_body(size: usize) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b\"],\"secret\":\"s{i}\"}}",
            i * 3 % 1000,
            i % 100
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 answer with its head, the de-chunked body and the bytes as received.
struct Got {
    resp: RawResponse,
    raw: Vec<u8>,
}

impl Got {
    fn status(&self) -> u16 {
        self.resp.status
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.resp.header(name)
    }
    /// Every value of `name`, joined with ", ".
    fn joined(&self, name: &str) -> String {
        self.resp
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn vary_names(&self) -> Vec<String> {
        self.joined("vary")
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect()
    }
    fn varies_on_accept_encoding(&self) -> bool {
        self.vary_names().iter().any(|n| n == "accept-encoding")
    }
    /// The body decoded by its Content-Encoding (none, br, gzip, zstd).
    fn decoded(&self) -> Vec<u8> {
        decode(self.header("content-encoding"), &self.resp.body)
    }
    /// A compressed answer: framed chunked, no Content-Length, chunked stream terminated.
    fn assert_compressed_framing(&self, what: &str) {
        assert_eq!(self.header("content-length"), None, "{what}");
        assert_eq!(self.header("transfer-encoding"), Some("chunked"), "{what}");
        assert!(
            self.raw.ends_with(b"\r\n0\r\n\r\n"),
            "{what}: chunked body not terminated"
        );
    }
}

fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("valid gzip stream");
        }
        Some("br") => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli stream");
        }
        Some("zstd") => {
            zstd::stream::read::Decoder::new(body)
                .unwrap()
                .read_to_end(&mut out)
                .expect("valid zstd stream");
        }
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

/// `method path` over a fresh connection with `Accept-Encoding: ae` (None: no header).
fn request(gw: &Gateway, method: &str, path: &str, ae: Option<&str>, extra: &str) -> Got {
    let ae = ae.map_or(String::new(), |v| format!("Accept-Encoding: {v}\r\n"));
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{ae}{extra}Connection: close\r\n\r\n");
    let (resp, raw, _) = gw.raw_exchange(req.as_bytes(), Duration::from_secs(10));
    Got { resp, raw }
}

fn get(gw: &Gateway, path: &str, ae: Option<&str>) -> Got {
    request(gw, "GET", path, ae, "")
}

/// A gateway with route `r` on `/` to `up`, with `plugins` (YAML list items, route level).
fn gateway(up: &Upstream, plugins: &str) -> Gateway {
    one_upstream(
        &[target_addr(&up.addr())],
        "retries: 0",
        "/",
        &format!("plugins:\n{plugins}"),
    )
}

const COMPRESSION: &str = "  - name: response-compression\n";

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_algorithm_decodes_to_the_upstream_bytes() {
    let up = Upstream::start();
    let big = json_body(200 * 1024);
    up.fixed("/fixed", fixed(200, &[JSON], &big));
    let parts: Vec<&[u8]> = big.chunks(7000).collect();
    up.fixed("/chunked", chunked(200, &[JSON], &parts, Duration::ZERO));
    let gw = gateway(&up, COMPRESSION);

    let mut count: HashMap<&str, f64> = HashMap::new();
    for path in ["/fixed", "/chunked"] {
        for algo in ["gzip", "br", "zstd"] {
            let what = format!("{path} {algo}");
            let g = get(&gw, path, Some(algo));
            assert_eq!(g.status(), 200, "{what}");
            assert_eq!(g.header("content-encoding"), Some(algo), "{what}");
            g.assert_compressed_framing(&what);
            assert!(
                g.varies_on_accept_encoding(),
                "{what}: {:?}",
                g.vary_names()
            );
            assert!(
                g.resp.body.len() * 4 < big.len(),
                "{what}: {} bytes is not compressed",
                g.resp.body.len()
            );
            assert!(g.decoded() == big, "{what}: decoded body differs");
            *count.entry(algo).or_default() += 1.0;
        }
    }
    // The upstream was asked for the identity body every time.
    let seen = up.seen();
    assert_eq!(seen.len(), 6);
    for h in &seen {
        assert_eq!(h.header("accept-encoding"), Some("identity"), "{h:?}");
    }
    let text = gw.metrics_text().await;
    for (algo, n) in &count {
        assert_eq!(
            metric(
                &text,
                "response_compressed_total",
                &[("route", "r"), ("encoding", algo)]
            ),
            Some(*n),
            "{algo}"
        );
        let bytes_in = metric(
            &text,
            "response_compression_in_bytes_total",
            &[("encoding", algo)],
        )
        .unwrap_or(0.0);
        let bytes_out = metric(
            &text,
            "response_compression_out_bytes_total",
            &[("encoding", algo)],
        )
        .unwrap_or(0.0);
        // Counted when the module is dropped at the end of each request: give the last
        // request's logging phase a moment.
        assert!(
            bytes_in >= big.len() as f64 && bytes_out > 0.0 && bytes_out * 4.0 < bytes_in,
            "{algo}: in {bytes_in} out {bytes_out}"
        );
    }
}

#[tokio::test]
async fn accept_encoding_q_values_choose_the_coding() {
    let up = Upstream::start();
    let body = json_body(8 * 1024);
    up.fixed("/j", fixed(200, &[JSON], &body));
    let gw = gateway(&up, COMPRESSION);

    for (ae, expect) in [
        // Server preference (default zstd, br, gzip) among equal q-values.
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip, deflate, br"), Some("br")),
        (Some("gzip;q=0, br"), Some("br")),
        (Some("gzip;q=0"), None),
        (Some("br;q=0.5, gzip"), Some("gzip")),
        (Some("br;q=0.5, gzip;q=0.8, zstd;q=0.1"), Some("gzip")),
        (Some("*"), Some("zstd")),
        (Some("*;q=0"), None),
        (Some("*;q=0, gzip"), Some("gzip")),
        (Some("identity;q=0, gzip"), Some("gzip")),
        (Some("identity"), None),
        (Some("identity, gzip;q=0.5"), None),
        (Some("deflate"), None),
        (Some(""), None),
        (None, None),
    ] {
        let g = get(&gw, "/j", ae);
        assert_eq!(g.status(), 200, "{ae:?}");
        assert_eq!(g.header("content-encoding"), expect, "{ae:?}");
        // Compressible for somebody: Vary whether or not this client got a coding.
        assert!(g.varies_on_accept_encoding(), "{ae:?}");
        assert!(g.decoded() == body, "{ae:?}: body differs");
        match expect {
            Some(_) => g.assert_compressed_framing(&format!("{ae:?}")),
            None => {
                let cl = body.len().to_string();
                assert_eq!(g.header("content-length"), Some(cl.as_str()), "{ae:?}");
            }
        }
    }

    // Only the configured algorithms, in the configured order.
    let gw = gateway(
        &up,
        "  - name: response-compression\n    config: { algorithms: [gzip, br] }\n",
    );
    assert_eq!(
        get(&gw, "/j", Some("br, gzip, zstd")).header("content-encoding"),
        Some("gzip")
    );
    assert_eq!(
        get(&gw, "/j", Some("zstd")).header("content-encoding"),
        None
    );
}

#[tokio::test]
async fn answers_that_pass_untouched() {
    let up = Upstream::start();
    let big = json_body(4096);
    let small = br#"{"ok":true}"#.to_vec();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&big).unwrap();
        e.finish().unwrap()
    };
    up.fixed("/small", fixed(200, &[JSON], &small));
    up.fixed("/png", fixed(200, &[("Content-Type", "image/png")], &big));
    up.fixed("/none", fixed(200, &[], &big));
    up.fixed(
        "/gzipped",
        fixed(200, &[JSON, ("Content-Encoding", "gzip")], &gz),
    );
    up.fixed(
        "/no-transform",
        fixed(
            200,
            &[JSON, ("Cache-Control", "public, no-transform")],
            &big,
        ),
    );
    up.fixed(
        "/partial",
        fixed(206, &[JSON, ("Content-Range", "bytes 0-4095/9000")], &big),
    );
    up.fixed(
        "/nocontent",
        vec![(Duration::ZERO, head_bytes(204, &[JSON], ""))],
    );
    up.on("/etag", {
        let big = big.clone();
        move |h| {
            if h.header("if-none-match") == Some("\"v1\"") {
                vec![(
                    Duration::ZERO,
                    head_bytes(304, &[JSON, ("ETag", "\"v1\"")], ""),
                )]
            } else {
                fixed(200, &[JSON, ("ETag", "\"v1\"")], &big)
            }
        }
    });
    up.fixed("/head", fixed(200, &[JSON], &big));
    let gw = gateway(&up, COMPRESSION);

    let exact = |g: &Got, body: &[u8], what: &str| {
        assert_eq!(g.status(), 200, "{what}");
        assert_eq!(g.header("content-encoding"), None, "{what}");
        let cl = body.len().to_string();
        assert_eq!(g.header("content-length"), Some(cl.as_str()), "{what}");
        assert!(g.resp.body == body, "{what}: body changed");
        assert!(!g.varies_on_accept_encoding(), "{what}");
    };
    // Under min_size (1kb), a type not listed, no Content-Type at all, no-transform.
    exact(&get(&gw, "/small", Some("gzip")), &small, "small");
    exact(&get(&gw, "/png", Some("gzip")), &big, "png");
    exact(&get(&gw, "/none", Some("gzip")), &big, "no content-type");
    exact(
        &get(&gw, "/no-transform", Some("gzip")),
        &big,
        "no-transform",
    );

    // Already encoded: the upstream's bytes and coding, not compressed twice.
    for ae in ["gzip", "br"] {
        let g = get(&gw, "/gzipped", Some(ae));
        assert_eq!(g.status(), 200);
        assert_eq!(g.header("content-encoding"), Some("gzip"), "{ae}");
        assert!(g.resp.body == gz, "{ae}: encoded body changed");
        assert!(g.decoded() == big);
    }

    // A range answer.
    let g = get(&gw, "/partial", Some("gzip"));
    assert_eq!(g.status(), 206);
    assert_eq!(g.header("content-encoding"), None);
    assert_eq!(g.header("content-range"), Some("bytes 0-4095/9000"));
    assert!(g.resp.body == big);

    // 204 and 304 have no body.
    let g = get(&gw, "/nocontent", Some("gzip"));
    assert_eq!(g.status(), 204);
    assert_eq!(g.header("content-encoding"), None);
    assert_eq!(g.header("transfer-encoding"), None);
    let g = request(
        &gw,
        "GET",
        "/etag",
        Some("gzip"),
        "If-None-Match: \"v1\"\r\n",
    );
    assert_eq!(g.status(), 304);
    assert_eq!(g.header("content-encoding"), None);
    assert_eq!(g.header("transfer-encoding"), None);
    assert_eq!(g.header("etag"), Some("\"v1\""));

    // HEAD: the head of the identity answer, untouched.
    let g = request(&gw, "HEAD", "/head", Some("gzip"), "");
    assert_eq!(g.status(), 200);
    assert_eq!(g.header("content-encoding"), None);
    let cl = big.len().to_string();
    assert_eq!(g.header("content-length"), Some(cl.as_str()));
    assert!(g.resp.body.is_empty());
    assert_eq!(
        up.seen().last().map(|h| h.method.clone()).as_deref(),
        Some("HEAD")
    );

    // The same answers are compressed when the rule that kept them apart goes.
    let gw = gateway(
        &up,
        "  - name: response-compression\n    config: { min_size: 0, types: [\"*/*\"] }\n",
    );
    for path in ["/small", "/png"] {
        let g = get(&gw, path, Some("gzip"));
        assert_eq!(g.header("content-encoding"), Some("gzip"), "{path}");
        g.assert_compressed_framing(path);
    }
}

#[tokio::test]
async fn etag_weakened_vary_merged_ranges_dropped() {
    let up = Upstream::start();
    let body = json_body(4096);
    up.fixed(
        "/strong",
        fixed(
            200,
            &[
                JSON,
                ("ETag", "\"abc\""),
                ("Accept-Ranges", "bytes"),
                ("Vary", "Origin"),
            ],
            &body,
        ),
    );
    up.fixed(
        "/weak",
        fixed(
            200,
            &[JSON, ("ETag", "W/\"abc\""), ("Vary", "Accept-Encoding")],
            &body,
        ),
    );
    let gw = gateway(&up, COMPRESSION);

    let g = get(&gw, "/strong", Some("gzip"));
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert_eq!(g.header("etag"), Some("W/\"abc\""));
    assert_eq!(g.header("accept-ranges"), None);
    assert_eq!(g.joined("vary"), "Origin, Accept-Encoding");
    assert!(g.decoded() == body);

    // Not compressed for this client: the head stays as the upstream sent it, plus Vary.
    let g = get(&gw, "/strong", None);
    assert_eq!(g.header("content-encoding"), None);
    assert_eq!(g.header("etag"), Some("\"abc\""));
    assert_eq!(g.header("accept-ranges"), Some("bytes"));
    assert_eq!(g.joined("vary"), "Origin, Accept-Encoding");

    let g = get(&gw, "/weak", Some("br"));
    assert_eq!(g.header("content-encoding"), Some("br"));
    assert_eq!(g.header("etag"), Some("W/\"abc\""));
    assert_eq!(g.joined("vary"), "Accept-Encoding", "named once");
}

#[tokio::test]
async fn each_chunk_is_sent_before_the_upstream_sends_the_next() {
    let up = Upstream::start();
    let first = b"{\"event\":\"first\",\"padding\":\"".to_vec();
    let rest = b"the rest\"}".to_vec();
    up.fixed(
        "/stream",
        chunked(
            200,
            &[("Content-Type", "application/x-ndjson")],
            &[&first, &rest],
            Duration::from_millis(1500),
        ),
    );
    let gw = gateway(&up, COMPRESSION);

    for algo in ["gzip", "br", "zstd"] {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
        s.write_all(
            format!(
                "GET /stream HTTP/1.1\r\nHost: t\r\nAccept-Encoding: {algo}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        // Before the upstream's second chunk (1.5 s later), what arrived decodes to the
        // first chunk.
        let started = Instant::now();
        let mut raw = Vec::new();
        let mut decoded = Vec::new();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while decoded != first && started.elapsed() < Duration::from_millis(1200) {
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                raw.extend_from_slice(&buf[..n]);
            }
            if let Some(r) = parse_response(&raw) {
                decoded = partial_decode(algo, &r.body);
            }
        }
        assert!(
            decoded == first,
            "{algo}: after {:?} only {:?} decoded from {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&decoded),
            String::from_utf8_lossy(&raw)
        );
        // Then the whole body.
        let (tail, _) = read_until_close(&mut s, Duration::from_secs(5));
        raw.extend_from_slice(&tail);
        let r = parse_response(&raw).unwrap();
        assert_eq!(r.header("content-encoding"), Some(algo));
        assert!(raw.ends_with(b"\r\n0\r\n\r\n"), "{algo}: not terminated");
        let all = decode(Some(algo), &r.body);
        assert_eq!(all, [first.clone(), rest.clone()].concat(), "{algo}");
    }
}

/// What the bytes received so far of an unfinished stream decode to.
fn partial_decode(algo: &str, data: &[u8]) -> Vec<u8> {
    match algo {
        "gzip" => {
            let mut d = flate2::write::GzDecoder::new(Vec::new());
            let _ = d.write_all(data);
            let _ = d.flush();
            d.get_ref().clone()
        }
        "br" => {
            let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
            let _ = d.write_all(data);
            let _ = d.flush();
            d.get_ref().clone()
        }
        _ => {
            let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
            let _ = d.write_all(data);
            let _ = d.flush();
            d.get_ref().clone()
        }
    }
}

#[tokio::test]
async fn the_rewritten_json_is_what_gets_compressed() {
    let up = Upstream::start();
    let big = json_body(50 * 1024);
    up.fixed("/j", fixed(200, &[JSON], &big));
    let gw = gateway(
        &up,
        "  - name: response-compression\n  - name: response-transformer\n    config: { remove: { json: [secret] } }\n",
    );
    let g = get(&gw, "/j", Some("gzip"));
    assert_eq!(g.status(), 200);
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    g.assert_compressed_framing("rewritten");
    let v: serde_json::Value = serde_json::from_slice(&g.decoded()).expect("JSON after decoding");
    let items = v["items"].as_array().unwrap();
    assert!(items.len() > 100);
    assert!(items
        .iter()
        .all(|i| i.get("secret").is_none() && i["id"].is_number()));
    // The identity client gets the same rewritten document.
    let plain = get(&gw, "/j", None);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&plain.resp.body).unwrap(),
        v
    );
}

#[tokio::test]
async fn gateway_made_answers_are_never_compressed() {
    let up = Upstream::start();
    up.fixed("/j", fixed(200, &[JSON], &json_body(4096)));
    let gw = Cfg::new()
        .upstream("u", &[target_addr(&up.addr())], "retries: 0")
        .route_root("plugins:\n  - name: key-auth\n  - name: response-compression\n    config: { min_size: 0 }")
        .top("consumers:\n  - username: app\n    keyauth_credentials: [{ key: k1 }]\n")
        .start();
    let g = get(&gw, "/j", Some("gzip"));
    assert_eq!(g.status(), 401);
    assert_eq!(g.header("content-encoding"), None);
    assert_error_body(&g.resp.text(), "missing_api_key");
    let g = request(&gw, "GET", "/j", Some("gzip"), "X-API-Key: k1\r\n");
    assert_eq!(g.status(), 200);
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert_eq!(up.hits(), 1);
}

/// The upstream compresses whenever the request allows gzip, and forgets `Vary` (the case
/// that poisons a shared cache); otherwise it answers identity with `Vary: Accept-Encoding`
/// and an ETag, and a 304 to a matching `If-None-Match`.
fn careless_upstream(up: &Upstream, path: &str, body: Vec<u8>, max_age: u32) {
    let cc = format!("max-age={max_age}");
    up.on(path, move |h| {
        let cc = ("Cache-Control", cc.as_str());
        if h.header("if-none-match") == Some("\"v1\"") {
            return vec![(
                Duration::ZERO,
                head_bytes(304, &[cc, ("ETag", "\"v1\"")], ""),
            )];
        }
        if h.header("accept-encoding")
            .is_some_and(|v| v.contains("gzip"))
        {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body).unwrap();
            let gz = e.finish().unwrap();
            return fixed(200, &[JSON, cc, ("Content-Encoding", "gzip")], &gz);
        }
        fixed(
            200,
            &[JSON, cc, ("ETag", "\"v1\""), ("Vary", "Accept-Encoding")],
            &body,
        )
    });
}

#[tokio::test]
async fn proxy_cache_stores_one_identity_object_for_every_client() {
    let up = Upstream::start();
    let body = json_body(20 * 1024);
    careless_upstream(&up, "/c", body.clone(), 60);
    let gw = gateway(
        &up,
        "  - name: proxy-cache\n  - name: response-compression\n",
    );

    let chrome = "gzip, deflate, br, zstd";
    let steps: [(Option<&str>, &str, Option<&str>); 5] = [
        (Some("gzip"), "MISS", Some("gzip")),
        (Some("gzip"), "HIT", Some("gzip")),
        (None, "HIT", None),
        (Some(chrome), "HIT", Some("zstd")),
        (Some("br, gzip;q=0.5"), "HIT", Some("br")),
    ];
    for (ae, cache, encoding) in steps {
        let g = get(&gw, "/c", ae);
        let what = format!("{ae:?}");
        assert_eq!(g.status(), 200, "{what}");
        assert_eq!(g.header("x-cache-status"), Some(cache), "{what}");
        assert_eq!(g.header("content-encoding"), encoding, "{what}");
        assert!(g.varies_on_accept_encoding(), "{what}");
        assert!(g.decoded() == body, "{what}: decoded body differs");
        if encoding.is_some() {
            g.assert_compressed_framing(&what);
            assert_eq!(g.header("etag"), Some("W/\"v1\""), "{what}");
        } else {
            let cl = body.len().to_string();
            assert_eq!(g.header("content-length"), Some(cl.as_str()), "{what}");
            assert_eq!(g.header("etag"), Some("\"v1\""), "{what}");
        }
    }
    // One upstream fetch, asked for identity: the stored object is the identity body, and
    // the upstream's `Vary: Accept-Encoding` did not split it per client.
    assert_eq!(up.hits(), 1);
    assert_eq!(up.seen()[0].header("accept-encoding"), Some("identity"));

    // HEAD from the cache: untouched head.
    let g = request(&gw, "HEAD", "/c", Some("gzip"), "");
    assert_eq!(g.header("x-cache-status"), Some("HIT"));
    assert_eq!(g.header("content-encoding"), None);
    // A conditional request with the weak ETag a compressed answer carried: 304 from the cache.
    let g = request(
        &gw,
        "GET",
        "/c",
        Some("gzip"),
        "If-None-Match: W/\"v1\"\r\n",
    );
    assert_eq!(g.status(), 304);
    assert_eq!(g.header("content-encoding"), None);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn revalidated_cache_answers_are_compressed_completely() {
    // An expired object revalidated by a 304 is served from the cache by a path whose body
    // ends without an end-of-stream chunk; the compressed stream must still be finished.
    let up = Upstream::start();
    let body = json_body(30 * 1024);
    careless_upstream(&up, "/c", body.clone(), 1);
    let gw = gateway(
        &up,
        "  - name: proxy-cache\n  - name: response-compression\n",
    );

    let g = get(&gw, "/c", Some("br"));
    assert_eq!(g.header("x-cache-status"), Some("MISS"));
    assert!(g.decoded() == body);
    std::thread::sleep(Duration::from_millis(2100));
    for algo in ["gzip", "br", "zstd"] {
        let g = get(&gw, "/c", Some(algo));
        assert_eq!(g.status(), 200, "{algo}");
        let status = g.header("x-cache-status").unwrap_or("").to_string();
        assert!(status == "EXPIRED" || status == "HIT", "{algo}: {status}");
        assert_eq!(g.header("content-encoding"), Some(algo), "{algo}");
        g.assert_compressed_framing(algo);
        assert!(g.decoded() == body, "{algo}: decoded body differs");
        if algo == "gzip" {
            assert_eq!(
                status, "EXPIRED",
                "the first request after expiry revalidates"
            );
        }
    }
    // The first fetch and one revalidation (304, answered from the stored body).
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
}

#[tokio::test]
async fn revalidated_cache_answers_rewritten_then_compressed() {
    // response-transformer holds the body back until its end, and response-compression
    // encodes what it releases: after a revalidation the end is Pingora's `Done`, and the
    // client must still get the rewritten document, completely encoded.
    let up = Upstream::start();
    let body = json_body(30 * 1024);
    careless_upstream(&up, "/c", body.clone(), 1);
    let gw = gateway(
        &up,
        "  - name: proxy-cache\n  - name: response-compression\n  - name: response-transformer\n    config: { remove: { json: [secret] } }\n",
    );
    let mut want: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for item in want["items"].as_array_mut().unwrap() {
        item.as_object_mut().unwrap().remove("secret");
    }
    let check = |ae: Option<&str>, cache: &str| {
        let what = format!("{ae:?} ({cache})");
        let g = get(&gw, "/c", ae);
        assert_eq!(g.status(), 200, "{what}");
        assert_eq!(g.header("x-cache-status"), Some(cache), "{what}");
        assert_eq!(g.header("content-encoding"), ae, "{what}");
        assert_eq!(g.header("content-length"), None, "{what}");
        assert_eq!(g.header("transfer-encoding"), Some("chunked"), "{what}");
        assert!(
            g.raw.ends_with(b"\r\n0\r\n\r\n"),
            "{what}: chunked body not terminated"
        );
        let v: serde_json::Value = serde_json::from_slice(&g.decoded())
            .unwrap_or_else(|e| panic!("{what}: not JSON after decoding ({e})"));
        assert!(v == want, "{what}: not the rewritten document");
    };

    check(Some("gzip"), "MISS");
    check(Some("br"), "HIT");
    for algo in ["gzip", "br", "zstd"] {
        std::thread::sleep(Duration::from_millis(2100));
        check(Some(algo), "EXPIRED");
        check(None, "HIT");
    }
    // The first fetch, then one 304 per expiry, each answered from the stored body.
    let seen = up.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[1..]
        .iter()
        .all(|h| h.header("if-none-match") == Some("\"v1\"")));
}

#[tokio::test]
async fn identity_upstream_false_forwards_accept_encoding() {
    let up = Upstream::start();
    let body = json_body(8 * 1024);
    careless_upstream(&up, "/c", body.clone(), 60);
    let gw = gateway(
        &up,
        "  - name: response-compression\n    config: { identity_upstream: false }\n",
    );
    // The upstream compressed it itself: passed through as it came, not compressed again.
    let g = get(&gw, "/c", Some("gzip, br"));
    assert_eq!(g.header("content-encoding"), Some("gzip"));
    assert!(g.decoded() == body);
    assert_eq!(up.seen()[0].header("accept-encoding"), Some("gzip, br"));
    // A client without gzip: the upstream answers identity, the gateway compresses.
    let g = get(&gw, "/c", Some("br"));
    assert_eq!(g.header("content-encoding"), Some("br"));
    assert!(g.decoded() == body);
    assert_eq!(up.seen()[1].header("accept-encoding"), Some("br"));
}

#[tokio::test]
async fn metrics_exist_from_startup() {
    let up = Upstream::start();
    let gw = gateway(&up, COMPRESSION);
    let text = gw.metrics_text().await;
    for e in ["br", "gzip", "zstd"] {
        assert_eq!(
            metric(
                &text,
                "response_compressed_total",
                &[("route", "r"), ("encoding", e)]
            ),
            Some(0.0),
            "{e}"
        );
        for name in [
            "response_compression_in_bytes_total",
            "response_compression_out_bytes_total",
        ] {
            assert_eq!(
                metric(&text, name, &[("encoding", e)]),
                Some(0.0),
                "{name} {e}"
            );
        }
    }
}

#[test]
fn config_errors_name_path_and_line() {
    let up = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9\" }]\n";
    let route = |config: &str| {
        format!(
            "{up}routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: response-compression\n        config: {config}\n"
        )
    };
    for (config, expect) in [
        (
            "{ algorithms: [gzip, deflate] }",
            "routes[0].plugins[0].config.algorithms[1]: unknown algorithm \"deflate\" (known: br, gzip, zstd) (line 10)",
        ),
        (
            "{ algorithms: [gzip, gzip] }",
            "routes[0].plugins[0].config.algorithms[1]: \"gzip\" is listed twice (line 10)",
        ),
        (
            "{ algorithms: [] }",
            "routes[0].plugins[0].config.algorithms: must name at least one",
        ),
        (
            "{ levels: { gzip: 10 } }",
            "routes[0].plugins[0].config.levels.gzip: level 10 out of range 1-9 (line 10)",
        ),
        (
            "{ levels: { br: 12 } }",
            "routes[0].plugins[0].config.levels.br: level 12 out of range 0-11 (line 10)",
        ),
        (
            "{ levels: { lz4: 1 } }",
            "routes[0].plugins[0].config.levels",
        ),
        (
            "{ types: [json] }",
            "routes[0].plugins[0].config.types[0]: invalid media type \"json\"",
        ),
        ("{ min_size: lots }", "routes[0].plugins[0].config.min_size"),
        ("{ gzip: on }", "routes[0].plugins[0].config"),
    ] {
        let (code, err) = Gateway::validate(&route(config));
        assert_eq!(code, 1, "{config}: {err}");
        assert!(err.contains(expect), "{config}: {err}");
    }
    let (code, err) = Gateway::validate(&route(
        "{ algorithms: [zstd, br], types: [\"text/*\", \"application/*+json\"], min_size: 2kb, levels: { br: 5, gzip: 1, zstd: 9 }, identity_upstream: false }",
    ));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn http2_clients_get_compressed_bodies_too() {
    let up = Upstream::start();
    let big = json_body(100 * 1024);
    let parts: Vec<&[u8]> = big.chunks(9000).collect();
    up.fixed("/chunked", chunked(200, &[JSON], &parts, Duration::ZERO));
    up.fixed("/cached", fixed(200, &[JSON], &big));
    let tls_port = free_port();
    let (cfg, ca) = Cfg::new().tls_listener(tls_port, "");
    let gw = cfg
        .upstream("u", &[target_addr(&up.addr())], "retries: 0")
        .route_root("plugins:\n  - name: proxy-cache\n  - name: response-compression")
        .start();
    let client = https_client(&ca);
    for (path, ae, cache) in [
        ("/chunked", "zstd", Some("MISS")),
        ("/cached", "gzip", Some("MISS")),
        ("/cached", "br", Some("HIT")),
    ] {
        let r = client
            .get(format!("https://127.0.0.1:{tls_port}{path}"))
            .header("accept-encoding", ae)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}\n{}", gw.diagnostics()));
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{path}");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(header("content-encoding"), Some(ae), "{path}");
        assert_eq!(header("content-length"), None, "{path}");
        assert_eq!(header("transfer-encoding"), None, "{path}");
        assert_eq!(header("x-cache-status"), cache, "{path}");
        let body = r.bytes().await.unwrap();
        assert!(
            decode(Some(ae), &body) == big,
            "{path}: decoded body differs"
        );
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn error_responses_replacement_is_encoded_as_its_head_says() {
    // error-responses (upstream: true) replaces a compressible upstream 503 after
    // response-compression decided to compress it: whatever the client gets must decode, by
    // its own Content-Encoding, to the configured body (zstd pledges the identity length up
    // front: the replacement's, not the upstream's).
    let up = Upstream::start();
    up.fixed("/busy", fixed(503, &[JSON], &json_body(8 * 1024)));
    let gw = gateway(
        &up,
        "  - name: response-compression\n  - name: error-responses\n    config:\n      upstream: true\n      responses:\n        503: { body: '{\"error\":\"maintenance\"}' }\n",
    );
    for ae in [Some("gzip"), Some("br"), Some("zstd"), None] {
        let g = get(&gw, "/busy", ae);
        assert_eq!(g.status(), 503);
        assert_eq!(
            g.decoded(),
            br#"{"error":"maintenance"}"#,
            "Accept-Encoding {ae:?}: content-encoding {:?}",
            g.header("content-encoding")
        );
    }
}
