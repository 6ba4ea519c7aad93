//! `jwt` with a JWKS key set, against the real gateway binary: a real HTTP server in the test
//! serves the key set and counts fetches; keys are generated and tokens signed in the test.
//! Rotation through unknown-kid refreshes (and a removed kid refused, cached or not), the
//! last good set kept while the key server is down or answers garbage, a flood of random
//! kids bounded to one fetch per `min_refresh_interval`, 401 before the first fetch, a
//! `file:` source with reloads, alg confusion, and the key set surviving reloads while a
//! source no config names stops being fetched.
use crate::auth_support::pem;
use crate::common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const JWKS_PATH: &str = "/.well-known/jwks.json";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A key generated in the test: its signing key and its public JWK (with `kid`).
struct Key {
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    jwk: Value,
    public_pem: String,
}

fn rsa(kid: &str) -> Key {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
    let private = pem("PRIVATE KEY", kp.as_der().unwrap().as_ref());
    Key {
        kid: kid.into(),
        alg: Algorithm::RS256,
        signing: EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)}),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

fn ec(kid: &str) -> Key {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self as sig, KeyPair};
    let kp = sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let private = pem("PRIVATE KEY", kp.to_pkcs8v1().unwrap().as_ref());
    Key {
        kid: kid.into(),
        alg: Algorithm::ES256,
        signing: EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..])}),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn claims(sub: &str) -> Value {
    json!({"iss": "https://idp.example", "sub": sub, "exp": now() + 300,
           "roles": ["reader"], "n": rand_suffix()})
}

/// Makes every token distinct (so a verification is never answered from the cache).
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A token signed by `key` with its algorithm, carrying `kid` (None: no kid).
fn token_kid(key: &Key, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, &key.signing).unwrap()
}

fn token(key: &Key, sub: &str) -> String {
    token_kid(key, Some(&key.kid), &claims(sub))
}

/// A JWKS server: a test backend whose body is the key set; its hits are the fetches.
fn key_server(doc: &str) -> Backend {
    let s = Backend::start("idp");
    s.set_body(Some(doc));
    s
}

fn jwks_url(s: &Backend) -> String {
    format!("http://{}{JWKS_PATH}", s.addr())
}

/// A gateway with one route `/api` guarded by `jwt` with `jwks_block` (plus `extra_top`).
fn gateway(api: &Backend, jwks_block: &str, extra_top: &str) -> Gateway {
    config(api, jwks_block, extra_top).start()
}

fn config(api: &Backend, jwks_block: &str, extra_top: &str) -> Cfg {
    Cfg::new()
        .upstream("api", &[target(api)], "")
        .route(
            "api",
            &["/api"],
            "api",
            &format!("plugins:\n  - name: jwt\n    config:\n      jwks: {jwks_block}"),
        )
        .top(extra_top)
}

async fn call(gw: &Gateway, token: &str) -> (u16, String) {
    gw.send(
        gw.client
            .get(gw.url("/api/x"))
            .header("Authorization", format!("Bearer {token}")),
    )
    .await
}

/// Asserts the contract's 401 for a refused token.
fn assert_refused(status: u16, body: &str, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    assert_error_body(body, "invalid_token");
}

async fn metric_value(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics_text().await, name, labels).unwrap_or(0.0)
}

async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, cond: F) {
    assert!(
        wait_until(limit, cond).await,
        "timed out waiting for {what}"
    );
}

/// Sends `tokens` all at once; every answer must be the JSON 401.
async fn flood(gw: &Gateway, tokens: Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for t in tokens {
        let req = gw
            .client
            .get(gw.url("/api/flood"))
            .header("Authorization", format!("Bearer {t}"));
        set.spawn(async move {
            let r = req.send().await.expect("flood request");
            let status = r.status().as_u16();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            (status, challenge, r.text().await.unwrap_or_default())
        });
    }
    while let Some(r) = set.join_next().await {
        let (status, challenge, body) = r.unwrap();
        assert_refused(status, &body, "random kid");
        assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
    }
}

