//! Criterion benches for request-transformer / response-transformer: header rules applied
//! to a request and a response head, and the JSON body rewrite (remove + rename through
//! nested arrays, with and without the envelope) of a 2 KB and a 200 KB body, next to a
//! `serde_json::Value` round trip for scale; and request-transformer's JSON request body
//! rewrite (the seed's `_meta` with `$(now)` and `$(client_ip)`, a remove and a nested
//! rename) of a 2 KB body.
//!
//! Run: `cargo bench --bench transform` (release profile). Compare runs on the same machine
//! only.

#[path = "support/mod.rs"]
mod support;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gatehouse::config;
use gatehouse::ctx::RequestCtx;
use gatehouse::ctx::Runtime;
use gatehouse::plugins::request_transformer::RequestTransformer;
use gatehouse::plugins::response_transformer::ResponseTransformer;
use gatehouse::plugins::{Answer, Hooks, Plugin};
use gatehouse::upstream::StateRegistry;
use pingora::http::{RequestHeader, ResponseHeader};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

const CONFIG: &str = r#"server: { listen: ["127.0.0.1:18080"] }
upstreams:
  - name: u
    targets: [{ addr: "127.0.0.1:9001" }]
routes:
  - name: plain
    paths: ["/plain"]
    upstream: u
    plugins:
      - name: request-transformer
        config:
          remove: { headers: [X-Debug] }
          rename: { headers: ["X-Old:X-New"] }
          replace: { headers: ["User-Agent:gatehouse"] }
          add: { headers: ["X-Gateway:gatehouse", "X-Client-IP:$(client_ip)", "X-Trace:rid=$(request_id)"] }
      - name: response-transformer
        config:
          remove: { headers: [Server, X-Powered-By], json: [password, internal_id] }
          rename: { headers: ["X-Upstream-Time:X-Backend-Time"], json: ["user_name:name"] }
          add: { headers: ["X-Served-By:gatehouse"] }
  - name: query
    paths: ["/query"]
    upstream: u
    plugins:
      - name: request-transformer
        config:
          remove: { headers: [X-Debug], querystring: [debug] }
          rename: { headers: ["X-Old:X-New"], querystring: ["q:search"] }
          add: { headers: ["X-Gateway:gatehouse"], querystring: ["source:gateway", "rid:$(request_id)"] }
  - name: body
    paths: ["/body"]
    upstream: u
    plugins:
      - name: request-transformer
        config:
          remove: { json: [password] }
          rename: { json: ["user.user_name:user.name"] }
          add: { json: ["_meta.requestedAt:$(now)", "_meta.clientIp:$(client_ip)"] }
  - name: envelope
    paths: ["/envelope"]
    upstream: u
    plugins:
      - name: response-transformer
        config:
          remove: { json: [password, internal_id] }
          rename: { json: ["user_name:name"] }
          envelope: { enabled: true, version: v1 }
"#;

fn runtime() -> Arc<Runtime> {
    Arc::new(
        config::load_str(
            CONFIG,
            Path::new("."),
            &StateRegistry::default(),
            &Default::default(),
            1,
        )
        .expect("bench config"),
    )
}

fn plugin<'a>(rt: &'a Runtime, route: &str, name: &str) -> &'a Plugin {
    let r = rt.routes.iter().find(|r| r.name == route).expect("route");
    r.plugins
        .plugins
        .iter()
        .find(|p| p.name() == name)
        .expect("plugin")
}

fn req_tf<'a>(rt: &'a Runtime, route: &str) -> &'a RequestTransformer {
    match plugin(rt, route, "request-transformer") {
        Plugin::RequestTransformer(p) => p,
        _ => unreachable!(),
    }
}

fn resp_tf<'a>(rt: &'a Runtime, route: &str) -> &'a ResponseTransformer {
    match plugin(rt, route, "response-transformer") {
        Plugin::ResponseTransformer(p) => p,
        _ => unreachable!(),
    }
}

fn ctx(rt: &Arc<Runtime>) -> RequestCtx {
    let mut ctx = RequestCtx::new(rt.clone());
    ctx.request_id = "0b5c6f5e-6a4f-4b8e-9d55-3f0c2d1e7a90".into();
    ctx.client_ip = Some("203.0.113.7".parse().unwrap());
    ctx
}

fn request(path: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    for (n, v) in [
        ("Host", "api.example.com"),
        ("User-Agent", "curl/8.5.0"),
        ("Accept", "application/json"),
        ("X-Debug", "1"),
        ("X-Old", "value"),
        ("Authorization", "Bearer abc.def.ghi"),
        ("X-Request-ID", "0b5c6f5e-6a4f-4b8e-9d55-3f0c2d1e7a90"),
        ("Accept-Encoding", "gzip, br"),
    ] {
        r.append_header(n, v).unwrap();
    }
    r
}

fn response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, None).unwrap();
    for (n, v) in [
        ("Content-Type", "text/html"),
        ("Server", "nginx"),
        ("X-Powered-By", "PHP"),
        ("X-Upstream-Time", "12"),
        ("Cache-Control", "no-cache"),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ] {
        r.append_header(n, v).unwrap();
    }
    r
}

