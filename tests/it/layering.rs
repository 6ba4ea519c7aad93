//! The layering of `src/` (docs/architecture.md, "Layers"): every module imports only from
//! its own layer or the layers below. This test reads every `src/**/*.rs`, collects the
//! `crate::…` paths it names (in `use` declarations, `use` groups and inline paths; `super::`,
//! `self::` and child-module paths resolved; `gatehouse::` in `main.rs`), maps each module to
//! its layer with [`LAYERS`] and fails on any path that points up.
//!
//! More rules:
//! - no import cycle between the modules of one layer (a module and its submodules aside);
//! - one plugin's module (`crate::plugins::jwt`, …) is named only inside `src/plugins/`;
//!   everywhere else the plugin interface (`crate::plugins`) is;
//! - the one loop Pingora's single per-request context forces is allowed: `ctx` names the
//!   plugin interface's state types (`crate::plugins`), which is above it.
//!
//! Comments, doc comments and string literals are skipped, and so is test-only code
//! (`#[cfg(test)]` items and the files of `#[cfg(test)] mod x;`): a unit test may build a
//! whole config to exercise its module.
//!
//! A module missing from [`LAYERS`] fails the test: a new module gets its place in the
//! table (and in docs/architecture.md) when it is added.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, bottom first: `(name, modules)`. A module path covers its submodules unless a
/// longer path is listed; `""` is the crate root (`lib.rs` and what it re-exports).
/// Reproduced in docs/architecture.md ("Layers"): change both together.
const LAYERS: &[(&str, &[&str])] = &[
    // L0: helpers every layer may use, and the diagnostics every config step reports into.
    (
        "utilities",
        &[
            "util",
            "config::diag",
            "config::error",
            "config::position",
            "owned_headers",
            "sdnotify",
            "signals",
        ],
    ),
    // L1: the serde mirror of the YAML file and its value types.
    (
        "raw config",
        &["config::raw", "config::units", "config::env"],
    ),
    // L2: compiled settings, consumers and policies (plain data).
    ("model", &["model"]),
    // L3: metrics, access log, certificate expiry, reload summaries: a leaf that is handed
    // plain values (the `logging` module of L5 reads the request context for it).
    ("observe", &["observe"]),
    // L4: features below the per-request context.
    (
        "features",
        &[
            "upstream", "limits", "cache", "router", "tls", "acme", "flood", "process",
        ],
    ),
    // L5: the per-request context, the snapshot it runs on and the helpers working on it.
    (
        "request",
        &[
            "ctx",
            "errors",
            "runtime",
            "request",
            "logging",
            "resilience",
            "https_redirect",
            "probe",
            "forward",
            "acme::challenge",
            "grpc",
            "websocket",
            "demo",
        ],
    ),
    // L6: the plugin interface and every plugin.
    ("plugins", &["plugins"]),
    // L7: YAML -> snapshot.
    ("config compile", &["config", "config::compile"]),
    // L8: Pingora's `ProxyHttp` hooks.
    ("gateway", &["gateway"]),
    // L9: the live snapshot, load and reload.
    ("app", &["app"]),
    // L10: services, admin API, the accept path, binary upgrade, the binary.
    (
        "server",
        &[
            "server",
            "admin",
            "edge",
            "upgrade",
            "acme::service",
            "explain",
            "import",
            "main",
            "",
        ],
    ),
];

/// Modules outside `src/plugins/` may name: the plugin interface.
const PLUGIN_INTERFACE: &str = "plugins";

/// The one allowed loop: `(from module, to module)`, exactly these modules.
const ALLOWED_LOOP: &[(&str, &str)] = &[("ctx", "plugins")];

