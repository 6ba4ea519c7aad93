//! HTTP/1.1 pipelining (RFC 9112 §9.3.2) over raw TCP: requests sent back to back in one
//! write are each answered, in order, bodies included; the framing checks hold for every
//! request of the pipeline (an ambiguous one is refused with the JSON 400, the connection
//! closes, and nothing behind it is read as a request); the head deadline too.
use crate::common;

use common::*;
use std::io::Write;
use std::time::Duration;

fn gateway(b: &Backend) -> Gateway {
    one_upstream(&[target(b)], "", "/", "")
}

/// Splits a byte stream into the responses it holds (Content-Length or chunked bodies).
fn responses(mut raw: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let Some(r) = parse_response(raw) else { break };
        let rest = &raw[head_end + 4..];
        let used = if r
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(end) => end + 5,
                None => rest.len(),
            }
        } else {
            r.header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(rest.len())
                .min(rest.len())
        };
        raw = &rest[used..];
        out.push(r);
    }
    out
}

/// Writes `bytes` in one write and reads until the gateway closes (or `limit`).
fn pipeline(gw: &Gateway, bytes: &[u8], limit: Duration) -> (Vec<RawResponse>, bool) {
    let (raw, closed) = raw_request(gw.port, bytes, limit);
    (responses(&raw), closed)
}

#[tokio::test]
async fn forty_pipelined_gets_get_forty_answers_in_order() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let mut wire = String::new();
    for i in 0..40 {
        // The last one asks to close, so the read ends with the connection.
        let close = if i == 39 { "Connection: close\r\n" } else { "" };
        wire.push_str(&format!("GET /p?n={i} HTTP/1.1\r\nHost: x\r\n{close}\r\n"));
    }
    let (rs, closed) = pipeline(&gw, wire.as_bytes(), Duration::from_secs(10));
    assert_eq!(rs.len(), 40, "one answer per request");
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.status, 200, "#{i}: {}", r.text());
        assert_eq!(
            r.json()["query"],
            format!("n={i}"),
            "answers in request order: #{i} is {}",
            r.text()
        );
    }
    assert!(closed, "closed after the request that asked for it");
    assert_eq!(b.hits(), 40, "the upstream saw every request");
    let order: Vec<String> = b
        .requests()
        .iter()
        .filter_map(|r| r.query.clone())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("n={i}")).collect();
    assert_eq!(order, want, "forwarded one after the other, in order");
}

#[tokio::test]
async fn pipelined_requests_with_bodies() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let wire = concat!(
        "POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n",
        "GET /xy HTTP/1.1\r\n\r\n", // a 20-byte body that looks like a request
        "POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "GET /get HTTP/1.1\r\nHost: x\r\n\r\n",
        "PUT /cl2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        "POST /te2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        "3\r\nxyz\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let (rs, closed) = pipeline(&gw, wire.as_bytes(), Duration::from_secs(10));
    let paths: Vec<String> = rs
        .iter()
        .map(|r| r.json()["path"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        paths,
        ["/cl", "/te", "/get", "/cl2", "/te2"],
        "answers in order"
    );
    assert!(rs.iter().all(|r| r.status == 200));
    assert!(closed);
    let reqs = b.requests();
    let seen: Vec<(&str, &[u8])> = reqs
        .iter()
        .map(|r| (r.path.as_str(), r.body.as_slice()))
        .collect();
    assert_eq!(
        seen,
        [
            ("/cl", &b"GET /xy HTTP/1.1\r\n\r\n"[..]),
            ("/te", b"hello world"),
            ("/get", b""),
            ("/cl2", b"abc"),
            ("/te2", b"xyz"),
        ],
        "each body whole, none read as a request"
    );
}

#[tokio::test]
async fn an_ambiguous_request_inside_a_pipeline_is_refused_and_ends_it() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (what, request, answered with the gateway's JSON 400). Values Pingora's own parser
    // refuses before a request exists get its plain 400; the rest the gateway's JSON one.
    let bad: [(&str, String, bool); 6] = [
        (
            "repeated Content-Length",
            "POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".into(),
            true,
        ),
        (
            "Content-Length list",
            "POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello".into(),
            true,
        ),
        (
            "TE other than chunked",
            "POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
            true,
        ),
        (
            "chunk extension",
            "POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n".into(),
            true,
        ),
        (
            "conflicting Content-Length",
            "POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".into(),
            false,
        ),
        (
            "Content-Length not digits",
            "POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello".into(),
            false,
        ),
    ];
    for (i, (what, request, json)) in bad.into_iter().enumerate() {
        b.reset();
        // Every path of this round ends in `-{i}`: a request of an earlier round that the
        // upstream records late (a chunk-extension head whose body never completes) is not
        // taken for one of this round.
        let tag = format!("-{i}");
        let request = request.replace("/bad ", &format!("/bad{tag} "));
        let wire = format!(
            "GET /one{tag} HTTP/1.1\r\nHost: x\r\n\r\nPOST /two{tag} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nokPOST /three{tag} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{request}{SMUGGLED}"
        );
        let (rs, closed) = pipeline(&gw, wire.as_bytes(), Duration::from_secs(5));
        let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200, 200, 400], "{what}");
        if json {
            assert_eq!(
                rs[3].json()["error"],
                "bad_request",
                "{what}: {}",
                rs[3].text()
            );
        }
        assert!(closed, "{what}: connection closed after the 400");
        let reqs: Vec<_> = b
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with(&tag) || r.path == "/smuggled")
            .collect();
        let bad_path = format!("/bad{tag}");
        // A chunk extension is found in the body, after the head went upstream (bodies
        // stream): the upstream may see that head, never the body whole.
        assert!(
            reqs.iter()
                .all(|r| r.path != bad_path || (what == "chunk extension" && r.body != b"hello")),
            "{what}: the refused request reached the upstream"
        );
        let paths: Vec<&str> = reqs
            .iter()
            .map(|r| r.path.as_str())
            .filter(|p| *p != bad_path)
            .collect();
        assert_eq!(
            paths,
            [
                format!("/one{tag}"),
                format!("/two{tag}"),
                format!("/three{tag}")
            ],
            "{what}: nothing after the refused request went upstream"
        );
    }
}

#[tokio::test]
async fn a_pipelined_head_that_stalls_still_meets_the_head_deadline() {
    let (b, gw) = catch_all("header_timeout: 1s");
    let port = gw.port;
    let (raw, closed) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // One whole request, and the start of a second that never completes.
        s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHo")
            .unwrap();
        read_until_close(&mut s, Duration::from_secs(6))
    })
    .await
    .unwrap();
    let rs = responses(&raw);
    assert_eq!(rs.len(), 1, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(rs[0].json()["path"], "/first");
    assert!(
        closed,
        "the stalled second head is cut off by header_timeout"
    );
    assert_eq!(b.hits(), 1);
    let m = gw.metrics_text().await;
    assert!(m.contains("downstream_header_timeouts_total 1"), "{m}");
}
