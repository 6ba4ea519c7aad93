//! HTTPS-only routes, Kong's model: a route's `protocols` (default `[http, https]`) and
//! `https_redirect_status_code` (default 426, Kong's). A route with `protocols: [https]`
//! answers a plain-HTTP request itself, after routing and before any plugin (Pingora phase
//! `request_filter`): 426 `https_required` (with `Upgrade: TLS/1.2, HTTP/1.1` as RFC 9110
//! requires), or a 301/302/307/308 redirect to `https://<host>[:port]<path>?<query>`.
//!
//! A request counts as HTTPS when it arrived on a TLS listener, or when its TCP peer is one
//! of `server.trusted_proxies` and the last `X-Forwarded-Proto` value (the one that proxy
//! wrote; values to its left may come from the client) is `https`.
//!
//! The `Location` is built from the request's own host (the request target's authority, else
//! `Host`), validated as a DNS name, IPv4 address or bracketed IPv6 address with an optional
//! port: anything else (userinfo, a path, spaces, a missing host) is refused with 400
//! `bad_request` and never reflected. Scheme and path are the gateway's, so the redirect can
//! only point at the same host over HTTPS. The port is the first `server.tls.listen` port
//! when it is not 443; behind a trusted proxy none is added (the proxy's HTTPS port is
//! assumed to be 443).

use crate::config::diag::Compiler;
use crate::config::raw::RawRoute;
use crate::ctx::RequestCtx;
use crate::errors::Reply;
use crate::model::{HttpsOnly, ServerSettings};
use http::header::{LOCATION, UPGRADE};
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::fmt::Write;

/// Kong's default `https_redirect_status_code`.
const DEFAULT_STATUS: u16 = 426;

/// The route's `protocols` and `https_redirect_status_code`; `None` when it accepts plain
/// HTTP (the default).
pub fn compile(c: &mut Compiler, path: &str, r: &RawRoute) -> Option<HttpsOnly> {
    let status = r.https_redirect_status_code.unwrap_or(DEFAULT_STATUS);
    if !matches!(status, 301 | 302 | 307 | 308 | 426) {
        c.error(
            &format!("{path}.https_redirect_status_code"),
            format!("{status} is not 426, 301, 302, 307 or 308"),
        );
    }
    let list = r.protocols.as_ref()?;
    let pp = format!("{path}.protocols");
    if list.is_empty() {
        c.error(&pp, "needs https, or http and https");
        return None;
    }
    let (mut http, mut https) = (false, false);
    for (i, p) in list.iter().enumerate() {
        let seen = match p.as_str() {
            "http" => std::mem::replace(&mut http, true),
            "https" => std::mem::replace(&mut https, true),
            other => {
                c.error(
                    &format!("{pp}[{i}]"),
                    format!("unknown protocol {other:?} (use http or https)"),
                );
                continue;
            }
        };
        if seen {
            c.error(&format!("{pp}[{i}]"), format!("{p} is listed twice"));
        }
    }
    if !https {
        c.error(
            &pp,
            "must include https: a route that refuses HTTPS is not supported (use [https] or [http, https])",
        );
        return None;
    }
    (!http).then_some(HttpsOnly { status })
}

/// An https-only route needs a way for HTTPS to arrive: a TLS listener, or trusted proxies
/// that terminate TLS and say so in `X-Forwarded-Proto`.
pub fn check_listeners(c: &mut Compiler, server: &ServerSettings, routes: &[RawRoute]) {
    if server.tls.is_some() || !server.trusted_proxies.is_empty() {
        return;
    }
    for (i, r) in routes.iter().enumerate() {
        let https_only = r
            .protocols
            .as_ref()
            .is_some_and(|l| l.iter().any(|p| p == "https") && !l.iter().any(|p| p == "http"));
        if https_only {
            c.error(
                &format!("routes[{i}].protocols"),
                "only https is accepted, but there is no server.tls listener and no server.trusted_proxies to send X-Forwarded-Proto: https, so every request would be refused",
            );
        }
    }
}

/// The last `X-Forwarded-Proto` value is `https` (the rule of
/// [`crate::request::forwarded_proto`], which also decides what the upstream receives).
fn forwarded_https(req: &RequestHeader) -> bool {
    crate::request::forwarded_proto(&req.headers).is_some_and(|v| v.eq_ignore_ascii_case(b"https"))
}

