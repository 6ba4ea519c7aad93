//! `gatehouse explain` (offline, from the file) and the admin API's `POST /explain` (the live
//! config): route, plugin decisions, upstream, path and headers; credentials masked.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use tempfile::TempDir;

const ROUTES: &str = r#"consumers:
  - username: alice
    roles: [reader]
    keyauth_credentials: [{ key: alice-secret-key-1 }]
  - username: bob
    keyauth_credentials: [{ key: bob-secret-key-2 }]
routes:
  - name: orders
    paths: ["/v1/orders"]
    methods: [GET]
    hosts: [api.example.com]
    strip_path: true
    preserve_host: false
    upstream: orders
    plugins:
      - name: key-auth
      - name: acl
        config: { allow_roles: [reader] }
      - name: rate-limiting
        config: { minute: 10, limit_by: consumer }
"#;

fn explain_cli(yaml: &str, args: &[&str]) -> (i32, String, String) {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("g.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = Command::new(BIN)
        .arg("explain")
        .arg("-c")
        .arg(&p)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn offline_yaml() -> String {
    format!("upstreams:\n  - name: orders\n    targets: [{{ addr: \"127.0.0.1:9001\" }}]\n{ROUTES}")
}

fn json_of(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = explain_cli(&offline_yaml(), &a);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn cli_explains_match_consumer_upstream_and_masks_keys() {
    let v = json_of(&[
        "GET https://api.example.com/v1/orders/7?page=2",
        "-H",
        "X-API-Key: alice-secret-key-1",
    ]);
    assert_eq!(v["route"]["name"], "orders");
    assert_eq!(v["plugins"][0]["decision"]["consumer"], "alice");
    assert_eq!(v["plugins"][1]["decision"]["result"], "allowed");
    assert_eq!(v["plugins"][2]["decision"]["key"], "consumer alice");
    // Offline there is no traffic to count: no current counts.
    assert_eq!(v["plugins"][2]["decision"].get("current"), None);
    assert_eq!(v["upstream"]["name"], "orders");
    assert_eq!(v["upstream"]["target"], "127.0.0.1:9001");
    assert_eq!(v["upstream"]["path"], "/7?page=2");
    assert_eq!(v["upstream"]["headers"]["host"], "127.0.0.1:9001");
    assert_eq!(v["upstream"]["headers"]["x-consumer-username"], "alice");
    assert!(
        v["upstream"]["headers"].get("x-api-key").is_none(),
        "hidden upstream"
    );
    assert_eq!(v["result"]["status"], "proxied");
    let text = v.to_string();
    assert!(!text.contains("alice-secret-key-1"), "{text}");
    assert!(text.contains("[masked]"));

    // Text form, same facts, no key.
    let (code, out, _) = explain_cli(
        &offline_yaml(),
        &[
            "GET https://api.example.com/v1/orders/7",
            "-H",
            "X-API-Key: alice-secret-key-1",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("route:    orders"), "{out}");
    assert!(!out.contains("alice-secret-key-1"));
}

#[test]
fn cli_explains_refusals() {
    let v = json_of(&["GET https://api.example.com/v1/orders/7"]);
    assert_eq!(v["result"]["status"], 401, "{v}");
    assert_eq!(v["plugins"][1]["decision"], "not reached");
    let v = json_of(&[
        "GET https://api.example.com/v1/orders/7",
        "-H",
        "X-API-Key: bob-secret-key-2",
    ]);
    assert_eq!(v["result"]["status"], 403, "{v}");
    assert_eq!(v["result"]["by"], "acl");
    let v = json_of(&["DELETE https://api.example.com/v1/orders/7"]);
    assert_eq!(v["result"]["status"], 405);
    assert_eq!(v["result"]["allow"], "GET, HEAD");
    let v = json_of(&["GET https://other.example.com/v1/orders"]);
    assert_eq!(v["result"]["status"], 404);
    let v = json_of(&["GET /v1/../orders"]);
    assert_eq!(v["result"]["status"], 400);

    for (args, msg) in [
        (vec!["GET"], "expected \"METHOD URL\""),
        (vec!["GET ftp://x/y"], "is not http or https"),
        (vec!["GET /x", "-H", "no-colon"], "is not \"Name: value\""),
    ] {
        let (code, _, err) = explain_cli(&offline_yaml(), &args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_explain_uses_the_live_config_and_keeps_admin_checks() {
    let backend = Backend::start("orders");
    let port = free_port();
    let admin = free_port();
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  access_log: off\n  pid_file: gh.pid\n  upgrade_sock: gh.sock\nadmin:\n  listen: 127.0.0.1:{admin}\nupstreams:\n  - name: orders\n    targets: [{{ addr: \"{}\" }}]\n{ROUTES}",
        backend.addr()
    );
    let gw = Gateway::start(&yaml);
    let body = json!({"method": "GET", "url": "https://api.example.com/v1/orders/7",
                      "headers": {"X-API-Key": "alice-secret-key-1"}, "client_ip": "192.0.2.9"});
    let r = gw
        .client
        .post(gw.admin_url("/explain"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("alice-secret-key-1"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["route"]["name"], "orders");
    assert_eq!(v["plugins"][0]["decision"]["consumer"], "alice");
    assert_eq!(v["upstream"]["target"], backend.addr());
    assert_eq!(v["upstream"]["targets"][0]["available"], true);
    assert_eq!(v["upstream"]["headers"]["x-forwarded-for"], "192.0.2.9");
    // Nothing was proxied.
    assert_eq!(backend.hits(), 0);
    // Live: the key's counters as they are now, nothing counted by explain itself.
    let current = |v: &Value| v["plugins"][2]["decision"]["current"].clone();
    assert_eq!(
        current(&v),
        json!([{"window_s": 60, "counted": 0, "limit": 10}])
    );
    for _ in 0..3 {
        let r = gw
            .get_response(
                "/v1/orders/7",
                &[
                    ("host", "api.example.com"),
                    ("x-api-key", "alice-secret-key-1"),
                ],
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(backend.hits(), 3);
    let explain_now = || async {
        let r = gw.client.post(gw.admin_url("/explain")).json(&body).send();
        r.await.unwrap().json::<Value>().await.unwrap()
    };
    assert_eq!(
        current(&explain_now().await),
        json!([{"window_s": 60, "counted": 3, "limit": 10}])
    );
    // Asking again counts nothing.
    assert_eq!(current(&explain_now().await)[0]["counted"], 3);

    // Same admin checks as the other endpoints.
    let explain = || gw.client.post(gw.admin_url("/explain"));
    let cases = [
        (
            "a foreign Host",
            explain().header("Host", "evil.example").json(&body),
            403,
        ),
        (
            "a foreign Origin",
            explain()
                .header("Origin", "https://evil.example")
                .json(&body),
            403,
        ),
        ("GET", gw.client.get(gw.admin_url("/explain")), 405),
        (
            "a body that is no question",
            explain().body("{\"method\": 1}"),
            400,
        ),
    ];
    for (what, req, want) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), want, "explain with {what}");
    }
}

/// Route `api` (key-auth, traffic-split, request-transformer) to `api-v1` unless a rule of
/// traffic-split picks `api-v2`: `X-Canary: 1` always does, other requests go 90/10.
fn split_routes(v1: &str, v2: &str) -> String {
    format!(
        r#"upstreams:
  - name: api-v1
    targets: [{{ addr: "{v1}" }}]
  - name: api-v2
    targets: [{{ addr: "{v2}" }}]
consumers:
  - username: alice
    keyauth_credentials: [{{ key: alice-secret-key-1 }}]
routes:
  - name: api
    paths: ["/api"]
    preserve_host: false
    upstream: api-v1
    plugins:
      - name: key-auth
      - name: traffic-split
        config:
          sticky: {{ cookie: side }}
          rules:
            - match: {{ headers: {{ X-Canary: "1" }} }}
              upstreams: [{{ name: api-v2 }}]
            - upstreams: [{{ name: api-v1, weight: 90 }}, {{ name: api-v2, weight: 10 }}]
      - name: request-transformer
        config:
          remove: {{ headers: [X-Debug], querystring: [debug] }}
          rename: {{ headers: ["X-Old:X-New"] }}
          replace: {{ headers: ["X-Env:prod", "X-Absent:never"] }}
          add: {{ headers: ["X-Who:$(consumer)", "X-Via:gatehouse", "X-Req:$(request_id)", "X-Env:not-added", "Authorization:Basic c2VjcmV0"], querystring: ["src:gw"] }}
"#
    )
}

fn split_json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = explain_cli(&split_routes("127.0.0.1:9101", "127.0.0.1:9102"), &a);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn cli_shows_the_upstream_traffic_split_picks_and_the_transformed_headers() {
    let v = split_json(&[
        "GET http://gw.example/api/items?debug=1&page=2",
        "-H",
        "X-API-Key: alice-secret-key-1",
        "-H",
        "X-Canary: 1",
        "-H",
        "X-Debug: on",
        "-H",
        "X-Old: moved",
        "-H",
        "X-Env: dev",
        "--client-ip",
        "192.0.2.9",
    ]);
    assert_eq!(v["result"]["status"], "proxied", "{v}");
    let split = &v["plugins"][1]["decision"];
    assert_eq!(split["rule"], 0, "{v}");
    assert_eq!(split["upstreams"][0]["share"], "100%");
    // The header rule has one upstream: the section is api-v2's, target and Host included.
    let up = &v["upstream"];
    assert_eq!(up["name"], "api-v2", "{v}");
    assert_eq!(up["target"], "127.0.0.1:9102");
    assert_eq!(up["targets"][0]["addr"], "127.0.0.1:9102");
    let h = &up["headers"];
    assert_eq!(h["host"], "127.0.0.1:9102", "{v}");
    // request-transformer: remove, rename, replace, add in its order.
    assert!(h.get("x-debug").is_none(), "removed: {h}");
    assert!(h.get("x-old").is_none(), "renamed: {h}");
    assert_eq!(h["x-new"], "moved");
    assert_eq!(h["x-env"], "prod", "replaced, then add finds it present");
    assert!(h.get("x-absent").is_none(), "replace never adds: {h}");
    assert_eq!(h["x-who"], "alice", "the consumer key-auth found");
    assert_eq!(h["x-via"], "gatehouse");
    assert_eq!(h["x-req"], "$(request_id)", "known at request time only");
    assert_eq!(h["x-forwarded-for"], "192.0.2.9");
    // A credential stays masked, the client's and one a transformer adds alike.
    assert_eq!(h["authorization"], "[masked]");
    assert!(h.get("x-api-key").is_none());
    assert_eq!(up["path"], "/api/items?page=2&src=gw", "{v}");
    let text = v.to_string();
    assert!(!text.contains("alice-secret-key-1"), "{text}");
    assert!(!text.contains("c2VjcmV0"), "{text}");

    // No canary header: the weighted rule, a note with the split, the route's upstream.
    let v = split_json(&[
        "GET http://gw.example/api/items",
        "-H",
        "X-API-Key: alice-secret-key-1",
    ]);
    let split = &v["plugins"][1]["decision"];
    assert_eq!(split["rule"], 1, "{v}");
    assert_eq!(split["upstreams"][0]["share"], "90%");
    assert_eq!(split["upstreams"][1]["share"], "10%");
    assert_eq!(v["upstream"]["name"], "api-v1");
    assert_eq!(v["upstream"]["target"], "127.0.0.1:9101");
    let notes = v["upstream"]["notes"].to_string();
    assert!(notes.contains("api-v1 90%, api-v2 10%"), "{notes}");
    assert!(notes.contains("cookie side"), "{notes}");
    assert_eq!(v["upstream"]["headers"]["x-who"], "alice");
    assert_eq!(
        v["upstream"]["headers"]["x-env"], "not-added",
        "absent: add sets it"
    );

    // Text form names the chosen upstream.
    let (code, out, _) = explain_cli(
        &split_routes("127.0.0.1:9101", "127.0.0.1:9102"),
        &[
            "GET http://gw.example/api/items",
            "-H",
            "X-API-Key: alice-secret-key-1",
            "-H",
            "X-Canary: 1",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("upstream: api-v2 -> 127.0.0.1:9102"), "{out}");
    assert!(out.contains("header:  x-via: gatehouse"), "{out}");
    assert!(!out.contains("  note:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_explain_matches_what_the_upstream_really_gets() {
    let v1 = Backend::start("v1");
    let v2 = Backend::start("v2");
    let port = free_port();
    let admin = free_port();
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  access_log: off\n  pid_file: gh.pid\n  upgrade_sock: gh.sock\nadmin:\n  listen: 127.0.0.1:{admin}\n{}",
        split_routes(&v1.addr(), &v2.addr())
    );
    let gw = Gateway::start(&yaml);
    let headers = [
        ("X-API-Key", "alice-secret-key-1"),
        ("X-Canary", "1"),
        ("X-Debug", "on"),
        ("X-Old", "moved"),
        ("X-Env", "dev"),
    ];
    let ask = |extra: &[(&str, &str)]| {
        let mut h = serde_json::Map::new();
        for (n, val) in headers.iter().chain(extra) {
            h.insert(n.to_string(), json!(val));
        }
        json!({"method": "GET", "url": "http://gw.example/api/items?debug=1&page=2",
               "headers": h, "client_ip": "127.0.0.1"})
    };
    let explain = |body: Value| {
        let req = gw.client.post(gw.admin_url("/explain")).json(&body).send();
        async move {
            let r = req.await.unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            assert!(!text.contains("alice-secret-key-1"), "{text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let v = explain(ask(&[])).await;
    let up = &v["upstream"];
    assert_eq!(up["name"], "api-v2", "{v}");
    assert_eq!(up["target"], v2.addr());
    assert_eq!(up["targets"][0]["available"], true);
    assert_eq!((v1.hits(), v2.hits()), (0, 0), "explain sends nothing");

    // The same request for real: the upstream explain named gets it, with the headers and
    // path explain showed.
    let mut req = gw.client.get(gw.url("/api/items?debug=1&page=2"));
    for (n, val) in headers {
        req = req.header(n, val);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!((v1.hits(), v2.hits()), (0, 1));
    let got = v2.last_request().unwrap();
    assert_eq!(got.uri, up["path"].as_str().unwrap(), "{v}");
    for name in ["x-new", "x-env", "x-who", "x-via", "host"] {
        assert_eq!(
            got.header(name),
            up["headers"][name].as_str(),
            "{name}: explain {up}"
        );
    }
    for name in ["x-debug", "x-old", "x-absent"] {
        assert_eq!(got.header(name), None);
        assert!(up["headers"].get(name).is_none(), "{name}: {up}");
    }
    assert!(got.header("x-req").is_some_and(|v| !v.is_empty()));
    assert_eq!(up["headers"]["x-req"], "$(request_id)");
    assert_eq!(up["headers"]["authorization"], "[masked]");

    // The weighted rule: a real request's sticky cookie names its side, and explain with
    // that cookie shows that side's upstream.
    let r = gw
        .get_response("/api/items", &[("X-API-Key", "alice-secret-key-1")])
        .await;
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let side = if v1.hits() == 1 { "api-v1" } else { "api-v2" };
    let v = explain(
        json!({"method": "GET", "url": "http://gw.example/api/items",
        "headers": {"X-API-Key": "alice-secret-key-1", "Cookie": cookie}}),
    )
    .await;
    assert_eq!(v["upstream"]["name"], side, "{v}");
    assert!(v["plugins"][1]["decision"]["result"]
        .as_str()
        .unwrap()
        .contains("sticky cookie"));
    assert_eq!(v["request"]["headers"]["cookie"], "[masked]");
    // Without it: the weighted note, the route's upstream.
    let v = explain(
        json!({"method": "GET", "url": "http://gw.example/api/items",
        "headers": {"X-API-Key": "alice-secret-key-1"}}),
    )
    .await;
    assert_eq!(v["upstream"]["name"], "api-v1");
    assert!(v["upstream"]["notes"]
        .to_string()
        .contains("api-v1 90%, api-v2 10%"));
}

#[test]
fn cli_leaves_a_basic_auth_consumer_to_request_time() {
    let yaml = r#"upstreams:
  - name: orders
    targets: [{ addr: "127.0.0.1:9001" }]
consumers:
  - username: ann
    roles: [reader]
    basicauth_credentials: [{ username: ann, password: "$2b$12$XE7hawzjcEDraEvjJVLfZ.O8CVKcB4qCPA4ArmIoyFljc5pI6kRgy" }]
routes:
  - name: orders
    paths: ["/v1/orders"]
    upstream: orders
    plugins:
      - name: basic-auth
      - name: acl
        config: { allow_roles: [reader] }
      - name: request-transformer
        config: { add: { headers: ["X-Who:$(consumer)"] } }
"#;
    let (code, out, err) = explain_cli(
        yaml,
        &[
            "GET http://gw.example/v1/orders",
            "-H",
            "Authorization: Basic YW5uOmFubi1wYXNzd29yZC0x",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("YW5uOmFubi1wYXNzd29yZC0x"), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"]["status"], "proxied", "{v}");
    let acl = v["plugins"][1]["decision"]["result"].as_str().unwrap();
    assert!(acl.starts_with("depends on"), "{v}");
    assert_eq!(v["upstream"]["headers"]["x-who"], "$(consumer)");
}
