//! Verifier unit tests: the Wycheproof JWS vectors against the signature layer, and the
//! claim / cache logic of the plugin built from a real config.

use super::*;
use crate::ctx::Runtime;
use crate::plugins::Plugin;
use crate::upstream::StateRegistry;
use jsonwebtoken::{encode, EncodingKey, Header};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Wycheproof
// ---------------------------------------------------------------------------------------------

fn vectors() -> Option<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/wycheproof/json_web_signature_test.json");
    match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).expect("wycheproof JSON")),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{}: {e} (required when CI=true)", path.display());
            }
            eprintln!(
                "NOTICE: skipping the Wycheproof JWS vectors: {} not readable ({e})",
                path.display()
            );
            None
        }
    }
}

fn b64(v: &Value, field: &str) -> Vec<u8> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("JWK field {field}"));
    URL_SAFE_NO_PAD.decode(s).expect("JWK base64url")
}

/// How a group's key can be used by this verifier.
enum GroupKey {
    /// Algorithm outside the contract (PS*, ES512...): group skipped.
    Unsupported(String),
    /// The key is marked for something other than verification (`use: enc`, `key_ops`
    /// without `verify`) or names no algorithm: it cannot become a verification key, so every
    /// token of the group is refused.
    Unusable,
    Key(VerifyKey),
}

/// The group's JWK as a verification key. Like a configured `jwt_secrets` entry, a key is
/// pinned to one algorithm: the JWK's `alg`.
fn group_key(group: &Value) -> GroupKey {
    let jwk = if group["public"].is_object() {
        &group["public"]
    } else {
        &group["private"]
    };
    if jwk["use"].as_str().is_some_and(|u| u != "sig") {
        return GroupKey::Unusable;
    }
    if let Some(ops) = jwk["key_ops"].as_array() {
        if !ops.iter().any(|o| o == "verify") {
            return GroupKey::Unusable;
        }
    }
    let Some(alg) = jwk["alg"].as_str() else {
        return GroupKey::Unusable;
    };
    if algorithm(alg).is_none() {
        return GroupKey::Unsupported(alg.to_string());
    }
    let key = match jwk["kty"].as_str() {
        Some("oct") => DecodingKey::from_secret(&b64(jwk, "k")).expect("oct key"),
        Some("RSA") => DecodingKey::from_rsa_raw_components(&b64(jwk, "n"), &b64(jwk, "e")),
        Some("EC") => {
            let want = if alg == "ES256" { "P-256" } else { "P-384" };
            if jwk["crv"] != want {
                return GroupKey::Unusable;
            }
            let mut point = vec![4u8];
            point.extend(b64(jwk, "x"));
            point.extend(b64(jwk, "y"));
            DecodingKey::from_ec_der(&point)
        }
        other => panic!("unexpected kty {other:?}"),
    };
    match VerifyKey::from_decoding_key(alg, key) {
        Some(k) => GroupKey::Key(k),
        None => GroupKey::Unusable,
    }
}

/// Vectors whose expected result contradicts RFC 7515 itself, checked against what this
/// verifier does instead of the file's verdict:
/// - 367 and 370 ("invalid" base64 padding) are byte-identical to 357, a valid MAC: accepted.
/// - 372 and 373 ("valid") carry a `?` inside the base64url header/payload, with 357's MAC
///   over the original text: strict base64url (RFC 7515 2) and a MAC over the exact signing
///   input both refuse them.
const DEFECTIVE: &[(u64, bool)] = &[(367, true), (370, true), (372, false), (373, false)];