#[tokio::test]
async fn rotation_adds_by_unknown_kid_and_a_removed_kid_is_refused() {
    let a = rsa("A");
    let b = ec("B");
    let idp = key_server(&jwks(&[&a]));
    let api = Backend::start("api");
    let gw = gateway(
        &api,
        &format!(
            "{{ url: \"{}\", refresh_interval: 1h, min_refresh_interval: 500ms, consumer_claim: sub }}",
            jwks_url(&idp)
        ),
        "consumers:\n  - username: alice\n",
    );
    let ta = token(&a, "alice");
    // The first fetch starts with the server; the first request may wait for it.
    let (s, body) = call(&gw, &ta).await;
    assert_eq!(s, 200, "{body}");
    let up = api.last_request().unwrap();
    assert_eq!(up.header("x-consumer-username"), Some("alice"));
    assert_eq!(up.header("x-authenticated-roles"), Some("reader"));
    assert_eq!(up.header("authorization"), None, "token hidden upstream");
    assert_eq!(idp.hits(), 1);
    assert_eq!(idp.last_request().unwrap().path, JWKS_PATH);
    // A subject that is no consumer: accepted, anonymous (roles only).
    let (s, _) = call(&gw, &token(&a, "someone-else")).await;
    assert_eq!(s, 200);
    let up = api.last_request().unwrap();
    assert_eq!(up.header("x-consumer-username"), None);
    assert_eq!(up.header("x-authenticated-roles"), Some("reader"));

    // Rotation: the IdP publishes B; a B token makes the gateway fetch once.
    idp.set_body(Some(&jwks(&[&a, &b])));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (s, body) = call(&gw, &token(&b, "alice")).await;
    assert_eq!(s, 200, "kid B after an unknown-kid refresh: {body}");
    assert_eq!(idp.hits(), 2);

    // The IdP drops A. Until a refresh the gateway still has it (A's token is cached too).
    idp.set_body(Some(&jwks(&[&b])));
    assert_eq!(call(&gw, &ta).await.0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // An unknown kid triggers the refresh that removes A.
    let (s, body) = call(&gw, &token_kid(&b, Some("C"), &claims("alice"))).await;
    assert_refused(s, &body, "unknown kid C");
    assert_eq!(idp.hits(), 3);
    let (s, body) = call(&gw, &ta).await;
    assert_refused(s, &body, "cached token of removed kid A");
    let (s, body) = call(&gw, &token(&a, "alice")).await;
    assert_refused(s, &body, "fresh token of removed kid A");
    assert_eq!(call(&gw, &token(&b, "alice")).await.0, 200);
    assert_eq!(idp.hits(), 3, "known kids never fetch");

    let text = gw.metrics_text().await;
    let src = jwks_url(&idp);
    let l = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("source", src.as_str())];
        v.extend_from_slice(extra);
        v
    };
    assert_eq!(metric(&text, "jwt_jwks_keys", &l(&[])), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "jwt_jwks_fetches_total",
            &l(&[("outcome", "success")])
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "jwt_jwks_fetches_total", &l(&[("outcome", "error")])),
        Some(0.0)
    );
    assert!(
        metric(
            &text,
            "jwt_jwks_unknown_kid_refusals_total",
            &l(&[("reason", "not_in_set")])
        )
        .unwrap()
            >= 1.0
    );
    assert!(!gw.stderr().contains(&ta), "tokens are never logged");
}

