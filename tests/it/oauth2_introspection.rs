//! oauth2-introspection against a real gateway, a real upstream and a real introspection
//! endpoint (a small hyper server in this file that checks the gateway's client
//! authentication, Basic or in the form body, answers what the test registered for each token
//! and counts its calls).
use crate::common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CLIENT_ID: &str = "gatehouse-gw";
/// With characters that RFC 6749's form-encoding before Basic must escape.
const CLIENT_SECRET: &str = "CLIENTSECRET-9f2c:/+&x";
const SECRET_ENV: &str = "GH_TEST_INTROSPECTION_SECRET";

fn env() -> [(&'static str, &'static str); 1] {
    [(SECRET_ENV, CLIENT_SECRET)]
}

// ---------------------------------------------------------------------------------------------
// The introspection endpoint
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Basic,
    Post,
}

struct EndpointState {
    auth: ClientAuth,
    calls: AtomicUsize,
    /// Calls whose client authentication was wrong (answered 401).
    bad_client: AtomicUsize,
    delay_ms: AtomicU64,
    /// token -> JSON answer; unknown tokens are `{"active":false}`.
    answers: Mutex<HashMap<String, String>>,
    /// Form fields of the last call.
    last_form: Mutex<HashMap<String, String>>,
}

/// `application/x-www-form-urlencoded` value decoding.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// The client authentication of a call, by `mode`.
fn client_ok(mode: ClientAuth, auth: Option<&str>, form: &HashMap<String, String>) -> bool {
    match mode {
        ClientAuth::Basic => {
            let Some(b64) = auth.and_then(|a| a.strip_prefix("Basic ")) else {
                return false;
            };
            let Ok(pair) = STANDARD.decode(b64) else {
                return false;
            };
            let pair = String::from_utf8_lossy(&pair).into_owned();
            let Some((id, secret)) = pair.split_once(':') else {
                return false;
            };
            form_decode(id) == CLIENT_ID
                && form_decode(secret) == CLIENT_SECRET
                && !form.contains_key("client_secret")
        }
        ClientAuth::Post => {
            auth.is_none()
                && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        }
    }
}

