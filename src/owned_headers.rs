//! Headers the gateway owns (`request_filter`, right after routing, before https-only checks
//! and every plugin): identity and forwarding headers that only the gateway, or a trusted
//! proxy in front of it, may set.
//!
//! CGI-style servers (wsgiref, PHP, older gunicorn and Puma, ...) turn both `X-User-Id` and
//! `X_User_Id` into `HTTP_X_USER_ID`, so removing the exact name is not enough: a client
//! header is matched case-insensitively with `_` and `-` equal.
//!
//! Each route has one compiled [`OwnedHeaders`] set (built at config load, normalized to
//! lowercase with `-`), of two kinds:
//!
//! - identity ([`IDENTITY`], plus what the route's plugins write upstream to identify the
//!   caller: forward-auth's `upstream_headers`, mtls-auth's `upstream_header`): a client's
//!   copy is dropped whatever its spelling and whoever sent it, and a `Connection` option
//!   naming one is dropped from the `Connection` header (so the gateway's value cannot be
//!   removed as hop-by-hop);
//! - forwarding ([`FORWARDING`]): describe the client's connection or override the request
//!   target or method. Kept when the TCP peer is one of `server.trusted_proxies` and spelled
//!   exactly; dropped otherwise. proxy-cache never stores an answer to a request that still
//!   carries one of [`CACHE_SENSITIVE`] unless the route keys on it (`vary_headers`).
//!
//! The per-request check walks the request's header names once, comparing bytes without
//! allocating; it allocates only to remove what it found.

use http::header::CONNECTION;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

/// Header carrying the authenticated consumer's username upstream (key-auth, jwt).
pub const CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-consumer-username");

/// Header carrying a verified token's roles upstream (jwt; comma-separated).
pub const ROLES_HEADER: HeaderName = HeaderName::from_static("x-authenticated-roles");

/// Identity headers the gateway sets (key-auth / jwt consumer, jwt roles, the client IP).
/// A future identity header (an mTLS subject, ...) is one more entry here.
pub const IDENTITY: &[&str] = &["x-consumer-username", "x-authenticated-roles", "x-real-ip"];

/// Forwarding and override headers: trusted proxies only, spelled exactly.
/// `X-Forwarded-For` and `X-Forwarded-Proto` are then extended or replaced by
/// [`crate::forward::rewrite_request`].
pub const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-path",
    "x-forwarded-ssl",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The forwarding headers an upstream may build a different answer from (host, prefix,
/// path, method), which proxy-cache refuses to store unless keyed. `X-Forwarded-For` and
/// `X-Forwarded-Proto` (the first two of [`FORWARDING`]) are the gateway's own (rewritten
/// on every request).
pub const CACHE_SENSITIVE: &[&str] = FORWARDING.split_at(2).1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identity,
    Forwarding,
}

/// One route's owned names, normalized (lowercase, `-` for `_`).
#[derive(Debug, Clone)]
pub struct OwnedHeaders {
    names: Vec<(Box<[u8]>, Kind)>,
    /// Bit `n` set when some name is `n` bytes long (bit 63: 63 or more), so most request
    /// headers are passed over by one AND.
    lens: u64,
}

impl Default for OwnedHeaders {
    fn default() -> Self {
        OwnedHeaders::new(std::iter::empty::<&str>())
    }
}

fn len_bit(n: usize) -> u64 {
    1u64 << n.min(63)
}