/// `host[:port]` -> `host` when it is a DNS name, an IPv4 address or a bracketed IPv6
/// address, with at most a numeric port.
pub fn valid_host(authority: &str) -> Option<&str> {
    if authority.is_empty() || authority.len() > 260 {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (h, rest) = authority.split_at(end + 1);
        let inner = &h[1..h.len() - 1];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':')?),
        };
        (h, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    if !host.starts_with('[') {
        // One trailing dot (an absolute name) is allowed.
        let name = host.strip_suffix('.').unwrap_or(host);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return None;
        }
    }
    Some(host)
}

/// `request_filter`, after routing and before the route's plugins: the answer to a plain
/// HTTP request on an https-only route, `None` to go on.
pub fn check(session: &Session, ctx: &mut RequestCtx) -> Option<Reply> {
    let rule = ctx.route()?.https_only?;
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some();
    let req = session.req_header();
    if tls || (ctx.peer_trusted && forwarded_https(req)) {
        return None;
    }
    if rule.status == 426 {
        return Some(
            Reply::error_with(
                426,
                "https_required",
                "This route is only served over HTTPS",
            )
            .header(UPGRADE, HeaderValue::from_static("TLS/1.2, HTTP/1.1")),
        );
    }
    let bad_host = || {
        Reply::error_with(
            400,
            "bad_request",
            "The Host header is missing or not a valid host name",
        )
    };
    let authority = req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let Some(host) = authority.and_then(valid_host) else {
        return Some(bad_host());
    };
    let port = if ctx.peer_trusted {
        None
    } else {
        ctx.rt
            .server
            .tls
            .as_ref()
            .and_then(|t| t.listen.first())
            .map(|a| a.port())
            .filter(|p| *p != 443)
    };
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut loc = String::with_capacity(16 + host.len() + pq.len());
    loc.push_str("https://");
    loc.push_str(host);
    if let Some(p) = port {
        let _ = write!(loc, ":{p}");
    }
    loc.push_str(pq);
    let Ok(location) = HeaderValue::from_str(&loc) else {
        return Some(bad_host());
    };
    Some(Reply {
        status: rule.status,
        code: None,
        message: "".into(),
        headers: vec![(LOCATION, location)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for (a, h) in [
            ("api.example.com", "api.example.com"),
            ("api.example.com:8080", "api.example.com"),
            ("API.Example.COM", "API.Example.COM"),
            ("localhost", "localhost"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[2001:db8::1]:8443", "[2001:db8::1]"),
            ("example.com.", "example.com."),
            ("a-b.c", "a-b.c"),
        ] {
            assert_eq!(valid_host(a), Some(h), "{a}");
        }
        for bad in [
            "",
            ":80",
            "evil.com/path",
            "evil.com\\x",
            "user@evil.com",
            "evil.com:80:80",
            "evil.com:",
            "evil.com:http",
            "evil.com:123456",
            "[::1",
            "[evil.com]",
            "[::1]x",
            "a b",
            ".example.com",
            "example..com",
            "-a.com",
            "a-.com",
            "exa_mple.com",
            "\u{e9}.com",
            "%65vil.com",
            ".",
        ] {
            assert_eq!(valid_host(bad), None, "{bad:?}");
        }
        assert_eq!(valid_host(&"a".repeat(64)), None);
        assert!(valid_host(&format!("{}.com", "a".repeat(63))).is_some());
    }

    #[test]
    fn forwarded_proto_takes_the_last_value() {
        let req = |vals: &[&str]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            for v in vals {
                r.append_header("x-forwarded-proto", *v).unwrap();
            }
            r
        };
        assert!(forwarded_https(&req(&["https"])));
        assert!(forwarded_https(&req(&["HTTPS"])));
        assert!(forwarded_https(&req(&["http, https"])));
        assert!(forwarded_https(&req(&["http", " https "])));
        assert!(!forwarded_https(&req(&["https, http"])));
        assert!(!forwarded_https(&req(&["https", "http"])));
        assert!(!forwarded_https(&req(&[])));
        assert!(!forwarded_https(&req(&["wss"])));
    }
}