/// An array of user records with nested arrays, about `size` bytes.
fn body(size: usize) -> Bytes {
    let s = support::json_records(size, "],\"page\":1,\"internal_id\":99}", |s, i| {
        let _ = write!(
            s,
            r#"{{"id":{i},"user_name":"user{i}","email":"user{i}@example.com","password":"$2b$12$abcdefghijklmnopqrstuv","created":"2024-01-01T00:00:00Z","score":{}.5,"roles":[{{"name":"reader","internal_id":{i}}},{{"name":"writer","internal_id":{}}}],"tags":["a","b","c"]}}"#,
            i * 7,
            i + 1
        );
    });
    Bytes::from(s)
}

fn headers(c: &mut Criterion) {
    let rt = runtime();
    let ctx = ctx(&rt);
    let p = req_tf(&rt, "plain");
    c.bench_function(
        "request-transformer headers (1 remove, 1 rename, 1 replace, 3 add)",
        |b| {
            b.iter_batched(
                || request("/plain/users?id=1"),
                |mut r| {
                    p.upstream_request(&mut r, &ctx).unwrap();
                    r
                },
                BatchSize::SmallInput,
            )
        },
    );
    let p = req_tf(&rt, "query");
    c.bench_function("request-transformer headers + query string", |b| {
        b.iter_batched(
            || request("/query/users?q=shoes&debug=1&page=2"),
            |mut r| {
                p.upstream_request(&mut r, &ctx).unwrap();
                r
            },
            BatchSize::SmallInput,
        )
    });
    let p = resp_tf(&rt, "plain");
    let mut ctx = ctx;
    c.bench_function("response-transformer headers (non-JSON answer)", |b| {
        b.iter_batched(
            response,
            |mut r| {
                p.response(
                    &mut Answer {
                        head: &mut r,
                        gateway_made: false,
                    },
                    &mut ctx,
                )
                .unwrap();
                r
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function(
        "clone of the request head (setup cost, for reference)",
        |b| {
            let r = request("/plain/users?id=1");
            b.iter(|| black_box(r.clone()))
        },
    );
}

fn json(c: &mut Criterion) {
    let rt = runtime();
    let ctx = ctx(&rt);
    let rules = resp_tf(&rt, "plain");
    let env = resp_tf(&rt, "envelope");
    let mut g = c.benchmark_group("json rewrite");
    for (label, size) in [("2KB", 2 * 1024), ("200KB", 200 * 1024)] {
        let input = body(size);
        // Sanity: the rewrite changes the body and keeps it valid JSON.
        let out = rules.rewrite(input.clone(), 200, &ctx);
        assert!(out.len() < input.len());
        serde_json::from_slice::<serde_json::Value>(&out).expect("valid output");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("remove+rename {label}"), |b| {
            b.iter(|| rules.rewrite(black_box(input.clone()), 200, &ctx))
        });
        g.bench_function(format!("remove+rename+envelope {label}"), |b| {
            b.iter(|| env.rewrite(black_box(input.clone()), 200, &ctx))
        });
        g.bench_function(
            format!("serde_json Value parse+serialize {label} (reference)"),
            |b| {
                b.iter(|| {
                    let v: serde_json::Value = serde_json::from_slice(black_box(&input)).unwrap();
                    serde_json::to_vec(&v).unwrap()
                })
            },
        );
    }
    g.finish();
}

/// A request body of about `size` bytes: a user object, a password and a list of items.
fn request_body(size: usize) -> Bytes {
    let mut s = String::from(
        r#"{"user":{"id":42,"user_name":"ada","email":"ada@example.com"},"password":"hunter2","items":["#,
    );
    let mut i = 0;
    while s.len() < size {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            r#"{{"sku":"SKU-{i:05}","qty":{},"price":{}.99,"note":"gift wrap"}}"#,
            i % 5 + 1,
            i * 3
        );
        i += 1;
    }
    s.push_str(r#"],"currency":"EUR"}"#);
    Bytes::from(s)
}

fn request_json(c: &mut Criterion) {
    let rt = runtime();
    let ctx = ctx(&rt);
    let rules = req_tf(&rt, "body").body().expect("json rules");
    let input = request_body(2 * 1024);
    // Sanity: the rewrite changes the body and keeps it valid JSON.
    let mut out = Vec::new();
    assert!(rules.rewrite(&input, &ctx, &mut out).unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid output");
    assert!(v.get("password").is_none() && v["_meta"]["clientIp"] == "203.0.113.7");
    let mut g = c.benchmark_group("request body rewrite");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("remove+nested rename+_meta add 2KB", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            rules
                .rewrite(black_box(&input), &ctx, &mut out)
                .expect("valid");
            out
        })
    });
    g.bench_function("serde_json Value parse+serialize 2KB (reference)", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&input)).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, headers, json, request_json);
criterion_main!(benches);
