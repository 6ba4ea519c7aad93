//! Criterion benches of the auth hot path, each through the plugin as the gateway builds it
//! from YAML: key-auth lookup (hit and miss among 10,000 keys), and jwt verification of
//! HS256, RS256 and ES256 tokens, cold (`cache_entries: 0`: split, decode, signature, claims)
//! and cached (SHA-256 of the token + LRU hit); basic-auth with Argon2id and bcrypt hashes,
//! uncached and cached; hmac-auth verification of a signed request head; mtls-auth's lookup
//! of a verified certificate's subject and SANs among 10,000 consumers; oauth2-introspection's
//! cache hit (SHA-256 of the bearer token, sharded LRU lookup, scope and consumer decision).
//!
//! Run: `cargo bench --bench auth` (release profile). Compare runs on the same machine only.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::config;
use gatehouse::ctx::Runtime;
use gatehouse::plugins::basic_auth::BasicAuth;
use gatehouse::plugins::hmac_auth;
use gatehouse::plugins::jwt::{self, Jwt};
use gatehouse::plugins::key_auth::KeyAuth;
use gatehouse::plugins::{Outcome, Plugin};
use gatehouse::upstream::StateRegistry;
use gatehouse::util::registry::Registry;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pingora::http::RequestHeader;
use std::fmt::Write;
use std::path::Path;

const SECRET: &str = "bench-hs256-secret-0123456789abcdefghij";
const KEYS: usize = 10_000;

fn pem(label: &str, der: &[u8]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), lf)
}

fn load(yaml: &str, dir: &Path) -> Runtime {
    config::load_str(
        yaml,
        dir,
        &StateRegistry::default(),
        &Registry::default(),
        1,
    )
    .unwrap_or_else(|e| panic!("bench config: {e}"))
}

/// A config with `server`, [`KEYS`] consumers (`c0`, `c1`, … with the credentials
/// `credentials(i)` gives) and one route running `plugin`.
fn many_consumers(server: &str, credentials: impl Fn(usize) -> String, plugin: &str) -> String {
    let mut y = format!(
        "server: {server}\nupstreams: [{{ name: u, targets: [{{ addr: \"127.0.0.1:2\" }}] }}]\nconsumers:\n"
    );
    for i in 0..KEYS {
        let _ = writeln!(y, "  - {{ username: c{i}, {} }}", credentials(i));
    }
    let _ = writeln!(
        y,
        "routes: [{{ name: r, paths: [\"/\"], upstream: u, plugins: [{{ name: {plugin} }}] }}]"
    );
    y
}

fn key_lookup(c: &mut Criterion) {
    let y = many_consumers(
        "{ listen: [\"127.0.0.1:1\"] }",
        |i| format!("keyauth_credentials: [{{ key: \"key-{i:08}-a1b2c3d4e5f6\" }}]"),
        "key-auth",
    );
    let rt = load(&y, Path::new("."));
    let Plugin::KeyAuth(p) = &*rt.routes[0].plugins.plugins[0] else {
        panic!("not key-auth")
    };
    let p: &KeyAuth = p;
    let hit = format!("key-{:08}-a1b2c3d4e5f6", KEYS / 2);
    assert_eq!(p.lookup(hit.as_bytes()), Some(KEYS / 2));
    c.bench_function("key-auth lookup, 10k keys, hit", |b| {
        b.iter(|| p.lookup(black_box(hit.as_bytes())))
    });
    c.bench_function("key-auth lookup, 10k keys, miss", |b| {
        b.iter(|| p.lookup(black_box(b"key-99999999-a1b2c3d4e5f6".as_slice())))
    });
}

fn jwt_plugin(rt: &Runtime, route: usize) -> &Jwt {
    match &*rt.routes[route].plugins.plugins[0] {
        Plugin::Jwt(j) => j,
        other => panic!("not jwt: {other:?}"),
    }
}

