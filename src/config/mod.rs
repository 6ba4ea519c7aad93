//! Configuration: YAML -> [`raw`] serde structs -> [`compile`] -> immutable
//! [`crate::runtime::Runtime`]. Nothing here runs on the request path.
//!
//! Stage one parses the text into a YAML tree (syntax errors carry serde_yaml's line),
//! substitutes `${ENV}` in every string value (so a secret never appears in a parse error),
//! then deserializes the tree into the raw structs; the YAML path of a type or unknown-key
//! error is looked up in [`position::Positions`] for its line.

pub mod compile;
pub mod diag;
pub mod env;
pub mod error;
pub mod position;
pub mod raw;
pub mod units;

pub use error::{ConfigError, ConfigErrors};

use crate::ctx::Runtime;
use crate::upstream::StateRegistry;
use crate::util::registry::Registry;
use position::Positions;
use serde_yaml::Value;
use std::path::Path;

/// Reads, parses and compiles a config file. Relative paths in it resolve against its
/// directory.
pub fn load_file(
    path: &Path,
    states: &StateRegistry,
    registry: &Registry,
    version: u64,
) -> Result<Runtime, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single("", None, format!("cannot read {}: {e}", path.display()))
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    load_str(&text, base, states, registry, version)
}

/// Parses and compiles YAML text.
pub fn load_str(
    text: &str,
    base_dir: &Path,
    states: &StateRegistry,
    registry: &Registry,
    version: u64,
) -> Result<Runtime, ConfigErrors> {
    let positions = Positions::build(text);
    let parsed = parse_with(text, &positions, &|n| std::env::var(n).ok())?;
    compile::compile(
        parsed, &positions, base_dir, states, registry, version, text,
    )
}

/// Stage one's result: the raw structs and the values that came from the environment
/// (redacted from every later error message).
pub struct Parsed {
    pub raw: raw::RawConfig,
    pub secrets: Vec<String>,
    /// YAML paths of the string values whose every `${NAME}` came from the environment (no
    /// `:-default` used): where a plain-text secret may come from (basic-auth passwords).
    pub env_paths: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Parsed {
    // Never print the raw config: it holds substituted secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parsed { .. }")
    }
}

/// Stage one with the process environment.
pub fn parse(text: &str) -> Result<Parsed, ConfigErrors> {
    parse_with(text, &Positions::build(text), &|n| std::env::var(n).ok())
}

/// Stage one with an explicit environment lookup (tests, fuzzing).
pub fn parse_with(
    text: &str,
    positions: &Positions,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigErrors> {
    let mut tree: Value = serde_yaml::from_str(text).map_err(|e| {
        let line = e
            .location()
            .map(|l| l.line())
            .or_else(|| position::problem_line(text));
        let mut msg = e.to_string();
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        ConfigErrors::single("", line, format!("YAML syntax: {msg}"))
    })?;
    if tree.is_null() {
        return Ok(Parsed {
            raw: raw::RawConfig::default(),
            secrets: Vec::new(),
            env_paths: Default::default(),
        });
    }
    // `<<: *anchor` merge keys, so shared blocks can be written once.
    tree.apply_merge()
        .map_err(|e| ConfigErrors::single("", None, format!("YAML merge key: {e}")))?;
    let mut errors = ConfigErrors::default();
    let mut secrets = Vec::new();
    let mut env_paths = std::collections::HashSet::new();
    substitute(
        &mut tree,
        String::new(),
        positions,
        lookup,
        &mut errors,
        &mut (&mut secrets, &mut env_paths),
    );
    if !errors.0.is_empty() {
        return Err(errors);
    }
    serde_path_to_error::deserialize::<_, raw::RawConfig>(tree)
        .map(|raw| Parsed {
            raw,
            secrets: secrets.clone(),
            env_paths,
        })
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let mut errs = ConfigErrors::single(
                path.clone(),
                positions.line(&path),
                e.into_inner().to_string(),
            );
            errs.redact(&secrets);
            errs
        })
}

