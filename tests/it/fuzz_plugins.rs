//! Fuzzing of the plugin front ends on stable Rust with bolero (same pattern as
//! `fuzz_core`: an ordinary `cargo test` with bounded iterations; a long session is
//! `cargo bolero test --test it fuzz_plugins::<name>`, see README "Security model"):
//!
//! - the jwt verifier never panics on any token string, and never accepts a token whose
//!   signature is not the configured HS256 secret's over its exact signing input with
//!   `alg: HS256` (structured near-miss tokens: `none`/`NoNe`/RS256 headers, duplicate
//!   claims, padding, wrong secrets, random signatures);
//! - the JSON rewriter never panics, its output is valid JSON equal to a reference
//!   remove/rename over `serde_json::Value`, and it refuses exactly the invalid inputs;
//! - the cache key builder never panics, ignores the order of query parameters (same-name
//!   parameters keep their relative order) and never shares a key between two routes.

use crate::common::{assert_rewrite_sound, damage, Src, ROUTE_R_PLUGINS};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bolero::check;
use gatehouse::config;
use gatehouse::ctx::Runtime;
use gatehouse::plugins::json_rewrite::JsonRules;
use gatehouse::plugins::jwt::{Failure, Jwt};
use gatehouse::plugins::proxy_cache::key::{self, KeyParts};
use gatehouse::plugins::Plugin;
use gatehouse::upstream::StateRegistry;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

// -------------------------------------------------------------------------------------------
// JWT
// -------------------------------------------------------------------------------------------

const SECRET: &str = "fuzz-secret-0123456789abcdefghijklmnop";
const NOW: f64 = 1_700_000_000.0;