#[test]
fn wycheproof_jws_vectors() {
    let Some(doc) = vectors() else {
        return;
    };
    let (mut valid_ok, mut invalid_ok, mut skipped, mut defective) = (0, 0, 0, 0);
    let mut skipped_groups: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    let groups = doc["testGroups"].as_array().expect("testGroups");
    for group in groups {
        let tests = group["tests"].as_array().expect("tests");
        let key = match group_key(group) {
            GroupKey::Unsupported(alg) => {
                skipped += tests.len();
                skipped_groups.push(format!("{} ({alg})", group["comment"]));
                continue;
            }
            GroupKey::Unusable => None,
            GroupKey::Key(k) => Some(k),
        };
        for t in tests {
            let id = t["tcId"].as_u64().expect("tcId");
            let accepted = match (&key, t["jws"].as_str()) {
                (Some(k), Some(jws)) => parse_jws(jws).and_then(|j| check_signature(&j, k)).is_ok(),
                _ => false,
            };
            if let Some((_, want)) = DEFECTIVE.iter().find(|(d, _)| *d == id) {
                assert_eq!(accepted, *want, "defective vector {id}");
                defective += 1;
                continue;
            }
            match (t["result"].as_str(), accepted) {
                (Some("valid"), true) => valid_ok += 1,
                (Some("invalid"), false) => invalid_ok += 1,
                (r, a) => failures.push(format!(
                    "tcId {id} ({}): expected {r:?}, accepted={a}",
                    t["comment"]
                )),
            }
        }
    }
    eprintln!(
        "wycheproof JWS: {valid_ok} valid accepted, {invalid_ok} invalid rejected, \
         {defective} defective vectors checked, {skipped} skipped in {} groups of unsupported \
         algorithms: {}",
        skipped_groups.len(),
        skipped_groups.join(", ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let total = doc["numberOfTests"].as_u64().unwrap_or(0) as usize;
    assert_eq!(valid_ok + invalid_ok + defective + skipped, total);
    assert!(valid_ok >= 10 && invalid_ok >= 250, "too few vectors ran");
}

// ---------------------------------------------------------------------------------------------
// Plugin built from a config
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "unit-test-secret-0123456789-abcdefghij";

/// The top of every config here: a listener and upstream `u`.
const HEAD: &str = "server: { listen: [\"127.0.0.1:1\"] }\nupstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:2\" }]\n";

/// `routes:` with route `r` (paths `/`, upstream `u`) running jwt with `config`, the YAML
/// value of its `config:` key, on the line after it (line 7 of this text).
pub(super) fn jwt_route(config: &str) -> String {
    format!(
        "routes:
  - name: r
    paths: [\"/\"]
    upstream: u
    plugins:
      - name: jwt
        config:
          {config}
"
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), lf)
}

/// (private PKCS#8 PEM, public SPKI PEM)
fn rsa_pair() -> (String, String) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private = kp.as_der().unwrap();
    let public = kp.public_key().as_der().unwrap();
    (
        pem("PRIVATE KEY", private.as_ref()),
        pem("PUBLIC KEY", public.as_ref()),
    )
}

struct Fixture {
    rt: Runtime,
    _dir: tempfile::TempDir,
    rsa_private: String,
    rsa_public: String,
}

impl Fixture {
    fn new(plugin_config: &str) -> Fixture {
        let dir = tempfile::TempDir::new().unwrap();
        let (rsa_private, rsa_public) = rsa_pair();
        std::fs::write(dir.path().join("rsa.pem"), &rsa_public).unwrap();
        let yaml = format!(
            "{HEAD}consumers:
  - username: alice
    jwt_secrets:
      - {{ key: hs-key, algorithm: HS256, secret: \"{SECRET}\" }}
      - {{ key: rs-key, algorithm: RS256, rsa_public_key_file: rsa.pem }}
{}",
            jwt_route(plugin_config)
        );
        let rt = crate::config::load_str(
            &yaml,
            dir.path(),
            &StateRegistry::default(),
            &crate::util::registry::Registry::default(),
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            rt,
            _dir: dir,
            rsa_private,
            rsa_public,
        }
    }

    fn jwt(&self) -> &Jwt {
        match &*self.rt.routes[0].plugins.plugins[0] {
            Plugin::Jwt(j) => j,
            other => panic!("not jwt: {other:?}"),
        }
    }
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn raw(header: &str, claims: &str, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

const NOW: f64 = 1_800_000_000.0;

#[test]
fn claims_are_checked_after_the_signature() {
    let f = Fixture::new(
        "{ key_claim_name: kid, issuer: \"https://idp.example\", audience: [api, web] }",
    );
    let j = f.jwt();
    let ok = serde_json::json!({
        "kid": "hs-key", "iss": "https://idp.example", "aud": "web",
        "exp": NOW + 60.0, "roles": ["a", "b"]
    });
    let info = j.authenticate(&hs(&ok), NOW).unwrap();
    assert_eq!(info.consumer, Some(0));
    assert_eq!(info.roles.as_ref().unwrap(), "a,b");
    let mut list_aud = ok.clone();
    list_aud["aud"] = serde_json::json!(["x", "api"]);
    assert!(j.authenticate(&hs(&list_aud), NOW).is_ok());

    let bad = |patch: Value, want: Failure| {
        let mut c = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        assert_eq!(j.authenticate(&hs(&c), NOW).unwrap_err(), want, "{c}");
    };
    bad(serde_json::json!({"exp": NOW}), Failure::Expired);
    bad(serde_json::json!({"exp": null}), Failure::MissingClaim);
    bad(serde_json::json!({"exp": "1900000000"}), Failure::ClaimType);
    bad(serde_json::json!({"nbf": NOW + 5.0}), Failure::NotYetValid);
    bad(serde_json::json!({"nbf": "0"}), Failure::ClaimType);
    bad(serde_json::json!({"aud": "other"}), Failure::Audience);
    bad(serde_json::json!({"aud": null}), Failure::Audience);
    bad(
        serde_json::json!({"iss": "https://evil.example"}),
        Failure::Issuer,
    );
    bad(serde_json::json!({"iss": null}), Failure::Issuer);
    bad(serde_json::json!({"kid": "rs-key"}), Failure::Algorithm);
}

#[test]
fn leeway_and_required_nbf() {
    let f = Fixture::new("{ leeway: 10s, claims_to_verify: [exp, nbf] }");
    let j = f.jwt();
    let t = hs(&serde_json::json!({"iss": "hs-key", "exp": NOW - 5.0, "nbf": NOW + 5.0}));
    assert!(j.authenticate(&t, NOW).is_ok());
    let t = hs(&serde_json::json!({"iss": "hs-key", "exp": NOW + 60.0}));
    assert_eq!(j.authenticate(&t, NOW).unwrap_err(), Failure::MissingClaim);
}

#[test]
fn header_and_structure_attacks() {
    let f = Fixture::new("{}");
    let j = f.jwt();
    let claims = r#"{"iss":"hs-key","exp":1900000000}"#;
    let good = hs(&serde_json::from_str(claims).unwrap());
    let sig = good.rsplit('.').next().unwrap();
    for (name, token, want) in [
        (
            "alg none",
            raw(r#"{"alg":"none"}"#, claims, ""),
            Failure::Algorithm,
        ),
        (
            "alg NoNe",
            raw(r#"{"alg":"NoNe"}"#, claims, sig),
            Failure::Algorithm,
        ),
        (
            "crit",
            raw(r#"{"alg":"HS256","crit":["exp"]}"#, claims, sig),
            Failure::Malformed,
        ),
        (
            "b64 false",
            raw(r#"{"alg":"HS256","b64":false}"#, claims, sig),
            Failure::Malformed,
        ),
        (
            "dup alg",
            raw(r#"{"alg":"none","alg":"HS256"}"#, claims, sig),
            Failure::Malformed,
        ),
        (
            "dup claim",
            raw(r#"{"alg":"HS256"}"#, r#"{"iss":"x","iss":"hs-key"}"#, sig),
            Failure::Malformed,
        ),
        (
            "no sig",
            good[..good.rfind('.').unwrap() + 1].to_string(),
            Failure::Signature,
        ),
        (
            "two parts",
            good[..good.rfind('.').unwrap()].to_string(),
            Failure::Malformed,
        ),
        ("four parts", format!("{good}.x"), Failure::Malformed),
        ("padding", format!("{good}="), Failure::Signature),
        ("garbage", "not-a-token".to_string(), Failure::Malformed),
        (
            "array claims",
            raw(r#"{"alg":"HS256"}"#, "[1]", sig),
            Failure::Malformed,
        ),
        (
            "unknown key",
            hs(&serde_json::json!({"iss": "nobody", "exp": 1.9e9})),
            Failure::UnknownKey,
        ),
        (
            "numeric iss",
            hs(&serde_json::json!({"iss": 7, "exp": 1.9e9})),
            Failure::UnknownKey,
        ),
        ("oversize", "a".repeat(8 * 1024 + 1), Failure::TooLarge),
    ] {
        assert_eq!(j.authenticate(&token, NOW).unwrap_err(), want, "{name}");
    }
    assert!(j.authenticate(&good, NOW).is_ok());
}

#[test]
fn rs256_pinned_and_hs_with_public_key_refused() {
    let f = Fixture::new("{}");
    let j = f.jwt();
    let claims = serde_json::json!({"iss": "rs-key", "exp": NOW + 60.0});
    let rs = EncodingKey::from_rsa_pem(f.rsa_private.as_bytes()).unwrap();
    let token = encode(&Header::new(Algorithm::RS256), &claims, &rs).unwrap();
    assert!(j.authenticate(&token, NOW).is_ok());
    // Same key, other RSA algorithm: the pin refuses it.
    let rs512 = encode(&Header::new(Algorithm::RS512), &claims, &rs).unwrap();
    assert_eq!(j.authenticate(&rs512, NOW).unwrap_err(), Failure::Algorithm);
    // The classic confusion: HMAC keyed with the public key PEM.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(f.rsa_public.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        j.authenticate(&confused, NOW).unwrap_err(),
        Failure::Algorithm
    );
}

#[test]
fn cache_hits_share_the_verification_and_expire_with_the_token() {
    let f = Fixture::new("{}");
    let j = f.jwt();
    let t = hs(&serde_json::json!({"iss": "hs-key", "exp": NOW + 10.0}));
    let a = j.authenticate(&t, NOW).unwrap();
    let b = j.authenticate(&t, NOW + 1.0).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second call must come from the cache");
    assert_eq!(j.cache.as_ref().unwrap().len(), 1);
    // At exp the cached entry no longer answers; the full check says expired.
    assert_eq!(
        j.authenticate(&t, NOW + 10.0).unwrap_err(),
        Failure::Expired
    );
    assert_eq!(j.cache.as_ref().unwrap().len(), 0);

    let f = Fixture::new("{ cache_entries: 0 }");
    let j = f.jwt();
    assert!(j.cache.is_none());
    let a = j.authenticate(&t, NOW).unwrap();
    let b = j.authenticate(&t, NOW).unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
}

#[test]
fn cache_is_bounded() {
    let f = Fixture::new("{ cache_entries: 16 }");
    let j = f.jwt();
    for i in 0..200 {
        let t = hs(&serde_json::json!({"iss": "hs-key", "exp": NOW + 60.0, "n": i}));
        assert!(j.authenticate(&t, NOW).is_ok());
    }
    assert!(j.cache.as_ref().unwrap().len() <= 16);
}

fn load_err(yaml_consumers: &str, files: &[(&str, &str)]) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let yaml = format!(
        "{HEAD}consumers:
{yaml_consumers}
routes:
  - name: a
    paths: [\"/a\"]
    upstream: u
    plugins: [{{ name: jwt }}]
  - name: b
    paths: [\"/b\"]
    upstream: u
    plugins: [{{ name: jwt }}]
"
    );
    match crate::config::load_str(
        &yaml,
        dir.path(),
        &StateRegistry::default(),
        &crate::util::registry::Registry::default(),
        1,
    ) {
        Ok(_) => panic!("config should fail:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_keys_are_config_errors_reported_once() {
    let (_, public) = rsa_pair();
    let e = load_err(
        "  - username: a
    jwt_secrets:
      - { key: k1, algorithm: RS256, rsa_public_key_file: bad.pem }
      - { key: k2, algorithm: ES256, ecdsa_public_key_file: rsa.pem }
      - { key: k3, algorithm: HS256, secret: short }
      - { key: k4, algorithm: HS256, secret: \"***\", secret_is_base64: true }
  - username: b
    jwt_secrets:
      - { key: k1, algorithm: HS256, secret: \"0123456789abcdef0123456789abcdef\" }",
        &[("bad.pem", "not a key"), ("rsa.pem", &public)],
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 5, "one error each, not one per route:\n{e}");
    assert!(
        lines[0].starts_with("consumers[0].jwt_secrets[0].rsa_public_key_file: "),
        "{e}"
    );
    let wants: [&[&str]; 5] = [
        &["bad.pem: not a PEM RSA public key (line 8)"],
        &[
            "jwt_secrets[1].ecdsa_public_key_file: ",
            "not a PEM P-256 public key",
        ],
        &["jwt_secrets[2].secret: HS256 secrets must be at least 32 bytes"],
        &["jwt_secrets[3].secret: is not valid base64"],
        &["consumers[1].jwt_secrets[0].key: duplicate jwt_secrets key \"k1\""],
    ];
    for (line, wants) in lines.iter().zip(wants) {
        for want in wants {
            assert!(line.contains(want), "{want:?} not in {line:?}:\n{e}");
        }
    }
    assert!(!e.contains("short"), "secrets never in errors: {e}");
}

#[test]
fn small_rsa_keys_are_refused() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    // aws-lc generates 2048 bits at least; build a 1024-bit public key by hand instead:
    // SPKI of n = 2^1023 + 1 (odd, 1024 bits), e = 65537 is structurally valid.
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = kp.public_key().as_der().unwrap();
    let ok = pem("PUBLIC KEY", der.as_ref());
    assert!(VerifyKey::rsa_pem("RS256", ok.as_bytes()).is_ok());
    assert!(VerifyKey::rsa_pem("ES256", ok.as_bytes()).is_err());
    let mut n = vec![0u8; 129];
    n[1] = 0x80;
    n[128] = 1;
    let rsa_public_key = der_seq(&[der_int(&n), der_int(&[1, 0, 1])]);
    let small = pem("RSA PUBLIC KEY", &rsa_public_key);
    let e = VerifyKey::rsa_pem("RS256", small.as_bytes()).unwrap_err();
    assert!(e.contains("1024 bits"), "{e}");
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 128 {
        vec![n as u8]
    } else if n < 256 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn der_int(b: &[u8]) -> Vec<u8> {
    let mut v = vec![0x02];
    v.extend(der_len(b.len()));
    v.extend_from_slice(b);
    v
}

fn der_seq(parts: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut v = vec![0x30];
    v.extend(der_len(body.len()));
    v.extend(body);
    v
}
