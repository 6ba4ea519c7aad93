//! jwt against a real upstream with real keys and tokens signed in the test: HS256, RS256,
//! ES256 accepted; the attack set refused with 401 and zero upstream hits; key-auth + jwt on
//! one route; bad key files as config errors; cached verifications do not survive a reload.
use crate::auth_support;
use crate::common;

use auth_support::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::time::Duration;

const HS_SECRET: &str = "hs256-secret-for-tests-0123456789abcdef";

struct Keys {
    rsa: Pair,
    ec: Pair,
    ec384: Pair,
}

fn keys() -> Keys {
    Keys {
        rsa: rsa_pair(),
        ec: ec_pair(false),
        ec384: ec_pair(true),
    }
}

/// Writes the public keys next to the config and returns the `consumers:` section.
fn consumers(cfg: &Cfg, k: &Keys) -> String {
    std::fs::write(cfg.dir.path().join("rsa.pem"), &k.rsa.public_pem).unwrap();
    std::fs::write(cfg.dir.path().join("ec.pem"), &k.ec.public_pem).unwrap();
    std::fs::write(cfg.dir.path().join("ec384.pem"), &k.ec384.public_pem).unwrap();
    format!(
        "consumers:
  - username: alice
    roles: [from-consumer]
    keyauth_credentials: [{{ key: alice-api-key-0123456789 }}]
    jwt_secrets:
      - {{ key: hs-issuer, algorithm: HS256, secret: \"{HS_SECRET}\" }}
      - {{ key: rs-issuer, algorithm: RS256, rsa_public_key_file: rsa.pem }}
      - {{ key: es-issuer, algorithm: ES256, ecdsa_public_key_file: ec.pem }}
  - username: carol
    jwt_secrets:
      - {{ key: es384-issuer, algorithm: ES384, ecdsa_public_key_file: ec384.pem }}
      - {{ key: b64-issuer, algorithm: HS512, secret_is_base64: true,
          secret: \"{}\" }}
",
        base64_secret()
    )
}

fn base64_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([7u8; 64])
}

fn claims(iss: &str) -> serde_json::Value {
    json!({"iss": iss, "aud": "api", "exp": now() + 300, "roles": ["admin", "reader"]})
}

async fn get_with(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    gw.client
        .get(gw.url(path))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()))
}

#[tokio::test]
async fn valid_tokens_of_every_family_are_accepted() {
    let k = keys();
    let a = Backend::start("a");
    let cfg = Cfg::new().upstream("u", &[target(&a)], "").route_u(
        "j",
        "plugins:\n  - name: jwt\n    config: { audience: api }",
    );
    let c = consumers(&cfg, &k);
    let gw = cfg.top(&c).start();

    let tokens = [
        (
            "HS256",
            sign_hs(Algorithm::HS256, HS_SECRET.as_bytes(), &claims("hs-issuer")),
            "alice",
        ),
        (
            "RS256",
            sign_rsa(Algorithm::RS256, &k.rsa, &claims("rs-issuer")),
            "alice",
        ),
        (
            "ES256",
            sign_ec(Algorithm::ES256, &k.ec, &claims("es-issuer")),
            "alice",
        ),
        (
            "ES384",
            sign_ec(Algorithm::ES384, &k.ec384, &claims("es384-issuer")),
            "carol",
        ),
        (
            "HS512 base64 secret",
            sign_hs(Algorithm::HS512, &[7u8; 64], &claims("b64-issuer")),
            "carol",
        ),
    ];
    for (name, token, user) in &tokens {
        // Twice: the second answer comes from the verification cache.
        for round in 0..2 {
            let resp = get_with(&gw, "/j/data", token).await;
            assert_eq!(resp.status(), 200, "{name} round {round}");
            let up = a.last_request().unwrap();
            assert_eq!(
                up.header_joined("x-consumer-username").as_deref(),
                Some(*user),
                "{name}"
            );
            assert_eq!(
                up.header("x-authenticated-roles"),
                Some("admin,reader"),
                "{name}"
            );
            // hide_credentials defaults to true: the token never reaches the upstream.
            assert_eq!(up.header("authorization"), None, "{name}: token forwarded");
        }
    }
    assert_eq!(a.hits(), tokens.len() * 2);

    // Scheme is case-insensitive; spoofed roles are replaced.
    let t = &tokens[0].1;
    let resp = gw
        .get_response(
            "/j",
            &[
                ("Authorization", &format!("bearer {t}")),
                ("X-Authenticated-Roles", "root"),
                ("X-Consumer-Username", "root"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let up = a.last_request().unwrap();
    assert_eq!(
        up.header_joined("x-authenticated-roles").as_deref(),
        Some("admin,reader")
    );
    assert_eq!(
        up.header_joined("x-consumer-username").as_deref(),
        Some("alice")
    );

    // A valid token without roles: the client's copy is removed, none added.
    let no_roles = sign_hs(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "hs-issuer", "aud": "api", "exp": now() + 60}),
    );
    let resp = gw
        .get_response(
            "/j",
            &[
                ("Authorization", &format!("Bearer {no_roles}")),
                ("X-Authenticated-Roles", "root"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        a.last_request().unwrap().header("x-authenticated-roles"),
        None
    );
}

#[tokio::test]
async fn attack_set_is_refused_before_the_upstream() {
    let k = keys();
    let (a, base) = upstream_u();
    let cfg = base
        .route_u("j", "plugins:\n  - name: jwt\n    config: { audience: api }")
        .route(
            "by-kid",
            &["/kid"],
            "u",
            "plugins:\n  - name: jwt\n    config: { key_claim_name: kid, issuer: \"https://idp.example\" }",
        );
    let c = consumers(&cfg, &k);
    let gw = cfg.top(&c).start();

    let hs = |c: serde_json::Value| sign_hs(Algorithm::HS256, HS_SECRET.as_bytes(), &c);
    let valid = hs(claims("hs-issuer"));
    let valid_rs = sign_rsa(Algorithm::RS256, &k.rsa, &claims("rs-issuer"));
    let claims_json = claims("hs-issuer").to_string();
    let rs_claims_json = claims("rs-issuer").to_string();
    let mut big = claims("hs-issuer");
    big["pad"] = json!("x".repeat(9000));

    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "alg none",
            "/j",
            raw_token(r#"{"alg":"none","typ":"JWT"}"#, &claims_json, ""),
            "invalid_token",
        ),
        (
            "alg NoNe",
            "/j",
            raw_token(
                r#"{"alg":"NoNe"}"#,
                &claims_json,
                valid.rsplit('.').next().unwrap(),
            ),
            "invalid_token",
        ),
        (
            "alg none, RS consumer",
            "/j",
            raw_token(r#"{"alg":"none"}"#, &rs_claims_json, ""),
            "invalid_token",
        ),
        (
            "stripped signature",
            "/j",
            valid[..valid.rfind('.').unwrap() + 1].to_string(),
            "invalid_token",
        ),
        (
            "no signature part",
            "/j",
            valid[..valid.rfind('.').unwrap()].to_string(),
            "invalid_token",
        ),
        (
            "RS256 signature bit-flipped",
            "/j",
            flip_last(&valid_rs),
            "invalid_token",
        ),
        (
            "HS256 signed with the RSA public key",
            "/j",
            hs256_raw(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                &rs_claims_json,
                k.rsa.public_pem.as_bytes(),
            ),
            "invalid_token",
        ),
        (
            "RS256 token verified as HS256 consumer",
            "/j",
            sign_rsa(Algorithm::RS256, &k.rsa, &claims("hs-issuer")),
            "invalid_token",
        ),
        (
            "expired",
            "/j",
            hs(json!({"iss": "hs-issuer", "aud": "api", "exp": now() - 1})),
            "token_expired",
        ),
        (
            "future nbf",
            "/j",
            hs(json!({"iss": "hs-issuer", "aud": "api", "exp": now() + 60, "nbf": now() + 60})),
            "invalid_token",
        ),
        (
            "no exp",
            "/j",
            hs(json!({"iss": "hs-issuer", "aud": "api"})),
            "invalid_token",
        ),
        (
            "wrong aud",
            "/j",
            hs(json!({"iss": "hs-issuer", "aud": "other", "exp": now() + 60})),
            "invalid_token",
        ),
        (
            "no aud",
            "/j",
            hs(json!({"iss": "hs-issuer", "exp": now() + 60})),
            "invalid_token",
        ),
        (
            "wrong iss",
            "/kid",
            hs(json!({"kid": "hs-issuer", "iss": "https://evil.example", "exp": now() + 60})),
            "invalid_token",
        ),
        (
            "unknown key",
            "/j",
            hs(json!({"iss": "nobody", "aud": "api", "exp": now() + 60})),
            "invalid_token",
        ),
        (
            "string exp",
            "/j",
            hs(json!({"iss": "hs-issuer", "aud": "api", "exp": (now() + 60).to_string()})),
            "invalid_token",
        ),
        (
            "string nbf",
            "/j",
            hs(json!({"iss": "hs-issuer", "aud": "api", "exp": now() + 60, "nbf": "0"})),
            "invalid_token",
        ),
        (
            "duplicate exp claim",
            "/j",
            hs256_raw(
                r#"{"alg":"HS256"}"#,
                &format!(
                    r#"{{"iss":"hs-issuer","aud":"api","exp":1,"exp":{}}}"#,
                    now() + 60
                ),
                HS_SECRET.as_bytes(),
            ),
            "invalid_token",
        ),
        ("oversize (validly signed)", "/j", hs(big), "invalid_token"),
        ("garbage", "/j", "garbage".to_string(), "invalid_token"),
        ("garbage dots", "/j", "a.b.c".to_string(), "invalid_token"),
        ("padded base64", "/j", format!("{valid}=="), "invalid_token"),
    ];
    for (name, path, token, code) in &cases {
        let resp = get_with(&gw, path, token).await;
        assert_eq!(resp.status(), 401, "{name}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{name}"
        );
        let body = resp.text().await.unwrap();
        assert_error_body(&body, code);
        assert!(!body.contains(token.as_str()), "{name}: token echoed");
    }
    assert_eq!(a.hits(), 0, "no refused token reaches the upstream");

    // Missing: RFC 6750 challenge without an error code.
    for req in [
        gw.client.get(gw.url("/j")),
        gw.client
            .get(gw.url("/j"))
            .header("Authorization", "Bearer "),
        gw.client
            .get(gw.url("/j"))
            .header("Authorization", "Basic dXNlcjpwYXNz"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"gatehouse\""
        );
        assert_error_body(&resp.text().await.unwrap(), "missing_token");
    }
    assert_eq!(a.hits(), 0);

    // The legitimate tokens still pass on both routes.
    assert_eq!(get_with(&gw, "/j", &valid).await.status(), 200);
    let kid_ok = hs(json!({"kid": "hs-issuer", "iss": "https://idp.example", "exp": now() + 60}));
    assert_eq!(get_with(&gw, "/kid", &kid_ok).await.status(), 200);
    assert_eq!(a.hits(), 2);
    assert!(!gw.stderr().contains(&valid), "tokens never logged");
}

fn flip_last(token: &str) -> String {
    let mut t = token.to_string();
    // Change a middle character of the signature (the last one may carry padding bits).
    let i = t.len() - 10;
    let c = if &t[i..i + 1] == "A" { "B" } else { "A" };
    t.replace_range(i..i + 1, c);
    t
}

#[tokio::test]
async fn key_auth_and_jwt_on_one_route_both_must_pass() {
    let k = keys();
    let (a, cfg) = upstream_u();
    let cfg = cfg.route_u("both", "plugins:\n  - name: jwt\n  - name: key-auth");
    let c = consumers(&cfg, &k);
    let gw = cfg.top(&c).start();
    let token = sign_hs(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "hs-issuer", "exp": now() + 60}),
    );
    let key = "alice-api-key-0123456789";

    let (s, body) = gw.get_with("/both", &[("X-API-Key", key)]).await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_token");
    let (s, body) = gw
        .send(
            gw.client
                .get(gw.url("/both"))
                .header("Authorization", format!("Bearer {token}")),
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_api_key");
    let (s, body) = gw
        .send(
            gw.client
                .get(gw.url("/both"))
                .header("X-API-Key", "wrong")
                .header("Authorization", format!("Bearer {token}")),
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "invalid_api_key");
    assert_eq!(a.hits(), 0);
    let (s, _) = gw
        .send(
            gw.client
                .get(gw.url("/both"))
                .header("X-API-Key", key)
                .header("Authorization", format!("Bearer {token}")),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("x-consumer-username"),
        Some("alice")
    );
}

#[tokio::test]
async fn custom_header_hide_credentials_and_size_cap() {
    let a = Backend::start("a");
    let cfg = Cfg::new().upstream("u", &[target(&a)], "").route_u("j", "plugins:\n  - name: jwt\n    config: { header_names: [X-Token], max_token_bytes: 300, claims_to_verify: [] }");
    let gw = cfg
        .top(&format!(
            "consumers:\n  - username: dave\n    jwt_secrets: [{{ key: d, secret: \"{HS_SECRET}\" }}]\n"
        ))
        .start();
    // No exp needed here (claims_to_verify: []), a raw token in a custom header is fine.
    let t = sign_hs(Algorithm::HS256, HS_SECRET.as_bytes(), &json!({"iss": "d"}));
    let (s, _) = gw.get_with("/j", &[("X-Token", &t)]).await;
    assert_eq!(s, 200);
    let up = a.last_request().unwrap();
    assert_eq!(up.header("x-token"), None, "hide_credentials");
    assert_eq!(up.header("x-consumer-username"), Some("dave"));
    // Authorization is not among header_names here.
    let (s, body) = gw
        .send(
            gw.client
                .get(gw.url("/j"))
                .header("Authorization", format!("Bearer {t}")),
        )
        .await;
    assert_eq!(s, 401);
    assert_error_body(&body, "missing_token");
    // An exp that is present is still enforced.
    let expired = sign_hs(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "d", "exp": now() - 10}),
    );
    let (s, body) = gw.get_with("/j", &[("X-Token", &expired)]).await;
    assert_eq!(s, 401);
    assert_error_body(&body, "token_expired");
    let big = sign_hs(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "d", "pad": "y".repeat(300)}),
    );
    let (s, body) = gw.get_with("/j", &[("X-Token", &big)]).await;
    assert_eq!(s, 401);
    assert_error_body(&body, "invalid_token");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn cached_verification_does_not_survive_a_reload() {
    let a = Backend::start("a");
    let consumers_with = |secret: &str| {
        format!("consumers:\n  - username: erin\n    jwt_secrets: [{{ key: e, secret: \"{secret}\" }}]\n")
    };
    let cfg = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route_u("j", "plugins:\n  - name: jwt");
    let base = cfg.yaml();
    let gw = cfg.top(&consumers_with(HS_SECRET)).start();
    let token = sign_hs(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "e", "exp": now() + 300}),
    );
    assert_eq!(get_with(&gw, "/j", &token).await.status(), 200);
    assert_eq!(get_with(&gw, "/j", &token).await.status(), 200);

    // Rotate the secret: the token cached under the old snapshot must fail now.
    let rotated = "a-completely-different-secret-9876543210";
    std::fs::write(
        gw.dir().join("gatehouse.yaml"),
        format!("{base}{}", consumers_with(rotated)),
    )
    .unwrap();
    let resp = gw
        .client
        .post(gw.admin_url("/reload"))
        .send()
        .await
        .expect("POST /reload");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let mut status = 0;
    for _ in 0..40 {
        status = get_with(&gw, "/j", &token).await.status().as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, 401, "the old snapshot's cache must not answer");
    let fresh = sign_hs(
        Algorithm::HS256,
        rotated.as_bytes(),
        &json!({"iss": "e", "exp": now() + 300}),
    );
    assert_eq!(get_with(&gw, "/j", &fresh).await.status(), 200);
}

