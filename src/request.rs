//! Downstream side of `early_request_filter` and `request_filter`: request id, client IP,
//! size limits and route lookup. Nothing here touches the upstream.

use crate::ctx::RequestCtx;
use crate::router;
use ipnet::IpNet;
use pingora::proxy::Session;
use std::net::IpAddr;

/// Header carrying the request id when no correlation-id plugin renames it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A client-sent request id is kept when it is at most 128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

pub fn new_request_id() -> String {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}

fn trusted(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// Client IP: the TCP peer, or, when the peer is a trusted proxy, the right-most address of
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: Option<IpAddr>,
    xff: Option<&[u8]>,
    nets: &[IpNet],
) -> (Option<IpAddr>, bool) {
    let Some(peer) = peer else {
        return (None, false);
    };
    if nets.is_empty() || !trusted(nets, peer) {
        return (Some(peer), false);
    }
    let Some(xff) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return (Some(peer), true);
    };
    let mut last = None;
    for part in xff.rsplit(',') {
        let Ok(ip) = part.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop trusting it here.
            break;
        };
        last = Some(ip);
        if !trusted(nets, ip) {
            return (Some(ip), true);
        }
    }
    (last.or(Some(peer)), true)
}

/// Sets the request id, client IP and keep-alive; the first thing every request does.
pub fn begin(session: &mut Session, ctx: &mut RequestCtx) {
    let req = session.req_header();
    ctx.request_id = match req.headers.get(REQUEST_ID_HEADER) {
        Some(v) if valid_request_id(v.as_bytes()) => {
            // Validated as ASCII above.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => new_request_id(),
    };
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let xff = req.headers.get("x-forwarded-for").map(|v| v.as_bytes());
    let (ip, peer_trusted) = client_ip(peer, xff, &ctx.rt.server.trusted_proxies);
    ctx.client_ip = ip;
    ctx.peer_trusted = peer_trusted;
    // The head is in (EdgeGuard enforced header_timeout); from here on each read of the body
    // may wait at most body_timeout, so a body that stops mid-way frees its connection.
    let bt = ctx.rt.server.body_timeout;
    session.set_read_timeout((!bt.is_zero()).then_some(bt));
    // Only a connection Pingora already keeps alive (HTTP/1.1 without `Connection: close`,
    // HTTP/1.0 with `Connection: keep-alive`) gets our idle timeout: setting it on every
    // request would turn a plain HTTP/1.0 request's connection into a keep-alive one.
    if session.get_keepalive().is_some() {
        let ka = ctx.rt.server.keepalive_timeout.as_secs();
        session.set_keepalive(if ka == 0 { None } else { Some(ka) });
    }
    // HTTP/1.1 pipelining (RFC 9112 §9.3.2): bytes of the next requests read along with this
    // one are kept and answered in order, one after the other. Without it Pingora answers
    // the first request and closes, dropping the rest. Every pipelined request is a session
    // of its own, through every check here; the accept-path scanner (crate::edge) follows
    // the framing of each. The flag carries over to the next session of the connection.
    session.set_pipelining_enabled(true);
}

/// Rewrites a path whose percent-encoding hides unreserved characters to its normal form,
/// so the router and the upstream see the same path. Refuses malformed encoding.
pub fn normalize_path(session: &mut Session) -> Option<u16> {
    let req = session.req_header();
    let path = req.uri.path();
    let normal = match router::normalize_percent(path) {
        None => return Some(400),
        Some(std::borrow::Cow::Borrowed(_)) => return None,
        Some(std::borrow::Cow::Owned(p)) => p,
    };
    let pq = match req.uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    // Keep scheme and authority of an absolute-form target.
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    let Ok(uri) = http::Uri::from_parts(parts) else {
        return Some(400);
    };
    session.req_header_mut().set_uri(uri);
    None
}

/// Limits checked before anything else reads the request: the status to refuse with.
pub fn check_limits(session: &Session, ctx: &RequestCtx) -> Option<u16> {
    let s = &ctx.rt.server;
    let req = session.req_header();
    if req.raw_path().len() > s.max_uri_bytes {
        return Some(414);
    }
    let head: usize = req.raw_path().len()
        + req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > s.max_header_bytes {
        return Some(431);
    }
    if let Some(cl) = req.headers.get(http::header::CONTENT_LENGTH) {
        // Plain digits only: Pingora itself would accept "+5" (RFC 9112 §6.3 says no).
        let v = cl.as_bytes();
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return Some(400);
        }
        let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
        if n > s.max_body_bytes {
            return Some(413);
        }
    }
    if req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .count()
        > 1
    {
        return Some(400);
    }
    if !transfer_encoding_ok(&req.headers) {
        return Some(400);
    }
    if router::is_ambiguous_path(req.uri.path()) {
        return Some(400);
    }
    None
}

/// Transfer-Encoding, when present, must be exactly one `chunked` coding (RFC 9112 §6.1):
/// any other coding is refused rather than passed on, since a proxy and its upstream that
/// disagree about framing are request-smuggling material.
pub fn transfer_encoding_ok(headers: &http::HeaderMap) -> bool {
    let mut codings = 0;
    for v in headers.get_all(http::header::TRANSFER_ENCODING) {
        for token in v.as_bytes().split(|b| *b == b',') {
            let t = token.trim_ascii();
            if !t.eq_ignore_ascii_case(b"chunked") {
                return false;
            }
            codings += 1;
        }
    }
    codings <= 1
}

/// Content-Length together with Transfer-Encoding: Pingora frames by Transfer-Encoding
/// alone (RFC 9112 §6.3); the connection is closed after the response so nothing the two
/// framings disagree about can be read as a next request.
pub fn close_if_dual_framing(session: &mut Session) {
    let h = &session.req_header().headers;
    if h.contains_key(http::header::TRANSFER_ENCODING)
        && h.contains_key(http::header::CONTENT_LENGTH)
    {
        session.set_keepalive(None);
    }
}

/// The host a request is for, without port: the URI's (absolute form, HTTP/2 `:authority`)
/// or else the `Host` header's. What routes match on.
pub fn host(req: &pingora::http::RequestHeader) -> Option<&str> {
    req.uri
        .host()
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .map(router::host_without_port)
}

/// Looks the route up; false when none matches.
pub fn route(session: &Session, ctx: &mut RequestCtx) -> bool {
    let req = session.req_header();
    let host = host(req);
    match ctx
        .rt
        .router
        .find(&req.method, host, &req.headers, req.uri.path())
    {
        Some(m) => {
            ctx.route = Some(m.route);
            ctx.prefix_len = m.prefix_len;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert_eq!(new_request_id().len(), 36);
    }

    #[test]
    fn transfer_encodings() {
        let te = |vals: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in vals {
                h.append(http::header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            transfer_encoding_ok(&h)
        };
        assert!(te(&[]));
        assert!(te(&["chunked"]));
        assert!(te(&["Chunked"]));
        assert!(!te(&["gzip, chunked"]));
        assert!(!te(&["chunked, chunked"]));
        assert!(!te(&["chunked", "chunked"]));
        assert!(!te(&["identity"]));
        assert!(!te(&["chunked, gzip"]));
    }

    #[test]
    fn client_ip_only_from_trusted_peers() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = Some(&b"1.2.3.4"[..]);
        assert_eq!(client_ip(Some(peer), xff, &nets).0, Some(peer));
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(Some(proxy), Some(b"1.2.3.4, 5.6.7.8, 10.0.0.7"), &nets).0,
            Some("5.6.7.8".parse().unwrap())
        );
        assert_eq!(client_ip(Some(proxy), None, &nets).0, Some(proxy));
    }
}