/// Replaces `${NAME}` / `${NAME:-default}` in every string value of the tree.
fn substitute(
    v: &mut Value,
    path: String,
    positions: &Positions,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut ConfigErrors,
    found: &mut (&mut Vec<String>, &mut std::collections::HashSet<String>),
) {
    let defaulted = std::cell::Cell::new(false);
    match v {
        Value::String(s) => match env::expand(s, |n| {
            let v = lookup(n);
            defaulted.set(defaulted.get() || v.is_none());
            v
        }) {
            Ok((new, true)) => {
                if !new.is_empty() {
                    found.0.push(new.clone());
                }
                if !defaulted.get() {
                    found.1.insert(path);
                }
                *s = new;
            }
            Ok((_, false)) => {}
            Err(msg) => errors.0.push(ConfigError {
                line: positions.line(&path),
                path,
                message: msg,
            }),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(
                    item,
                    format!("{path}[{i}]"),
                    positions,
                    lookup,
                    errors,
                    found,
                );
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, p, positions, lookup, errors, found);
            }
        }
        Value::Tagged(t) => substitute(&mut t.value, path, positions, lookup, errors, found),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "TOKEN" => Some("s3cr3t-value".into()),
            "HC" => Some("250ms".into()),
            _ => None,
        }
    }

    fn parse_env(text: &str) -> Result<Parsed, ConfigErrors> {
        parse_with(text, &Positions::build(text), &env)
    }

    #[test]
    fn substitution_everywhere_strings_are() {
        let p = parse_env(
            "admin:\n  token: ${TOKEN}\nupstreams:\n  - name: u\n    targets: [{addr: \"127.0.0.1:1\"}]\n    health_check: { interval: \"${HC}\", path: \"${HC_PATH:-/healthz}\" }\n",
        )
        .unwrap();
        assert_eq!(p.raw.admin.token, "s3cr3t-value");
        let hc = p.raw.upstreams[0].health_check.as_ref().unwrap();
        assert_eq!(hc.interval.0, std::time::Duration::from_millis(250));
        assert_eq!(hc.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn unset_variable_names_path_and_line() {
        let e = parse_env("server:\n  pid_file: ${NOPE}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "server.pid_file: environment variable NOPE is not set (line 2)"
        );
    }

    #[test]
    fn secrets_are_redacted_from_type_errors() {
        // A secret that lands in a field of the wrong type must not be echoed.
        let e = parse_env("server:\n  listen: ${TOKEN}\n").unwrap_err();
        let s = e.to_string();
        assert!(!s.contains("s3cr3t"), "{s}");
        assert!(s.contains("server.listen") && s.contains("(line 2)"), "{s}");
    }

    #[test]
    fn type_and_unknown_key_errors_have_lines() {
        let e = parse_env("server:\n  threads: many\n").unwrap_err();
        assert!(
            e.to_string().starts_with("server.threads: invalid type"),
            "{e}"
        );
        assert!(e.to_string().ends_with("(line 2)"), "{e}");
        let e = parse_env("routes:\n  - name: r\n    pathz: [\"/x\"]\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("routes[0].pathz: unknown field `pathz`"),
            "{e}"
        );
        assert!(e.to_string().ends_with("(line 3)"), "{e}");
        let e = parse_env("server: [\n").unwrap_err();
        assert!(e.to_string().contains("YAML syntax"), "{e}");
    }

    #[test]
    fn consumer_username_must_be_a_header_value() {
        let text = "consumers:\n  - username: \"bad\\u0001name\"\n";
        let e = load_str(
            text,
            Path::new("."),
            &StateRegistry::default(),
            &crate::util::registry::Registry::default(),
            1,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "consumers[0].username: cannot be sent as a header value (control characters) (line 2)"
        );
    }

    #[test]
    fn merge_keys() {
        let p = parse_env(
            "upstreams:\n  - &base\n    name: a\n    targets: [{addr: \"127.0.0.1:1\"}]\n    retries: 3\n  - <<: *base\n    name: b\n",
        )
        .unwrap();
        assert_eq!(p.raw.upstreams[1].name, "b");
        assert_eq!(p.raw.upstreams[1].retries, 3);
    }
}
