//! Unit tests: config checks with path and line, the secret kept out of `Debug` and errors,
//! state kept across identical entries, the decision rules, and coalescing (with a cancelled
//! leader) against a small introspection server in the test.

use super::call::form_encode;
use super::*;
use crate::config::{self, position::Positions};
use crate::ctx::Runtime;
use crate::upstream::StateRegistry;
use crate::util::registry::Registry;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SECRET_VAR: &str = "UNIT_INTROSPECTION_SECRET";
const SECRET: &str = "s3cr3t-unit:value/+&";

/// A config whose oauth2-introspection `config:` lines start at line 12.
fn yaml(route: &str, config_lines: &str) -> String {
    let mut y = format!(
        "server: {{ listen: [\"127.0.0.1:18080\"] }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: {route}\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: oauth2-introspection\n        config:\n"
    );
    for l in config_lines.lines() {
        y.push_str("          ");
        y.push_str(l);
        y.push('\n');
    }
    y.push_str("consumers:\n  - { username: alice, roles: [reader] }\n");
    y
}

/// `endpoint`, `client_id` and the secret from `${UNIT_INTROSPECTION_SECRET}`, then `more`.
fn valid(endpoint: &str, more: &str) -> String {
    format!("endpoint: \"{endpoint}\"\nclient_id: gw\nclient_secret: ${{{SECRET_VAR}}}\n{more}")
}

fn load_in(reg: &Registry, y: &str) -> Result<Arc<Runtime>, config::ConfigErrors> {
    let pos = Positions::build(y);
    let parsed = config::parse_with(y, &pos, &|n| (n == SECRET_VAR).then(|| SECRET.to_string()))?;
    config::compile::compile(
        parsed,
        &pos,
        Path::new("."),
        &StateRegistry::default(),
        reg,
        1,
        y,
    )
    .map(Arc::new)
}

fn load(y: &str) -> Result<Arc<Runtime>, config::ConfigErrors> {
    load_in(&Registry::default(), y)
}

fn plugin(rt: &Runtime) -> &Oauth2Introspection {
    rt.routes
        .first()
        .and_then(|r| r.plugins.find())
        .expect("oauth2-introspection on the first route")
}

const P: &str = "routes[0].plugins[0].config";

#[test]
fn config_errors_name_path_and_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "client_id: gw\nclient_secret: ${UNIT_INTROSPECTION_SECRET}",
            "endpoint",
            11,
            "is required",
        ),
        (
            &valid("ftp://as.local/introspect", ""),
            "endpoint",
            12,
            "http:// or https://",
        ),
        (&valid("not a url", ""), "endpoint", 12, "not a valid URL"),
        (
            &valid("http://gw:pw@as.local/introspect", ""),
            "endpoint",
            12,
            "credentials",
        ),
        (
            "endpoint: http://as.local/i\nclient_secret: ${UNIT_INTROSPECTION_SECRET}",
            "client_id",
            11,
            "is required",
        ),
        (
            "endpoint: http://as.local/i\nclient_id: gw\nclient_secret: literal-secret",
            "client_secret",
            14,
            "literal client secret is refused",
        ),
        (
            "endpoint: http://as.local/i\nclient_id: gw\nclient_secret: \"${NOPE:-fallback}\"",
            "client_secret",
            14,
            "literal client secret is refused",
        ),
        (
            "endpoint: http://as.local/i\nclient_id: gw",
            "client_secret",
            11,
            "is required",
        ),
        (
            &valid("http://a/", "auth_method: private_key_jwt"),
            "auth_method",
            15,
            "unknown variant",
        ),
        (
            &valid("http://a/", "consumer_claim: email"),
            "consumer_claim",
            15,
            "unknown variant",
        ),
        (
            &valid("http://a/", "on_outage: ignore"),
            "on_outage",
            15,
            "unknown variant",
        ),
        (
            &valid("http://a/", "timeout: 0s"),
            "timeout",
            15,
            "greater than 0",
        ),
        (
            &valid("http://a/", "timeout: 2x"),
            "timeout",
            15,
            "unknown unit",
        ),
        (
            &valid("http://a/", "required_scopes:\n  - read\n  - \"bad scope\""),
            "required_scopes[1]",
            17,
            "is not a scope",
        ),
        (
            &valid("http://a/", "cache:\n  max_entries: 0"),
            "cache.max_entries",
            16,
            "at least 1",
        ),
        (
            &valid("http://a/", "cache: { ttl: 5m }"),
            "cache.ttl",
            15,
            "unknown field",
        ),
        (
            &valid("http://a/", "bogus: 1"),
            "bogus",
            15,
            "unknown field",
        ),
        (
            &valid("http://a/", "ca_file: /nonexistent/gatehouse-ca.pem"),
            "ca_file",
            15,
            "cannot read",
        ),
    ];
    for (text, path, line, msg) in cases {
        let errs = load(&yaml("r", text)).expect_err("config must be refused");
        assert_eq!(errs.0.len(), 1, "{text}: exactly one error: {errs:?}");
        let e = &errs.0[0];
        assert_eq!(e.path, format!("{P}.{path}"), "{text}");
        assert_eq!(e.line, Some(*line), "{text}: {}", e.message);
        assert!(e.message.contains(msg), "{text}: {}", e.message);
        assert!(!e.message.contains("literal-secret"), "{}", e.message);
        assert!(!e.message.contains("gw:pw"), "{}", e.message);
    }
}

