//! Route matching, path rewriting, Host handling, request ids and forwarding headers.
use crate::common;

use common::*;
use serde_json::Value;

/// Asserts that each GET `path` is answered 200 by backend `want`.
async fn assert_routed(gw: &Gateway, cases: &[(&str, &str)]) {
    for (path, want) in cases {
        let (s, v) = gw.get_json(path).await;
        assert_eq!(
            (s, v["backend"].as_str()),
            (200, Some(*want)),
            "GET {path}: {v}"
        );
    }
}

/// Backend `a` behind upstream `ua` and route `api` on `/api`; `server` lines go under
/// `server:`.
fn api_route(server: &str) -> (Backend, Gateway) {
    let a = Backend::start("a");
    let gw = Cfg::new()
        .server(server)
        .upstream("ua", &[target(&a)], "")
        .route("api", &["/api"], "ua", "")
        .start();
    (a, gw)
}

/// GET `path` with optional Host; returns (status, body JSON).
async fn get_host(gw: &Gateway, path: &str, host: Option<&str>) -> (u16, Value) {
    let mut req = gw.client.get(gw.url(path));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let (status, body) = gw.send(req).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn longest_prefix_wins() {
    let (a, b, cfg) = two_upstreams();
    let gw = cfg
        .route("api", &["/api"], "ua", "")
        .route("users", &["/api/users"], "ub", "")
        .start();

    assert_routed(
        &gw,
        &[
            ("/api/users/1", "b"),
            ("/api/users", "b"),
            ("/api/orders/9", "a"),
            ("/api", "a"),
        ],
    )
    .await;
    // path is forwarded unchanged without strip_path
    assert_eq!(b.requests()[0].path, "/api/users/1");
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn prefix_matches_whole_segments_only() {
    let (a, b, cfg) = two_upstreams();
    let gw = cfg
        .route("api", &["/api"], "ua", "")
        .route("users", &["/api/users"], "ub", "")
        .route("only", &["/only/here"], "ub", "")
        .start();

    // /api/usersx is not under /api/users, but is under /api
    assert_routed(
        &gw,
        &[
            ("/api/usersx", "a"),
            ("/api/users/x", "b"),
            ("/only/here/and/more", "b"),
        ],
    )
    .await;
    // /apix is not under /api, /only/hereafter not under /only/here
    for path in ["/apix", "/only/hereafter", "/only"] {
        let (s, v) = gw.get_json(path).await;
        assert_eq!(s, 404, "GET {path}: {v}");
    }
    assert_eq!(a.hits(), 1);
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn host_exact_and_wildcard() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let gw = Cfg::new()
        .upstream("ua", &[target(&a)], "")
        .upstream("ub", &[target(&b)], "")
        .upstream("uc", &[target(&c)], "")
        .route("any", &["/h"], "ua", "")
        .route("exact", &["/h"], "ub", "hosts: [\"api.example.com\"]")
        .route("wild", &["/h"], "uc", "hosts: [\"*.example.org\"]")
        .start();

    let cases = [
        (Some("api.example.com"), "b"),
        (Some("other.example.com"), "a"),
        (Some("sub.example.org"), "c"),
        (Some("www.example.org"), "c"),
        (Some("example.org"), "a"),
        (Some("notexample.org"), "a"),
        (None, "a"),
    ];
    for (host, want) in cases {
        let (s, v) = get_host(&gw, "/h/x", host).await;
        assert_eq!(s, 200, "host {host:?}: {v}");
        assert_eq!(v["backend"], want, "host {host:?} routed wrong: {v}");
    }
}

#[tokio::test]
async fn header_route() {
    let (a, b, cfg) = two_upstreams();
    let gw = cfg
        .route("plain", &["/v"], "ua", "")
        .route("v2", &["/v"], "ub", "headers: { X-API-Version: \"v2\" }")
        .start();

    let (_, body) = gw.get_with("/v/1", &[("X-API-Version", "v2")]).await;
    assert_eq!(backend_of(&body), "b", "{body}");
    let (_, body) = gw.get_with("/v/1", &[("X-API-Version", "v1")]).await;
    assert_eq!(backend_of(&body), "a", "{body}");
    let (_, body) = gw.send(gw.client.get(gw.url("/v/1"))).await;
    assert_eq!(backend_of(&body), "a", "{body}");
    assert_eq!((a.hits(), b.hits()), (2, 1));
}

#[tokio::test]
async fn method_route() {
    let (a, b, cfg) = two_upstreams();
    let gw = cfg
        .route("reads", &["/m"], "ua", "methods: [GET, HEAD]")
        .route("writes", &["/m"], "ub", "methods: [POST]")
        .start();

    let (s, body) = gw.send(gw.client.get(gw.url("/m/1"))).await;
    assert_eq!((s, backend_of(&body).as_str()), (200, "a"), "{body}");
    let (s, body) = gw.send(gw.client.post(gw.url("/m/1")).body("x")).await;
    assert_eq!((s, backend_of(&body).as_str()), (200, "b"), "{body}");
    // no route at /m accepts DELETE: 405 naming what they do accept
    let r = gw.client.delete(gw.url("/m/1")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, POST");
    assert_error_body(&r.text().await.unwrap(), "method_not_allowed");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn specificity_order() {
    let (_a, _b, cfg) = two_upstreams();
    let gw = cfg
        // hosts beat headers (hosts route listed last on purpose)
        .route("s1-headers", &["/s1"], "ub", "headers: { X-K: \"1\" }")
        .route("s1-hosts", &["/s1"], "ua", "hosts: [\"h.example.com\"]")
        // headers beat methods
        .route("s2-methods", &["/s2"], "ua", "methods: [GET]")
        .route("s2-headers", &["/s2"], "ub", "headers: { X-K: \"1\" }")
        // methods beat nothing
        .route("s3-plain", &["/s3"], "ua", "")
        .route("s3-methods", &["/s3"], "ub", "methods: [GET]")
        // file order last
        .route("s4-first", &["/s4"], "ua", "")
        .route("s4-second", &["/s4"], "ub", "")
        // longer prefix beats hosts
        .route("s5-hosts", &["/s5"], "ua", "hosts: [\"h.example.com\"]")
        .route("s5-long", &["/s5/deep"], "ub", "")
        .start();

    let send = |path: &str| {
        gw.client
            .get(gw.url(path))
            .header("host", "h.example.com")
            .header("X-K", "1")
    };
    for (path, want) in [
        ("/s1/x", "a"),
        ("/s2/x", "b"),
        ("/s3/x", "b"),
        ("/s4/x", "a"),
        ("/s5/deep/x", "b"),
    ] {
        let (s, body) = gw.send(send(path)).await;
        assert_eq!(s, 200, "{path}: {body}");
        assert_eq!(
            backend_of(&body),
            want,
            "{path} picked the wrong route: {body}"
        );
    }
}

#[tokio::test]
async fn strip_path_and_query() {
    let (a, b, cfg) = two_upstreams();
    let gw = cfg
        .route("strip", &["/api/users"], "ua", "strip_path: true")
        .route("keep", &["/keep"], "ub", "strip_path: false")
        .start();

    let cases = [
        ("/api/users/7", "/7", None),
        ("/api/users/7/orders?x=1&y=2", "/7/orders", Some("x=1&y=2")),
        ("/api/users", "/", None),
        ("/api/users?q=2", "/", Some("q=2")),
    ];
    for (path, want_path, want_query) in cases {
        let (s, v) = gw.get_json(path).await;
        assert_eq!(s, 200, "{path}: {v}");
        let r = a.last_request().unwrap();
        assert_eq!(r.path, want_path, "upstream path for {path}");
        assert_eq!(r.query.as_deref(), want_query, "upstream query for {path}");
    }
    let (s, _) = gw.get_json("/keep/x?z=9").await;
    assert_eq!(s, 200);
    let r = b.last_request().unwrap();
    assert_eq!(r.uri, "/keep/x?z=9");
}

#[tokio::test]
async fn preserve_host_true_and_false() {
    let (a, b, cfg) = two_upstreams();
    let gw = cfg
        .route("default", &["/p"], "ua", "")
        .route("off", &["/q"], "ub", "preserve_host: false")
        .start();

    let (s, _) = get_host(&gw, "/p", Some("api.example.com")).await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("host"),
        Some("api.example.com"),
        "preserve_host defaults to true"
    );
    let (s, _) = get_host(&gw, "/q", Some("api.example.com")).await;
    assert_eq!(s, 200);
    assert_eq!(
        b.last_request().unwrap().header("host"),
        Some(b.addr().as_str()),
        "preserve_host: false sends the target addr as Host"
    );
}

#[tokio::test]
async fn not_found_is_json_with_request_id() {
    let (a, gw) = api_route("");

    let r = gw.get("/nothing/here").await;
    assert_eq!(r.status().as_u16(), 404);
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.contains("application/json"), "content-type {ct:?}");
    let body = r.text().await.unwrap();
    assert_error_body(&body, "not_found");
    // two requests get two different generated ids
    let (_, v1) = gw.get_json("/nothing").await;
    let (_, v2) = gw.get_json("/nothing").await;
    assert_ne!(v1["request_id"], v2["request_id"]);
    assert_eq!(a.hits(), 0);
}

/// request_id of the 404 answered to a request carrying `X-Request-ID: id`.
async fn id_for(gw: &Gateway, id: String) -> String {
    let req = gw.client.get(gw.url("/none")).header("X-Request-ID", id);
    let (s, body) = gw.send(req).await;
    assert_eq!(s, 404, "{body}");
    assert_error_body(&body, "not_found")["request_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn request_id_kept_when_valid_replaced_when_invalid() {
    let (_a, gw) = api_route("");

    let valid_charset = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
    };
    let valid = "abc-123.DEF_4:5".to_string();
    assert_eq!(id_for(&gw, valid.clone()).await, valid);
    let max = "x".repeat(128);
    assert_eq!(id_for(&gw, max.clone()).await, max, "128 chars is valid");

    for bad in ["bad id!", "semi;colon", "slash/id", "<script>"] {
        let got = id_for(&gw, bad.to_string()).await;
        assert_ne!(got, bad, "invalid X-Request-ID must be replaced");
        assert!(valid_charset(&got), "generated id {got:?}");
    }
    let long = "y".repeat(129);
    let got = id_for(&gw, long.clone()).await;
    assert_ne!(got, long, "129 chars is too long");
    assert!(valid_charset(&got), "generated id {got:?}");
}

#[tokio::test]
async fn forwarding_headers_untrusted_peer() {
    let (a, gw) = api_route("");

    let (s, _) = gw.get_json("/api/x").await;
    assert_eq!(s, 200);
    let r = a.last_request().unwrap();
    assert_eq!(
        r.header_joined("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));

    // Spoofed X-Forwarded-For from an untrusted peer: the client ip stays the TCP peer.
    let (s, _) = gw
        .get_with(
            "/api/x",
            &[("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "7.7.7.7")],
        )
        .await;
    assert_eq!(s, 200);
    let r = a.last_request().unwrap();
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"), "{:?}", r.headers);
    let xff = r.header_joined("x-forwarded-for").unwrap_or_default();
    assert_eq!(
        xff.rsplit(',').next().map(str::trim),
        Some("127.0.0.1"),
        "client ip appended last: {xff}"
    );
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn forwarding_headers_trusted_proxy() {
    let (a, gw) = api_route("trusted_proxies: [\"127.0.0.1/32\"]");

    let (s, _) = gw
        .get_with("/api/x", &[("X-Forwarded-For", "203.0.113.9")])
        .await;
    assert_eq!(s, 200);
    let r = a.last_request().unwrap();
    assert_eq!(
        r.header("x-real-ip"),
        Some("203.0.113.9"),
        "{:?}",
        r.headers
    );
    let xff = r.header_joined("x-forwarded-for").unwrap_or_default();
    assert!(xff.starts_with("203.0.113.9"), "xff {xff}");
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));

    // Without X-Forwarded-For the trusted peer itself is the client.
    let (s, _) = gw.get_json("/api/y").await;
    assert_eq!(s, 200);
    let r = a.last_request().unwrap();
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(
        r.header_joined("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn trusted_proxies_other_cidr_does_not_trust_localhost() {
    let (a, gw) = api_route("trusted_proxies: [\"10.0.0.0/8\"]");

    let (s, _) = gw
        .get_with("/api/x", &[("X-Forwarded-For", "203.0.113.9")])
        .await;
    assert_eq!(s, 200);
    let r = a.last_request().unwrap();
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"), "{:?}", r.headers);
}

#[tokio::test]
async fn several_paths_per_route_from_raw_yaml() {
    let a = Backend::start("a");
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path().display();
    let yaml = format!(
        r#"server:
  listen: ["127.0.0.1:{port}"]
  threads: 1
  pid_file: {d}/g.pid
  upgrade_sock: {d}/g.sock
  access_log: off
admin:
  listen: "127.0.0.1:{admin}"
upstreams:
  - name: ua
    targets:
      - {{ addr: "{addr}" }}
routes:
  - name: multi
    paths: ["/one", "/two/deep"]
    strip_path: true
    upstream: ua
"#,
        addr = a.addr()
    );
    let gw = Gateway::start(&yaml);
    assert_eq!((gw.port, gw.admin_port), (port, admin));

    let (s, _) = gw.get_json("/one/x").await;
    assert_eq!(s, 200);
    assert_eq!(a.last_request().unwrap().path, "/x");
    let (s, _) = gw.get_json("/two/deep/y").await;
    assert_eq!(s, 200);
    assert_eq!(a.last_request().unwrap().path, "/y");
    let (s, _) = gw.get_json("/two/x").await;
    assert_eq!(s, 404);
    assert_eq!(a.hits(), 2);
}

/// A percent-encoded path must route like its decoded form, and the upstream must see the
/// path the router matched: `/%61dmin` cannot slip past the `/admin` route onto `/`.
#[tokio::test]
async fn percent_encoding_cannot_bypass_a_route() {
    let admin = Backend::start("admin");
    let public = Backend::start("public");
    let gw = Cfg::new()
        .upstream("ua", &[target(&admin)], "")
        .upstream("up", &[target(&public)], "")
        .route("admin", &["/admin"], "ua", "")
        .route("public", &["/"], "up", "")
        .start();

    let (s, _) = gw.get_json("/%61dmin/users?x=%61").await;
    assert_eq!(s, 200);
    assert_eq!(public.hits(), 0, "encoded path reached the catch-all route");
    let r = admin.last_request().unwrap();
    assert_eq!(r.path, "/admin/users");
    assert_eq!(r.query.as_deref(), Some("x=%61"), "query left as sent");

    // Reserved characters stay encoded (hex upper-cased); `%2F` needs a route that allows
    // it (see the security_paths tests); malformed encoding is refused.
    let (s, _) = gw.get_json("/admin/a%2bb").await;
    assert_eq!(s, 200);
    assert_eq!(admin.last_request().unwrap().path, "/admin/a%2Bb");
    let (s, _) = gw.get_json("/admin/a%2fb").await;
    assert_eq!(s, 400);
    let (raw, _) = raw_request(
        gw.port,
        b"GET /admin/%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        std::time::Duration::from_secs(2),
    );
    let resp = parse_response(&raw).expect("a response");
    assert_eq!(resp.status, 400);
    assert_error_body(&resp.text(), "bad_request");
    assert_eq!(admin.hits(), 2);
}
