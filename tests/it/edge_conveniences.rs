//! Edge conveniences against the real binary and real upstreams: the public health route
//! (no upstream, no plugin, HEAD, 405, metrics, drain on SIGTERM), the TLS version and
//! cipher-suite policy proven by real handshakes, https-only routes (redirect, 426, TLS and
//! trusted X-Forwarded-Proto pass, bad Host refused), `run_on_preflight` for key-auth and
//! jwt, and the config errors of all of them with their lines.
use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pingora::tls::{
    version, ClientConfig, CryptoProvider, RootCertStore, ServerName, TlsConnector,
};
use rcgen::KeyPair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The test CA and server certificate under `dir/tls/`; returns the CA file's path.
fn ca_file(dir: &std::path::Path) -> std::path::PathBuf {
    make_certs(dir);
    dir.join("tls/ca.pem")
}

fn tls_block(port: u16, extra: &str) -> String {
    let mut s = format!(
        "tls:\n  listen: [\"127.0.0.1:{port}\"]\n  cert: tls/server.crt\n  key: tls/server.key\n"
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("  {l}\n"));
    }
    s
}

/// What a finished handshake and one HTTP/1.1 request gave.
#[derive(Debug)]
struct Handshake {
    suite: String,
    version: String,
    status_line: String,
}

/// A real rustls client: TLS versions `v12`/`v13` and only the `suites` named (rustls
/// names; empty = all), then `GET path` over HTTP/1.1. `Err` when the handshake fails.
async fn handshake(
    port: u16,
    ca: &std::path::Path,
    v12: bool,
    v13: bool,
    suites: &[&str],
    path: &str,
) -> Result<Handshake, String> {
    pingora::tls::install_default_crypto_provider();
    let mut p = CryptoProvider::clone(CryptoProvider::get_default().unwrap());
    if !suites.is_empty() {
        p.cipher_suites
            .retain(|s| suites.contains(&format!("{:?}", s.suite()).as_str()));
        // The offer in the order given.
        p.cipher_suites.sort_by_key(|s| {
            let n = format!("{:?}", s.suite());
            suites.iter().position(|x| *x == n)
        });
        assert_eq!(
            p.cipher_suites.len(),
            suites.len(),
            "test names a suite rustls lacks"
        );
    }
    let versions = match (v12, v13) {
        (true, true) => &[&version::TLS12, &version::TLS13][..],
        (true, false) => &[&version::TLS12][..],
        _ => &[&version::TLS13][..],
    };
    let mut roots = RootCertStore::empty();
    pingora::tls::load_ca_file_into_store(ca, &mut roots).unwrap();
    let cfg = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connector = TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (suite, version) = {
        let conn = tls.get_ref().1;
        (
            format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite()),
            format!("{:?}", conn.protocol_version().unwrap()),
        )
    };
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    Ok(Handshake {
        suite,
        version,
        status_line: text.lines().next().unwrap_or("").to_string(),
    })
}

/// 1-based line of the first line of `yaml` containing `needle`.
fn line_in(yaml: &str, needle: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in yaml"))
        + 1
}

fn assert_error_line(stderr: &str, path: &str, line: usize, text: &str) {
    assert!(
        stderr.lines().any(|l| l.starts_with(&format!("{path}:"))
            && l.contains(&format!("(line {line})"))
            && l.contains(text)),
        "expected `{path}: ...{text}... (line {line})`; stderr:\n{stderr}"
    );
}

async fn raw(port: u16, req: &str) -> RawResponse {
    let req = req.to_string();
    let (bytes, _) = tokio::task::spawn_blocking(move || {
        raw_request(port, req.as_bytes(), Duration::from_secs(5))
    })
    .await
    .unwrap();
    parse_response(&bytes)
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&bytes)))
}

