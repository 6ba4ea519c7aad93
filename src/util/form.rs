//! `application/x-www-form-urlencoded` decoding of query parameter names and values (key-auth's
//! `query_param`, the access log's secret-parameter check).

use std::borrow::Cow;

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte; a `%` not
/// followed by two hex digits stays as it is).
pub fn decode(s: &str) -> Cow<'_, [u8]> {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return Cow::Borrowed(b);
    }
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = b
                    .get(i + 1)
                    .copied()
                    .and_then(hex)
                    .zip(b.get(i + 2).copied().and_then(hex));
                if let Some((h, l)) = pair {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_percent_and_stray_percent() {
        assert_eq!(decode("a+b%20c%zz%4").as_ref(), b"a b c%zz%4");
        assert_eq!(decode("%41%62").as_ref(), b"Ab");
        assert!(matches!(decode("plain"), Cow::Borrowed(_)));
    }
}
