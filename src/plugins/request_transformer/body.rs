//! `request-transformer`'s JSON body rules (`add`, `remove`, `rename`, `replace` `json`
//! entries) and how the rewritten body reaches the upstream with an exact `Content-Length`.
//!
//! Pingora phases:
//! - `request_filter` ([`BodyRules::read`]): reads the whole body (under `server.body_timeout`
//!   per read, `max_body_bytes` and the request's body limit), rewrites it and keeps the
//!   result in `RequestCtx::plugins.request_transformer`.
//! - `upstream_request_filter` ([`upstream_request`]): `Content-Length` of the rewritten
//!   body; `Transfer-Encoding` and `Expect` removed.
//! - `request_body_filter` ([`replay`]): hands the rewritten body to the upstream, once per
//!   attempt (a retried request sends the same bytes).
//!
//! Why the body is read before the upstream request head: Pingora writes the head to the
//! upstream before it reads the first body byte, so a rewrite made while streaming could only
//! go out chunked. Reading first has one catch: once the body has been read, Pingora 0.9.1
//! feeds the upstream only from its retry buffer (64 KB, `BODY_BUF_LIMIT`) — on the first
//! attempt and on every retry it calls `request_body_filter` once with that buffer's
//! content. So retry buffering is switched on for the last 64 KB of the body (for a
//! `Content-Length` body: when at most that much is left; without one, from the start) and
//! the filter replaces the buffered bytes with the rewritten body. A body without
//! `Content-Length` (chunked, or HTTP/2 without the header) can therefore be rewritten up to
//! 64 KB; past that it is refused with 413 (it was already consumed and cannot be passed on).
//!
//! JSON is not parsed into a `serde_json::Value` (which would reorder members and round
//! numbers): the body is validated in one pass, and only the objects on a configured path
//! are split into members; every other value is kept as a slice of the input. Edits run on
//! that small tree in Kong's order (`remove`, `rename`, `replace`, `add`) and the result is
//! written back: untouched values are copied byte for byte, edited objects come out compact.

use super::{push_json_escaped, Template};
use crate::config::diag::{Compiler, ErrorSink};
use crate::ctx::RequestCtx;
use crate::plugins::body_buf::Chunks;
use crate::plugins::json_rewrite;
use crate::plugins::json_scan::{unquoted, Invalid, Scanner};
use crate::plugins::response_transformer::is_json;
use crate::plugins::{Outcome, Reply};
use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;

/// Nesting deeper than this is refused as invalid (same limit as the response rewriter).
pub const MAX_DEPTH: usize = crate::plugins::json_scan::MAX_DEPTH;

/// Pingora's retry buffer (`BODY_BUF_LIMIT` in pingora-core, not exported): the most body
/// bytes it holds to replay to the upstream.
pub const REPLAY_LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Results (metrics)
// ---------------------------------------------------------------------------------------------

/// What happened to a JSON request body the rules applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyResult {
    /// A rule changed the body.
    Rewritten,
    /// Read and valid, but no rule matched: sent as it came (with a `Content-Length`).
    Unchanged,
    /// Refused with 413: over `max_body_bytes`, or over 64 KB without `Content-Length`.
    TooLarge,
    /// Refused with 400: not valid JSON.
    InvalidJson,
    /// Refused with 415: `Content-Encoding` set.
    Compressed,
}

impl BodyResult {
    pub const ALL: [BodyResult; 5] = [
        BodyResult::Rewritten,
        BodyResult::Unchanged,
        BodyResult::TooLarge,
        BodyResult::InvalidJson,
        BodyResult::Compressed,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyResult::Rewritten => "rewritten",
            BodyResult::Unchanged => "unchanged",
            BodyResult::TooLarge => "too_large",
            BodyResult::InvalidJson => "invalid_json",
            BodyResult::Compressed => "compressed",
        }
    }
}

/// `request_transform_bodies_total{route,result}`.
static BODIES: once_cell::sync::Lazy<prometheus::IntCounterVec> = once_cell::sync::Lazy::new(
    || {
        crate::observe::metrics::registry().counter_vec(
        "request_transform_bodies_total",
        "JSON request bodies request-transformer read, by route and result (rewritten, unchanged; refused: too_large, invalid_json, compressed).",
        &["route", "result"],
    )
    },
);

/// Registers `request_transform_bodies_total` (once, at startup).
pub(super) fn register_metrics() {
    once_cell::sync::Lazy::force(&BODIES);
}

/// Creates (at 0) or removes the series of `route`, one per [`BodyResult`].
pub(super) fn route_series(route: &str, create: bool) {
    for r in BodyResult::ALL {
        let labels = [route, r.as_str()];
        if create {
            BODIES.with_label_values(&labels);
        } else {
            let _ = BODIES.remove_label_values(&labels);
        }
    }
}

fn record(ctx: &RequestCtx, result: BodyResult) {
    let route = ctx.route().map_or("", |r| r.name.as_str());
    BODIES.with_label_values(&[route, result.as_str()]).inc();
}

// ---------------------------------------------------------------------------------------------
// Paths and values
// ---------------------------------------------------------------------------------------------

/// A member path: `a.b.c` names member `c` of object `b` of object `a` of the body. `\.`
/// is a literal dot, `\:` a literal colon and `\\` a backslash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<Box<str>>);

