//! What the bolero fuzz tests share: a byte source that generators read their decisions
//! from, byte-level damage to a valid text, and serde_json as the judge of valid JSON.

/// Reads generator decisions from fuzz bytes; zeros once they run out, so every input is a
/// finite structure.
pub struct Src<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Src<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Src { b, i: 0 }
    }

    pub fn u8(&mut self) -> u8 {
        let v = self.b.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        v
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes(8).try_into().unwrap_or([0; 8]))
    }

    /// A short string from `vocab` or from arbitrary characters.
    pub fn string(&mut self, vocab: &[&str]) -> String {
        if self.u8() < 200 {
            vocab[self.below(vocab.len())].to_string()
        } else {
            let n = self.below(6);
            (0..n)
                .map(|_| char::from_u32(self.u8() as u32 * 257 % 0x3000).unwrap_or('?'))
                .collect()
        }
    }
}

/// `text` with up to three byte edits (insert, remove or replace at a position), the kind of
/// near-valid input a parser gets wrong.
pub fn damage(mut text: Vec<u8>, edits: &[(u16, u8)]) -> Vec<u8> {
    for (at, b) in edits.iter().take(3) {
        let at = *at as usize % (text.len() + 1);
        match b % 3 {
            0 => text.insert(at, *b),
            1 if at < text.len() => {
                text.remove(at);
            }
            _ if at < text.len() => text[at] = *b,
            _ => {}
        }
    }
    text
}

/// Whether `bytes` are one UTF-8 JSON text by serde_json (escapes are checked for syntax
/// only, like the rewriters do; `IgnoredAny` alone skips string bytes without checking
/// their UTF-8, which the rewriters document they refuse).
pub fn serde_accepts(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// A JSON rewriter's verdict on `input` is serde_json's (checked up to 256 bytes: nested at
/// most 128 deep, within serde_json's own limit), and what it wrote (`out`, when it wrote
/// anything) is valid JSON.
pub fn assert_rewrite_sound(input: &[u8], accepted: bool, out: Option<&[u8]>) {
    if input.len() <= 256 {
        assert_eq!(
            accepted,
            serde_accepts(input),
            "disagrees with serde_json on {:?}",
            String::from_utf8_lossy(input)
        );
    }
    if let Some(out) = out {
        assert!(
            serde_accepts(out),
            "invalid output {:?} for {:?}",
            String::from_utf8_lossy(out),
            String::from_utf8_lossy(input)
        );
    }
}
