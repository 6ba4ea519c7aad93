//! `opentelemetry` plugin: W3C Trace Context propagation through the real gateway to a real
//! upstream, `trace_id` in the access log and a response header, and OTLP/HTTP JSON export to
//! a real in-test collector (an HTTP server that parses what it receives): span contents,
//! sampling, gateway-made refusals, collector down or hanging, queue bound, reloads.
use crate::common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";
const COLLECTOR_TOKEN: &str = "Bearer collector-secret-7f3a";

// ---------------------------------------------------------------------------------------------
// An OTLP/HTTP collector
// ---------------------------------------------------------------------------------------------

/// Accept the request, never answer (until the test ends).
const HANG: u8 = 1;

/// Request headers (lowercase names) and the parsed JSON body of one export.
type Export = (Vec<(String, String)>, Value);

#[derive(Default)]
struct CollectorState {
    mode: AtomicU8,
    posts: AtomicUsize,
    /// (request headers lowercase, parsed JSON body) of every export received
    exports: Mutex<Vec<Export>>,
}

struct Collector {
    http: HttpServer,
    state: Arc<CollectorState>,
}

async fn collect(
    st: Arc<CollectorState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    st.posts.fetch_add(1, Ordering::SeqCst);
    let ok_path = req.method() == hyper::Method::POST && req.uri().path() == "/v1/traces";
    let headers = header_pairs(req.headers());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if st.mode.load(Ordering::SeqCst) == HANG {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let good = ok_path && !json.is_null();
    st.exports.lock().unwrap().push((headers, json));
    let resp = Response::builder()
        .status(if good { 200 } else { 400 })
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    Ok(resp)
}

impl Collector {
    fn start() -> Collector {
        let state = Arc::new(CollectorState::default());
        let st = state.clone();
        let http = HttpServer::start(move |req| collect(st.clone(), req));
        Collector { http, state }
    }

    fn endpoint(&self) -> String {
        self.http.url("/v1/traces")
    }

    fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    fn posts(&self) -> usize {
        self.state.posts.load(Ordering::SeqCst)
    }

    /// Every span received so far, with the headers of the export that carried it.
    fn spans(&self) -> Vec<Export> {
        let exports = self.state.exports.lock().unwrap();
        let mut out = Vec::new();
        for (h, body) in exports.iter() {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push((h.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }

    fn bodies(&self) -> Vec<Value> {
        let e = self.state.exports.lock().unwrap();
        e.iter().map(|(_, b)| b.clone()).collect()
    }

    async fn wait_spans(&self, n: usize) -> Vec<Value> {
        wait_until(Duration::from_secs(10), || self.spans().len() >= n).await;
        self.spans().into_iter().map(|(_, s)| s).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A global `opentelemetry` entry with `config` lines (YAML flow-map content).
fn global_otel(config: &str) -> String {
    format!("plugins:\n  - name: opentelemetry\n    config: {{ {config} }}\n")
}

fn export_cfg(c: &Collector, extra: &str) -> String {
    format!(
        "endpoint: \"{}\", headers: {{ Authorization: \"{COLLECTOR_TOKEN}\" }}, batch_flush_delay: 50ms, http_response_header_for_traceid: X-Trace-Id{extra}",
        c.endpoint()
    )
}

/// (version, trace id, parent id, flags) of a traceparent value.
fn split_tp(v: &str) -> (String, String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {v:?}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

fn upstream_traceparent(b: &Backend) -> String {
    b.last_request()
        .expect("upstream saw the request")
        .header("traceparent")
        .expect("traceparent sent upstream")
        .to_string()
}

/// The value of span attribute `key` as (type, value): `stringValue`/`intValue`/...
fn attr(span: &Value, key: &str) -> Option<Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
}

fn attr_str(span: &Value, key: &str) -> Option<String> {
    attr(span, key).and_then(|v| v["stringValue"].as_str().map(str::to_string))
}

/// OTLP JSON int64 values are strings.
fn attr_int(span: &Value, key: &str) -> Option<i64> {
    attr(span, key).and_then(|v| v["intValue"].as_str().and_then(|s| s.parse().ok()))
}

fn span_with_trace<'a>(spans: &'a [Value], trace: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["traceId"] == trace)
        .unwrap_or_else(|| panic!("no span with trace {trace} in {spans:#?}"))
}

async fn metric_now(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics_text().await, name, labels).unwrap_or(-1.0)
}

async fn wait_metric_at_least(gw: &Gateway, name: &str, labels: &[(&str, &str)], min: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric_now(gw, name, labels).await;
        if v >= min || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A valid incoming traceparent: the trace id is kept, the upstream's parent is the gateway's
/// own span, tracestate passes, and the exported span has the right ids, attributes, times,
/// resource and collector headers.
#[tokio::test]
async fn incoming_trace_continues_and_span_is_exported() {
    let up = Backend::start("up");
    let c = Collector::start();
    let gw = api_gateway(&up, &global_otel(&export_cfg(&c, "")));

    let r = gw
        .get_response(
            "/api/items?x=1",
            &[
                ("traceparent", INCOMING),
                ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
                ("user-agent", "trace-test/1.0"),
            ],
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get("x-trace-id").and_then(|v| v.to_str().ok()),
        Some(INCOMING_TRACE),
        "trace id exposed to the client"
    );
    let seen = up.last_request().unwrap();
    let (v, trace, parent, flags) = split_tp(&upstream_traceparent(&up));
    assert_eq!(v, "00");
    assert_eq!(trace, INCOMING_TRACE, "trace id kept");
    assert!(is_lower_hex(&parent, 16), "gateway span id {parent}");
    assert_ne!(
        parent, INCOMING_PARENT,
        "upstream's parent is the gateway's span"
    );
    assert_eq!(flags, "01", "sampled flag from the incoming header");
    assert_eq!(
        seen.header_joined("tracestate").as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k == "traceparent")
            .count(),
        1,
        "one traceparent upstream"
    );

    let spans = c.wait_spans(1).await;
    assert_eq!(spans.len(), 1, "one server span per request: {spans:#?}");
    let s = &spans[0];
    assert_eq!(s["traceId"], INCOMING_TRACE);
    assert_eq!(
        s["parentSpanId"], INCOMING_PARENT,
        "parent = incoming parent id"
    );
    assert_eq!(s["spanId"], parent.as_str(), "span id = upstream's parent");
    assert_eq!(s["traceState"], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_eq!(s["kind"], 2, "SPAN_KIND_SERVER as an integer");
    assert_eq!(s["name"], "GET /api");
    assert_eq!(s["status"]["code"], 0, "unset for a 200");
    assert_eq!(s["flags"], 0x301, "sampled, remote parent");
    let start: u64 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        start <= end && end <= now && now - start < 60_000_000_000,
        "times {start} {end}"
    );
    assert_eq!(attr_str(s, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr_str(s, "url.path").as_deref(),
        Some("/api/items"),
        "no query"
    );
    assert_eq!(attr_str(s, "url.scheme").as_deref(), Some("http"));
    assert_eq!(attr_str(s, "http.route").as_deref(), Some("/api"));
    assert_eq!(attr_int(s, "http.response.status_code"), Some(200));
    assert_eq!(attr_str(s, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr_str(s, "network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(attr_int(s, "network.peer.port").is_some_and(|p| p > 0));
    assert_eq!(attr_str(s, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr_str(s, "user_agent.original").as_deref(),
        Some("trace-test/1.0")
    );
    assert_eq!(
        attr_str(s, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(attr_str(s, "gatehouse.route").as_deref(), Some("api"));
    assert_eq!(attr_str(s, "gatehouse.upstream").as_deref(), Some("svc"));
    assert_eq!(
        attr_str(s, "gatehouse.upstream.address"),
        Some(up.addr()),
        "upstream address"
    );
    assert!(attr_str(s, "gatehouse.request_id").is_some_and(|r| !r.is_empty()));
    assert!(attr(s, "error.type").is_none() && attr(s, "gatehouse.error").is_none());

    // The envelope: resource and scope; the collector's credentials arrived.
    let body = &c.bodies()[0];
    let rs = &body["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0]["key"], "service.name",
        "{body}"
    );
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "gatehouse"
    );
    assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "gatehouse");
    let (headers, _) = &c.spans()[0];
    let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(h("authorization").as_deref(), Some(COLLECTOR_TOKEN));
    assert_eq!(h("content-type").as_deref(), Some("application/json"));

    // Counted once the collector has answered: a moment after it recorded the body.
    assert_eq!(
        wait_metric_at_least(&gw, "otel_spans_exported_total", &[], 1.0).await,
        1.0
    );
    // The collector's credentials are nowhere to be seen.
    let status = gw.status_json().await.to_string();
    let metrics = gw.metrics_text().await;
    for text in [status, metrics, gw.stderr(), gw.stdout()] {
        assert!(
            !text.contains("collector-secret"),
            "collector token leaked: {text}"
        );
    }
}

/// No traceparent: a new valid trace starts; an invalid one is replaced (and its tracestate
/// dropped); each request gets its own trace. Propagation only (no endpoint). The access log
/// carries `trace_id`; a route that switches the plugin off passes traceparent untouched and
/// logs no `trace_id`; a 404 without a route is still traced by the global plugin.
#[tokio::test]
async fn new_or_invalid_traceparent_starts_a_trace_and_is_logged() {
    let up = Backend::start("up");
    let cfg = Cfg::new()
        .upstream("svc", &[target(&up)], "")
        .route("api", &["/api"], "svc", "")
        .route(
            "plain",
            &["/plain"],
            "svc",
            "plugins:\n  - name: opentelemetry\n    enabled: false",
        )
        .top(&global_otel("http_response_header_for_traceid: X-Trace-Id"));
    let gw = start_with_access_log(cfg, "access.log");
    let log = gw.dir().join("access.log");

    // Absent: a new sampled trace (default ratio 1.0).
    let r = gw.get("/api/a").await;
    assert_eq!(r.status().as_u16(), 200);
    let exposed = r.headers()["x-trace-id"].to_str().unwrap().to_string();
    let (v, t1, p1, f1) = split_tp(&upstream_traceparent(&up));
    assert_eq!((v.as_str(), f1.as_str()), ("00", "01"));
    assert!(is_lower_hex(&t1, 32) && is_lower_hex(&p1, 16), "{t1} {p1}");
    assert_eq!(exposed, t1);
    let r = gw.get("/api/b").await;
    assert_eq!(r.status().as_u16(), 200);
    let (_, t2, _, _) = split_tp(&upstream_traceparent(&up));
    assert_ne!(t1, t2, "each request its own trace");

    // Invalid values are treated as absent: replaced by a new trace, tracestate dropped.
    let invalid = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ];
    for bad in invalid {
        let (s, _) = gw
            .get_with("/api/c", &[("traceparent", bad), ("tracestate", "stale=1")])
            .await;
        assert_eq!(s, 200);
        let seen = up.last_request().unwrap();
        let tp = seen.header("traceparent").unwrap();
        let (v, t, p, _) = split_tp(tp);
        assert_eq!(v, "00", "for {bad}");
        assert!(
            is_lower_hex(&t, 32) && is_lower_hex(&p, 16),
            "for {bad}: {tp}"
        );
        assert_ne!(t, INCOMING_TRACE, "invalid {bad} was not replaced");
        assert!(
            seen.header("tracestate").is_none(),
            "tracestate of an invalid traceparent dropped ({bad})"
        );
    }

    // Valid incoming: kept, and logged.
    let (s, _) = gw.get_with("/api/d", &[("traceparent", INCOMING)]).await;
    assert_eq!(s, 200);
    // Plugin off on this route: the client's header passes untouched, no trace_id logged.
    let (s, _) = gw.get_with("/plain/e", &[("traceparent", INCOMING)]).await;
    assert_eq!(s, 200);
    assert_eq!(
        upstream_traceparent(&up),
        INCOMING,
        "untouched without the plugin"
    );
    // No route: the gateway's 404 is traced by the global plugin.
    let r = gw.get("/nowhere").await;
    assert_eq!(r.status().as_u16(), 404);
    let t404 = r.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert!(is_lower_hex(&t404, 32));

    assert!(
        wait_until(Duration::from_secs(5), || file_lines(&log).len() >= 11).await,
        "access log lines: {:?}",
        file_lines(&log)
    );
    let lines: Vec<Value> = file_lines(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:#?}"))
    };
    assert_eq!(by_path("/api/a")["trace_id"], t1.as_str());
    assert_eq!(by_path("/api/b")["trace_id"], t2.as_str());
    assert_eq!(by_path("/api/d")["trace_id"], INCOMING_TRACE);
    assert!(
        by_path("/plain/e").get("trace_id").is_none(),
        "no trace_id field without the plugin: {}",
        by_path("/plain/e")
    );
    let nf = by_path("/nowhere");
    assert_eq!(nf["status"], 404);
    assert_eq!(nf["trace_id"], t404.as_str());
}

/// Refusals the gateway makes (401 by key-auth, 404 without a route, 502 from a dead
/// upstream, 414 before routing) are exported as spans too, with the error code and the right span status.
#[tokio::test]
async fn gateway_refusals_are_traced() {
    let up = Backend::start("up");
    let dead = dead_addr();
    let c = Collector::start();
    let gw = Cfg::new()
        .upstream("svc", &[target(&up)], "")
        .upstream("gone", &[target_addr(&dead)], "retries: 0")
        .route(
            "secure",
            &["/secure"],
            "svc",
            "plugins:\n  - name: key-auth",
        )
        .route("broken", &["/broken"], "gone", "")
        .server("max_uri_bytes: 256")
        .top(&global_otel(&export_cfg(&c, "")))
        .start();

    let r = gw
        .get_response("/secure/x", &[("traceparent", INCOMING)])
        .await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["x-trace-id"], INCOMING_TRACE);
    assert_error_body(&r.text().await.unwrap(), "missing_api_key");
    assert_eq!(up.hits(), 0);

    let r = gw.get("/nowhere").await;
    assert_eq!(r.status().as_u16(), 404);
    let t404 = r.headers()["x-trace-id"].to_str().unwrap().to_string();
    let r = gw.get("/broken").await;
    assert_eq!(r.status().as_u16(), 502);
    let t502 = r.headers()["x-trace-id"].to_str().unwrap().to_string();
    // Refused in early_request_filter, before routing and any plugin.
    let r = gw.get(&format!("/secure/{}", "a".repeat(400))).await;
    assert_eq!(r.status().as_u16(), 414);
    let t414 = r.headers()["x-trace-id"].to_str().unwrap().to_string();

    let spans = c.wait_spans(4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let s414 = span_with_trace(&spans, &t414);
    assert_eq!(attr_int(s414, "http.response.status_code"), Some(414));
    assert_eq!(
        attr_str(s414, "gatehouse.error").as_deref(),
        Some("uri_too_long")
    );
    let s401 = span_with_trace(&spans, INCOMING_TRACE);
    assert_eq!(s401["parentSpanId"], INCOMING_PARENT);
    assert_eq!(attr_int(s401, "http.response.status_code"), Some(401));
    assert_eq!(
        attr_str(s401, "gatehouse.error").as_deref(),
        Some("missing_api_key")
    );
    assert_eq!(
        s401["status"]["code"], 0,
        "4xx leaves a server span's status unset"
    );
    assert_eq!(s401["name"], "GET /secure");

    let s404 = span_with_trace(&spans, &t404);
    assert!(
        s404.get("parentSpanId").is_none(),
        "a new trace has no parent"
    );
    assert_eq!(s404["name"], "GET", "no route: the method alone");
    assert!(attr(s404, "http.route").is_none() && attr(s404, "gatehouse.route").is_none());
    assert_eq!(attr_int(s404, "http.response.status_code"), Some(404));
    assert_eq!(
        attr_str(s404, "gatehouse.error").as_deref(),
        Some("not_found")
    );

    let s502 = span_with_trace(&spans, &t502);
    assert_eq!(s502["status"]["code"], 2, "5xx: STATUS_CODE_ERROR");
    assert_eq!(s502["status"]["message"], "bad_gateway");
    assert_eq!(attr_str(s502, "error.type").as_deref(), Some("502"));
    assert_eq!(
        attr_str(s502, "gatehouse.upstream.address"),
        Some(dead.clone())
    );
}

/// `sampling_ratio: 0`: new traces are propagated with the sampled flag off and not exported;
/// an incoming sampled parent still decides (parent-based), an unsampled one is not exported.
#[tokio::test]
async fn sampling_ratio_zero_propagates_but_exports_nothing() {
    let up = Backend::start("up");
    let c = Collector::start();
    let gw = api_gateway(&up, &global_otel(&export_cfg(&c, ", sampling_ratio: 0")));

    for i in 0..5 {
        let (s, _) = gw.send(gw.client.get(gw.url(&format!("/api/{i}")))).await;
        assert_eq!(s, 200);
        let (_, t, p, flags) = split_tp(&upstream_traceparent(&up));
        assert!(is_lower_hex(&t, 32) && is_lower_hex(&p, 16));
        assert_eq!(flags, "00", "not sampled, still propagated");
    }
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let (s, _) = gw.get_with("/api/u", &[("traceparent", unsampled)]).await;
    assert_eq!(s, 200);
    let (_, t, _, flags) = split_tp(&upstream_traceparent(&up));
    assert_eq!(
        (t.as_str(), flags.as_str()),
        ("11111111111111111111111111111111", "00")
    );
    // A sampled parent is honoured: this one is exported. Spans leave in order, so once it
    // has arrived, any span of the requests before it would have too.
    let (s, _) = gw.get_with("/api/s", &[("traceparent", INCOMING)]).await;
    assert_eq!(s, 200);
    let spans = c.wait_spans(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans_after = c.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans_after.len(), 1);
    assert_eq!(spans[0]["traceId"], INCOMING_TRACE);
    assert_eq!(
        wait_metric_at_least(&gw, "otel_spans_exported_total", &[], 1.0).await,
        1.0
    );
}

/// Upstream `svc` (backend `up`) behind route `api` on `/api`, with `top` (the global
/// opentelemetry plugin).
fn api_gateway(up: &Backend, top: &str) -> Gateway {
    Cfg::new()
        .upstream("svc", &[target(up)], "")
        .route("api", &["/api"], "svc", "")
        .top(top)
        .start()
}

/// GET `/api/0` .. `/api/{n-1}`, each answered 200, by a client that gives up after 5 s: long
/// before an export timeout could matter to it. `when` names the collector's state.
async fn quick_requests(gw: &Gateway, n: usize, when: &str) {
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for i in 0..n {
        let r = quick
            .get(gw.url(&format!("/api/{i}")))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} {when}: {e}"));
        assert_eq!(r.status().as_u16(), 200, "request {i} {when}");
    }
}

/// Collector down: every request is answered at once, export failures and dropped spans are
/// counted, the collector's credentials never reach the log.
#[tokio::test]
async fn collector_down_costs_requests_nothing() {
    let up = Backend::start("up");
    let dead = dead_addr();
    let gw = api_gateway(&up, &global_otel(&format!(
            "endpoint: \"http://{dead}/v1/traces\", headers: {{ Authorization: \"{COLLECTOR_TOKEN}\" }}, batch_flush_delay: 20ms, batch_span_count: 5, timeout: 1s"
        )));
    quick_requests(&gw, 20, "while the collector is down").await;
    assert_eq!(up.hits(), 20);
    let dropped = wait_metric_at_least(
        &gw,
        "otel_spans_dropped_total",
        &[("reason", "export_failed")],
        20.0,
    )
    .await;
    assert_eq!(dropped, 20.0, "every span of a failed export is counted");
    assert!(metric_now(&gw, "otel_export_failures_total", &[]).await >= 1.0);
    assert_eq!(metric_now(&gw, "otel_spans_exported_total", &[]).await, 0.0);
    let log = gw.stderr() + &gw.stdout();
    assert!(log.contains("span export failed"), "failure logged:\n{log}");
    assert!(!log.contains("collector-secret"), "token leaked:\n{log}");
}

/// A collector that accepts but never answers: requests are still answered, the queue holds
/// at most `queue_size` spans and the rest are dropped and counted.
#[tokio::test]
async fn hanging_collector_bounded_queue() {
    let up = Backend::start("up");
    let c = Collector::start();
    c.set_mode(HANG);
    let gw = api_gateway(&up, &global_otel(&format!(
            "endpoint: \"{}\", batch_flush_delay: 10ms, batch_span_count: 2, queue_size: 4, timeout: 30s",
            c.endpoint()
        )));
    // The first span goes out and its export hangs.
    quick_requests(&gw, 1, "before the collector hangs").await;
    assert!(
        wait_until(Duration::from_secs(5), || c.posts() >= 1).await,
        "first export reached the collector"
    );
    quick_requests(&gw, 30, "while the collector hangs").await;
    assert_eq!(up.hits(), 31);
    // 30 spans while the exporter is stuck: at most queue_size (4) wait, 26 or more dropped.
    let dropped = wait_metric_at_least(
        &gw,
        "otel_spans_dropped_total",
        &[("reason", "queue_full")],
        26.0,
    )
    .await;
    assert!((26.0..=30.0).contains(&dropped), "dropped {dropped}");
    assert_eq!(c.posts(), 1, "one export in flight at a time");
}

/// Queued spans survive reloads: an unchanged plugin keeps its exporter (and batch), a
/// changed one gets a new exporter while the old one still delivers what it holds.
#[tokio::test]
async fn reloads_keep_queued_spans() {
    let up = Backend::start("up");
    let c = Collector::start();
    let otel = |tenant: &str| {
        global_otel(&format!(
            "endpoint: \"{}\", headers: {{ X-Tenant: {tenant} }}, batch_flush_delay: 3s, batch_span_count: 100",
            c.endpoint()
        ))
    };
    let base = |extra_route: bool, tenant: &str| {
        let mut cfg =
            Cfg::new()
                .upstream("svc", &[target(&up)], "")
                .route("api", &["/api"], "svc", "");
        if extra_route {
            cfg = cfg.route("more", &["/more"], "svc", "");
        }
        cfg.top(&otel(tenant))
    };
    let gw = base(false, "a").start();
    for i in 0..3 {
        assert_eq!(gw.get(&format!("/api/{i}")).await.status().as_u16(), 200);
    }
    // Same plugin settings, another route: same exporter, the 3 spans still queued.
    gw.write_config(base(true, "a"));
    let (s, body) = gw.admin_reload().await;
    assert_eq!(s, 200, "{body}");
    for i in 3..5 {
        assert_eq!(gw.get(&format!("/more/{i}")).await.status().as_u16(), 200);
    }
    // New credentials: a new exporter; the old one delivers its 5 spans with the old ones.
    gw.write_config(base(true, "b"));
    let (s, body) = gw.admin_reload().await;
    assert_eq!(s, 200, "{body}");
    for i in 5..7 {
        assert_eq!(gw.get(&format!("/api/{i}")).await.status().as_u16(), 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || c.spans().len() >= 7).await,
        "spans: {}",
        c.spans().len()
    );
    let spans = c.spans();
    assert_eq!(spans.len(), 7, "nothing lost, nothing doubled");
    let tenant_of = |path: &str| {
        spans
            .iter()
            .find(|(_, s)| attr_str(s, "url.path").as_deref() == Some(path))
            .and_then(|(h, _)| {
                h.iter()
                    .find(|(k, _)| k == "x-tenant")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| panic!("no span for {path}"))
    };
    for p in ["/api/0", "/api/1", "/api/2", "/more/3", "/more/4"] {
        assert_eq!(tenant_of(p), "a", "{p}");
    }
    for p in ["/api/5", "/api/6"] {
        assert_eq!(tenant_of(p), "b", "{p}");
    }
    // The first three and the two after the same-settings reload left in one batch.
    let first_batch = c.bodies()[0]["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .map_or(0, |a| a.len());
    assert_eq!(first_batch, 5, "one exporter across the first reload");
}

/// Config errors name the key and line; the series exist from startup at 0.
#[tokio::test]
async fn config_errors_and_metrics_at_startup() {
    let base = "upstreams:\n  - name: svc\n    targets: [{ addr: \"127.0.0.1:9\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: svc\n";
    let cases = [
        (
            "sampling_ratio: 1.5",
            "plugins[0].config.sampling_ratio: must be between 0.0 and 1.0",
        ),
        (
            "endpoint: \"ftp://collector/v1/traces\"",
            "plugins[0].config.endpoint: invalid endpoint",
        ),
        (
            "endpoint: \"not a url\"",
            "plugins[0].config.endpoint: invalid endpoint",
        ),
        (
            "headers: { Authorization: x }",
            "plugins[0].config.headers: applies only with an endpoint",
        ),
        (
            "endpoint: \"http://c:4318/v1/traces\", batch_span_count: 0",
            "plugins[0].config.batch_span_count: must be at least 1",
        ),
        (
            "endpoint: \"http://c:4318/v1/traces\", queue_size: 0",
            "plugins[0].config.queue_size",
        ),
        (
            "timeout: 0",
            "plugins[0].config.timeout: must be greater than 0",
        ),
        (
            "batch_flush_delay: 3",
            "plugins[0].config.batch_flush_delay",
        ),
        (
            "http_response_header_for_traceid: \"bad header\"",
            "plugins[0].config.http_response_header_for_traceid: invalid header name",
        ),
        ("sample_rate: 1", "unknown field `sample_rate`"),
    ];
    for (cfg, want) in cases {
        let yaml = format!("{base}{}", global_otel(cfg));
        let (code, err) = Gateway::validate(&yaml);
        assert_eq!(code, 1, "{cfg} must be refused: {err}");
        assert!(err.contains(want) && err.contains("(line "), "{cfg}: {err}");
    }
    // A collector credential with a bad value is refused without being echoed.
    let yaml = format!(
        "{base}{}",
        global_otel("endpoint: \"http://c:4318/v1/traces\", headers: { Authorization: \"Bearer s3cr3t\\u0001\" }")
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("plugins[0].config.headers.Authorization") && !err.contains("s3cr3t"),
        "{err}"
    );
    // Kong's key name is accepted; a valid export config validates without starting anything.
    let ok = format!(
        "{base}{}",
        global_otel("endpoint: \"https://collector.example:4318/v1/traces\", sampling_rate: 0.25, headers: { Authorization: \"Bearer x\" }, resource_attributes: { service.name: edge, deployment.environment: prod }")
    );
    let (code, err) = Gateway::validate(&ok);
    assert_eq!(code, 0, "{err}");

    // Every otel series exists at 0 from startup.
    let gw = Cfg::new().start();
    let text = gw.metrics_text().await;
    assert_eq!(metric(&text, "otel_spans_exported_total", &[]), Some(0.0));
    assert_eq!(metric(&text, "otel_export_failures_total", &[]), Some(0.0));
    for reason in ["queue_full", "export_failed"] {
        assert_eq!(
            metric(&text, "otel_spans_dropped_total", &[("reason", reason)]),
            Some(0.0)
        );
    }
    promtool_check(&text);
}