impl Path {
    pub fn parse(s: &str) -> Result<Path, String> {
        let mut segs = Vec::new();
        let mut cur = String::new();
        let mut chars = s.trim().chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('.' | ':' | '\\')) => cur.push(e),
                    _ => return Err(format!("bad escape in {s:?} (use \\. \\: or \\\\)")),
                },
                '.' => {
                    if cur.is_empty() {
                        return Err(format!("empty member name in path {s:?}"));
                    }
                    segs.push(std::mem::take(&mut cur).into_boxed_str());
                }
                c => cur.push(c),
            }
        }
        if cur.is_empty() {
            return Err(format!("empty member name in path {s:?}"));
        }
        segs.push(cur.into_boxed_str());
        Ok(Path(segs))
    }

    /// `a` is `self` or inside it.
    fn contains(&self, a: &Path) -> bool {
        a.0.len() >= self.0.len() && a.0[..self.0.len()] == self.0[..]
    }
}

/// Splits `entry` at its first `:` not escaped with `\`: (path text, value text trimmed).
fn split_entry(entry: &str) -> Option<(&str, &str)> {
    let b = entry.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b':' => return Some((&entry[..i], entry[i + 1..].trim())),
            _ => i += 1,
        }
    }
    None
}

/// A configured value.
#[derive(Debug)]
enum Val {
    /// Ready JSON text (a string literal with quotes, a number, `true`, `null`, ...).
    Json(Box<[u8]>),
    /// A string with variables, rendered per request.
    Str(Template),
}

impl Val {
    /// The JSON text for this request; `None` when a variable has no value (the entry is
    /// skipped, as for headers).
    fn render<'a>(&'a self, ctx: &RequestCtx) -> Option<Cow<'a, [u8]>> {
        match self {
            Val::Json(b) => Some(Cow::Borrowed(b)),
            Val::Str(t) => {
                let mut s = String::with_capacity(48);
                s.push('"');
                if !t.render_with(ctx, &mut s, push_json_escaped) {
                    return None;
                }
                s.push('"');
                Some(Cow::Owned(s.into_bytes()))
            }
        }
    }
}

