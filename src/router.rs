//! Route index for `request_filter`: a trie over whole path segments.
//!
//! Matching walks the request path once (no allocation), collects the trie nodes where a
//! route prefix ends, and checks them deepest first: the longest prefix wins, and within
//! one prefix the entries are pre-sorted by the contract's specificity (hosts, then headers,
//! then methods, then file order). Thousands of routes cost the same as ten.

use crate::util::percent::{hex_val, normalize_percent, unreserved};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::HashMap;

/// Deepest prefix (in segments) a route may declare.
pub const MAX_PREFIX_SEGMENTS: usize = 32;

#[derive(Debug, Clone)]
pub enum HostPattern {
    /// Lower-case host name.
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com`.
    Suffix(Box<str>),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim().to_ascii_lowercase();
        // `example.com.` is the absolute spelling of `example.com`; requests are compared
        // without it too (see `route_host`).
        let s = s.strip_suffix('.').map(str::to_string).unwrap_or(s);
        if s.ends_with('.') || s.starts_with('.') || s.contains("..") {
            return Err(format!("invalid host {s:?}: empty label"));
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!("invalid host pattern {s:?}"));
            }
            return Ok(HostPattern::Suffix(format!(".{rest}").into()));
        }
        if s.is_empty() || s.contains('*') || s.contains('/') {
            return Err(format!(
                "invalid host {s:?}: use an exact name or \"*.example.com\""
            ));
        }
        Ok(HostPattern::Exact(s.into()))
    }

    #[inline]
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(sfx) => {
                host.len() > sfx.len()
                    && host.is_char_boundary(host.len() - sfx.len())
                    && host[host.len() - sfx.len()..].eq_ignore_ascii_case(sfx)
            }
        }
    }
}

/// Everything but the path that a route may require.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub methods: Vec<Method>,
    pub hosts: Vec<HostPattern>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    /// Takes `method`; `HEAD` is taken wherever `GET` is (RFC 9110 §9.3.2).
    #[inline]
    fn takes(&self, method: &Method) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m == method || (*m == Method::GET && *method == Method::HEAD))
    }

    /// Everything but the method holds.
    #[inline]
    fn matches_except_method(&self, host: Option<&str>, headers: &HeaderMap) -> bool {
        if !self.hosts.is_empty() {
            match host {
                Some(h) if self.hosts.iter().any(|p| p.matches(h)) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(n, v)| headers.get(n).is_some_and(|got| got == v))
    }

    /// Sort key within one prefix: more specific first, then file order.
    fn rank(&self) -> (bool, bool, bool) {
        (
            self.hosts.is_empty(),
            self.headers.is_empty(),
            self.methods.is_empty(),
        )
    }
}

#[derive(Debug)]
struct Entry {
    route: usize,
    /// Byte length of the normalized prefix (0 for `/`): what `strip_path` removes.
    prefix_len: usize,
    matcher: Matcher,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, usize>,
    entries: Vec<Entry>,
}

#[derive(Debug)]
pub struct Router {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: usize,
    pub prefix_len: usize,
}

/// Normalizes a configured prefix to the form requests are matched in (see
/// [`scan_path`] and [`normalize_percent`]): leading `/`, no trailing `/` (except the root),
/// escapes in canonical form, nothing a request path would be refused for.
pub fn normalize_prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with \"/\""));
    }
    if p.contains(['?', '#', '*', ' ']) {
        return Err(format!(
            "path {p:?} is a literal prefix: no query, fragment, wildcard or space"
        ));
    }
    let Some(canon) = normalize_percent(p) else {
        return Err(format!("path {p:?} has a malformed percent-encoding"));
    };
    let trimmed = canon.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    if let Err(why) = scan_path(trimmed) {
        return Err(format!("path {p:?}: {why}"));
    }
    if trimmed[1..].split('/').count() > MAX_PREFIX_SEGMENTS {
        return Err(format!(
            "path {p:?} is deeper than {MAX_PREFIX_SEGMENTS} segments"
        ));
    }
    Ok(trimmed.to_string())
}

/// What the one pass of [`scan_path`] found in a request path that it did not refuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathScan {
    /// Not in canonical form (an escaped unreserved character, lower-case hex, raw
    /// non-ASCII): [`normalize_percent`] rewrites it.
    pub rewrite: bool,
    /// Has `%2F`: a route must allow encoded slashes to take it.
    pub encoded_slash: bool,
}

/// One piece of a path between separators (`/`, or `%2F` inside a segment).
#[derive(Clone, Copy, Default)]
struct Piece {
    len: usize,
    dots: usize,
    last: u8,
}

impl Piece {
    #[inline]
    fn push(&mut self, v: u8) {
        self.len += 1;
        self.dots += usize::from(v == b'.');
        self.last = v;
    }

    /// `at_end`: the path ends here, where an empty piece is a trailing slash.
    #[inline]
    fn check(self, at_end: bool) -> Result<(), &'static str> {
        if self.len == 0 {
            return if at_end { Ok(()) } else { Err("empty segment") };
        }
        if self.dots == self.len && self.len <= 2 {
            return Err("dot segment");
        }
        // Windows file systems and some frameworks drop a trailing dot or space, so
        // `admin.` would be `admin` to them and something else to the router.
        if matches!(self.last, b'.' | b' ') {
            return Err("segment ends in a dot or a space");
        }
        Ok(())
    }
}

/// Checks a request path in one pass over its bytes, without allocating. Refused (the
/// reason): anything that could make the router and an upstream see different resources,
/// so that a request would meet a shorter route's plugins than the resource it reaches:
///
/// - malformed percent-encoding;
/// - dot segments (`..`, `.`, also as `%2e`) and empty segments (`//`), also between
///   encoded slashes (`x%2F..%2Fadmin`), where servers that decode `%2F` see them;
/// - a backslash, raw or `%5C` (a separator to Windows servers and some frameworks);
/// - `;` (path parameters, which Java servers strip before routing: `admin;x` is `admin`);
/// - encoded control characters (`%00`-`%1F`, `%7F`), raw controls and spaces;
/// - a segment ending in `.` or a space (`admin.`, `admin%20`).
///
/// `%2F` is reported in [`PathScan::encoded_slash`]: the route decides.
pub fn scan_path(path: &str) -> Result<PathScan, &'static str> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("path must start with /");
    }
    let mut scan = PathScan::default();
    let mut piece = Piece::default();
    let mut i = 1;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else {
                return Err("malformed percent-encoding");
            };
            let (Some(hv), Some(lv)) = (hex_val(h), hex_val(l)) else {
                return Err("malformed percent-encoding");
            };
            i += 3;
            let v = hv * 16 + lv;
            if h.is_ascii_lowercase() || l.is_ascii_lowercase() {
                scan.rewrite = true;
            }
            match v {
                b'/' => {
                    scan.encoded_slash = true;
                    piece.check(i == b.len())?;
                    piece = Piece::default();
                    continue;
                }
                0..=0x1f | 0x7f => return Err("encoded control character"),
                b'\\' => return Err("encoded backslash"),
                _ => {}
            }
            if unreserved(v) {
                scan.rewrite = true;
            }
            piece.push(v);
            continue;
        }
        i += 1;
        match c {
            b'/' => {
                piece.check(i == b.len())?;
                piece = Piece::default();
                continue;
            }
            b'\\' => return Err("backslash"),
            b';' => return Err("path parameter (;)"),
            0..=0x20 | 0x7f => return Err("control character or space"),
            0x80.. => scan.rewrite = true,
            _ => {}
        }
        piece.push(c);
    }
    piece.check(true)?;
    Ok(scan)
}

