//! Criterion benches for the request hot path pieces of the core: route lookup (10 and
//! 5,000 routes), target selection per balancing algorithm, and the owned-headers check
//! every routed request pays (a usual request: nothing to drop).
//!
//! Run: `cargo bench --bench core` (release profile). Compare runs on the same machine only.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::config;
use gatehouse::ctx::Runtime;
use gatehouse::upstream::StateRegistry;
use http::{HeaderMap, Method};
use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

fn runtime(routes: usize) -> Runtime {
    let mut y = String::from("server: { listen: [\"127.0.0.1:18080\"] }\nupstreams:\n");
    for b in ["round_robin", "weighted", "least_conn", "ip_hash"] {
        let _ = writeln!(
            y,
            "  - name: {b}\n    balance: {b}\n    targets:\n      - {{ addr: \"127.0.0.1:9001\", weight: 3 }}\n      - {{ addr: \"127.0.0.1:9002\", weight: 1 }}\n      - {{ addr: \"127.0.0.1:9003\", weight: 2 }}\n      - {{ addr: \"127.0.0.1:9004\", backup: true }}"
        );
    }
    y.push_str("routes:\n");
    for i in 0..routes {
        let _ = writeln!(
            y,
            "  - name: r{i}\n    paths: [\"/api/v{}/svc{i}\"]\n    upstream: round_robin",
            i % 3
        );
    }
    config::load_str(
        &y,
        Path::new("."),
        &StateRegistry::default(),
        &Default::default(),
        1,
    )
    .expect("bench config")
}

fn routing(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [10usize, 5000] {
        let rt = runtime(n);
        let path = format!("/api/v{}/svc{}/items/42", (n - 1) % 3, n - 1);
        c.bench_function(&format!("route lookup, {n} routes, hit"), |b| {
            b.iter(|| {
                rt.router.find(
                    black_box(&Method::GET),
                    Some("api.example.com"),
                    &headers,
                    black_box(&path),
                )
            })
        });
        c.bench_function(&format!("route lookup, {n} routes, miss"), |b| {
            b.iter(|| {
                rt.router.find(
                    black_box(&Method::GET),
                    Some("api.example.com"),
                    &headers,
                    black_box("/nothing/here"),
                )
            })
        });
    }
}

fn selection(c: &mut Criterion) {
    let rt = runtime(1);
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    for up in &rt.upstreams {
        c.bench_function(&format!("select {}", up.name), |b| {
            b.iter(|| {
                // The set is loaded once per request (it may be swapped by DNS discovery).
                let set = up.targets();
                let sel = set.select(&up.cursor, black_box(Some(ip)), 0);
                // Include the least_conn guard's cost, as a request pays it.
                sel.map(|s| set.track(s))
            })
        });
    }
}

fn owned_headers(c: &mut Criterion) {
    let owned = gatehouse::owned_headers::OwnedHeaders::new(["X-User-Id", "X-User-Roles"]);
    let mut req = pingora::http::RequestHeader::build("GET", b"/api/v1/users/42", None).unwrap();
    for (n, v) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en"),
        ("authorization", "Bearer abc"),
        ("cookie", "session=1"),
        ("x-request-id", "8a995a20-79d0-495b-9d1b-e5fe01f75e19"),
        ("connection", "keep-alive"),
    ] {
        req.append_header(n, v).unwrap();
    }
    c.bench_function("owned_headers strip (9 headers, none owned)", |b| {
        b.iter(|| owned.strip(black_box(&mut req), false))
    });
}

criterion_group!(benches, routing, selection, owned_headers);
criterion_main!(benches);
