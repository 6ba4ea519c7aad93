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
            .client
            .get(gw.url("/v1/orders/7"))
            .header("host", "api.example.com")
            .header("x-api-key", "alice-secret-key-1")
            .send()
            .await
            .unwrap();
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
