//! forward-auth against a real gateway, a real upstream and a real auth service (a small
//! hyper server in this file that decides by the Authorization header, counts its calls and
//! records what it received).
use crate::common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The auth service
// ---------------------------------------------------------------------------------------------

fn auth_rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-auth")
            .enable_all()
            .build()
            .expect("auth runtime")
    })
}

#[derive(Default)]
struct AuthState {
    calls: AtomicUsize,
    seen: Mutex<Vec<Recorded>>,
}

/// Decides by `Authorization`:
/// - `Bearer user-NAME`: 200 with `X-User-Id: NAME`, `X-User-Roles: reader` and
///   `X-Internal-Debug` (never configured to be copied)
/// - `Bearer forbid`: 403
/// - `Bearer slow`: 200 after 3 s
/// - `Bearer boom`: 500; `Bearer moved`: 302
/// - anything else: 401 with `WWW-Authenticate` and an `X-Auth-Debug` header and a body that
///   must never reach the client
struct AuthServer {
    http: HttpServer,
    state: Arc<AuthState>,
}

async fn decide(
    st: Arc<AuthState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let headers = header_pairs(req.headers());
    let method = req.method().as_str().to_string();
    let uri = req.uri().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = body_bytes(req).await;
    st.seen.lock().unwrap().push(Recorded {
        method,
        path: uri.clone(),
        query: None,
        uri,
        headers,
        body,
    });
    let r = Response::builder();
    let resp = if let Some(user) = auth.strip_prefix("Bearer user-") {
        r.status(200)
            .header("x-user-id", user)
            .header("x-user-roles", "reader")
            .header("x-internal-debug", "auth-internal-state")
            .body(Full::new(Bytes::from_static(b"ok")))
    } else if auth == "Bearer forbid" {
        r.status(403)
            .header("www-authenticate", "Bearer error=\"insufficient_scope\"")
            .body(Full::new(Bytes::new()))
    } else if auth == "Bearer slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.status(200).body(Full::new(Bytes::new()))
    } else if auth == "Bearer boom" {
        r.status(500)
            .body(Full::new(Bytes::from_static(b"stack trace at 10.9.8.7")))
    } else if auth == "Bearer moved" {
        r.status(302)
            .header("location", "http://login.internal/")
            .body(Full::new(Bytes::new()))
    } else {
        r.status(401)
            .header("www-authenticate", "Bearer realm=\"test\"")
            .header("x-auth-debug", "why-it-failed")
            .body(Full::new(Bytes::from_static(
                b"{\"detail\":\"internal auth detail\"}",
            )))
    };
    Ok(resp.unwrap())
}

impl AuthServer {
    fn start() -> AuthServer {
        let state = Arc::new(AuthState::default());
        let st = state.clone();
        let http = HttpServer::start(move |req| decide(st.clone(), req));
        AuthServer { http, state }
    }

    fn url(&self, path: &str) -> String {
        self.http.url(path)
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> Recorded {
        self.state
            .seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the auth service was called")
    }
}

impl AuthServer {
    /// forward-auth config calling this service at `path`, with `extra` lines.
    fn config(&self, path: &str, extra: &str) -> String {
        format!("url: {}\n{extra}", self.url(path))
    }
}

/// The auth service, and a config with upstream `u` in front of backend `up` for
/// [`ForwardAuthRoutes::forward_auth`] routes.
fn auth_and_upstream() -> (AuthServer, Backend, Cfg) {
    let auth = AuthServer::start();
    let up = Backend::start("up");
    let cfg = Cfg::new().upstream("u", &[target(&up)], "");
    (auth, up, cfg)
}

trait ForwardAuthRoutes {
    /// Route `name` on `/name` to upstream `u` behind forward-auth with `config`.
    fn forward_auth(self, name: &str, config: &str) -> Cfg;
}

impl ForwardAuthRoutes for Cfg {
    fn forward_auth(self, name: &str, config: &str) -> Cfg {
        self.route(name, &[&format!("/{name}")], "u", &fa_route(config))
    }
}

fn fa_route(config: &str) -> String {
    format!(
        "plugins:\n  - name: forward-auth\n    config:\n{}",
        indent(config, 6)
    )
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

async fn get(gw: &Gateway, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = gw.client.get(gw.url(path));
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()))
}

