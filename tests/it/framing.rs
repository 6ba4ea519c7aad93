//! Request framing (RFC 9112) over raw TCP: ambiguous framing is refused with 400, the
//! connection is closed, and nothing after it is read as another request — the upstream sees
//! neither the bad request nor the smuggled one.
use crate::common;

use common::*;
use std::time::Duration;

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn gateway(b: &Backend) -> Gateway {
    one_upstream(&[target(b)], "", "/", "")
}

/// Sends `head` (+ a smuggled request behind it); returns the parsed responses and whether the
/// gateway closed the connection.
fn exchange(gw: &Gateway, bytes: &str) -> (Vec<u16>, bool, String) {
    let (raw, closed) = raw_request(gw.port, bytes.as_bytes(), Duration::from_secs(2));
    let text = String::from_utf8_lossy(&raw).to_string();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
        .collect();
    (statuses, closed, text)
}

fn assert_refused(gw: &Gateway, b: &Backend, request: &str, what: &str) {
    let (statuses, closed, text) = exchange(gw, &format!("{request}{SMUGGLED}"));
    assert_eq!(
        statuses,
        vec![400],
        "{what}: exactly one 400 expected, got:\n{text}"
    );
    assert!(closed, "{what}: connection must be closed");
    assert!(
        b.requests().iter().all(|r| r.path != "/smuggled"),
        "{what}: smuggled request reached the upstream"
    );
    assert_eq!(b.hits(), 0, "{what}: upstream saw the refused request");
}

#[tokio::test]
async fn content_length_not_plain_digits() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    for cl in ["+5", "0x10", "1_0", "-1", "5 5", "5,6"] {
        assert_refused(
            &gw,
            &b,
            &format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\nhello"),
            &format!("Content-Length: {cl}"),
        );
    }
}

#[tokio::test]
async fn repeated_content_length() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    for (a, c) in [("5", "6"), ("5", "5")] {
        let (statuses, closed, text) = exchange(
            &gw,
            &format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {a}\r\nContent-Length: {c}\r\n\r\nhello{SMUGGLED}"),
        );
        assert_eq!(statuses, vec![400], "CL {a},{c}:\n{text}");
        assert!(closed);
        if text.contains("application/json") {
            assert!(text.contains("\"error\":\"bad_request\""), "{text}");
        }
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    for te in [
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        "chunked, chunked",
        "xchunked",
    ] {
        assert_refused(
            &gw,
            &b,
            &format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            &format!("Transfer-Encoding: {te}"),
        );
    }
    // Two Transfer-Encoding header lines.
    assert_refused(
        &gw,
        &b,
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two TE lines",
    );
}

#[tokio::test]
async fn whitespace_before_colon_and_bad_header_bytes() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    assert_refused(
        &gw,
        &b,
        "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
        "space before colon",
    );
    assert_refused(
        &gw,
        &b,
        "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        "NUL in a value",
    );
    assert_refused(
        &gw,
        &b,
        "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        "bare CR in a value",
    );
}

#[tokio::test]
async fn malformed_chunk_sizes() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    for size in ["0x10", "0_2e", "fffffffffffffffffffff", "-1", "g"] {
        let (statuses, closed, text) = exchange(
            &gw,
            &format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        );
        assert_eq!(statuses, vec![400], "chunk size {size}: {text}");
        assert!(
            text.contains("\"error\":\"bad_request\""),
            "chunk size {size}: JSON error expected: {text}"
        );
        assert!(closed, "chunk size {size}: connection must be closed");
        assert!(
            b.requests().iter().all(|r| r.path != "/smuggled"),
            "chunk size {size}: smuggled request reached the upstream"
        );
    }
    // Whatever reached the upstream was never a complete request with the bad body.
    assert!(b.requests().iter().all(|r| r.body != b"hello"));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_frames_by_te_and_closes() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let (statuses, closed, text) = exchange(
        &gw,
        &format!("POST /dual HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
    );
    assert_eq!(statuses, vec![200], "{text}");
    assert!(closed, "connection closed after the response");
    let reqs = b.requests();
    assert_eq!(reqs.len(), 1, "only the framed request went upstream");
    assert_eq!(reqs[0].path, "/dual");
    assert_eq!(reqs[0].body, b"hello", "framed by Transfer-Encoding");
    assert!(
        reqs[0].header("content-length").is_none(),
        "re-framed upstream: no Content-Length next to chunked"
    );
}

#[tokio::test]
async fn chunk_extensions_are_refused() {
    // Pingora's chunk parser would accept and drop extensions; the accept-path wrapper
    // spoils them so the request is refused like any other ambiguous framing.
    let b = Backend::start("b");
    let gw = gateway(&b);
    for first in ["5;name=value", "5 ;x", "5;", "0;ext"] {
        let body = if first.starts_with('0') {
            format!("{first}\r\n\r\n")
        } else {
            format!("{first}\r\nhello\r\n0\r\n\r\n")
        };
        let (statuses, closed, text) = exchange(
            &gw,
            &format!("POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"),
        );
        assert_eq!(statuses, vec![400], "{first}: {text}");
        assert!(
            text.contains("\"error\":\"bad_request\""),
            "{first}: {text}"
        );
        assert!(closed, "{first}: connection must be closed");
    }
    // An extension on a later chunk, after a valid one, split across writes.
    let (statuses, closed, text) = exchange(
        &gw,
        "POST /ext HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;a=b\r\nde\r\n0\r\n\r\n",
    );
    assert_eq!(statuses, vec![400], "{text}");
    assert!(closed);
    let reqs = b.requests();
    assert!(reqs.iter().all(|r| r.path != "/smuggled"));
    assert!(
        reqs.iter()
            .all(|r| r.body != b"hello" && r.body != b"abcde"),
        "no body with an extension was delivered whole"
    );
    let m = gw.metrics_text().await;
    assert!(
        m.contains("downstream_chunk_extensions_refused_total 5"),
        "counted: {m}"
    );
    // Valid chunked bodies (a ';' inside data, a trailer with ';') still pass untouched.
    for (path, body) in [
        ("/ok1", "4\r\na;b;\r\n1\r\n;\r\n0\r\n\r\n"),
        ("/ok2", "4\r\na;b;\r\n1\r\n;\r\n0\r\nX-T: 1;2\r\n\r\n"),
    ] {
        let (statuses, _, text) = exchange(
            &gw,
            &format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"),
        );
        assert_eq!(statuses, vec![200], "{path}: {text}");
        assert!(b
            .requests()
            .iter()
            .any(|r| r.path == path && r.body == b"a;b;;"));
    }
}

#[tokio::test]
async fn garbage_then_still_serving() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    for junk in [
        "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03",
        "GET\r\n\r\n",
        "HELLO WORLD\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
    ] {
        let (_, closed, _) = exchange(&gw, junk);
        assert!(closed, "{junk:?}: connection must be closed");
    }
    let (s, _) = gw.get_json("/ok").await;
    assert_eq!(s, 200, "gateway keeps serving");
}

#[tokio::test]
async fn http10_closes_unless_keep_alive_is_asked_for() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let (statuses, closed, text) = exchange(&gw, "GET /a HTTP/1.0\r\nHost: x\r\n\r\n");
    assert_eq!(statuses.len(), 1, "{text}");
    assert!(closed, "HTTP/1.0 without keep-alive must close: {text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: keep-alive"),
        "{text}"
    );
    // Asked for: kept open (the read times out instead of seeing EOF).
    let (statuses, closed, text) = exchange(
        &gw,
        "GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(statuses.len(), 1, "{text}");
    assert!(!closed, "HTTP/1.0 keep-alive asked for: {text}");
}
