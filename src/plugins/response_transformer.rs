//! `response-transformer` (response_filter, and the downstream module's body and done filters
//! through [`super::held_body`]): edits upstream answers.
//!
//! Headers: `remove`, `rename`, `replace` (an extension, Kong's), `add`, in that order, with
//! the request-transformer's semantics and variables, plus `$(latency)` (milliseconds from
//! the request head's arrival to this response head). Never applied to the gateway's own
//! answers (errors, preflights).
//!
//! Body: `remove.json`, `rename.json` (through every object and array, see
//! [`super::json_rewrite`]) and `envelope`. Pingora writes the response head before any
//! body filter runs, so the decision is made in `response_filter` from the head alone. The
//! body is rewritten only when all of these hold:
//! - a JSON rule or the envelope is configured;
//! - the request is not `HEAD`, the status is 2xx-5xx and not 204, 206 or 304;
//! - `Content-Type` is `application/json` or `application/*+json`;
//! - there is no `Content-Encoding` (other than `identity`);
//! - `Content-Length`, when present, is not 0 and not over `max_body_bytes` (counted, reason
//!   `too_large`).
//!
//! Then `Content-Length` is removed and `Transfer-Encoding: chunked` set (Pingora only adds
//! it itself before `response_filter`; HTTP/2 drops it), `Accept-Ranges` is removed and a
//! strong `ETag` is made weak. The `hand_off` hook then gives the rewrite
//! ([`Rewrite`]) to the downstream module, which collects the chunks and sends the new body
//! at the end of the stream: a body chunk with `end_of_stream`, or Pingora's `Done` for an
//! answer served from the cache after a revalidation or as stale on an upstream 5xx (which
//! `response_body_filter` never sees; see [`super::held_body`]). A chunked body that grows
//! past `max_body_bytes` is emitted as it came (what was held back, then the rest streamed)
//! and counted (`too_large`); a body that is not valid JSON leaves as it came
//! (`invalid_json`). Nothing is ever truncated.
//!
//! **Compressed answers fail closed.** A rule that masks fields (`remove.json`) is only worth
//! something if the gateway can read the body: a gzip body would carry the masked fields to
//! the client untouched (every browser sends `Accept-Encoding: gzip`). So a route with body
//! rules asks its upstream for the identity body (`upstream_request_filter`:
//! `Accept-Encoding: identity`, as response-compression does; the client still gets
//! compression from that plugin, after the rewrite), and an answer that would be rewritten
//! but arrives with a `Content-Encoding` anyway (an upstream ignoring `Accept-Encoding`) is
//! refused in `response_filter`: the client gets the gateway's JSON 502 instead of the body,
//! counted in `response_transform_refused_total{route}`.

use super::body_buf::Chunks;
use super::held_body::HeldBody;
use super::json_rewrite::{self, Envelope, JsonRules};
use super::request_transformer::{
    header_names, header_pairs_in, header_renames, split_entry, HeaderOps, Scope,
};
use crate::config::units::ByteSize;
use crate::ctx::RequestCtx;
use crate::ctx::Runtime;
use crate::plugins::{phase, Answer, Build, Hooks, Outcome};
use bytes::{Bytes, BytesMut};
use http::header;
use once_cell::sync::Lazy;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::IntCounterVec;
use serde::Deserialize;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Skips: bodies that could not be rewritten
// ---------------------------------------------------------------------------------------------

/// Why a JSON body passed through unmodified although rules apply to its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Over `max_body_bytes` (by Content-Length, or while buffering a chunked body).
    TooLarge,
    /// Declared JSON but not valid JSON (or nested deeper than the rewriter's limit).
    InvalidJson,
}

impl SkipReason {
    pub const ALL: [SkipReason; 2] = [SkipReason::TooLarge, SkipReason::InvalidJson];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TooLarge => "too_large",
            SkipReason::InvalidJson => "invalid_json",
        }
    }
}

/// `response_transform_skipped_total{route,reason}` and `response_transform_refused_total{route}`.
struct Families {
    skipped: IntCounterVec,
    refused: IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        skipped: r.counter_vec(
            "response_transform_skipped_total",
            "JSON bodies response-transformer passed through unmodified, by route and reason (too_large, invalid_json).",
            &["route", "reason"],
        ),
        refused: r.counter_vec(
            "response_transform_refused_total",
            "Upstream answers refused with 502 because their JSON body came encoded (Content-Encoding other than identity) to a route with response-transformer body rules.",
            &["route"],
        ),
    }
});

/// Counts a body passed through untouched: `response_transform_skipped_total{route,reason}`.
pub fn record_skip(route: &str, reason: SkipReason) {
    FAMILIES
        .skipped
        .with_label_values(&[route, reason.as_str()])
        .inc();
    tracing::debug!(
        route,
        reason = reason.as_str(),
        "response-transformer: body passed through unmodified"
    );
}