/// `-` for `_`, ASCII lowercase.
fn normal(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// `name` equals the normalized `owned`, ignoring ASCII case with `_` and `-` equal.
#[inline]
pub fn same_name(name: &[u8], owned: &[u8]) -> bool {
    name.len() == owned.len() && name.iter().zip(owned).all(|(a, b)| normal(*a) == *b)
}

impl OwnedHeaders {
    /// [`IDENTITY`] and [`FORWARDING`], plus `extra_identity` (a route's forward-auth
    /// `upstream_headers`, mtls-auth's `upstream_header`).
    pub fn new<S: AsRef<str>>(extra_identity: impl IntoIterator<Item = S>) -> OwnedHeaders {
        let mut o = OwnedHeaders {
            names: Vec::new(),
            lens: 0,
        };
        for n in IDENTITY {
            o.push(n, Kind::Identity);
        }
        for n in extra_identity {
            o.push(n.as_ref(), Kind::Identity);
        }
        for n in FORWARDING {
            o.push(n, Kind::Forwarding);
        }
        o
    }

    fn push(&mut self, name: &str, kind: Kind) {
        let n: Box<[u8]> = name.bytes().map(normal).collect();
        // An identity entry wins over a forwarding one of the same name.
        if let Some(e) = self.names.iter_mut().find(|(m, _)| *m == n) {
            if kind == Kind::Identity {
                e.1 = kind;
            }
            return;
        }
        self.lens |= len_bit(n.len());
        self.names.push((n, kind));
    }

    #[inline]
    fn kind_of(&self, name: &[u8]) -> Option<Kind> {
        if self.lens & len_bit(name.len()) == 0 {
            return None;
        }
        self.names
            .iter()
            .find(|(n, _)| same_name(name, n))
            .map(|(_, k)| *k)
    }

    /// A client header `name` the gateway must drop (`trusted`: the TCP peer is a trusted
    /// proxy).
    #[inline]
    fn drops(&self, name: &[u8], trusted: bool) -> bool {
        match self.kind_of(name) {
            None => false,
            Some(Kind::Identity) => true,
            // Only the exact spelling passes, and only from a trusted proxy.
            Some(Kind::Forwarding) => !trusted || name.contains(&b'_'),
        }
    }

    /// An identity name (any spelling).
    fn is_identity(&self, name: &[u8]) -> bool {
        self.kind_of(name) == Some(Kind::Identity)
    }

    /// Removes what the client may not send; returns how many header names were removed.
    pub fn strip(&self, req: &mut RequestHeader, trusted: bool) -> usize {
        let mut removed = 0;
        // The usual request has none: one pass without allocating.
        if req
            .headers
            .keys()
            .any(|n| self.drops(n.as_str().as_bytes(), trusted))
        {
            let doomed: Vec<HeaderName> = req
                .headers
                .keys()
                .filter(|n| self.drops(n.as_str().as_bytes(), trusted))
                .cloned()
                .collect();
            for n in &doomed {
                req.remove_header(n);
            }
            removed = doomed.len();
        }
        self.strip_connection_options(req);
        removed
    }

    /// Drops `Connection` options naming an identity header: Pingora removes the headers a
    /// `Connection` option names before `upstream_request_filter`, which would let a client
    /// remove the gateway's identity value (and keep its own under another spelling).
    fn strip_connection_options(&self, req: &mut RequestHeader) {
        let named = |v: &HeaderValue| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| self.is_identity(t.trim_ascii()))
        };
        if !req.headers.get_all(CONNECTION).iter().any(named) {
            return;
        }
        let mut kept: Vec<u8> = Vec::new();
        for v in req.headers.get_all(CONNECTION) {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.is_empty() || self.is_identity(t) {
                    continue;
                }
                if !kept.is_empty() {
                    kept.extend_from_slice(b", ");
                }
                kept.extend_from_slice(t);
            }
        }
        req.remove_header(&CONNECTION);
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            if !kept.is_empty() {
                // The value came from a valid header value: it is one again.
                let _ = req.insert_header(CONNECTION, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn names(r: &RequestHeader) -> Vec<String> {
        let mut v: Vec<String> = r.headers.keys().map(|n| n.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn names_match_with_underscores_and_any_case() {
        assert!(same_name(b"x_consumer_username", b"x-consumer-username"));
        assert!(same_name(b"X_Consumer-USERNAME", b"x-consumer-username"));
        assert!(!same_name(b"x-consumer-usernam", b"x-consumer-username"));
        assert!(!same_name(b"x.consumer.username", b"x-consumer-username"));
    }

    #[test]
    fn identity_spellings_dropped_from_everyone() {
        let o = OwnedHeaders::new(["X_User_Id"]);
        for trusted in [false, true] {
            let mut r = req(&[
                ("x_consumer_username", "alice"),
                ("X-Authenticated-Roles", "admin"),
                ("x_authenticated_roles", "admin"),
                ("x-user-id", "u-bob"),
                ("x_user_id", "u-bob"),
                ("x_real_ip", "1.2.3.4"),
                ("x-userid", "kept"),
                ("accept", "*/*"),
            ]);
            assert_eq!(o.strip(&mut r, trusted), 6);
            assert_eq!(names(&r), ["accept", "x-userid"]);
        }
    }

    #[test]
    fn forwarding_headers_only_from_trusted_proxies_spelled_exactly() {
        let o = OwnedHeaders::default();
        let all = [
            ("x-forwarded-host", "evil"),
            ("forwarded", "host=evil"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_forwarded_host", "evil"),
        ];
        let mut r = req(&all);
        o.strip(&mut r, false);
        assert!(names(&r).is_empty(), "{:?}", names(&r));
        let mut r = req(&all);
        o.strip(&mut r, true);
        assert_eq!(
            names(&r),
            [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-http-method-override",
                "x-original-url"
            ]
        );
    }

    #[test]
    fn connection_options_naming_identity_headers_are_dropped() {
        let o = OwnedHeaders::new(["x-user-id"]);
        let mut r = req(&[
            ("connection", "keep-alive, X-User-Id"),
            ("connection", "x_consumer_username, x-trace"),
        ]);
        o.strip(&mut r, false);
        let v: Vec<_> = r.headers.get_all(CONNECTION).iter().collect();
        assert_eq!(v, ["keep-alive, x-trace"]);
        let mut r = req(&[("connection", "X-User-Id")]);
        o.strip(&mut r, false);
        assert!(!r.headers.contains_key(CONNECTION));
        // Nothing to drop: the header is left as it was.
        let mut r = req(&[("connection", "close")]);
        o.strip(&mut r, false);
        assert_eq!(r.headers[CONNECTION], "close");
    }
}
