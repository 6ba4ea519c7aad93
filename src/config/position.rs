//! YAML node positions: a map from YAML path (`routes[3].upstream`) to its 1-based line.
//!
//! serde_yaml reports lines only for syntax and type errors; cross-reference errors found
//! while compiling (unknown upstream, duplicate names, ...) look their line up here.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct Positions {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// A mapping: `key` is Some while its value is being read.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

struct Recorder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Recorder {
    /// The path of the node that starts now (as a value in the current container), and
    /// records its line.
    fn child_path(&mut self, line: usize) -> Option<String> {
        let path = match self.stack.last_mut()? {
            Frame::Map { path, key } => {
                let k = key.take()?;
                join(path, &k)
            }
            Frame::Seq { path, index } => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.lines.entry(p.clone()).or_insert(line);
                p
            }
        };
        Some(path)
    }

    fn on_scalar_or_start(&mut self, ev: &Event, line: usize) -> Option<String> {
        // A scalar in key position of a mapping names the key.
        if let (Some(Frame::Map { path, key }), Event::Scalar(v, ..)) = (self.stack.last_mut(), ev)
        {
            if key.is_none() {
                let p = join(path, v);
                self.lines.insert(p, line);
                *key = Some(v.clone());
                return None;
            }
        }
        if self.stack.is_empty() {
            // The document's root: the line an error about the whole file points at.
            self.lines.entry(String::new()).or_insert(line);
            return Some(String::new());
        }
        self.child_path(line)
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match &ev {
            Event::Scalar(..) | Event::Alias(_) => {
                self.on_scalar_or_start(&ev, line);
            }
            Event::MappingStart(..) => {
                let path = self.on_scalar_or_start(&ev, line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.on_scalar_or_start(&ev, line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Positions {
    /// Builds the map; a document that does not scan gives an empty map (serde_yaml then
    /// reports the syntax error with its own line).
    pub fn build(text: &str) -> Positions {
        let mut rec = Recorder {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut rec, false);
        Positions { lines: rec.lines }
    }

    /// Line of `path` itself: `None` when the key is not written in the file (defaulted).
    pub fn exact(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }

    /// Line of `path`, or of its nearest ancestor that has one (a defaulted key has no line
    /// of its own, its parent does).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None if !p.is_empty() => p = "",
                None => return None,
            }
        }
    }
}

/// A line for a YAML error that serde_yaml reported without one: the scanner's error
/// position, else the start of a second document, else line 1.
pub fn problem_line(text: &str) -> Option<usize> {
    struct Docs {
        starts: Vec<usize>,
    }
    impl MarkedEventReceiver for Docs {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            if matches!(ev, Event::DocumentStart) {
                self.starts.push(mark.line());
            }
        }
    }
    let mut docs = Docs { starts: Vec::new() };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut docs, true) {
        return Some(e.marker().line().max(1));
    }
    Some(docs.starts.get(1).copied().unwrap_or(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_lines() {
        let y = "server:\n  listen: [\"a\"]\nroutes:\n  - name: a\n    upstream: x\n  - name: b\n    upstream: y\n    plugins:\n      - name: cors\n        config: { origins: [\"*\"] }\n";
        let p = Positions::build(y);
        assert_eq!(p.line("server"), Some(1));
        assert_eq!(p.line("server.listen"), Some(2));
        assert_eq!(p.line("routes[0]"), Some(4));
        assert_eq!(p.line("routes[0].upstream"), Some(5));
        assert_eq!(p.line("routes[1].upstream"), Some(7));
        assert_eq!(p.line("routes[1].plugins[0].name"), Some(9));
        assert_eq!(p.line("routes[1].plugins[0].config.origins"), Some(10));
        // Unknown path falls back to its ancestor.
        assert_eq!(p.line("routes[1].strip_path"), Some(6));
    }
}
