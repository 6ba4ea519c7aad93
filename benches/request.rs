//! Criterion benches of one whole request through the gateway's `ProxyHttp` hooks, in
//! process and without sockets: Pingora parses the request head from memory
//! (`Session::new_h1` over a `Cursor`), then the hooks run in the order Pingora's proxy
//! calls them (`new_ctx`, `early_request_filter`, `request_filter`, `upstream_peer`,
//! `upstream_request_filter`, `upstream_response_filter`, `response_filter`,
//! `response_body_filter`, `logging`). What is left out is exactly what the gateway does not
//! own: socket I/O, the upstream connection pool and writing the response.
//!
//! Scenarios mirror `loadtest/compare.sh`: `plain` (a route, no plugins) and `chain`
//! (correlation-id + key-auth + rate-limiting + security-headers). `metrics_record` is the
//! per-request metrics work alone (pre-resolved per-route handles: one counter and one
//! histogram). `hooks_only` reuses one parsed session to show the hooks without the head
//! parse.
//!
//! Run: `cargo bench --bench request` (release profile). Each iteration includes one
//! `block_on` of a current-thread Tokio runtime (~0.1 µs; see `block_on_empty`).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::app::Shared;
use gatehouse::config;
use gatehouse::gateway::Gateway;
use gatehouse::observe::metrics;
use gatehouse::upstream::StateRegistry;
use gatehouse::util::registry::Registry;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const YAML: &str = r#"
server:
  listen: ["127.0.0.1:18080"]
  access_log: off
upstreams:
  - name: origin
    targets: [{ addr: "127.0.0.1:9001" }, { addr: "127.0.0.1:9002" }]
consumers:
  - username: bench
    keyauth_credentials: [{ key: bench-key-0001 }]
routes:
  - name: users
    paths: ["/api/v1/users"]
    upstream: origin
  - name: orders
    paths: ["/api/v1/orders"]
    upstream: origin
    plugins:
      - name: correlation-id
      - name: key-auth
      - name: rate-limiting
        config: { second: 1000000000, limit_by: consumer, hide_client_headers: true }
      - name: security-headers
"#;

const PLAIN: &[u8] = b"GET /api/v1/users/42?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
const CHAIN: &[u8] = b"GET /api/v1/orders/42?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\nX-API-Key: bench-key-0001\r\n\r\n";

fn gateway() -> Gateway {
    let states = StateRegistry::default();
    let limiters = Registry::default();
    let rt = config::load_str(YAML, Path::new("."), &states, &limiters, 1).expect("bench config");
    let shared: Arc<Shared> =
        Shared::from_runtime(rt, states, limiters, PathBuf::from("/nonexistent.yaml"));
    Gateway::new(shared.live(), shared.acme.clone())
}

fn upstream_response() -> ResponseHeader {
    let mut r = ResponseHeader::build(200, Some(4)).expect("response");
    r.insert_header("content-type", "application/json")
        .expect("header");
    r.insert_header("content-length", "17").expect("header");
    r.insert_header("server", "origin").expect("header");
    r
}

/// Runs the hooks after the head is parsed. Panics if the gateway refused the request: a
/// bench that measured a 401 path by mistake would be worthless.
async fn hooks(gw: &Gateway, s: &mut Session) {
    let mut ctx = gw.new_ctx();
    gw.early_request_filter(s, &mut ctx).await.expect("early");
    let answered = gw
        .request_filter(s, &mut ctx)
        .await
        .expect("request_filter");
    assert!(!answered, "the bench request was refused");
    let peer = gw.upstream_peer(s, &mut ctx).await.expect("peer");
    black_box(&peer);
    let mut up = s.req_header().clone();
    gw.upstream_request_filter(s, &mut up, &mut ctx)
        .await
        .expect("upstream_request_filter");
    black_box(&up);
    let mut resp = upstream_response();
    gw.upstream_response_filter(s, &mut resp, &mut ctx)
        .await
        .expect("upstream_response_filter");
    gw.response_filter(s, &mut resp, &mut ctx)
        .await
        .expect("response_filter");
    let mut body = Some(bytes::Bytes::from_static(b"{\"id\":42,\"ok\":1}\n"));
    gw.response_body_filter(s, &mut body, true, &mut ctx)
        .expect("response_body_filter");
    black_box(&resp);
    gw.logging(s, None, &mut ctx).await;
}

async fn parse(head: &'static [u8]) -> Session {
    let mut s = Session::new_h1(Box::new(Cursor::new(head.to_vec())));
    let ok = s.read_request().await.expect("read_request");
    assert!(ok, "head parsed");
    s
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let gw = gateway();

    c.bench_function("block_on_empty", |b| b.iter(|| rt.block_on(async {})));

    for (name, head) in [("plain", PLAIN), ("chain", CHAIN)] {
        c.bench_function(&format!("request/{name}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut s = parse(head).await;
                    hooks(&gw, &mut s).await;
                })
            })
        });
        let mut s = rt.block_on(parse(head));
        c.bench_function(&format!("hooks_only/{name}"), |b| {
            b.iter(|| rt.block_on(hooks(&gw, &mut s)))
        });
    }

    let shared_rt = {
        let states = StateRegistry::default();
        let limiters = Registry::default();
        Arc::new(
            config::load_str(YAML, Path::new("."), &states, &limiters, 1).expect("bench config"),
        )
    };
    gatehouse::logging::install_metrics(&shared_rt);
    let rm = gatehouse::logging::route_metrics(&shared_rt, Some(1));
    let get = metrics::method_index(&http::Method::GET);
    c.bench_function("metrics_record", |b| {
        b.iter(|| rm.record(black_box(get), black_box(200), black_box(0.000_42)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