/// `json_types` entry (Kong's `string`, `number`, `boolean`, plus `json` for any JSON text:
/// `null`, an object, an array).
fn typed_value(kind: &str, v: &str) -> Result<Val, String> {
    match kind {
        "string" => {
            let t = Template::parse(v)?;
            Ok(match t.literal() {
                Some(l) => {
                    let mut out = Vec::with_capacity(l.len() + 2);
                    json_rewrite::push_json_str(&mut out, l);
                    Val::Json(out.into())
                }
                None => Val::Str(t),
            })
        }
        "number" | "boolean" | "json" => {
            if v.contains("$(") {
                return Err(format!(
                    "variables are only expanded in string values, not in {kind} {v:?}"
                ));
            }
            let ok = match kind {
                "number" => matches!(v.as_bytes().first(), Some(b'-' | b'0'..=b'9')),
                "boolean" => v == "true" || v == "false",
                _ => true,
            };
            if !ok || Scanner::validate(v.as_bytes()).is_err() {
                return Err(format!("{v:?} is not a JSON {kind}"));
            }
            Ok(Val::Json(v.as_bytes().into()))
        }
        other => Err(format!(
            "unknown json type {other:?} (known: string, number, boolean, json)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The `json` (and `json_types`) lists of the request-transformer config.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonConfig<'a> {
    pub add: &'a [String],
    pub add_types: &'a [String],
    pub remove: &'a [String],
    pub remove_types: &'a [String],
    pub rename: &'a [String],
    pub rename_types: &'a [String],
    pub replace: &'a [String],
    pub replace_types: &'a [String],
    pub max_body_bytes: u64,
}

/// The config has errors (already reported to the [`Compiler`]).
#[derive(Debug)]
pub struct ConfigInvalid;

/// The objects of a body that are split into members: every prefix of a rule's path.
#[derive(Debug, Default)]
struct Trie {
    children: Vec<(Box<str>, Trie)>,
}

impl Trie {
    fn insert(&mut self, path: &Path) {
        let mut node = self;
        for seg in &path.0 {
            let i = match node.children.iter().position(|(n, _)| n == seg) {
                Some(i) => i,
                None => {
                    node.children.push((seg.clone(), Trie::default()));
                    node.children.len() - 1
                }
            };
            node = match node.children.get_mut(i) {
                Some((_, t)) => t,
                None => return,
            };
        }
    }

    #[inline]
    fn child(&self, name: &str) -> Option<&Trie> {
        self.children
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, t)| t)
    }
}

/// Compiled body rules of one request-transformer.
#[derive(Debug)]
pub struct BodyRules {
    remove: Vec<Path>,
    rename: Vec<(Path, Path)>,
    replace: Vec<(Path, Val)>,
    add: Vec<(Path, Val)>,
    trie: Trie,
    max_body: usize,
    /// Output bytes to reserve beyond the input's length.
    extra: usize,
}

impl BodyRules {
    /// `Ok(None)` when no `json` rule is configured (the body is never touched).
    pub fn build(
        c: &mut Compiler,
        path: &str,
        cfg: &JsonConfig,
    ) -> Result<Option<BodyRules>, ConfigInvalid> {
        let c = &mut ErrorSink { c, failed: false };
        let p = |op: &str, kind: &str| format!("{path}.config.{op}.{kind}");
        for (op, types) in [("remove", cfg.remove_types), ("rename", cfg.rename_types)] {
            if !types.is_empty() {
                c.error(
                    &p(op, "json_types"),
                    "json_types only applies to add and replace",
                );
            }
        }
        let mut remove: Vec<Path> = Vec::new();
        for (i, e) in cfg.remove.iter().enumerate() {
            let at = format!("{}[{i}]", p("remove", "json"));
            match Path::parse(e) {
                Ok(path) if remove.contains(&path) => c.error(&at, format!("{e:?} listed twice")),
                Ok(path) => remove.push(path),
                Err(m) => c.error(&at, m),
            }
        }
        let mut rename: Vec<(Path, Path)> = Vec::new();
        for (i, e) in cfg.rename.iter().enumerate() {
            let at = format!("{}[{i}]", p("rename", "json"));
            let Some((from, to)) = split_entry(e) else {
                c.error(&at, format!("expected \"from:to\", got {e:?}"));
                continue;
            };
            match (Path::parse(from), Path::parse(to)) {
                (Ok(f), Ok(t)) => {
                    if f.contains(&t) {
                        c.error(&at, format!("cannot rename {from:?} into itself ({to:?})"));
                    } else if rename.iter().any(|(x, _)| *x == f) {
                        c.error(&at, format!("{from:?} renamed twice"));
                    } else if rename.iter().any(|(_, y)| *y == t) {
                        c.error(
                            &at,
                            format!("two renames into {to:?}: the result would be ambiguous"),
                        );
                    } else {
                        rename.push((f, t));
                    }
                }
                (Err(m), _) | (_, Err(m)) => c.error(&at, m),
            }
        }
        let replace = values(c, &p("replace", "json"), cfg.replace, cfg.replace_types);
        let add = values(c, &p("add", "json"), cfg.add, cfg.add_types);
        let max_body = match usize::try_from(cfg.max_body_bytes) {
            Ok(n) if n > 0 => n,
            _ => {
                c.error(
                    &format!("{path}.config.max_body_bytes"),
                    "must be between 1 byte and the address space",
                );
                0
            }
        };
        if c.failed {
            return Err(ConfigInvalid);
        }
        if remove.is_empty() && rename.is_empty() && replace.is_empty() && add.is_empty() {
            return Ok(None);
        }
        let mut trie = Trie::default();
        for path in remove
            .iter()
            .chain(rename.iter().flat_map(|(f, t)| [f, t]))
            .chain(replace.iter().map(|(p, _)| p))
            .chain(add.iter().map(|(p, _)| p))
        {
            trie.insert(path);
        }
        let extra = add
            .iter()
            .chain(replace.iter())
            .map(|(p, v)| {
                let keys: usize = p.0.iter().map(|s| s.len() + 4).sum();
                keys + match v {
                    Val::Json(b) => b.len(),
                    Val::Str(_) => 64,
                }
            })
            .sum::<usize>()
            + rename.iter().map(|(_, t)| t.0.len() * 8).sum::<usize>();
        Ok(Some(BodyRules {
            remove,
            rename,
            replace,
            add,
            trie,
            max_body,
            extra,
        }))
    }

    /// Largest body read to be rewritten (`max_body_bytes`).
    pub fn max_body(&self) -> usize {
        self.max_body
    }
}

/// `add` / `replace` entries `"path:value"` typed by `json_types`.
fn values(c: &mut ErrorSink, at: &str, entries: &[String], types: &[String]) -> Vec<(Path, Val)> {
    if types.len() > entries.len() {
        c.error(
            &format!("{}_types", at),
            format!(
                "{} types for {} entries (one type per json entry, in order)",
                types.len(),
                entries.len()
            ),
        );
    }
    let mut out: Vec<(Path, Val)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some((path, value)) = split_entry(e) else {
            c.error(&here, format!("expected \"path:value\", got {e:?}"));
            continue;
        };
        let kind = types.get(i).map_or("string", |s| s.trim());
        match (Path::parse(path), typed_value(kind, value)) {
            (Ok(p), _) if out.iter().any(|(x, _)| *x == p) => {
                c.error(&here, format!("{path:?} listed twice"));
            }
            (Ok(p), Ok(v)) => out.push((p, v)),
            (Err(m), _) | (_, Err(m)) => c.error(&here, m),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// JSON: validating scanner and the member tree of the objects on rule paths
// ---------------------------------------------------------------------------------------------

/// A value of the body: kept as text (a slice of the input, or new text from a rule), or an
/// object on a rule path split into members.
#[derive(Debug)]
enum Node<'a> {
    Text(Cow<'a, [u8]>),
    Obj(Vec<Member<'a>>),
}

#[derive(Debug)]
struct Member<'a> {
    /// The name as written in the input (quotes and escapes included); `None` for a name a
    /// rule wrote.
    raw: Option<&'a [u8]>,
    /// The name, escapes decoded.
    name: Cow<'a, str>,
    val: Node<'a>,
}

/// Builds the member tree on the shared scanner.
struct Parser<'a> {
    sc: Scanner<'a>,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Parser<'a> {
        Parser {
            sc: Scanner::new(s),
        }
    }

    /// The body as a tree: objects on `trie` paths split into members.
    fn document(s: &'a [u8], trie: &Trie) -> Result<Node<'a>, Invalid> {
        let mut p = Parser {
            sc: Scanner::utf8(s)?,
        };
        p.sc.ws();
        let root = p.node(trie, 0)?;
        p.sc.finish()?;
        Ok(root)
    }

    fn node(&mut self, trie: &Trie, depth: usize) -> Result<Node<'a>, Invalid> {
        if self.sc.peek() == Some(b'{') && !trie.children.is_empty() {
            return self.object(trie, depth + 1);
        }
        Ok(Node::Text(Cow::Borrowed(self.sc.skip_span(depth)?)))
    }

    fn object(&mut self, trie: &Trie, depth: usize) -> Result<Node<'a>, Invalid> {
        let mut members = Vec::new();
        if self.sc.open(depth, b'}')? {
            return Ok(Node::Obj(members));
        }
        loop {
            let (a, b, escaped) = self.sc.member_name()?;
            let raw = self.sc.span(a, b)?;
            let name = decode_name(raw, escaped);
            let val = match trie.child(&name) {
                Some(t) => self.node(t, depth)?,
                None => Node::Text(Cow::Borrowed(self.sc.skip_span(depth)?)),
            };
            members.push(Member {
                raw: Some(raw),
                name,
                val,
            });
            if !self.sc.next(b'}')? {
                return Ok(Node::Obj(members));
            }
        }
    }
}

/// A member name as text: borrowed when it has no escape. A name whose escapes do not decode
/// (a lone surrogate) keeps its raw text, which no rule names.
fn decode_name(raw: &[u8], escaped: bool) -> Cow<'_, str> {
    let inner = unquoted(raw);
    if !escaped {
        // The whole body was checked to be UTF-8.
        return match std::str::from_utf8(inner) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(String::from_utf8_lossy(inner).into_owned()),
        };
    }
    match serde_json::from_slice::<String>(raw) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Owned(String::from_utf8_lossy(inner).into_owned()),
    }
}

