//! Criterion benches of the local limiter checks (what `rate-limiting` with `policy: local`
//! and `concurrency-limiting` add to a request): sliding window (1 and 4 windows) and token
//! bucket, on a known key ("hit"; an IP, a tenant header, a 31 KB header) and on a key never
//! seen before ("new key": a table insert, and at the key cap an eviction); the whole plugin
//! hook on a request; and two threads hammering one limiter (different keys, then the same
//! key) to show shard contention.
//!
//! Run: `cargo bench --bench limits` (release profile). Compare runs on the same machine only.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::config;
use gatehouse::ctx::RequestCtx;
use gatehouse::limits::{ConcurrencyStore, Limits, LocalStore, TokenBucket};
use gatehouse::plugins::{Outcome, Plugin};
use gatehouse::upstream::StateRegistry;
use gatehouse::util::clock::now_us;
use pingora::http::RequestHeader;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Limits so high that every check is allowed (the common case: counted and passed).
fn roomy(n: usize) -> Limits {
    let mut slots = [None; 4];
    for s in slots.iter_mut().take(n) {
        *s = Some(u32::MAX as u64);
    }
    Limits::from_slots(slots)
}

fn ip_key(i: u64) -> [u8; 5] {
    let b = (i as u32).to_be_bytes();
    [b'4', b[0], b[1], b[2], b[3]]
}

fn local(c: &mut Criterion) {
    let store = LocalStore::default();
    let one = roomy(1);
    let four = roomy(4);
    let tb = TokenBucket::new(1e6, 1_000_000);
    let key = ip_key(0x0a00_0001);

    c.bench_function("local sliding window, 1 window, hit", |b| {
        b.iter(|| store.check_windows(black_box(&key), &one, now_us()))
    });
    c.bench_function("local sliding window, 4 windows, hit", |b| {
        b.iter(|| store.check_windows(black_box(&key), &four, now_us()))
    });
    c.bench_function("local token bucket, hit", |b| {
        b.iter(|| store.check_token(black_box(&key), &tb, now_us()))
    });
    // `limit_by: header` keys: a tenant id, and a value at the 32 KiB head limit (the key is
    // hashed whole, stored as a fixed-size digest).
    let tenant = *b"htenant-3f9c2a7e-5b1d-4c8e-9a0f-12ab34cd56ef";
    c.bench_function(
        "local sliding window, 1 window, hit, 45-byte header key",
        |b| b.iter(|| store.check_windows(black_box(&tenant), &one, now_us())),
    );
    let huge = vec![b'v'; 31_000];
    c.bench_function(
        "local sliding window, 1 window, hit, 31 KB header key",
        |b| b.iter(|| store.check_windows(black_box(&huge), &one, now_us())),
    );

    let fresh = LocalStore::default();
    let mut i = 0u64;
    c.bench_function("local sliding window, 1 window, new key", |b| {
        b.iter(|| {
            i += 1;
            fresh.check_windows(&ip_key(i), &one, now_us())
        })
    });
    let fresh = LocalStore::default();
    let mut i = 0u64;
    c.bench_function("local token bucket, new key", |b| {
        b.iter(|| {
            i += 1;
            fresh.check_token(&ip_key(i), &tb, now_us())
        })
    });

    let conc = ConcurrencyStore::default();
    c.bench_function("concurrency acquire + release, hit", |b| {
        b.iter(|| drop(black_box(conc.try_acquire(&key, 100))))
    });
}

/// Two threads, each doing `iters` checks: per-check wall time with both cores busy.
fn two_threads(
    store: &Arc<LocalStore>,
    limits: &Arc<Limits>,
    same_key: bool,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let (store, limits) = (store.clone(), limits.clone());
            std::thread::spawn(move || {
                let key = ip_key(if same_key { 7 } else { 100 + t });
                for _ in 0..iters {
                    black_box(store.check_windows(&key, &limits, now_us()));
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    start.elapsed()
}

fn contention(c: &mut Criterion) {
    let store = Arc::new(LocalStore::default());
    let limits = Arc::new(roomy(2));
    c.bench_function("local sliding window, 2 threads, different keys", |b| {
        b.iter_custom(|iters| two_threads(&store, &limits, false, iters))
    });
    c.bench_function("local sliding window, 2 threads, same key", |b| {
        b.iter_custom(|iters| two_threads(&store, &limits, true, iters))
    });
}

/// Polls a future that never waits (the local policy) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn plugin_hook(c: &mut Criterion) {
    let yaml = "server: { listen: [\"127.0.0.1:18080\"] }\nupstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: rate-limiting\n        config: { second: 1000000000, minute: 1000000000, limit_by: ip }\n";
    let reg = gatehouse::util::registry::Registry::default();
    let rt = Arc::new(
        config::load_str(yaml, Path::new("."), &StateRegistry::default(), &reg, 1)
            .expect("bench config"),
    );
    let Some(Plugin::RateLimiting(p)) = rt.routes[0].plugins.plugins.first().map(|p| &**p) else {
        panic!("rate-limiting plugin");
    };
    let req = RequestHeader::build("GET", b"/", None).expect("request head");
    let mut ctx = RequestCtx::new(rt.clone());
    ctx.route = Some(0);
    ctx.client_ip = Some("192.0.2.10".parse().expect("ip"));
    c.bench_function("rate-limiting plugin hook, local, 2 windows, by ip", |b| {
        b.iter(|| {
            let out = ready(p.check_request(black_box(&req), &mut ctx));
            assert!(matches!(out, Outcome::Continue));
        })
    });
}

criterion_group!(benches, local, contention, plugin_hook);
criterion_main!(benches);