#[tokio::test]
async fn last_good_set_is_kept_when_the_key_server_fails() {
    let a = rsa("A");
    let b = ec("B");
    let idp = key_server(&jwks(&[&a, &b]));
    let api = Backend::start("api");
    let gw = gateway(
        &api,
        &format!(
            "{{ url: \"{}\", refresh_interval: 1s, min_refresh_interval: 200ms, timeout: 500ms }}",
            jwks_url(&idp)
        ),
        "",
    );
    assert_eq!(call(&gw, &token(&b, "u")).await.0, 200);
    let src = jwks_url(&idp);
    let outcome = |o: &'static str| [("source", src.clone()), ("outcome", o.to_string())];
    for (what, outcome_label) in [
        ("server stopped", "error"),
        ("HTTP 500", "error"),
        ("not JSON", "invalid"),
        ("too large", "invalid"),
        ("no usable key", "invalid"),
        ("slower than timeout", "error"),
    ] {
        match what {
            "server stopped" => idp.stop(),
            "HTTP 500" => {
                idp.restart();
                idp.set_status(500);
            }
            "not JSON" => {
                idp.set_status(200);
                idp.set_body(Some("<html>maintenance</html>"));
            }
            "too large" => idp.set_body(Some(&format!(
                "{{\"keys\": [], \"pad\": \"{}\"}}",
                "x".repeat(1_100_000)
            ))),
            "no usable key" => idp.set_body(Some(
                &json!({"keys": [{"kty": "oct", "kid": "A", "k": "c2VjcmV0"}]}).to_string(),
            )),
            _ => {
                idp.set_body(Some(&jwks(&[&a, &b])));
                idp.set_delay(Duration::from_millis(1500));
            }
        }
        let labels = outcome(outcome_label);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let before = metric_value(&gw, "jwt_jwks_fetches_total", &labels).await;
        // Scheduled refreshes keep failing; wait for one after this change.
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let v = metric_value(&gw, "jwt_jwks_fetches_total", &labels).await;
            if v > before {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: no failed fetch counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Fresh tokens (never cached) of both kids still verify.
        for k in [&a, &b] {
            let (s, body) = call(&gw, &token(k, "u")).await;
            assert_eq!(s, 200, "{what}: kid {} refused: {body}", k.kid);
        }
        assert_eq!(
            metric_value(&gw, "jwt_jwks_keys", &[("source", src.as_str())]).await,
            2.0,
            "{what}"
        );
    }
    let err = gw.stderr();
    assert!(err.contains("keeping the last good key set"), "{err}");
    assert!(err.contains("HTTP status 500"), "{err}");
}

#[tokio::test]
async fn flood_of_random_kids_fetches_at_most_once_per_min_refresh_interval() {
    let a = ec("A");
    let idp = key_server(&jwks(&[&a]));
    let api = Backend::start("api");
    let gw = gateway(
        &api,
        &format!(
            "{{ url: \"{}\", refresh_interval: 1h, min_refresh_interval: 3s, timeout: 3s }}",
            jwks_url(&idp)
        ),
        "",
    );
    let random_kids = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let kid = format!("random-{}-{i}", rand_suffix());
                token_kid(&a, Some(&kid), &claims("u"))
            })
            .collect()
    };
    let wave_a = random_kids(50);
    let wave_b = random_kids(40);
    let wave_c = random_kids(40);
    wait_for("the first fetch", Duration::from_secs(5), || {
        idp.hits() == 1
    })
    .await;
    let first_fetch = Instant::now();
    let src = jwks_url(&idp);
    let ok = [("source", src.as_str()), ("outcome", "success")];
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_value(&gw, "jwt_jwks_fetches_total", &ok).await < 1.0 {
        assert!(Instant::now() < deadline, "first fetch not installed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Within min_refresh_interval of the first fetch: refused at once, no fetch.
    flood(&gw, wave_a).await;
    assert_eq!(idp.hits(), 1, "wave A must not fetch");

    // After it: one fetch, shared by every concurrent request (the key server is slow).
    let wait = Duration::from_millis(3300).saturating_sub(first_fetch.elapsed());
    tokio::time::sleep(wait).await;
    idp.set_delay(Duration::from_millis(1500));
    flood(&gw, wave_b).await;
    assert_eq!(idp.hits(), 2, "wave B shares one fetch");
    // And right after that fetch: refused at once again.
    idp.set_delay(Duration::ZERO);
    flood(&gw, wave_c).await;
    assert_eq!(idp.hits(), 2, "wave C must not fetch");

    assert_eq!(api.hits(), 0, "no refused request reaches the upstream");
    assert_eq!(call(&gw, &token(&a, "u")).await.0, 200);
    let refusals = |r: &'static str| {
        let src = src.clone();
        let gw = &gw;
        async move {
            metric_value(
                gw,
                "jwt_jwks_unknown_kid_refusals_total",
                &[("source", src.as_str()), ("reason", r)],
            )
            .await
        }
    };
    let rate_limited = refusals("rate_limited").await;
    let waited = refusals("not_in_set").await;
    assert!(rate_limited >= 90.0, "waves A and C: {rate_limited}");
    assert!(waited >= 1.0, "wave B waited for the fetch: {waited}");
    assert_eq!(rate_limited + waited + refusals("timeout").await, 130.0);
}

