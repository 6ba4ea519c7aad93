//! The JSON body rewriter of `response-transformer`: removes and renames object members at
//! every depth (through objects and arrays) in one pass over the bytes, and wraps a body in
//! the `envelope`.
//!
//! It does not build a `serde_json::Value`: it validates the input as it copies it token by
//! token, so member order, number spelling (no f64 round trip: `1e400` and
//! `12345678901234567890123` come out as they went in) and string escapes are preserved,
//! and nothing is allocated per node. The output is compact (insignificant whitespace is
//! dropped). Input that is not valid UTF-8 JSON, or nested deeper than [`MAX_DEPTH`], is
//! refused with [`Invalid`] and the caller passes the original bytes on. The tokens are read
//! by the scanner shared with the request body rewriter ([`super::json_scan`]).
//!
//! Rules, all matched on the member names as they are in the input (escapes decoded):
//! - `remove` wins over `rename` for the same name (the config refuses listing one name in
//!   both).
//! - A rename does not chain: with `a:b` and `b:c`, `{"a":1,"b":2}` becomes `{"b":1,"c":2}`.
//! - Collision: when an object already has a member named like a rename's target (and that
//!   member is not itself removed or renamed), the **renamed member wins** and the existing
//!   one is dropped, wherever each stands in the object: `rename a:b` turns
//!   `{"b":0,"a":1}` and `{"a":1,"b":0}` both into `{"b":1}`. The renamed member keeps the
//!   source member's position. Two renames into one target are refused by the config.

use super::json_scan::{unquoted, Scanner};
pub use super::json_scan::{Invalid, MAX_DEPTH};

/// Most `rename.json` rules one plugin may have (a bit per rule tracks collisions).
pub const MAX_RENAMES: usize = 64;

#[derive(Debug)]
struct Rename {
    from: Box<[u8]>,
    to: Box<[u8]>,
    /// `to` as a JSON string literal, quotes included.
    to_json: Box<[u8]>,
}

/// Compiled `remove.json` and `rename.json` rules.
#[derive(Debug, Default)]
pub struct JsonRules {
    remove: Vec<Box<[u8]>>,
    renames: Vec<Rename>,
    /// Lengths any rule name has (bit `len` for len < 64, bit 63 for longer): a key whose
    /// length is not here needs no comparison.
    lens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Keep,
    Remove,
    /// Source of rename `i`.
    Rename(usize),
    /// Named like the target of rename `i`.
    Target(usize),
}

fn len_bit(n: usize) -> u64 {
    1u64 << n.min(63)
}