/// Known violations, each `(file, module it names)`, with the reason; an entry that no longer
/// matches anything fails the test, so the list only shrinks. Empty: a new upward import is
/// fixed in the code (a hook of the plugin interface, a type moved down, a value handed
/// down), not listed here.
const ALLOWLIST: &[(&str, &str)] = &[];

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn src_imports_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &src, &mut files);
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let found = check(&files, ALLOWLIST);
    assert!(
        found.is_empty(),
        "{} layering problem(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((format!("src/{rel}"), std::fs::read_to_string(&p).unwrap()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

/// Every problem in `files` (`(path from the crate root, source)`), as messages.
fn check(files: &[(String, String)], allowlist: &[(&str, &str)]) -> Vec<String> {
    let mut parsed: Vec<Parsed> = files.iter().map(|(p, s)| parse(p, s)).collect();
    parsed.sort_by(|a, b| a.file.cmp(&b.file));
    // Every module: file modules, inline `mod x { }` modules.
    let mut modules: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for f in &parsed {
        modules.insert(f.module.clone());
        modules.extend(f.inline_modules.iter().cloned());
        test_only.extend(f.test_children.iter().cloned());
    }
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    // Imports within one layer, between rows of LAYERS: `(from row, to row)` -> an example.
    let mut sideways: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for f in &parsed {
        if test_only.iter().any(|t| f.module.starts_with(t)) {
            continue;
        }
        let name = f.module.join("::");
        let Some((from_layer, from_row)) = row_of(&f.module) else {
            problems.push(format!(
                "{}: module `{}` has no layer in LAYERS",
                f.file,
                if name.is_empty() { "crate" } else { &name }
            ));
            continue;
        };
        let mut seen = BTreeSet::new();
        for (line, path) in &f.paths {
            let target = resolve_module(&modules, path);
            let target_name = target.join("::");
            let shown = format!("crate::{}", path.join("::"));
            let Some((to_layer, to_row)) = row_of(&target) else {
                continue; // reported for its own file
            };
            let allowed_loop = ALLOWED_LOOP
                .iter()
                .any(|&(a, b)| a == name && b == target_name);
            let why = if to_layer > from_layer && !allowed_loop {
                format!(
                    "layer L{from_layer} {} → L{to_layer} {}",
                    LAYERS[from_layer].0, LAYERS[to_layer].0
                )
            } else if target.len() > 1
                && target[0] == PLUGIN_INTERFACE
                && f.module.first().map(String::as_str) != Some(PLUGIN_INTERFACE)
            {
                format!(
                    "a plugin's own module: outside src/plugins/ only crate::{PLUGIN_INTERFACE} is named"
                )
            } else {
                if to_layer == from_layer && from_row != to_row && !nested(from_row, to_row) {
                    sideways
                        .entry((from_row, to_row))
                        .or_insert_with(|| format!("{}:{line} imports {shown}", f.file));
                }
                continue;
            };
            if let Some(a) = allowlist
                .iter()
                .find(|&&(file, m)| file == f.file && m == target_name)
            {
                used.insert(*a);
                continue;
            }
            // One message per (file, path): a name used on many lines is one problem.
            if seen.insert(shown.clone()) {
                problems.push(format!("{}:{line} imports {shown} ({why})", f.file));
            }
        }
    }
    problems.extend(cycles(&sideways));
    for a in allowlist {
        if !used.contains(a) {
            problems.push(format!(
                "allowlist entry {a:?} matches nothing any more: remove it"
            ));
        }
    }
    problems
}

/// One row is the other's parent module (`config` and `config::compile`): a module and its
/// submodules may name each other.
fn nested(a: &str, b: &str) -> bool {
    let under = |outer: &str, inner: &str| {
        outer.is_empty()
            || inner
                .strip_prefix(outer)
                .is_some_and(|r| r.starts_with("::"))
    };
    under(a, b) || under(b, a)
}

/// Import cycles among the rows of one layer (an upward edge is reported by itself, so a
/// cycle that is left lies within a layer): one message per cycle, with the import behind
/// each step.
fn cycles(edges: &BTreeMap<(&str, &str), String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut reported: BTreeSet<&str> = BTreeSet::new();
    let nodes: BTreeSet<&str> = edges.keys().map(|&(a, _)| a).collect();
    for &start in &nodes {
        if reported.contains(start) {
            continue;
        }
        // Shortest way from `start` back to itself (breadth first).
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut found = false;
        while let Some(n) = queue.pop_front() {
            for (&(a, b), _) in edges.range((n, "")..) {
                if a != n {
                    break;
                }
                if b == start {
                    prev.insert(start, n);
                    found = true;
                    break;
                }
                if !prev.contains_key(b) {
                    prev.insert(b, n);
                    queue.push_back(b);
                }
            }
            if found {
                break;
            }
        }
        if !found {
            continue;
        }
        let mut path = vec![start];
        let mut n = prev[start];
        while n != start {
            path.push(n);
            n = prev[n];
        }
        path.push(start);
        path.reverse();
        let steps: Vec<&str> = path
            .windows(2)
            .map(|w| edges[&(w[0], w[1])].as_str())
            .collect();
        reported.extend(path.iter().copied());
        out.push(format!(
            "import cycle {}: {}",
            path.join(" → "),
            steps.join("; ")
        ));
    }
    out
}

/// `(layer index, row)` of `module`: the longest path of LAYERS covering it.
fn row_of(module: &[String]) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (i, (_, mods)) in LAYERS.iter().enumerate() {
        for &m in mods.iter() {
            let segs: Vec<&str> = if m.is_empty() {
                Vec::new()
            } else {
                m.split("::").collect()
            };
            let covers = segs.len() <= module.len()
                && segs.iter().zip(module).all(|(a, b)| *a == b.as_str())
                // The crate root covers only itself (a module of its own needs a row).
                && (!segs.is_empty() || module.is_empty());
            if covers && best.is_none_or(|(len, _, _)| segs.len() > len) {
                best = Some((segs.len(), i, m));
            }
        }
    }
    best.map(|(_, i, m)| (i, m))
}

