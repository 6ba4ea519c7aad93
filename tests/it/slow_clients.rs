//! Slow and hostile clients: header_timeout as a whole-head deadline, hundreds of slowloris
//! connections, connection and per-connection request caps, clients that stop reading or
//! stop sending — the gateway keeps answering others, with bounded memory.
use crate::common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// True when the peer closed the connection (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn header_timeout_is_a_deadline_for_the_whole_head() {
    let (b, gw) = catch_all("header_timeout: 1s");
    let port = gw.port;
    let started = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = connect(port);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        // Trickle a header byte every 200 ms: each read is quick, the head never completes.
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(200));
            if s.write_all(b"X").is_err() {
                break;
            }
        }
        closed_within(&mut s, Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(closed, "trickling client must be cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(b.hits(), 0);

    // A normal keep-alive client idling between requests is not affected by header_timeout.
    let (raw, _) = tokio::task::spawn_blocking(move || {
        let mut s = connect(port);
        s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        s.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_until_close(&mut s, Duration::from_secs(3))
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
}

#[tokio::test]
async fn slowloris_does_not_delay_other_clients() {
    let (_b, gw) = catch_all("header_timeout: 30s");
    let rss_before = rss_kb(gw.pid);
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = connect(gw.port);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        slow.push(s);
    }
    for i in 0..20 {
        let t = Instant::now();
        let (s, _) = gw.get_json(&format!("/normal/{i}")).await;
        assert_eq!(s, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    let rss_after = rss_kb(gw.pid);
    drop(slow);
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB with 300 idle connections"
    );
}

#[tokio::test]
async fn max_connections_closes_the_excess() {
    let (_b, gw) = catch_all("max_connections: 5");
    // Give the harness's readiness probes time to close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = connect(gw.port);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect(gw.port);
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "6th connection must be closed"
    );
    let metrics = gw.metrics_text().await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("downstream_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("refusal counter exported");
    assert!(refused >= 1, "refusal counted: {refused}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = gw.get_json("/after").await;
    assert_eq!(s, 200, "served again once connections are free");
}

#[tokio::test]
async fn max_requests_per_connection() {
    let (_b, gw) = catch_all("max_requests_per_connection: 3");
    let port = gw.port;
    let (raw, closed) = tokio::task::spawn_blocking(move || {
        let mut s = connect(port);
        for i in 0..5 {
            if s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        read_until_close(&mut s, Duration::from_secs(3))
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert!(closed, "connection closed after the 3rd request");
}

#[tokio::test]
async fn client_that_never_reads_or_stops_sending() {
    let b = Backend::start("b");
    let big = "x".repeat(4 * 1024 * 1024);
    b.set_body(Some(&big));
    let gw = one_route(&b, "/", "");
    // Never reads a 4 MB response.
    let mut lazy = Vec::new();
    for _ in 0..5 {
        let mut s = connect(gw.port);
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        lazy.push(s);
    }
    // Announces 1000 bytes, sends 10, stalls.
    let mut stalled = connect(gw.port);
    stalled
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    b.set_body(None);
    for i in 0..10 {
        let t = Instant::now();
        let (s, _) = gw.get_json(&format!("/ok/{i}")).await;
        assert_eq!(s, 200);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    drop(lazy);
    drop(stalled);
    let (s, _) = gw.get_json("/still").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn body_that_stops_midway_times_out() {
    let (_b, gw) = catch_all("body_timeout: 500ms");
    let port = gw.port;
    let started = Instant::now();
    let (raw, closed) = tokio::task::spawn_blocking(move || {
        let mut s = connect(port);
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
            .unwrap();
        read_until_close(&mut s, Duration::from_secs(4))
    })
    .await
    .unwrap();
    assert!(closed, "stalled body must free the connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&raw);
    if !text.is_empty() {
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    }
}

/// A raw upstream that switches protocols and then echoes bytes (a WebSocket stand-in).
fn echo_upgrade_upstream() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().take(4) {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                // The accept for the client's key below (RFC 6455's example): the gateway
                // only passes on a 101 that completes the handshake.
                let _ = c.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn upgraded_connection_outlives_header_timeout() {
    let up = echo_upgrade_upstream();
    let gw = Cfg::new()
        .server("header_timeout: 500ms")
        .upstream("u", &[target_addr(&format!("127.0.0.1:{up}"))], "")
        .route_u("ws", "")
        .start();
    let port = gw.port;
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = connect(port);
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return Err(format!(
                    "closed before 101: {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!("no 101: {:?}", String::from_utf8_lossy(&head)));
        }
        // Binary frames (never a blank line) for longer than header_timeout.
        let mut got = 0;
        for i in 0..8u8 {
            std::thread::sleep(Duration::from_millis(200));
            let frame = [0x82, 0x03, i, i, i];
            s.write_all(&frame).map_err(|e| format!("write {i}: {e}"))?;
            let mut back = [0u8; 5];
            s.read_exact(&mut back)
                .map_err(|e| format!("read {i}: {e}"))?;
            if back == frame {
                got += 1;
            }
        }
        Ok(got)
    })
    .await
    .unwrap();
    assert_eq!(echoed, Ok(8), "tunnel cut by the head deadline");
}

#[tokio::test]
async fn body_after_100_continue_is_not_a_new_head() {
    // An interim `100 Continue` must not restart the head deadline: the body that follows
    // is not a request head, however long the client takes to send it (body_timeout rules).
    let b = Backend::start("b");
    let gw = Cfg::new()
        .server("header_timeout: 1s")
        .server("body_timeout: 10s")
        .upstream("u", &[target(&b)], "")
        .route_root("")
        .start();
    let port = gw.port;
    let text = tokio::task::spawn_blocking(move || {
        let mut s = connect(port);
        s.write_all(
            b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(interim.starts_with("HTTP/1.1 100"), "interim: {interim}");
        // The body trickles in over longer than header_timeout (within body_timeout).
        s.write_all(b"01234").unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        s.write_all(b"56789").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        String::from_utf8_lossy(&rest).to_string()
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.last_request().unwrap().body, b"0123456789");
}