impl JsonRules {
    /// `remove`: member names; `rename`: `(from, to)` pairs. Errors name the offending
    /// entry's index in its list (`("remove", 2)`) with a message.
    pub fn new(
        remove: &[String],
        rename: &[(String, String)],
    ) -> Result<JsonRules, (&'static str, usize, String)> {
        let mut rules = JsonRules::default();
        for (i, r) in remove.iter().enumerate() {
            if r.is_empty() {
                return Err(("remove", i, "field name must not be empty".into()));
            }
            if rules.remove.iter().any(|x| **x == *r.as_bytes()) {
                return Err(("remove", i, format!("field {r:?} listed twice")));
            }
            rules.lens |= len_bit(r.len());
            rules.remove.push(r.as_bytes().into());
        }
        if rename.len() > MAX_RENAMES {
            return Err((
                "rename",
                MAX_RENAMES,
                format!("at most {MAX_RENAMES} renames"),
            ));
        }
        for (i, (from, to)) in rename.iter().enumerate() {
            if from.is_empty() || to.is_empty() {
                return Err(("rename", i, "expected \"from:to\" with both names".into()));
            }
            if from == to {
                return Err(("rename", i, format!("renames {from:?} to itself")));
            }
            if rules.remove.iter().any(|x| **x == *from.as_bytes()) {
                return Err((
                    "rename",
                    i,
                    format!("field {from:?} is both removed and renamed"),
                ));
            }
            if rules.renames.iter().any(|x| *x.from == *from.as_bytes()) {
                return Err(("rename", i, format!("field {from:?} renamed twice")));
            }
            if rules.renames.iter().any(|x| *x.to == *to.as_bytes()) {
                return Err((
                    "rename",
                    i,
                    format!("two renames into {to:?}: the result would be ambiguous"),
                ));
            }
            let to_json = serde_json::to_vec(to).map_err(|e| ("rename", i, e.to_string()))?;
            rules.lens |= len_bit(from.len()) | len_bit(to.len());
            rules.renames.push(Rename {
                from: from.as_bytes().into(),
                to: to.as_bytes().into(),
                to_json: to_json.into(),
            });
        }
        Ok(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.renames.is_empty()
    }

    #[inline]
    fn action(&self, key: &[u8]) -> Action {
        if self.lens & len_bit(key.len()) == 0 {
            return Action::Keep;
        }
        if self.remove.iter().any(|r| **r == *key) {
            return Action::Remove;
        }
        if let Some(i) = self.renames.iter().position(|r| *r.from == *key) {
            return Action::Rename(i);
        }
        if let Some(i) = self.renames.iter().position(|r| *r.to == *key) {
            return Action::Target(i);
        }
        Action::Keep
    }

    /// The action for a member name as written (quotes included): the raw bytes between
    /// the quotes, decoded only when it has escapes (rare; allocates then).
    fn key_action(&self, raw: &[u8], escaped: bool) -> Action {
        if !escaped {
            return self.action(unquoted(raw));
        }
        match serde_json::from_slice::<String>(raw) {
            Ok(k) => self.action(k.as_bytes()),
            Err(_) => Action::Keep,
        }
    }

    /// Validates `input` and appends its rewritten, compact form to `out`. Returns whether
    /// a rule changed anything. On `Err` the bytes appended to `out` are meaningless.
    pub fn rewrite(&self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, Invalid> {
        let mut w = Writer {
            sc: Scanner::utf8(input)?,
            out,
            rules: self,
            changed: false,
        };
        w.sc.ws();
        w.value(0)?;
        w.sc.finish()?;
        Ok(w.changed)
    }
}

/// Copies the input it scans to `out`, leaving out what the rules remove. (What is removed
/// is only validated: [`Scanner::skip`].)
struct Writer<'a> {
    sc: Scanner<'a>,
    out: &'a mut Vec<u8>,
    rules: &'a JsonRules,
    changed: bool,
}

/// A member already written into the current object under a rename's target name.
struct Written {
    rule: usize,
    start: usize,
    end: usize,
}

impl Writer<'_> {
    fn value(&mut self, depth: usize) -> Result<(), Invalid> {
        match self.sc.peek().ok_or(Invalid)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => {
                let (a, b, _) = self.sc.string()?;
                self.out.extend_from_slice(self.sc.span(a, b)?);
                Ok(())
            }
            _ => {
                let a = self.sc.i;
                self.sc.scalar()?;
                self.out.extend_from_slice(self.sc.span(a, self.sc.i)?);
                Ok(())
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Invalid> {
        let empty = self.sc.open(depth, b']')?;
        self.out.push(b'[');
        if !empty {
            loop {
                self.sc.ws();
                self.value(depth)?;
                if !self.sc.next(b']')? {
                    break;
                }
                self.out.push(b',');
            }
        }
        self.out.push(b']');
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<(), Invalid> {
        let empty = self.sc.open(depth, b'}')?;
        self.out.push(b'{');
        if empty {
            self.out.push(b'}');
            return Ok(());
        }
        let start = self.out.len();
        // Renames applied in this object (bit per rule) and members written under a
        // rename's target name: together they resolve collisions either way round.
        let mut renamed: u64 = 0;
        let mut targets: Vec<Written> = Vec::new();
        loop {
            let (ka, kb, escaped) = self.sc.member_name()?;
            let key = self.sc.span(ka, kb)?;
            match self.rules.key_action(key, escaped) {
                Action::Keep => {
                    self.member_head(start, key);
                    self.value(depth)?;
                }
                Action::Remove => {
                    self.changed = true;
                    self.sc.skip(depth)?;
                }
                Action::Rename(r) => {
                    self.changed = true;
                    if let Some(p) = targets.iter().position(|t| t.rule == r) {
                        let t = targets.swap_remove(p);
                        self.cut(start, &t, &mut targets);
                    }
                    renamed |= 1 << r;
                    let rules = self.rules;
                    self.member_head(start, &rules.renames[r].to_json);
                    self.value(depth)?;
                }
                Action::Target(r) => {
                    if renamed & (1 << r) != 0 {
                        // The renamed member wins.
                        self.changed = true;
                        self.sc.skip(depth)?;
                    } else {
                        let m = self.out.len();
                        self.member_head(start, key);
                        self.value(depth)?;
                        targets.push(Written {
                            rule: r,
                            start: m,
                            end: self.out.len(),
                        });
                    }
                }
            }
            if !self.sc.next(b'}')? {
                break;
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    /// `,"key":` (no comma before the object's first written member).
    #[inline]
    fn member_head(&mut self, start: usize, key: &[u8]) {
        if self.out.len() > start {
            self.out.push(b',');
        }
        self.out.extend_from_slice(key);
        self.out.push(b':');
    }

    /// Removes an already written member `t` of the object whose content starts at
    /// `start`, fixing the separator and the positions of the later written members.
    fn cut(&mut self, start: usize, t: &Written, targets: &mut [Written]) {
        let len = t.end - t.start;
        self.out.drain(t.start..t.end);
        // The first member has no leading comma: the next one's comma goes instead.
        let comma = t.start == start && self.out.get(t.start) == Some(&b',');
        if comma {
            self.out.remove(t.start);
        }
        for o in targets.iter_mut().filter(|o| o.start >= t.end) {
            let moved = o.start > t.end || !comma;
            o.start -= len + usize::from(comma && moved);
            o.end -= len + usize::from(comma);
        }
    }
}

/// Appends `s` as a JSON string literal (quotes included) to `out`.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// The `envelope`: `{"success":..,"data":<data>,"meta":{"request_id":..,"timestamp":..,
/// "version":..}}`. `data` must be valid JSON already.
pub struct Envelope<'a> {
    pub success: bool,
    pub request_id: &'a str,
    pub timestamp: &'a str,
    /// The version as a JSON string literal (compiled once).
    pub version_json: &'a [u8],
}

impl Envelope<'_> {
    /// Everything before the data.
    pub fn open(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self.success {
            b"{\"success\":true,\"data\":"
        } else {
            b"{\"success\":false,\"data\":"
        });
    }

    /// Everything after the data.
    pub fn close(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"meta\":{\"request_id\":");
        push_json_str(out, self.request_id);
        out.extend_from_slice(b",\"timestamp\":");
        push_json_str(out, self.timestamp);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(self.version_json);
        out.extend_from_slice(b"}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn rules(remove: &[&str], rename: &[(&str, &str)]) -> JsonRules {
        let remove: Vec<String> = remove.iter().map(|s| s.to_string()).collect();
        let rename: Vec<(String, String)> = rename
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        JsonRules::new(&remove, &rename).unwrap()
    }

    fn run(r: &JsonRules, input: &str) -> Result<(String, bool), Invalid> {
        let mut out = Vec::new();
        let changed = r.rewrite(input.as_bytes(), &mut out)?;
        Ok((String::from_utf8(out).unwrap(), changed))
    }

    fn rw(r: &JsonRules, input: &str) -> String {
        run(r, input).unwrap().0
    }

    #[test]
    fn removes_and_renames_through_nested_arrays() {
        let r = rules(&["password", "internal"], &[("user_name", "name")]);
        let input = r#"{
            "data": [
                {"user_name": "ada", "password": "x", "tags": [{"internal": 1, "k": "v"}]},
                [[{"user_name": "alan", "internal": {"deep": true}}]]
            ],
            "internal": [1, 2],
            "meta": {"page": 1, "password": null}
        }"#;
        let out = rw(&r, input);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({
                "data": [
                    {"name": "ada", "tags": [{"k": "v"}]},
                    [[{"name": "alan"}]]
                ],
                "meta": {"page": 1}
            })
        );
        // Member order is kept.
        assert!(
            out.starts_with(r#"{"data":[{"name":"ada","tags":"#),
            "{out}"
        );
    }

    #[test]
    fn removes_every_member_of_an_object_and_commas_stay_right() {
        let r = rules(&["a", "c"], &[]);
        assert_eq!(rw(&r, r#"{"a":1,"b":2,"c":3}"#), r#"{"b":2}"#);
        assert_eq!(rw(&r, r#"{"a":1,"c":3}"#), r#"{}"#);
        assert_eq!(rw(&r, r#"{"b":2,"a":1}"#), r#"{"b":2}"#);
        assert_eq!(rw(&r, r#"[{"a":1},{"c":[{"a":2}]},{}]"#), r#"[{},{},{}]"#);
    }

    #[test]
    fn rename_collision_renamed_member_wins_either_order() {
        let r = rules(&[], &[("a", "b")]);
        assert_eq!(rw(&r, r#"{"a":1,"b":0}"#), r#"{"b":1}"#);
        assert_eq!(rw(&r, r#"{"b":0,"a":1}"#), r#"{"b":1}"#);
        assert_eq!(
            rw(&r, r#"{"x":9,"b":0,"y":8,"a":1,"z":7}"#),
            r#"{"x":9,"y":8,"b":1,"z":7}"#
        );
        assert_eq!(rw(&r, r#"{"b":{"a":2},"a":1}"#), r#"{"b":1}"#);
        // The dropped member was first: the next member's comma goes with it.
        assert_eq!(rw(&r, r#"{"b":0,"c":2,"a":1}"#), r#"{"c":2,"b":1}"#);
        // No collision when the target only exists.
        assert_eq!(rw(&r, r#"{"b":0}"#), r#"{"b":0}"#);
    }

    #[test]
    fn collision_fixup_keeps_other_positions() {
        // Two renames whose targets both exist before their sources.
        let r = rules(&[], &[("a", "b"), ("c", "d")]);
        let out = rw(&r, r#"{"b":0,"d":0,"x":1,"a":1,"c":2}"#);
        assert_eq!(out, r#"{"x":1,"b":1,"d":2}"#);
        let out = rw(&r, r#"{"d":"dd","b":"bb","c":3,"a":4}"#);
        assert_eq!(out, r#"{"d":3,"b":4}"#);
        let out = rw(&r, r#"{"d":"dd","b":"bb","a":4,"c":3}"#);
        assert_eq!(out, r#"{"b":4,"d":3}"#);
    }

    #[test]
    fn renames_do_not_chain() {
        let r = rules(&[], &[("a", "b"), ("b", "c")]);
        assert_eq!(rw(&r, r#"{"a":1,"b":2}"#), r#"{"b":1,"c":2}"#);
    }

    #[test]
    fn escaped_keys_match_and_unicode_passes() {
        let r = rules(&["pässword"], &[("na\"me", "n")]);
        assert_eq!(
            rw(
                &r,
                r#"{"p\u00e4ssword":1,"na\"me":"Zoë \ud83d\ude00","k":"\n"}"#
            ),
            r#"{"n":"Zoë \ud83d\ude00","k":"\n"}"#
        );
        let r = rules(&[], &[("a", "é\"x")]);
        let out = rw(&r, r#"{"a":1}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"é\"x": 1})
        );
    }

    #[test]
    fn numbers_are_kept_verbatim() {
        let r = rules(&["x"], &[]);
        let input = r#"[12345678901234567890123,1e400,-0.10000000000000000555,0,-1E+2,3.5e-7]"#;
        assert_eq!(rw(&r, input), input);
    }

    #[test]
    fn reports_whether_anything_changed() {
        let r = rules(&["x"], &[]);
        assert_eq!(
            run(&r, r#" {"a" : [1, 2]} "#).unwrap(),
            (r#"{"a":[1,2]}"#.into(), false)
        );
        assert!(run(&r, r#"{"x":1}"#).unwrap().1);
        // Scalars and top-level arrays are valid JSON texts too.
        assert_eq!(run(&r, "  42 ").unwrap().0, "42");
        assert_eq!(run(&r, r#""s""#).unwrap().0, r#""s""#);
    }

    #[test]
    fn invalid_json_is_refused() {
        let r = rules(&["x"], &[]);
        for bad in [
            "",
            "   ",
            "{",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\" 1}",
            "{a:1}",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            "nul",
            "\"abc",
            "\"a\\x\"",
            "\"a\\u12g4\"",
            "\"tab\there\"",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "[1 2]",
            "NaN",
            "'a'",
        ] {
            assert_eq!(run(&r, bad), Err(Invalid), "{bad:?}");
        }
        let mut out = Vec::new();
        assert_eq!(r.rewrite(b"\"\xff\"", &mut out), Err(Invalid), "bad UTF-8");
    }

    #[test]
    fn depth_limit() {
        let r = rules(&["x"], &[]);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(run(&r, &ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(run(&r, &deep), Err(Invalid));
        let deep_obj = "{\"a\":".repeat(100_000);
        assert_eq!(run(&r, &deep_obj), Err(Invalid));
    }

    #[test]
    fn config_errors() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(JsonRules::new(&s(&[""]), &[]).is_err());
        assert!(JsonRules::new(&s(&["a", "a"]), &[]).is_err());
        assert!(JsonRules::new(&s(&["a"]), &p(&[("a", "b")])).is_err());
        assert!(JsonRules::new(&[], &p(&[("a", "a")])).is_err());
        assert!(JsonRules::new(&[], &p(&[("a", "c"), ("b", "c")])).is_err());
        assert!(JsonRules::new(&[], &p(&[("a", "c"), ("a", "d")])).is_err());
        let err = JsonRules::new(&[], &p(&[("a", "x"), ("b", "")])).unwrap_err();
        assert_eq!((err.0, err.1), ("rename", 1));
    }

    #[test]
    fn envelope_is_valid_json() {
        let mut out = Vec::new();
        let e = Envelope {
            success: false,
            request_id: "id-\"1",
            timestamp: "2024-01-02T03:04:05.006Z",
            version_json: b"\"v1\"",
        };
        e.open(&mut out);
        out.extend_from_slice(br#"{"error":"x"}"#);
        e.close(&mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"success": false, "data": {"error": "x"},
                   "meta": {"request_id": "id-\"1", "timestamp": "2024-01-02T03:04:05.006Z", "version": "v1"}})
        );
    }

    #[test]
    fn timestamps() {
        use crate::util::clock::rfc3339_millis;
        use std::time::Duration;
        assert_eq!(rfc3339_millis(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339_millis(Duration::from_secs(1_709_251_199)),
            "2024-02-29T23:59:59.000Z"
        );
        assert_eq!(
            rfc3339_millis(Duration::from_secs(4_102_444_800)),
            "2100-01-01T00:00:00.000Z"
        );
    }
}
