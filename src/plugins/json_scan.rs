//! The validating JSON scanner under both body rewriters: `response-transformer`'s
//! ([`super::json_rewrite`], `response_body_filter`) and `request-transformer`'s
//! ([`super::request_body`], `request_filter`), and the config-time check of typed JSON
//! values.
//!
//! A [`Scanner`] steps over the bytes of a JSON text token by token and reports spans of the
//! input; what to do with them (copy, drop, split into members) is the caller's. Nothing is
//! allocated, every read is bounds-checked (`get`), and malformed, truncated or too deeply
//! nested input gives [`Invalid`], never a panic. It does not check UTF-8 inside strings:
//! the rewriters check the whole input once first ([`Scanner::utf8`]).

use std::fmt;

/// Nesting deeper than this is refused as [`Invalid`] (the response rewriter then passes the
/// body through untouched; the request rewriter refuses it).
pub const MAX_DEPTH: usize = 256;

/// The input is not valid JSON (or too deep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not valid JSON")
    }
}

/// A position in a JSON text.
pub(crate) struct Scanner<'a> {
    s: &'a [u8],
    /// Index of the next byte to read.
    pub i: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Scanner<'a> {
        Scanner { s, i: 0 }
    }

    /// A scanner over `s`, which must be UTF-8 (checked once here for the whole text).
    pub(crate) fn utf8(s: &'a [u8]) -> Result<Scanner<'a>, Invalid> {
        match std::str::from_utf8(s) {
            Ok(_) => Ok(Scanner::new(s)),
            Err(_) => Err(Invalid),
        }
    }

    /// Whether `s` is exactly one JSON value, with optional whitespace around it.
    pub(crate) fn validate(s: &[u8]) -> Result<(), Invalid> {
        let mut sc = Scanner::new(s);
        sc.ws();
        sc.skip(0)?;
        sc.finish()
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Input bytes `a..b` (spans this scanner reported).
    #[inline]
    pub(crate) fn span(&self, a: usize, b: usize) -> Result<&'a [u8], Invalid> {
        self.s.get(a..b).ok_or(Invalid)
    }

    #[inline]
    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    pub(crate) fn expect(&mut self, b: u8) -> Result<(), Invalid> {
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// After the top-level value: only whitespace may follow.
    pub(crate) fn finish(&mut self) -> Result<(), Invalid> {
        self.ws();
        if self.i == self.s.len() {
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Validates and steps over one value at nesting `depth` (of its parent).
    pub(crate) fn skip(&mut self, depth: usize) -> Result<(), Invalid> {
        match self.peek().ok_or(Invalid)? {
            b'{' | b'[' => self.container(depth + 1),
            b'"' => self.string().map(|_| ()),
            _ => self.scalar(),
        }
    }

    /// [`Scanner::skip`], returning the value's text.
    pub(crate) fn skip_span(&mut self, depth: usize) -> Result<&'a [u8], Invalid> {
        let a = self.i;
        self.skip(depth)?;
        self.span(a, self.i)
    }

    fn container(&mut self, depth: usize) -> Result<(), Invalid> {
        let object = self.peek() == Some(b'{');
        let close = if object { b'}' } else { b']' };
        if self.open(depth, close)? {
            return Ok(());
        }
        loop {
            if object {
                self.member_name()?;
            } else {
                self.ws();
            }
            self.skip(depth)?;
            if !self.next(close)? {
                return Ok(());
            }
        }
    }

    /// Steps into the object or array at `self.i` (on its `{` or `[`), which is at nesting
    /// `depth`; `close` is its closing byte. `Ok(true)` when it is empty (and was stepped
    /// over whole).
    #[inline]
    pub(crate) fn open(&mut self, depth: usize, close: u8) -> Result<bool, Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// After a member or element: `Ok(true)` past a `,` (another one follows), `Ok(false)`
    /// past `close` (the end of the object or array).
    #[inline]
    pub(crate) fn next(&mut self, close: u8) -> Result<bool, Invalid> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(Invalid),
        }
    }

    /// A member's name and its `:` (whitespace around them skipped): the name's span, quotes
    /// included, and whether it has escapes. Leaves `self.i` on the value.
    #[inline]
    pub(crate) fn member_name(&mut self) -> Result<(usize, usize, bool), Invalid> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(Invalid);
        }
        let name = self.string()?;
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(name)
    }

    /// A string at its opening quote: (start, end) quotes included, and whether it has
    /// escapes.
    pub(crate) fn string(&mut self) -> Result<(usize, usize, bool), Invalid> {
        let a = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            let b = self.peek().ok_or(Invalid)?;
            self.i += 1;
            match b {
                b'"' => return Ok((a, self.i, escaped)),
                b'\\' => {
                    escaped = true;
                    match self.peek().ok_or(Invalid)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.s.get(self.i + 1..self.i + 5).ok_or(Invalid)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Invalid);
                            }
                            self.i += 5;
                        }
                        _ => return Err(Invalid),
                    }
                }
                0x00..=0x1f => return Err(Invalid),
                _ => {}
            }
        }
    }

    /// `true`, `false`, `null` or a number.
    pub(crate) fn scalar(&mut self) -> Result<(), Invalid> {
        let rest = self.s.get(self.i..).unwrap_or_default();
        for lit in [&b"true"[..], b"false", b"null"] {
            if rest.starts_with(lit) {
                self.i += lit.len();
                return Ok(());
            }
        }
        // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Invalid);
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Invalid);
            }
            self.digits();
        }
        Ok(())
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}

/// The text between a string's quotes (`raw` as [`Scanner::string`] spans it).
#[inline]
pub(crate) fn unquoted(raw: &[u8]) -> &[u8] {
    raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_escapes() {
        let mut sc = Scanner::new(br#" {"a\"b" : [1, "x"] , "c":{}} "#);
        sc.ws();
        assert_eq!(sc.open(1, b'}'), Ok(false));
        let (a, b, escaped) = sc.member_name().unwrap();
        assert_eq!(sc.span(a, b).unwrap(), br#""a\"b""#);
        assert_eq!(unquoted(sc.span(a, b).unwrap()), br#"a\"b"#);
        assert!(escaped);
        assert_eq!(sc.skip_span(1).unwrap(), br#"[1, "x"]"#);
        assert_eq!(sc.next(b'}'), Ok(true));
        let (a, b, escaped) = sc.member_name().unwrap();
        assert_eq!((sc.span(a, b).unwrap(), escaped), (&br#""c""#[..], false));
        assert_eq!(sc.skip_span(1).unwrap(), b"{}");
        assert_eq!(sc.next(b'}'), Ok(false));
        assert_eq!(sc.finish(), Ok(()));
    }

    #[test]
    fn validate_one_value() {
        for ok in [
            "1",
            " -0.5e+3 ",
            "true",
            "null",
            "\"\\u00e4\"",
            "[]",
            "{\"a\":[{}]}",
        ] {
            assert_eq!(Scanner::validate(ok.as_bytes()), Ok(()), "{ok:?}");
        }
        for bad in [
            "", "01", "1.", "1e", "-", "tru", "1 2", "[1,]", "{\"a\"}", "\"\\x\"",
        ] {
            assert_eq!(Scanner::validate(bad.as_bytes()), Err(Invalid), "{bad:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(Scanner::validate(deep(MAX_DEPTH).as_bytes()), Ok(()));
        assert_eq!(
            Scanner::validate(deep(MAX_DEPTH + 1).as_bytes()),
            Err(Invalid)
        );
        assert!(Scanner::utf8(b"\"\xff\"").is_err());
        assert_eq!(unquoted(b"\""), b"");
    }
}