fn counter(text: &str, name: &str, route: &str, result: &str) -> f64 {
    metric(text, name, &[("route", route), ("result", result)])
        .unwrap_or_else(|| panic!("{name}{{route={route},result={result}}} missing:\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn allow_copies_identity_headers_and_drops_spoofed_ones() {
    let (auth, up, cfg) = auth_and_upstream();
    let gw = cfg
        .forward_auth(
            "app",
            &auth.config("/verify", "upstream_headers: [X-User-Id, X-User-Roles]"),
        )
        .start();

    let r = gw
        .get_response(
            "/app/items?page=2",
            &[
                ("Authorization", "Bearer user-alice"),
                ("X-User-Id", "mallory"),
                ("X-User-Roles", "admin"),
                ("X-User-Roles", "root"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header_joined("x-user-id").as_deref(), Some("alice"));
    assert_eq!(
        seen.header_joined("x-user-roles").as_deref(),
        Some("reader")
    );
    assert_eq!(
        seen.header("x-internal-debug"),
        None,
        "not in upstream_headers"
    );
    assert_eq!(seen.uri, "/app/items?page=2");
    assert_eq!(up.hits(), 1);
    assert_eq!(auth.calls(), 1);

    // An auth answer without X-User-Roles: the client's copy is still gone.
    let up_before = up.hits();
    let r = gw
        .get_response("/app/x", &[("X-User-Roles", "admin")])
        .await;
    assert_eq!(r.status(), 401, "no credential: refused");
    assert_eq!(up.hits(), up_before);
}

#[tokio::test]
async fn auth_call_carries_the_request_and_only_the_chosen_headers() {
    let (auth, up, cfg) = auth_and_upstream();
    let gw = cfg
        .forward_auth(
            "fixed",
            &auth.config(
                "/check?from=gw",
                "request_headers: [Authorization, X-Tenant]\ncache: { ttl: 0s }",
            ),
        )
        .forward_auth(
            "orig",
            &auth.config("/check", "method: original\ncache: { ttl: 0s }"),
        )
        .start();

    let r = gw
        .client
        .post(gw.url("/fixed/orders/7?dry=1&x=%20y"))
        .header("Host", "api.example.com")
        .header("Authorization", "Bearer user-bob")
        .header("X-Tenant", "t-1")
        .header("Cookie", "session=not-for-the-auth-service")
        .header("X-Api-Key", "not-for-the-auth-service")
        .header("X-Request-ID", "req-fa-1")
        .header("X-Forwarded-For", "198.51.100.1")
        .body("a request body the auth service must not get")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let call = auth.last();
    assert_eq!(call.method, "GET", "method: GET by default");
    assert_eq!(call.uri, "/check?from=gw", "the configured URL, unchanged");
    assert_eq!(call.header("x-forwarded-method"), Some("POST"));
    assert_eq!(
        call.header("x-forwarded-uri"),
        Some("/fixed/orders/7?dry=1&x=%20y")
    );
    assert_eq!(call.header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(call.header("x-forwarded-proto"), Some("http"));
    // The gateway's client IP: the peer, not the untrusted X-Forwarded-For.
    assert_eq!(call.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(call.header("x-request-id"), Some("req-fa-1"));
    assert_eq!(call.header("authorization"), Some("Bearer user-bob"));
    assert_eq!(call.header("x-tenant"), Some("t-1"));
    assert_eq!(call.header("cookie"), None);
    assert_eq!(call.header("x-api-key"), None);
    assert!(call.body.is_empty(), "no body goes to the auth service");
    // The upstream still gets the body and the client's headers.
    let seen = up.last_request().unwrap();
    assert_eq!(
        seen.body,
        b"a request body the auth service must not get".to_vec()
    );
    assert_eq!(
        seen.header("cookie"),
        Some("session=not-for-the-auth-service")
    );

    // method: original
    let (s, _) = gw
        .send(
            gw.client
                .delete(gw.url("/orig/a"))
                .header("Authorization", "Bearer user-bob"),
        )
        .await;
    assert_eq!(s, 200);
    let call = auth.last();
    assert_eq!(call.method, "DELETE");
    assert_eq!(call.header("x-forwarded-method"), Some("DELETE"));
    assert!(call.body.is_empty());
}

#[tokio::test]
async fn denials_are_contract_json_with_client_headers_only() {
    let (auth, up, cfg) = auth_and_upstream();
    let gw = cfg.forward_auth("app", &auth.config("/v", "")).start();

    let r = get(&gw, "/app", Some("Bearer nope")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"test\"");
    assert!(r.headers().get("x-auth-debug").is_none());
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.text().await.unwrap();
    let v = assert_error_body(&body, "unauthorized");
    assert!(!body.contains("internal auth detail"), "{body}");
    assert!(!body.contains("nope"), "{body}");
    assert!(v["request_id"].as_str().is_some());

    let r = get(&gw, "/app", Some("Bearer forbid")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    assert_error_body(&r.text().await.unwrap(), "forbidden");
    assert_eq!(up.hits(), 0, "refused requests never reach the upstream");

    let m = gw.metrics_text().await;
    assert_eq!(counter(&m, "forward_auth_calls_total", "app", "deny"), 2.0);
    assert_eq!(counter(&m, "forward_auth_calls_total", "app", "allow"), 0.0);
}

#[tokio::test]
async fn timeout_down_and_odd_statuses_answer_503() {
    let (auth, up, cfg) = auth_and_upstream();
    let dead = dead_addr();
    let gw = cfg
        .forward_auth("live", &auth.config("/v", "timeout: 300ms"))
        .forward_auth("dead", &format!("url: http://{dead}/v\ntimeout: 2s"))
        .start();

    let started = Instant::now();
    let r = get(&gw, "/live", Some("Bearer slow")).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert_error_body(&body, "service_unavailable");
    assert!(!body.contains(&auth.http.port.to_string()), "{body}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "answered after {took:?}, the timeout is 300ms"
    );

    for token in ["Bearer boom", "Bearer moved"] {
        let r = get(&gw, "/live", Some(token)).await;
        assert_eq!(r.status(), 503, "{token}");
        let body = r.text().await.unwrap();
        assert_error_body(&body, "service_unavailable");
        assert!(!body.contains("10.9.8.7") && !body.contains("login.internal"));
    }

    let r = get(&gw, "/dead", Some("Bearer user-a")).await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert_error_body(&body, "service_unavailable");
    assert!(!body.contains(&dead), "{body}");
    assert_eq!(up.hits(), 0);

    // Failures are never cached: the next request calls again.
    let before = auth.calls();
    let r = get(&gw, "/live", Some("Bearer boom")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(auth.calls(), before + 1);

    let m = gw.metrics_text().await;
    assert_eq!(
        counter(&m, "forward_auth_calls_total", "live", "error"),
        4.0
    );
    assert_eq!(
        counter(&m, "forward_auth_calls_total", "dead", "error"),
        1.0
    );
    assert_eq!(
        counter(&m, "forward_auth_cache_hits_total", "live", "allow"),
        0.0
    );
}

#[tokio::test]
async fn cache_cuts_calls_per_credential_and_expires() {
    let (auth, up, cfg) = auth_and_upstream();
    let gw = cfg
        .forward_auth(
            "app",
            &auth.config("/v", "upstream_headers: [X-User-Id]\ncache: { ttl: 1s }"),
        )
        .start();

    for i in 0..5 {
        let r = get(&gw, &format!("/app/{i}"), Some("Bearer user-alice")).await;
        assert_eq!(r.status(), 200);
        // A cached allow still sets the identity header.
        assert_eq!(
            up.last_request().unwrap().header("x-user-id"),
            Some("alice")
        );
    }
    assert_eq!(
        auth.calls(),
        1,
        "five requests, one credential: one auth call"
    );
    assert_eq!(
        get(&gw, "/app", Some("Bearer user-bob")).await.status(),
        200
    );
    assert_eq!(up.last_request().unwrap().header("x-user-id"), Some("bob"));
    assert_eq!(auth.calls(), 2, "another credential: another call");
    // Denials are cached too.
    for _ in 0..3 {
        let r = get(&gw, "/app", None).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"test\"");
    }
    assert_eq!(auth.calls(), 3);

    let m = gw.metrics_text().await;
    assert_eq!(
        counter(&m, "forward_auth_cache_hits_total", "app", "allow"),
        4.0
    );
    assert_eq!(
        counter(&m, "forward_auth_cache_hits_total", "app", "deny"),
        2.0
    );
    assert_eq!(counter(&m, "forward_auth_calls_total", "app", "allow"), 2.0);

    // After the TTL the credential is checked again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&gw, "/app", Some("Bearer user-alice")).await.status(),
        200
    );
    assert_eq!(auth.calls(), 4);
    assert_eq!(
        get(&gw, "/app", Some("Bearer user-alice")).await.status(),
        200
    );
    assert_eq!(auth.calls(), 4);
}

#[tokio::test]
async fn preflight_skips_the_auth_only_when_configured() {
    let (auth, up, cfg) = auth_and_upstream();
    let gw = cfg
        .forward_auth(
            "open",
            &auth.config(
                "/v",
                "run_on_preflight: false\nupstream_headers: [X-User-Id]",
            ),
        )
        .forward_auth("strict", &auth.config("/v", ""))
        .start();

    let preflight = |path: &str| {
        gw.client
            .request(reqwest::Method::OPTIONS, gw.url(path))
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "POST")
    };
    let (s, _) = gw
        .send(preflight("/open").header("X-User-Id", "spoofed"))
        .await;
    assert_eq!(s, 200, "the preflight went to the upstream");
    assert_eq!(auth.calls(), 0);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(
        seen.header("x-user-id"),
        None,
        "spoofed copy removed anyway"
    );

    // An OPTIONS that is not a preflight is authorized as usual.
    let (s, body) = gw
        .send(
            gw.client
                .request(reqwest::Method::OPTIONS, gw.url("/open"))
                .header("Origin", "https://app.example"),
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "unauthorized");
    assert_eq!(auth.calls(), 1);

    // run_on_preflight defaults to true.
    let (s, _) = gw.send(preflight("/strict")).await;
    assert_eq!(s, 401);
    assert_eq!(auth.calls(), 2);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn consumer_header_names_a_consumer_for_acl_and_limits() {
    let (auth, up, cfg) = auth_and_upstream();
    let gw = cfg
        .route_u("admin", &format!(
                "{}  - name: acl\n    config: {{ allow_roles: [admin] }}\n",
                fa_route(&auth.config("/v", "consumer_header: X-User-Id"))
            ))
        .route_u("limited", &format!(
                "{}  - name: rate-limiting\n    config: {{ minute: 2, limit_by: header, header_name: X-User-Id }}\n",
                fa_route(&auth.config("/v", "upstream_headers: [X-User-Id]"))
            ))
        .top("consumers:\n  - { username: alice, roles: [admin] }\n  - { username: carol, roles: [reader] }\n")
        .start();

    let r = get(&gw, "/admin", Some("Bearer user-alice")).await;
    assert_eq!(r.status(), 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-consumer-username"), Some("alice"));
    let r = get(&gw, "/admin", Some("Bearer user-carol")).await;
    assert_eq!(r.status(), 403, "carol's roles do not include admin");
    assert_error_body(&r.text().await.unwrap(), "forbidden");
    // dave is allowed by the auth service but is no configured consumer: anonymous for acl.
    let r = get(&gw, "/admin", Some("Bearer user-dave")).await;
    assert_eq!(r.status(), 401);

    // The identity header is on the request before rate-limiting runs: a budget per user,
    // and a client cannot pick another user's budget by sending X-User-Id itself.
    for _ in 0..2 {
        let r = gw
            .get_response(
                "/limited",
                &[
                    ("Authorization", "Bearer user-erin"),
                    ("X-User-Id", "somebody-else"),
                ],
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = get(&gw, "/limited", Some("Bearer user-erin")).await;
    assert_eq!(r.status(), 429);
    let r = get(&gw, "/limited", Some("Bearer user-frank")).await;
    assert_eq!(r.status(), 200, "another user has a budget of their own");
}

#[tokio::test]
async fn cache_survives_a_reload_that_keeps_the_entry() {
    let auth = AuthServer::start();
    let up = Backend::start("up");
    let plugin = |timeout: &str| fa_route(&auth.config("/v", &format!("timeout: {timeout}")));
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .route_u("app", &plugin("1s"))
        .start();
    assert_eq!(
        get(&gw, "/app", Some("Bearer user-alice")).await.status(),
        200
    );
    assert_eq!(auth.calls(), 1);

    // Another route added, the entry unchanged: the cached decision stays.
    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&up)], "")
            .route_u("app", &plugin("1s"))
            .route_u("other", ""),
    );
    let (s, body) = gw.admin_reload().await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(get(&gw, "/other", None).await.status(), 200);
    assert_eq!(
        get(&gw, "/app", Some("Bearer user-alice")).await.status(),
        200
    );
    assert_eq!(auth.calls(), 1, "cache kept across the reload");

    // The entry changed: a fresh cache.
    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&up)], "")
            .route_u("app", &plugin("2s"))
            .route_u("other", ""),
    );
    let (s, body) = gw.admin_reload().await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        get(&gw, "/app", Some("Bearer user-alice")).await.status(),
        200
    );
    assert_eq!(auth.calls(), 2);
}

