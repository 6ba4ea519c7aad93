//! Criterion benches for proxy-cache: the cache key build (what every cacheable request
//! pays) and the store's hit path (lookup + LRU touch + meta deserialization), plus a miss
//! and a fill under eviction pressure.
//!
//! Run: `cargo bench --bench cache` (release profile). Compare runs on the same machine only.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::plugins::proxy_cache::key::{primary_hash, KeyParts};
use gatehouse::plugins::proxy_cache::store::{EntryTag, Store};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("x-tenant", "acme"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn key_build(c: &mut Criterion) {
    let h = headers();
    let vary = [HeaderName::from_static("x-tenant")];
    let parts = |query| KeyParts {
        route: "products",
        host: "api.example.com",
        path: "/api/v1/products/KB-001",
        query,
        consumer: None,
        roles: None,
        upstream: None,
    };
    let none = parts(None);
    let sorted = parts(Some("category=keyboards&page=2&sort=price"));
    let unsorted = parts(Some("sort=price&page=2&category=keyboards"));
    c.bench_function("cache key: path, no query", |b| {
        b.iter(|| primary_hash(black_box(&none), &h, &[]))
    });
    c.bench_function("cache key: 3 params already sorted + 1 vary header", |b| {
        b.iter(|| primary_hash(black_box(&sorted), &h, &vary))
    });
    c.bench_function("cache key: 3 params to sort + 1 vary header", |b| {
        b.iter(|| primary_hash(black_box(&unsorted), &h, &vary))
    });
}

fn key(n: u64) -> CacheKey {
    let mut k = CacheKey::new(Vec::new(), String::new());
    let parts = KeyParts {
        route: "products",
        host: "api.example.com",
        path: &format!("/api/v1/products/{n}"),
        query: None,
        consumer: None,
        roles: None,
        upstream: None,
    };
    k.set_primary_bin_override(primary_hash(&parts, &HeaderMap::new(), &[]));
    k
}

fn meta(n: u64) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("content-type", "application/json").unwrap();
    h.insert_header("content-length", "2048").unwrap();
    h.insert_header("cache-control", "max-age=300").unwrap();
    h.insert_header("date", "Thu, 01 Jan 2026 00:00:00 GMT")
        .unwrap();
    let now = SystemTime::now();
    let mut m = CacheMeta::new(now + Duration::from_secs(300), now, 0, 0, h);
    m.extensions_mut().insert(EntryTag {
        route: Arc::from("products"),
        path: format!("/api/v1/products/{n}").into(),
        query: "".into(),
    });
    m
}

fn fill(rt: &tokio::runtime::Runtime, store: &'static Store, n: u64, body: &Bytes) {
    rt.block_on(async {
        let span = Span::inactive().handle();
        let mut miss = store
            .get_miss_handler(&key(n), &meta(n), &span)
            .await
            .unwrap();
        miss.write_body(body.clone(), true).await.unwrap();
        miss.finish().await.unwrap();
    });
}

fn store_paths(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let body = Bytes::from(vec![b'x'; 2048]);
    const N: u64 = 10_000;
    let store: &'static Store = Box::leak(Box::new(Store::new("bench", 256 << 20)));
    for n in 0..N {
        fill(&rt, store, n, &body);
    }
    let keys: Vec<CacheKey> = (0..N).map(key).collect();
    let mut i = 0usize;
    c.bench_function(
        "store hit: lookup + LRU touch + meta rebuild (10k objects)",
        |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                black_box(store.lookup_now(&keys[i]).unwrap().is_some())
            })
        },
    );
    let unknown = key(u64::MAX);
    c.bench_function("store miss (10k objects)", |b| {
        b.iter(|| black_box(store.lookup_now(&unknown).unwrap().is_none()))
    });

    // Fills into a full store: every insert evicts the least recently used object.
    let small: &'static Store = Box::leak(Box::new(Store::new("bench-small", 1 << 20)));
    let mut n = 0u64;
    c.bench_function("store fill 2 KB into a full 1 MiB store (evicts)", |b| {
        b.iter(|| {
            n += 1;
            fill(&rt, small, n, &body);
        })
    });
    assert!(small.stats().used <= 1 << 20);
}

criterion_group!(benches, key_build, store_paths);
criterion_main!(benches);