#[test]
fn defaults_and_no_secret_in_debug() {
    let rt = load(&yaml(
        "r",
        &valid("http://as.local:9000/introspect?k=q-secret", ""),
    ))
    .expect("valid");
    let p = plugin(&rt);
    let e = &p.state.endpoint;
    assert!(matches!(e.auth, ClientAuth::Basic(_)));
    assert_eq!(e.consumer_claim, ConsumerClaim::ClientId);
    assert_eq!(e.on_outage, OnOutage::Reject);
    assert_eq!(e.max_ttl_ms, 300_000);
    assert_eq!(e.negative_ttl_ms, 10_000);
    assert!(p.hide_credentials && p.run_on_preflight);
    assert_eq!(e.target, "http://as.local:9000/introspect");
    let dbg = format!("{rt:?}");
    for s in ["q-secret", SECRET, "s3cr3t", "Basic "] {
        assert!(!dbg.contains(s), "{s} in {dbg}");
    }
    // RFC 6749 2.3.1: id and secret form-encoded, then Basic.
    let ClientAuth::Basic(v) = &e.auth else {
        unreachable!()
    };
    assert!(v.is_sensitive());
    let mut pair = Vec::new();
    form_encode(b"gw", &mut pair);
    pair.push(b':');
    form_encode(SECRET.as_bytes(), &mut pair);
    assert_eq!(
        v.to_str().unwrap(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&pair)
        )
    );

    let rt = load(&yaml(
        "r",
        &valid(
            "https://as.local/i",
            "auth_method: client_secret_post\nconsumer_claim: sub\non_outage: serve_cached\nrequired_scopes: [read, read, write]\nhide_credentials: false",
        ),
    ))
    .expect("valid");
    let p = plugin(&rt);
    let ClientAuth::Post(extra) = &p.state.endpoint.auth else {
        panic!("post")
    };
    assert_eq!(
        std::str::from_utf8(extra).unwrap(),
        "&client_id=gw&client_secret=s3cr3t-unit%3Avalue%2F%2B%26"
    );
    assert_eq!(
        p.state.endpoint.required_scopes.len(),
        2,
        "duplicates dropped"
    );
    assert_eq!(
        p.scope_challenge.to_str().unwrap(),
        "Bearer error=\"insufficient_scope\", scope=\"read write\""
    );
}

#[test]
fn state_survives_an_identical_entry_only() {
    let reg = Registry::default();
    let cfg = valid("http://keep.local/i", "");
    let a = load_in(&reg, &yaml("keep-r", &cfg)).expect("valid");
    let b = load_in(&reg, &yaml("keep-r", &cfg)).expect("valid");
    assert!(Arc::ptr_eq(&plugin(&a).state, &plugin(&b).state));
    let changed = load_in(
        &reg,
        &yaml("keep-r", &valid("http://keep.local/i", "timeout: 3s")),
    )
    .expect("valid");
    assert!(!Arc::ptr_eq(&plugin(&a).state, &plugin(&changed).state));
    let other_route = load_in(&reg, &yaml("keep-s", &cfg)).expect("valid");
    assert!(!Arc::ptr_eq(&plugin(&a).state, &plugin(&other_route).state));
    let weak = Arc::downgrade(&plugin(&a).state);
    drop((a, b));
    assert!(
        weak.upgrade().is_none(),
        "gone with the last runtime using it"
    );
}

fn answer(json: &str) -> call::Answer {
    serde_json::from_str(json).expect("answer")
}