#[tokio::test]
async fn requests_before_the_first_successful_fetch_get_401() {
    let a = rsa("A");
    let idp = key_server(&jwks(&[&a]));
    let api = Backend::start("api");
    let cfg = config(
        &api,
        &format!(
            "{{ url: \"{}\", refresh_interval: 1h, min_refresh_interval: 300ms, timeout: 500ms }}",
            jwks_url(&idp)
        ),
        "",
    );
    // Validation never touches the network.
    let (code, err) = Gateway::validate(&cfg.yaml());
    assert_eq!(code, 0, "{err}");
    assert_eq!(idp.hits(), 0, "-t fetched the key set");
    idp.stop();
    let gw = cfg.start();
    let t = token(&a, "u");
    let (s, body) = call(&gw, &t).await;
    assert_refused(s, &body, "no key set yet");
    // Without kid, too.
    let (s, body) = call(&gw, &token_kid(&a, None, &claims("u"))).await;
    assert_refused(s, &body, "no key set yet, no kid");
    // The key server comes up: the next request after min_refresh_interval fetches.
    idp.restart();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (s, body) = call(&gw, &t).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(idp.hits(), 1);
    // A set of one key also serves tokens without kid.
    assert_eq!(call(&gw, &token_kid(&a, None, &claims("u"))).await.0, 200);
}

#[tokio::test]
async fn file_source_is_read_at_load_and_on_unknown_kids() {
    let a = rsa("A");
    let b = ec("B");
    let api = Backend::start("api");
    let cfg = config(
        &api,
        "{ file: keys/jwks.json, min_refresh_interval: 200ms }",
        "",
    );
    let keys_dir = cfg.dir.path().join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let file = keys_dir.join("jwks.json");
    std::fs::write(&file, jwks(&[&a])).unwrap();
    let base = cfg.yaml();
    let gw = cfg.start();
    assert_eq!(call(&gw, &token(&a, "u")).await.0, 200);
    let (s, body) = call(&gw, &token(&b, "u")).await;
    assert_refused(s, &body, "B not in the file yet");

    std::fs::write(&file, jwks(&[&a, &b])).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (s, body) = call(&gw, &token(&b, "u")).await;
    assert_eq!(s, 200, "B after the file changed: {body}");

    // A reload with a broken file is refused with the path and line; the keys stay.
    std::fs::write(&file, "{\"keys\": \"nope\"}").unwrap();
    gw.write_config_yaml(&format!("{base}# touched\n"));
    let (status, resp) = gw.admin_reload().await;
    assert_eq!(status, 422, "{resp}");
    let text = resp.to_string();
    assert!(
        text.contains("routes[0].plugins[0].config.jwks.file"),
        "{text}"
    );
    assert!(text.contains("not a JWK set"), "{text}");
    for k in [&a, &b] {
        assert_eq!(call(&gw, &token(k, "u")).await.0, 200, "kid {}", k.kid);
    }
    std::fs::write(&file, jwks(&[&b])).unwrap();
    let (status, resp) = gw.admin_reload().await;
    assert_eq!(status, 200, "{resp}");
    // The reload read the file: A is gone at once.
    let (s, body) = call(&gw, &token(&a, "u")).await;
    assert_refused(s, &body, "A removed from the file");
    assert_eq!(call(&gw, &token(&b, "u")).await.0, 200);

    // `-t` on a config whose file is missing names it with its line.
    std::fs::remove_file(&file).unwrap();
    let (code, err) = validate_file(&gw.config_path(), &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("routes[0].plugins[0].config.jwks.file: ") && err.contains("(line "),
        "{err}"
    );
    assert!(err.contains("jwks.json: cannot read it"), "{err}");
}

