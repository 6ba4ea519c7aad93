//! basic-auth against a real upstream: Argon2id, bcrypt and `${ENV}` plain passwords, the
//! consumer upstream and for acl, refusals with `WWW-Authenticate`, hide_credentials,
//! load-time refusal of a literal plain password, secrets kept out of logs, /status, metrics.
use crate::common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;

const ANN_PW: &str = "ann-Pa55word-argon";
const BOB_PW: &str = "bob-Pa55word-bcrypt";
const CY_PW: &str = "cy-plain:from-env-7c1d";
const CY_ENV: &str = "GATEHOUSE_TEST_BASIC_CY_PW";

/// An Argon2id PHC string (small cost: tests are debug builds; the format is the same).
fn argon2id(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(4096, 2, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"test-salt-16byte").unwrap();
    a.hash_password(pw.as_bytes(), &salt).unwrap().to_string()
}

fn bcrypt_2b(pw: &str) -> String {
    bcrypt::hash_with_salt(pw, 4, *b"0123456789abcdef")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB)
}

fn consumers() -> String {
    format!(
        "consumers:
  - username: ann
    roles: [reader]
    basicauth_credentials: [{{ username: ann, password: \"{}\" }}]
  - username: bob
    basicauth_credentials: [{{ username: bob@example.com, password: \"{}\" }}]
  - username: cy
    roles: [reader]
    basicauth_credentials: [{{ username: cy, password: \"${{{CY_ENV}}}\" }}]
",
        argon2id(ANN_PW),
        bcrypt_2b(BOB_PW)
    )
}

fn basic(user: &str, pw: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{pw}")))
}

#[tokio::test]
async fn hashes_env_password_refusals_and_consumer() {
    std::env::set_var(CY_ENV, CY_PW);
    let (a, cfg) = upstream_u();
    let gw = cfg
        .route_u("b", "plugins: [{ name: basic-auth }]")
        .route_u("keep", "plugins: [{ name: basic-auth, config: { hide_credentials: false, realm: partners } }]")
        .route_u("readers", "plugins:\n  - { name: basic-auth }\n  - { name: acl, config: { allow_roles: [reader] } }")
        .top(&consumers())
        .start();

    for (user, pw, consumer) in [
        ("ann", ANN_PW, "ann"),
        ("bob@example.com", BOB_PW, "bob"),
        ("cy", CY_PW, "cy"),
    ] {
        // Twice: the second answer comes from the verification cache.
        for _ in 0..2 {
            let (s, body) = gw
                .send(
                    gw.client
                        .get(gw.url("/b/x"))
                        .header("Authorization", basic(user, pw))
                        .header("X-Consumer-Username", "mallory"),
                )
                .await;
            assert_eq!(s, 200, "{user}: {body}");
            let up = a.last_request().unwrap();
            assert_eq!(
                up.header_joined("x-consumer-username").as_deref(),
                Some(consumer),
                "the gateway's consumer replaces a client-sent one"
            );
            assert_eq!(
                up.header("authorization"),
                None,
                "hide_credentials by default"
            );
        }
    }
    assert_eq!(a.hits(), 6);

    // hide_credentials: false keeps the header.
    let (s, _) = gw
        .send(
            gw.client
                .get(gw.url("/keep"))
                .header("Authorization", basic("ann", ANN_PW)),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("authorization"),
        Some(basic("ann", ANN_PW).as_str())
    );

    // acl after basic-auth sees the consumer's roles.
    let (s, _) = gw
        .send(
            gw.client
                .get(gw.url("/readers"))
                .header("Authorization", basic("cy", CY_PW)),
        )
        .await;
    assert_eq!(s, 200);
    let (s, body) = gw
        .send(
            gw.client
                .get(gw.url("/readers"))
                .header("Authorization", basic("bob@example.com", BOB_PW)),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_error_body(&body, "forbidden");
    let hits = a.hits();

    // Refusals never reach the upstream.
    let wrong = [
        (None, "missing_credentials"),
        (Some("Basic ".to_string()), "missing_credentials"),
        (Some(basic("ann", "wrong-password")), "invalid_credentials"),
        (Some(basic("ann", &ANN_PW[1..])), "invalid_credentials"),
        (Some(basic("bob", BOB_PW)), "invalid_credentials"),
        (
            Some(basic("bob@example.com", ANN_PW)),
            "invalid_credentials",
        ),
        (
            Some(basic("cy", &format!("{CY_PW}x"))),
            "invalid_credentials",
        ),
        (Some(basic("nobody", "x")), "invalid_credentials"),
        (Some("Basic not*base64".to_string()), "invalid_credentials"),
        (
            Some(format!("Basic {}", STANDARD.encode("no-colon"))),
            "invalid_credentials",
        ),
        (
            Some("Bearer abc.def.ghi".to_string()),
            "invalid_credentials",
        ),
    ];
    for (path, realm) in [("/b", "gatehouse"), ("/keep", "partners")] {
        for (auth, code) in &wrong {
            let mut req = gw.client.get(gw.url(path));
            if let Some(v) = auth {
                req = req.header("Authorization", v);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{auth:?}");
            assert_eq!(
                resp.headers()["www-authenticate"],
                format!("Basic realm=\"{realm}\"").as_str()
            );
            let body = resp.text().await.unwrap();
            assert_error_body(&body, code);
            for secret in [ANN_PW, BOB_PW, CY_PW, "wrong-password"] {
                assert!(!body.contains(secret), "{body}");
            }
        }
    }
    // Two Authorization headers are ambiguous.
    let resp = gw
        .get_response(
            "/b",
            &[
                ("Authorization", &basic("ann", ANN_PW)),
                ("Authorization", &basic("ann", ANN_PW)),
            ],
        )
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(a.hits(), hits, "refused requests never reach the upstream");

    // Passwords and hashes never show in /status, metrics or the logs.
    let status = gw.status_json().await.to_string();
    let metrics = gw.metrics_text().await;
    let logs = format!("{}{}", gw.stderr(), gw.stdout());
    for text in [&status, &metrics, &logs] {
        for secret in [ANN_PW, BOB_PW, CY_PW, "$argon2id$", "$2b$04$"] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }
}

#[test]
fn literal_plain_password_is_refused_at_load() {
    let base = "server: { listen: [\"127.0.0.1:1\"] }
upstreams: [{ name: u, targets: [{ addr: \"127.0.0.1:2\" }] }]
routes: [{ name: r, paths: [\"/\"], upstream: u, plugins: [{ name: basic-auth }] }]
consumers:
  - username: ann
    basicauth_credentials:
      - username: ann
";
    // A literal, a `${NAME:-default}` fallback (the text is still in the file), a weaker
    // Argon2 variant and a broken bcrypt string.
    for (password, message) in [
        ("hunter2-literal", "a plain-text password is refused"),
        (
            "${GATEHOUSE_TEST_UNSET_VAR:-hunter2-literal}",
            "a plain-text password is refused",
        ),
        (
            "$argon2i$v=19$m=4096,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "only Argon2id",
        ),
        ("$2b$04$short", "not a valid bcrypt hash"),
    ] {
        let yaml = format!("{base}        password: \"{password}\"\n");
        let (code, err) = Gateway::validate(&yaml);
        assert_ne!(code, 0, "{password}");
        assert!(
            err.contains("consumers[0].basicauth_credentials[0].password")
                && err.contains("line 8")
                && err.contains(message),
            "{err}"
        );
        assert!(
            !err.contains("hunter2"),
            "the password is never echoed: {err}"
        );
    }
    // Duplicate usernames across consumers.
    let yaml = format!(
        "{base}        password: \"{h}\"\n  - username: bo\n    basicauth_credentials: [{{ username: ann, password: \"{h}\" }}]\n",
        h = bcrypt_2b("x")
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_ne!(code, 0);
    assert!(
        err.contains("consumers[1].basicauth_credentials[0].username")
            && err.contains("already used"),
        "{err}"
    );
}
