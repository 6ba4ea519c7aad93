//! `gatehouse import`: converts another gateway's configuration into a gatehouse YAML file.
//! Offline tooling, no Pingora phase: it runs from the command line before any server starts.
//!
//! Every converter writes its output through the small YAML tree below so that a note about
//! something it could not carry over lands as a `#` comment next to the entry it concerns, and
//! the same note is returned for stderr: nothing is dropped silently.

pub mod kong;

use std::fmt::Write as _;

/// A YAML node of the output, with comments written above it.
#[derive(Debug, Clone)]
pub enum Y {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
    Seq(Vec<Item>),
    Map(Vec<(String, Item)>),
}

/// A node plus the comment lines (without `#`) written above it.
#[derive(Debug, Clone)]
pub struct Item {
    pub comments: Vec<String>,
    pub value: Y,
}

impl From<Y> for Item {
    fn from(value: Y) -> Item {
        Item {
            comments: Vec::new(),
            value,
        }
    }
}

impl Y {
    pub fn str(s: impl Into<String>) -> Y {
        Y::Str(s.into())
    }
    pub fn strs<S: AsRef<str>>(v: &[S]) -> Y {
        Y::Seq(v.iter().map(|s| Y::str(s.as_ref()).into()).collect())
    }
}

/// Builds a map node in insertion order.
#[derive(Debug, Default, Clone)]
pub struct MapB(pub Vec<(String, Item)>);

impl MapB {
    pub fn new() -> MapB {
        MapB::default()
    }
    pub fn put(&mut self, k: &str, v: Y) -> &mut Self {
        self.0.push((k.to_string(), v.into()));
        self
    }
    pub fn put_item(&mut self, k: &str, v: Item) -> &mut Self {
        self.0.push((k.to_string(), v));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn build(self) -> Y {
        Y::Map(self.0)
    }
}

/// The notes a converter collected: `path: message` lines, for stderr.
#[derive(Debug, Default)]
pub struct Notes {
    pub lines: Vec<String>,
}

impl Notes {
    /// Records a note and returns its comment text, to be attached to the output.
    pub fn add(&mut self, path: &str, msg: impl AsRef<str>) -> String {
        let line = format!("{path}: {}", msg.as_ref());
        // A service's plugin is copied to each of its routes: one stderr line is enough.
        if !self.lines.contains(&line) {
            self.lines.push(line.clone());
        }
        line
    }

    /// Records a note that `value` stands in for what could not be converted, attaches it
    /// to the output through `comments`, and returns `value`.
    pub fn fallback<T>(
        &mut self,
        comments: &mut Vec<String>,
        path: &str,
        msg: impl AsRef<str>,
        value: T,
    ) -> T {
        comments.push(self.add(path, msg));
        value
    }
}

fn key_text(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !k.starts_with('-');
    if plain {
        k.to_string()
    } else {
        quote(k)
    }
}

/// A double-quoted scalar: JSON's escaping is valid YAML.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// A comment line: one line, never a line break that would end the comment early.
fn comment(out: &mut String, indent: usize, text: &str) {
    for part in text.split(['\n', '\r']) {
        let _ = writeln!(out, "{}# {}", " ".repeat(indent), part);
    }
}

fn scalar(v: &Y) -> Option<String> {
    match v {
        Y::Str(s) => Some(quote(s)),
        Y::Int(i) => Some(i.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        Y::Null => Some("null".to_string()),
        Y::Seq(s) if s.is_empty() => Some("[]".to_string()),
        Y::Map(m) if m.is_empty() => Some("{}".to_string()),
        // A list of plain scalars reads better on one line.
        Y::Seq(s)
            if s.iter().all(|i| {
                i.comments.is_empty() && matches!(i.value, Y::Str(_) | Y::Int(_) | Y::Bool(_))
            }) =>
        {
            let parts: Vec<String> = s.iter().filter_map(|i| scalar(&i.value)).collect();
            Some(format!("[{}]", parts.join(", ")))
        }
        _ => None,
    }
}

fn emit_map(out: &mut String, entries: &[(String, Item)], indent: usize) {
    for (k, item) in entries {
        for c in &item.comments {
            comment(out, indent, c);
        }
        let pad = " ".repeat(indent);
        match scalar(&item.value) {
            Some(s) => {
                let _ = writeln!(out, "{pad}{}: {s}", key_text(k));
            }
            None => {
                let _ = writeln!(out, "{pad}{}:", key_text(k));
                emit(out, &item.value, indent + 2);
            }
        }
    }
}

fn emit(out: &mut String, v: &Y, indent: usize) {
    match v {
        Y::Map(m) => emit_map(out, m, indent),
        Y::Seq(items) => {
            for item in items {
                for c in &item.comments {
                    comment(out, indent, c);
                }
                let pad = " ".repeat(indent);
                match scalar(&item.value) {
                    Some(s) => {
                        let _ = writeln!(out, "{pad}- {s}");
                    }
                    None => {
                        // Render the node two columns deeper, then put "- " in place of the
                        // first line's indent.
                        let mut inner = String::new();
                        emit(&mut inner, &item.value, indent + 2);
                        let body = inner.get(indent + 2..).unwrap_or("");
                        let _ = write!(out, "{pad}- {body}");
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                let _ = writeln!(out, "{}{s}", " ".repeat(indent));
            }
        }
    }
}

/// Renders a document: `header` comment lines, then the top-level map.
pub fn render(header: &[String], doc: &[(String, Item)]) -> String {
    let mut out = String::new();
    for h in header {
        comment(&mut out, 0, h);
    }
    for (i, (k, item)) in doc.iter().enumerate() {
        if i > 0 || !header.is_empty() {
            out.push('\n');
        }
        emit_map(
            &mut out,
            std::slice::from_ref(&(k.clone(), item.clone())),
            0,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_lists_and_comments_as_valid_yaml() {
        let mut route = MapB::new();
        route
            .put("name", Y::str("a: b"))
            .put("paths", Y::strs(&["/x"]));
        let mut item: Item = route.build().into();
        item.comments.push("kong: something\nsplit".into());
        let doc = vec![("routes".to_string(), Y::Seq(vec![item]).into())];
        let text = render(&["head".into()], &doc);
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["routes"][0]["name"].as_str(), Some("a: b"));
        assert_eq!(v["routes"][0]["paths"][0].as_str(), Some("/x"));
        assert!(text.contains("# kong: something\n"));
    }
}
