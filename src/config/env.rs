//! `${NAME}` / `${NAME:-default}` substitution in string values, applied after parsing so a
//! secret never appears in a YAML parse error.

/// Expands every `${...}` in `s`. Returns the expanded string and whether anything was
/// substituted, or the name of an unset variable without default.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    if !s.contains("${") {
        return Ok((s.to_string(), false));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            // No closing brace: keep the text literally.
            out.push_str(&rest[start..]);
            return Ok((out, true));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        (n == "A").then(|| "alpha".to_string())
    }

    #[test]
    fn substitution() {
        assert_eq!(expand("x", env).unwrap(), ("x".into(), false));
        assert_eq!(expand("${A}", env).unwrap().0, "alpha");
        assert_eq!(expand("k-${A}-${B:-dflt}", env).unwrap().0, "k-alpha-dflt");
        assert_eq!(expand("${B:-}", env).unwrap().0, "");
        assert!(expand("${B}", env).unwrap_err().contains("B is not set"));
        assert!(expand("${1X}", env).is_err());
    }
}