#[tokio::test]
async fn secrets_stay_out_of_logs_bodies_and_status() {
    let auth = AuthServer::start();
    let up = Backend::start("up");
    // The default body echoes the request headers (the client's own Authorization included).
    up.set_body(Some("{\"ok\":true}"));
    let dead = dead_addr();
    let cfg = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .forward_auth(
            "app",
            &format!("url: \"{}\"", auth.url("/v?service_key=SVCSECRET1")),
        )
        .forward_auth(
            "down",
            &format!("url: \"http://{dead}/v?service_key=SVCSECRET2\""),
        );
    let gw = start_with_access_log(cfg, "access.log");
    let log = gw.dir().join("access.log");

    let cases = [
        ("/app/a", "Bearer user-TOKENSECRET1", 200),
        ("/app/b", "Bearer TOKENSECRET2", 401),
        ("/app/c", "Bearer boom-TOKENSECRET3", 401),
        ("/down/d", "Bearer user-TOKENSECRET4", 503),
    ];
    for (path, token, want) in cases {
        let r = get(&gw, path, Some(token)).await;
        assert_eq!(r.status().as_u16(), want, "{path}");
        let headers = format!("{:?}", r.headers());
        let body = r.text().await.unwrap();
        for s in ["SECRET", &dead] {
            assert!(!body.contains(s) && !headers.contains(s), "{path}: {body}");
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || file_lines(&log).len() >= 4).await,
        "access log lines: {:?}",
        file_lines(&log)
    );
    for line in file_lines(&log) {
        assert!(!line.contains("SECRET"), "access log: {line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["path"] == "/down/d" {
            assert_eq!(v["status"], 503);
            assert_eq!(v["error"], "service_unavailable");
        }
    }
    let status = gw.status_json().await.to_string();
    assert!(!status.contains("SECRET"), "{status}");
    let stderr = gw.stderr();
    assert!(!stderr.contains("SECRET"), "{stderr}");
    // The failure is logged for operators, with the service's host but not its query.
    assert!(stderr.contains("forward-auth"), "{stderr}");
}

