//! [`HexId`]: a fixed-size id written as lowercase hex without allocating (trace and span
//! ids in the access log, OTLP JSON and response headers).

use serde::{Serialize, Serializer};
use std::fmt;

/// An id written as lowercase hex (access log, OTLP JSON, response header) from the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexId<const N: usize>(pub [u8; N]);

impl<const N: usize> HexId<N> {
    /// Runs `f` with the hex text (ids up to 32 bytes; longer ones give "").
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let mut buf = [0u8; 64];
        let s = buf
            .get_mut(..2 * N)
            .and_then(|out| hex::encode_to_slice(self.0, out).ok().map(|_| &*out))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("");
        f(s)
    }
}

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

impl<const N: usize> Serialize for HexId<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_str(|v| s.serialize_str(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_hex() {
        assert_eq!(HexId([0xab, 0x01]).to_string(), "ab01");
        assert_eq!(
            serde_json::to_string(&HexId([0u8, 0xff])).unwrap(),
            "\"00ff\""
        );
    }
}