#[test]
fn decision_rules() {
    let rt = load(&yaml(
        "r",
        &valid(
            "http://a/",
            "required_scopes: [read, write]\ncache: { max_ttl: 60s, negative_ttl: 5s }",
        ),
    ))
    .expect("valid");
    let e = &plugin(&rt).state.endpoint;
    let now = 1_700_000_000_000u64;
    let s = now / 1000;

    let d = e.decide(&answer(&format!("{{\"active\":true,\"scope\":\"write read x\",\"client_id\":\"alice\",\"sub\":\"u-1\",\"exp\":{}}}", s + 30)), now);
    assert!(d.active && d.scope_ok);
    assert_eq!(d.fresh_until_ms, (s + 30) * 1000, "exp before max_ttl");
    assert_eq!(
        d.valid_until_ms, d.fresh_until_ms,
        "reject: no stale serving"
    );
    assert_eq!(d.consumer.as_deref(), Some("alice"));
    assert_eq!(d.headers.len(), 3);

    let d = e.decide(
        &answer(&format!(
            "{{\"active\":true,\"scope\":\"read\",\"exp\":{}}}",
            s + 3600
        )),
        now,
    );
    assert!(d.active && !d.scope_ok, "write missing");
    assert_eq!(d.fresh_until_ms, now + 60_000, "max_ttl before exp");
    assert!(d.consumer.is_none());
    // `readwrite` is not `read` and `write`.
    assert!(
        !e.decide(&answer("{\"active\":true,\"scope\":\"readwrite\"}"), now)
            .scope_ok
    );

    let d = e.decide(&answer("{\"active\":false,\"scope\":\"read write\"}"), now);
    assert!(!d.active);
    assert_eq!(d.fresh_until_ms, now + 5_000, "negative_ttl");
    // Past exp: inactive whatever the endpoint says.
    let d = e.decide(
        &answer(&format!(
            "{{\"active\":true,\"scope\":\"read write\",\"exp\":{s}}}"
        )),
        now,
    );
    assert!(!d.active);
    let d = e.decide(
        &answer(&format!(
            "{{\"active\":true,\"scope\":\"read write\",\"nbf\":{}}}",
            s + 10
        )),
        now,
    );
    assert!(d.active && d.nbf_ms == Some((s + 10) * 1000));
    // Malformed answers are refused by type.
    for bad in [
        "{}",
        "{\"active\":\"true\"}",
        "{\"active\":true,\"exp\":\"1\"}",
        "[]",
        "{\"active\":true,\"scope\":1}",
    ] {
        assert!(serde_json::from_str::<call::Answer>(bad).is_err(), "{bad}");
    }

    // serve_cached: valid until the token's own exp (or one more max_ttl without one).
    let rt = load(&yaml(
        "r",
        &valid(
            "http://a/",
            "on_outage: serve_cached\nconsumer_claim: sub\ncache: { max_ttl: 60s }",
        ),
    ))
    .expect("valid");
    let e = &plugin(&rt).state.endpoint;
    let d = e.decide(
        &answer(&format!(
            "{{\"active\":true,\"sub\":\"u-1\",\"exp\":{}}}",
            s + 3600
        )),
        now,
    );
    assert_eq!(d.fresh_until_ms, now + 60_000);
    assert_eq!(d.valid_until_ms, (s + 3600) * 1000);
    assert_eq!(d.consumer.as_deref(), Some("u-1"));
    let d = e.decide(&answer("{\"active\":true}"), now);
    assert_eq!(d.valid_until_ms, now + 120_000);
}

// ---------------------------------------------------------------------------------------------
// Against a server
// ---------------------------------------------------------------------------------------------

/// An introspection server on 127.0.0.1 that answers every token as active after `delay`,
/// counting its calls.
async fn server(delay: Duration, calls: Arc<AtomicUsize>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let calls = calls.clone();
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let _ = req.into_body().collect().await;
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(
                                    b"{\"active\":true,\"client_id\":\"alice\",\"scope\":\"read\"}",
                                ),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, task)
}

fn bearer(token: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/", None).expect("head");
    r.append_header("authorization", format!("Bearer {token}"))
        .expect("header");
    r
}

#[tokio::test]
async fn concurrent_misses_share_one_call_and_a_cancelled_leader_strands_nobody() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (port, srv) = server(Duration::from_millis(300), calls.clone()).await;
    let rt = load(&yaml(
        "r",
        &valid(&format!("http://127.0.0.1:{port}/i"), ""),
    ))
    .expect("valid");
    let p = plugin(&rt);
    let req = bearer("tok-1");

    // The leader gives up after 50 ms (its client went away); the followers still get the
    // answer of the one call.
    let mut leader_ctx = RequestCtx::new(rt.clone());
    let leader = tokio::time::timeout(
        Duration::from_millis(50),
        p.authorize(&req, &mut leader_ctx),
    );
    let (cancelled, results) = tokio::join!(leader, async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let rt = rt.clone();
            let req = req.clone();
            set.spawn(async move {
                let mut ctx = RequestCtx::new(rt.clone());
                let o = plugin(&rt).authorize(&req, &mut ctx).await;
                (matches!(o, Outcome::Continue), ctx.consumer)
            });
        }
        set.join_all().await
    });
    assert!(cancelled.is_err(), "the leader was cancelled");
    for (ok, consumer) in results {
        assert!(ok);
        assert_eq!(consumer, Some(0), "alice");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(p.state.flights.len(), 0, "the call unregistered itself");
    // Now a cache hit: no call.
    let mut ctx = RequestCtx::new(rt.clone());
    assert!(matches!(
        p.decide_cached(&req, &mut ctx),
        Some(Outcome::Continue)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(ctx.plugins.oauth2_introspection.is_some());

    // A leader cancelled alone: its call still completes and fills the cache.
    let req2 = bearer("tok-2");
    let mut ctx = RequestCtx::new(rt.clone());
    let r = tokio::time::timeout(Duration::from_millis(20), p.authorize(&req2, &mut ctx)).await;
    assert!(r.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ctx = RequestCtx::new(rt.clone());
    assert!(matches!(
        p.decide_cached(&req2, &mut ctx),
        Some(Outcome::Continue)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    srv.abort();
}