#[test]
fn bad_key_files_are_config_errors_with_path_and_line() {
    let dir = tempfile::TempDir::new().unwrap();
    let ec = ec_pair(false);
    std::fs::write(dir.path().join("ec.pem"), &ec.public_pem).unwrap();
    std::fs::write(
        dir.path().join("junk.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let yaml = "server: { listen: [\"127.0.0.1:1\"] }
upstreams:
  - name: u
    targets: [{ addr: \"127.0.0.1:2\" }]
consumers:
  - username: a
    jwt_secrets:
      - key: k1
        algorithm: RS256
        rsa_public_key_file: junk.pem
      - key: k2
        algorithm: RS256
        rsa_public_key_file: ec.pem
      - key: k3
        algorithm: ES384
        ecdsa_public_key_file: ec.pem
      - key: k4
        algorithm: RS256
        rsa_public_key_file: missing.pem
routes:
  - name: r
    paths: [\"/\"]
    upstream: u
    plugins: [{ name: jwt }]
";
    let p = dir.path().join("gatehouse.yaml");
    std::fs::write(&p, yaml).unwrap();
    let (code, err) = validate_file(&p, &[], &[]);
    assert_eq!(code, 1, "{err}");
    for want in [
        "consumers[0].jwt_secrets[0].rsa_public_key_file: ",
        "junk.pem: not a PEM RSA public key (line 10)",
        "consumers[0].jwt_secrets[1].rsa_public_key_file: ",
        "ec.pem: not a PEM RSA public key (line 13)",
        "consumers[0].jwt_secrets[2].ecdsa_public_key_file: ",
        "not a PEM P-384 public key (needed for ES384) (line 16)",
        "missing.pem not found",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn demo_sample_token_matches_the_demo_config() {
    use gatehouse::plugins::acl::Decision;
    use gatehouse::plugins::{acl::Acl, jwt::Jwt};
    use std::sync::Arc;
    // The demo's HTTPS upstream reads the CA `gatehouse demo` writes next to its config.
    let dir = tempfile::tempdir().unwrap();
    gatehouse::demo::write_pki(dir.path()).unwrap();
    let rt = Arc::new(
        gatehouse::config::load_str(
            gatehouse::demo::DEMO_CONFIG,
            dir.path(),
            &gatehouse::upstream::StateRegistry::default(),
            &gatehouse::util::registry::Registry::default(),
            1,
        )
        .expect("demo config"),
    );
    let route = |name: &str| {
        rt.routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("demo route {name}"))
    };
    let token = gatehouse::demo::sample_jwt();
    for (name, want) in [("reports", Decision::Allow), ("admin", Decision::Forbidden)] {
        let plugins = &route(name).plugins;
        let (jwt, acl) = (plugins.find::<Jwt>(), plugins.find::<Acl>());
        let (Some(jwt), Some(acl)) = (jwt, acl) else {
            panic!("{name}: jwt and acl expected");
        };
        let info = jwt
            .authenticate(&token, gatehouse::plugins::jwt::now())
            .expect("sample token verifies");
        let mut ctx = gatehouse::ctx::RequestCtx::new(rt.clone());
        ctx.consumer = info.consumer;
        ctx.plugins.jwt = Some(info);
        assert_eq!(acl.decide(&ctx), want, "{name}");
        assert_eq!(rt.consumers[ctx.consumer.unwrap()].username, "demo-app");
    }
}

#[tokio::test]
async fn hide_credentials_false_forwards_the_token() {
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("j", "plugins:\n  - name: jwt\n    config: { hide_credentials: false, claims_to_verify: [] }")
        .top(&format!(
            "consumers:\n  - username: erin\n    jwt_secrets: [{{ key: e, secret: \"{HS_SECRET}\" }}]\n"
        ))
        .start();
    let t = sign_hs(Algorithm::HS256, HS_SECRET.as_bytes(), &json!({"iss": "e"}));
    let (s, _) = gw
        .send(
            gw.client
                .get(gw.url("/j"))
                .header("Authorization", format!("Bearer {t}")),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request()
            .unwrap()
            .header("authorization")
            .map(str::to_string),
        Some(format!("Bearer {t}"))
    );
}
