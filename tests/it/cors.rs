//! cors against real upstreams: preflights answered by the gateway, allowed and disallowed
//! origins, credentials, `*`, and CORS headers on the gateway's own errors (404, 502).
use crate::common;

use common::*;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";

fn acl_headers(h: &reqwest::header::HeaderMap) -> Vec<String> {
    h.keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn vary_has_origin(h: &reqwest::header::HeaderMap) -> bool {
    h.get_all("vary").iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("origin"))
    })
}

/// One upstream `a`, routes `/r` (to `a`) and `/d` (to a dead address), cors global.
fn setup(a: &Backend, cors_config: &str) -> Gateway {
    Cfg::new()
        .upstream("u", &[target(a)], "")
        .upstream("dead", &[target_addr(&dead_addr())], "retries: 0")
        .route_u("r", "")
        .route("d", &["/d"], "dead", "")
        .top(&format!(
            "plugins:\n  - name: correlation-id\n  - name: cors\n    config: {cors_config}\n"
        ))
        .start()
}

async fn preflight(gw: &Gateway, path: &str, origin: &str) -> reqwest::Response {
    gw.client
        .request(reqwest::Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type, x-api-key")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn preflight_is_answered_by_the_gateway() {
    let a = Backend::start("a");
    let gw = setup(
        &a,
        &format!("{{ origins: [\"{APP}\"], methods: [GET, PUT], headers: [Content-Type, X-Api-Key], max_age: 600, credentials: true }}"),
    );
    let resp = preflight(&gw, "/r/items", APP).await;
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "Content-Type, X-Api-Key");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(vary_has_origin(h));
    assert!(h.get("x-request-id").is_some(), "decorated like any answer");
    assert_eq!(
        h.get("content-length").map(|v| v.to_str().unwrap()),
        Some("0")
    );
    assert!(resp.text().await.unwrap().is_empty());

    // Disallowed origin: answered 204 too, with no CORS header (the browser then refuses).
    let resp = preflight(&gw, "/r/items", EVIL).await;
    assert_eq!(resp.status(), 204);
    assert!(
        acl_headers(resp.headers()).is_empty(),
        "{:?}",
        resp.headers()
    );

    assert_eq!(a.hits(), 0, "preflights never reach the upstream");

    // OPTIONS without Access-Control-Request-Method is an ordinary request.
    let resp = gw
        .client
        .request(reqwest::Method::OPTIONS, gw.url("/r"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(a.hits(), 1);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
}

#[tokio::test]
async fn allowed_and_disallowed_origins_on_actual_requests() {
    let a = Backend::start("a");
    // The upstream's own CORS headers must not override the gateway's policy.
    a.set_extra_headers(&[
        ("access-control-allow-origin", "*"),
        ("access-control-expose-headers", "X-Upstream"),
    ]);
    let gw = setup(
        &a,
        &format!("{{ origins: [\"{APP}\", \"http://localhost:3000\"], exposed_headers: [X-Request-ID, X-Total], credentials: true }}"),
    );
    let get = |origin: Option<&'static str>| {
        let mut r = gw.client.get(gw.url("/r"));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };

    let resp = get(Some(APP)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "X-Request-ID, X-Total");
    assert_eq!(h.get_all("access-control-allow-origin").iter().count(), 1);
    assert!(vary_has_origin(h));

    // Origins compare case-insensitively (scheme and host are case-insensitive).
    let resp = get(Some("HTTP://LOCALHOST:3000")).await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "HTTP://LOCALHOST:3000"
    );

    for origin in [Some(EVIL), Some("https://app.example.com.evil.net"), None] {
        let resp = get(origin).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            acl_headers(resp.headers()).is_empty(),
            "{origin:?}: {:?}",
            resp.headers()
        );
        assert!(vary_has_origin(resp.headers()), "{origin:?}: Vary: Origin");
    }
}

#[tokio::test]
async fn star_without_credentials_and_reflected_request_headers() {
    let a = Backend::start("a");
    let gw = setup(&a, "{ origins: [\"*\"] }");
    let resp = gw.get_response("/r", &[("origin", EVIL)]).await;
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(!vary_has_origin(h), "`*` does not vary by origin");

    // `headers` not configured: the preflight's requested headers are echoed.
    let resp = preflight(&gw, "/r", EVIL).await;
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-api-key");
    assert_eq!(
        h["access-control-allow-methods"],
        "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS"
    );
    assert_eq!(h["access-control-max-age"], "3600");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn cors_headers_on_gateway_errors() {
    let a = Backend::start("a");
    let gw = setup(&a, &format!("{{ origins: [\"{APP}\"] }}"));
    for (path, status, code) in [("/nowhere", 404, "not_found"), ("/d", 502, "bad_gateway")] {
        let resp = gw.get_response(path, &[("origin", APP)]).await;
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()["access-control-allow-origin"], APP, "{path}");
        assert!(vary_has_origin(resp.headers()), "{path}");
        assert_error_body(&resp.text().await.unwrap(), code);

        let resp = gw.get_response(path, &[("origin", EVIL)]).await;
        assert_eq!(resp.status(), status, "{path}");
        assert!(acl_headers(resp.headers()).is_empty(), "{path}");
    }
}

#[tokio::test]
async fn cors_headers_come_after_response_transformer() {
    // On the way back cors runs last: a response-transformer rule cannot strip its headers.
    let a = Backend::start("a");
    let gw = one_route(&a, "/r", &format!("plugins:\n  - name: response-transformer\n    config: {{ remove: {{ headers: [Access-Control-Allow-Origin, Vary] }} }}\n  - name: cors\n    config: {{ origins: [\"{APP}\"] }}"));
    let resp = gw.get_response("/r", &[("origin", APP)]).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    assert!(vary_has_origin(resp.headers()));
}

#[test]
fn cors_config_errors() {
    let base = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:1\" }]\nplugins:\n";
    let cases = [
        (
            "  - name: cors\n    config: { origins: [\"*\"], credentials: true }\n",
            "plugins[0].config.credentials: credentials: true cannot be combined with origins \"*\"",
        ),
        ("  - name: cors\n", "plugins[0].config.origins: origins is required"),
        (
            "  - name: cors\n    config:\n      origins: [\"https://ok.example\", \"https://bad.example/\"]\n",
            "plugins[0].config.origins[1]: invalid origin \"https://bad.example/\"",
        ),
        (
            "  - name: cors\n    config: { origins: [\"null\"] }\n",
            "plugins[0].config.origins[0]: \"null\" is not accepted",
        ),
        (
            "  - name: cors\n    config: { origins: [\"*\"], max_age: 1h }\n",
            "plugins[0].config.max_age",
        ),
    ];
    for (plugin, want) in cases {
        let (code, err) = Gateway::validate(&format!("{base}{plugin}"));
        assert_eq!(code, 1, "{plugin}: {err}");
        assert!(err.contains(want), "{plugin}: missing {want:?} in:\n{err}");
        assert!(err.contains("(line "), "{err}");
    }
    let ok = format!("{base}  - name: cors\n    config: {{ origins: [\"https://a.example\"], credentials: true }}\n");
    let (code, err) = Gateway::validate(&ok);
    assert_eq!(code, 0, "{err}");
}
