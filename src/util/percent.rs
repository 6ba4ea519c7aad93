//! Canonical percent-encoding of request paths: the one form the router matches, cache keys
//! are built from and admin purges name.

/// The canonical form of a path (RFC 3986 §6.2.2): percent-encoded unreserved characters
/// decoded (`%61` -> `a`), the hex of other escapes upper-cased, raw non-ASCII bytes
/// percent-encoded. So `/%61dmin` routes like `/admin`, `/café` like `/caf%C3%A9`, and the
/// upstream sees the path the router matched. Borrowed when already canonical; `None`:
/// malformed percent-encoding.
pub fn normalize_percent(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = path.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c >= 0x80) {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let v = hex_val(*b.get(i + 1)?)? * 16 + hex_val(*b.get(i + 2)?)?;
            if unreserved(v) {
                out.push(v);
            } else {
                out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
            }
            i += 3;
        } else if c >= 0x80 {
            out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]]);
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    // Only ASCII was written.
    String::from_utf8(out).ok().map(std::borrow::Cow::Owned)
}

/// The value of one hex digit.
#[inline]
pub fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// An unreserved character (RFC 3986 §2.3): never needs percent-encoding.
#[inline]
pub fn unreserved(v: u8) -> bool {
    v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_normalization() {
        assert_eq!(normalize_percent("/a/b").unwrap(), "/a/b");
        assert_eq!(normalize_percent("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize_percent("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(normalize_percent("/%2e%2E/x").unwrap(), "/../x");
        assert_eq!(
            normalize_percent("/caf\u{e9}%20x").unwrap(),
            "/caf%C3%A9%20x"
        );
        assert_eq!(normalize_percent("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert!(normalize_percent("/a%zz").is_none());
        assert!(normalize_percent("/a%2").is_none());
        assert!(normalize_percent("/a%").is_none());
    }
}
