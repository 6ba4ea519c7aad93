//! key-auth against a real upstream: header and query keys, refusals that never reach the
//! upstream, hide_credentials, spoofed identity headers, global plugin with a route opt-out.
use crate::common;

use common::*;

const ALICE_KEY: &str = "alice-key-7f3a9c0e5b2d41";
const BOB_KEY: &str = "bob key/with+odd=chars";

const CONSUMERS: &str = "consumers:
  - username: alice
    roles: [reader]
    keyauth_credentials: [{ key: \"alice-key-7f3a9c0e5b2d41\" }]
  - username: bob
    keyauth_credentials:
      - { key: \"bob key/with+odd=chars\" }
      - { key: \"bob-second-key-000000000\" }
";

fn key_route(extra_config: &str) -> String {
    format!("plugins:\n  - name: key-auth\n    config: {{ {extra_config} }}")
}

#[tokio::test]
async fn header_and_query_keys_missing_and_invalid() {
    let (a, cfg) = upstream_u();
    let gw = cfg.route_u("k", &key_route("")).top(CONSUMERS).start();

    // Header key: 200, consumer sent upstream, the key is not (hide_credentials default).
    let (s, body) = gw.get_with("/k/x", &[("X-API-Key", ALICE_KEY)]).await;
    assert_eq!(s, 200, "{body}");
    let up = a.last_request().unwrap();
    assert_eq!(
        up.header_joined("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        up.header("x-api-key"),
        None,
        "hide_credentials strips the key header"
    );

    // Query key (percent-encoded), other parameters kept in order.
    let (s, _) = gw
        .send(
            gw.client
                .get(gw.url("/k/q?a=1&api_key=bob%20key%2Fwith%2Bodd%3Dchars&b=2")),
        )
        .await;
    assert_eq!(s, 200);
    let up = a.last_request().unwrap();
    assert_eq!(up.header("x-consumer-username"), Some("bob"));
    assert_eq!(up.query.as_deref(), Some("a=1&b=2"), "api_key stripped");
    assert_eq!(up.path, "/k/q");

    // Only parameter: the `?` goes too.
    let (s, _) = gw
        .send(
            gw.client
                .get(gw.url("/k/q?api_key=bob-second-key-000000000")),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(a.last_request().unwrap().uri, "/k/q");
    assert_eq!(a.hits(), 3);

    // Refusals: never reach the upstream.
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (gw.client.get(gw.url("/k")), "missing_api_key"),
        (
            gw.client.get(gw.url("/k")).header("X-API-Key", ""),
            "missing_api_key",
        ),
        (gw.client.get(gw.url("/k?api_key=")), "missing_api_key"),
        (gw.client.get(gw.url("/k?apikey=x")), "missing_api_key"),
        (
            gw.client.get(gw.url("/k")).header("X-API-Key", "wrong"),
            "invalid_api_key",
        ),
        (
            gw.client
                .get(gw.url("/k"))
                .header("X-API-Key", &ALICE_KEY[..ALICE_KEY.len() - 1]),
            "invalid_api_key",
        ),
        (
            gw.client
                .get(gw.url("/k"))
                .header("X-API-Key", format!("{ALICE_KEY}x")),
            "invalid_api_key",
        ),
        (gw.client.get(gw.url("/k?api_key=alice")), "invalid_api_key"),
        // The header wins over the query: a wrong header is not rescued by a right query.
        (
            gw.client
                .get(gw.url(&format!("/k?api_key={ALICE_KEY}")))
                .header("X-API-Key", "wrong"),
            "invalid_api_key",
        ),
        // Two copies of the key header are ambiguous.
        (
            gw.client
                .get(gw.url("/k"))
                .header("X-API-Key", ALICE_KEY)
                .header("X-API-Key", "other"),
            "invalid_api_key",
        ),
    ];
    for (req, code) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Key realm=\"gatehouse\"",
            "{code}"
        );
        let body = resp.text().await.unwrap();
        assert_error_body(&body, code);
        assert!(
            !body.contains(ALICE_KEY) && !body.contains("wrong"),
            "{body}"
        );
    }
    assert_eq!(a.hits(), 3, "refused requests never reach the upstream");

    // Keys never show up in /status or the logs.
    let status = gw.status_json().await.to_string();
    assert!(!status.contains(ALICE_KEY) && !status.contains("bob key"));
    assert!(!gw.stderr().contains(ALICE_KEY));
}

#[tokio::test]
async fn hide_credentials_off_and_custom_names() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("keep", &key_route("hide_credentials: false"))
        .route_u(
            "custom",
            &key_route("key_names: [X-Key, Apikey], query_param: null"),
        )
        .top(CONSUMERS)
        .start();

    let (s, _) = gw
        .get_with(
            &format!("/keep?api_key={ALICE_KEY}&z=9"),
            &[("X-Trace", "1")],
        )
        .await;
    assert_eq!(s, 200);
    let up = a.last_request().unwrap();
    assert_eq!(
        up.query.as_deref(),
        Some(format!("api_key={ALICE_KEY}&z=9").as_str())
    );
    let (s, _) = gw.get_with("/keep", &[("X-API-Key", ALICE_KEY)]).await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("x-api-key"),
        Some(ALICE_KEY)
    );

    // Second configured header name works; the query parameter is switched off.
    let (s, _) = gw.get_with("/custom", &[("Apikey", ALICE_KEY)]).await;
    assert_eq!(s, 200);
    let up = a.last_request().unwrap();
    assert_eq!(up.header("apikey"), None);
    assert_eq!(up.header("x-consumer-username"), Some("alice"));
    let (s, body) = gw
        .send(
            gw.client
                .get(gw.url(&format!("/custom?api_key={ALICE_KEY}"))),
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_api_key");
    let (s, _) = gw.get_with("/custom", &[("X-API-Key", ALICE_KEY)]).await;
    assert_eq!(s, 401, "X-API-Key is not among this route's key_names");
    assert_eq!(a.hits(), 3);
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_everywhere() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("k", &key_route(""))
        .route_u("open", "")
        .top(CONSUMERS)
        .start();

    let (s, _) = gw
        .get_with(
            "/k",
            &[
                ("X-API-Key", BOB_KEY),
                ("X-Consumer-Username", "alice"),
                ("x-consumer-username", "admin"),
                ("X-Authenticated-Roles", "admin"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let up = a.last_request().unwrap();
    assert_eq!(
        up.header_joined("x-consumer-username").as_deref(),
        Some("bob")
    );
    assert_eq!(up.header("x-authenticated-roles"), None);

    // A route without any auth plugin: still no client-made identity upstream.
    let (s, _) = gw
        .get_with(
            "/open",
            &[
                ("X-Consumer-Username", "alice"),
                ("X-Authenticated-Roles", "admin"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    let up = a.last_request().unwrap();
    assert_eq!(up.header("x-consumer-username"), None);
    assert_eq!(up.header("x-authenticated-roles"), None);
}

#[tokio::test]
async fn global_key_auth_with_route_opt_out_and_404_first() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("private", "")
        .route_u("public", "plugins:\n  - name: key-auth\n    enabled: false")
        .top(CONSUMERS)
        .top("plugins:\n  - name: key-auth\n")
        .start();

    let (s, body) = gw.send(gw.client.get(gw.url("/private"))).await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_api_key");
    let (s, _) = gw.get_with("/private", &[("X-API-Key", ALICE_KEY)]).await;
    assert_eq!(s, 200);
    let (s, _) = gw.send(gw.client.get(gw.url("/public"))).await;
    assert_eq!(s, 200, "the route switched the global key-auth off");
    assert_eq!(
        a.last_request().unwrap().header("x-consumer-username"),
        None
    );
    // No route: 404 before any auth plugin.
    let (s, body) = gw.send(gw.client.get(gw.url("/nowhere"))).await;
    assert_eq!(s, 404);
    assert_error_body(&body, "not_found");
    assert_eq!(a.hits(), 2);
}

#[test]
fn config_errors_name_path_and_line() {
    let (code, err) = Gateway::validate(
        "server: { listen: [\"127.0.0.1:1\"] }
upstreams:
  - name: u
    targets: [{ addr: \"127.0.0.1:2\" }]
consumers:
  - username: a
    keyauth_credentials: [{ key: same-key-123 }]
  - username: b
    keyauth_credentials: [{ key: same-key-123 }]
routes:
  - name: r
    paths: [\"/\"]
    upstream: u
    plugins:
      - name: key-auth
        config: { key_names: [\"bad header\"], query_param: \"\" }
",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("consumers[1].keyauth_credentials[0].key: this API key is already used by another credential (line 9)"),
        "{err}"
    );
    assert!(!err.contains("same-key-123"), "keys never in errors: {err}");
    assert!(
        err.contains("routes[0].plugins[0].config.key_names[0]: invalid header name \"bad header\" (line 16)"),
        "{err}"
    );
}
