//! `error-responses`: configured bodies for the gateway's own 502 (dead upstream), 503 (no
//! healthy target) and 504 (timeout), status and decorating headers unchanged; upstream
//! answers replaced only with `upstream: true`.
use crate::common;

use common::*;
use std::time::Duration;

const PLUGINS: &str = r#"plugins:
  - name: security-headers
  - name: error-responses
    config:
      responses:
        "502": { body: "<h1>Bad gateway</h1><p>ref $(request_id)</p>", content_type: "text/html; charset=utf-8" }
        503: { body: '{"error":"maintenance","status":$(status),"request_id":"$(request_id)"}' }
        "504": { body_file: errors/504.json }
"#;

struct Setup {
    gw: Gateway,
    slow: Backend,
    sick: Backend,
    says_503: Backend,
}

fn setup() -> Setup {
    let slow = Backend::start("slow");
    slow.set_delay(Duration::from_secs(3));
    let sick = Backend::start("sick");
    sick.set_health(500);
    let says_503 = Backend::start("says-503");
    says_503.set_status(503);
    says_503.set_body(Some(r#"{"upstream":"busy"}"#));
    let cfg = Cfg::new()
        .upstream("dead", &[target_addr(&dead_addr())], "retries: 0")
        .upstream("sick", &[target(&sick)], HC_HTTP)
        .upstream(
            "slow",
            &[target(&slow)],
            "retries: 0\ntimeouts: { connect: 1s, read: 300ms, write: 1s }",
        )
        .upstream("says-503", &[target(&says_503)], "retries: 0")
        .route("dead", &["/dead"], "dead", "")
        .route("sick", &["/sick"], "sick", "")
        .route("slow", &["/slow"], "slow", "")
        .route("passed", &["/passed"], "says-503", "")
        .route(
            "replaced",
            &["/replaced"],
            "says-503",
            r#"plugins:
  - name: response-transformer
    config: { envelope: { enabled: true } }
  - name: error-responses
    config:
      upstream: true
      responses:
        "502, 503": { body: '{"error":"replaced","code":"$(error)","request_id":"$(request_id)"}' }
"#,
        )
        .top(PLUGINS);
    std::fs::create_dir_all(cfg.dir.path().join("errors")).unwrap();
    std::fs::write(
        cfg.dir.path().join("errors/504.json"),
        r#"{"error":"slow","request_id":"$(request_id)"}"#,
    )
    .unwrap();
    Setup {
        gw: cfg.start(),
        slow,
        sick,
        says_503,
    }
}

/// GET `path` with `X-Request-ID: id`: (status, content-type, headers, body).
async fn get(
    gw: &Gateway,
    path: &str,
    id: &str,
) -> (u16, String, reqwest::header::HeaderMap, String) {
    let r = gw
        .client
        .get(gw.url(path))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, headers, r.text().await.unwrap_or_default())
}

fn assert_gateway_headers(h: &reqwest::header::HeaderMap, body: &str) {
    assert_eq!(
        h["x-content-type-options"], "nosniff",
        "security-headers kept"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        body.len().to_string(),
        "length of the configured body"
    );
}

#[tokio::test]
async fn gateway_errors_get_the_configured_bodies() {
    let s = setup();
    let gw = &s.gw;

    // 502: nothing listens on the target.
    let (status, ct, h, body) = get(gw, "/dead", "req-502").await;
    assert_eq!(status, 502);
    assert_eq!(ct, "text/html; charset=utf-8");
    assert_eq!(body, "<h1>Bad gateway</h1><p>ref req-502</p>");
    assert_gateway_headers(&h, &body);

    // 504: the upstream's read timeout ran out; the body came from a file.
    let (status, ct, h, body) = get(gw, "/slow", "req-504").await;
    assert_eq!(status, 504);
    assert_eq!(ct, "application/json");
    assert_eq!(body, r#"{"error":"slow","request_id":"req-504"}"#);
    assert_gateway_headers(&h, &body);
    assert_eq!(s.slow.hits(), 1);

    // 503: the only target fails its health checks.
    assert!(
        gw.wait_target_health("sick", &s.sick.addr(), false, Duration::from_secs(5))
            .await,
        "the target should be marked unhealthy"
    );
    let (status, ct, h, body) = get(gw, "/sick", "req-503").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(ct, "application/json");
    assert_eq!(
        body,
        r#"{"error":"maintenance","status":503,"request_id":"req-503"}"#
    );
    assert_gateway_headers(&h, &body);
    assert_eq!(s.sick.hits(), 0, "no request reached the unhealthy target");

    // A status without a configured body keeps the contract's JSON error.
    let (status, ct, _, body) = get(gw, "/nowhere", "req-404").await;
    assert_eq!(status, 404);
    assert_eq!(ct, "application/json");
    let v = assert_error_body(&body, "not_found");
    assert_eq!(v["request_id"], "req-404");
}

#[tokio::test]
async fn upstream_answers_are_replaced_only_when_configured() {
    let s = setup();
    let gw = &s.gw;

    // Global entry (upstream: false): the upstream's own 503 passes unchanged.
    let (status, ct, h, body) = get(gw, "/passed", "req-a").await;
    assert_eq!(status, 503);
    assert_eq!(ct, "application/json");
    assert_eq!(body, r#"{"upstream":"busy"}"#);
    assert_eq!(h["x-backend"], "says-503");

    // Route entry with upstream: true: same status, the configured body, response-transformer's
    // envelope not applied to it.
    let (status, ct, h, body) = get(gw, "/replaced", "req-b").await;
    assert_eq!(status, 503);
    assert_eq!(ct, "application/json");
    assert_eq!(
        body,
        r#"{"error":"replaced","code":"service_unavailable","request_id":"req-b"}"#
    );
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert!(h.get("transfer-encoding").is_none());
    assert_eq!(
        h["x-content-type-options"], "nosniff",
        "global security-headers still apply"
    );

    // A HEAD answer has no body to replace: its head passes as the upstream sent it.
    let r = gw.client.head(gw.url("/replaced")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    if let Some(len) = r.headers().get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            r#"{"upstream":"busy"}"#.len().to_string()
        );
    }

    // A 200 through the same route is not touched (the envelope applies as configured).
    s.says_503.set_status(200);
    let (status, _, _, body) = get(gw, "/replaced", "req-c").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["success"], true, "{body}");
    assert_eq!(v["data"]["upstream"], "busy", "{body}");

    // Keep-alive still works after a replaced body (lengths were right).
    s.says_503.set_status(503);
    for _ in 0..3 {
        let (status, _, _, body) = get(gw, "/replaced", "req-d").await;
        assert_eq!(status, 503);
        assert!(body.contains("req-d"), "{body}");
    }
    assert_eq!(s.says_503.hits(), 7);
}

#[tokio::test]
async fn bad_config_is_refused_with_path_and_line() {
    let yaml = "plugins:\n  - name: error-responses\n    config:\n      responses:\n        \"503\": { body_file: missing.json }\n";
    let (code, stderr) = Gateway::validate(yaml);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("plugins[0].config.responses.503.body_file: file ")
            && stderr.contains("missing.json not found (line 5)"),
        "{stderr}"
    );
}
