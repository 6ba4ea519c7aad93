//! `request-transformer` (upstream_request_filter): edits the request the upstream receives,
//! with Kong's semantics, in Kong's order: `remove`, `rename`, `replace`, `add`, each for
//! `headers` (`"Name:value"`) and `querystring` (`"key:value"`); `remove` takes names.
//!
//! - `add` sets a header or query key only when the request does not have it.
//! - `replace` sets it only when the request has it (every occurrence).
//! - `rename` moves every value of `from` to `to`; an existing `to` is replaced.
//! - Values may use `$(client_ip)`, `$(request_id)`, `$(consumer)` and `$(now)` (the time the
//!   request head arrived, RFC 3339 UTC with milliseconds); response-transformer header
//!   values may also use `$(latency)` ([`Scope`]). They are compiled once at load into
//!   literal and variable segments ([`Template`]); a value with no variable is a ready
//!   `HeaderValue` (or percent-encoded query text) and costs nothing per request. When a
//!   variable has no value for a request (`$(consumer)` on an anonymous request, no client
//!   address) that entry is skipped for that request rather than sent empty.
//! - `json` entries edit JSON request bodies ([`body`]): the body is read in
//!   `request_filter` (so the upstream gets an exact `Content-Length`), rewritten, and
//!   handed to the upstream from `request_body_filter`.
//! - Query keys are compared percent-decoded (`+` is a space); keys and values written by
//!   the plugin are percent-encoded (everything but `A-Z a-z 0-9 - . _ ~`). The URI is only
//!   rebuilt when a query rule changed something.
//!
//! Hop-by-hop and framing headers (`Content-Length`, `Transfer-Encoding`, `Connection`,
//! ...) cannot be transformed: changing them would desynchronize the body framing.

pub mod body;

use crate::config::diag::Compiler;
use crate::config::units::ByteSize;
use crate::ctx::RequestCtx;
use crate::plugins::{phase, BodyOutcome, Build, Chunk, Hooks, Outcome};
use body::{BodyRules, JsonConfig};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use std::io::Write as _;

/// Headers no transformer may touch (message framing and connection management).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Box<str>),
    ClientIp,
    RequestId,
    Consumer,
    /// When the request head arrived (wall clock), RFC 3339 UTC with milliseconds.
    Now,
    /// Milliseconds (3 decimals) from the request head's arrival to now; response side only.
    Latency,
}

/// Where a template is used, which decides the variables it may name: `$(latency)` only
/// means something once a response exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// request-transformer headers, query values and JSON body values.
    Request,
    /// response-transformer header values.
    Response,
}

/// A configured value with `$(client_ip)`, `$(request_id)`, `$(consumer)`, `$(now)` (and,
/// in [`Scope::Response`], `$(latency)`) compiled into segments at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

/// The wall-clock time the request head arrived: now minus the time since `started` (the
/// monotonic clock the rest of the request uses), so every `$(now)` of one request names
/// the same instant whichever phase renders it.
pub fn arrival_time(ctx: &RequestCtx) -> std::time::Duration {
    let now = std::time::SystemTime::now();
    let at = now.checked_sub(ctx.started.elapsed()).unwrap_or(now);
    at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Formats `args` on the stack (no allocation) and appends it to `out` through `push`; false
/// when it is longer than 64 bytes.
fn push_fmt(out: &mut String, push: fn(&mut String, &str), args: std::fmt::Arguments) -> bool {
    let mut buf = [0u8; 64];
    let mut w = std::io::Cursor::new(&mut buf[..]);
    if w.write_fmt(args).is_err() {
        return false;
    }
    let n = w.position() as usize;
    match buf.get(..n).map(std::str::from_utf8) {
        Some(Ok(s)) => {
            push(out, s);
            true
        }
        _ => false,
    }
}

/// Appends `s` JSON-escaped (no quotes) to `out`: for string values built from templates.
pub fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            c => out.push(c),
        }
    }
}

impl Template {
    /// Parses a request-side `value` ([`Scope::Request`]).
    pub fn parse(value: &str) -> Result<Template, String> {
        Template::parse_in(value, Scope::Request)
    }