const CONSUMERS: &str = "consumers:
  - username: alice
    keyauth_credentials: [{ key: \"alice-key-7f3a9c0e5b2d41\" }]
    jwt_secrets: [{ key: alice-iss, secret: \"0123456789abcdef0123456789abcdef\" }]
";
const ALICE_KEY: &str = "alice-key-7f3a9c0e5b2d41";

// ---------------------------------------------------------------------------------------------
// Public health route
// ---------------------------------------------------------------------------------------------

/// Sum of `http_requests_total` over every route and status.
fn routed_requests(m: &str) -> f64 {
    samples(&parse_metrics(m), "http_requests_total", &[])
        .iter()
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn health_route_answers_before_routing_auth_and_upstream() {
    let a = Backend::start("a");
    let cfg = Cfg::new()
        .server("health_check_path: /health")
        .upstream("u", &[target(&a)], "")
        // A catch-all route covers /health: the gateway answers it anyway.
        .route("all", &["/"], "u", "")
        .top(CONSUMERS)
        .top("plugins:\n  - name: key-auth\n  - name: correlation-id\n");
    let log = cfg.dir.path().join("access.log");
    let gw = start_with_access_log(cfg, &log.display().to_string());

    let r = gw.get("/health").await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(
        r.headers().get("x-request-id").is_none(),
        "no plugin decorates the health answer"
    );
    assert_eq!(r.text().await.unwrap(), r#"{"status":"ok"}"#);
    // A query string does not change the path.
    let (s, _) = gw.send(gw.client.get(gw.url("/health?probe=lb1"))).await;
    assert_eq!(s, 200);

    // HEAD: same head, no body.
    let h = raw(
        gw.port,
        "HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("15"));
    assert!(h.body.is_empty(), "{:?}", h.text());

    // Other methods: 405 from the gateway, never routed.
    let (s, body) = gw.send(gw.client.post(gw.url("/health")).body("x")).await;
    assert_eq!(s, 405);
    assert_error_body(&body, "method_not_allowed");

    // Nothing reached the upstream (not even as its own /health), though key-auth is global.
    assert_eq!(a.hits(), 0);
    assert_eq!(a.health_hits(), 0);

    // The same path one segment deeper is an ordinary route: key-auth applies...
    let (s, body) = gw.send(gw.client.get(gw.url("/health/x"))).await;
    assert_eq!(s, 401, "{body}");
    assert_error_body(&body, "missing_api_key");
    // ...and with a key it is proxied.
    let (s, _) = gw.get_with("/other", &[("X-API-Key", ALICE_KEY)]).await;
    assert_eq!(s, 200);
    assert_eq!(a.hits(), 1);

    // Metrics: probes in their own counter, not in the route series. The request counters
    // are updated in the logging phase, after the answer went out: wait for the second.
    let mut m = gw.metrics_text().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while routed_requests(&m) < 2.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = gw.metrics_text().await;
    }
    assert_eq!(
        metric(&m, "health_route_requests_total", &[("status_code", "200")]),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "health_route_requests_total", &[("status_code", "405")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "health_route_requests_total", &[("status_code", "503")]),
        Some(0.0)
    );
    assert_eq!(
        routed_requests(&m),
        2.0,
        "only /health/x and /other are requests: {m}"
    );
    promtool_check(&m);

    // Access log: the two routed requests, no probe.
    assert!(
        wait_until(Duration::from_secs(5), || file_lines(&log).len() >= 2).await,
        "access log: {:?}",
        file_lines(&log)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = file_lines(&log);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains("\"path\":\"/health\"")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn health_route_answers_503_while_draining_after_sigterm() {
    let a = Backend::start("a");
    let gw = Cfg::new()
        .server("health_check_path: /healthz\ndrain_delay: 3s")
        .upstream("u", &[target(&a)], "")
        .route_u("r", "")
        .start();
    assert_eq!(gw.get("/healthz").await.status().as_u16(), 200);

    let sent = Instant::now();
    gw.signal("TERM");
    // Within the drain delay: the probe says 503 while traffic is still served.
    let mut draining = None;
    while sent.elapsed() < Duration::from_secs(2) {
        let r = raw(
            gw.port,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if r.status == 503 {
            draining = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = draining.unwrap_or_else(|| panic!("no 503 after SIGTERM\n{}", gw.diagnostics()));
    assert_error_body(&r.text(), "service_unavailable");

    // Keep-alive requests get their answer, then the gateway closes the connection.
    for (path, status) in [("/healthz", 503), ("/r/x", 200)] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let port = gw.port;
        let (bytes, closed) = tokio::task::spawn_blocking(move || {
            raw_request(port, req.as_bytes(), Duration::from_secs(2))
        })
        .await
        .unwrap();
        let r = parse_response(&bytes).expect("a response");
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("connection"), Some("close"), "{path}");
        assert!(closed, "{path}: connection left open while draining");
    }
    assert_eq!(a.hits(), 1, "requests are still proxied while draining");
    assert!(gw.exited().is_none(), "still up during drain_delay");

    let m = gw.metrics_text().await;
    assert!(metric(&m, "health_route_requests_total", &[("status_code", "503")]) >= Some(1.0));

    // Then Pingora's graceful shutdown: gone within drain 3s + grace 1s + margin.
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.exited().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = gw.exited().expect("gateway did not exit after the drain");
    assert!(st.success(), "{st}");
    assert!(
        sent.elapsed() >= Duration::from_millis(2900),
        "exited before drain_delay ran out: {:?}",
        sent.elapsed()
    );
}

#[test]
fn health_path_config_errors() {
    let yaml = "server:
  listen: [\"127.0.0.1:1\"]
  health_check_path: /health
upstreams:
  - name: u
    targets: [{ addr: \"127.0.0.1:2\" }]
routes:
  - name: catch-all
    paths: [\"/\"]
    upstream: u
  - name: status
    paths: [\"/api\", \"/health/\"]
    upstream: u
";
    let (code, err) = Gateway::validate(yaml);
    assert_eq!(code, 1, "{err}");
    let route_line = line_in(yaml, "/health/");
    assert_error_line(
        &err,
        "server.health_check_path",
        line_in(yaml, "health_check_path"),
        &format!("\"/health\" is also routes[1].paths[1] of route \"status\" (line {route_line})"),
    );
    // Only the exact path conflicts: the catch-all "/" is fine.
    assert_eq!(err.lines().count(), 2, "{err}");

    for (bad, text) in [
        ("health", "must start with"),
        ("/health/", "plain path"),
        ("/", "every request"),
        ("/a/../b", "dot segment"),
    ] {
        let yaml =
            format!("server:\n  listen: [\"127.0.0.1:1\"]\n  health_check_path: \"{bad}\"\n");
        let (code, err) = Gateway::validate(&yaml);
        assert_eq!(code, 1, "{bad}: {err}");
        assert_error_line(&err, "server.health_check_path", 3, text);
    }
}

// ---------------------------------------------------------------------------------------------
// TLS policy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cipher_suites_and_versions_are_enforced_in_the_handshake() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let cfg = Cfg::new();
    let ca = ca_file(cfg.dir.path());
    let gw = cfg
        .server(&tls_block(
            tls_port,
            // Preference order: ChaCha first; an OpenSSL name for the TLS 1.2 suite.
            "cipher_suites: [TLS13_CHACHA20_POLY1305_SHA256, TLS_AES_256_GCM_SHA384, ECDHE-ECDSA-AES128-GCM-SHA256]",
        ))
        .upstream("u", &[target(&a)], "")
        .route_u("t", "")
        .start();

    // TLS 1.3 with a suite outside the list: refused in the handshake.
    let e = handshake(
        tls_port,
        &ca,
        false,
        true,
        &["TLS13_AES_128_GCM_SHA256"],
        "/t",
    )
    .await
    .unwrap_err();
    assert!(e.contains("handshake"), "{e}");
    // TLS 1.2 with an allowed version but a suite outside the list: refused too.
    let e = handshake(
        tls_port,
        &ca,
        true,
        false,
        &["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
        "/t",
    )
    .await
    .unwrap_err();
    assert!(e.contains("handshake"), "{e}");
    assert_eq!(a.hits(), 0);

    // Allowed: TLS 1.3, and the server's order wins over the client's.
    let h = handshake(
        tls_port,
        &ca,
        true,
        true,
        &["TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"],
        "/t/1",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.diagnostics()));
    assert_eq!(h.version, "TLSv1_3");
    assert_eq!(h.suite, "TLS13_CHACHA20_POLY1305_SHA256");
    assert_eq!(h.status_line, "HTTP/1.1 200 OK");
    let h = handshake(
        tls_port,
        &ca,
        false,
        true,
        &["TLS13_AES_256_GCM_SHA384"],
        "/t/2",
    )
    .await
    .unwrap();
    assert_eq!(h.suite, "TLS13_AES_256_GCM_SHA384");
    // Allowed: TLS 1.2 with the listed suite.
    let h = handshake(tls_port, &ca, true, false, &[], "/t/3")
        .await
        .unwrap();
    assert_eq!(h.version, "TLSv1_2");
    assert_eq!(h.suite, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
    assert_eq!(h.status_line, "HTTP/1.1 200 OK");
    assert_eq!(a.hits(), 3);
    assert_eq!(
        a.last_request().unwrap().header("x-forwarded-proto"),
        Some("https")
    );

    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "downstream_tls_handshake_failures_total", &[]),
        Some(2.0),
        "{m}"
    );
    // The plain listener is untouched.
    assert_eq!(gw.get("/t").await.status().as_u16(), 200);
}

#[tokio::test]
async fn max_version_12_and_min_version_13_choose_the_protocol() {
    let a = Backend::start("a");
    let port12 = free_port();
    let cfg = Cfg::new();
    let ca = ca_file(cfg.dir.path());
    let _gw12 = cfg
        .server(&tls_block(port12, "max_version: \"1.2\""))
        .upstream("u", &[target(&a)], "")
        .route_u("t", "")
        .start();
    // A client offering both gets 1.2; a 1.3-only client is refused.
    let h = handshake(port12, &ca, true, true, &[], "/t").await.unwrap();
    assert_eq!(h.version, "TLSv1_2");
    assert_eq!(h.status_line, "HTTP/1.1 200 OK");
    assert!(handshake(port12, &ca, false, true, &[], "/t")
        .await
        .is_err());

    let port13 = free_port();
    let cfg = Cfg::new();
    let ca = ca_file(cfg.dir.path());
    let _gw13 = cfg
        .server(&tls_block(
            port13,
            "min_version: \"1.3\"\ncipher_suites: [TLS13_AES_128_GCM_SHA256]",
        ))
        .upstream("u", &[target(&a)], "")
        .route_u("t", "")
        .start();
    let h = handshake(port13, &ca, true, true, &[], "/t").await.unwrap();
    assert_eq!(h.version, "TLSv1_3");
    assert_eq!(h.suite, "TLS13_AES_128_GCM_SHA256");
    assert!(handshake(port13, &ca, true, false, &[], "/t")
        .await
        .is_err());
    assert_eq!(a.hits(), 2);
}

#[test]
fn tls_policy_config_errors() {
    let dir = tempfile::TempDir::new().unwrap();
    ca_file(dir.path());
    let d = dir.path().display();
    let yaml = format!(
        "server:
  listen: [\"127.0.0.1:8080\"]
  tls:
    listen: [\"127.0.0.1:8443\", \"127.0.0.1:8080\"]
    cert: {d}/tls/server.crt
    key: {d}/tls/server.key
    min_version: \"1.3\"
    cipher_suites:
      - TLS13_AES_128_GCM_SHA256
      - TLS_RSA_WITH_AES_128_CBC_SHA
      - ECDHE-RSA-AES128-GCM-SHA256
      - TLS_AES_128_GCM_SHA256
"
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert_error_line(
        &err,
        "server.tls.listen[1]",
        line_in(&yaml, "listen: [\"127.0.0.1:8443\""),
        "port 8080 is also a plain HTTP listener",
    );
    assert_error_line(
        &err,
        "server.tls.cipher_suites[1]",
        line_in(&yaml, "TLS_RSA_WITH"),
        "unknown cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\" (known: TLS13_AES_256_GCM_SHA384",
    );
    assert_error_line(
        &err,
        "server.tls.cipher_suites[2]",
        line_in(&yaml, "ECDHE-RSA"),
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is a TLS 1.2 suite, but min_version \"1.3\"",
    );
    assert_error_line(
        &err,
        "server.tls.cipher_suites[3]",
        line_in(&yaml, "- TLS_AES_128"),
        "TLS13_AES_128_GCM_SHA256 is listed twice",
    );

    // A version with no suite, max below min, and a key that is not the certificate's.
    std::fs::write(
        dir.path().join("tls/other.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let yaml = format!(
        "server:
  listen: [\"127.0.0.1:8080\"]
  tls:
    listen: [\"127.0.0.1:8443\"]
    cert: {d}/tls/server.crt
    key: {d}/tls/other.key
    cipher_suites: [TLS13_AES_128_GCM_SHA256]
"
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert_error_line(
        &err,
        "server.tls.cipher_suites",
        7,
        "lists no TLS 1.2 suite",
    );
    assert_error_line(
        &err,
        "server.tls.cert",
        5,
        "the certificate and key cannot be used together",
    );
    let yaml = format!(
        "server:
  tls:
    listen: [\"127.0.0.1:8443\"]
    cert: {d}/tls/server.crt
    key: {d}/tls/server.key
    min_version: \"1.3\"
    max_version: \"1.2\"
"
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert_error_line(&err, "server.tls.max_version", 7, "below min_version");
}

// ---------------------------------------------------------------------------------------------
// https-only routes
// ---------------------------------------------------------------------------------------------

fn https_routes(cfg: Cfg, a: &Backend) -> Cfg {
    cfg.upstream("u", &[target(a)], "")
        .route(
            "secure",
            &["/s"],
            "u",
            "protocols: [https]\nhttps_redirect_status_code: 308",
        )
        .route("strict", &["/k"], "u", "protocols: [https]")
        .route("open", &["/o"], "u", "")
}

#[tokio::test]
async fn plain_http_to_https_only_routes_is_redirected_or_refused() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let cfg = Cfg::new();
    let ca = ca_file(cfg.dir.path());
    let cfg = https_routes(cfg.server(&tls_block(tls_port, "")), &a)
        .top("plugins:\n  - name: correlation-id\n");
    let gw = cfg.start();

    // Redirect with the client's host, the TLS listener's port, path and query kept.
    let r = raw(
        gw.port,
        "GET /s/a/b?x=1&y=%20z HTTP/1.1\r\nHost: API.example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://API.example.com:{tls_port}/s/a/b?x=1&y=%20z").as_str())
    );
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(
        r.header("x-request-id").is_some(),
        "plugins decorate the answer"
    );
    // Methods other than GET too (308 keeps the method and body).
    let (s, _) = gw
        .post_with("/s", &[("host", "api.example.com")], "{}")
        .await;
    assert_eq!(s, 308);

    // The 426 variant (Kong's default).
    let r = gw
        .get_response("/k/x", &[("host", "api.example.com")])
        .await;
    assert_eq!(r.status().as_u16(), 426);
    assert_eq!(r.headers()["upgrade"], "TLS/1.2, HTTP/1.1");
    assert!(r.headers().get("location").is_none());
    assert_error_body(&r.text().await.unwrap(), "https_required");

    // A client's own X-Forwarded-Proto counts for nothing (it is not a trusted proxy).
    let (s, _) = gw.get_with("/k/x", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(s, 426);

    // Bad or missing Host: 400, never reflected. (Pingora's own parser already refuses a
    // Host with userinfo with its plain 400 before a request exists.)
    for (host, ours) in [
        ("evil.com/phish", true),
        ("evil.com:80:80", true),
        ("evil.com:x", true),
        ("evil.com\\x", true),
        ("[::1", true),
        ("evil com", true),
        ("user@evil.com", false),
    ] {
        let r = raw(
            gw.port,
            &format!("GET /s/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 400, "Host {host:?}");
        assert!(r.header("location").is_none());
        let body = r.text();
        if ours {
            assert_error_body(&body, "bad_request");
        } else {
            assert!(body.is_empty(), "{body}");
        }
        assert!(!body.contains("evil"), "{body}");
    }
    let r = raw(gw.port, "GET /s/a HTTP/1.0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(a.hits(), 0, "nothing over plain HTTP reached the upstream");

    // A route that takes both protocols is proxied over plain HTTP.
    assert_eq!(gw.get("/o/x").await.status().as_u16(), 200);
    assert_eq!(a.hits(), 1);

    // Over TLS the https-only routes pass.
    let h = handshake(tls_port, &ca, true, true, &[], "/s/a?x=1")
        .await
        .unwrap();
    assert_eq!(h.status_line, "HTTP/1.1 200 OK");
    let h = handshake(tls_port, &ca, true, true, &[], "/k/x")
        .await
        .unwrap();
    assert_eq!(h.status_line, "HTTP/1.1 200 OK");
    assert_eq!(a.hits(), 3);
    assert_eq!(a.last_request().unwrap().path, "/k/x");

    // Redirects are ordinary route answers in the metrics.
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "secure"),
                ("status_code", "308"),
                ("service", "u")
            ]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn trusted_proxy_x_forwarded_proto_https_passes() {
    let a = Backend::start("a");
    // No TLS listener: TLS ends at the proxy in front (here the test client on 127.0.0.1).
    let gw = https_routes(Cfg::new().server("trusted_proxies: [\"127.0.0.1\"]"), &a).start();

    let (s, _) = gw
        .get_with(
            "/s/a?q=1",
            &[("host", "api.example.com"), ("x-forwarded-proto", "https")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(a.hits(), 1);
    assert_eq!(
        a.last_request().unwrap().header("x-forwarded-proto"),
        Some("https")
    );

    // The proxy says http: redirected, with no port (the proxy's HTTPS port is 443).
    for xfp in ["http", "https, http"] {
        let r = gw
            .get_response(
                "/s/a?q=1",
                &[("host", "api.example.com:8080"), ("x-forwarded-proto", xfp)],
            )
            .await;
        assert_eq!(r.status().as_u16(), 308, "{xfp}");
        assert_eq!(r.headers()["location"], "https://api.example.com/s/a?q=1");
    }
    // No header at all: plain HTTP.
    let (s, _) = gw.send(gw.client.get(gw.url("/k"))).await;
    assert_eq!(s, 426);
    assert_eq!(a.hits(), 1);
}

#[test]
fn https_route_config_errors() {
    let yaml = "server:
  listen: [\"127.0.0.1:1\"]
upstreams:
  - name: u
    targets: [{ addr: \"127.0.0.1:2\" }]
routes:
  - name: a
    paths: [\"/a\"]
    upstream: u
    protocols: [https]
  - name: b
    paths: [\"/b\"]
    upstream: u
    protocols: [http, grpc]
    https_redirect_status_code: 303
  - name: c
    paths: [\"/c\"]
    upstream: u
    protocols: [http]
";
    let (code, err) = Gateway::validate(yaml);
    assert_eq!(code, 1, "{err}");
    assert_error_line(
        &err,
        "routes[0].protocols",
        10,
        "no server.tls listener and no server.trusted_proxies",
    );
    assert_error_line(
        &err,
        "routes[1].protocols[1]",
        14,
        "unknown protocol \"grpc\"",
    );
    assert_error_line(
        &err,
        "routes[1].https_redirect_status_code",
        15,
        "303 is not 426, 301, 302, 307 or 308",
    );
    assert_error_line(&err, "routes[2].protocols", 19, "must include https");
}

// ---------------------------------------------------------------------------------------------
// run_on_preflight
// ---------------------------------------------------------------------------------------------

async fn preflight(gw: &Gateway, path: &str) -> reqwest::Response {
    gw.client
        .request(reqwest::Method::OPTIONS, gw.url(path))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn run_on_preflight_false_lets_preflights_through_auth() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route(
            "key-open",
            &["/ko"],
            "u",
            "plugins:\n  - name: key-auth\n    config: { run_on_preflight: false }",
        )
        .route("key-default", &["/kd"], "u", "plugins:\n  - name: key-auth")
        .route(
            "jwt-open",
            &["/jo"],
            "u",
            "plugins:\n  - name: jwt\n    config: { run_on_preflight: false }",
        )
        .route("jwt-default", &["/jd"], "u", "plugins:\n  - name: jwt")
        .route(
            "cors-and-key",
            &["/ck"],
            "u",
            "plugins:\n  - name: key-auth\n  - name: cors\n    config: { origins: [\"https://app.example.com\"] }",
        )
        .top(CONSUMERS)
        .start();

    // No cors plugin, run_on_preflight false: the upstream gets the preflight (it handles
    // CORS itself), unauthenticated.
    for path in ["/ko/items", "/jo/items"] {
        let r = preflight(&gw, path).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let seen = a.last_request().unwrap();
        assert_eq!(seen.method, "OPTIONS");
        assert_eq!(seen.path, path);
        assert_eq!(seen.header("origin"), Some("https://app.example.com"));
        assert_eq!(seen.header("x-consumer-username"), None);
    }
    assert_eq!(a.hits(), 2);

    // Only preflights: a plain OPTIONS or a GET without credentials is still refused.
    let (s, body) = gw
        .send(
            gw.client
                .request(reqwest::Method::OPTIONS, gw.url("/ko/items")),
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_api_key");
    let (s, body) = gw
        .get_with(
            "/jo/items",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ],
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_token");
    // Credentials still work on such a route.
    let (s, _) = gw.get_with("/ko/x", &[("X-API-Key", ALICE_KEY)]).await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("x-consumer-username"),
        Some("alice")
    );
    assert_eq!(a.hits(), 3);

    // The default (true): a preflight is authenticated like any request, and refused.
    let r = preflight(&gw, "/kd/items").await;
    assert_eq!(r.status().as_u16(), 401);
    assert_error_body(&r.text().await.unwrap(), "missing_api_key");
    let r = preflight(&gw, "/jd/items").await;
    assert_eq!(r.status().as_u16(), 401);
    assert_error_body(&r.text().await.unwrap(), "missing_token");

    // With cors on the route the gateway answers the preflight before auth, whatever
    // run_on_preflight says.
    let r = preflight(&gw, "/ck/items").await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        a.hits(),
        3,
        "refused and cors-answered preflights never reach the upstream"
    );
}

#[test]
fn run_on_preflight_must_be_a_bool() {
    let yaml = format!(
        "{ROUTE_R_PLUGINS}      - name: jwt\n        config: {{ run_on_preflight: sometimes }}\n"
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert_error_line(&err, "routes[0].plugins[0].config.run_on_preflight", 10, "");
}
