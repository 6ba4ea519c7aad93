//! acl after key-auth (consumer roles) and jwt (roles claim): allowed role 200, other roles
//! 403 `forbidden`, unauthenticated 401; refusals never reach the upstream.
use crate::auth_support;
use crate::common;

use auth_support::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const SECRET: &str = "acl-test-secret-0123456789abcdefghijkl";

const CONSUMERS: &str = "consumers:
  - username: reader
    roles: [reader]
    keyauth_credentials: [{ key: reader-key-00000000 }]
  - username: writer
    roles: [writer, auditor]
    keyauth_credentials: [{ key: writer-key-00000000 }]
  - username: nobody
    keyauth_credentials: [{ key: nobody-key-00000000 }]
  - username: tokens
    roles: [admin]
    jwt_secrets: [{ key: idp, secret: \"acl-test-secret-0123456789abcdefghijkl\" }]
";

fn token(roles: serde_json::Value, claim: &str) -> String {
    let mut c = json!({"iss": "idp", "exp": now() + 300});
    c[claim] = roles;
    sign_hs(Algorithm::HS256, SECRET.as_bytes(), &c)
}

#[tokio::test]
async fn roles_from_consumers_and_tokens() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("keyed", "plugins:\n  - name: key-auth\n  - name: acl\n    config: { allow_roles: [writer, admin] }")
        .route_u("tokened", "plugins:\n  - name: jwt\n  - name: acl\n    config: { allow_roles: [admin] }")
        .route_u("groups", "plugins:\n  - name: jwt\n  - name: acl\n    config: { allow_roles: [ops], roles_claim: groups }")
        .route(
            "unauthenticated",
            &["/open"],
            "u",
            "plugins:\n  - name: acl\n    config: { allow_roles: [reader] }",
        )
        .top(CONSUMERS)
        .start();
    let key = |k: &str| {
        gw.client
            .get(gw.url("/keyed"))
            .header("X-API-Key", k.to_string())
    };
    let bearer = |path: &str, t: &str| {
        gw.client
            .get(gw.url(path))
            .header("Authorization", format!("Bearer {t}"))
    };

    // key-auth consumers: their `roles`.
    let (s, _) = gw.send(key("writer-key-00000000")).await;
    assert_eq!(s, 200);
    for k in ["reader-key-00000000", "nobody-key-00000000"] {
        let (s, body) = gw.send(key(k)).await;
        assert_eq!(s, 403, "{k}");
        assert_error_body(&body, "forbidden");
    }
    let (s, body) = gw.send(gw.client.get(gw.url("/keyed"))).await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_api_key");
    assert_eq!(a.hits(), 1);

    // jwt: the token's roles claim, not the consumer's roles (tokens has [admin]).
    let (s, _) = gw
        .send(bearer("/tokened", &token(json!(["x", "admin"]), "roles")))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("x-authenticated-roles"),
        Some("x,admin")
    );
    let (s, _) = gw
        .send(bearer("/tokened", &token(json!("reader admin"), "roles")))
        .await;
    assert_eq!(s, 200, "space-separated string claim");
    for (name, t) in [
        ("other role", token(json!(["reader"]), "roles")),
        ("no roles claim", token(json!(["admin"]), "scopes")),
        (
            "roles not strings",
            token(json!([1, {"admin": true}]), "roles"),
        ),
        ("prefix is not a role", token(json!(["admins"]), "roles")),
    ] {
        let (s, body) = gw.send(bearer("/tokened", &t)).await;
        assert_eq!(s, 403, "{name}");
        assert_error_body(&body, "forbidden");
    }
    // A custom roles_claim.
    let (s, _) = gw
        .send(bearer("/groups", &token(json!(["ops"]), "groups")))
        .await;
    assert_eq!(s, 200);
    let (s, _) = gw
        .send(bearer("/groups", &token(json!(["ops"]), "roles")))
        .await;
    assert_eq!(s, 403);
    // No token: jwt answers first.
    let (s, body) = gw.send(gw.client.get(gw.url("/tokened"))).await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_token");
    assert_eq!(a.hits(), 4);

    // acl with nothing that authenticates: 401 unauthorized.
    let (s, body) = gw
        .get_with("/open", &[("X-Consumer-Username", "reader")])
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "unauthorized");
    assert_eq!(a.hits(), 4, "refusals never reach the upstream");
}

#[test]
fn allow_roles_is_required() {
    for (config, want) in [
        ("", "routes[0].plugins[0].config.allow_roles: is required"),
        (
            "config: { roles_claim: r }",
            "config.allow_roles: is required",
        ),
        (
            "config: { allow_roles: [] }",
            "config.allow_roles: needs at least one role",
        ),
        (
            "config: { allow_roles: [a], deny_roles: [b] }",
            "unknown field `deny_roles`",
        ),
    ] {
        let (code, err) = Gateway::validate(&format!(
            "{ROUTE_R_PLUGINS}      - name: acl\n        {config}\n"
        ));
        assert_eq!(code, 1, "{config}: {err}");
        assert!(err.contains(want), "{config}: want {want:?} in {err}");
        assert!(err.contains("(line "), "{err}");
    }
}