    /// Parses `value`. `$(` must close with `)` and name a variable known in `scope`; a `$`
    /// not followed by `(` is literal.
    pub fn parse_in(value: &str, scope: Scope) -> Result<Template, String> {
        let mut segs = Vec::new();
        let mut rest = value;
        while let Some(at) = rest.find("$(") {
            if at > 0 {
                segs.push(Seg::Lit(rest[..at].into()));
            }
            let after = &rest[at + 2..];
            let Some(close) = after.find(')') else {
                return Err(format!("unclosed \"$(\" in {value:?}"));
            };
            segs.push(match after[..close].trim() {
                "client_ip" => Seg::ClientIp,
                "request_id" => Seg::RequestId,
                "consumer" => Seg::Consumer,
                "now" => Seg::Now,
                "latency" if scope == Scope::Response => Seg::Latency,
                "latency" => {
                    return Err(
                        "\"$(latency)\" is only known in response-transformer header values"
                            .into(),
                    )
                }
                other => {
                    let latency = if scope == Scope::Response {
                        ", $(latency)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "unknown variable \"$({other})\" (known: $(client_ip), $(request_id), $(consumer), $(now){latency})"
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() || segs.is_empty() {
            segs.push(Seg::Lit(rest.into()));
        }
        Ok(Template { segs })
    }

    /// The whole value when it has no variable.
    pub fn literal(&self) -> Option<&str> {
        match self.segs.as_slice() {
            [Seg::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// The literal text with every variable left out (to validate its characters).
    fn literal_parts(&self) -> String {
        self.segs
            .iter()
            .filter_map(|s| match s {
                Seg::Lit(l) => Some(&**l),
                _ => None,
            })
            .collect()
    }

    /// Appends the expanded value to `out`, each piece passed through `push`; false when a
    /// variable has no value for this request.
    pub(crate) fn render_with(
        &self,
        ctx: &RequestCtx,
        out: &mut String,
        push: fn(&mut String, &str),
    ) -> bool {
        for s in &self.segs {
            match s {
                Seg::Lit(l) => push(out, l),
                Seg::RequestId => push(out, &ctx.request_id),
                Seg::ClientIp => match ctx.client_ip {
                    // Formatted on the stack: the longest IPv6 text is 45 bytes.
                    Some(ip) if push_fmt(out, push, format_args!("{ip}")) => {}
                    _ => return false,
                },
                Seg::Consumer => match ctx.consumer.and_then(|i| ctx.rt.consumers.get(i)) {
                    Some(c) => push(out, &c.username),
                    None => return false,
                },
                Seg::Now => push(out, &crate::util::clock::rfc3339_millis(arrival_time(ctx))),
                Seg::Latency => {
                    // "12.345": at most ~20 digits before the point for any real uptime.
                    let ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
                    if !push_fmt(out, push, format_args!("{ms:.3}")) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The expanded value as a header value; `None` when a variable has no value or the
    /// result is not a valid header value.
    pub fn header_value(&self, ctx: &RequestCtx) -> Option<HeaderValue> {
        let mut s = String::new();
        if !self.render_with(ctx, &mut s, |o, p| o.push_str(p)) {
            return None;
        }
        HeaderValue::from_maybe_shared(Bytes::from(s.into_bytes())).ok()
    }

    /// The value as `explain` shows it: the variables it knows (the client IP, the
    /// consumer) filled in, the others (`$(request_id)`, `$(now)`, a consumer only a token
    /// names) left as written; `None` when the entry would be skipped (no consumer).
    fn explain_text(&self, x: &crate::plugins::Explain) -> Option<String> {
        let mut out = String::new();
        for s in &self.segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::ClientIp => match x.client_ip {
                    Some(ip) => out.push_str(&ip.to_string()),
                    None => out.push_str("$(client_ip)"),
                },
                Seg::Consumer => match (x.consumer_name(), x.deferred_identity) {
                    (Some(c), _) => out.push_str(c),
                    (None, Some(_)) => out.push_str("$(consumer)"),
                    (None, None) => return None,
                },
                Seg::RequestId => out.push_str("$(request_id)"),
                Seg::Now => out.push_str("$(now)"),
                Seg::Latency => out.push_str("$(latency)"),
            }
        }
        Some(out)
    }
}

/// A header value: ready when it has no variable.
#[derive(Debug)]
pub enum HeaderVal {
    Static(HeaderValue),
    Dynamic(Template),
}

impl HeaderVal {
    /// The value as `explain` shows it ([`Template::explain_text`]).
    fn explain_text(&self, x: &crate::plugins::Explain) -> Option<String> {
        match self {
            HeaderVal::Static(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            HeaderVal::Dynamic(t) => t.explain_text(x),
        }
    }

    #[inline]
    pub fn get(&self, ctx: &RequestCtx) -> Option<HeaderValue> {
        match self {
            HeaderVal::Static(v) => Some(v.clone()),
            HeaderVal::Dynamic(t) => t.header_value(ctx),
        }
    }
}

/// A configured header name: the `HeaderName` for lookups and the spelling of the config
/// for what goes on the wire.
#[derive(Debug, Clone)]
pub struct Name {
    pub name: HeaderName,
    pub case: Bytes,
}

// ---------------------------------------------------------------------------------------------
// Config entries
// ---------------------------------------------------------------------------------------------

/// `"Name:value"` split at the first colon, both sides trimmed.
pub fn split_entry(entry: &str) -> Option<(&str, &str)> {
    let (n, v) = entry.split_once(':')?;
    let n = n.trim();
    if n.is_empty() {
        return None;
    }
    Some((n, v.trim()))
}

/// A header name from the config; errors are recorded at `path`.
pub fn header_name(c: &mut Compiler, path: &str, name: &str) -> Option<Name> {
    let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
        c.error(path, format!("invalid header name {name:?}"));
        return None;
    };
    if HOP_BY_HOP.contains(&h.as_str()) {
        c.error(
            path,
            format!("header {name:?} cannot be transformed (it frames the message or manages the connection)"),
        );
        return None;
    }
    Some(Name {
        name: h,
        case: Bytes::copy_from_slice(name.as_bytes()),
    })
}

/// A header value (template) whose variables are those of `scope`.
pub fn header_val_in(c: &mut Compiler, path: &str, value: &str, scope: Scope) -> Option<HeaderVal> {
    let t = match Template::parse_in(value, scope) {
        Ok(t) => t,
        Err(e) => {
            c.error(path, e);
            return None;
        }
    };
    if HeaderValue::from_str(&t.literal_parts()).is_err() {
        c.error(path, format!("invalid header value {value:?}"));
        return None;
    }
    Some(match t.literal() {
        Some(l) => match HeaderValue::from_str(l) {
            Ok(v) => HeaderVal::Static(v),
            Err(_) => {
                c.error(path, format!("invalid header value {value:?}"));
                return None;
            }
        },
        None => HeaderVal::Dynamic(t),
    })
}

/// `headers` entries `"Name:value"`.
pub fn header_pairs(c: &mut Compiler, path: &str, entries: &[String]) -> Vec<(Name, HeaderVal)> {
    header_pairs_in(c, path, entries, Scope::Request)
}

/// `headers` entries `"Name:value"` whose values use the variables of `scope`.
pub fn header_pairs_in(
    c: &mut Compiler,
    path: &str,
    entries: &[String],
    scope: Scope,
) -> Vec<(Name, HeaderVal)> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some((n, v)) = split_entry(e) else {
            c.error(&p, format!("expected \"Name:value\", got {e:?}"));
            continue;
        };
        if let (Some(n), Some(v)) = (header_name(c, &p, n), header_val_in(c, &p, v, scope)) {
            out.push((n, v));
        }
    }
    out
}

/// `headers` entries that are plain names (`remove`).
pub fn header_names(c: &mut Compiler, path: &str, entries: &[String]) -> Vec<Name> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if e.contains(':') {
            c.error(&p, format!("expected a header name, got {e:?}"));
            continue;
        }
        if let Some(n) = header_name(c, &p, e.trim()) {
            out.push(n);
        }
    }
    out
}

/// `headers` entries `"From:To"` (`rename`).
pub fn header_renames(c: &mut Compiler, path: &str, entries: &[String]) -> Vec<(Name, Name)> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some((from, to)) = split_entry(e).filter(|(_, t)| !t.is_empty()) else {
            c.error(&p, format!("expected \"From:To\", got {e:?}"));
            continue;
        };
        if let (Some(f), Some(t)) = (header_name(c, &p, from), header_name(c, &p, to)) {
            if f.name == t.name {
                c.error(&p, format!("renames {from:?} to itself"));
                continue;
            }
            out.push((f, t));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Header edits (shared with response-transformer through a small trait)
// ---------------------------------------------------------------------------------------------

/// The header map operations both transformers need, for `RequestHeader` and
/// `ResponseHeader`.
pub trait Headers {
    fn map(&self) -> &http::HeaderMap;
    fn insert(&mut self, name: &Name, v: HeaderValue) -> Result<()>;
    fn append(&mut self, name: &Name, v: HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName);
}

// Pingora's request and response heads have the same inherent methods but no common trait.
macro_rules! impl_headers {
    ($($head:ty),+) => {$(
        impl Headers for $head {
            fn map(&self) -> &http::HeaderMap {
                &self.headers
            }
            fn insert(&mut self, name: &Name, v: HeaderValue) -> Result<()> {
                self.insert_header(name.case.clone(), v)
            }
            fn append(&mut self, name: &Name, v: HeaderValue) -> Result<()> {
                self.append_header(name.case.clone(), v).map(|_| ())
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    )+};
}
impl_headers!(RequestHeader, pingora::http::ResponseHeader);

/// Compiled header rules.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub remove: Vec<Name>,
    pub rename: Vec<(Name, Name)>,
    pub replace: Vec<(Name, HeaderVal)>,
    pub add: Vec<(Name, HeaderVal)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
    }

    /// Applies remove, rename, replace, add in that order.
    pub fn apply<H: Headers>(&self, h: &mut H, ctx: &RequestCtx) -> Result<()> {
        for n in &self.remove {
            h.remove(&n.name);
        }
        for (from, to) in &self.rename {
            if !h.map().contains_key(&from.name) {
                continue;
            }
            let values: Vec<HeaderValue> = h.map().get_all(&from.name).iter().cloned().collect();
            h.remove(&from.name);
            h.remove(&to.name);
            for v in values {
                h.append(to, v)?;
            }
        }
        for (n, v) in &self.replace {
            if h.map().contains_key(&n.name) {
                if let Some(v) = v.get(ctx) {
                    h.insert(n, v)?;
                }
            }
        }
        for (n, v) in &self.add {
            if !h.map().contains_key(&n.name) {
                if let Some(v) = v.get(ctx) {
                    h.insert(n, v)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Query string
// ---------------------------------------------------------------------------------------------

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes `s` (everything but unreserved characters) onto `out`.
pub fn push_encoded(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

fn encoded(s: &str) -> Box<str> {
    let mut o = String::with_capacity(s.len());
    push_encoded(&mut o, s);
    o.into()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A raw query key equals `name` once percent-decoded (`+` is a space). No allocation.
pub fn query_key_eq(raw: &str, name: &str) -> bool {
    let (r, n) = (raw.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < r.len() {
        let b = match r[i] {
            b'+' => {
                i += 1;
                b' '
            }
            b'%' => match (
                r.get(i + 1).copied().and_then(hex),
                r.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    i += 3;
                    h << 4 | l
                }
                _ => {
                    i += 1;
                    b'%'
                }
            },
            b => {
                i += 1;
                b
            }
        };
        if n.get(j) != Some(&b) {
            return false;
        }
        j += 1;
    }
    j == n.len()
}

/// A query value: percent-encoded already when it has no variable.
#[derive(Debug)]
pub enum QueryVal {
    Static(Box<str>),
    Dynamic(Template),
}

#[derive(Debug)]
pub struct QueryKey {
    /// As configured (compared decoded).
    name: Box<str>,
    /// Percent-encoded, as written.
    enc: Box<str>,
}

impl QueryKey {
    fn new(name: &str) -> QueryKey {
        QueryKey {
            name: name.into(),
            enc: encoded(name),
        }
    }
}

/// Compiled query rules.
#[derive(Debug, Default)]
pub struct QueryOps {
    remove: Vec<QueryKey>,
    rename: Vec<(QueryKey, QueryKey)>,
    replace: Vec<(QueryKey, QueryVal)>,
    add: Vec<(QueryKey, QueryVal)>,
}

/// One `key[=value]` pair of the query while it is edited: borrowed from the request or
/// from the config, owned only for expanded templates.
struct Pair<'a> {
    key: &'a str,
    value: Option<std::borrow::Cow<'a, str>>,
}

impl QueryOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
    }

    fn value<'a>(v: &'a QueryVal, ctx: &RequestCtx) -> Option<std::borrow::Cow<'a, str>> {
        match v {
            QueryVal::Static(s) => Some(std::borrow::Cow::Borrowed(s)),
            QueryVal::Dynamic(t) => {
                let mut s = String::new();
                t.render_with(ctx, &mut s, push_encoded)
                    .then_some(std::borrow::Cow::Owned(s))
            }
        }
    }

    /// The new query (None: unchanged).
    pub fn apply(&self, query: &str, ctx: &RequestCtx) -> Option<String> {
        self.apply_with(query, |v| Self::value(v, ctx))
    }

    /// The new query as `explain` shows it: template values as [`Template::explain_text`]
    /// (percent-encoded except for the `$(...)` of a variable left as written).
    fn explain(&self, query: &str, x: &crate::plugins::Explain) -> Option<String> {
        self.apply_with(query, |v| match v {
            QueryVal::Static(s) => Some(std::borrow::Cow::Borrowed(&**s)),
            QueryVal::Dynamic(t) => t.explain_text(x).map(std::borrow::Cow::Owned),
        })
    }

    /// [`Self::apply`] with the values `value` gives (`None`: the entry is skipped).
    fn apply_with<'v>(
        &'v self,
        query: &str,
        value: impl Fn(&'v QueryVal) -> Option<std::borrow::Cow<'v, str>>,
    ) -> Option<String> {
        let mut pairs: Vec<Pair> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => Pair {
                    key: k,
                    value: Some(v.into()),
                },
                None => Pair {
                    key: p,
                    value: None,
                },
            })
            .collect();
        let mut changed = false;
        for k in &self.remove {
            let before = pairs.len();
            pairs.retain(|p| !query_key_eq(p.key, &k.name));
            changed |= pairs.len() != before;
        }
        for (from, to) in &self.rename {
            if !pairs.iter().any(|p| query_key_eq(p.key, &from.name)) {
                continue;
            }
            pairs.retain(|p| !query_key_eq(p.key, &to.name));
            for p in pairs.iter_mut().filter(|p| query_key_eq(p.key, &from.name)) {
                p.key = &to.enc;
            }
            changed = true;
        }
        for (k, v) in &self.replace {
            if !pairs.iter().any(|p| query_key_eq(p.key, &k.name)) {
                continue;
            }
            let Some(v) = value(v) else {
                continue;
            };
            for p in pairs.iter_mut().filter(|p| query_key_eq(p.key, &k.name)) {
                p.value = Some(v.clone());
            }
            changed = true;
        }
        for (k, v) in &self.add {
            if pairs.iter().any(|p| query_key_eq(p.key, &k.name)) {
                continue;
            }
            let Some(v) = value(v) else {
                continue;
            };
            pairs.push(Pair {
                key: &k.enc,
                value: Some(v),
            });
            changed = true;
        }
        if !changed {
            return None;
        }
        let mut out = String::with_capacity(query.len() + 32);
        for p in &pairs {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(p.key);
            if let Some(v) = &p.value {
                out.push('=');
                out.push_str(v);
            }
        }
        Some(out)
    }
}

fn query_key(c: &mut Compiler, path: &str, k: &str) -> Option<QueryKey> {
    if k.is_empty() {
        c.error(path, "query key must not be empty");
        return None;
    }
    Some(QueryKey::new(k))
}

fn query_val(c: &mut Compiler, path: &str, v: &str) -> Option<QueryVal> {
    match Template::parse(v) {
        Ok(t) => Some(match t.literal() {
            Some(l) => QueryVal::Static(encoded(l)),
            None => QueryVal::Dynamic(t),
        }),
        Err(e) => {
            c.error(path, e);
            None
        }
    }
}

fn query_pairs(c: &mut Compiler, path: &str, entries: &[String]) -> Vec<(QueryKey, QueryVal)> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some((k, v)) = e.split_once(':') else {
            c.error(&p, format!("expected \"key:value\", got {e:?}"));
            continue;
        };
        if let (Some(k), Some(v)) = (query_key(c, &p, k.trim()), query_val(c, &p, v.trim())) {
            out.push((k, v));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The plugin
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Entries {
    headers: Vec<String>,
    querystring: Vec<String>,
    /// JSON body members (`"path:value"`, `remove`: paths).
    json: Vec<String>,
    /// Kong's `json_types`: the type of each `json` value, in order (`string` by default).
    json_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    add: Entries,
    remove: Entries,
    rename: Entries,
    replace: Entries,
    /// Largest JSON body read to apply `json` rules to.
    max_body_bytes: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            add: Entries::default(),
            remove: Entries::default(),
            rename: Entries::default(),
            replace: Entries::default(),
            max_body_bytes: ByteSize(1024 * 1024),
        }
    }
}

#[derive(Debug)]
pub struct RequestTransformer {
    headers: HeaderOps,
    query: QueryOps,
    /// `json` rules; `None` when there are none (bodies are never read).
    body: Option<Box<BodyRules>>,
}

impl RequestTransformer {
    /// The JSON body rules, when configured.
    pub fn body(&self) -> Option<&BodyRules> {
        self.body.as_deref()
    }
}

impl Hooks for RequestTransformer {
    /// The JSON body read and rewritten in `request_filter`, sent to every upstream attempt.
    type State = Option<body::Prepared>;
    const PHASES: u32 = phase::REQUEST | phase::REQUEST_BODY | phase::UPSTREAM_REQUEST;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let body = BodyRules::build(
            c,
            path,
            &JsonConfig {
                add: &cfg.add.json,
                add_types: &cfg.add.json_types,
                remove: &cfg.remove.json,
                remove_types: &cfg.remove.json_types,
                rename: &cfg.rename.json,
                rename_types: &cfg.rename.json_types,
                replace: &cfg.replace.json,
                replace_types: &cfg.replace.json_types,
                max_body_bytes: cfg.max_body_bytes.0,
            },
        );
        let p = |op: &str, kind: &str| format!("{path}.config.{op}.{kind}");
        let headers = HeaderOps {
            remove: header_names(c, &p("remove", "headers"), &cfg.remove.headers),
            rename: header_renames(c, &p("rename", "headers"), &cfg.rename.headers),
            replace: header_pairs(c, &p("replace", "headers"), &cfg.replace.headers),
            add: header_pairs(c, &p("add", "headers"), &cfg.add.headers),
        };
        let mut query = QueryOps {
            replace: query_pairs(c, &p("replace", "querystring"), &cfg.replace.querystring),
            add: query_pairs(c, &p("add", "querystring"), &cfg.add.querystring),
            ..QueryOps::default()
        };
        for (i, e) in cfg.remove.querystring.iter().enumerate() {
            let pp = format!("{}[{i}]", p("remove", "querystring"));
            if e.contains(':') {
                c.error(&pp, format!("expected a query key, got {e:?}"));
            } else if let Some(k) = query_key(c, &pp, e.trim()) {
                query.remove.push(k);
            }
        }
        for (i, e) in cfg.rename.querystring.iter().enumerate() {
            let pp = format!("{}[{i}]", p("rename", "querystring"));
            match e.split_once(':').map(|(a, b)| (a.trim(), b.trim())) {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && a != b => {
                    query.rename.push((QueryKey::new(a), QueryKey::new(b)));
                }
                _ => c.error(&pp, format!("expected \"from:to\", got {e:?}")),
            }
        }
        let body = body.ok()?.map(Box::new);
        Some(RequestTransformer {
            headers,
            query,
            body,
        })
    }
    /// `request_filter`: reads and rewrites a JSON body when `json` rules are configured.
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        match &self.body {
            Some(b) => b.read(session, ctx).await,
            None => Outcome::Continue,
        }
    }
    /// `request_body_filter`: a body read and rewritten in `request_filter` goes to every
    /// upstream attempt as rewritten ([`body::replay`]).
    fn request_body(&self, body: &mut Chunk<'_>, ctx: &mut RequestCtx) -> Result<BodyOutcome> {
        Ok(if body::replay(body, ctx) {
            BodyOutcome::Supplied
        } else {
            BodyOutcome::Continue
        })
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        body::upstream_request(req, ctx)?;
        self.headers.apply(req, ctx)?;
        if self.query.is_empty() {
            return Ok(());
        }
        let Some(q) = self.query.apply(req.uri.query().unwrap_or(""), ctx) else {
            return Ok(());
        };
        let path = req.uri.path();
        let mut pq = String::with_capacity(path.len() + 1 + q.len());
        pq.push_str(path);
        if !q.is_empty() {
            pq.push('?');
            pq.push_str(&q);
        }
        let mut parts = req.uri.clone().into_parts();
        parts.path_and_query = match pq.parse() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::debug!("request-transformer: query rewrite produced an invalid target");
                return Ok(());
            }
        };
        if let Ok(uri) = http::Uri::from_parts(parts) {
            req.set_uri(uri);
        }
        Ok(())
    }

    fn register_metrics() {
        body::register_metrics();
    }

    /// `request_transform_bodies_total{route,result}` exists from the start (at 0).
    fn route_series(route: &str, create: bool) {
        body::route_series(route, create);
    }

    /// Its header edits go to the upstream section (in its order: remove, rename, replace,
    /// add), and its query edits to the upstream path; JSON body edits are described.
    fn explain(&self, x: &mut crate::plugins::Explain) -> serde_json::Value {
        use crate::plugins::HeaderEdit;
        let h = &self.headers;
        let mut edits: Vec<HeaderEdit> = Vec::new();
        edits.extend(h.remove.iter().map(|n| HeaderEdit::Remove(n.name.clone())));
        edits.extend(
            h.rename
                .iter()
                .map(|(f, t)| HeaderEdit::Rename(f.name.clone(), t.name.clone())),
        );
        // An entry whose variable has no value (`$(consumer)` without one) is skipped, as
        // at request time.
        for (n, v) in &h.replace {
            if let Some(v) = v.explain_text(x) {
                edits.push(HeaderEdit::Replace(n.name.clone(), v));
            }
        }
        for (n, v) in &h.add {
            if let Some(v) = v.explain_text(x) {
                edits.push(HeaderEdit::Add(n.name.clone(), v));
            }
        }
        x.header_edits.extend(edits);
        if !self.query.is_empty() {
            if let Some(q) = self.query.explain(x.query.as_deref().unwrap_or(""), x) {
                x.query = (!q.is_empty()).then_some(q);
            }
        }
        if self.body.is_some() {
            x.notes.push(serde_json::json!(
                "request-transformer edits JSON request bodies (json rules; not shown)"
            ));
        }
        serde_json::json!({"result": "edits the request (headers and query shown in the upstream section)"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile_to_segments() {
        let t = Template::parse("id=$(request_id);ip=$(client_ip)").unwrap();
        assert_eq!(
            t.segs,
            vec![
                Seg::Lit("id=".into()),
                Seg::RequestId,
                Seg::Lit(";ip=".into()),
                Seg::ClientIp
            ]
        );
        assert_eq!(
            Template::parse("plain $ text").unwrap().literal(),
            Some("plain $ text")
        );
        assert_eq!(Template::parse("").unwrap().literal(), Some(""));
        assert_eq!(
            Template::parse("$(consumer)").unwrap().segs,
            vec![Seg::Consumer]
        );
        assert!(Template::parse("$(nope)")
            .unwrap_err()
            .contains("unknown variable"));
        assert!(Template::parse("x $(client_ip")
            .unwrap_err()
            .contains("unclosed"));
    }

    #[test]
    fn entries_split_at_first_colon() {
        assert_eq!(split_entry("X-A: b:c "), Some(("X-A", "b:c")));
        assert_eq!(split_entry("X-A:"), Some(("X-A", "")));
        assert_eq!(split_entry(":v"), None);
        assert_eq!(split_entry("novalue"), None);
    }

    #[test]
    fn query_keys_compare_decoded() {
        assert!(query_key_eq("a%20b", "a b"));
        assert!(query_key_eq("a+b", "a b"));
        assert!(query_key_eq("k", "k"));
        assert!(!query_key_eq("k", "kk"));
        assert!(!query_key_eq("kk", "k"));
        assert!(query_key_eq("100%", "100%"));
        let mut s = String::new();
        push_encoded(&mut s, "a b&c=d/é~");
        assert_eq!(s, "a%20b%26c%3Dd%2F%C3%A9~");
    }
}
