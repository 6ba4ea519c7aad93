//! JWK parsing, key pinning, the cache generation, consumer mapping, config errors and the
//! refresh rate limit, on key sets read from files (no network).

use super::*;
use crate::ctx::Runtime;
use crate::plugins::jwt::parse_jws;
use crate::plugins::Plugin;
use crate::upstream::StateRegistry;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const NOW: f64 = 1_800_000_000.0;

fn b64u(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    let b = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// A signing key and its public JWK (without kid/alg/use: tests add them).
struct TestKey {
    encoding: EncodingKey,
    jwk: Value,
    /// SPKI PEM of the public key (for the alg confusion attempt).
    public_pem: String,
}

fn rsa_key() -> TestKey {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
    let private = pem("PRIVATE KEY", kp.as_der().unwrap().as_ref());
    TestKey {
        encoding: EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        jwk: json!({"kty": "RSA", "n": b64u(&c.n), "e": b64u(&c.e)}),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

fn ec_key(p384: bool) -> TestKey {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self as sig, KeyPair};
    let (alg, crv, size) = if p384 {
        (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
    } else {
        (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
    };
    let kp = sig::EcdsaKeyPair::generate(alg).unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let private = pem("PRIVATE KEY", kp.to_pkcs8v1().unwrap().as_ref());
    TestKey {
        encoding: EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
        jwk: json!({"kty": "EC", "crv": crv, "x": b64u(&point[1..1 + size]),
                    "y": b64u(&point[1 + size..])}),
        public_pem: pem("PUBLIC KEY", kp.public_key().as_der().unwrap().as_ref()),
    }
}

fn with(jwk: &Value, extra: Value) -> Value {
    let mut j = jwk.clone();
    for (k, v) in extra.as_object().unwrap() {
        j[k] = v.clone();
    }
    j
}

fn set_of(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn sign(key: &TestKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, &key.encoding).unwrap()
}

fn claims() -> Value {
    json!({"iss": "https://idp.example", "sub": "alice", "exp": NOW + 60.0, "roles": ["r1"]})
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

#[test]
fn usable_keys_are_pinned_to_their_algorithms() {
    let rsa = rsa_key();
    let p256 = ec_key(false);
    let p384 = ec_key(true);
    let doc = set_of(&[
        with(&rsa.jwk, json!({"kid": "rsa-any"})),
        with(
            &rsa.jwk,
            json!({"kid": "rsa-ps", "alg": "PS384", "use": "sig"}),
        ),
        with(&p256.jwk, json!({"kid": "p256", "key_ops": ["verify"]})),
        with(
            &p384.jwk,
            json!({"kid": "p384", "alg": "ES384", "x5t": "ignored member"}),
        ),
    ]);
    let parsed = parse_jwks(doc.as_bytes()).unwrap();
    assert!(parsed.ignored.is_empty(), "{:?}", parsed.ignored);
    let algs: Vec<(String, Vec<&str>)> = parsed
        .keys
        .iter()
        .map(|(kid, k)| (kid.clone().unwrap(), alg_names(k.algs)))
        .collect();
    assert_eq!(
        algs,
        vec![
            (
                "rsa-any".into(),
                vec!["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
            ),
            ("rsa-ps".into(), vec!["PS384"]),
            ("p256".into(), vec!["ES256"]),
            ("p384".into(), vec!["ES384"]),
        ]
    );
    // The same material with other algorithms is another key (fingerprint).
    assert_ne!(parsed.keys[0].1.fingerprint, parsed.keys[1].1.fingerprint);
    // Leading zeros and padding in n/e are tolerated (some encoders emit them).
    let n = URL_SAFE_NO_PAD
        .decode(rsa.jwk["n"].as_str().unwrap())
        .unwrap();
    let padded = json!({"kty": "RSA", "kid": "z", "e": "AQAB=",
                        "n": b64u(&[&[0u8][..], &n].concat())});
    let p = parse_jwks(set_of(&[padded]).as_bytes()).unwrap();
    assert_eq!(p.keys[0].1.fingerprint, parsed.keys[0].1.fingerprint);
}

#[test]
fn unusable_keys_are_ignored_and_named() {
    let rsa = rsa_key();
    let p256 = ec_key(false);
    let small_n = {
        let mut n = vec![0x80u8];
        n.extend(vec![0u8; 126]);
        n.push(1);
        n
    };
    let mut bad_point = p256.jwk.clone();
    bad_point["y"] = json!(b64u(&[7u8; 32]));
    let cases = [
        (
            with(&rsa.jwk, json!({"kid": "enc", "use": "enc"})),
            "use \"enc\" is not \"sig\"",
        ),
        (
            with(&rsa.jwk, json!({"kid": "ops", "key_ops": ["encrypt"]})),
            "key_ops without \"verify\"",
        ),
        (
            json!({"kid": "oct", "kty": "oct", "k": "c2VjcmV0"}),
            "unsupported kty \"oct\"",
        ),
        (
            json!({"kid": "ed", "kty": "OKP", "crv": "Ed25519", "x": "AA"}),
            "unsupported kty \"OKP\"",
        ),
        (
            with(&rsa.jwk, json!({"kid": "hs", "alg": "HS256"})),
            "unsupported alg \"HS256\"",
        ),
        (
            with(&rsa.jwk, json!({"kid": "mix", "alg": "ES256"})),
            "alg ES256 does not fit this RSA key",
        ),
        (
            with(&p256.jwk, json!({"kid": "p256-384", "alg": "ES384"})),
            "alg ES384 does not fit this EC key",
        ),
        (
            with(&p256.jwk, json!({"kid": "p521", "crv": "P-521"})),
            "unsupported curve \"P-521\"",
        ),
        (
            json!({"kid": "small", "kty": "RSA", "n": b64u(&small_n), "e": "AQAB"}),
            "RSA key of 1024 bits",
        ),
        (
            with(&rsa.jwk, json!({"kid": "b64", "n": "not base64!"})),
            "\"n\" is not base64url",
        ),
        (
            json!({"kid": "no-e", "kty": "RSA", "n": rsa.jwk["n"]}),
            "no \"e\"",
        ),
        (
            with(&bad_point, json!({"kid": "off-curve"})),
            "not a point on P-256",
        ),
        (json!({"kid": 7, "kty": "RSA"}), "keys[12]: not a JWK"),
        (json!("a string"), "keys[13]: not a JWK"),
    ];
    let mut keys: Vec<Value> = cases.iter().map(|(k, _)| k.clone()).collect();
    keys.push(with(&rsa.jwk, json!({"kid": "good"})));
    keys.push(with(&p256.jwk, json!({"kid": "good"})));
    keys.push(p256.jwk.clone());
    let parsed = parse_jwks(set_of(&keys).as_bytes()).unwrap();
    assert_eq!(parsed.keys.len(), 1, "only `good` is usable");
    assert_eq!(parsed.keys[0].0.as_deref(), Some("good"));
    assert_eq!(
        parsed.ignored.len(),
        cases.len() + 2,
        "{:#?}",
        parsed.ignored
    );
    for (i, (_, want)) in cases.iter().enumerate() {
        assert!(
            parsed.ignored[i].contains(want),
            "case {i}: {:?}",
            parsed.ignored[i]
        );
    }
    assert!(parsed
        .ignored
        .iter()
        .any(|m| m == "kid \"good\": duplicate kid"));
    assert!(parsed
        .ignored
        .iter()
        .any(|m| m == "a key without kid in a set of several"));
    // Key material never appears in the reasons.
    let n = rsa.jwk["n"].as_str().unwrap();
    assert!(!parsed.ignored.join(" ").contains(&n[..20]));
}

#[test]
fn documents_that_are_not_key_sets_are_errors() {
    let rsa = rsa_key();
    let many: Vec<Value> = (0..=MAX_JWKS_KEYS)
        .map(|i| json!({"kid": i.to_string(), "kty": "oct"}))
        .collect();
    for (doc, want) in [
        (
            "<html>login</html>".to_string(),
            "not JSON (line 1 column 1)",
        ),
        ("{\"keys\": {}}".to_string(), "not a JWK set"),
        ("[1, 2]".to_string(), "not a JWK set"),
        ("{\"keys\": []}".to_string(), "no keys"),
        (
            set_of(&[with(&rsa.jwk, json!({"kid": "a", "use": "enc"}))]),
            "no usable key (1 ignored: kid \"a\": use \"enc\" is not \"sig\")",
        ),
        (set_of(&many), "257 keys; at most 256 are accepted"),
        (" ".repeat(MAX_JWKS_BYTES + 1), "larger than 1048576 bytes"),
    ] {
        let e = parse_jwks(doc.as_bytes()).unwrap_err();
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
    // One key without kid is usable (it is what tokens without kid get).
    let p = parse_jwks(set_of(std::slice::from_ref(&rsa.jwk)).as_bytes()).unwrap();
    assert_eq!(p.keys.len(), 1);
}

#[test]
fn cache_control_and_labels() {
    let h = |v: &[&str]| {
        let mut m = http::HeaderMap::new();
        for v in v {
            m.append(http::header::CACHE_CONTROL, v.parse().unwrap());
        }
        max_age(&m)
    };
    assert_eq!(h(&[]), None);
    assert_eq!(h(&["public, max-age=300"]), Some(Duration::from_secs(300)));
    assert_eq!(
        h(&["public", "Max-Age=\"60\""]),
        Some(Duration::from_secs(60))
    );
    assert_eq!(h(&["max-age=300, no-cache"]), Some(Duration::ZERO));
    assert_eq!(h(&["no-store"]), Some(Duration::ZERO));
    assert_eq!(h(&["max-age=soon"]), None);

    let label = |u: &str| Source::Url(parse_url(u).unwrap()).label();
    assert_eq!(
        label("https://idp.example/.well-known/jwks.json"),
        "https://idp.example/.well-known/jwks.json"
    );
    let l = label("https://user:pw@idp.example:8443/keys?api_key=s3cr3t");
    assert!(
        l.starts_with("https://idp.example:8443/keys?sha256:"),
        "{l}"
    );
    assert!(!l.contains("s3cr3t") && !l.contains("pw"), "{l}");
    assert_ne!(l, label("https://idp.example:8443/keys?api_key=other"));
}

#[test]
fn jitter_takes_at_most_a_tenth() {
    for _ in 0..100 {
        let j = jitter(Duration::from_secs(600));
        assert!(j <= Duration::from_secs(600) && j >= Duration::from_secs(540));
    }
    assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
}

// ---------------------------------------------------------------------------------------------
// The plugin on a file key set
// ---------------------------------------------------------------------------------------------

struct Fixture {
    registry: Registry,
    rt: Runtime,
    dir: tempfile::TempDir,
}

fn yaml(jwt_config: &str) -> String {
    format!(
        "server: {{ listen: [\"127.0.0.1:1\"] }}
upstreams:
  - name: u
    targets: [{{ addr: \"127.0.0.1:2\" }}]
consumers:
  - username: alice
  - username: bob
    jwt_secrets:
      - {{ key: hs-issuer, algorithm: HS256, secret: \"unit-test-secret-0123456789-abcdef\" }}
{}",
        crate::plugins::jwt::tests::jwt_route(jwt_config)
    )
}

fn load(dir: &Path, jwt_config: &str) -> Result<Runtime, String> {
    load_in(&Registry::default(), dir, jwt_config)
}

/// [`load`] with the state that survives reloads in `registry`.
fn load_in(registry: &Registry, dir: &Path, jwt_config: &str) -> Result<Runtime, String> {
    crate::config::load_str(
        &yaml(jwt_config),
        dir,
        &StateRegistry::default(),
        registry,
        1,
    )
    .map_err(|e| e.to_string())
}

impl Fixture {
    fn new(jwks_doc: &str, jwt_config: &str) -> Fixture {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks_doc).unwrap();
        let registry = Registry::default();
        let rt = load_in(&registry, dir.path(), jwt_config).unwrap_or_else(|e| panic!("{e}"));
        Fixture { rt, dir, registry }
    }

    fn jwt(&self) -> &Jwt {
        match &*self.rt.routes[0].plugins.plugins[0] {
            Plugin::Jwt(j) => j,
            other => panic!("not jwt: {other:?}"),
        }
    }

    fn set(&self) -> &Arc<KeySet> {
        &self.jwt().jwks.as_ref().unwrap().set
    }
}

#[test]
fn tokens_verify_with_the_key_their_kid_names() {
    let rsa = rsa_key();
    let rsa2 = rsa_key();
    let p256 = ec_key(false);
    let doc = set_of(&[
        with(&rsa.jwk, json!({"kid": "A", "alg": "RS256"})),
        with(&rsa2.jwk, json!({"kid": "B"})),
        with(&p256.jwk, json!({"kid": "E"})),
    ]);
    let f = Fixture::new(&doc, "jwks: { file: jwks.json }");
    let j = f.jwt();
    let c = claims();
    for (name, token) in [
        ("RS256 A", sign(&rsa, Algorithm::RS256, Some("A"), &c)),
        ("RS512 B", sign(&rsa2, Algorithm::RS512, Some("B"), &c)),
        ("PS256 B", sign(&rsa2, Algorithm::PS256, Some("B"), &c)),
        ("ES256 E", sign(&p256, Algorithm::ES256, Some("E"), &c)),
    ] {
        let info = j
            .authenticate(&token, NOW)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(info.consumer, None, "{name}: no consumer_claim configured");
        assert_eq!(info.roles.as_ref().unwrap(), "r1");
        assert!(info.jwks_generation > 0);
    }
    let refused = |token: String, want: Failure, name: &str| {
        assert_eq!(j.authenticate(&token, NOW).unwrap_err(), want, "{name}");
    };
    // A's JWK pins RS256: the same key with RS384 or PS256 is refused.
    refused(
        sign(&rsa, Algorithm::RS384, Some("A"), &c),
        Failure::Algorithm,
        "RS384 on A",
    );
    refused(
        sign(&rsa, Algorithm::PS256, Some("A"), &c),
        Failure::Algorithm,
        "PS256 on A",
    );
    // Signed by another key than the one kid names.
    refused(
        sign(&rsa2, Algorithm::RS256, Some("A"), &c),
        Failure::Signature,
        "wrong key",
    );
    // An EC algorithm on an RSA key, and the RSA key's token on the EC kid.
    refused(
        sign(&p256, Algorithm::ES256, Some("B"), &c),
        Failure::Algorithm,
        "ES256 on B",
    );
    refused(
        sign(&rsa, Algorithm::RS256, Some("E"), &c),
        Failure::Algorithm,
        "RS256 on E",
    );
    // Alg confusion: HS256 keyed with the public key (PEM or the JWK's modulus).
    for secret in [
        rsa.public_pem.as_bytes().to_vec(),
        URL_SAFE_NO_PAD
            .decode(rsa.jwk["n"].as_str().unwrap())
            .unwrap(),
        doc.as_bytes().to_vec(),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("A".into());
        let t = encode(&h, &c, &EncodingKey::from_secret(&secret).unwrap()).unwrap();
        refused(t, Failure::Algorithm, "HS256 with the public key");
    }
    let sig = sign(&rsa, Algorithm::RS256, Some("A"), &c);
    let none = format!(
        "{}.{}.",
        b64u(br#"{"alg":"none","kid":"A"}"#),
        sig.split('.').nth(1).unwrap()
    );
    refused(none, Failure::Algorithm, "alg none");
    // Two kids (parsers differ on which one counts): malformed, whatever the signature.
    let two_kids = format!(
        "{}.{}",
        b64u(br#"{"alg":"RS256","kid":"Z","kid":"A"}"#),
        sig.split_once('.').unwrap().1
    );
    refused(two_kids, Failure::Malformed, "duplicate kid");
    // Unknown kid: worth a refresh; no kid among several keys: refused outright.
    refused(
        sign(&rsa, Algorithm::RS256, Some("Z"), &c),
        Failure::UnknownKid,
        "unknown kid",
    );
    refused(
        sign(&rsa, Algorithm::RS256, None, &c),
        Failure::UnknownKey,
        "no kid",
    );
    // Claims are still checked for key-set tokens.
    let expired = json!({"sub": "alice", "exp": NOW - 1.0});
    refused(
        sign(&rsa, Algorithm::RS256, Some("A"), &expired),
        Failure::Expired,
        "expired",
    );
    // jwt_secrets entries still win when the key claim names one.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "hs-issuer", "exp": NOW + 60.0}),
        &EncodingKey::from_secret(b"unit-test-secret-0123456789-abcdef").unwrap(),
    )
    .unwrap();
    let info = j.authenticate(&hs, NOW).unwrap();
    assert_eq!((info.consumer, info.jwks_generation), (Some(1), 0));
}

#[test]
fn plugin_algorithms_narrow_the_keys_and_one_key_serves_tokens_without_kid() {
    let rsa = rsa_key();
    let f = Fixture::new(
        &set_of(std::slice::from_ref(&rsa.jwk)),
        "jwks: { file: jwks.json, algorithms: [PS256] }",
    );
    let j = f.jwt();
    let c = claims();
    assert!(j
        .authenticate(&sign(&rsa, Algorithm::PS256, None, &c), NOW)
        .is_ok());
    assert_eq!(
        j.authenticate(&sign(&rsa, Algorithm::RS256, None, &c), NOW)
            .unwrap_err(),
        Failure::Algorithm
    );
    // A kid that is not in the set is unknown even when the set has one key.
    assert_eq!(
        j.authenticate(&sign(&rsa, Algorithm::PS256, Some("x"), &c), NOW)
            .unwrap_err(),
        Failure::UnknownKid
    );
}

#[test]
fn consumer_claim_maps_to_configured_consumers_only() {
    let rsa = rsa_key();
    let f = Fixture::new(
        &set_of(&[with(&rsa.jwk, json!({"kid": "A"}))]),
        "jwks: { file: jwks.json, consumer_claim: sub }",
    );
    let j = f.jwt();
    let mut c = claims();
    let info = j
        .authenticate(&sign(&rsa, Algorithm::RS256, Some("A"), &c), NOW)
        .unwrap();
    assert_eq!(info.consumer, Some(0), "sub alice is consumer 0");
    c["sub"] = json!("mallory");
    let info = j
        .authenticate(&sign(&rsa, Algorithm::RS256, Some("A"), &c), NOW)
        .unwrap();
    assert_eq!(info.consumer, None, "unknown subject: anonymous");
    c["sub"] = json!(["alice"]);
    let info = j
        .authenticate(&sign(&rsa, Algorithm::RS256, Some("A"), &c), NOW)
        .unwrap();
    assert_eq!(info.consumer, None, "a non-string claim names nobody");
}

#[test]
fn removing_a_kid_ends_its_cached_verifications() {
    let a = rsa_key();
    let b = ec_key(false);
    let ja = with(&a.jwk, json!({"kid": "A"}));
    let jb = with(&b.jwk, json!({"kid": "B"}));
    let f = Fixture::new(
        &set_of(&[ja.clone(), jb.clone()]),
        "jwks: { file: jwks.json }",
    );
    let j = f.jwt();
    let ta = sign(&a, Algorithm::RS256, Some("A"), &claims());
    let tb = sign(&b, Algorithm::ES256, Some("B"), &claims());
    let first = j.authenticate(&ta, NOW).unwrap();
    assert!(
        Arc::ptr_eq(&first, &j.authenticate(&ta, NOW).unwrap()),
        "cached"
    );
    let b1 = j.authenticate(&tb, NOW).unwrap();
    let generation = first.jwks_generation;

    // Adding a key keeps the generation: cached verifications stay.
    let c = ec_key(true);
    let jc = with(&c.jwk, json!({"kid": "C"}));
    f.set()
        .install(parse_jwks(set_of(&[ja.clone(), jb.clone(), jc.clone()]).as_bytes()).unwrap());
    assert!(Arc::ptr_eq(&first, &j.authenticate(&ta, NOW).unwrap()));

    // Removing A: the cached verification of A's token no longer answers.
    f.set()
        .install(parse_jwks(set_of(&[jb.clone(), jc.clone()]).as_bytes()).unwrap());
    assert_eq!(f.set().table.load().generation, generation + 1);
    assert_eq!(j.authenticate(&ta, NOW).unwrap_err(), Failure::UnknownKid);
    // B is re-verified once under the new generation, then cached again.
    let b2 = j.authenticate(&tb, NOW).unwrap();
    assert!(!Arc::ptr_eq(&b1, &b2));
    assert!(Arc::ptr_eq(&b2, &j.authenticate(&tb, NOW).unwrap()));

    // B's key material changes under the same kid: its old tokens fail.
    let b_new = ec_key(false);
    f.set().install(
        parse_jwks(set_of(&[with(&b_new.jwk, json!({"kid": "B"})), jc]).as_bytes()).unwrap(),
    );
    assert_eq!(j.authenticate(&tb, NOW).unwrap_err(), Failure::Signature);
}

#[test]
fn a_source_is_one_key_set_across_plugins_and_loads() {
    let rsa = rsa_key();
    let doc = set_of(&[with(&rsa.jwk, json!({"kid": "A"}))]);
    let f = Fixture::new(&doc, "jwks: { file: jwks.json, refresh_interval: 1h }");
    let again = load_in(
        &f.registry,
        f.dir.path(),
        "jwks: { file: jwks.json, refresh_interval: 2h }",
    )
    .unwrap();
    let Plugin::Jwt(j2) = &*again.routes[0].plugins.plugins[0] else {
        panic!("jwt expected");
    };
    let s2 = &j2.jwks.as_ref().unwrap().set;
    assert!(Arc::ptr_eq(f.set(), s2), "same file, same key set");
    assert_eq!(f.set().settings().refresh, Duration::from_secs(7200));
    // A load re-reads the file: a broken file is a load error and the keys stay.
    std::fs::write(f.dir.path().join("jwks.json"), "{").unwrap();
    let e = load_in(&f.registry, f.dir.path(), "jwks: { file: jwks.json }").unwrap_err();
    assert!(e.contains("jwks.json: not JSON"), "{e}");
    assert_eq!(f.set().table.load().len(), 1);
    drop(again);
    // Once no runtime uses it, the registry forgets the set.
    let id = f.set().source.id();
    let registry = f.registry.clone();
    drop(f);
    assert!(registry.get::<KeySet>(&id).is_none());
}

#[test]
fn config_errors_name_the_key_and_line() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("garbage.json"), "{\"keys\": 1}").unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "jwks: { url: \"https://idp/jwks\", file: k.json }",
            &["routes[0].plugins[0].config.jwks: set either url or file, not both (line 17)"],
        ),
        (
            "jwks: { refresh_interval: 5m }",
            &["routes[0].plugins[0].config.jwks: needs a url or a file (line 17)"],
        ),
        (
            "jwks: { url: \"ftp://idp/jwks?key=s3cr3t\" }",
            &["config.jwks.url: must be an http:// or https:// URL (line 17)"],
        ),
        (
            "jwks: { url: \"not a url\" }",
            &["config.jwks.url: not a valid URL (relative URL without a base) (line 17)"],
        ),
        (
            "jwks: { url: \"https://idp/jwks\", algorithms: [RS256, HS256, none], timeout: 0s, min_refresh_interval: 20m }",
            &[
                "config.jwks.algorithms[1]: HS256 uses a shared secret, which a key set cannot hold (use jwt_secrets) (line 17)",
                "config.jwks.algorithms[2]: unsupported algorithm \"none\" (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384) (line 17)",
                "config.jwks.timeout: must be between 1ms and 60s (line 17)",
                "config.jwks.min_refresh_interval: must not be longer than refresh_interval (line 17)",
            ],
        ),
        (
            "jwks: { url: \"https://idp/jwks\", algorithms: [], refresh_interval: 500ms, consumer_claim: \"\" }",
            &[
                "config.jwks.algorithms: needs at least one algorithm",
                "config.jwks.refresh_interval: must be at least 1s (line 17)",
                "config.jwks.consumer_claim: must not be empty (line 17)",
            ],
        ),
        (
            "jwks: { url: \"https://idp/jwks\", min_refresh_interval: 10ms }",
            &["config.jwks.min_refresh_interval: must be at least 100ms (line 17)"],
        ),
        (
            "jwks: { url: \"https://idp/jwks\", refresh: 5m }",
            &["config.jwks.refresh: unknown field `refresh`, expected one of `url`, `file`, `refresh_interval`"],
        ),
        (
            "jwks: { file: missing.json }",
            &["config.jwks.file: ", "missing.json: cannot read it (No such file or directory"],
        ),
        (
            "jwks: { file: garbage.json }",
            &["config.jwks.file: ", "garbage.json: not a JWK set (a JSON object with a \"keys\" array is expected) (line 17)"],
        ),
    ];
    for (config, wants) in cases {
        let e = load(dir.path(), config).expect_err(config);
        for want in *wants {
            assert!(e.contains(want), "{config}\nmissing {want:?} in:\n{e}");
        }
        assert!(!e.contains("s3cr3t"), "the URL is never echoed: {e}");
    }
    // Multi-line YAML: each error on its own key's line.
    let yaml = "jwks:
            url: \"https://idp/jwks\"
            timeout: 2m
            algorithms: [RS256, XX999]";
    let e = load(dir.path(), yaml).unwrap_err();
    assert!(
        e.contains("config.jwks.timeout: must be between 1ms and 60s (line 19)"),
        "{e}"
    );
    assert!(
        e.contains("config.jwks.algorithms[1]: unsupported algorithm \"XX999\""),
        "{e}"
    );
    assert!(e.contains("(line 20)"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Refresh on an unknown kid (file source, real refresher task)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_waits_for_one_rate_limited_refresh() {
    let a = rsa_key();
    let b = ec_key(false);
    let ja = with(&a.jwk, json!({"kid": "A"}));
    let f = Fixture::new(
        &set_of(std::slice::from_ref(&ja)),
        "jwks: { file: jwks.json, min_refresh_interval: 300ms, refresh_interval: 1h }",
    );
    let j = f.jwt();
    let set = f.set();
    let now_claims = json!({"sub": "x", "exp": now() + 60.0});
    let ta = sign(&a, Algorithm::RS256, Some("A"), &now_claims);
    // Signed up front: the rate limit window must not pass while signing.
    let unknown: Vec<String> = (0..30)
        .map(|i| sign(&b, Algorithm::ES256, Some(&format!("u{i}")), &now_claims))
        .collect();
    assert!(j.authenticate_or_refresh(&ta).await.is_ok());
    assert!(
        set.signals.running.load(Ordering::Acquire),
        "refresher started"
    );
    let reads = || set.metrics.fetches[0].get();
    let before = reads();

    // B appears in the file: a B token triggers one read and is accepted.
    std::fs::write(
        f.dir.path().join("jwks.json"),
        set_of(&[ja.clone(), with(&b.jwk, json!({"kid": "B"}))]),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let tb = sign(&b, Algorithm::ES256, Some("B"), &now_claims);
    assert!(j.authenticate_or_refresh(&tb).await.is_ok());
    assert_eq!(reads(), before + 1);

    // Right after: unknown kids are refused at once, without a read.
    let refused = set.metrics.unknown_kid[UnknownKid::RateLimited as usize].get();
    for t in &unknown[..20] {
        assert_eq!(
            j.authenticate_or_refresh(t).await.unwrap_err(),
            Failure::UnknownKid
        );
    }
    assert_eq!(reads(), before + 1);
    assert_eq!(
        set.metrics.unknown_kid[UnknownKid::RateLimited as usize].get(),
        refused + 20
    );

    // Later, concurrent unknown kids share one read.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let j = Arc::new(f.rt.routes[0].plugins.plugins[0].clone());
    let mut tasks = tokio::task::JoinSet::new();
    for t in unknown.into_iter().skip(20) {
        let p = j.clone();
        tasks.spawn(async move {
            let Plugin::Jwt(j) = &**p else { unreachable!() };
            j.authenticate_or_refresh(&t).await.unwrap_err()
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), Failure::UnknownKid);
    }
    assert_eq!(
        reads(),
        before + 2,
        "one read for ten concurrent unknown kids"
    );
    assert!(set.metrics.unknown_kid[UnknownKid::NotInSet as usize].get() >= 1);
}

// ---------------------------------------------------------------------------------------------
// Wycheproof: every asymmetric group through the JWK parser (PS* included)
// ---------------------------------------------------------------------------------------------

/// Vectors where the pin to the JWK's `alg` (RFC 7517 4.4: the algorithm intended for use
/// with the key) refuses what the file calls valid: RFC 7520 figure 20 is a PS384 token, and
/// the file's JWK for it says `"alg": "PS256"`.
const PINNED: &[u64] = &[346, 350];

#[test]
fn wycheproof_vectors_through_jwk_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/wycheproof/json_web_signature_test.json");
    let doc: Value = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).expect("wycheproof JSON"),
        Err(e) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{}: {e}",
                path.display()
            );
            eprintln!("NOTICE: skipping Wycheproof JWK vectors: {e}");
            return;
        }
    };
    let (mut valid_ok, mut invalid_ok, mut unusable, mut skipped) = (0, 0, 0, 0);
    let (mut ps_valid, mut pinned) = (0, 0);
    let mut failures = Vec::new();
    for group in doc["testGroups"].as_array().expect("testGroups") {
        let tests = group["tests"].as_array().expect("tests");
        let jwk = if group["public"].is_object() {
            &group["public"]
        } else {
            &group["private"]
        };
        let raw: RawJwk = serde_json::from_value(jwk.clone()).expect("JWK members");
        let key = match parse_jwk(&raw) {
            Ok(k) => Some(k),
            // Marked for encryption: no token may verify with it.
            Err(e) if e.starts_with("use ") || e.starts_with("key_ops") => None,
            Err(e) => {
                assert!(
                    e.starts_with("unsupported"),
                    "{}: unexpected JWK refusal {e}",
                    group["comment"]
                );
                skipped += tests.len();
                continue;
            }
        };
        for t in tests {
            let jws = t["jws"].as_str().unwrap_or("");
            let accepted = key.as_ref().is_some_and(|k| {
                parse_jws(jws).is_ok_and(|j| {
                    alg_bit(&j.alg)
                        .and_then(|b| k.verifiers.iter().find(|(vb, _)| *vb == b))
                        .is_some_and(|(_, vk)| check_signature(&j, vk).is_ok())
                })
            });
            let id = t["tcId"].as_u64().unwrap_or(0);
            if PINNED.contains(&id) {
                assert!(!accepted, "tcId {id}: the alg pin must refuse it");
                pinned += 1;
                continue;
            }
            match (t["result"].as_str(), accepted) {
                (Some("valid"), true) => {
                    valid_ok += 1;
                    if jwk["alg"].as_str().is_some_and(|a| a.starts_with("PS")) {
                        ps_valid += 1;
                    }
                }
                (Some("invalid"), false) if key.is_none() => unusable += 1,
                (Some("invalid"), false) => invalid_ok += 1,
                (r, a) => failures.push(format!(
                    "tcId {} ({}): expected {r:?}, accepted={a}",
                    t["tcId"], t["comment"]
                )),
            }
        }
    }
    eprintln!(
        "wycheproof via JWK: {valid_ok} valid accepted ({ps_valid} PS*), {invalid_ok} invalid \
         rejected, {unusable} refused for an encryption key, {pinned} refused by the alg pin, \
         {skipped} skipped (HS*, P-521)"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(pinned, PINNED.len());
    assert!(
        ps_valid >= 10 && valid_ok >= 25 && invalid_ok >= 250,
        "too few vectors ran"
    );
}
