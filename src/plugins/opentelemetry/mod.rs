//! `opentelemetry` (Kong's name): W3C Trace Context propagation and, optionally, one OTLP
//! server span per request.
//!
//! Pingora phases served:
//! - `request_filter` ([`OpenTelemetry::request`], first in the plugin order, so refusals by
//!   auth and limit plugins are traced too): reads `traceparent`/`tracestate`, keeps the
//!   incoming trace id or starts a trace, makes the gateway's span id and decides sampling;
//!   answers the gateway makes before any plugin runs (404 without a route, 400/414/431 from
//!   `early_request_filter`) start the trace in the `before_answer` hook (called by
//!   `errors::respond`) when the plugin is global;
//! - `upstream_request_filter`: sends `traceparent: 00-<trace id>-<gateway span id>-<flags>`
//!   and the kept `tracestate` upstream;
//! - `response_filter` and gateway-made answers: the trace id in
//!   `http_response_header_for_traceid` when configured;
//! - `logging`: encodes the span and hands it to [`export`] (never blocking);
//!   the access log writes `trace_id` (`RequestCtx::trace_id`, set with the trace).
//!
//! **Parsing** follows W3C Trace Context level 1, strictly: `traceparent` must be exactly
//! `00-` + 32 lowercase hex (not all zero) + `-` + 16 lowercase hex (not all zero) + `-` + 2
//! lowercase hex; anything else, another version, or the header given twice is treated as
//! absent, and the trace restarts (a new random trace id; the incoming `tracestate` is then
//! dropped, it belongs to another trace). `tracestate` is passed through as received (several
//! header lines joined with `,`), bounded to 512 characters and 32 list members as the spec
//! allows: members over 128 characters go first, then members from the end.
//!
//! **Sampling** is parent-based: with a valid `traceparent` its sampled flag decides; a new
//! trace is sampled when the low 64 bits of its trace id fall under `sampling_ratio` (the
//! OpenTelemetry `TraceIdRatioBased` rule, so every hop with the same ratio agrees). The
//! decision is the flag sent upstream; a sampled request is exported when an `endpoint` is
//! set.
//!
//! **Why not the OpenTelemetry SDK crates.** The SDK builds a `SpanData` per span (owned
//! strings, a `Vec<KeyValue>`, events, links, an `InstrumentationScope`), runs its own batch
//! span processor with its own thread or runtime and a global tracer provider, and its OTLP
//! exporter brings protobuf/tonic or a pinned HTTP client. The gateway emits exactly one span
//! kind with a fixed attribute set from data it already has in the request context, and its
//! exporter must follow config reloads (keyed by settings, see [`export`]). So the span is
//! serialized here straight from borrowed request data into one `Vec<u8>` of OTLP JSON (the
//! only allocation per exported span), batched by a small task of our own, and POSTed with
//! the `reqwest` client the gateway already has: no new crate, no per-span object graph, and
//! nothing at all for requests that are not sampled. OTLP JSON details honoured: trace and
//! span ids are hex strings, enums are integers, 64-bit integers and times (unix nanoseconds)
//! are strings.
//!
//! With the plugin absent nothing here runs: `RequestCtx::trace_id` stays `None`, a
//! client's `traceparent` passes through untouched and the access log has no `trace_id`.

use super::{phase, Answer, Build, Hooks, Outcome};
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
mod export;
mod span;

