//! Stable identities of configuration parts.

/// A stable identity string (hex SHA-256 prefix) of `parts`: registry keys and Redis key
/// prefixes. Never holds the parts themselves (a config may hold a Redis password).
pub fn identity(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        assert_eq!(identity(&["ab", "c"]).len(), 24);
        assert_ne!(identity(&["ab", "c"]), identity(&["a", "bc"]));
        assert_eq!(identity(&["x"]), identity(&["x"]));
    }
}
