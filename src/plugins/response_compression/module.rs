//! The downstream module of response-compression (Pingora's `init_downstream_modules`):
//! rewrites the head and encodes the body of an answer the plugin armed it for, after
//! running a body a plugin holds back until its end ([`crate::plugins::held_body`]).

use super::encoder::Encoder;
use super::negotiate::Algo;
use super::{content_length, encoded, Decision};
use crate::plugins::held_body::HeldBody;
use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, TRANSFER_ENCODING};
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::prelude::*;
use prometheus::{IntCounter, IntCounterVec};

/// `response_compressed_total{route,encoding}` and `response_compression_*_bytes_total{encoding}`
/// (`encoding`: the `Content-Encoding` tokens of [`Algo`]).
pub(super) struct Families {
    pub(super) compressed: IntCounterVec,
    pub(super) bytes_in: IntCounterVec,
    pub(super) bytes_out: IntCounterVec,
}

pub(super) static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        compressed: r.counter_vec(
            "response_compressed_total",
            "Answers response-compression compressed, by route and encoding (br, gzip, zstd).",
            &["route", "encoding"],
        ),
        bytes_in: r.counter_vec(
            "response_compression_in_bytes_total",
            "Identity body bytes response-compression encoded, by encoding.",
            &["encoding"],
        ),
        bytes_out: r.counter_vec(
            "response_compression_out_bytes_total",
            "Compressed body bytes response-compression produced, by encoding.",
            &["encoding"],
        ),
    }
});

/// Process-wide byte counters per algorithm (identity in, encoded out), resolved once.
static BYTES: Lazy<[(IntCounter, IntCounter); 3]> = Lazy::new(|| {
    Algo::ALL.map(|a| {
        (
            FAMILIES.bytes_in.with_label_values(&[a.token()]),
            FAMILIES.bytes_out.with_label_values(&[a.token()]),
        )
    })
});

/// Pingora downstream module: rewrites the head and encodes the body of an answer that
/// `hand_off` armed it for. Unarmed (every other answer, gateway-made ones included) it
/// does nothing. Before encoding, it runs the body a plugin holds back until its end
/// ([`HeldBody`], given by the `hand_off` of response-transformer or error-responses): one module must do both,
/// because Pingora never passes the bytes one module emits at `Done` through another's body
/// filter.
#[derive(Default)]
pub struct CompressionModule {
    pub(super) armed: Option<(Decision, Option<IntCounter>)>,
    encoder: Option<Box<Encoder>>,
    held: Option<HeldBody>,
}

impl CompressionModule {
    /// `response_filter` (the `hand_off` of response-transformer and error-responses): hold
    /// this answer's body back until its end.
    pub fn hold(&mut self, held: HeldBody) {
        self.held = Some(held);
    }

    /// Counts what the encoder consumed and produced (also for a client that went away).
    fn settle(&mut self) {
        if let Some(e) = self.encoder.take() {
            let (bytes_in, bytes_out) = e.totals();
            if let Some((i, o)) = BYTES.get(e.algo().index()) {
                i.inc_by(bytes_in);
                o.inc_by(bytes_out);
            }
        }
    }

    fn fail(&mut self, e: std::io::Error) -> Box<Error> {
        self.settle();
        tracing::warn!("response-compression: encoder failed: {e}");
        Error::because(
            ErrorType::InternalError,
            "response-compression encoder failed",
            e,
        )
    }
}

impl Drop for CompressionModule {
    fn drop(&mut self) {
        self.settle();
    }
}

#[async_trait::async_trait]
impl HttpModule for CompressionModule {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Result<()> {
        self.held = self
            .held
            .take()
            .and_then(|h| h.for_head(resp, end_of_stream));
        let Some((d, counter)) = self.armed.take() else {
            return Ok(());
        };
        // Only the head decided on, and only when a body follows (a head-only answer keeps
        // its framing headers).
        if end_of_stream || resp.status.as_u16() != d.status || encoded(resp) {
            return Ok(());
        }
        // The identity body's length (sizes the encoder's window, and zstd pledges it) from
        // the head as it leaves, not as it was decided on: error-responses, after this
        // plugin in the chain, may have replaced the body and its `Content-Length`.
        let encoder = match Encoder::new(d.algo, d.level, content_length(resp)) {
            Ok(e) => e,
            Err(e) => {
                // Nothing sent yet: the answer goes out uncompressed.
                tracing::warn!("response-compression: no {} encoder: {e}", d.algo.token());
                return Ok(());
            }
        };
        resp.insert_header(CONTENT_ENCODING, d.algo.token())?;
        // The length is known only at the end: chunked on HTTP/1.1 (HTTP/2 drops the header
        // and frames the body itself).
        resp.remove_header(&CONTENT_LENGTH);
        resp.insert_header(TRANSFER_ENCODING, "chunked")?;
        // Byte ranges of the compressed form are not offered.
        resp.remove_header(&ACCEPT_RANGES);
        // A strong ETag names the identity bytes; the compressed form is only semantically
        // equivalent (NGINX does the same).
        if let Some(etag) = resp.headers.get(ETAG) {
            if etag.as_bytes().starts_with(b"\"") {
                let mut weak = Vec::with_capacity(etag.len() + 2);
                weak.extend_from_slice(b"W/");
                weak.extend_from_slice(etag.as_bytes());
                resp.insert_header(ETAG, weak)?;
            }
        }
        if let Some(c) = counter {
            c.inc();
        }
        self.encoder = Some(Box::new(encoder));
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        if let Some(h) = self.held.as_mut() {
            if !h.filter(body, end_of_stream) {
                self.held = None;
            }
        }
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(());
        };
        let input = body.take();
        match enc.encode(input.as_deref().unwrap_or_default(), end_of_stream) {
            // An empty chunk would end a chunked body early: send none.
            Ok(out) => *body = (!out.is_empty()).then_some(out),
            Err(e) => return Err(self.fail(e)),
        }
        if end_of_stream {
            self.settle();
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        // Bodies served from the cache after a revalidation (or stale on error) end with
        // `Done` instead of an end-of-stream chunk: release what was held back and finish
        // the stream here.
        let tail = self.held.take().and_then(HeldBody::finish);
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(tail);
        };
        let out = match enc.encode(tail.as_deref().unwrap_or_default(), true) {
            Ok(out) => out,
            Err(e) => return Err(self.fail(e)),
        };
        self.settle();
        Ok((!out.is_empty()).then_some(out))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

pub(super) struct CompressionModuleBuilder;

impl HttpModuleBuilder for CompressionModuleBuilder {
    fn order(&self) -> i16 {
        // After other modules, like Pingora's own compression module.
        i16::MIN / 2
    }

    fn init(&self) -> Module {
        Box::<CompressionModule>::default()
    }
}
