//! Criterion benches for response-compression: a 2 KB JSON body (one chunk, length known, the
//! usual `Content-Length` answer) and a 200 KB JSON body (17 chunks of 12 KiB, each flushed,
//! as the gateway streams an upstream body) per algorithm at its default level, and the 200 KB
//! body at other levels for comparison. The compressed sizes (streamed and one-shot) are
//! printed once before timing. Figures: docs/config.md, `response-compression`.
//!
//! Run: `cargo bench --bench compression` (release profile; `-- --quick` for a short run).
//! Compare runs on the same machine only.

#[path = "support/mod.rs"]
mod support;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gatehouse::plugins::response_compression::{Algo, Encoder};
use std::fmt::Write;

/// Upstream chunk size for the streamed body (roughly what Pingora reads per socket read).
const CHUNK: usize = 12 * 1024;

fn body(size: usize) -> Vec<u8> {
    let s = support::json_records(size, "],\"page\":1}", |s, i| {
        let _ = write!(
            s,
            r#"{{"id":{i},"user_name":"user{i}","email":"user{i}@example.com","created":"2024-01-01T00:00:{:02}Z","score":{}.5,"roles":[{{"name":"reader"}},{{"name":"writer"}}],"tags":["a","b","c"],"active":{}}}"#,
            i % 60,
            (i * 7919) % 1000,
            i % 3 == 0
        );
    });
    s.into_bytes()
}

fn default_level(a: Algo) -> u32 {
    match a {
        Algo::Br => 4,
        Algo::Gzip => 5,
        Algo::Zstd => 3,
    }
}

/// Compresses `input` as the gateway does: in `chunk`-sized pieces, each flushed, then the end.
fn compress(a: Algo, level: u32, input: &[u8], chunk: usize) -> usize {
    let mut e = Encoder::new(a, level, Some(input.len() as u64)).expect("encoder");
    let mut n = 0;
    let mut chunks = input.chunks(chunk).peekable();
    while let Some(c) = chunks.next() {
        n += e.encode(c, chunks.peek().is_none()).expect("encode").len();
    }
    n
}

fn sizes() {
    for (label, size) in [("2KB", 2 * 1024), ("200KB", 200 * 1024)] {
        let input = body(size);
        for a in Algo::ALL {
            let levels: &[u32] = match a {
                Algo::Br => &[1, 4, 5, 6, 11],
                Algo::Gzip => &[1, 4, 5, 6, 9],
                Algo::Zstd => &[1, 3, 6, 9],
            };
            for &l in levels {
                let streamed = compress(a, l, &input, CHUNK);
                let one = compress(a, l, &input, input.len());
                eprintln!(
                    "{label} {:>4} level {l:>2}: {} -> {streamed} bytes ({:.1}%), one chunk {one}",
                    a.token(),
                    input.len(),
                    100.0 * streamed as f64 / input.len() as f64
                );
            }
        }
    }
}

fn defaults(c: &mut Criterion) {
    sizes();
    let mut g = c.benchmark_group("compress");
    for (label, size, chunk) in [("2KB", 2 * 1024, usize::MAX), ("200KB", 200 * 1024, CHUNK)] {
        let input = body(size);
        g.throughput(Throughput::Bytes(input.len() as u64));
        for a in Algo::ALL {
            let l = default_level(a);
            g.bench_function(format!("{} {l} {label}", a.token()), |b| {
                b.iter(|| compress(a, l, black_box(&input), chunk))
            });
        }
    }
    g.finish();
}

fn levels(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress 200KB other levels");
    let input = body(200 * 1024);
    g.throughput(Throughput::Bytes(input.len() as u64));
    for (a, l) in [
        (Algo::Gzip, 1),
        (Algo::Gzip, 4),
        (Algo::Gzip, 5),
        (Algo::Br, 1),
        (Algo::Br, 5),
        (Algo::Zstd, 1),
        (Algo::Zstd, 6),
    ] {
        g.bench_function(format!("{} {l}", a.token()), |b| {
            b.iter(|| compress(a, l, black_box(&input), CHUNK))
        });
    }
    g.finish();
}

criterion_group!(benches, defaults, levels);
criterion_main!(benches);