fn jwt_runtime() -> Runtime {
    // Route `r` with the jwt plugin, and consumer alice's HS256 secret.
    let yaml = format!(
        "{ROUTE_R_PLUGINS}      - name: jwt
        config: {{ leeway: 0s }}
consumers:
  - username: alice
    jwt_secrets:
      - {{ key: hs-key, algorithm: HS256, secret: \"{SECRET}\" }}
"
    );
    config::load_str(
        &yaml,
        Path::new("."),
        &StateRegistry::default(),
        &Default::default(),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn jwt_of(rt: &Runtime) -> &Jwt {
    match &*rt.routes[0].plugins.plugins[0] {
        Plugin::Jwt(j) => j,
        other => panic!("not jwt: {other:?}"),
    }
}

fn hs256(input: &[u8], secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("hmac key");
    jsonwebtoken::crypto::sign(input, &key, Algorithm::HS256).expect("sign")
}

/// The oracle: a token the verifier accepts is exactly `header.payload.signature`, its header
/// names `alg: HS256` once, and the signature is the configured secret's HMAC of the
/// signing input.
fn assert_authentic(token: &str) {
    let (signing_input, sig) = token
        .rsplit_once('.')
        .unwrap_or_else(|| panic!("accepted without a signature: {token:?}"));
    let (header, _) = signing_input
        .split_once('.')
        .unwrap_or_else(|| panic!("accepted with one dot: {token:?}"));
    assert_eq!(
        sig,
        hs256(signing_input.as_bytes(), SECRET),
        "accepted a token not signed with the secret: {token:?}"
    );
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .unwrap_or_else(|_| panic!("accepted a non-base64url header: {token:?}"));
    let header: Value = serde_json::from_slice(&header)
        .unwrap_or_else(|_| panic!("accepted a non-JSON header: {token:?}"));
    assert_eq!(header["alg"], "HS256", "accepted another alg: {token:?}");
}

#[test]
fn jwt_never_panics_on_arbitrary_tokens() {
    let rt = jwt_runtime();
    // The verify cache's lock is not `RefUnwindSafe`; a panic fails the test anyway.
    let jwt = AssertUnwindSafe(jwt_of(&rt));
    check!()
        .with_type::<String>()
        .with_iterations(3000)
        .for_each(|token| {
            if jwt.authenticate(token, NOW).is_ok() {
                assert_authentic(token);
            }
            // The same bytes under a valid prefix reach the signature check more often.
            let near = format!("eyJhbGciOiJIUzI1NiJ9.{token}");
            if jwt.authenticate(&near, NOW).is_ok() {
                assert_authentic(&near);
            }
        });
}

const ALGS: &[&str] = &[
    "HS256", "none", "NoNe", "RS256", "hs256", "HS384", "", "HS256 ",
];

/// Header members (JSON text, so duplicates are possible).
const HEADER_EXTRAS: &[&str] = &[
    r#""typ":"JWT""#,
    r#""alg":"none""#,
    r#""alg":"HS256""#,
    r#""crit":["exp"]"#,
    r#""b64":false"#,
    r#""b64":true"#,
    r#""kid":"hs-key""#,
    r#""alg":null"#,
];

/// Claim members; the first three make a valid claim set on their own.
const CLAIMS: &[&str] = &[
    r#""iss":"hs-key""#,
    r#""exp":1700001000"#,
    r#""roles":["reader","admin"]"#,
    r#""iss":"other""#,
    r#""iss":7"#,
    r#""exp":1699999999"#,
    r#""exp":"1700001000""#,
    r#""exp":1e999"#,
    r#""nbf":1700005000"#,
    r#""nbf":1699990000"#,
    r#""sub":"x\u0000y""#,
    r#""iss":"hs-key""#,
    r#""exp":-1"#,
];

/// Fields of a structured near-miss token, recorded to know when it must be accepted.
struct Built {
    token: String,
    must_accept: bool,
}

fn near_miss_token(s: &mut Src) -> Built {
    // HS256 half the time: most near misses differ from a valid token in one place only.
    let alg = if s.u8() < 128 {
        "HS256"
    } else {
        ALGS[s.below(ALGS.len())]
    };
    let mut header = vec![format!(r#""alg":{}"#, Value::from(alg))];
    let mut clean_header = alg == "HS256";
    let mut kids = 0;
    for _ in 0..s.below(3) {
        let extra = s.below(HEADER_EXTRAS.len());
        // A repeated `kid` is refused like a repeated `alg`: it selects a JWKS key.
        kids += usize::from(extra == 6);
        clean_header &= extra == 0 || (extra == 6 && kids == 1);
        header.push(HEADER_EXTRAS[extra].to_string());
    }
    if s.u8() < 30 {
        header.reverse();
    }
    let header = format!("{{{}}}", header.join(","));

    let mut picks: Vec<usize> = Vec::new();
    let mut claims = Vec::new();
    match s.below(8) {
        // The valid core, then maybe more.
        0..=4 => {
            picks.extend([0, 1]);
            for _ in 0..s.below(3) {
                picks.push(s.below(CLAIMS.len()));
            }
        }
        _ => {
            for _ in 0..s.below(5) {
                picks.push(s.below(CLAIMS.len()));
            }
        }
    }
    for &p in &picks {
        claims.push(CLAIMS[p].to_string());
    }
    if s.u8() < 40 {
        let k = s.string(&["iss", "exp", "aud", "roles", "x"]);
        let v = gen_value(s, 0);
        claims.push(format!("{}:{v}", Value::from(k.as_str())));
    }
    let clean_claims = picks.contains(&0)
        && picks.contains(&1)
        && picks.iter().all(|p| *p <= 2)
        && picks.len()
            == picks
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        && claims.len() == picks.len();
    let mut payload = format!("{{{}}}", claims.join(","));
    let clean_payload_shape = match s.below(12) {
        0 => {
            payload = "[]".into();
            false
        }
        1 => {
            payload = "null".into();
            false
        }
        2 => {
            payload.push(' ');
            true
        }
        _ => true,
    };

    let mut h64 = URL_SAFE_NO_PAD.encode(header.as_bytes());
    let mut p64 = URL_SAFE_NO_PAD.encode(payload.as_bytes());
    let mut encoding_ok = true;
    match s.below(10) {
        0 => {
            h64.push('=');
            encoding_ok = false;
        }
        1 => {
            p64 = STANDARD.encode(payload.as_bytes());
            encoding_ok = !p64.contains(['+', '/', '=']);
        }
        2 => {
            p64.push_str("==");
            encoding_ok = false;
        }
        _ => {}
    }
    let signing_input = format!("{h64}.{p64}");
    let (sig, sig_ok) = match s.below(8) {
        0..=2 => (hs256(signing_input.as_bytes(), SECRET), true),
        3 => (
            hs256(
                signing_input.as_bytes(),
                "fuzz-secret-0123456789abcdefghijklmnoq",
            ),
            false,
        ),
        4 => {
            let n = s.below(40);
            (URL_SAFE_NO_PAD.encode(s.bytes(n)), false)
        }
        5 => (String::new(), false),
        6 => (hs256(h64.as_bytes(), SECRET), false),
        _ => {
            // The right signature, then damaged: padding, a flipped last character, or a
            // character outside the alphabet.
            let mut good = hs256(signing_input.as_bytes(), SECRET);
            match s.below(3) {
                0 => good.push('='),
                1 => {
                    let last = good.pop().unwrap_or('A');
                    good.push(if last == 'A' { 'B' } else { 'A' });
                }
                _ => good.insert(s.below(good.len().max(1)), '+'),
            }
            (good, false)
        }
    };
    let mut token = format!("{signing_input}.{sig}");
    let tail_ok = match s.below(16) {
        0 => {
            token.push('.');
            false
        }
        1 => {
            token.insert(0, ' ');
            false
        }
        _ => true,
    };
    Built {
        must_accept: clean_header
            && clean_claims
            && clean_payload_shape
            && encoding_ok
            && sig_ok
            && tail_ok,
        token,
    }
}

#[test]
fn jwt_accepts_only_tokens_signed_with_the_secret() {
    let rt = jwt_runtime();
    // The verify cache's lock is not `RefUnwindSafe`; a panic fails the test anyway.
    let jwt = AssertUnwindSafe(jwt_of(&rt));
    let accepted = AtomicUsize::new(0);
    check!().with_iterations(4000).for_each(|bytes: &[u8]| {
        let built = near_miss_token(&mut Src::new(bytes));
        match jwt.authenticate(&built.token, NOW) {
            Ok(info) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                assert_authentic(&built.token);
                assert_eq!(info.consumer, Some(0));
                assert_eq!(info.claims["iss"], "hs-key");
                let exp = info.claims["exp"].as_f64().expect("exp is a number");
                assert!(exp > NOW, "accepted an expired token: {:?}", built.token);
            }
            Err(f) => assert!(
                !built.must_accept,
                "refused ({f:?}) a valid token: {:?}",
                built.token
            ),
        }
        // `none` with an empty signature is never a way in.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            built.token.split('.').nth(1).unwrap_or("")
        );
        assert!(matches!(
            jwt.authenticate(&none, NOW),
            Err(Failure::Malformed | Failure::UnknownKey | Failure::Algorithm)
        ));
    });
    // Only meaningful when the bounded run returns (not under a fuzzing engine).
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "the generator never produced a valid token"
    );
}

// -------------------------------------------------------------------------------------------
// JSON rewriter
// -------------------------------------------------------------------------------------------

const MAX_GEN_DEPTH: usize = 6;

/// Member names: rule names (ASCII, non-ASCII, escapes) and strangers.
const KEYS: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "x",
    "id",
    "pässword",
    "na\"me",
    "é\"x",
    "😀",
    "",
    "a\\b",
    "\n",
    "A",
];

fn gen_value(s: &mut Src, depth: usize) -> Value {
    let kind = match depth {
        // Mostly a container at the top, where the rules can apply.
        0 if s.u8() < 200 => 4 + s.below(2),
        d if d >= MAX_GEN_DEPTH => s.below(4),
        _ => s.below(6),
    };
    match kind {
        0 => Value::Null,
        1 => Value::Bool(s.u8() & 1 == 1),
        2 => match s.below(4) {
            0 => Value::from(s.u8() as i64 - 128),
            1 => Value::from(s.u64() as i64),
            2 => Value::from(s.u64()),
            // Non-finite floats become null.
            _ => Value::from(f64::from_bits(s.u64())),
        },
        3 => Value::String(s.string(&["v", "", "\"q\"", "\\", "\u{7}", "ünï", "\u{10FFFF}"])),
        4 => Value::Array((0..s.below(4)).map(|_| gen_value(s, depth + 1)).collect()),
        _ => {
            let mut m = Map::new();
            for _ in 0..s.below(7) {
                let k = if s.u8() < 128 {
                    KEYS[s.below(5)].to_string()
                } else {
                    s.string(KEYS)
                };
                let v = gen_value(s, depth + 1);
                m.insert(k, v);
            }
            Value::Object(m)
        }
    }
}

type Renames = Vec<(String, String)>;

/// Rules drawn from `KEYS` (mostly its first names, the ones objects hold most often);
/// `None` when the config would refuse them.
fn gen_rules(s: &mut Src) -> Option<(JsonRules, Vec<String>, Renames)> {
    let name = |s: &mut Src| {
        if s.u8() < 160 {
            KEYS[s.below(5)].to_string()
        } else {
            s.string(KEYS)
        }
    };
    let remove: Vec<String> = (0..s.below(3)).map(|_| name(s)).collect();
    let rename: Vec<(String, String)> = (0..s.below(4)).map(|_| (name(s), name(s))).collect();
    let rules = JsonRules::new(&remove, &rename).ok()?;
    Some((rules, remove, rename))
}

/// The module's documented rules over a parsed value: `remove` first, a rename never
/// chains, and a member named like a rename's target (and not itself removed or renamed)
/// is dropped when its object also holds that rename's source.
fn reference(v: &Value, remove: &[String], rename: &[(String, String)]) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(|x| reference(x, remove, rename)).collect()),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                if remove.contains(k) {
                    continue;
                }
                let name = match rename.iter().find(|(from, _)| from == k) {
                    Some((_, to)) => to,
                    None => {
                        let shadowed = rename
                            .iter()
                            .any(|(from, to)| to == k && m.contains_key(from));
                        if shadowed {
                            continue;
                        }
                        k
                    }
                };
                let prev = out.insert(name.clone(), reference(val, remove, rename));
                assert!(prev.is_none(), "reference produced {name:?} twice");
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Whether a rule applies anywhere in `v`: some object holds a removed name or a rename's
/// source.
fn touched(v: &Value, remove: &[String], rename: &[(String, String)]) -> bool {
    match v {
        Value::Array(a) => a.iter().any(|x| touched(x, remove, rename)),
        Value::Object(m) => m.iter().any(|(k, val)| {
            remove.contains(k)
                || rename.iter().any(|(from, _)| from == k)
                || touched(val, remove, rename)
        }),
        _ => false,
    }
}

#[test]
fn json_rewrite_matches_reference_on_arbitrary_values() {
    check!().with_iterations(4000).for_each(|bytes: &[u8]| {
        let mut s = Src::new(bytes);
        let Some((rules, remove, rename)) = gen_rules(&mut s) else {
            return;
        };
        let generated = gen_value(&mut s, 0);
        let text = if s.u8() < 64 {
            serde_json::to_string_pretty(&generated)
        } else {
            serde_json::to_string(&generated)
        }
        .expect("serialize");
        let mut out = Vec::new();
        let changed = rules
            .rewrite(text.as_bytes(), &mut out)
            .unwrap_or_else(|_| panic!("valid JSON refused: {text}"));
        let got: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "invalid output ({e}): {}\n--- input ---\n{text}",
                String::from_utf8_lossy(&out)
            )
        });
        // Compared with the text as serde_json reads it back (without `float_roundtrip` a
        // subnormal float may not parse to the value it was printed from).
        let input: Value = serde_json::from_str(&text).expect("reparse");
        let want = reference(&input, &remove, &rename);
        assert_eq!(
            got, want,
            "remove {remove:?} rename {rename:?}\n--- input ---\n{text}"
        );
        // A rule that applied is a change even when the value compares equal (renames that
        // swap two names: `a:d` and `d:a` on `{"a":..,"d":..}`).
        assert_eq!(
            changed,
            touched(&input, &remove, &rename),
            "changed flag, input {text}"
        );
        if !changed {
            // Compact and otherwise untouched: serde_json's own compact form.
            assert_eq!(
                out,
                serde_json::to_vec(&generated).expect("serialize"),
                "input {text}"
            );
        }
    });
}

