//! Collecting a body's chunks into one buffer, for the transformers that rewrite a whole
//! body: request-transformer's JSON body (read in `request_filter`, [`super::request_body`])
//! and response-transformer's (held back in the downstream module,
//! [`super::response_transformer::Rewrite`]).

use bytes::{Bytes, BytesMut};

/// Body chunks as they arrive.
#[derive(Debug, Default)]
pub(crate) enum Chunks {
    #[default]
    Empty,
    /// One chunk: kept as it is (no copy), the common case for small bodies.
    One(Bytes),
    Many(BytesMut),
}

impl Chunks {
    pub(crate) fn len(&self) -> usize {
        match self {
            Chunks::Empty => 0,
            Chunks::One(b) => b.len(),
            Chunks::Many(b) => b.len(),
        }
    }

    /// Appends `b`. On the second chunk a buffer of `capacity_hint` bytes (at least the two
    /// chunks) is allocated: the declared length when known, so it is not grown again.
    pub(crate) fn push(&mut self, b: Bytes, capacity_hint: usize) {
        *self = match std::mem::take(self) {
            Chunks::Empty => Chunks::One(b),
            Chunks::One(first) => {
                let mut m = BytesMut::with_capacity(capacity_hint.max(first.len() + b.len()));
                m.extend_from_slice(&first);
                m.extend_from_slice(&b);
                Chunks::Many(m)
            }
            Chunks::Many(mut m) => {
                m.extend_from_slice(&b);
                Chunks::Many(m)
            }
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Chunks::Empty => Bytes::new(),
            Chunks::One(b) => b,
            Chunks::Many(m) => m.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_join_without_copy_for_one() {
        let mut c = Chunks::default();
        assert_eq!(c.len(), 0);
        let one = Bytes::from_static(b"{\"a\":");
        c.push(one.clone(), 16);
        assert!(matches!(&c, Chunks::One(b) if b.as_ptr() == one.as_ptr()));
        c.push(Bytes::from_static(b"1}"), 16);
        assert!(matches!(&c, Chunks::Many(m) if m.capacity() >= 16));
        assert_eq!(c.len(), 7);
        assert_eq!(&c.into_bytes()[..], b"{\"a\":1}");
        assert!(Chunks::default().into_bytes().is_empty());
    }
}
