//! Config diagnostics: the error sink every compile step reports into, with the YAML path
//! and line of each problem. Below every feature, so a feature's own compile function (and
//! every plugin constructor) reports here without depending on the assembler in
//! [`super::compile`].

use super::error::{ConfigError, ConfigErrors};
use super::position::Positions;
use std::path::{Path, PathBuf};

/// Error sink and helpers shared by the compile steps and plugin constructors.
pub struct Compiler<'a> {
    pos: &'a Positions,
    errors: Vec<ConfigError>,
    /// Values that came from the environment: redacted from every error message.
    secrets: Vec<String>,
    /// YAML paths of values that came wholly from `${ENV}` (`config::Parsed::env_paths`).
    env_paths: std::collections::HashSet<String>,
    base_dir: PathBuf,
}

impl<'a> Compiler<'a> {
    /// A compiler reporting lines from `pos`, redacting `secrets` from its messages and
    /// resolving relative file names against `base_dir` (the config file's directory).
    pub fn new(pos: &'a Positions, secrets: Vec<String>, base_dir: PathBuf) -> Self {
        Compiler {
            pos,
            errors: Vec::new(),
            secrets,
            env_paths: Default::default(),
            base_dir,
        }
    }

    /// The YAML paths whose values came wholly from the environment.
    pub fn set_env_paths(&mut self, paths: std::collections::HashSet<String>) {
        self.env_paths = paths;
    }

    /// Whether the string at YAML `path` came wholly from the environment (`${NAME}`, no
    /// `:-default` used) rather than from the file's own text.
    pub fn from_env(&self, path: &str) -> bool {
        self.env_paths.contains(path)
    }

    /// The end of a compile: every error found, with the environment's values redacted.
    pub fn finish(&mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let mut errs = ConfigErrors(std::mem::take(&mut self.errors));
        errs.redact(&self.secrets);
        Err(errs)
    }

    /// Errors found so far.
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            line: self.pos.line(path),
            message: message.into(),
        });
    }

    /// Like [`Compiler::error`], but an error identical to one already reported (same path,
    /// same message) is dropped: for problems in a shared section (`consumers`) found by every
    /// plugin instance that reads it.
    pub fn error_once(&mut self, path: &str, message: impl Into<String>) {
        let message = message.into();
        if !self
            .errors
            .iter()
            .any(|e| e.path == path && e.message == message)
        {
            self.error(path, message);
        }
    }

    /// Line of a YAML path (or of its closest parent), for messages naming a second place.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        self.pos.line(path)
    }

    /// A file path relative to the config file's directory.
    pub fn file(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Deserializes a plugin's `config` value into its typed struct, with the YAML path of
    /// the offending key in the error.
    pub fn plugin_config<T: serde::de::DeserializeOwned + Default>(
        &mut self,
        path: &str,
        value: Option<&serde_yaml::Value>,
    ) -> Option<T> {
        let Some(v) = value else {
            return Some(T::default());
        };
        if v.is_null() {
            return Some(T::default());
        }
        match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." {
                    format!("{path}.config")
                } else {
                    format!("{path}.config.{inner}")
                };
                self.error(&full, e.into_inner().to_string());
                None
            }
        }
    }
}

/// The [`Compiler`] of one plugin's build, remembering whether it reported anything: a
/// constructor reports every error it finds, then gives up if there was one.
pub struct ErrorSink<'x, 'a> {
    pub c: &'x mut Compiler<'a>,
    pub failed: bool,
}

impl ErrorSink<'_, '_> {
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.failed = true;
        self.c.error(path, message);
    }
}
