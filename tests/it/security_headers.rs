//! Headers the gateway owns, against the real binary: identity headers a client cannot
//! spoof in any spelling (checked at a real WSGI upstream, which reads `X_User_Id` as
//! `X-User-Id`), forward-auth identity that `Connection` cannot drop, `X-Forwarded-For` and
//! `X-Forwarded-Proto` read as one list over every line, and proxy-cache answers that never
//! cross users or carry a client's forwarding headers to others.
use crate::common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Python's wsgiref server running tests/fixtures/wsgi/echo.py: answers with its HTTP_*
/// environ as JSON. Killed on drop.
struct Wsgi {
    port: u16,
    child: Child,
}

impl Wsgi {
    fn start() -> Wsgi {
        let mut child = Command::new("python3")
            .arg(fixture("wsgi/echo.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is installed (.ci/run)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("wsgi echo printed {line:?}"));
        Wsgi { port, child }
    }

    fn target(&self) -> String {
        format!("{{ addr: \"127.0.0.1:{}\" }}", self.port)
    }
}

impl Drop for Wsgi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An auth service: `Authorization: Bearer user-NAME` or `Cookie: session=NAME` is allowed
/// as `X-User-Id: u-NAME`; anything else is 401.
fn auth_service() -> (u16, tokio::task::JoinHandle<()>) {
    spawn_http(|req: Request<hyper::body::Incoming>| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (auth, cookie) = (h("authorization"), h("cookie"));
        let user = auth
            .strip_prefix("Bearer user-")
            .or_else(|| cookie.strip_prefix("session="))
            .map(str::to_string);
        let r = Response::builder();
        Ok(match user {
            Some(u) => r
                .status(200)
                .header("x-user-id", format!("u-{u}"))
                .body(Full::new(Bytes::new())),
            None => r.status(401).body(Full::new(Bytes::new())),
        }
        .unwrap())
    })
}

fn forward_auth(auth_port: u16, extra: &str) -> String {
    format!(
        "  - name: forward-auth\n    config: {{ url: \"http://127.0.0.1:{auth_port}/verify\", upstream_headers: [X-User-Id]{extra} }}\n"
    )
}

/// One raw HTTP/1.1 GET with `headers` (`Name: value` lines, repeats kept, in order).
fn raw_get(gw: &Gateway, path: &str, headers: &[&str]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("connection:"))
    {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    let (bytes, _) = raw_request(gw.port, req.as_bytes(), Duration::from_secs(5));
    parse_response(&bytes).unwrap_or_else(|| panic!("no response to {req:?}\n{}", gw.diagnostics()))
}

/// Every value of `name` at the upstream, lines joined with ", ".
fn upstream_values(r: &Recorded, name: &str) -> Option<String> {
    r.header_joined(name)
}

/// Header names the upstream received that a CGI server would read as `owned`.
fn spellings_of(r: &Recorded, owned: &str) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case(owned))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

const CONSUMERS: &str = "consumers:
  - username: bob
    keyauth_credentials: [{ key: bob-key-5c1e9a }]
";

// ---------------------------------------------------------------------------------------------
// 1. Identity headers in any spelling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn underscore_identity_headers_never_reach_a_wsgi_upstream() {
    let wsgi = Wsgi::start();
    let (auth_port, _auth) = auth_service();
    let gw = Cfg::new()
        .upstream("py", &[wsgi.target()], "")
        .route("open", &["/open"], "py", "")
        .route(
            "keyed",
            &["/keyed"],
            "py",
            "plugins:\n  - name: key-auth\n    config: {}",
        )
        .route(
            "fa",
            &["/fa"],
            "py",
            &format!("plugins:\n{}", forward_auth(auth_port, "")),
        )
        .top(CONSUMERS)
        .start();
    let spoof = [
        "X_Consumer_Username: alice",
        "X_Authenticated_Roles: admin",
        "x_real_ip: 198.51.100.66",
        "X_User_Id: u-alice",
    ];
    let env = |r: &RawResponse| -> Value {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };

    // A route without authentication: no identity at all reaches the application.
    let e = env(&raw_get(&gw, "/open/whoami", &spoof));
    assert_eq!(e.get("HTTP_X_CONSUMER_USERNAME"), None, "{e}");
    assert_eq!(e.get("HTTP_X_AUTHENTICATED_ROLES"), None, "{e}");
    assert_eq!(e["HTTP_X_REAL_IP"], "127.0.0.1", "{e}");

    // key-auth: the application sees bob, only bob.
    let mut h = spoof.to_vec();
    h.push("X-API-Key: bob-key-5c1e9a");
    let e = env(&raw_get(&gw, "/keyed/whoami", &h));
    assert_eq!(e["HTTP_X_CONSUMER_USERNAME"], "bob", "{e}");
    assert_eq!(e.get("HTTP_X_AUTHENTICATED_ROLES"), None, "{e}");

    // forward-auth: its upstream_headers are identity headers of the route.
    let mut h = spoof.to_vec();
    h.push("Authorization: Bearer user-bob");
    let e = env(&raw_get(&gw, "/fa/whoami", &h));
    assert_eq!(e["HTTP_X_USER_ID"], "u-bob", "{e}");
    assert_eq!(e.get("HTTP_X_CONSUMER_USERNAME"), None, "{e}");
}