fn write_node(node: &Node, out: &mut Vec<u8>) {
    match node {
        Node::Text(t) => out.extend_from_slice(t),
        Node::Obj(members) => {
            out.push(b'{');
            for (i, m) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match m.raw {
                    Some(raw) => out.extend_from_slice(raw),
                    None => json_rewrite::push_json_str(out, &m.name),
                }
                out.push(b':');
                write_node(&m.val, out);
            }
            out.push(b'}');
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edits on the member tree
// ---------------------------------------------------------------------------------------------

type Members<'a> = Vec<Member<'a>>;

/// Splits nothing further: for objects expanded on demand.
static NO_PATHS: Trie = Trie {
    children: Vec::new(),
};

/// The members of `node` when it is an object. An object kept as text (one a rule moved or
/// wrote, not on the path it was parsed for) is split into members here, one level.
fn as_obj<'n, 'a>(node: &'n mut Node<'a>) -> Option<&'n mut Members<'a>> {
    if let Node::Text(Cow::Borrowed(text)) = node {
        let text: &'a [u8] = text;
        if text.first() == Some(&b'{') {
            // Valid JSON already (a slice of the checked body, or a value checked at load).
            if let Ok(obj) = Parser::new(text).object(&NO_PATHS, 0) {
                *node = obj;
            }
        }
    }
    match node {
        Node::Obj(m) => Some(m),
        Node::Text(_) => None,
    }
}

/// The members of the object at `path` (every segment an existing object; with duplicate
/// names the last one counts, as in most JSON parsers).
fn object_at<'n, 'a>(root: &'n mut Members<'a>, path: &[Box<str>]) -> Option<&'n mut Members<'a>> {
    let mut cur = root;
    for seg in path {
        let m = cur.iter_mut().rev().find(|m| m.name == **seg)?;
        cur = as_obj(&mut m.val)?;
    }
    Some(cur)
}

/// Like [`object_at`], creating missing objects; `None` when a segment exists and is not
/// an object (nothing is created then).
fn object_at_or_create<'n, 'a>(
    root: &'n mut Members<'a>,
    path: &'a [Box<str>],
) -> Option<&'n mut Members<'a>> {
    if !can_create(root, path) {
        return None;
    }
    let mut cur = root;
    for seg in path {
        let i = match cur.iter().rposition(|m| m.name == **seg) {
            Some(i) => i,
            None => {
                cur.push(Member {
                    raw: None,
                    name: Cow::Borrowed(&**seg),
                    val: Node::Obj(Vec::new()),
                });
                cur.len() - 1
            }
        };
        cur = as_obj(&mut cur.get_mut(i)?.val)?;
    }
    Some(cur)
}

/// Every existing segment of `path` is an object.
fn can_create(root: &mut Members, path: &[Box<str>]) -> bool {
    let mut cur = root;
    for seg in path {
        let Some(m) = cur.iter_mut().rev().find(|m| m.name == **seg) else {
            return true;
        };
        match as_obj(&mut m.val) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    true
}

impl BodyRules {
    /// Validates `input` and, when a rule changes it, appends the new body to `out` and
    /// returns `true`. `Err(Invalid)`: not valid UTF-8 JSON or nested deeper than
    /// [`MAX_DEPTH`]. A body that is not an object is valid but left alone.
    pub fn rewrite<'a>(
        &'a self,
        input: &'a [u8],
        ctx: &RequestCtx,
        out: &mut Vec<u8>,
    ) -> Result<bool, Invalid> {
        let mut doc = Parser::document(input, &self.trie)?;
        let Node::Obj(root) = &mut doc else {
            return Ok(false);
        };
        let mut changed = false;
        for path in &self.remove {
            let Some((last, parent)) = path.0.split_last() else {
                continue;
            };
            if let Some(obj) = object_at(root, parent) {
                let before = obj.len();
                obj.retain(|m| m.name != **last);
                changed |= obj.len() != before;
            }
        }
        for (from, to) in &self.rename {
            let (Some((fl, fp)), Some((tl, tp))) = (from.0.split_last(), to.0.split_last()) else {
                continue;
            };
            // The target must be reachable before the source is taken out.
            if !can_create(root, tp) {
                continue;
            }
            let Some(obj) = object_at(root, fp) else {
                continue;
            };
            let Some(pos) = obj.iter().rposition(|m| m.name == **fl) else {
                continue;
            };
            let taken = obj.remove(pos);
            obj.retain(|m| m.name != **fl);
            let Some(dest) = object_at_or_create(root, tp) else {
                continue;
            };
            put(dest, tl, taken.val);
            changed = true;
        }
        for (path, val) in &self.replace {
            let Some((last, parent)) = path.0.split_last() else {
                continue;
            };
            let Some(obj) = object_at(root, parent) else {
                continue;
            };
            if !obj.iter().any(|m| m.name == **last) {
                continue;
            }
            let Some(text) = val.render(ctx) else {
                continue;
            };
            for m in obj.iter_mut().filter(|m| m.name == **last) {
                m.val = Node::Text(text.clone());
            }
            changed = true;
        }
        for (path, val) in &self.add {
            let Some((last, parent)) = path.0.split_last() else {
                continue;
            };
            if object_at(root, parent).is_some_and(|o| o.iter().any(|m| m.name == **last)) {
                continue;
            }
            if !can_create(root, parent) {
                continue;
            }
            let Some(text) = val.render(ctx) else {
                continue;
            };
            if let Some(obj) = object_at_or_create(root, parent) {
                obj.push(Member {
                    raw: None,
                    name: Cow::Borrowed(&**last),
                    val: Node::Text(text),
                });
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        out.reserve(input.len() + self.extra);
        write_node(&doc, out);
        Ok(true)
    }
}

/// Sets member `name` of `obj` to `val`: the first member of that name takes it (its
/// spelling kept) and other members of that name go; appended when there is none.
fn put<'a>(obj: &mut Members<'a>, name: &'a str, val: Node<'a>) {
    match obj.iter().position(|m| m.name == name) {
        Some(i) => {
            let mut n = 0;
            obj.retain(|m| {
                let keep = m.name != name || n == i;
                n += 1;
                keep
            });
            // Members before `i` were all kept, so it is still at `i`.
            if let Some(m) = obj.get_mut(i) {
                m.val = val;
            }
        }
        None => obj.push(Member {
            raw: None,
            name: Cow::Borrowed(name),
            val,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Request phases
// ---------------------------------------------------------------------------------------------

/// The rewritten body of a request, sent to every upstream attempt.
#[derive(Debug)]
pub struct Prepared {
    body: Bytes,
    /// The attempt (`RequestCtx::attempts`) that last got the body.
    sent_in: u32,
}

/// A refusal part-way through the body: the connection is closed (the rest of the body is
/// never read, so nothing after it can be trusted as a next request).
fn refuse_and_close(session: &mut Session, reply: Reply) -> Outcome {
    session.set_keepalive(None);
    Outcome::Respond(reply)
}

fn too_large(message: &'static str) -> Reply {
    Reply::error_with(413, "payload_too_large", message)
}

impl BodyRules {
    /// `request_filter`: reads and rewrites a JSON body; the answer when it is refused.
    ///
    /// Passed on untouched (streamed by Pingora as usual, nothing read here): a request
    /// whose `Content-Type` is not `application/json` or `application/*+json`, and an
    /// empty body. Refused: a compressed body (415), a body over `max_body_bytes` or the
    /// request's body limit, or without `Content-Length` over 64 KB (413), a body that is
    /// not valid JSON (400), a body that stopped arriving (408 after `server.body_timeout`).
    pub async fn read(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let h = &session.req_header().headers;
        if !h
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| is_json(v.as_bytes()))
        {
            return Outcome::Continue;
        }
        let compressed = h
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
        // Plain digits (checked in early_request_filter); ignored when Transfer-Encoding
        // frames the body.
        let declared: Option<u64> = if h.contains_key(header::TRANSFER_ENCODING) {
            None
        } else {
            h.get(header::CONTENT_LENGTH)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .and_then(|v| v.trim().parse().ok())
        };
        let expect_continue = h
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if session.is_body_empty() {
            return Outcome::Continue;
        }
        // Refused before reading: like every other refusal made from the head, the unread
        // body is Pingora's to drain or to close on (a client that already sent a small body
        // still reads the answer instead of a reset).
        if compressed {
            record(ctx, BodyResult::Compressed);
            return Outcome::Respond(Reply::error_with(
                415,
                "unsupported_media_type",
                "A compressed JSON request body cannot be transformed; send it without Content-Encoding",
            ));
        }
        let cap = self.max_body as u64;
        match declared {
            Some(n) if n > ctx.body_limit => return Outcome::Respond(Reply::error(413)),
            Some(n) if n > cap => {
                record(ctx, BodyResult::TooLarge);
                return Outcome::Respond(too_large(
                    "The JSON request body is over the transformer's max_body_bytes",
                ));
            }
            _ => {}
        }
        // From here on at most the last REPLAY_LIMIT bytes go into Pingora's retry buffer:
        // its content is what Pingora hands `request_body_filter` on every attempt.
        let mut replaying = declared.is_none_or(|n| n <= REPLAY_LIMIT as u64);
        if replaying {
            session.enable_retry_buffering();
        }
        if expect_continue && !session.is_http2() {
            // The body is wanted now, not after the upstream answers.
            if let Err(e) = session.write_continue_response().await {
                return read_failed(session, &e);
            }
        }
        let capacity = declared.map_or(8 * 1024, |n| n as usize).min(self.max_body);
        let mut chunks = Chunks::Empty;
        let mut total: u64 = 0;
        loop {
            let chunk = match session.read_request_body().await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return read_failed(session, &e),
            };
            total += chunk.len() as u64;
            if total > ctx.body_limit {
                return refuse_and_close(session, Reply::error(413));
            }
            if total > cap {
                record(ctx, BodyResult::TooLarge);
                return refuse_and_close(
                    session,
                    too_large("The JSON request body is over the transformer's max_body_bytes"),
                );
            }
            if declared.is_none() && total > REPLAY_LIMIT as u64 {
                record(ctx, BodyResult::TooLarge);
                return refuse_and_close(
                    session,
                    too_large("A JSON request body without Content-Length can be transformed up to 64kb; send Content-Length"),
                );
            }
            chunks.push(chunk, capacity);
            if !replaying
                && declared.is_some_and(|n| n.saturating_sub(total) <= REPLAY_LIMIT as u64)
            {
                session.enable_retry_buffering();
                replaying = true;
            }
        }
        ctx.body_bytes = total;
        if total == 0 {
            // An empty chunked body: Pingora passes it on as it came.
            return Outcome::Continue;
        }
        if session.get_retry_buffer().is_none() {
            // Nothing for Pingora to hand over (cannot happen with its capped reads; never
            // send a head whose body would not follow).
            record(ctx, BodyResult::TooLarge);
            return refuse_and_close(
                session,
                too_large("The JSON request body could not be buffered for transformation"),
            );
        }
        let input = chunks.into_bytes();
        let mut out = Vec::new();
        let body = match self.rewrite(&input, ctx, &mut out) {
            Ok(true) => {
                record(ctx, BodyResult::Rewritten);
                Bytes::from(out)
            }
            Ok(false) => {
                record(ctx, BodyResult::Unchanged);
                input
            }
            Err(Invalid) => {
                record(ctx, BodyResult::InvalidJson);
                return Outcome::Respond(Reply::error_with(
                    400,
                    "bad_request",
                    "The request body is not valid JSON",
                ));
            }
        };
        ctx.plugins.request_transformer = Some(Prepared { body, sent_in: 0 });
        Outcome::Continue
    }
}

/// The body could not be read: 408 when it stopped arriving, else 400 (usually the client
/// went away and the answer goes nowhere).
fn read_failed(session: &mut Session, e: &Error) -> Outcome {
    let status = if matches!(e.etype(), ErrorType::ReadTimedout) {
        408
    } else {
        400
    };
    refuse_and_close(session, Reply::error(status))
}

/// `upstream_request_filter`: the head of a request whose body was read and rewritten.
pub fn upstream_request(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(p) = &ctx.plugins.request_transformer else {
        return Ok(());
    };
    req.remove_header(&header::TRANSFER_ENCODING);
    // The body is here already: nothing to wait for.
    req.remove_header(&header::EXPECT);
    req.insert_header(header::CONTENT_LENGTH, p.body.len())
}

/// `request_body_filter`: replaces what Pingora replays with the rewritten body, once per
/// upstream attempt. `false` when this request's body was not read by the transformer.
pub fn replay(body: &mut Option<Bytes>, ctx: &mut RequestCtx) -> bool {
    let attempt = ctx.attempts;
    let Some(p) = ctx.plugins.request_transformer.as_mut() else {
        return false;
    };
    if p.sent_in == attempt {
        *body = None;
    } else {
        p.sent_in = attempt;
        *body = Some(p.body.clone());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::ctx::Runtime;
    use crate::plugins::request_transformer::RequestTransformer;
    use crate::upstream::StateRegistry;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn load(plugin_config: &str) -> Result<Arc<Runtime>, String> {
        let y = format!(
            "server: {{ listen: [\"127.0.0.1:18080\"] }}\nconsumers:\n  - {{ username: alice }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: request-transformer\n        config: {plugin_config}\n"
        );
        config::load_str(
            &y,
            std::path::Path::new("."),
            &StateRegistry::default(),
            &Default::default(),
            1,
        )
        .map(Arc::new)
        .map_err(|e| format!("{e}"))
    }

    fn rules(rt: &Runtime) -> &BodyRules {
        let t = rt.routes[0].plugins.find::<RequestTransformer>();
        t.and_then(RequestTransformer::body).expect("body rules")
    }

    fn ctx(rt: &Arc<Runtime>) -> RequestCtx {
        let mut c = RequestCtx::new(rt.clone());
        c.route = Some(0);
        c.request_id = "rid-1".into();
        c.client_ip = Some("203.0.113.7".parse().unwrap());
        c
    }

    /// (output text, changed); unchanged gives the input back.
    fn run(rt: &Arc<Runtime>, input: &str) -> Result<(String, bool), Invalid> {
        let mut out = Vec::new();
        let changed = rules(rt).rewrite(input.as_bytes(), &ctx(rt), &mut out)?;
        let text = if changed {
            String::from_utf8(out).unwrap()
        } else {
            input.to_string()
        };
        Ok((text, changed))
    }

    fn rw(rt: &Arc<Runtime>, input: &str) -> Value {
        let (out, _) = run(rt, input).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    #[test]
    fn seed_use_case_adds_meta_with_variables() {
        let rt = load(
            r#"{ add: { json: ["_meta.requestedAt:$(now)", "_meta.clientIp:$(client_ip)", "_meta.rid:$(request_id)", "_meta.who:$(consumer)"] } }"#,
        )
        .unwrap();
        let v = rw(&rt, r#"{"order": {"id": 7}, "qty": 2}"#);
        assert_eq!(v["order"], json!({"id": 7}));
        assert_eq!(v["_meta"]["clientIp"], "203.0.113.7");
        assert_eq!(v["_meta"]["rid"], "rid-1");
        // Anonymous request: the $(consumer) entry is skipped, not sent empty.
        assert!(v["_meta"].get("who").is_none(), "{v}");
        let at = v["_meta"]["requestedAt"].as_str().unwrap();
        assert_eq!(at.len(), 24, "{at}");
        assert!(at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
        // Existing _meta object: members added into it, nothing replaced.
        let v = rw(&rt, r#"{"_meta": {"clientIp": "keep", "x": 1}}"#);
        assert_eq!(v["_meta"]["clientIp"], "keep");
        assert_eq!(v["_meta"]["x"], 1);
        assert_eq!(v["_meta"]["rid"], "rid-1");
        // _meta exists but is not an object: nothing can be added under it.
        let (out, changed) = run(&rt, r#"{"_meta": "str"}"#).unwrap();
        assert!(!changed, "{out}");
    }

    #[test]
    fn remove_rename_replace_add_in_kong_order() {
        let rt = load(
            r#"{ remove: { json: [password, user.ssn] }, rename: { json: ["user.name:user.fullName", "old:meta.new"] }, replace: { json: ["source:gateway", "user.fullName:REPLACED", "missing:x"] }, add: { json: ["source:never", "added:yes"] } }"#,
        )
        .unwrap();
        let input = r#"{"password":"p","user":{"name":"ada","ssn":"1","age":36},"old":[1,2],"source":"app"}"#;
        let v = rw(&rt, input);
        assert_eq!(
            v,
            json!({"user": {"fullName": "REPLACED", "age": 36}, "source": "gateway", "meta": {"new": [1, 2]}, "added": "yes"})
        );
        // Member order is kept and untouched values are copied byte for byte.
        let (out, _) = run(
            &rt,
            r#"{"z": 1.50, "user": {"age": 1e400, "name": "x"}, "a": [ 1 , 2 ]}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"z":1.50,"user":{"age":1e400,"fullName":"REPLACED"},"a":[ 1 , 2 ],"source":"never","added":"yes"}"#
        );
    }

    #[test]
    fn removal_matches_escaped_names_and_every_duplicate() {
        let rt = load(r#"{ remove: { json: [password] } }"#).unwrap();
        let (out, changed) = run(
            &rt,
            r#"{"pass\u0077ord":1,"a":2,"password":3,"password":4}"#,
        )
        .unwrap();
        assert!(changed);
        assert_eq!(out, r#"{"a":2}"#);
        // Nested members and arrays are not paths: only the top-level name.
        let (out, changed) = run(&rt, r#"{"u":{"password":1},"l":[{"password":2}]}"#).unwrap();
        assert!(!changed, "{out}");
    }

    #[test]
    fn rename_collisions_and_missing_sources() {
        let rt = load(r#"{ rename: { json: ["a:b", "x.y:z"] } }"#).unwrap();
        // The renamed member wins and takes the target's place.
        let (out, _) = run(&rt, r#"{"b":0,"c":1,"a":2}"#).unwrap();
        assert_eq!(out, r#"{"b":2,"c":1}"#);
        let (out, _) = run(&rt, r#"{"x":{"y":5,"k":1}}"#).unwrap();
        assert_eq!(out, r#"{"x":{"k":1},"z":5}"#);
        let (_, changed) = run(&rt, r#"{"q":1,"x":[1]}"#).unwrap();
        assert!(!changed);
        // Target under a non-object: the source stays.
        let rt = load(r#"{ rename: { json: ["a:b.c"] } }"#).unwrap();
        let (_, changed) = run(&rt, r#"{"a":1,"b":"s"}"#).unwrap();
        assert!(!changed);
        let (out, _) = run(&rt, r#"{"a":1,"b":{"d":2}}"#).unwrap();
        assert_eq!(out, r#"{"b":{"d":2,"c":1}}"#);
    }

    #[test]
    fn rules_reach_into_moved_and_written_objects() {
        // `a` is a leaf of the parse (only renamed), yet `add a.b.c` must reach into the
        // object moved there; `b` is written by a rule and then added into.
        let rt = load(
            r#"{ rename: { json: ["c:a"] }, add: { json: ["b:{\"k\":1}", "a.b.c:v", "b.x:y"], json_types: [json] } }"#,
        )
        .unwrap();
        let (out, _) = run(&rt, r#"{"c": {"keep": [1, 2]}}"#).unwrap();
        assert_eq!(
            out,
            r#"{"a":{"keep":[1, 2],"b":{"c":"v"}},"b":{"k":1,"x":"y"}}"#
        );
    }

    #[test]
    fn typed_values_and_escaping() {
        let rt = load(
            r#"{ add: { json: ["n:42", "b:true", "nil:null", "obj:{\"k\":[1]}", "s:say \"hi\"\nx", "v1\\.2:dot"], json_types: [number, boolean, json, json, string] } }"#,
        )
        .unwrap();
        let v = rw(&rt, "{}");
        assert_eq!(
            v,
            json!({"n": 42, "b": true, "nil": null, "obj": {"k": [1]}, "s": "say \"hi\"\nx", "v1.2": "dot"})
        );
    }

    #[test]
    fn non_objects_pass_and_invalid_json_is_refused() {
        let rt = load(r#"{ add: { json: ["a:1"] } }"#).unwrap();
        for ok in ["[1,2]", "\"s\"", "3", " null "] {
            assert_eq!(run(&rt, ok).unwrap(), (ok.to_string(), false), "{ok}");
        }
        assert_eq!(run(&rt, " {} ").unwrap().0, r#"{"a":"1"}"#);
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":\"\t\"}",
            "{\"a\":[1,]}",
            "{\"x\":{\"y\":tru}}",
            "NaN",
        ] {
            assert_eq!(run(&rt, bad), Err(Invalid), "{bad:?}");
        }
        let mut out = Vec::new();
        let r = rules(&rt).rewrite(b"{\"a\":\"\xff\"}", &ctx(&rt), &mut out);
        assert_eq!(r, Err(Invalid), "bad UTF-8");
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(run(&rt, &deep), Err(Invalid));
        let ok = format!(
            "{{\"x\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(run(&rt, &ok).is_ok());
    }

    #[test]
    fn consumer_variable_when_authenticated() {
        let rt = load(r#"{ replace: { json: ["by:$(consumer)"] } }"#).unwrap();
        let mut c = ctx(&rt);
        c.consumer = Some(0);
        let mut out = Vec::new();
        assert!(rules(&rt).rewrite(br#"{"by":"me"}"#, &c, &mut out).unwrap());
        assert_eq!(out, br#"{"by":"alice"}"#);
    }

    #[test]
    fn docs_example() {
        // docs/config.md, "JSON request bodies".
        let rt = load(
            r#"{ remove: { json: [password, card.cvc] }, rename: { json: ["customer.mail:customer.email"] }, replace: { json: ["channel:api"] }, add: { json: ["_meta.requestedAt:$(now)", "_meta.clientIp:$(client_ip)", "_meta.requestId:$(request_id)", "_meta.schema:2"], json_types: [string, string, string, number] }, max_body_bytes: 256kb }"#,
        )
        .unwrap();
        let mut c = ctx(&rt);
        c.request_id = "06aac6f3-29ab-4398-89f0-7f55c48fa02c".into();
        let mut out = Vec::new();
        let input = br#"{"sku":"KB-001","password":"s3cret","customer":{"mail":"ada@example.com"},"channel":"web"}"#;
        assert!(rules(&rt).rewrite(input, &c, &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        let at = text.find("\"requestedAt\":\"").unwrap() + 15;
        let shown = format!(
            "{}2026-05-01T09:30:00.123Z{}",
            &text[..at],
            &text[at + 24..]
        );
        assert_eq!(
            shown,
            r#"{"sku":"KB-001","customer":{"email":"ada@example.com"},"channel":"api","_meta":{"requestedAt":"2026-05-01T09:30:00.123Z","clientIp":"203.0.113.7","requestId":"06aac6f3-29ab-4398-89f0-7f55c48fa02c","schema":2}}"#
        );
        assert_eq!(text.len(), 209);
    }

    #[test]
    fn no_json_rules_no_body_rules() {
        let rt = load(r#"{ add: { headers: ["X-A:1"] } }"#).unwrap();
        let t = rt.routes[0].plugins.find::<RequestTransformer>();
        assert!(t.expect("request-transformer").body().is_none());
    }

    #[test]
    fn config_errors_name_the_entry() {
        let err = load(
            r#"{ add: { json: ["a.b:1", "nocolon", "a.b:2", "c:$(latency)", "d:x"], json_types: [number, string, string, string, float] }, remove: { json: ["a..b"], json_types: [string] }, rename: { json: ["a:a.b", "x:y", "z:y"] }, max_body_bytes: 0 }"#,
        )
        .unwrap_err();
        for want in [
            "config.add.json[1]: expected \"path:value\"",
            "config.add.json[2]: \"a.b\" listed twice",
            "config.add.json[3]: \"$(latency)\" is only known in response-transformer",
            "config.add.json[4]: unknown json type \"float\"",
            "config.remove.json[0]: empty member name",
            "config.remove.json_types: json_types only applies to add and replace",
            "config.rename.json[0]: cannot rename \"a\" into itself",
            "config.rename.json[2]: two renames into \"y\"",
            "config.max_body_bytes: must be between",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }

    #[test]
    fn paths_split_on_unescaped_dots() {
        assert_eq!(
            Path::parse("a.b.c").unwrap().0,
            vec!["a".into(), "b".into(), "c".into()] as Vec<Box<str>>
        );
        assert_eq!(
            Path::parse(r"v1\.2.x\:y\\z").unwrap().0,
            vec!["v1.2".into(), r"x:y\z".into()] as Vec<Box<str>>
        );
        for bad in ["", "a..b", ".a", "a.", r"a\q"] {
            assert!(Path::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(split_entry(r"a\:b:c:d"), Some((r"a\:b", "c:d")));
        assert_eq!(split_entry("k: v "), Some(("k", "v")));
        assert_eq!(split_entry("nocolon"), None);
    }

    #[test]
    fn typed_values() {
        let json = |k: &str, v: &str| match typed_value(k, v).unwrap() {
            Val::Json(b) => String::from_utf8(b.into()).unwrap(),
            Val::Str(_) => panic!("dynamic"),
        };
        assert_eq!(json("string", "a\"b"), r#""a\"b""#);
        assert_eq!(json("number", "-1.5e3"), "-1.5e3");
        assert_eq!(json("boolean", "true"), "true");
        assert_eq!(json("json", "null"), "null");
        assert_eq!(json("json", r#"{"a":[1]}"#), r#"{"a":[1]}"#);
        assert!(matches!(
            typed_value("string", "ip=$(client_ip)"),
            Ok(Val::Str(_))
        ));
        for (k, v) in [
            ("number", "1x"),
            ("number", "true"),
            ("number", "$(now)"),
            ("boolean", "yes"),
            ("json", "{"),
            ("float", "1"),
            ("string", "$(nope)"),
            ("string", "$(latency)"),
        ] {
            assert!(typed_value(k, v).is_err(), "{k} {v}");
        }
    }
}