#[test]
fn json_rewrite_refuses_exactly_invalid_bytes() {
    let rules = JsonRules::new(&["x".into(), "a".into()], &[("b".into(), "c".into())]).unwrap();
    check!()
        .with_type::<(Vec<u8>, Vec<u8>, Vec<(u16, u8)>)>()
        .with_iterations(4000)
        .for_each(|(raw, seed, edits)| {
            // Raw bytes, and a valid text damaged by a few byte edits.
            let valid = serde_json::to_vec(&gen_value(&mut Src::new(seed), 0)).unwrap();
            let damaged = damage(valid, edits);
            for input in [raw.as_slice(), damaged.as_slice()] {
                let mut out = Vec::new();
                let ok = rules.rewrite(input, &mut out).is_ok();
                assert_rewrite_sound(input, ok, ok.then_some(out.as_slice()));
            }
        });
}

// -------------------------------------------------------------------------------------------
// Cache key
// -------------------------------------------------------------------------------------------

const VARY: [HeaderName; 2] = [
    HeaderName::from_static("x-tenant"),
    http::header::ACCEPT_LANGUAGE,
];

type KeyInput = (
    (String, String, String, String),
    Vec<(u8, String)>,
    Vec<(bool, String)>,
    (Option<String>, Option<Vec<u8>>),
    (u64, String),
);