/// Counts an answer refused because its body came encoded although rules must read it:
/// `response_transform_refused_total{route}`.
fn record_refused(route: &str, encoding: &[u8]) {
    FAMILIES.refused.with_label_values(&[route]).inc();
    // Debug only: the 502 itself is logged as a failed proxy attempt, with its reason.
    tracing::debug!(
        route,
        content_encoding = %String::from_utf8_lossy(encoding),
        "response-transformer: upstream sent an encoded body despite Accept-Encoding: identity; answered 502"
    );
}

// ---------------------------------------------------------------------------------------------
// Per-response state (`RequestCtx::plugins.response_transformer`)
// ---------------------------------------------------------------------------------------------

/// What `response_filter` decided for this response's body.
#[derive(Debug, Default)]
pub enum BodyState {
    /// Not rewritten: chunks pass as they come.
    #[default]
    Stream,
    /// A `HEAD` request: the answer has no body, its head stays as it is.
    Head,
    /// To be rewritten; `hand_off` turns it into a [`Rewrite`].
    Rewrite {
        status: u16,
        /// Bytes to reserve once a second chunk arrives (the declared length when known).
        hint: usize,
    },
}

/// A body held back for the rewrite, in the downstream module ([`super::held_body`]).
#[derive(Debug)]
pub struct Rewrite {
    /// The body rules of the route's `response-transformer` entry.
    rules: Arc<BodyRewrite>,
    /// The request's config snapshot and route, for the route label of the skip counter.
    rt: Arc<Runtime>,
    route: Option<usize>,
    /// For the envelope's `meta.request_id` (empty when the envelope is off).
    request_id: String,
    status: u16,
    hint: usize,
    chunks: Chunks,
}

impl Rewrite {
    /// The rewrite `response` decided on for this request, if any (taken out of `ctx`).
    fn take(rules: &Arc<BodyRewrite>, ctx: &mut RequestCtx) -> Option<Rewrite> {
        let BodyState::Rewrite { status, hint } =
            std::mem::take(&mut ctx.plugins.response_transformer)
        else {
            return None;
        };
        let request_id = if rules.envelope.is_some() {
            ctx.request_id.clone()
        } else {
            String::new()
        };
        Some(Rewrite {
            rules: rules.clone(),
            rt: ctx.rt.clone(),
            route: ctx.route,
            request_id,
            status,
            hint,
            chunks: Chunks::Empty,
        })
    }

    fn route_name(&self) -> &str {
        self.route
            .and_then(|i| self.rt.routes.get(i))
            .map_or("", |r| r.name.as_str())
    }

    /// Body filter: collects `body`; at `end_of_stream` puts the new body in its place.
    /// Returns false once nothing is held any more: the stream ended, or the body outgrew
    /// `max_body_bytes`, and then what was held goes out as it came (the rest passes too).
    pub fn push(&mut self, body: &mut Option<Bytes>, end_of_stream: bool) -> bool {
        let max_body = self.rules.max_body;
        if let Some(b) = body.take() {
            let held = self.chunks.len();
            if held + b.len() > max_body {
                // Give up: what was held back goes out now, as it came, then the rest.
                let out = match std::mem::take(&mut self.chunks) {
                    Chunks::Empty => b,
                    held_back => {
                        let mut m = BytesMut::with_capacity(held + b.len());
                        m.extend_from_slice(&held_back.into_bytes());
                        m.extend_from_slice(&b);
                        m.freeze()
                    }
                };
                *body = Some(out);
                record_skip(self.route_name(), SkipReason::TooLarge);
                return false;
            }
            self.chunks.push(b, self.hint);
        }
        if !end_of_stream {
            return true;
        }
        let out = self.finish();
        // An empty chunk would end a chunked body early: send none instead.
        *body = (!out.is_empty()).then_some(out);
        false
    }

