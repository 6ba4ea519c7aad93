//! `server.flood`: per client IP caps on new connections and requests per second, checked at
//! the accept path and before routing, with a fixed memory footprint however many addresses
//! take part. Source addresses come from the loopback range: on Linux any 127.x.y.z can be
//! bound before connecting.
use crate::common;

use common::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// A connection from source address `from` (None: the connect itself failed).
async fn connect_from(from: Ipv4Addr, port: u16) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::from((from, 0)))
        .expect("bind a 127/8 source address");
    sock.connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .ok()
}

/// Writes `bytes` from `from` and reads until the gateway closes: the responses' statuses
/// (empty when the connection was closed without an answer) and the raw text.
async fn exchange_text(from: Ipv4Addr, port: u16, bytes: &[u8]) -> (Vec<u16>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut s) = connect_from(from, port).await else {
        return (Vec::new(), String::new());
    };
    let _ = s.write_all(bytes).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

async fn exchange_from(from: Ipv4Addr, port: u16, bytes: &[u8]) -> Vec<u16> {
    exchange_text(from, port, bytes).await.0
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The `n`th address of 127.1.0.0/16.
fn addr(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x7f01_0000 + n)
}

fn metric(gw_text: &str, name: &str) -> f64 {
    parse_metrics(gw_text)
        .iter()
        .find(|s| s.name == name)
        .map_or(0.0, |s| s.value)
}

#[tokio::test]
async fn connection_cap_per_address_with_thousands_of_addresses_in_bounded_memory() {
    let (b, gw) = catch_all("flood: { connections_per_ip_per_second: 3 }");
    let port = gw.port;
    // Warm up (the estimator is allocated on first use), then take the baseline.
    assert_eq!(exchange_from(addr(0), port, &get("/warm")).await, [200]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kb(gw.pid);

    // 4000 addresses, one request each: under the cap, every one is served.
    const N: u32 = 4000;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u32 {
        tasks.spawn(async move {
            let mut bad = Vec::new();
            for n in (1 + t..=N).step_by(8) {
                let st = exchange_from(addr(n), port, &get("/legit")).await;
                if st != [200] {
                    bad.push((addr(n), st));
                }
            }
            bad
        });
    }
    let mut refused = Vec::new();
    while let Some(r) = tasks.join_next().await {
        refused.extend(r.unwrap());
    }
    assert!(
        refused.is_empty(),
        "addresses under the cap refused: {refused:?}"
    );
    assert_eq!(b.hits(), N as usize + 1);
    let rss_after = rss_kb(gw.pid);
    assert!(
        rss_after < rss_before + 16 * 1024,
        "memory must stay bounded: {rss_before} kB -> {rss_after} kB after {N} addresses in {:?}",
        started.elapsed()
    );

    // One address opening 12 connections at once: at most the cap per second gets through
    // (twice the cap if a second boundary falls in between), the rest are closed at accept
    // without an answer; other addresses are not affected.
    let flooder = Ipv4Addr::new(127, 0, 0, 77);
    let mut answered = 0;
    let mut closed = 0;
    for _ in 0..12 {
        match exchange_from(flooder, port, &get("/flood"))
            .await
            .as_slice()
        {
            [200] => answered += 1,
            [] => closed += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!((3..=6).contains(&answered), "answered {answered}");
    assert_eq!(answered + closed, 12);
    assert_eq!(
        exchange_from(Ipv4Addr::new(127, 0, 0, 78), port, &get("/other")).await,
        [200],
        "a neighbour address is still served"
    );
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "downstream_flood_connections_refused_total") as usize,
        closed,
        "{m}"
    );
    // One log line a second at most, naming the cap.
    let lines = gw
        .stderr()
        .lines()
        .filter(|l| l.contains("server.flood: connections over 3 per second"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "{lines} flood log lines:\n{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn request_cap_per_client_ip_answers_429_before_routing() {
    let b = Backend::start("b");
    let gw = Cfg::new()
        .server("flood: { requests_per_ip_per_second: 5 }")
        .upstream("u", &[target(&b)], "")
        .route("r", &["/api"], "u", "")
        .start();
    // 12 pipelined requests on one connection (no route for /none: refused before routing
    // all the same).
    let mut wire = String::new();
    for i in 0..12 {
        let path = if i % 2 == 0 { "/api/x" } else { "/none" };
        wire.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    let client = Ipv4Addr::new(127, 0, 0, 9);
    let (statuses, text) = exchange_text(client, gw.port, wire.as_bytes()).await;
    let served = statuses.iter().take_while(|s| **s != 429).count();
    assert!((5..=10).contains(&served), "{statuses:?}");
    // The read ended: the gateway closed the connection after the 429.
    assert_eq!(
        statuses.len(),
        served + 1,
        "one 429, then closed: {statuses:?}"
    );
    assert!(
        text.contains("\"error\":\"too_many_requests\""),
        "the gateway's JSON error: {text}"
    );
    let api_served = statuses[..served].iter().filter(|s| **s == 200).count();
    assert_eq!(b.hits(), api_served, "nothing refused reached the upstream");
    // Another client IP is unaffected.
    assert_eq!(
        exchange_from(Ipv4Addr::new(127, 0, 0, 10), gw.port, &get("/api/y")).await,
        [200]
    );
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "downstream_flood_requests_refused_total"),
        1.0,
        "{m}"
    );
}

#[test]
fn flood_config_is_validated() {
    let base = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9001\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n";
    let (code, stderr) = Gateway::validate(&format!(
        "server:\n  flood: {{ connections_per_ip_per_second: 50, requests_per_ip_per_second: 200 }}\n{base}"
    ));
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = Gateway::validate(&format!(
        "server:\n  flood: {{ connections_per_second: 5 }}\n{base}"
    ));
    assert_eq!(code, 1, "unknown key accepted");
    assert!(stderr.contains("server.flood"), "{stderr}");
}