/// The module a path (below the crate root) points into: its longest prefix that is a
/// module; the crate root for a re-export of `lib.rs`.
fn resolve_module(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// What one file says about imports.
#[derive(Debug, Default)]
struct Parsed {
    file: String,
    /// The file's module path (`["config", "raw"]`; `[]` for lib.rs).
    module: Vec<String>,
    /// `(line, path below the crate root)` of every path it names (test code left out).
    paths: Vec<(usize, Vec<String>)>,
    /// Inline `mod x { }` modules (not test-only).
    inline_modules: Vec<Vec<String>>,
    /// Child modules declared `#[cfg(test)] mod x;` (their files are test-only).
    test_children: Vec<Vec<String>>,
}

fn module_of(file: &str) -> Vec<String> {
    let rel = file.trim_start_matches("src/").trim_end_matches(".rs");
    let mut segs: Vec<String> = rel.split('/').map(str::to_string).collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    if segs == ["lib"] {
        segs.clear();
    }
    segs
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Tokens with their lines; comments, strings and character literals dropped.
fn lex(src: &str) -> Vec<(usize, Tok)> {
    let b = src.as_bytes();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            _ if c.is_ascii_whitespace() => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            b'"' => i = skip_string(b, i + 1, &mut line),
            b'\'' => {
                // A character literal ('a', '\n', '\u{..}') or a lifetime / label ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    // Past the quote, the backslash and the escaped character.
                    i += 3;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if b.get(i + 1 + ch_len) == Some(&b'\'') {
                        i += 2 + ch_len;
                    } else {
                        i += 1;
                    }
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push((line, Tok::Path));
                i += 2;
            }
            _ if ident_char(c) => {
                let start = i;
                while i < b.len() && ident_char(b[i]) {
                    i += 1;
                }
                let word = &src[start..i];
                // Raw strings and byte / C strings: r"..", r#".."#, b"..", br"..", c"..".
                let prefix = matches!(word, "r" | "b" | "br" | "c" | "cr");
                if prefix && matches!(b.get(i), Some(b'"') | Some(b'#')) {
                    let raw = word.contains('r');
                    let mut hashes = 0;
                    while raw && b.get(i + hashes) == Some(&b'#') {
                        hashes += 1;
                    }
                    if b.get(i + hashes) == Some(&b'"') {
                        i += hashes + 1;
                        if raw {
                            let close: Vec<u8> = std::iter::once(b'"')
                                .chain(std::iter::repeat_n(b'#', hashes))
                                .collect();
                            while i < b.len() && !b[i..].starts_with(&close) {
                                line += usize::from(b[i] == b'\n');
                                i += 1;
                            }
                            i += close.len();
                        } else {
                            i = skip_string(b, i, &mut line);
                        }
                        continue;
                    }
                }
                if word == "b" && b.get(i) == Some(&b'\'') {
                    // A byte literal: the quote is handled as a character literal next.
                    continue;
                }
                out.push((line, Tok::Ident(word.to_string())));
            }
            _ => {
                out.push((line, Tok::Punct(c as char)));
                i += 1;
            }
        }
    }
    out
}