#[test]
fn cache_key_never_panics_and_ignores_query_order() {
    const NAMES: &[&str] = &["a", "b", "id", "", "A", "%61", "a b", "é"];
    check!()
        .with_type::<KeyInput>()
        .with_iterations(3000)
        .for_each(
            |(parts, params, vary_values, (consumer, roles), (seed, target))| {
                let (route, other_route, host, path) = parts;
                // Parameters: a small name set (so names repeat) and arbitrary values; `&` and `=`
                // are what split a query, so values carry no `&` and names no `=`.
                let params: Vec<(String, String)> = params
                    .iter()
                    .take(8)
                    .map(|(n, v)| {
                        (
                            NAMES[*n as usize % NAMES.len()].to_string(),
                            v.replace('&', ""),
                        )
                    })
                    .collect();
                let join = |ps: &[(String, String)], gaps: u64| {
                    let mut q = String::new();
                    for (i, (n, v)) in ps.iter().enumerate() {
                        if i > 0 {
                            q.push('&');
                        }
                        if gaps >> (i % 64) & 1 == 1 {
                            q.push('&');
                        }
                        q.push_str(n);
                        q.push('=');
                        q.push_str(v);
                    }
                    q
                };
                // A shuffle, then same-name values put back in their original relative order.
                let mut shuffled = params.clone();
                let mut state = *seed | 1;
                for i in (1..shuffled.len()).rev() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    shuffled.swap(i, (state % (i as u64 + 1)) as usize);
                }
                for name in NAMES {
                    let mut originals = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
                    for slot in shuffled.iter_mut().filter(|(n, _)| n == name) {
                        slot.1 = originals.next().expect("same count").clone();
                    }
                }
                let q1 = join(&params, 0);
                let q2 = join(&shuffled, *seed);

                let mut headers = HeaderMap::new();
                for (second, v) in vary_values.iter().take(4) {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        headers.append(VARY[usize::from(*second)].clone(), v);
                    }
                }
                let k = |route: &str, host: &str, query: Option<&str>| {
                    key::primary_hash(
                        &KeyParts {
                            route,
                            host,
                            path,
                            query,
                            consumer: consumer.as_deref(),
                            roles: roles.as_deref(),
                            upstream: None,
                        },
                        &headers,
                        &VARY,
                    )
                };
                let base = k(route, host, Some(&q1));
                assert_eq!(
                    base,
                    k(route, host, Some(&q2)),
                    "query order changed the key: {q1:?} vs {q2:?}"
                );
                assert_eq!(base, k(route, &host.to_ascii_uppercase(), Some(&q1)));
                if route != other_route {
                    assert_ne!(base, k(other_route, host, Some(&q1)));
                }
                let n = key::normalize_query(&q2);
                assert_eq!(key::normalize_query(&n), n, "normalize is idempotent");
                // Arbitrary raw queries and request targets never panic.
                let _ = k(route, host, Some(target));
                let _ = key::normalize_query(target);
                if let Ok(uri) = target.parse::<http::Uri>() {
                    let _ = key::request_host(&uri, &headers);
                }
            },
        );
}
