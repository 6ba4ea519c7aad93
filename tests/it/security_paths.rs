//! Paths, methods, hosts and headers that could make the gateway and the upstream disagree
//! about which resource a request is for, so that a request would meet a more lenient
//! route's plugins than the resource it reaches. Every refusal is a JSON 400/405 made before
//! any upstream is contacted; what is not refused reaches the upstream in the one form the
//! router matched.
use crate::common;

use common::*;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "admin-key-5d1c0a9e77";
const SECRET: &str = "TOP-SECRET-7c1e";
const CONSUMERS: &str =
    "consumers:\n  - username: ops\n    keyauth_credentials: [{ key: \"admin-key-5d1c0a9e77\" }]\n";
const KEY_AUTH: &str = "plugins:\n  - name: key-auth\n";

/// `python3 -m http.server` serving a temp dir: a real static file server that decodes
/// `%2F` and normalises `..` before it opens a file. Its request log is kept in a file.
struct StaticServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl StaticServer {
    fn start() -> StaticServer {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir_all(root.join("public/admin")).unwrap();
        std::fs::write(root.join("public/hello.txt"), "hello from public\n").unwrap();
        std::fs::write(root.join("public/admin/secret.txt"), SECRET).unwrap();
        let log = dir.path().join("http.log");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-u", "-m", "http.server", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (resp, _) = raw_request(
                port,
                b"GET /public/hello.txt HTTP/1.0\r\n\r\n",
                Duration::from_secs(1),
            );
            if resp.starts_with(b"HTTP/1.0 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "python3 http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        StaticServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request over a fresh connection: the parsed response.
fn raw(port: u16, head: &str) -> RawResponse {
    let (bytes, _) = raw_request(port, head.as_bytes(), Duration::from_secs(5));
    parse_response(&bytes).unwrap_or_else(|| {
        panic!(
            "no HTTP response to {head:?}: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn get(port: u16, path: &str, extra: &str) -> RawResponse {
    raw(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: files.example.com\r\n{extra}Connection: close\r\n\r\n"
        ),
    )
}

fn static_gateway(up: &StaticServer, public_extra: &str) -> Gateway {
    Cfg::new()
        .upstream(
            "files",
            &[format!("{{ addr: \"127.0.0.1:{}\" }}", up.port)],
            "",
        )
        .route("public", &["/public"], "files", public_extra)
        .route("admin", &["/public/admin"], "files", KEY_AUTH)
        .top(CONSUMERS)
        .start()
}

#[tokio::test]
async fn encoded_separators_never_reach_the_admin_file_through_the_public_route() {
    let files = StaticServer::start();
    let gw = static_gateway(&files, "");

    // The baseline: the admin file needs the key, the public one does not.
    let r = get(gw.port, "/public/hello.txt", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(gw.port, "/public/admin/secret.txt", "");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = get(
        gw.port,
        "/public/admin/secret.txt",
        &format!("X-API-Key: {KEY}\r\n"),
    );
    assert_eq!((r.status, r.text().as_str()), (200, SECRET));
    let seen_with_key = files.log().matches("secret.txt").count();
    assert_eq!(seen_with_key, 1, "{}", files.log());

    // Each of these routes to `/public` by its literal segments, while a static server
    // (this one, or one on another OS or framework) reads it as /public/admin/secret.txt.
    for path in [
        "/public/x/..%2Fadmin/secret.txt",
        "/public/x/..%2fadmin/secret.txt",
        "/public/%2e%2e%2Fpublic/admin/secret.txt",
        "/public/x%2F..%2Fadmin/secret.txt",
        "/public/admin%2Fsecret.txt",
        "/public/x/..%5Cadmin/secret.txt",
        "/public/x%5C..%5Cadmin%5Csecret.txt",
        "/public/x/..\\admin/secret.txt",
        "/public/admin;x/secret.txt",
        "/public/admin;/secret.txt",
        "/public/admin./secret.txt",
        "/public/admin%2e/secret.txt",
        "/public/admin%00/secret.txt",
        "/public/admin/secret.txt%00.html",
        "/public/admin%20/secret.txt",
        "/public/admin%09/secret.txt",
    ] {
        let r = get(gw.port, path, "");
        assert!(!r.text().contains(SECRET), "{path}: the secret leaked");
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_error_body(&r.text(), "bad_request");
    }
    assert_eq!(
        files.log().matches("secret.txt").count(),
        seen_with_key,
        "the static server saw a refused request:\n{}",
        files.log()
    );
}

#[tokio::test]
async fn encoded_slashes_pass_only_on_routes_that_allow_them_and_never_hide_dot_segments() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route(
            "projects",
            &["/api/projects"],
            "u",
            "allow_encoded_slashes: true",
        )
        .route("other", &["/api"], "u", "")
        .start();

    // GitLab-style ids: `%2F` is data within one segment, forwarded as sent.
    let r = get(gw.port, "/api/projects/group%2Fsub/issues", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.last_request().unwrap().path,
        "/api/projects/group%2Fsub/issues"
    );
    // Lower-case hex is upper-cased like every other escape.
    let r = get(gw.port, "/api/projects/group%2fsub", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.last_request().unwrap().path, "/api/projects/group%2Fsub");
    assert_eq!(a.hits(), 2);

    // Still refused: dot segments and empty segments behind `%2F`, and `%2F` elsewhere.
    for path in [
        "/api/projects/x%2F..%2F..%2Fusers",
        "/api/projects/..%2Fusers",
        "/api/projects/%2E%2E%2Fusers",
        "/api/projects/x%2F.%2Fy",
        "/api/projects/%2Fetc",
        "/api/projects/a%2F%2Fb",
        "/api/projects/a%5Cb",
        "/api/users/a%2Fb",
    ] {
        let r = get(gw.port, path, "");
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_error_body(&r.text(), "bad_request");
    }
    assert_eq!(a.hits(), 2, "no refused path reached the upstream");
}

#[tokio::test]
async fn a_method_the_longest_prefix_does_not_take_is_405_not_a_shorter_route() {
    let open = Backend::start("open");
    let admin = Backend::start("admin");
    let a = Backend::start("reads");
    let b = Backend::start("writes");
    let gw = Cfg::new()
        .upstream("uo", &[target(&open)], "")
        .upstream("ua", &[target(&admin)], "")
        .upstream("ur", &[target(&a)], "")
        .upstream("uw", &[target(&b)], "")
        .route("public", &["/public"], "uo", "")
        .route(
            "admin",
            &["/public/admin"],
            "ua",
            &format!("methods: [GET, POST]\n{KEY_AUTH}"),
        )
        .route("reads", &["/m"], "ur", "methods: [GET]")
        .route("writes", &["/m"], "uw", "methods: [POST, PUT]")
        .top(CONSUMERS)
        .start();

    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = raw(
            gw.port,
            &format!("{method} /public/admin/secret.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 405, "{method}: {}", r.text());
        assert_error_body(&r.text(), "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD, POST"), "{method}");
    }
    assert_eq!(
        (open.hits(), admin.hits()),
        (0, 0),
        "nothing reached an upstream"
    );

    // HEAD is GET without a body: it takes the GET route, with that route's plugins.
    let r = raw(
        gw.port,
        "HEAD /public/admin/secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!((open.hits(), admin.hits()), (0, 0));
    let r = raw(
        gw.port,
        &format!("HEAD /public/admin/secret.txt HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(admin.last_request().unwrap().method, "HEAD");
    assert_eq!((open.hits(), admin.hits()), (0, 1));

    // The shorter prefix still serves what is under it and not under the longer one.
    let r = raw(
        gw.port,
        "DELETE /public/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(open.hits(), 1);

    // A read/write split on one path keeps working; HEAD follows GET.
    let r = raw(
        gw.port,
        "GET /m/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, backend_of(&r.text()).as_str()), (200, "reads"));
    let r = raw(
        gw.port,
        "HEAD /m/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(a.last_request().unwrap().method, "HEAD");
    let r = raw(
        gw.port,
        "POST /m/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert_eq!((r.status, backend_of(&r.text()).as_str()), (200, "writes"));
    let r = raw(
        gw.port,
        "DELETE /m/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, PUT"));
    assert_eq!((a.hits(), b.hits()), (2, 1));
}

#[tokio::test]
async fn a_second_content_type_is_refused_before_the_json_rules_could_be_skipped() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("login", "plugins:\n  - name: request-transformer\n    config:\n      remove: { json: [password] }\n")
        .start();
    let body = r#"{"user":"ada","password":"s3cret"}"#;
    let post = |types: &[&str]| {
        let ct: String = types
            .iter()
            .map(|t| format!("Content-Type: {t}\r\n"))
            .collect();
        raw(
            gw.port,
            &format!("POST /login HTTP/1.1\r\nHost: x\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        )
    };

    // One Content-Type: JSON gets its rule applied.
    let r = post(&["application/json"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = a.last_request().unwrap();
    assert!(!String::from_utf8_lossy(&got.body).contains("s3cret"));

    // The gateway would read the first, many frameworks read the last.
    for types in [
        &["text/plain", "application/json"][..],
        &["application/json", "application/json"][..],
        &["application/json", "text/plain"][..],
    ] {
        let r = post(types);
        assert_eq!(r.status, 400, "{types:?}: {}", r.text());
        assert_error_body(&r.text(), "bad_request");
    }
    assert_eq!(
        a.hits(),
        1,
        "no request with two Content-Types reached the upstream"
    );
    assert!(a
        .requests()
        .iter()
        .all(|r| !String::from_utf8_lossy(&r.body).contains("s3cret")));
}

#[tokio::test]
async fn host_spellings_of_a_protected_name_meet_its_route() {
    let prot = Backend::start("protected");
    let other = Backend::start("catchall");
    let gw = Cfg::new()
        .upstream("up", &[target(&prot)], "")
        .upstream("uc", &[target(&other)], "")
        .route(
            "protected",
            &["/"],
            "up",
            &format!("hosts: [protected.example.com]\n{KEY_AUTH}"),
        )
        .route("catchall", &["/"], "uc", "")
        .top(CONSUMERS)
        .start();
    let at = |host: &str, extra: &str| {
        raw(
            gw.port,
            &format!("GET /x HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
        )
    };

    for host in [
        "protected.example.com",
        "PROTECTED.Example.COM",
        "protected.example.com.",
        "protected.example.com:80",
        "protected.example.com.:80",
        "Protected.Example.Com.:8080",
    ] {
        let r = at(host, "");
        assert_eq!(r.status, 401, "{host}: {}", r.text());
    }
    let r = at("protected.example.com.", &format!("X-API-Key: {KEY}\r\n"));
    assert_eq!(
        (r.status, backend_of(&r.text()).as_str()),
        (200, "protected")
    );

    for host in [
        "protected.example.com..",
        "protected..example.com",
        ".protected.example.com",
        "protected.example.com..:80",
    ] {
        let r = at(host, "");
        assert_eq!(r.status, 400, "{host}: {}", r.text());
        assert_error_body(&r.text(), "bad_request");
    }
    // Absolute form carries the host too.
    let r = raw(
        gw.port,
        "GET http://protected.example.com./x HTTP/1.1\r\nHost: protected.example.com.\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.text());

    let r = at("other.example.com", "");
    assert_eq!(
        (r.status, backend_of(&r.text()).as_str()),
        (200, "catchall")
    );
    assert_eq!((prot.hits(), other.hits()), (1, 1));
}

fn admin_raw(gw: &Gateway, head: &str) -> RawResponse {
    raw(gw.admin_port, head)
}

#[tokio::test]
async fn admin_api_without_token_refuses_browsers_and_foreign_host_names() {
    let a = Backend::start("a");
    let gw = one_route(&a, "/", "");
    let p = gw.admin_port;

    // A cross-site form/fetch POST (text/plain needs no preflight) carries Origin.
    for path in ["/reload", "/cache/purge"] {
        let body = r#"{"route":"r"}"#;
        let r = admin_raw(
            &gw,
            &format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        );
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "forbidden", "{path}");
    }
    // DNS rebinding: the browser sends the attacker's name as Host.
    for path in ["/status", "/metrics", "/reload"] {
        let r = admin_raw(
            &gw,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{p}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(!r.text().contains("\"routes\""), "{path}");
    }
    let (s, v) = {
        let r = admin_raw(
            &gw,
            &format!("GET /status HTTP/1.1\r\nHost: localhost.:{p}\r\nOrigin: http://localhost:{p}\r\nConnection: close\r\n\r\n"),
        );
        (r.status, r.json())
    };
    assert_eq!(s, 403, "any Origin is refused without a token: {v}");

    // Local tools and scrapers keep working: loopback names, IP literals, no Origin.
    for host in [
        format!("127.0.0.1:{p}"),
        format!("localhost:{p}"),
        "localhost".to_string(),
        format!("[::1]:{p}"),
        "LOCALHOST".to_string(),
    ] {
        let r = admin_raw(
            &gw,
            &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    let r = admin_raw(
        &gw,
        &format!("POST /reload HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Liveness answers any name: it tells nothing.
    let r = admin_raw(
        &gw,
        "GET /health HTTP/1.1\r\nHost: gatehouse-admin.svc\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn admin_api_with_token_accepts_origin_and_configured_names() {
    let (_a, cfg) = upstream_u();
    let cfg = cfg.route_root("");
    let admin = format!("admin:\n  listen: \"127.0.0.1:{}\"\n", cfg.admin_port);
    let yaml = cfg.yaml().replace(
        &admin,
        &format!("{admin}  token: \"t0k3n-abcdef\"\n  allowed_hosts: [gatehouse-admin.svc]\n"),
    );
    assert!(yaml.contains("allowed_hosts"));
    let gw = Gateway::start_in(&yaml, cfg.dir);
    let p = gw.admin_port;
    let r = admin_raw(
        &gw,
        &format!("POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nOrigin: https://ops.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 401, "the token still guards: {}", r.text());
    let r = admin_raw(
        &gw,
        &format!("POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nOrigin: https://ops.example\r\nAuthorization: Bearer t0k3n-abcdef\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_raw(
        &gw,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: gatehouse-admin.svc:{p}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200, "a configured name: {}", r.text());
    let r = admin_raw(
        &gw,
        &format!(
            "GET /status HTTP/1.1\r\nHost: rebind.evil.example:{p}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[tokio::test]
async fn raw_utf8_next_to_an_escape_reaches_the_upstream_once_encoded() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route("cafe", &["/café"], "u", "plugins:\n  - name: key-auth\n")
        .route_u("public", "")
        .top(CONSUMERS)
        .start();

    for (sent, upstream) in [
        ("/public/café%20x", "/public/caf%C3%A9%20x"),
        ("/public/café", "/public/caf%C3%A9"),
        ("/public/caf%c3%a9%20x", "/public/caf%C3%A9%20x"),
        ("/public/日本%7ex?q=1", "/public/%E6%97%A5%E6%9C%AC~x"),
    ] {
        let head = format!("GET {sent} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (bytes, _) = raw_request(gw.port, head.as_bytes(), Duration::from_secs(5));
        let r = parse_response(&bytes).expect("response");
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        assert_eq!(a.last_request().unwrap().path, upstream, "{sent}");
    }
    // The route written with raw UTF-8 matches both spellings of the name.
    for path in ["/café/menu", "/caf%C3%A9/menu", "/caf%c3%a9/menu"] {
        let r = get(gw.port, path, "");
        assert_eq!(r.status, 401, "{path}: {}", r.text());
    }
    assert_eq!(a.hits(), 4);
}
