//! Cache key builder for `proxy-cache`.
//!
//! The primary key is a 128-bit BLAKE2b hash (Pingora's `hash_key`) over, in order and each
//! framed with its length so no two different tuples can produce the same bytes:
//!
//! 1. the route name (the namespace: two routes never share an object),
//! 2. the method class (`GET`: HEAD requests are answered from GET objects, Pingora turns a
//!    cacheable HEAD into a GET upstream),
//! 3. the host (`Host` header or the authority of an absolute-form target), lowercased,
//! 4. the path (after the gateway's percent-encoding normalization),
//! 5. the query with its parameters in normalized order (see [`normalize_query`]),
//! 6. the value of every configured `vary_headers` entry (an absent header differs from an
//!    empty one; hashed after 8),
//! 7. the consumer an auth plugin identified and the JWT roles, when there are any: the
//!    upstream receives them (`X-Consumer-Username`, `X-Authenticated-Roles`) and may answer
//!    each consumer differently, so one consumer's object never reaches another,
//! 8. the values forward-auth's `upstream_headers` took (`X-User-Id`, ...), for the same
//!    reason (an absent header differs from an empty one),
//! 9. the upstream a plugin chose for this request in place of the route's (traffic-split's
//!    `RequestCtx::upstream_override`), so one version's answer never reaches a client
//!    another version serves. Requests the route's own upstream serves keep the key they
//!    have without the plugin.
//!
//! The upstream's own `Vary` is handled by Pingora's variance slots on top of this key
//! (`cache_vary_filter`), not here. A crypto hash keeps crafted requests from colliding with
//! another object's key (cache poisoning).

use http::{HeaderMap, HeaderName};
use pingora::cache::key::{hash_key, HashBinary};
use std::borrow::Cow;

/// Method class of every cacheable request (GET and HEAD share objects).
pub const METHOD_CLASS: &str = "GET";

/// The request parts a key is built from.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub route: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Username of the consumer an auth plugin identified.
    pub consumer: Option<&'a str>,
    /// `X-Authenticated-Roles` sent upstream (jwt).
    pub roles: Option<&'a [u8]>,
    /// The upstream that serves the request when it is not the route's own.
    pub upstream: Option<&'a str>,
}

/// Host of a request: the authority of an absolute-form target, else the `Host` header.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> &'a str {
    uri.host()
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The primary key hash of a request.
pub fn primary_hash(parts: &KeyParts, headers: &HeaderMap, vary: &[HeaderName]) -> HashBinary {
    primary_hash_with(parts, headers, vary, &[])
}

/// [`primary_hash`] keyed also on the values of `identity` headers (forward-auth's
/// `upstream_headers`, which the gateway writes into the request), framed apart from `vary`
/// so the two lists never stand in for each other.
pub fn primary_hash_with(
    parts: &KeyParts,
    headers: &HeaderMap,
    vary: &[HeaderName],
    identity: &[HeaderName],
) -> HashBinary {
    let mut buf = Vec::with_capacity(
        64 + parts.route.len()
            + parts.host.len()
            + parts.path.len()
            + parts.query.map_or(0, str::len),
    );
    frame(&mut buf, parts.route.as_bytes());
    frame(&mut buf, METHOD_CLASS.as_bytes());
    // Lowercased while copying: no allocation for the common already-lowercase host.
    buf.extend_from_slice(&(parts.host.len() as u32).to_le_bytes());
    buf.extend(parts.host.bytes().map(|b| b.to_ascii_lowercase()));
    frame(&mut buf, parts.path.as_bytes());
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    if let Some(q) = parts.query {
        write_normalized_query(&mut buf, q);
    }
    let qlen = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&qlen.to_le_bytes());
    for part in [parts.consumer.map(str::as_bytes), parts.roles] {
        match part {
            Some(p) => frame(&mut buf, p),
            None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    if let Some(u) = parts.upstream {
        // A marker no length prefix or the identity marker can equal; nothing without an
        // override, so those keys stay as they were.
        buf.extend_from_slice(&(u32::MAX - 2).to_le_bytes());
        frame(&mut buf, u.as_bytes());
    }
    if !identity.is_empty() {
        // A marker no length prefix can equal (lengths stay far below u32::MAX - 1).
        buf.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    }
    for name in identity.iter().chain(vary) {
        frame(&mut buf, name.as_str().as_bytes());
        let mut values = headers.get_all(name).iter();
        match values.next() {
            None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(first) => {
                let start = buf.len();
                buf.extend_from_slice(&[0u8; 4]);
                buf.extend_from_slice(first.as_bytes());
                for v in values {
                    buf.extend_from_slice(b", ");
                    buf.extend_from_slice(v.as_bytes());
                }
                let len = (buf.len() - start - 4) as u32;
                buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            }
        }
    }
    hash_key(&buf)
}

fn frame(buf: &mut Vec<u8>, part: &[u8]) {
    buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
    buf.extend_from_slice(part);
}

/// The name part of a `name=value` query parameter.
fn param_name(p: &str) -> &str {
    p.split_once('=').map_or(p, |(n, _)| n)
}

/// Query parameters sorted by name (a stable sort: repeated names keep their relative order,
/// since `?id=2&id=1` may mean something else than `?id=1&id=2` to the upstream); empty
/// parameters (`a=1&&b=2`) are dropped. Values are kept byte for byte (no decoding).
pub fn normalize_query(q: &str) -> Cow<'_, str> {
    if q.is_empty() {
        return Cow::Borrowed(q);
    }
    let mut prev = "";
    let mut sorted = true;
    for p in q.split('&') {
        let name = param_name(p);
        if p.is_empty() || name < prev {
            sorted = false;
            break;
        }
        prev = name;
    }
    if sorted {
        return Cow::Borrowed(q);
    }
    let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    Cow::Owned(params.join("&"))
}