    /// The new body from everything collected (at the end of the stream, however it ends).
    pub fn finish(&mut self) -> Bytes {
        let input = std::mem::take(&mut self.chunks).into_bytes();
        self.rules
            .rewrite_as(input, self.status, &self.request_id, self.route_name())
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HeadersOnly {
    headers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HeadersAndJson {
    headers: Vec<String>,
    json: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EnvelopeCfg {
    enabled: bool,
    version: String,
}

impl Default for EnvelopeCfg {
    fn default() -> Self {
        EnvelopeCfg {
            enabled: false,
            version: "v1".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    add: HeadersOnly,
    remove: HeadersAndJson,
    rename: HeadersAndJson,
    replace: HeadersOnly,
    envelope: EnvelopeCfg,
    max_body_bytes: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            add: HeadersOnly::default(),
            remove: HeadersAndJson::default(),
            rename: HeadersAndJson::default(),
            replace: HeadersOnly::default(),
            envelope: EnvelopeCfg::default(),
            max_body_bytes: ByteSize(1024 * 1024),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ResponseTransformer {
    headers: HeaderOps,
    /// Shared with the [`Rewrite`]s in flight.
    rules: Arc<BodyRewrite>,
    /// A JSON rule or the envelope is configured.
    body: bool,
}

/// The body part of the config.
#[derive(Debug)]
struct BodyRewrite {
    json: JsonRules,
    /// The envelope's `version` as a JSON string literal, when the envelope is on.
    envelope: Option<Box<[u8]>>,
    max_body: usize,
}

/// `application/json` or `application/<anything>+json`, parameters ignored.
pub fn is_json(content_type: &[u8]) -> bool {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    let t = content_type[..end].trim_ascii();
    const APP: &[u8] = b"application/";
    if t.len() < APP.len() || !t[..APP.len()].eq_ignore_ascii_case(APP) {
        return false;
    }
    let sub = &t[APP.len()..];
    sub.eq_ignore_ascii_case(b"json")
        || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// The first `Content-Encoding` value other than `identity` (which is no coding at all).
fn encoded(resp: &ResponseHeader) -> Option<&[u8]> {
    resp.headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .find_map(|v| {
            let v = v.as_bytes().trim_ascii();
            (!v.is_empty() && !v.eq_ignore_ascii_case(b"identity")).then_some(v)
        })
}

fn content_length(resp: &ResponseHeader) -> Option<u64> {
    let v = resp.headers.get(header::CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

impl ResponseTransformer {
    /// The new body for `input` (or `input` itself when it is not JSON or nothing changes).
    pub fn rewrite(&self, input: Bytes, status: u16, ctx: &RequestCtx) -> Bytes {
        let route = ctx.route().map_or("", |r| r.name.as_str());
        self.rules.rewrite_as(input, status, &ctx.request_id, route)
    }
}

impl Hooks for ResponseTransformer {
    /// What `response_filter` decided for this response's body.
    type State = BodyState;
    const PHASES: u32 =
        phase::REQUEST | phase::UPSTREAM_REQUEST | phase::RESPONSE | phase::HAND_OFF;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let p = |op: &str, kind: &str| format!("{path}.config.{op}.{kind}");
        let headers = HeaderOps {
            remove: header_names(c, &p("remove", "headers"), &cfg.remove.headers),
            rename: header_renames(c, &p("rename", "headers"), &cfg.rename.headers),
            replace: header_pairs_in(
                c,
                &p("replace", "headers"),
                &cfg.replace.headers,
                Scope::Response,
            ),
            add: header_pairs_in(c, &p("add", "headers"), &cfg.add.headers, Scope::Response),
        };
        let mut renames = Vec::new();
        let mut entry_ok = true;
        for (i, e) in cfg.rename.json.iter().enumerate() {
            match split_entry(e).filter(|(_, to)| !to.is_empty()) {
                Some((from, to)) => renames.push((from.to_string(), to.to_string())),
                None => {
                    c.error(
                        &format!("{}[{i}]", p("rename", "json")),
                        format!("expected \"from:to\", got {e:?}"),
                    );
                    entry_ok = false;
                }
            }
        }
        let json = match JsonRules::new(&cfg.remove.json, &renames) {
            Ok(j) => j,
            Err((list, i, msg)) => {
                c.error(&format!("{}[{i}]", p(list, "json")), msg);
                return None;
            }
        };
        if !entry_ok {
            return None;
        }
        let envelope = if cfg.envelope.enabled {
            let mut v = Vec::new();
            json_rewrite::push_json_str(&mut v, &cfg.envelope.version);
            Some(v.into_boxed_slice())
        } else {
            None
        };
        let max_body = match usize::try_from(cfg.max_body_bytes.0) {
            Ok(n) if n > 0 => n,
            _ => {
                c.error(
                    &format!("{path}.config.max_body_bytes"),
                    "must be between 1 byte and the address space",
                );
                return None;
            }
        };
        Some(ResponseTransformer {
            body: !json.is_empty() || envelope.is_some(),
            headers,
            rules: Arc::new(BodyRewrite {
                json,
                envelope,
                max_body,
            }),
        })
    }
    /// `request_filter`: remember a `HEAD` request (its answer has no body).
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if self.body && session.req_header().method == http::Method::HEAD {
            ctx.plugins.response_transformer = BodyState::Head;
        }
        Outcome::Continue
    }
    /// `upstream_request_filter`: with body rules, ask for the identity body. The rules can
    /// only read an identity body, and a compressed one must not pass unmasked (see the
    /// module doc); response-compression compresses for the client after the rewrite.
    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &RequestCtx) -> Result<()> {
        if self.body {
            req.insert_header(header::ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }
    /// `response_filter`: header rules, and the decision to rewrite the body.
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if resp.gateway_made {
            return Ok(());
        }
        self.headers.apply(resp.head, ctx)?;
        if !self.body || matches!(ctx.plugins.response_transformer, BodyState::Head) {
            return Ok(());
        }
        let status = resp.status.as_u16();
        if !(200..600).contains(&status) || matches!(status, 204 | 206 | 304) {
            return Ok(());
        }
        let json = resp
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| is_json(v.as_bytes()));
        if !json {
            return Ok(());
        }
        let route = || ctx.route().map_or("", |r| r.name.as_str());
        let declared = content_length(resp);
        if declared == Some(0) {
            return Ok(());
        }
        if let Some(coding) = encoded(resp) {
            // Fail closed: the rules cannot read this body, and it must not leave unmasked.
            record_refused(route(), coding);
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "response-transformer: upstream answered with an encoded body",
            ));
        }
        match declared {
            Some(n) if n > self.rules.max_body as u64 => {
                record_skip(route(), SkipReason::TooLarge);
                return Ok(());
            }
            _ => {}
        }
        // Headers leave before the body: from here the length is unknown.
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        resp.remove_header(&header::ACCEPT_RANGES);
        if let Some(etag) = resp.headers.get(header::ETAG) {
            if etag.as_bytes().starts_with(b"\"") {
                let mut weak = Vec::with_capacity(etag.len() + 2);
                weak.extend_from_slice(b"W/");
                weak.extend_from_slice(etag.as_bytes());
                resp.insert_header(header::ETAG, weak)?;
            }
        }
        let hint = declared
            .map_or(64 * 1024, |n| n as usize)
            .min(self.rules.max_body);
        ctx.plugins.response_transformer = BodyState::Rewrite { status, hint };
        Ok(())
    }

    /// End of `response_filter`: gives the body rewrite decided on to the downstream
    /// module, which holds the body back until its end ([`super::held_body`]).
    fn hand_off(&self, session: &mut Session, resp: &ResponseHeader, ctx: &mut RequestCtx) {
        if let Some(r) = Rewrite::take(&self.rules, ctx) {
            super::held_body::hold(session, HeldBody::rewrite(resp, Box::new(r)));
        }
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// The skip and refusal series of `route` exist from the start (at 0).
    fn route_series(route: &str, create: bool) {
        let f = &*FAMILIES;
        for r in SkipReason::ALL {
            let labels = [route, r.as_str()];
            if create {
                f.skipped.with_label_values(&labels);
            } else {
                let _ = f.skipped.remove_label_values(&labels);
            }
        }
        if create {
            f.refused.with_label_values(&[route]);
        } else {
            let _ = f.refused.remove_label_values(&[route]);
        }
    }
}

impl BodyRewrite {
    /// [`ResponseTransformer::rewrite`] for the request with `request_id` on route `route`.
    fn rewrite_as(&self, input: Bytes, status: u16, request_id: &str, route: &str) -> Bytes {
        if input.is_empty() {
            return input;
        }
        let extra = if self.envelope.is_some() { 160 } else { 0 };
        let mut out = Vec::with_capacity(input.len() + extra);
        let result = match &self.envelope {
            Some(version_json) => {
                let ts = crate::util::clock::rfc3339_millis(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default(),
                );
                let env = Envelope {
                    success: status < 400,
                    request_id,
                    timestamp: &ts,
                    version_json,
                };
                env.open(&mut out);
                let r = self.json.rewrite(&input, &mut out);
                env.close(&mut out);
                r.map(|_| true)
            }
            None => self.json.rewrite(&input, &mut out),
        };
        match result {
            Ok(true) => Bytes::from(out),
            Ok(false) => input,
            Err(_) => {
                record_skip(route, SkipReason::InvalidJson);
                input
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for (content_type, json) in [
            (&b"application/json"[..], true),
            (b"application/json; charset=utf-8", true),
            (b"Application/JSON", true),
            (b"application/problem+json", true),
            (b"application/vnd.api+json;v=1", true),
            (b"text/plain", false),
            (b"text/json", false),
            (b"application/jsonp", false),
            (b"application/+json", false),
            (b"application/x-ndjson", false),
            (b"", false),
        ] {
            let shown = String::from_utf8_lossy(content_type);
            assert_eq!(is_json(content_type), json, "{shown}");
        }
    }
}
