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
/// `X-Forwarded-For` that is not itself a trusted proxy. `xff` holds every `X-Forwarded-For`
/// line in arrival order: repeated lines are one comma-separated list (RFC 9110 §5.3), and a
/// proxy that appends its own line must not be read past.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    nets: &[IpNet],
) -> (Option<IpAddr>, bool) {
    let Some(peer) = peer else {
        return (None, false);
    };
    if nets.is_empty() || !trusted(nets, peer) {
        return (Some(peer), false);
    }
    let mut last = None;
    for line in xff.rev() {
        for part in line.rsplit(|b| *b == b',') {
            // Garbage in the chain (not text, not an address): stop trusting it here.
            let ip = std::str::from_utf8(part)
                .ok()
                .and_then(|p| p.trim().parse::<IpAddr>().ok());
            let Some(ip) = ip else {
                return (last.or(Some(peer)), true);
            };
            last = Some(ip);
            if !trusted(nets, ip) {
                return (Some(ip), true);
            }
        }
    }
    (last.or(Some(peer)), true)
}

/// The right-most `X-Forwarded-Proto` value over every line (repeated lines are one list):
/// the one the nearest proxy wrote. Only meaningful when that proxy is trusted.
pub fn forwarded_proto(headers: &http::HeaderMap) -> Option<&[u8]> {
    headers
        .get_all("x-forwarded-proto")
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .map(|v| v.trim_ascii())
        .filter(|v| !v.is_empty())
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
    let xff = req
        .headers
        .get_all("x-forwarded-for")
        .into_iter()
        .map(|v| v.as_bytes());
    let (ip, peer_trusted) = client_ip(peer, xff, &ctx.rt.server.trusted_proxies);
    ctx.client_ip = ip;
    ctx.peer_trusted = peer_trusted;
    ctx.client_cert = crate::tls::client_auth::client_cert(session);
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

/// Checks the path ([`router::scan_path`]: one pass, no allocation) and rewrites it to its
/// canonical form ([`router::normalize_percent`]) only when it is not in it, so the router
/// and the upstream see the same path. The status to refuse with.
pub fn normalize_path(session: &mut Session, ctx: &mut RequestCtx) -> Option<u16> {
    let req = session.req_header();
    let path = req.uri.path();
    let scan = match router::scan_path(path) {
        Ok(scan) => scan,
        Err(_) => return Some(400),
    };
    ctx.encoded_slash = scan.encoded_slash;
    if !scan.rewrite {
        return None;
    }
    let normal = match crate::util::percent::normalize_percent(path) {
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
    // One Content-Length, one Content-Type: with two, the gateway (first) and the upstream
    // (often the last) would frame or parse the body differently, e.g. skip the JSON rules
    // of request-transformer for a body the upstream then reads as JSON.
    for name in [http::header::CONTENT_LENGTH, http::header::CONTENT_TYPE] {
        if req.headers.get_all(name).iter().nth(1).is_some() {
            return Some(400);
        }
    }
    if !transfer_encoding_ok(&req.headers) {
        return Some(400);
    }
    if let Some(h) = raw_host(req) {
        if router::route_host(h).is_none() {
            return Some(400);
        }
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

/// The request's host as sent: the URI's authority host (absolute form, HTTP/2
/// `:authority`), else the `Host` header.
fn raw_host(req: &pingora::http::RequestHeader) -> Option<&str> {
    req.uri.host().or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The host a request is for as routes compare it ([`router::route_host`]: no port, no
/// trailing dot). `None` also for a host with an empty label, which `check_limits` refused.
pub fn host(req: &pingora::http::RequestHeader) -> Option<&str> {
    raw_host(req).and_then(router::route_host)
}

/// What the route lookup decided when no route takes the request.
pub enum NoRoute {
    NotFound,
    /// 405 with this `Allow` value.
    MethodNotAllowed(String),
    /// `%2F` in the path and the route does not allow encoded slashes.
    EncodedSlash,
}

/// Looks the route up and records it in `ctx`.
pub fn route(session: &Session, ctx: &mut RequestCtx) -> Result<(), NoRoute> {
    let req = session.req_header();
    let host = host(req);
    let router = &ctx.rt.router;
    match router.lookup(&req.method, host, &req.headers, req.uri.path()) {
        router::Lookup::Found(m) => {
            let allowed = ctx
                .rt
                .routes
                .get(m.route)
                .is_some_and(|r| r.allow_encoded_slashes);
            if ctx.encoded_slash && !allowed {
                return Err(NoRoute::EncodedSlash);
            }
            ctx.route = Some(m.route);
            ctx.prefix_len = m.prefix_len;
            Ok(())
        }
        router::Lookup::MethodNotAllowed(node) => Err(NoRoute::MethodNotAllowed(router.allow(
            node,
            host,
            &req.headers,
        ))),
        router::Lookup::NotFound => Err(NoRoute::NotFound),
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
        let one = |v: &'static [u8]| std::iter::once(v);
        assert_eq!(client_ip(Some(peer), one(b"1.2.3.4"), &nets).0, Some(peer));
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(Some(proxy), one(b"1.2.3.4, 5.6.7.8, 10.0.0.7"), &nets).0,
            Some("5.6.7.8".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(proxy), std::iter::empty(), &nets).0,
            Some(proxy)
        );
    }

    #[test]
    fn client_ip_reads_every_forwarded_for_line() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let lines: [&[u8]; 3] = [b"198.51.100.1", b"203.0.113.7, 10.0.0.9", b"10.0.0.8"];
        assert_eq!(
            client_ip(Some(proxy), lines.into_iter(), &nets).0,
            Some("203.0.113.7".parse().unwrap())
        );
        // Garbage stops the walk at the last good address.
        let lines: [&[u8]; 2] = [b"198.51.100.1", b"junk, 10.0.0.9"];
        assert_eq!(
            client_ip(Some(proxy), lines.into_iter(), &nets).0,
            Some("10.0.0.9".parse().unwrap())
        );
    }
}