#[tokio::test]
async fn alg_confusion_and_forged_tokens_are_refused() {
    let a = rsa("A");
    let e = ec("E");
    let other = rsa("A");
    let doc = jwks(&[&a, &e]);
    let idp = key_server(&doc);
    let api = Backend::start("api");
    let gw = gateway(&api, &format!("{{ url: \"{}\" }}", jwks_url(&idp)), "");
    let c = claims("mallory");
    let hs = |secret: &[u8]| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("A".into());
        encode(&h, &c, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    };
    let n = URL_SAFE_NO_PAD
        .decode(a.jwk["n"].as_str().unwrap())
        .unwrap();
    let payload = URL_SAFE_NO_PAD.encode(c.to_string());
    let with_alg = |alg: Algorithm, key: &Key, kid: &str| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, &c, &key.signing).unwrap()
    };
    let cases = [
        (
            "HS256 keyed with the RSA public key PEM",
            hs(a.public_pem.as_bytes()),
        ),
        ("HS256 keyed with the JWK modulus", hs(&n)),
        ("HS256 keyed with the JWKS document", hs(doc.as_bytes())),
        ("HS256 keyed with the EC public key PEM", {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("E".into());
            encode(
                &h,
                &c,
                &EncodingKey::from_secret(e.public_pem.as_bytes()).unwrap(),
            )
            .unwrap()
        }),
        (
            "alg none",
            format!(
                "{}.{payload}.",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"A"}"#)
            ),
        ),
        (
            "RS384 on a key pinned to RS256",
            with_alg(Algorithm::RS384, &a, "A"),
        ),
        (
            "PS256 on a key pinned to RS256",
            with_alg(Algorithm::PS256, &a, "A"),
        ),
        ("RS256 on the EC key", with_alg(Algorithm::RS256, &a, "E")),
        ("ES256 on the RSA key", with_alg(Algorithm::ES256, &e, "A")),
        (
            "signed by another key with kid A",
            with_alg(Algorithm::RS256, &other, "A"),
        ),
        ("no kid among two keys", token_kid(&a, None, &c)),
    ];
    for (what, t) in &cases {
        let (s, body) = call(&gw, t).await;
        assert_refused(s, &body, what);
        assert!(!body.contains(t.as_str()), "{what}: token echoed");
    }
    assert_eq!(api.hits(), 0);
    assert_eq!(call(&gw, &token(&a, "u")).await.0, 200);
    assert_eq!(call(&gw, &token(&e, "u")).await.0, 200);
}

#[tokio::test]
async fn key_set_survives_reloads_and_stops_with_its_source() {
    let a = rsa("A");
    let idp = key_server(&jwks(&[&a]));
    let api = Backend::start("api");
    let block = format!(
        "{{ url: \"{}\", refresh_interval: 1s, min_refresh_interval: 200ms, timeout: 500ms }}",
        jwks_url(&idp)
    );
    let cfg = config(&api, &block, "");
    let gw = cfg.start();
    assert_eq!(call(&gw, &token(&a, "u")).await.0, 200);

    // The key server goes away, then the config is reloaded (another route added): the
    // keys are not dropped with the old config.
    idp.stop();
    let mut next = config(&api, &block, "");
    next = next.route("other", &["/other"], "api", "");
    gw.write_config(next);
    let (status, resp) = gw.admin_reload().await;
    assert_eq!(status, 200, "{resp}");
    let (s, body) = call(&gw, &token(&a, "u")).await;
    assert_eq!(s, 200, "keys kept across the reload: {body}");

    // One refresher, not one per config generation: after another reload, fetches keep
    // the 1s schedule (about 4 in 4s; two refreshers would make about 8).
    let mut again = config(&api, &block, "");
    again = again.route("third", &["/third"], "api", "");
    gw.write_config(again);
    assert_eq!(gw.admin_reload().await.0, 200);
    idp.restart();
    let src = jwks_url(&idp);
    let ok = [("source", src.as_str()), ("outcome", "success")];
    let before = metric_value(&gw, "jwt_jwks_fetches_total", &ok).await;
    wait_for("a fetch after the restart", Duration::from_secs(8), || {
        idp.hits() >= 1
    })
    .await;
    let start_hits = idp.hits();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let in_window = idp.hits() - start_hits;
    assert!(
        (2..=6).contains(&in_window),
        "fetches in 4s with refresh_interval 1s: {in_window}"
    );
    assert!(metric_value(&gw, "jwt_jwks_fetches_total", &ok).await > before);

    // The source leaves the config: its refresher stops and its series go.
    let plain = Cfg::new()
        .upstream("api", &[target(&api)], "")
        .route("api", &["/api"], "api", "");
    gw.write_config(plain);
    assert_eq!(gw.admin_reload().await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let settled = idp.hits();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(idp.hits(), settled, "no fetch once the source is gone");
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "jwt_jwks_keys", &[("source", src.as_str())]),
        None
    );
    assert_eq!(
        metric(&text, "jwt_jwks_fetches_total", &ok),
        None,
        "series of a removed source disappear"
    );
}
