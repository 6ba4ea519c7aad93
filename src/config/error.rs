//! Config errors: every one names the YAML path and, where known, the line.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `routes[3].upstream`; empty for whole-file problems.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// All errors found in one file (compile does not stop at the first one).
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(
        path: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            line,
            message: message.into(),
        }])
    }

    /// Replaces every substituted secret value by `[redacted]`: an error message must never
    /// carry the value of an environment variable (it may be a key or a token).
    pub fn redact(&mut self, secrets: &[String]) {
        for e in &mut self.0 {
            for s in secrets.iter().filter(|s| s.len() >= 3) {
                if e.message.contains(s.as_str()) {
                    e.message = e.message.replace(s.as_str(), "[redacted]");
                }
            }
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
