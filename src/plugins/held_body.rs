//! Bodies held back until their end: response-transformer's JSON rewrite and error-responses'
//! replacement (`upstream: true`).
//!
//! Pingora phases: `response_filter` decides from the head (each plugin's `response` hook,
//! then its `hand_off`, which calls [`hold`]); the downstream module's header, body and done
//! filters
//! ([`crate::plugins::response_compression::CompressionModule`]) carry it out.
//!
//! **Why not in `response_body_filter`.** An answer served from the cache after a
//! revalidation (the upstream answered 304) or as stale on an upstream 5xx (`stale_if_error`)
//! ends with Pingora's `HttpTask::Done` instead of a body chunk with `end_of_stream`, and
//! `Done` never reaches `response_body_filter`: a body filter that holds the body back until
//! the end of the stream never learns that it ended, and the client got an empty body (or, for
//! error-responses' `Content-Length` head, a truncated answer). Only downstream modules see
//! `Done` (`response_done_filter`), so the held body lives in a module and is finished there.
//!
//! **Why in the compression module.** Pingora calls each module's `response_done_filter` on
//! its own and sends the bytes of the last one that returns any: bytes one module produces at
//! `Done` never pass through another module's body filter. A held body released at `Done`
//! must still be compressed, so the one module does both, in this order: this stage first,
//! then the encoder. (Body chunks pass the same order on every other path.)

use super::response_compression::CompressionModule;
use super::response_transformer::Rewrite;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A body the module holds back for one answer.
#[derive(Debug)]
pub struct HeldBody {
    /// Status of the head decided on: the module only applies it to that head.
    status: u16,
    /// The module's header filter saw the head: any later head is not this answer's.
    headed: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// response-transformer: chunks collected, the rewritten body sent at the end.
    Rewrite(Box<Rewrite>),
    /// error-responses: the upstream's chunks are dropped; this body is sent at the end.
    Replace(Bytes),
}

impl HeldBody {
    /// response-transformer's rewrite of the answer with head `resp`.
    pub fn rewrite(resp: &ResponseHeader, rewrite: Box<Rewrite>) -> HeldBody {
        HeldBody {
            status: resp.status.as_u16(),
            headed: false,
            kind: Kind::Rewrite(rewrite),
        }
    }

    /// error-responses' replacement of the body of the answer with head `resp`.
    pub fn replace(resp: &ResponseHeader, body: Bytes) -> HeldBody {
        HeldBody {
            status: resp.status.as_u16(),
            headed: false,
            kind: Kind::Replace(body),
        }
    }

    /// Module header filter: keeps the held body for the head it was decided on, when a
    /// body follows; drops it for any other head (an error answer written instead after a
    /// failure, a second head).
    pub fn for_head(mut self, resp: &ResponseHeader, end_of_stream: bool) -> Option<HeldBody> {
        if self.headed || end_of_stream || resp.status.as_u16() != self.status {
            return None;
        }
        self.headed = true;
        Some(self)
    }

    /// Module body filter: holds `body` back, and at `end_of_stream` puts the final body in
    /// its place. Returns false once nothing is held any more (the stream ended, or the
    /// rewrite gave up and the rest passes as it comes).
    pub fn filter(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> bool {
        match &mut self.kind {
            Kind::Rewrite(r) => r.push(body, end_of_stream),
            Kind::Replace(b) => {
                *body = if end_of_stream {
                    Some(std::mem::take(b)).filter(|b| !b.is_empty())
                } else {
                    None
                };
                !end_of_stream
            }
        }
    }

    /// Module done filter: the final body of a stream that ended with `Done`.
    pub fn finish(self) -> Option<Bytes> {
        let out = match self.kind {
            Kind::Rewrite(mut r) => r.finish(),
            Kind::Replace(b) => b,
        };
        // An empty chunk would end a chunked body early: send none instead.
        (!out.is_empty()).then_some(out)
    }
}

/// A plugin's `hand_off` (end of `response_filter`): the session's module holds this
/// answer's body back until its end. Only one body is held per answer: error-responses'
/// replacement cancels response-transformer's rewrite in its `response` hook already.
pub fn hold(session: &mut Session, held: HeldBody) {
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<CompressionModule>()
    {
        m.hold(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(body: &'static [u8]) -> HeldBody {
        HeldBody {
            status: 503,
            headed: false,
            kind: Kind::Replace(Bytes::from_static(body)),
        }
    }

    fn head(status: u16) -> ResponseHeader {
        ResponseHeader::build(status, None).unwrap()
    }

    #[test]
    fn only_the_head_decided_on_with_a_body() {
        assert!(replace(b"x").for_head(&head(200), false).is_none());
        assert!(replace(b"x").for_head(&head(503), true).is_none());
        let h = replace(b"x").for_head(&head(503), false).unwrap();
        // A second head (an error answer after a failure) is not this answer's.
        assert!(h.for_head(&head(503), false).is_none());
    }

    #[test]
    fn replacement_at_end_of_stream_or_done() {
        let mut h = replace(b"new").for_head(&head(503), false).unwrap();
        let mut b = Some(Bytes::from_static(b"old"));
        assert!(h.filter(&mut b, false));
        assert_eq!(b, None);
        let mut b = Some(Bytes::from_static(b"rest"));
        assert!(!h.filter(&mut b, true));
        assert_eq!(b.as_deref(), Some(&b"new"[..]));

        // Ended by `Done`: the upstream's chunks were dropped, the body comes from finish.
        let mut h = replace(b"new").for_head(&head(503), false).unwrap();
        let mut b = Some(Bytes::from_static(b"old"));
        assert!(h.filter(&mut b, false));
        assert_eq!(b, None);
        assert_eq!(h.finish().as_deref(), Some(&b"new"[..]));
        assert_eq!(replace(b"").finish(), None);
    }
}