#[tokio::test]
async fn demo_auth_service_and_demo_route() {
    // The demo config's profile route is a forward-auth to the demo auth service.
    // The demo's HTTPS upstream reads the CA `gatehouse demo` writes next to its config.
    let dir = tempfile::tempdir().unwrap();
    gatehouse::demo::write_pki(dir.path()).unwrap();
    let rt = gatehouse::config::load_str(
        gatehouse::demo::DEMO_CONFIG,
        dir.path(),
        &gatehouse::upstream::StateRegistry::default(),
        &gatehouse::util::registry::Registry::default(),
        1,
    )
    .expect("demo config");
    let profile = rt.routes.iter().find(|r| r.name == "profile").unwrap();
    assert!(profile.plugins.names().contains(&"forward-auth"));
    let (_, _, auth_port) = gatehouse::demo::DEMO_BACKENDS
        .iter()
        .find(|(s, ..)| *s == "auth")
        .unwrap();
    assert!(gatehouse::demo::DEMO_CONFIG.contains(&format!("127.0.0.1:{auth_port}/verify")));

    // The demo auth service itself, on a free port, behind a real gateway.
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let server = auth_rt().spawn(gatehouse::demo::serve_backend("auth", "auth-1", addr));
    let up = Backend::start("up");
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .forward_auth(
            "profile",
            &format!(
                "url: http://127.0.0.1:{port}/verify\nupstream_headers: [X-User-Id, X-User-Roles]"
            ),
        )
        .start();
    let token = format!("Bearer {}", gatehouse::demo::DEMO_SESSION_TOKEN);
    let r = get(&gw, "/profile", Some(&token)).await;
    assert_eq!(r.status(), 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-user-id"), Some("demo-user"));
    assert_eq!(seen.header("x-user-roles"), Some("reader"));
    let r = get(&gw, "/profile", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"demo-auth\""
    );
    server.abort();
}

#[tokio::test]
async fn https_auth_service_with_ca_file() {
    // The auth service behind a second gatehouse that terminates TLS with a private CA.
    let auth = AuthServer::start();
    let auth_addr = format!("127.0.0.1:{}", auth.http.port);
    let tls_port = free_port();
    let (front, ca) = Cfg::new().tls_listener(tls_port, "");
    let _front = front
        .upstream("auth", &[target_addr(&auth_addr)], "")
        .route("auth", &["/"], "auth", "")
        .start();

    let up = Backend::start("up");
    let cfg = Cfg::new();
    std::fs::write(cfg.dir.path().join("auth-ca.pem"), ca).unwrap();
    let url = format!("https://localhost:{tls_port}/verify");
    let gw = cfg
        .upstream("u", &[target(&up)], "")
        .forward_auth(
            "trusted",
            &format!(
                "url: {url}\nca_file: auth-ca.pem\nupstream_headers: [X-User-Id]\ntimeout: 3s"
            ),
        )
        .forward_auth("untrusted", &format!("url: {url}\ntimeout: 3s"))
        .start();

    let r = get(&gw, "/trusted", Some("Bearer user-tls")).await;
    assert_eq!(r.status(), 200, "{}", gw.stderr());
    assert_eq!(up.last_request().unwrap().header("x-user-id"), Some("tls"));
    let r = get(&gw, "/trusted", Some("Bearer nope")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(auth.calls(), 2);

    // Without the CA the certificate is not trusted: a failure, never an allow.
    let r = get(&gw, "/untrusted", Some("Bearer user-tls")).await;
    assert_eq!(r.status(), 503);
    assert_error_body(&r.text().await.unwrap(), "service_unavailable");
    assert_eq!(auth.calls(), 2);
    assert_eq!(up.hits(), 1);
}
