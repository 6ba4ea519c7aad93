//! Configuration: YAML -> [`raw`] serde structs -> [`compile`] -> immutable
//! [`crate::runtime::Runtime`]. Nothing here runs on the request path.

pub mod compile;
pub mod env;
pub mod error;
pub mod position;
pub mod raw;
pub mod units;

pub use error::{ConfigError, ConfigErrors};

use crate::runtime::Runtime;
use crate::upstream::StateRegistry;
use std::path::Path;

/// Reads, parses and compiles a config file. Relative paths in it resolve against its
/// directory.
pub fn load_file(
    path: &Path,
    states: &StateRegistry,
    version: u64,
) -> Result<Runtime, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single("", None, format!("cannot read {}: {e}", path.display()))
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    load_str(&text, base, states, version)
}

/// Parses and compiles YAML text.
pub fn load_str(
    text: &str,
    base_dir: &Path,
    states: &StateRegistry,
    version: u64,
) -> Result<Runtime, ConfigErrors> {
    let raw = parse(text)?;
    let positions = position::Positions::build(text);
    compile::compile(raw, &positions, base_dir, states, version, text)
}

/// Stage one: serde, with the YAML path and line of the first syntax/type/unknown-key error.
pub fn parse(text: &str) -> Result<raw::RawConfig, ConfigErrors> {
    if text.trim().is_empty() {
        return Ok(raw::RawConfig::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, raw::RawConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        let mut msg = inner.to_string();
        // serde_yaml appends " at line L column C" and may prefix the path itself; keep the
        // message bare, the path and line are printed in their own places.
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        // serde_yaml may prefix its own (shorter) path: `routes[0]: unknown field ...`.
        if let Some((head, rest)) = msg.split_once(": ") {
            if !head.is_empty() && path.starts_with(head) {
                msg = rest.to_string();
            }
        }
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::single(path, line, msg)
    })
}