use crate::observe::Finished;
use crate::util::hex_id::HexId;
use export::{ExportSettings, Exporter};
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use span::encode_span;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` passed on (W3C: propagate at least 512 characters).
pub const TRACESTATE_MAX_LEN: usize = 512;
/// Most `tracestate` list members (W3C).
pub const TRACESTATE_MAX_MEMBERS: usize = 32;
/// Members longer than this are the first dropped when `tracestate` is too long (W3C).
const TRACESTATE_LONG_MEMBER: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// OTLP/HTTP traces endpoint; absent: propagation only.
    endpoint: Option<String>,
    headers: BTreeMap<String, String>,
    #[serde(alias = "sampling_rate")]
    sampling_ratio: f64,
    batch_span_count: usize,
    batch_flush_delay: Dur,
    queue_size: usize,
    connect_timeout: Dur,
    timeout: Dur,
    resource_attributes: BTreeMap<String, String>,
    http_response_header_for_traceid: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoint: None,
            headers: BTreeMap::new(),
            sampling_ratio: 1.0,
            batch_span_count: 200,
            batch_flush_delay: Dur::secs(3),
            queue_size: 2048,
            connect_timeout: Dur::secs(1),
            timeout: Dur::secs(5),
            resource_attributes: BTreeMap::new(),
            http_response_header_for_traceid: None,
        }
    }
}

/// Largest `queue_size` accepted (spans are up to a few KB each).
const MAX_QUEUE: usize = 1_000_000;

/// How new traces are sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sampler {
    Always,
    Never,
    /// Sampled when the trace id's low 64 bits are below this.
    Below(u64),
}

impl Sampler {
    fn from_ratio(r: f64) -> Sampler {
        if r >= 1.0 {
            Sampler::Always
        } else if r <= 0.0 {
            Sampler::Never
        } else {
            Sampler::Below((r * u64::MAX as f64) as u64)
        }
    }

    fn sampled(self, trace_id: &[u8; 16]) -> bool {
        match self {
            Sampler::Always => true,
            Sampler::Never => false,
            Sampler::Below(t) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(trace_id.get(8..16).unwrap_or(&[0; 8]));
                u64::from_be_bytes(low) < t
            }
        }
    }
}

#[derive(Debug)]
pub struct OpenTelemetry {
    sampler: Sampler,
    response_header: Option<HeaderName>,
    /// `None`: propagation only.
    exporter: Option<Arc<Exporter>>,
}

/// The trace of one request (`RequestCtx::plugins.opentelemetry`).
#[derive(Debug, Clone)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    /// The gateway's span, the parent of what the upstream does.
    pub span_id: [u8; 8],
    /// The caller's span, from a valid incoming `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// Sampled and an endpoint is configured: a span is exported at the end.
    pub export: bool,
    pub tracestate: Option<HeaderValue>,
    /// Wall-clock start of the request (unix nanoseconds).
    pub start_unix_ns: u64,
}

impl TraceCtx {
    pub fn trace_hex(&self) -> HexId<16> {
        HexId(self.trace_id)
    }

    /// `00-<trace id>-<span id>-<flags>` for the upstream.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

/// A parsed, valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex of exactly `2 * N` digits.
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [h, l] => (hex_digit(*h)?, hex_digit(*l)?),
            _ => return None,
        };
        *o = (hi << 4) | lo;
    }
    Some(out)
}