fn jwt_verify(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    std::fs::write(
        dir.path().join("rsa.pem"),
        pem("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref()),
    )
    .unwrap();
    let rsa_private = pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref());
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ec.pem"),
        pem("PUBLIC KEY", ec.public_key().as_der().unwrap().as_ref()),
    )
    .unwrap();
    let ec_private = pem("PRIVATE KEY", ec.to_pkcs8v1().unwrap().as_ref());

    let y = format!(
        "server: {{ listen: [\"127.0.0.1:1\"] }}
upstreams: [{{ name: u, targets: [{{ addr: \"127.0.0.1:2\" }}] }}]
consumers:
  - username: bench
    jwt_secrets:
      - {{ key: hs, algorithm: HS256, secret: \"{SECRET}\" }}
      - {{ key: rs, algorithm: RS256, rsa_public_key_file: rsa.pem }}
      - {{ key: es, algorithm: ES256, ecdsa_public_key_file: ec.pem }}
routes:
  - {{ name: cold, paths: [\"/cold\"], upstream: u, plugins: [{{ name: jwt, config: {{ cache_entries: 0 }} }}] }}
  - {{ name: cached, paths: [\"/cached\"], upstream: u, plugins: [{{ name: jwt }}] }}
"
    );
    let rt = load(&y, dir.path());
    let (cold, cached) = (jwt_plugin(&rt, 0), jwt_plugin(&rt, 1));
    let now = jwt::now();
    let claims = |iss: &str| serde_json::json!({"iss": iss, "sub": "user-42", "aud": "api", "exp": now as u64 + 86_400, "roles": ["reader", "writer"]});
    let tokens = [
        (
            "HS256",
            encode(
                &Header::new(Algorithm::HS256),
                &claims("hs"),
                &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        (
            "RS256",
            encode(
                &Header::new(Algorithm::RS256),
                &claims("rs"),
                &EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        (
            "ES256",
            encode(
                &Header::new(Algorithm::ES256),
                &claims("es"),
                &EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
    ];
    // Where the cold HS256 time goes: splitting and decoding, then the signature alone.
    let hs_token = &tokens[0].1;
    let hs_key = jwt::VerifyKey::hmac("HS256", SECRET.as_bytes()).unwrap();
    c.bench_function(
        "jwt HS256 split + base64url + header JSON (parse_jws)",
        |b| b.iter(|| jwt::parse_jws(black_box(hs_token)).is_ok()),
    );
    let parsed = jwt::parse_jws(hs_token).unwrap();
    c.bench_function("jwt HS256 signature only (check_signature)", |b| {
        b.iter(|| jwt::check_signature(black_box(&parsed), &hs_key).is_ok())
    });
    for (alg, token) in &tokens {
        assert!(cold.authenticate(token, now).is_ok(), "{alg}");
        assert!(cached.authenticate(token, now).is_ok(), "{alg}");
        c.bench_function(&format!("jwt {alg} verify, cold"), |b| {
            b.iter(|| cold.authenticate(black_box(token), now).is_ok())
        });
        c.bench_function(&format!("jwt {alg} verify, cached"), |b| {
            b.iter(|| cached.authenticate(black_box(token), now).is_ok())
        });
    }
}

fn basic_plugin(rt: &Runtime, route: usize) -> &BasicAuth {
    match &*rt.routes[route].plugins.plugins[0] {
        Plugin::BasicAuth(p) => p,
        other => panic!("not basic-auth: {other:?}"),
    }
}

/// basic-auth with the hashes' recommended costs (Argon2id m=19 MiB t=2 p=1, the argon2
/// crate's default; bcrypt cost 10), uncached (`cache_entries: 0`: the full hash every
/// time) and cached (HMAC of user:password + LRU hit).
fn basic_verify(c: &mut Criterion) {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"bench-salt-16byt").unwrap();
    let argon = argon2::Argon2::default()
        .hash_password(b"argon-password", &salt)
        .unwrap()
        .to_string();
    let bc = bcrypt::hash_with_salt("bcrypt-password", 10, *b"bench-salt-16byt")
        .unwrap()
        .format_for_version(bcrypt::Version::TwoB);
    let y = format!(
        "server: {{ listen: [\"127.0.0.1:1\"] }}
upstreams: [{{ name: u, targets: [{{ addr: \"127.0.0.1:2\" }}] }}]
consumers:
  - username: a
    basicauth_credentials: [{{ username: a, password: \"{argon}\" }}]
  - username: b
    basicauth_credentials: [{{ username: b, password: \"{bc}\" }}]
routes:
  - {{ name: cold, paths: [\"/cold\"], upstream: u, plugins: [{{ name: basic-auth, config: {{ cache_entries: 0 }} }}] }}
  - {{ name: cached, paths: [\"/cached\"], upstream: u, plugins: [{{ name: basic-auth }}] }}
"
    );
    let rt = load(&y, Path::new("."));
    let (cold, cached) = (basic_plugin(&rt, 0), basic_plugin(&rt, 1));
    for (name, up, consumer) in [
        ("argon2id", "a:argon-password", 0),
        ("bcrypt-10", "b:bcrypt-password", 1),
    ] {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", format!("Basic {}", STANDARD.encode(up)))
            .unwrap();
        assert_eq!(cold.check_blocking(&req), Ok(consumer));
        assert_eq!(cached.check_blocking(&req), Ok(consumer));
        let mut g = c.benchmark_group("basic-auth");
        g.sample_size(10);
        g.bench_function(format!("{name} verify, uncached"), |b| {
            b.iter(|| cold.check_blocking(black_box(&req)).is_ok())
        });
        g.finish();
        c.bench_function(&format!("basic-auth {name} verify, cached"), |b| {
            b.iter(|| cached.check_blocking(black_box(&req)).is_ok())
        });
    }
}

/// hmac-auth verification of a signed request head (parse, date and skew, HMAC of the
/// signing string, constant-time compare), per algorithm.
fn hmac_verify(c: &mut Criterion) {
    let y = "server: { listen: [\"127.0.0.1:1\"] }
upstreams: [{ name: u, targets: [{ addr: \"127.0.0.1:2\" }] }]
consumers:
  - username: a
    hmacauth_credentials: [{ username: a-key, secret: \"bench-hmac-secret-0123456789\" }]
routes:
  - { name: r, paths: [\"/\"], upstream: u, plugins: [{ name: hmac-auth, config: { algorithms: [hmac-sha1, hmac-sha256, hmac-sha512] } }] }
";
    let rt = load(y, Path::new("."));
    let Plugin::HmacAuth(p) = &*rt.routes[0].plugins.plugins[0] else {
        panic!("not hmac-auth")
    };
    let now = std::time::SystemTime::now();
    for alg in ["hmac-sha1", "hmac-sha256", "hmac-sha512"] {
        let mut req = RequestHeader::build("GET", b"/orders/42?expand=items", None).unwrap();
        req.insert_header("date", httpdate::fmt_http_date(now))
            .unwrap();
        let headers = "date @request-target";
        let sig = hmac_auth::sign(&req, alg, headers, b"bench-hmac-secret-0123456789").unwrap();
        req.insert_header(
            "authorization",
            format!("hmac username=\"a-key\", algorithm=\"{alg}\", headers=\"{headers}\", signature=\"{sig}\""),
        )
        .unwrap();
        assert!(p.check(&req, now, false).is_ok());
        c.bench_function(&format!("hmac-auth {alg} verify"), |b| {
            b.iter(|| p.check(black_box(&req), now, false).is_ok())
        });
    }
}

/// mtls-auth's lookup of a verified certificate (subject normalised and hashed on the fly,
/// then each SAN) among 10,000 consumers with a subject and a SAN each: a subject hit, a
/// SAN hit (the subject missed first) and a miss.
fn mtls_identify(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    gatehouse::demo::write_server_pki(dir.path()).unwrap();
    let y = many_consumers(
        "\n  listen: [\"127.0.0.1:1\"]\n  tls: { listen: [\"127.0.0.1:3\"], cert: s.crt, key: s.key, client_auth: { ca: ca.pem } }",
        |i| format!("mtls_credentials: [{{ subject: \"CN=partner-{i},OU=Integrations,O=Acme Corp,C=DE\" }}, {{ san: \"spiffe://acme/partner-{i}\" }}]"),
        "mtls-auth",
    );
    let rt = load(&y, dir.path());
    let Plugin::MtlsAuth(p) = &*rt.routes[0].plugins.plugins[0] else {
        panic!("not mtls-auth")
    };
    let n = KEYS / 2;
    let subject = format!("CN=partner-{n},OU=Integrations,O=Acme Corp,C=DE");
    let sans = vec![
        format!("partner-{n}.acme.example"),
        format!("spiffe://acme/partner-{n}"),
    ];
    assert_eq!(p.identify(&subject, &[]), Ok(n));
    assert_eq!(p.identify("CN=someone-else,O=Acme Corp", &sans), Ok(n));
    assert!(p
        .identify("CN=someone-else,O=Acme Corp", &sans[..1])
        .is_err());
    c.bench_function("mtls-auth identify, 10k consumers, subject hit", |b| {
        b.iter(|| p.identify(black_box(&subject), black_box(&[])))
    });
    c.bench_function("mtls-auth identify, 10k consumers, SAN hit", |b| {
        b.iter(|| p.identify(black_box("CN=someone-else,O=Acme Corp"), black_box(&sans)))
    });
    c.bench_function("mtls-auth identify, 10k consumers, miss", |b| {
        b.iter(|| {
            p.identify(
                black_box("CN=someone-else,O=Acme Corp"),
                black_box(&sans[..1]),
            )
        })
    });
}

/// A one-answer introspection endpoint on 127.0.0.1 (a thread; every call: active, scope
/// `read write`, client_id `c0`), to fill the cache once through the real call.
fn canned_endpoint() -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then as many body bytes as Content-Length says.
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let body = r#"{"active":true,"client_id":"c0","scope":"read write","exp":4102444800}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// oauth2-introspection, a cached active token: bearer parse, SHA-256 of the token, LRU
/// lookup, the nbf/scope checks and the consumer, as `request_filter` runs them on a hit.
fn introspection_cache_hit(c: &mut Criterion) {
    // The bench is its own process: its environment is its own to set.
    std::env::set_var("BENCH_INTROSPECTION_SECRET", "bench-client-secret");
    let port = canned_endpoint();
    let y = format!(
        "server: {{ listen: [\"127.0.0.1:1\"] }}
upstreams: [{{ name: u, targets: [{{ addr: \"127.0.0.1:2\" }}] }}]
consumers: [{{ username: c0 }}]
routes:
  - name: r
    paths: [\"/\"]
    upstream: u
    plugins:
      - name: oauth2-introspection
        config:
          endpoint: http://127.0.0.1:{port}/introspect
          client_id: gw
          client_secret: ${{BENCH_INTROSPECTION_SECRET}}
          required_scopes: [read]
"
    );
    let rt = std::sync::Arc::new(load(&y, Path::new(".")));
    let Plugin::Oauth2Introspection(p) = &*rt.routes[0].plugins.plugins[0] else {
        panic!("not oauth2-introspection")
    };
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header(
        "authorization",
        "Bearer 2YotnFZFEjr1zCsicMWpAA.bench-opaque-access-token-0123456789",
    )
    .unwrap();
    let mut ctx = gatehouse::ctx::RequestCtx::new(rt.clone());
    ctx.route = Some(0);
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = tokio_rt.block_on(p.authorize(&req, &mut ctx));
    assert!(matches!(first, Outcome::Continue), "{first:?}");
    assert!(matches!(
        p.decide_cached(&req, &mut ctx),
        Some(Outcome::Continue)
    ));
    assert_eq!(ctx.consumer, Some(0));
    c.bench_function("oauth2-introspection cache hit", |b| {
        b.iter(|| p.decide_cached(black_box(&req), &mut ctx).is_some())
    });
}

criterion_group!(
    benches,
    key_lookup,
    jwt_verify,
    basic_verify,
    hmac_verify,
    mtls_identify,
    introspection_cache_hit
);
criterion_main!(benches);