/// Host name as routes compare it: without port (`[v6]:port` handled) and without one
/// trailing dot (`example.com.` is the same absolute name as `example.com`). `None`: a name
/// with an empty label (`a..b`, `.a`, `a..`), which no route's host can mean.
pub fn route_host(host: &str) -> Option<&str> {
    let h = host_without_port(host);
    if h.starts_with('[') {
        return Some(h);
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.starts_with('.') || h.ends_with('.') || h.contains("..") {
        return None;
    }
    Some(h)
}

/// The outcome of a route lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(RouteMatch),
    /// The longest prefix with routes for this host and headers has none for this method
    /// (the trie node, for [`Router::allow`]).
    MethodNotAllowed(usize),
    NotFound,
}

impl Router {
    /// `routes`: for each route in file order, its normalized prefixes and matcher.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (usize, &'a [String], &'a Matcher)>,
    ) -> Router {
        let mut nodes = vec![Node::default()];
        for (route, prefixes, matcher) in routes {
            for prefix in prefixes {
                let mut at = 0;
                let prefix_len = if prefix == "/" { 0 } else { prefix.len() };
                if prefix_len > 0 {
                    for seg in prefix[1..].split('/') {
                        at = match nodes[at].children.get(seg) {
                            Some(n) => *n,
                            None => {
                                nodes.push(Node::default());
                                let n = nodes.len() - 1;
                                nodes[at].children.insert(seg.into(), n);
                                n
                            }
                        };
                    }
                }
                nodes[at].entries.push(Entry {
                    route,
                    prefix_len,
                    matcher: matcher.clone(),
                });
            }
        }
        for n in &mut nodes {
            // Stable sort keeps file order among equals.
            n.entries.sort_by_key(|e| e.matcher.rank());
        }
        Router { nodes }
    }

    /// Finds the most specific route for a request. `host` as [`route_host`] gives it.
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        headers: &HeaderMap,
        path: &str,
    ) -> Option<RouteMatch> {
        match self.lookup(method, host, headers, path) {
            Lookup::Found(m) => Some(m),
            _ => None,
        }
    }

    /// Like [`Router::find`], telling a method mismatch apart. Prefixes are tried longest
    /// first; at the first one with a route for this host and headers, the method decides:
    /// a route there that takes it, or [`Lookup::MethodNotAllowed`]. Never a shorter prefix
    /// then: `/admin` limited to `[GET, POST]` must not hand a `DELETE` to the `/` route
    /// and its (maybe weaker) plugins.
    pub fn lookup(
        &self,
        method: &Method,
        host: Option<&str>,
        headers: &HeaderMap,
        path: &str,
    ) -> Lookup {
        let mut visited = [0usize; MAX_PREFIX_SEGMENTS + 1];
        let mut depth = 1; // visited[0] = root
        if let Some(rest) = path.strip_prefix('/') {
            let mut at = 0;
            for seg in rest.split('/') {
                if depth > MAX_PREFIX_SEGMENTS {
                    break;
                }
                match self.nodes[at].children.get(seg) {
                    Some(n) => {
                        at = *n;
                        visited[depth] = at;
                        depth += 1;
                    }
                    None => break,
                }
            }
        }
        for &n in visited[..depth].iter().rev() {
            let mut refused = false;
            for e in &self.nodes[n].entries {
                if e.matcher.matches_except_method(host, headers) {
                    if e.matcher.takes(method) {
                        return Lookup::Found(RouteMatch {
                            route: e.route,
                            prefix_len: e.prefix_len,
                        });
                    }
                    refused = true;
                }
            }
            if refused {
                return Lookup::MethodNotAllowed(n);
            }
        }
        Lookup::NotFound
    }

    /// The `Allow` header of a [`Lookup::MethodNotAllowed`] answer: the methods the
    /// routes at that prefix take for this host and headers (`HEAD` with `GET`), sorted.
    pub fn allow(&self, node: usize, host: Option<&str>, headers: &HeaderMap) -> String {
        let mut methods: Vec<&str> = Vec::new();
        for e in self.nodes.get(node).map_or(&[][..], |n| &n.entries[..]) {
            if e.matcher.matches_except_method(host, headers) {
                for m in &e.matcher.methods {
                    methods.push(m.as_str());
                    if *m == Method::GET {
                        methods.push("HEAD");
                    }
                }
            }
        }
        methods.sort_unstable();
        methods.dedup();
        methods.join(", ")
    }
}