/// Parses a `traceparent` value strictly (version `00` only, see the module doc).
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() != 55 {
        return None;
    }
    let mut parts = v.split(|b| *b == b'-');
    let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if version != b"00" {
        return None;
    }
    let trace_id: [u8; 16] = decode_hex(trace)?;
    let parent_id: [u8; 8] = decode_hex(parent)?;
    let [flags]: [u8; 1] = decode_hex(flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The one `traceparent` of a request: a repeated header is invalid.
fn incoming_traceparent(h: &http::HeaderMap) -> Option<TraceParent> {
    let mut all = h.get_all(TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    parse_traceparent(first.as_bytes())
}

/// `tracestate` to pass on: the received value when it fits (no copy), else the members
/// joined and truncated as W3C allows. `None` when empty.
pub fn bounded_tracestate(h: &http::HeaderMap) -> Option<HeaderValue> {
    let mut all = h.get_all(TRACESTATE).iter();
    let first = all.next()?;
    let more = all.next().is_some();
    if !more && first.len() <= TRACESTATE_MAX_LEN {
        let members = first.as_bytes().split(|b| *b == b',').count();
        if members <= TRACESTATE_MAX_MEMBERS && !first.as_bytes().trim_ascii().is_empty() {
            return Some(first.clone());
        }
    }
    // Several lines, or too long: list members, then the W3C truncation order.
    let mut members: Vec<&[u8]> = h
        .get_all(TRACESTATE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|m| !m.is_empty())
        .collect();
    let total = |m: &[&[u8]]| m.iter().map(|x| x.len()).sum::<usize>() + m.len().saturating_sub(1);
    if total(&members) > TRACESTATE_MAX_LEN {
        members.retain(|m| m.len() <= TRACESTATE_LONG_MEMBER);
    }
    while members.len() > TRACESTATE_MAX_MEMBERS || total(&members) > TRACESTATE_MAX_LEN {
        members.pop();
    }
    if members.is_empty() {
        return None;
    }
    let joined = members.join(&b","[..]);
    HeaderValue::from_bytes(&joined).ok()
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl OpenTelemetry {
    /// Continues the incoming trace or starts one (once per request).
    pub fn begin(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        if ctx.plugins.opentelemetry.is_some() {
            return;
        }
        let (trace_id, parent_id, sampled, tracestate) = match incoming_traceparent(&req.headers) {
            Some(tp) => (
                tp.trace_id,
                Some(tp.parent_id),
                tp.flags & 1 == 1,
                bounded_tracestate(&req.headers),
            ),
            None => {
                let id = new_trace_id();
                (id, None, self.sampler.sampled(&id), None)
            }
        };
        let start = SystemTime::now()
            .checked_sub(ctx.started.elapsed())
            .unwrap_or_else(SystemTime::now);
        ctx.trace_id = Some(HexId(trace_id));
        ctx.plugins.opentelemetry = Some(TraceCtx {
            trace_id,
            span_id: new_span_id(),
            parent_id,
            sampled,
            export: sampled && self.exporter.is_some(),
            tracestate,
            start_unix_ns: unix_nanos(start),
        });
    }
}

impl Hooks for OpenTelemetry {
    /// This request's trace (`None` until the plugin started it).
    type State = Option<TraceCtx>;
    const PHASES: u32 = phase::REQUEST
        | phase::UPSTREAM_REQUEST
        | phase::RESPONSE
        | phase::BEFORE_ANSWER
        | phase::LOGGING;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let p = |k: &str| format!("{path}.config.{k}");
        let mut ok = true;
        if !(0.0..=1.0).contains(&cfg.sampling_ratio) {
            c.error(&p("sampling_ratio"), "must be between 0.0 and 1.0");
            ok = false;
        }
        if cfg.batch_span_count == 0 {
            c.error(&p("batch_span_count"), "must be at least 1");
            ok = false;
        }
        if cfg.queue_size == 0 || cfg.queue_size > MAX_QUEUE {
            c.error(
                &p("queue_size"),
                format!("must be between 1 and {MAX_QUEUE}"),
            );
            ok = false;
        }
        for (k, d) in [
            ("timeout", cfg.timeout.0),
            ("connect_timeout", cfg.connect_timeout.0),
        ] {
            if d.is_zero() {
                c.error(&p(k), "must be greater than 0");
                ok = false;
            }
        }
        let response_header = match &cfg.http_response_header_for_traceid {
            None => None,
            Some(n) if n.is_empty() => None,
            Some(n) => match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    c.error(
                        &p("http_response_header_for_traceid"),
                        "invalid header name",
                    );
                    ok = false;
                    None
                }
            },
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            match (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.insert(n, v);
                }
                // The value is a credential: never echoed.
                _ => {
                    c.error(&p(&format!("headers.{k}")), "invalid header name or value");
                    ok = false;
                }
            }
        }
        let endpoint = match &cfg.endpoint {
            None => None,
            Some(e) => match reqwest::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    Some(u)
                }
                _ => {
                    c.error(
                        &p("endpoint"),
                        "invalid endpoint (expected an http:// or https:// URL such as http://collector:4318/v1/traces)",
                    );
                    ok = false;
                    None
                }
            },
        };
        if endpoint.is_none() && cfg.endpoint.is_none() && !cfg.headers.is_empty() {
            c.error(&p("headers"), "applies only with an endpoint");
            ok = false;
        }
        if !ok {
            return None;
        }
        let mut resource_attributes: Vec<(String, String)> = Vec::new();
        if !cfg.resource_attributes.contains_key("service.name") {
            resource_attributes.push(("service.name".into(), "gatehouse".into()));
        }
        resource_attributes.extend(cfg.resource_attributes);
        let exporter = endpoint.map(|endpoint| {
            export::exporter(
                env.registry,
                ExportSettings {
                    endpoint,
                    headers,
                    connect_timeout: cfg.connect_timeout.0,
                    timeout: cfg.timeout.0,
                    batch_span_count: cfg.batch_span_count,
                    batch_flush_delay: cfg.batch_flush_delay.0,
                    queue_size: cfg.queue_size,
                    resource_attributes,
                },
            )
        });
        Some(OpenTelemetry {
            sampler: Sampler::from_ratio(cfg.sampling_ratio),
            response_header,
            exporter,
        })
    }
    /// `request_filter`: starts the request's trace.
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        self.begin(session.req_header(), ctx);
        Outcome::Continue
    }
    /// For answers the gateway makes before the plugin's `request_filter` ran (no route,
    /// early refusals): starts the trace so the answer, its access-log line and its span
    /// carry it (nothing when the trace exists).
    fn before_answer(&self, session: &Session, ctx: &mut RequestCtx) {
        self.begin(session.req_header(), ctx);
    }
    /// `logging`: encodes the request's server span and queues it for export (when the
    /// trace is sampled and the plugin has an endpoint).
    fn logging(&self, session: &Session, ctx: &mut RequestCtx, done: &Finished) {
        let Some(t) = ctx.plugins.opentelemetry.as_ref().filter(|t| t.export) else {
            return;
        };
        let Some(exporter) = &self.exporter else {
            return;
        };
        let end = t
            .start_unix_ns
            .saturating_add(u64::try_from(done.elapsed.as_nanos()).unwrap_or(u64::MAX));
        exporter.submit(encode_span(session, ctx, t, done.status, end, done.error));
    }
    /// `upstream_request_filter`: the gateway's span becomes the upstream's parent.
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        let Some(t) = &ctx.plugins.opentelemetry else {
            return Ok(());
        };
        let tp = HeaderValue::from_bytes(&t.traceparent())
            .map_err(|_| crate::errors::status_error(500, "traceparent"))?;
        req.insert_header(TRACEPARENT, tp)?;
        match &t.tracestate {
            Some(ts) => {
                req.insert_header(TRACESTATE, ts.clone())?;
            }
            None => {
                req.remove_header(TRACESTATE);
            }
        }
        Ok(())
    }
    /// `response_filter` and gateway-made answers: the trace id for the client, if asked.
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if let (Some(name), Some(t)) = (&self.response_header, &ctx.plugins.opentelemetry) {
            let v = t.trace_hex().with_str(HeaderValue::from_str);
            if let Ok(v) = v {
                resp.insert_header(name.clone(), v)?;
            }
        }
        Ok(())
    }

    fn register_metrics() {
        export::register_metrics();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_valid_traceparents() {
        let tp = parse_traceparent(VALID.as_bytes()).expect("spec example");
        assert_eq!(hex::encode(tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(tp.parent_id), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        let tp = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
            .expect("not sampled");
        assert_eq!(tp.flags, 0);
        // Unknown flag bits are kept in the parse (only bit 0 is used).
        let tp = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09")
            .expect("other flags");
        assert_eq!(tp.flags, 9);
    }

    #[test]
    fn w3c_invalid_traceparents() {
        let bad: &[&str] = &[
            "",
            "00",
            // version: only 00; ff is forbidden; higher versions refused here (strict)
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // not hex
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-.1",
            // lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // version 00 allows nothing after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // separators and whitespace
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7 01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736--0f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b.as_bytes()), None, "accepted {b:?}");
        }
    }

    #[test]
    fn repeated_traceparent_is_invalid() {
        let mut h = http::HeaderMap::new();
        h.append(TRACEPARENT, VALID.parse().unwrap());
        assert!(incoming_traceparent(&h).is_some());
        h.append(TRACEPARENT, VALID.parse().unwrap());
        assert!(incoming_traceparent(&h).is_none());
    }

    #[test]
    fn traceparent_out_round_trips() {
        let t = TraceCtx {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_id: None,
            sampled: true,
            export: false,
            tracestate: None,
            start_unix_ns: 0,
        };
        let out = t.traceparent();
        let s = std::str::from_utf8(&out).unwrap();
        assert_eq!(s, "00-abababababababababababababababab-0101010101010101-01");
        let back = parse_traceparent(&out).unwrap();
        assert_eq!(back.trace_id, t.trace_id);
        assert_eq!(back.parent_id, t.span_id);
        let t = TraceCtx {
            sampled: false,
            ..t
        };
        assert!(std::str::from_utf8(&t.traceparent())
            .unwrap()
            .ends_with("-00"));
        assert_eq!(t.trace_hex().to_string(), "ab".repeat(16));
        assert_eq!(
            serde_json::to_string(&HexId([0u8, 1, 0xfe])).unwrap(),
            "\"0001fe\""
        );
    }

    #[test]
    fn tracestate_is_kept_and_bounded() {
        let ts = |vals: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in vals {
                h.append(TRACESTATE, v.parse().unwrap());
            }
            bounded_tracestate(&h).map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(ts(&[]), None);
        assert_eq!(ts(&[""]), None);
        assert_eq!(
            ts(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(
            ts(&["rojo=1", "congo=2"]).as_deref(),
            Some("rojo=1,congo=2"),
            "lines joined"
        );
        // Too long: the long member goes first, then members from the end.
        let long = format!("big={}", "x".repeat(200));
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        let v = ts(&[&format!("a=1,{long},b=2")]).unwrap();
        assert_eq!(v.len(), "a=1,b=2".len() + 1 + long.len(), "fits: untouched");
        let huge = format!("a=1,{long},{long},{long},b=2");
        assert_eq!(ts(&[&huge]).as_deref(), Some("a=1,b=2"));
        let v = ts(&[&many.join(",")]).unwrap();
        assert_eq!(v.split(',').count(), TRACESTATE_MAX_MEMBERS);
        assert!(v.starts_with("k0=v,k1=v"));
        let wide: Vec<String> = (0..30)
            .map(|i| format!("k{i}={}", "y".repeat(40)))
            .collect();
        let v = ts(&[&wide.join(",")]).unwrap();
        assert!(v.len() <= TRACESTATE_MAX_LEN && v.starts_with("k0="), "{v}");
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let id = |low: u64| {
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&low.to_be_bytes());
            t[0] = 1;
            t
        };
        assert!(Sampler::from_ratio(1.0).sampled(&id(u64::MAX)));
        assert!(!Sampler::from_ratio(0.0).sampled(&id(0)));
        let half = Sampler::from_ratio(0.5);
        assert!(half.sampled(&id(1)));
        assert!(!half.sampled(&id(u64::MAX - 1)));
        let n = (0..10_000)
            .filter(|_| half.sampled(&new_trace_id()))
            .count();
        assert!((4_000..6_000).contains(&n), "about half sampled: {n}");
    }
}
