//! Route index for `request_filter`: a trie over whole path segments.
//!
//! Matching walks the request path once (no allocation), collects the trie nodes where a
//! route prefix ends, and checks them deepest first: the longest prefix wins, and within
//! one prefix the entries are pre-sorted by the contract's specificity (hosts, then headers,
//! then methods, then file order). Thousands of routes cost the same as ten.

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
    #[inline]
    fn matches(&self, method: &Method, host: Option<&str>, headers: &HeaderMap) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
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

/// Normalizes a configured prefix: leading `/`, no trailing `/` (except the root), no empty
/// or dot segments.
pub fn normalize_prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with \"/\""));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    let segs: Vec<&str> = trimmed[1..].split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(format!("path {p:?} has an empty or dot segment"));
    }
    if segs.len() > MAX_PREFIX_SEGMENTS {
        return Err(format!(
            "path {p:?} is deeper than {MAX_PREFIX_SEGMENTS} segments"
        ));
    }
    if p.contains(['?', '#', '*', ' ']) {
        return Err(format!(
            "path {p:?} is a literal prefix: no query, fragment, wildcard or space"
        ));
    }
    Ok(trimmed.to_string())
}

/// True when a request path could mean different resources to the gateway and to the
/// upstream (dot segments, also percent-encoded, or empty segments): such paths are refused
/// rather than routed, so `/public/../admin` cannot slip past the `/admin` route's plugins.
pub fn is_ambiguous_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return true;
    };
    let mut segs = rest.split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        if seg.is_empty() && !last {
            return true;
        }
        if is_dot_segment(seg) {
            return true;
        }
    }
    false
}

/// Decodes percent-encoded unreserved characters (`%61` -> `a`, RFC 3986 §6.2.2.2) and
/// upper-cases the hex of the others, so `/%61dmin` routes like `/admin` and the upstream
/// sees the same path the router matched. `None`: malformed percent-encoding.
pub fn normalize_percent(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !path.contains('%') {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        let (Some(h), Some(l)) = (
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) else {
            return None;
        };
        let v = (h * 16 + l) as u8;
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v as char);
        } else {
            out.push('%');
            out.push_str(&format!("{v:02X}"));
        }
        i += 3;
    }
    Some(std::borrow::Cow::Owned(out))
}

fn is_dot_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    let dot = |i: usize| -> Option<usize> {
        if b.get(i) == Some(&b'.') {
            Some(i + 1)
        } else if b.len() >= i + 3 && b[i] == b'%' && b[i + 1] == b'2' && (b[i + 2] | 0x20) == b'e'
        {
            Some(i + 3)
        } else {
            None
        }
    };
    match dot(0) {
        Some(n) if n == b.len() => true,
        Some(n) => matches!(dot(n), Some(m) if m == b.len()),
        None => false,
    }
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

    /// Finds the most specific route for a request. `host` is without port.
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        headers: &HeaderMap,
        path: &str,
    ) -> Option<RouteMatch> {
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
            for e in &self.nodes[n].entries {
                if e.matcher.matches(method, host, headers) {
                    return Some(RouteMatch {
                        route: e.route,
                        prefix_len: e.prefix_len,
                    });
                }
            }
        }
        None
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
    fn ambiguous_paths() {
        assert!(is_ambiguous_path("/a/../b"));
        assert!(is_ambiguous_path("/a/%2e%2E/b"));
        assert!(is_ambiguous_path("/a/./b"));
        assert!(is_ambiguous_path("/a//b"));
        assert!(is_ambiguous_path("/.."));
        assert!(!is_ambiguous_path("/a/b/"));
        assert!(!is_ambiguous_path("/a/.well-known/b"));
        assert!(!is_ambiguous_path("/"));
        assert!(!is_ambiguous_path("/a/..b"));
    }

    #[test]
    fn percent_normalization() {
        assert_eq!(normalize_percent("/a/b").unwrap(), "/a/b");
        assert_eq!(normalize_percent("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize_percent("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(normalize_percent("/%2e%2E/x").unwrap(), "/../x");
        assert!(normalize_percent("/a%zz").is_none());
        assert!(normalize_percent("/a%2").is_none());
    }

    #[test]
    fn ports_stripped() {
        assert_eq!(host_without_port("a.com:8080"), "a.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.com"), "a.com");
    }
}