/// The path to send upstream when `strip_path` is on: the matched prefix removed, `/` if
/// nothing is left. `path_and_query` keeps its query.
pub fn strip_prefix(path_and_query: &str, prefix_len: usize) -> String {
    let rest = path_and_query.get(prefix_len..).unwrap_or("");
    if rest.is_empty() || rest.starts_with('?') {
        format!("/{rest}")
    } else {
        rest.to_string()
    }
}

/// Host name of a request without port (`[v6]:port` handled).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(spec: &[(&[&str], Matcher)]) -> Router {
        let norm: Vec<Vec<String>> = spec
            .iter()
            .map(|(ps, _)| ps.iter().map(|p| normalize_prefix(p).unwrap()).collect())
            .collect();
        Router::build(
            spec.iter()
                .enumerate()
                .map(|(i, (_, m))| (i, norm[i].as_slice(), m)),
        )
    }

    fn get(r: &Router, path: &str) -> Option<usize> {
        r.find(
            &Method::GET,
            Some("api.example.com"),
            &HeaderMap::new(),
            path,
        )
        .map(|m| m.route)
    }

    #[test]
    fn longest_whole_segment_prefix() {
        let r = router(&[
            (&["/api"], Matcher::default()),
            (&["/api/users"], Matcher::default()),
            (&["/"], Matcher::default()),
        ]);
        assert_eq!(get(&r, "/api/users/1"), Some(1));
        assert_eq!(get(&r, "/api/users"), Some(1));
        assert_eq!(get(&r, "/api/users/"), Some(1));
        assert_eq!(get(&r, "/api/usersx"), Some(0));
        assert_eq!(get(&r, "/apix"), Some(2));
        assert_eq!(get(&r, "/"), Some(2));
    }

    #[test]
    fn specificity_within_prefix() {
        let hosts = Matcher {
            hosts: vec![HostPattern::parse("*.example.com").unwrap()],
            ..Default::default()
        };
        let methods = Matcher {
            methods: vec![Method::POST],
            ..Default::default()
        };
        let r = router(&[
            (&["/a"], Matcher::default()),
            (&["/a"], methods),
            (&["/a"], hosts),
        ]);
        assert_eq!(get(&r, "/a"), Some(2));
        let m = r.find(&Method::POST, Some("other.org"), &HeaderMap::new(), "/a");
        assert_eq!(m.map(|m| m.route), Some(1));
        let m = r.find(&Method::GET, Some("other.org"), &HeaderMap::new(), "/a");
        assert_eq!(m.map(|m| m.route), Some(0));
    }

    #[test]
    fn wildcard_host_needs_a_label() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("A.Example.COM"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
    }

    #[test]
    fn strip() {
        assert_eq!(strip_prefix("/api/users/7", 10), "/7");
        assert_eq!(strip_prefix("/api/users", 10), "/");
        assert_eq!(strip_prefix("/api/users?x=1", 10), "/?x=1");
        assert_eq!(strip_prefix("/x?y", 0), "/x?y");
    }

    #[test]
    fn refused_paths() {
        for p in [
            "/a/../b",
            "/a/%2e%2E/b",
            "/a/./b",
            "/a//b",
            "/..",
            "/a/..%2Fb",
            "/a/x%2F..%2Fb",
            "/a/%2e%2e%2fb",
            "/a/%2Fb",
            "/a%2F%2Fb",
            "/a\\b",
            "/a%5cb",
            "/a;x/b",
            "/a./b",
            "/a%2e/b",
            "/a%20/b",
            "/a%00",
            "/a%0A",
            "/a%7F",
            "/...",
            "/a%zz",
            "/a%2",
            "a",
        ] {
            assert!(scan_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn accepted_paths() {
        let plain = PathScan::default();
        for p in [
            "/",
            "/a/b/",
            "/a/.well-known/b",
            "/a/..b",
            "/a/b%20c",
            "/a%2Bb",
            "/x.json",
        ] {
            assert_eq!(scan_path(p), Ok(plain), "{p}");
        }
        let rewrite = PathScan {
            rewrite: true,
            encoded_slash: false,
        };
        for p in ["/%61dmin", "/a%2bb", "/caf\u{e9}", "/a%2E%2Eb"] {
            assert_eq!(scan_path(p), Ok(rewrite), "{p}");
        }
        let slash = scan_path("/a/group%2Fsub/x").unwrap();
        assert!(slash.encoded_slash && !slash.rewrite);
        assert!(scan_path("/x%2F").unwrap().encoded_slash);
        assert!(scan_path("/x%2fy").unwrap().rewrite);
    }

    #[test]
    fn prefixes_take_the_request_form() {
        assert_eq!(normalize_prefix("/%61pi/").unwrap(), "/api");
        assert_eq!(normalize_prefix("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert!(normalize_prefix("/a;b").is_err());
        assert!(normalize_prefix("/a./b").is_err());
        assert!(normalize_prefix("/a/../b").is_err());
        assert_eq!(normalize_prefix("/x%2f").unwrap(), "/x%2F");
    }

    #[test]
    fn method_mismatch_at_the_longest_prefix() {
        let get_post = Matcher {
            methods: vec![Method::GET, Method::POST],
            ..Default::default()
        };
        let r = router(&[(&["/p"], Matcher::default()), (&["/p/admin"], get_post)]);
        let at = |m: Method| r.lookup(&m, None, &HeaderMap::new(), "/p/admin/x");
        assert!(matches!(at(Method::GET), Lookup::Found(m) if m.route == 1));
        assert!(matches!(at(Method::HEAD), Lookup::Found(m) if m.route == 1));
        let Lookup::MethodNotAllowed(n) = at(Method::DELETE) else {
            panic!("DELETE must not fall back to /p");
        };
        assert_eq!(r.allow(n, None, &HeaderMap::new()), "GET, HEAD, POST");
        // A prefix whose routes are all for another host does not stop the walk.
        let hosted = Matcher {
            hosts: vec![HostPattern::parse("h.example.com").unwrap()],
            methods: vec![Method::GET],
            ..Default::default()
        };
        let r = router(&[(&["/p"], Matcher::default()), (&["/p/h"], hosted)]);
        let m = r.lookup(&Method::PUT, Some("other.org"), &HeaderMap::new(), "/p/h");
        assert!(matches!(m, Lookup::Found(m) if m.route == 0));
        let m = r.lookup(
            &Method::PUT,
            Some("h.example.com"),
            &HeaderMap::new(),
            "/p/h",
        );
        assert!(matches!(m, Lookup::MethodNotAllowed(_)));
    }

    #[test]
    fn route_hosts() {
        assert_eq!(route_host("a.com."), Some("a.com"));
        assert_eq!(route_host("a.com.:80"), Some("a.com"));
        assert_eq!(route_host("a.com:8080"), Some("a.com"));
        assert_eq!(route_host("[::1]:80"), Some("[::1]"));
        assert_eq!(route_host("a.com.."), None);
        assert_eq!(route_host("a..com"), None);
        assert_eq!(route_host(".a.com"), None);
        assert!(HostPattern::parse("A.com.").unwrap().matches("a.com"));
        assert!(HostPattern::parse("a..com").is_err());
    }

    #[test]
    fn ports_stripped() {
        assert_eq!(host_without_port("a.com:8080"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.com"), "a.com");
    }
}