// ---------------------------------------------------------------------------------------------
// 2. Connection cannot drop forward-auth's identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_cannot_drop_forward_auth_identity() {
    let up = Backend::start("up");
    let (auth_port, _auth) = auth_service();
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .route_u("fa", &format!("plugins:\n{}", forward_auth(auth_port, "")))
        .route_u("keyed", "plugins:\n  - name: key-auth\n    config: {}")
        .top(CONSUMERS)
        .start();

    // Alice's session, Bob's id under another spelling, and the real header named as
    // hop-by-hop so the proxy would drop the gateway's value.
    let r = raw_get(
        &gw,
        "/fa/me",
        &[
            "Authorization: Bearer user-alice",
            "X_User_Id: u-bob",
            "Connection: X-User-Id, close",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().expect("the upstream was called");
    assert_eq!(spellings_of(&seen, "x-user-id"), ["x-user-id: u-alice"]);

    // Still true: Connection naming the consumer header changes nothing.
    let r = raw_get(
        &gw,
        "/keyed/me",
        &[
            "X-API-Key: bob-key-5c1e9a",
            "Connection: X-Consumer-Username, close",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().unwrap();
    assert_eq!(
        spellings_of(&seen, "x-consumer-username"),
        ["x-consumer-username: bob"]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Forwarded headers: every line, one rule
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_forwarded_for_lines_are_one_list() {
    let up = Backend::start("up");
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&up)], "")
        .route_u(
            "ip",
            "plugins:\n  - name: ip-restriction\n    config: { allow: [\"198.51.100.0/24\"] }",
        )
        .route_u(
            "rl",
            "plugins:\n  - name: rate-limiting\n    config: { minute: 1, limit_by: ip }",
        )
        .route_u("echo", "")
        .start();
    let two = |first: &'static str, second: &'static str| {
        [
            format!("X-Forwarded-For: {first}"),
            format!("X-Forwarded-For: {second}"),
        ]
    };
    let get = |path: &str, h: &[String]| {
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        raw_get(&gw, path, &h)
    };

    // One line or two: the client is 203.0.113.7, outside the allow-list.
    let one = ["X-Forwarded-For: 198.51.100.1, 203.0.113.7".to_string()];
    assert_eq!(get("/ip/x", &one).status, 403);
    let r = get("/ip/x", &two("198.51.100.1", "203.0.113.7"));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_error_body(&r.text(), "ip_forbidden");
    assert_eq!(up.hits(), 0);

    // The upstream gets the whole chain in one line, and the client the gateway saw.
    let r = get("/echo/x", &two("198.51.100.1", "203.0.113.7"));
    assert_eq!(r.status, 200);
    let seen = up.last_request().unwrap();
    let xff: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .collect();
    assert_eq!(xff.len(), 1, "{xff:?}");
    assert_eq!(xff[0].1, "198.51.100.1, 203.0.113.7, 127.0.0.1");
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"));

    // Rate limits count the right-most client, not the first line.
    let r = get("/rl/x", &two("198.51.100.1", "203.0.113.7"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get("/rl/x", &two("198.51.100.1", "203.0.113.8"));
    assert_eq!(r.status, 200, "another client: {}", r.text());
    let r = get("/rl/x", &two("198.51.100.2", "203.0.113.7"));
    assert_eq!(r.status, 429, "the first client again: {}", r.text());
}

#[tokio::test]
async fn forwarded_proto_lines_follow_one_rule() {
    let up = Backend::start("up");
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&up)], "")
        .route_u("secure", "protocols: [https]")
        .start();

    // The right-most value over both lines is what the trusted proxy wrote: https.
    let r = raw_get(
        &gw,
        "/secure/x",
        &["X-Forwarded-Proto: http", "X-Forwarded-Proto: https"],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().unwrap();
    assert_eq!(
        upstream_values(&seen, "x-forwarded-proto").as_deref(),
        Some("https")
    );

    // A client's `https` to the left of the proxy's `http` does not make it HTTPS.
    let r = raw_get(
        &gw,
        "/secure/x",
        &["X-Forwarded-Proto: https", "X-Forwarded-Proto: http"],
    );
    assert_eq!(r.status, 426, "{}", r.text());
    let r = raw_get(&gw, "/secure/x", &["X-Forwarded-Proto: https, http"]);
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// 9 and 11. proxy-cache never crosses users nor stores a client's forwarding headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forward_auth_and_proxy_cache_keep_users_apart() {
    let up = Backend::start("up");
    let (auth_port, _auth) = auth_service();
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .route_u(
            "fc",
            &format!(
                "plugins:\n{}  - name: proxy-cache\n    config: {{ ttl: 60s }}\n",
                forward_auth(auth_port, ", request_headers: [Cookie]")
            ),
        )
        .start();
    let as_user = |user: &str| raw_get(&gw, "/fc/profile", &[&format!("Cookie: session={user}")]);

    let a = as_user("alice");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-cache-status"), Some("MISS"));
    assert!(a.text().contains("u-alice"), "{}", a.text());

    let b = as_user("bob");
    assert_eq!(b.status, 200, "{}", b.text());
    assert!(
        !b.text().contains("alice"),
        "Bob got Alice's answer: {}",
        b.text()
    );
    assert!(b.text().contains("u-bob"), "{}", b.text());
    assert_eq!(b.header("x-cache-status"), Some("MISS"));

    // Each user's own object is still cached.
    let a2 = as_user("alice");
    assert_eq!(a2.header("x-cache-status"), Some("HIT"));
    assert!(a2.text().contains("u-alice"), "{}", a2.text());
    let b2 = as_user("bob");
    assert_eq!(b2.header("x-cache-status"), Some("HIT"));
    assert!(!b2.text().contains("alice"), "{}", b2.text());
    assert_eq!(up.hits(), 2);
}

const FORWARDING: &[&str] = &[
    "X-Forwarded-Host: evil.example",
    "X-Forwarded-Prefix: /evil",
    "X-Forwarded-Port: 6666",
    "X-Forwarded-Scheme: evil",
    "Forwarded: host=evil.example;proto=https",
    "X-Original-URL: /evil/admin",
    "X-Rewrite-URL: /evil/admin",
    "X-HTTP-Method-Override: DELETE",
    "X_Forwarded_Host: evil.example",
];

#[tokio::test]
async fn forwarding_headers_from_clients_never_poison_the_cache() {
    let up = Backend::start("up");
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .route_u(
            "c",
            "plugins:\n  - name: proxy-cache\n    config: { ttl: 60s }",
        )
        .start();

    let m = raw_get(&gw, "/c/page", FORWARDING);
    assert_eq!(m.status, 200, "{}", m.text());
    let seen = up.last_request().unwrap();
    for h in FORWARDING {
        let name = h.split(':').next().unwrap().replace('_', "-");
        assert!(
            spellings_of(&seen, &name).is_empty(),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }

    // Bob is served the clean object.
    let b = raw_get(&gw, "/c/page", &[]);
    assert_eq!(b.status, 200);
    assert_eq!(b.header("x-cache-status"), Some("HIT"));
    assert!(!b.text().contains("evil"), "poisoned: {}", b.text());
    assert!(!b.text().contains("DELETE"), "poisoned: {}", b.text());
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn trusted_proxy_forwarding_headers_bypass_the_cache_unless_keyed() {
    let up = Backend::start("up");
    let gw = Cfg::new()
        .server("trusted_proxies: [\"127.0.0.1/32\"]")
        .upstream("u", &[target(&up)], "")
        .route_u("c", "plugins:\n  - name: proxy-cache\n    config: { ttl: 60s }")
        .route_u("v", "plugins:\n  - name: proxy-cache\n    config: { ttl: 60s, vary_headers: [X-Forwarded-Host] }")
        .start();
    let host = |path: &str, h: &str| raw_get(&gw, path, &[&format!("X-Forwarded-Host: {h}")]);

    // The proxy's X-Forwarded-Host reaches the upstream; the answer is not stored.
    for _ in 0..2 {
        let r = host("/c/page", "a.example");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache-status"), Some("BYPASS"));
        assert!(r.text().contains("a.example"), "{}", r.text());
    }
    let r = raw_get(&gw, "/c/page", &[]);
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert!(!r.text().contains("a.example"), "{}", r.text());
    assert_eq!(up.hits(), 3);

    // Keyed on it: one object per forwarded host.
    assert_eq!(
        host("/v/page", "a.example").header("x-cache-status"),
        Some("MISS")
    );
    let b = host("/v/page", "b.example");
    assert_eq!(b.header("x-cache-status"), Some("MISS"));
    assert!(!b.text().contains("a.example"), "{}", b.text());
    let a = host("/v/page", "a.example");
    assert_eq!(a.header("x-cache-status"), Some("HIT"));
    assert!(a.text().contains("a.example"), "{}", a.text());
    assert_eq!(up.hits(), 5);
}

/// `forwarded_host: true` gives the upstream the client's `Host` as `X-Forwarded-Host` (the
/// gateway's own value, never the client's copy); without it no `X-Forwarded-Host` is sent.
#[tokio::test]
async fn forwarded_host_is_the_gateways_own_where_configured() {
    let up = Backend::start("up");
    let gw = Cfg::new()
        .upstream("u", &[target(&up)], "")
        .route_u("fh", "preserve_host: false\nforwarded_host: true")
        .route_u("plain", "preserve_host: false")
        .start();

    let r = raw_get(&gw, "/fh/x", &["X-Forwarded-Host: evil.example"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().unwrap();
    assert_eq!(
        upstream_values(&seen, "x-forwarded-host").as_deref(),
        Some("app.example")
    );
    assert_eq!(seen.header("host"), Some(up.addr().as_str()));

    let r = raw_get(&gw, "/plain/x", &["X-Forwarded-Host: evil.example"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().unwrap();
    assert_eq!(upstream_values(&seen, "x-forwarded-host"), None);
    assert_eq!(up.hits(), 2);
}