/// Past the closing quote of a string whose body starts at `i`.
fn skip_string(b: &[u8], mut i: usize, line: &mut usize) -> usize {
    while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
            i += 1;
        }
        if b.get(i) == Some(&b'\n') {
            *line += 1;
        }
        i += 1;
    }
    i + 1
}

fn parse(file: &str, src: &str) -> Parsed {
    let toks = lex(src);
    let module = module_of(file);
    let is_bin = file == "src/main.rs";
    let mut p = Parsed {
        file: file.to_string(),
        module: module.clone(),
        ..Default::default()
    };
    // Child modules declared in this file (`mod x;` / `mod x { }`): relative paths to them.
    let children: BTreeSet<String> = toks
        .windows(2)
        .filter_map(|w| match w {
            [(_, Tok::Ident(m)), (_, Tok::Ident(name))] if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect();
    // Inline modules open at brace depths: `(name, depth inside it)`.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let ident = |i: usize| match toks.get(i) {
        Some((_, Tok::Ident(s))) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize, c: char| matches!(toks.get(i), Some((_, Tok::Punct(p))) if *p == c);
    let path_at = |i: usize| matches!(toks.get(i), Some((_, Tok::Path)));
    while i < toks.len() {
        let current: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        // `#[cfg(test)]`: skip the item it guards.
        if punct(i, '#')
            && punct(i + 1, '[')
            && ident(i + 2) == Some("cfg")
            && punct(i + 3, '(')
            && ident(i + 4) == Some("test")
            && punct(i + 5, ')')
            && punct(i + 6, ']')
        {
            let mut j = i + 7;
            // Further attributes.
            while punct(j, '#') && punct(j + 1, '[') {
                j = skip_group(&toks, j + 1);
            }
            // `mod x;` declares a test-only file.
            let mut k = j;
            if ident(k) == Some("pub") {
                k += 1;
                if punct(k, '(') {
                    k = skip_group(&toks, k);
                }
            }
            if ident(k) == Some("mod") && punct(k + 2, ';') {
                if let Some(n) = ident(k + 1) {
                    let mut m = current.clone();
                    m.push(n.to_string());
                    p.test_children.push(m);
                }
            }
            i = skip_item(&toks, j);
            continue;
        }
        match &toks[i].1 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w) if w == "mod" && punct(i + 2, '{') => {
                if let Some(n) = ident(i + 1) {
                    inline.push((n.to_string(), depth + 1));
                    let mut m = current.clone();
                    m.push(n.to_string());
                    p.inline_modules.push(m);
                }
                depth += 1;
                i += 3;
                continue;
            }
            Tok::Ident(w) if w == "use" && !punct(i + 1, '<') => {
                let line = toks[i].0;
                let mut j = i + 1;
                let mut trees = Vec::new();
                use_tree(&toks, &mut j, Vec::new(), &mut trees);
                for t in trees {
                    if let Some(abs) = absolute(&t, &current, &children, is_bin, true) {
                        p.paths.push((line, abs));
                    }
                }
                i = j;
                continue;
            }
            Tok::Ident(w)
                if (w == "crate" || w == "super" || (is_bin && w == "gatehouse"))
                    && path_at(i + 1)
                    && !path_at(i.wrapping_sub(1)) =>
            {
                let line = toks[i].0;
                let mut segs = vec![w.clone()];
                let mut j = i + 1;
                while path_at(j) {
                    match ident(j + 1) {
                        Some(s) => segs.push(s.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                if let Some(abs) = absolute(&segs, &current, &children, is_bin, false) {
                    p.paths.push((line, abs));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    p
}

/// Index past the bracketed group opening at `i` (`(`, `[` or `{`).
fn skip_group(toks: &[(usize, Tok)], i: usize) -> usize {
    let mut depth = 0i32;
    let mut j = i;
    while j < toks.len() {
        match toks[j].1 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// Index past the item starting at `i`: its `;` or its `{ }` body.
fn skip_item(toks: &[(usize, Tok)], i: usize) -> usize {
    let mut j = i;
    while j < toks.len() {
        match toks[j].1 {
            Tok::Punct(';') => return j + 1,
            Tok::Punct('{') => return skip_group(toks, j),
            Tok::Punct('(' | '[') => j = skip_group(toks, j),
            _ => j += 1,
        }
    }
    j
}

/// Parses a use tree at `*j` (after `use`, or inside a group), appending its leaf paths.
fn use_tree(toks: &[(usize, Tok)], j: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut segs = prefix;
    if matches!(toks.get(*j), Some((_, Tok::Path))) {
        // `use ::extern_crate::…`
        segs.push(String::new());
        *j += 1;
    }
    loop {
        match toks.get(*j).map(|t| &t.1) {
            Some(Tok::Ident(s)) if s != "as" => {
                segs.push(s.clone());
                *j += 1;
                if matches!(toks.get(*j), Some((_, Tok::Path))) {
                    *j += 1;
                    continue;
                }
                // `as alias`
                if matches!(toks.get(*j), Some((_, Tok::Ident(a))) if a == "as") {
                    *j += 2;
                }
                out.push(segs);
                break;
            }
            Some(Tok::Punct('*')) => {
                *j += 1;
                out.push(segs);
                break;
            }
            Some(Tok::Punct('{')) => {
                *j += 1;
                loop {
                    match toks.get(*j).map(|t| &t.1) {
                        Some(Tok::Punct('}')) => {
                            *j += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => *j += 1,
                        None => break,
                        _ => use_tree(toks, j, segs.clone(), out),
                    }
                }
                break;
            }
            _ => break,
        }
    }
    // The closing `;` of a top-level tree.
    if matches!(toks.get(*j), Some((_, Tok::Punct(';')))) {
        *j += 1;
    }
}

/// A path as named in module `current`, below the crate root; `None` outside the crate.
/// `in_use`: a `use` path, where a leading child-module name is relative too.
fn absolute(
    segs: &[String],
    current: &[String],
    children: &BTreeSet<String>,
    is_bin: bool,
    in_use: bool,
) -> Option<Vec<String>> {
    let mut segs: Vec<String> = segs.to_vec();
    // `{self, …}`: the module itself.
    if segs.len() > 1 && segs.last().is_some_and(|s| s == "self") {
        segs.pop();
    }
    let first = segs.first()?.as_str();
    let mut base: Vec<String> = match first {
        "crate" if !is_bin => Vec::new(),
        "gatehouse" if is_bin => Vec::new(),
        "self" => current.to_vec(),
        "super" => current.to_vec(),
        _ if in_use && children.contains(first) => {
            return Some(current.iter().cloned().chain(segs).collect())
        }
        _ => return None,
    };
    let mut rest = &segs[1..];
    if first == "super" {
        base.pop();
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

// ---------------------------------------------------------------------------------------------
// The checker checked
// ---------------------------------------------------------------------------------------------

fn run(files: &[(&str, &str)]) -> Vec<String> {
    let owned: Vec<(String, String)> = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    check(&owned, &[])
}

/// A minimal crate: the modules the examples name.
fn with_base<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("src/lib.rs", "pub mod router; pub mod gateway; pub mod ctx; pub mod plugins; pub mod config; pub use ctx::RequestCtx;"),
        ("src/gateway.rs", "pub struct Gateway;"),
        ("src/ctx.rs", "pub struct RequestCtx;"),
        ("src/plugins/mod.rs", "pub mod jwt; pub struct Chain;"),
        ("src/plugins/jwt.rs", "pub struct TokenInfo;"),
        ("src/config/mod.rs", "pub mod raw; pub mod compile;"),
        ("src/config/compile.rs", "pub struct Compiler;"),
    ];
    for (p, s) in extra {
        v.retain(|(q, _)| q != p);
        v.push((p, s));
    }
    v
}

#[test]
fn checker_flags_an_upward_use() {
    let found = run(&with_base(&[(
        "src/router.rs",
        "use std::sync::Arc;\nuse crate::gateway::Gateway;\npub struct Router;",
    )]));
    assert_eq!(
        found,
        ["src/router.rs:2 imports crate::gateway::Gateway (layer L4 features → L8 gateway)"]
    );
}

#[test]
fn checker_reads_groups_inline_paths_and_relative_paths() {
    let found = run(&with_base(&[
        (
            "src/router.rs",
            "use crate::{ctx::RequestCtx, config::{self, compile::Compiler}};\n\
             fn f() { let _ = crate::gateway::Gateway; }",
        ),
        (
            "src/config/raw.rs",
            "use super::compile::Compiler;\nfn g() -> super::compile::Compiler { todo!() }",
        ),
    ]));
    assert_eq!(
        found,
        [
            "src/config/raw.rs:1 imports crate::config::compile::Compiler (layer L1 raw config → L7 config compile)",
            "src/router.rs:1 imports crate::ctx::RequestCtx (layer L4 features → L5 request)",
            "src/router.rs:1 imports crate::config (layer L4 features → L7 config compile)",
            "src/router.rs:1 imports crate::config::compile::Compiler (layer L4 features → L7 config compile)",
            "src/router.rs:2 imports crate::gateway::Gateway (layer L4 features → L8 gateway)",
        ]
    );
}

#[test]
fn checker_skips_comments_strings_and_test_code() {
    let found = run(&with_base(&[
        (
            "src/router.rs",
            "//! Called from [`crate::gateway::Gateway`].\n\
             /* use crate::gateway::Gateway; */\n\
             /// See crate::gateway.\n\
             const S: &str = \"crate::gateway::Gateway\";\n\
             const R: &str = r#\"use crate::gateway::x;\"#;\n\
             fn f<'a>(x: &'a str) -> char { let _ = b'\"'; '\"' }\n\
             #[cfg(test)]\nmod tests { use crate::gateway::Gateway; }\n\
             #[cfg(test)]\nmod more;",
        ),
        ("src/router/more.rs", "use crate::gateway::Gateway;"),
    ]));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn checker_keeps_plugin_modules_private_and_allows_the_ctx_loop() {
    let found = run(&with_base(&[
        (
            "src/gateway.rs",
            "use crate::plugins::{Chain, jwt::TokenInfo};",
        ),
        (
            "src/ctx.rs",
            "pub struct RequestCtx { c: crate::plugins::Chain, t: crate::plugins::jwt::TokenInfo }",
        ),
        (
            "src/plugins/jwt.rs",
            "use super::Chain; use crate::ctx::RequestCtx;",
        ),
    ]));
    assert_eq!(
        found,
        [
            "src/ctx.rs:1 imports crate::plugins::jwt::TokenInfo (layer L5 request → L6 plugins)",
            "src/gateway.rs:1 imports crate::plugins::jwt::TokenInfo (a plugin's own module: outside src/plugins/ only crate::plugins is named)",
        ]
    );
}

#[test]
fn checker_wants_every_module_placed_and_every_allowance_used() {
    let files: Vec<(String, String)> = with_base(&[("src/shiny.rs", "")])
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    let found = check(&files, &[("src/router.rs", "gateway")]);
    assert_eq!(
        found,
        [
            "src/shiny.rs: module `shiny` has no layer in LAYERS",
            "allowlist entry (\"src/router.rs\", \"gateway\") matches nothing any more: remove it",
        ]
    );
}

#[test]
fn main_names_the_library_as_gatehouse() {
    let found = run(&with_base(&[
        (
            "src/main.rs",
            "use gatehouse::gateway::Gateway; fn main() {}",
        ),
        ("src/router.rs", "fn f() { gatehouse::gateway::x(); }"),
    ]));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn checker_finds_a_cycle_within_a_layer() {
    let found = run(&with_base(&[
        ("src/lib.rs", "pub mod router; pub mod upstream; pub mod gateway; pub mod ctx; pub mod plugins; pub mod config;"),
        ("src/router.rs", "use crate::upstream::Upstream;\npub struct Router;"),
        ("src/upstream/mod.rs", "pub mod select;\npub struct Upstream;"),
        ("src/upstream/select.rs", "fn f(_: &crate::router::Router) {}"),
    ]));
    assert_eq!(
        found,
        ["import cycle router → upstream → router: src/router.rs:1 imports crate::upstream::Upstream; \
          src/upstream/select.rs:1 imports crate::router::Router"]
    );
}