fn write_normalized_query(buf: &mut Vec<u8>, q: &str) {
    match normalize_query(q) {
        Cow::Borrowed(s) => buf.extend_from_slice(s.as_bytes()),
        Cow::Owned(s) => buf.extend_from_slice(s.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Route `r`, host `h`, path `/p`, no query, consumer or roles.
    const PLAIN: KeyParts<'static> = KeyParts {
        route: "r",
        host: "h",
        path: "/p",
        query: None,
        consumer: None,
        roles: None,
        upstream: None,
    };

    /// Request headers holding just `name: value`.
    fn one_header(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    fn key(route: &str, host: &str, path: &str, query: Option<&str>) -> HashBinary {
        primary_hash(
            &KeyParts {
                route,
                host,
                path,
                query,
                consumer: None,
                roles: None,
                upstream: None,
            },
            &HeaderMap::new(),
            &[],
        )
    }

    #[test]
    fn query_order_is_normalized() {
        assert_eq!(normalize_query("a=1&b=2"), "a=1&b=2");
        assert!(matches!(normalize_query("a=1&b=2"), Cow::Borrowed(_)));
        assert_eq!(normalize_query("b=2&a=1"), "a=1&b=2");
        assert_eq!(normalize_query("b=2&&a=1&"), "a=1&b=2");
        assert_eq!(normalize_query("id=2&x&id=1"), "id=2&id=1&x");
        assert_eq!(normalize_query(""), "");
        assert_eq!(
            key("r", "h", "/p", Some("a=1&b=2")),
            key("r", "h", "/p", Some("b=2&a=1"))
        );
        assert_ne!(
            key("r", "h", "/p", Some("a=1&b=2")),
            key("r", "h", "/p", Some("a=1&b=3"))
        );
        assert_eq!(key("r", "h", "/p", Some("")), key("r", "h", "/p", None));
    }

    #[test]
    fn components_are_framed() {
        // Moving bytes between components changes the key.
        assert_ne!(key("ab", "c", "/p", None), key("a", "bc", "/p", None));
        assert_ne!(key("r", "h", "/p?x", None), key("r", "h", "/p", Some("x")));
        assert_ne!(key("r1", "h", "/p", None), key("r2", "h", "/p", None));
        assert_eq!(
            key("r", "Example.COM", "/p", None),
            key("r", "example.com", "/p", None)
        );
        assert_ne!(key("r", "h", "/P", None), key("r", "h", "/p", None));
    }

    #[test]
    fn consumers_and_roles_split_objects() {
        let k = |consumer, roles| {
            primary_hash(
                &KeyParts {
                    consumer,
                    roles,
                    ..PLAIN
                },
                &HeaderMap::new(),
                &[],
            )
        };
        assert_ne!(k(Some("alice"), None), k(Some("bob"), None));
        assert_ne!(k(Some("alice"), None), k(None, None));
        assert_ne!(k(Some(""), None), k(None, None));
        assert_ne!(
            k(Some("alice"), Some(b"reader")),
            k(Some("alice"), Some(b"admin"))
        );
        assert_eq!(k(Some("alice"), Some(b"r")), k(Some("alice"), Some(b"r")));
    }

    #[test]
    fn a_chosen_upstream_splits_objects() {
        let k = |upstream| primary_hash(&KeyParts { upstream, ..PLAIN }, &HeaderMap::new(), &[]);
        assert_ne!(k(Some("api-v2")), k(None));
        assert_ne!(k(Some("api-v2")), k(Some("api-v3")));
        assert_eq!(k(Some("api-v2")), k(Some("api-v2")));
        assert_ne!(k(Some("")), k(None));
    }

    #[test]
    fn identity_headers_split_objects() {
        let parts = PLAIN;
        let id = [HeaderName::from_static("x-user-id")];
        let alice = one_header("x-user-id", "u-alice");
        let bob = one_header("x-user-id", "u-bob");
        let k = |h: &HeaderMap| primary_hash_with(&parts, h, &[], &id);
        assert_ne!(k(&alice), k(&bob));
        assert_ne!(k(&alice), k(&HeaderMap::new()));
        assert_eq!(k(&alice), k(&alice.clone()));
        // The same header as identity and as vary does not make the same key.
        assert_ne!(k(&alice), primary_hash(&parts, &alice, &id));
    }

    #[test]
    fn vary_headers_split_objects() {
        let parts = PLAIN;
        let vary = [HeaderName::from_static("x-tenant")];
        let a = one_header("x-tenant", "a");
        let b = one_header("x-tenant", "b");
        let empty = one_header("x-tenant", "");
        let none = HeaderMap::new();
        let k = |h: &HeaderMap| primary_hash(&parts, h, &vary);
        assert_ne!(k(&a), k(&b));
        assert_ne!(k(&empty), k(&none));
        assert_eq!(k(&a), k(&a.clone()));
        // Without vary_headers the header is ignored.
        assert_eq!(primary_hash(&parts, &a, &[]), primary_hash(&parts, &b, &[]));
    }
}