async fn introspect(
    st: Arc<EndpointState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let post = req.method() == hyper::Method::POST;
    let form_ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        == Some("application/x-www-form-urlencoded");
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = body_bytes(req).await;
    let form = parse_form(&body);
    *st.last_form.lock().unwrap() = form.clone();
    let json = |status: u16, body: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    if !post || !form_ct || !client_ok(st.auth, auth.as_deref(), &form) {
        st.bad_client.fetch_add(1, Ordering::SeqCst);
        return json(401, "{\"error\":\"invalid_client\"}".into());
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let answer = st
        .answers
        .lock()
        .unwrap()
        .get(&token)
        .cloned()
        .unwrap_or_else(|| "{\"active\":false}".into());
    json(200, answer)
}

struct Endpoint {
    http: HttpServer,
    st: Arc<EndpointState>,
}

impl Endpoint {
    fn start(auth: ClientAuth) -> Endpoint {
        let st = Arc::new(EndpointState {
            auth,
            calls: AtomicUsize::new(0),
            bad_client: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            answers: Mutex::new(HashMap::new()),
            last_form: Mutex::new(HashMap::new()),
        });
        let s = st.clone();
        let http = HttpServer::start(move |req| introspect(s.clone(), req));
        Endpoint { http, st }
    }

    fn url(&self) -> String {
        self.http.url("/oauth2/introspect")
    }

    fn calls(&self) -> usize {
        self.st.calls.load(Ordering::SeqCst)
    }

    fn bad_client(&self) -> usize {
        self.st.bad_client.load(Ordering::SeqCst)
    }

    fn answer(&self, token: &str, json: String) {
        self.st
            .answers
            .lock()
            .unwrap()
            .insert(token.to_string(), json);
    }

    fn set_delay(&self, d: Duration) {
        self.st
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn last_form(&self) -> HashMap<String, String> {
        self.st.last_form.lock().unwrap().clone()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An active token's answer, expiring `exp_in` seconds from now.
fn active(client_id: &str, sub: &str, scope: &str, exp_in: u64) -> String {
    serde_json::json!({
        "active": true,
        "client_id": client_id,
        "sub": sub,
        "scope": scope,
        "token_type": "Bearer",
        "exp": unix_now() + exp_in,
        "iat": unix_now(),
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Gateway helpers
// ---------------------------------------------------------------------------------------------

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A route's `plugins:` with oauth2-introspection on `endpoint`, the client secret from the
/// environment, and `extra` config lines.
fn plugin(endpoint: &str, extra: &str) -> String {
    format!(
        "plugins:\n  - name: oauth2-introspection\n    config:\n      endpoint: \"{endpoint}\"\n      client_id: {CLIENT_ID}\n      client_secret: ${{{SECRET_ENV}}}\n{}",
        indent(extra, 6)
    )
}

/// A client_secret_basic endpoint that answers `token` as active for alice (sub `u-1`,
/// scope `read`), expiring in `exp_in` seconds.
fn alice_endpoint(token: &str, exp_in: u64) -> Endpoint {
    let ep = Endpoint::start(ClientAuth::Basic);
    ep.answer(token, active("alice", "u-1", "read", exp_in));
    ep
}

/// A gateway config with upstream `u` (`up`) and route `api` (`/api`) guarded by
/// oauth2-introspection on `endpoint` with `extra` config lines.
fn api_on(up: &Backend, endpoint: &str, extra: &str) -> Cfg {
    Cfg::new().upstream("u", &[target(up)], "").route(
        "api",
        &["/api"],
        "u",
        &plugin(endpoint, extra),
    )
}

const CONSUMERS: &str = "consumers:\n  - username: alice\n    roles: [reader]\n";

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = gw.client.get(gw.url(path));
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    r.send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()))
}

/// (status, WWW-Authenticate, JSON body).
async fn answer(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.text().await.unwrap_or_default();
    (
        status,
        www,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn series(text: &str, name: &str, route: &str, label: &str, value: &str) -> f64 {
    metric(text, name, &[("route", route), (label, value)])
        .unwrap_or_else(|| panic!("{name}{{route={route},{label}={value}}} missing:\n{text}"))
}

/// `oauth2_introspection_<family>_total` of route `api` with its label (decisions: outcome,
/// lookups: source, calls: result) at `value`.
fn on_api(text: &str, family: &str, value: &str) -> f64 {
    let label = match family {
        "decisions" => "outcome",
        "lookups" => "source",
        _ => "result",
    };
    let name = format!("oauth2_introspection_{family}_total");
    series(text, &name, "api", label, value)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn active_token_passes_with_consumer_headers_and_is_cached() {
    let ep = Endpoint::start(ClientAuth::Basic);
    ep.answer("tok-alice", active("alice", "u-1", "read write", 300));
    ep.answer("tok-bob", active("bob", "u-2", "read", 300));
    let up = Backend::start("up");
    let gw = api_on(&up, &ep.url(), "required_scopes: [read]")
        .top(CONSUMERS)
        .start_env(&env());

    let r = gw
        .get_response(
            "/api/items",
            &[
                ("Authorization", "Bearer tok-alice"),
                ("X-Credential-Sub", "spoofed"),
                ("X_Credential_Client_Id", "spoofed"),
                ("X-Consumer-Username", "spoofed"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200, "{}", gw.diagnostics());
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-consumer-username"), Some("alice"));
    assert_eq!(
        seen.header_joined("x-credential-client-id").as_deref(),
        Some("alice")
    );
    assert_eq!(
        seen.header_joined("x-credential-sub").as_deref(),
        Some("u-1")
    );
    assert_eq!(seen.header("x-credential-scope"), Some("read write"));
    assert_eq!(seen.header("x_credential_client_id"), None);
    assert_eq!(seen.header("authorization"), None, "hide_credentials");
    assert_eq!(ep.calls(), 1);
    assert_eq!(ep.bad_client(), 0);
    let form = ep.last_form();
    assert_eq!(form.get("token").map(String::as_str), Some("tok-alice"));
    assert_eq!(
        form.get("token_type_hint").map(String::as_str),
        Some("access_token")
    );

    // Cached: no second call.
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api/x", Some("tok-alice")).await.status(), 200);
    }
    assert_eq!(ep.calls(), 1, "decision cached");

    // A client_id of no consumer: allowed, anonymous (no X-Consumer-Username), still named
    // by its credential headers.
    assert_eq!(get(&gw, "/api/x", Some("tok-bob")).await.status(), 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-consumer-username"), None);
    assert_eq!(seen.header("x-credential-client-id"), Some("bob"));
    assert_eq!(ep.calls(), 2);

    let m = gw.metrics_text().await;
    let d = |o: &str| on_api(&m, "decisions", o);
    let l = |s: &str| on_api(&m, "lookups", s);
    assert_eq!(d("active"), 5.0);
    assert_eq!(l("cache"), 3.0);
    assert_eq!(l("call"), 2.0);
    assert_eq!(on_api(&m, "calls", "active"), 2.0);
    assert_eq!(
        metric(
            &m,
            "oauth2_introspection_call_duration_seconds_count",
            &[("route", "api")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn refusals_inactive_scope_and_missing_token_with_negative_cache() {
    let ep = alice_endpoint("tok-reader", 300);
    ep.answer(
        "tok-revoked",
        "{\"active\":false,\"client_id\":\"alice\"}".into(),
    );
    ep.answer(
        "tok-future",
        serde_json::json!({"active": true, "scope": "read write", "nbf": unix_now() + 3600})
            .to_string(),
    );
    ep.answer(
        "tok-expired",
        serde_json::json!({"active": true, "scope": "read write", "exp": unix_now() - 5})
            .to_string(),
    );
    let up = Backend::start("up");
    let gw = api_on(
        &up,
        &ep.url(),
        "required_scopes: [read, write]\ncache: { negative_ttl: 1s }",
    )
    .top(CONSUMERS)
    .start_env(&env());

    // No token, or another scheme: 401 missing_token with the bare challenge.
    let (s, www, body) = answer(get(&gw, "/api", None).await).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("missing_token")));
    assert_eq!(www.as_deref(), Some("Bearer realm=\"gatehouse\""));
    let r = gw
        .get_response("/api", &[("Authorization", "Basic YTpi")])
        .await;
    assert_eq!(answer(r).await.0, 401);
    // Malformed.
    let r = gw
        .get_response("/api", &[("Authorization", "Bearer a\"b")])
        .await;
    let (s, www, body) = answer(r).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_token")));
    assert_eq!(www.as_deref(), Some("Bearer error=\"invalid_token\""));
    assert_eq!(ep.calls(), 0, "no call without a well-formed token");

    // Inactive: 401 invalid_token; cached for negative_ttl.
    for _ in 0..3 {
        let (s, www, body) = answer(get(&gw, "/api", Some("tok-revoked")).await).await;
        assert_eq!((s, body["error"].as_str()), (401, Some("invalid_token")));
        assert_eq!(www.as_deref(), Some("Bearer error=\"invalid_token\""));
    }
    assert_eq!(ep.calls(), 1, "negative cache");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        answer(get(&gw, "/api", Some("tok-revoked")).await).await.0,
        401
    );
    assert_eq!(ep.calls(), 2, "negative_ttl over: asked again");

    // Active but past its exp, or before its nbf: 401 too.
    for t in ["tok-expired", "tok-future"] {
        let (s, _, body) = answer(get(&gw, "/api", Some(t)).await).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{t}"
        );
    }

    // Missing scope: 403 insufficient_scope naming the required scopes.
    let (s, www, body) = answer(get(&gw, "/api", Some("tok-reader")).await).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    assert_eq!(
        www.as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"read write\"")
    );
    assert_eq!(up.hits(), 0, "nothing refused reached the upstream");

    // gRPC clients get gRPC statuses.
    for (token, grpc_status) in [(None, "16"), (Some("tok-reader"), "7")] {
        let mut r = gw
            .client
            .post(gw.url("/api/pkg.Svc/Call"))
            .header("content-type", "application/grpc");
        if let Some(t) = token {
            r = r.header("Authorization", format!("Bearer {t}"));
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
            Some(grpc_status)
        );
    }

    let m = gw.metrics_text().await;
    let d = |o: &str| on_api(&m, "decisions", o);
    assert_eq!(d("no_token"), 4.0);
    assert_eq!(d("inactive"), 6.0);
    assert_eq!(d("insufficient_scope"), 2.0);
    assert_eq!(d("active"), 0.0);
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let ep = Endpoint::start(ClientAuth::Post);
    ep.answer("tok-1", active("alice", "u-1", "read", 300));
    let up = Backend::start("up");
    let gw = api_on(
        &up,
        &ep.url(),
        "auth_method: client_secret_post\nconsumer_claim: sub\nhide_credentials: false",
    )
    .top("consumers:\n  - username: u-1\n")
    .start_env(&env());
    assert_eq!(get(&gw, "/api", Some("tok-1")).await.status(), 200);
    assert_eq!((ep.calls(), ep.bad_client()), (1, 0));
    let seen = up.last_request().unwrap();
    assert_eq!(
        seen.header("x-consumer-username"),
        Some("u-1"),
        "consumer by sub"
    );
    assert_eq!(seen.header("authorization"), Some("Bearer tok-1"), "kept");

    // The endpoint refusing the gateway's client authentication is an outage, not a verdict
    // on the token.
    let ep_basic = Endpoint::start(ClientAuth::Basic);
    ep_basic.answer("tok-1", active("alice", "u-1", "read", 300));
    let gw2 = api_on(&up, &ep_basic.url(), "auth_method: client_secret_post").start_env(&env());
    let (s, _, body) = answer(get(&gw2, "/api", Some("tok-1")).await).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("service_unavailable"))
    );
    assert_eq!(ep_basic.bad_client(), 1);
}

#[tokio::test]
async fn decision_expires_with_the_token() {
    let ep = alice_endpoint("tok-short", 2);
    let up = Backend::start("up");
    let gw = api_on(&up, &ep.url(), "cache: { max_ttl: 10m }").start_env(&env());
    assert_eq!(get(&gw, "/api", Some("tok-short")).await.status(), 200);
    assert_eq!(get(&gw, "/api", Some("tok-short")).await.status(), 200);
    assert_eq!(ep.calls(), 1);
    // exp is whole seconds: at most 2 s from now.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Asked again: the endpoint still says active, but its exp has passed.
    let (s, _, body) = answer(get(&gw, "/api", Some("tok-short")).await).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_token")));
    assert_eq!(ep.calls(), 2);
}

#[tokio::test]
async fn fifty_concurrent_requests_for_a_new_token_make_one_call() {
    let ep = alice_endpoint("tok-burst", 300);
    ep.set_delay(Duration::from_millis(400));
    let up = Backend::start("up");
    let gw = Arc::new(api_on(&up, &ep.url(), "").top(CONSUMERS).start_env(&env()));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let gw = gw.clone();
        set.spawn(async move {
            get(&gw, &format!("/api/{i}"), Some("tok-burst"))
                .await
                .status()
                .as_u16()
        });
    }
    let statuses = set.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        ep.calls(),
        1,
        "one introspection call for 50 concurrent misses"
    );
    assert_eq!(up.hits(), 50);
    let m = gw.metrics_text().await;
    let l = |s: &str| on_api(&m, "lookups", s);
    assert_eq!(l("call"), 1.0);
    assert_eq!(l("coalesced") + l("cache"), 49.0);
}

#[tokio::test]
async fn outage_rejects_fast_and_serve_cached_keeps_known_tokens() {
    let ep = alice_endpoint("tok-known", 3600);
    ep.answer("tok-new", active("alice", "u-1", "read", 3600));
    let up = Backend::start("up");
    let dead = dead_addr();
    let cfg = "timeout: 500ms\ncache: { max_ttl: 1s }";
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .route(
            "down",
            &["/down"],
            "u",
            &plugin(&format!("http://{dead}/introspect"), ""),
        )
        .route("reject", &["/reject"], "u", &plugin(&ep.url(), cfg))
        .route(
            "cached",
            &["/cached"],
            "u",
            &plugin(&ep.url(), &format!("{cfg}\non_outage: serve_cached")),
        )
        .start_env(&env());

    // Nothing listening: 503 at once.
    let t = Instant::now();
    let (s, _, body) = answer(get(&gw, "/down", Some("tok-known")).await).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("service_unavailable"))
    );
    assert_eq!(
        body["message"].as_str(),
        Some("The authorization service is unavailable")
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // Both routes learn tok-known while the endpoint is up.
    for p in ["/reject", "/cached"] {
        assert_eq!(get(&gw, p, Some("tok-known")).await.status(), 200, "{p}");
    }
    assert_eq!(ep.calls(), 2);

    // The endpoint becomes slow (5 s, beyond the 500 ms timeout); max_ttl (1 s) passes.
    ep.set_delay(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    let (s, _, _) = answer(get(&gw, "/reject", Some("tok-known")).await).await;
    assert_eq!(s, 503, "reject: the stale decision is not used");
    assert!(
        t.elapsed() < Duration::from_millis(2000),
        "503 after the timeout, not the endpoint's 5 s: {:?}",
        t.elapsed()
    );
    let (s, _, _) = answer(get(&gw, "/cached", Some("tok-known")).await).await;
    assert_eq!(
        s, 200,
        "serve_cached: the known token passes during the outage"
    );
    assert_eq!(
        up.last_request().unwrap().header("x-credential-sub"),
        Some("u-1")
    );
    let (s, _, _) = answer(get(&gw, "/cached", Some("tok-new")).await).await;
    assert_eq!(s, 503, "serve_cached: an unknown token cannot pass");

    // One of each on its route: the outage, the failed call, the stale answer.
    let m = gw.metrics_text().await;
    for (family, route, label, value) in [
        ("decisions_total", "down", "outcome", "outage"),
        ("calls_total", "down", "result", "error"),
        ("lookups_total", "cached", "source", "stale"),
        ("decisions_total", "cached", "outcome", "outage"),
        ("calls_total", "reject", "result", "error"),
    ] {
        let name = format!("oauth2_introspection_{family}");
        assert_eq!(
            series(&m, &name, route, label, value),
            1.0,
            "{name} {route} {value}"
        );
    }
    assert!(gw
        .stderr()
        .contains("oauth2-introspection: the introspection endpoint"));
}

#[tokio::test]
async fn reload_with_an_unchanged_entry_keeps_the_cache() {
    let ep = alice_endpoint("tok-keep", 3600);
    let up = Backend::start("up");
    let cfg = |timeout: &str, extra_route: bool| {
        let mut c = api_on(&up, &ep.url(), &format!("timeout: {timeout}")).top(CONSUMERS);
        if extra_route {
            c = c.route("other", &["/other"], "u", "");
        }
        c
    };
    let gw = cfg("2s", false).start_env(&env());
    assert_eq!(get(&gw, "/api", Some("tok-keep")).await.status(), 200);
    assert_eq!(ep.calls(), 1);

    // POST /reload, entry unchanged (another route added).
    gw.write_config(cfg("2s", true));
    let (s, body) = gw.admin_reload().await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(get(&gw, "/other", None).await.status(), 200);
    assert_eq!(get(&gw, "/api", Some("tok-keep")).await.status(), 200);
    assert_eq!(ep.calls(), 1, "cache kept across POST /reload");

    // SIGHUP, entry unchanged.
    let v = gw.status_json().await["version"].as_u64().unwrap();
    gw.write_config(cfg("2s", false));
    gw.signal("HUP");
    assert!(
        gw.wait_version(v + 1, Duration::from_secs(10)).await,
        "{}",
        gw.diagnostics()
    );
    assert_eq!(get(&gw, "/api", Some("tok-keep")).await.status(), 200);
    assert_eq!(ep.calls(), 1, "cache kept across SIGHUP");

    // The entry changed: a fresh cache.
    gw.write_config(cfg("3s", false));
    let (s, body) = gw.admin_reload().await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(get(&gw, "/api", Some("tok-keep")).await.status(), 200);
    assert_eq!(ep.calls(), 2);
}

#[tokio::test]
async fn secrets_stay_out_of_logs_status_metrics_and_answers() {
    let ep = alice_endpoint("TOKENSECRET-active", 300);
    let up = Backend::start("up");
    let dead = dead_addr();
    let cfg = api_on(&up, &ep.url(), "required_scopes: [read]")
        .route(
            "scoped",
            &["/scoped"],
            "u",
            &plugin(&ep.url(), "required_scopes: [admin]"),
        )
        .route(
            "down",
            &["/down"],
            "u",
            &plugin(&format!("http://{dead}/introspect?key=QUERYSECRET"), ""),
        )
        .top(CONSUMERS);
    let yaml = cfg
        .yaml()
        .replace("  access_log: off\n", "  access_log: access.log\n");
    let gw = Gateway::start_in_env(
        &yaml,
        cfg.dir,
        &[(SECRET_ENV, CLIENT_SECRET), ("GATEHOUSE_LOG", "debug")],
    );

    let cases = [
        ("/api/a", "TOKENSECRET-active", 200),
        ("/api/b", "TOKENSECRET-inactive", 401),
        ("/scoped/c", "TOKENSECRET-active", 403),
        ("/down/d", "TOKENSECRET-down", 503),
        ("/api/e", "TOKENSECRET\"bad", 401),
    ];
    for (path, token, want) in cases {
        let r = gw
            .get_response(path, &[("Authorization", &format!("Bearer {token}"))])
            .await;
        assert_eq!(r.status().as_u16(), want, "{path}");
        let headers = format!("{:?}", r.headers());
        let body = r.text().await.unwrap();
        for s in ["SECRET", &dead] {
            assert!(
                !body.contains(s) && !headers.contains(s),
                "{path}: {headers} {body}"
            );
        }
    }
    // The upstream never got the token (hide_credentials).
    assert!(up
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));

    let status = gw.status_json().await.to_string();
    let metrics = gw.metrics_text().await;
    // The access log is written by a thread behind a queue.
    let log = gw.dir().join("access.log");
    assert!(
        wait_until(Duration::from_secs(5), || file_lines(&log).len()
            >= cases.len())
        .await,
        "access log lines"
    );
    let basic = STANDARD.encode(format!("{CLIENT_ID}:"));
    for (what, text) in [
        ("stderr", gw.stderr()),
        ("stdout", gw.stdout()),
        ("access log", std::fs::read_to_string(&log).unwrap()),
        ("/status", status),
        ("/metrics", metrics),
    ] {
        for secret in ["TOKENSECRET", "CLIENTSECRET", "QUERYSECRET", basic.as_str()] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
    // The debug log did see the traffic (the check above looked at something).
    assert!(
        gw.stderr().contains("oauth2-introspection"),
        "{}",
        gw.stderr()
    );
}

#[test]
fn config_errors_name_path_and_line() {
    let base = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9001\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: oauth2-introspection\n        config:\n";
    let cases = [
        (
            "          endpoint: http://127.0.0.1:9100/introspect\n          client_id: gw\n          client_secret: hunter2-LITERAL\n",
            "routes[0].plugins[0].config.client_secret",
            13,
            "literal client secret is refused",
        ),
        (
            "          endpoint: \"ftp://as.example/introspect\"\n          client_id: gw\n          client_secret: ${GH_TEST_INTROSPECTION_SECRET}\n",
            "routes[0].plugins[0].config.endpoint",
            11,
            "http:// or https://",
        ),
        (
            "          endpoint: \"http://gw:pw-LITERAL@as.example/introspect\"\n          client_id: gw\n          client_secret: ${GH_TEST_INTROSPECTION_SECRET}\n",
            "routes[0].plugins[0].config.endpoint",
            11,
            "credentials",
        ),
    ];
    for (lines, path, line, msg) in cases {
        let dir = tempfile::TempDir::new().unwrap();
        let p = dir.path().join("g.yaml");
        std::fs::write(&p, format!("{base}{lines}")).unwrap();
        let (code, stderr) = validate_file(&p, &env(), &[]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.lines().any(|l| l.contains(&format!("{path}:"))
                && l.contains(&format!("(line {line})"))
                && l.contains(msg)),
            "{path} (line {line}) {msg}:\n{stderr}"
        );
        assert!(
            !stderr.contains("LITERAL") && !stderr.contains(CLIENT_SECRET),
            "{stderr}"
        );
    }
    // The same config with the secret from the environment is valid.
    let dir = tempfile::TempDir::new().unwrap();
    let p = dir.path().join("g.yaml");
    std::fs::write(
        &p,
        format!("{base}          endpoint: http://127.0.0.1:9100/introspect\n          client_id: gw\n          client_secret: ${{{SECRET_ENV}}}\n"),
    )
    .unwrap();
    let (code, stderr) = validate_file(&p, &env(), &[]);
    assert_eq!(code, 0, "{stderr}");
    // Unset: named, without a value.
    let (code, stderr) = validate_file(&p, &[], &[SECRET_ENV]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(SECRET_ENV), "{stderr}");
}
