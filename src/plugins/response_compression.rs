//! `response-compression` (NGINX `gzip on`, for br, gzip and zstd): compresses upstream
//! answers, cached ones included, for clients that accept it.
//!
//! Pingora phases:
//!
//! | phase                     | here |
//! |---------------------------|------|
//! | `request_filter`          | `request`: negotiates the coding from `Accept-Encoding` ([`negotiate`]) |
//! | `upstream_request_filter` | `upstream_request`: `Accept-Encoding: identity` upstream (`identity_upstream`) |
//! | `cache_vary_filter`       | [`State::ignores_accept_encoding`] (read by proxy-cache): the upstream's `Vary: Accept-Encoding` does not split cache objects |
//! | `response_filter`         | `response`: decides from the head (after response-transformer), adds `Vary`; `hand_off` arms the module |
//! | `init_downstream_modules` | installs [`CompressionModule`] |
//! | downstream module header / body / done filters | [`CompressionModule`]: rewrites the head, encodes every chunk, finishes the stream |
//! | (same module, before the encoder) | [`crate::plugins::held_body`]: response-transformer's rewrite and error-responses' replacement, held back until the end |
//!
//! **Why a Pingora downstream module does the encoding.** The module filters run after every
//! `response_body_filter` (so the final body is compressed: after response-transformer's JSON
//! rewrite, which this module runs first, see [`crate::plugins::held_body`]), on every path
//! an answer takes: proxied, cache hit, and served from the cache after a revalidation or on
//! `stale_if_error`. That last path ends the body with
//! Pingora's `Done` task, which only modules see (`response_done_filter`); a body filter
//! would never learn that the stream ended and could not write the compressed trailer. The
//! module also learns whether the head is the whole answer (`end_of_stream`), so the head is
//! only rewritten when a body follows. It replaces Pingora's default (disabled) compression
//! module, so a request costs the same module allocation as before.
//!
//! **Why not Pingora's `ResponseCompressionCtx`.** Its `Accept-Encoding` parser ignores
//! q-values (`gzip;q=0` counts as gzip) and picks the client's first coding rather than a
//! server preference; its encoders never flush between chunks (a slow stream is held back
//! until the encoder's buffers fill), its brotli stream ends with a flush instead of the
//! final meta-block, and it has one level for all algorithms. The encoders here are thin
//! wrappers over the same crates (flate2 with zlib-ng, brotli, zstd).
//!
//! **Streaming.** Every chunk is compressed and flushed (`Z_SYNC_FLUSH`, brotli
//! `BROTLI_OPERATION_FLUSH`, `ZSTD_e_flush`) as it arrives, like NGINX with
//! `proxy_buffering off`: nothing is held back beyond the encoder's bounded window, and
//! every byte the upstream sent reaches the client without waiting for more.

use crate::config::compile::Compiler;
use crate::config::units::ByteSize;
use crate::ctx::RequestCtx;
use crate::plugins::held_body::HeldBody;
use crate::plugins::{phase, BuildEnv, Hooks, Outcome};
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method};
use once_cell::sync::Lazy;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::{IntCounter, IntCounterVec};
use serde::Deserialize;
use std::io::Write;

// ---------------------------------------------------------------------------------------------
// Algorithms
// ---------------------------------------------------------------------------------------------

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Br,
    Gzip,
    Zstd,
}

impl Algo {
    pub const ALL: [Algo; 3] = [Algo::Br, Algo::Gzip, Algo::Zstd];

    /// The `Content-Encoding` / `Accept-Encoding` token (and the `encoding` metric label).
    pub fn token(self) -> &'static str {
        match self {
            Algo::Br => "br",
            Algo::Gzip => "gzip",
            Algo::Zstd => "zstd",
        }
    }

    fn from_token(s: &str) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.token() == s)
    }

    /// Valid levels: gzip 1-9, brotli 0-11, zstd 1-19 (20-22 need a large window per
    /// response).
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Algo::Br => 0..=11,
            Algo::Gzip => 1..=9,
            Algo::Zstd => 1..=19,
        }
    }

    fn index(self) -> usize {
        match self {
            Algo::Br => 0,
            Algo::Gzip => 1,
            Algo::Zstd => 2,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accept-Encoding negotiation (RFC 9110 section 12.5.3)
// ---------------------------------------------------------------------------------------------

/// q-values in thousandths (`q=0.5` is 500).
type Q = u16;
const Q_ONE: Q = 1000;

/// Parses a qvalue: `0`, `0.x` up to three decimals, `1`, `1.0`... Anything else is `None`.
fn parse_q(v: &[u8]) -> Option<Q> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(p) => (&v[..p], &v[p + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Q = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| Q::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(Q_ONE),
        _ => None,
    }
}

/// What one `Accept-Encoding` (all its field lines) says, before the server's preference.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Explicit q per [`Algo::index`].
    algos: [Option<Q>; 3],
    star: Option<Q>,
    identity: Option<Q>,
}

impl Accepted {
    /// Reads every `Accept-Encoding` value. Codings are case-insensitive; `x-gzip` is
    /// `gzip` (RFC 9110 8.4.1.3); parameters other than `q` are ignored; an element with an
    /// invalid q is ignored; a coding listed twice keeps its lowest q (a client contradicting
    /// itself is taken at its most restrictive).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Accepted {
        let mut acc = Accepted::default();
        for value in values {
            for element in value.split(|&b| b == b',') {
                let mut parts = element.split(|&b| b == b';');
                let coding = parts.next().unwrap_or_default().trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                let mut q = Some(Q_ONE);
                for p in parts {
                    let Some(eq) = p.iter().position(|&b| b == b'=') else {
                        continue;
                    };
                    if p[..eq].trim_ascii().eq_ignore_ascii_case(b"q") {
                        q = parse_q(p[eq + 1..].trim_ascii());
                    }
                }
                let Some(q) = q else {
                    continue;
                };
                let slot = if coding.eq_ignore_ascii_case(b"gzip")
                    || coding.eq_ignore_ascii_case(b"x-gzip")
                {
                    &mut acc.algos[Algo::Gzip.index()]
                } else if coding.eq_ignore_ascii_case(b"br") {
                    &mut acc.algos[Algo::Br.index()]
                } else if coding.eq_ignore_ascii_case(b"zstd") {
                    &mut acc.algos[Algo::Zstd.index()]
                } else if coding == b"*" {
                    &mut acc.star
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    &mut acc.identity
                } else {
                    continue;
                };
                *slot = Some(slot.map_or(q, |old| old.min(q)));
            }
        }
        acc
    }

    /// The q the client gives `a`: its own entry, else `*`'s, else 0 (not acceptable).
    pub fn q(&self, a: Algo) -> Q {
        self.algos[a.index()].or(self.star).unwrap_or(0)
    }

    /// The coding to send: the acceptable one (q > 0) with the highest q, ties broken by
    /// `preference` (the configured `algorithms`, best first); `None` for identity. Identity
    /// wins over every coding only when the client names it with a strictly higher q
    /// (`identity, gzip;q=0.5`): unnamed, it is merely always acceptable. `identity;q=0` or
    /// `*;q=0` never force a coding the client did not accept: the answer then goes out
    /// uncompressed, as NGINX does (406 would help nobody).
    pub fn choose(&self, preference: &[Algo]) -> Option<Algo> {
        let mut best: Option<(Algo, Q)> = None;
        for &a in preference {
            let q = self.q(a);
            if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
                best = Some((a, q));
            }
        }
        let (algo, q) = best?;
        match self.identity {
            Some(iq) if iq > q => None,
            _ => Some(algo),
        }
    }
}

/// The coding for a request's `Accept-Encoding` header lines (none: no coding).
pub fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    preference: &[Algo],
) -> Option<Algo> {
    Accepted::parse(values.into_iter().map(HeaderValue::as_bytes)).choose(preference)
}

// ---------------------------------------------------------------------------------------------
// Content types
// ---------------------------------------------------------------------------------------------

/// One entry of `types`, lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TypePattern {
    /// `application/json`
    Exact(Box<[u8]>),
    /// `text/*`: the type with its slash (`text/`).
    AnySubtype(Box<[u8]>),
    /// `application/*+json`: the type with its slash and the suffix with its plus.
    Suffix(Box<[u8]>, Box<[u8]>),
    /// `*/*` or `*`
    Any,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

impl TypePattern {
    fn parse(s: &str) -> Result<TypePattern, String> {
        let t = s.trim().to_ascii_lowercase();
        if t == "*" || t == "*/*" {
            return Ok(TypePattern::Any);
        }
        let bad = || {
            format!(
                "invalid media type {s:?} (expected type/subtype, type/*, type/*+suffix or */*)"
            )
        };
        let (ty, sub) = t.split_once('/').ok_or_else(bad)?;
        if !is_token(ty) {
            return Err(bad());
        }
        let prefix = format!("{ty}/").into_bytes().into_boxed_slice();
        if sub == "*" {
            return Ok(TypePattern::AnySubtype(prefix));
        }
        if let Some(suffix) = sub.strip_prefix("*+") {
            if !is_token(suffix) {
                return Err(bad());
            }
            return Ok(TypePattern::Suffix(
                prefix,
                format!("+{suffix}").into_bytes().into_boxed_slice(),
            ));
        }
        if !is_token(sub) {
            return Err(bad());
        }
        Ok(TypePattern::Exact(t.into_bytes().into_boxed_slice()))
    }

    /// `media` is the type/subtype without parameters, trimmed (any case).
    fn matches(&self, media: &[u8]) -> bool {
        fn starts(m: &[u8], p: &[u8]) -> bool {
            m.len() >= p.len() && m[..p.len()].eq_ignore_ascii_case(p)
        }
        match self {
            TypePattern::Any => true,
            TypePattern::Exact(e) => media.eq_ignore_ascii_case(e),
            TypePattern::AnySubtype(p) => media.len() > p.len() && starts(media, p),
            TypePattern::Suffix(p, s) => {
                media.len() > p.len() + s.len()
                    && starts(media, p)
                    && media[media.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// The media type of a `Content-Type` value: before any `;`, trimmed.
fn media_type(content_type: &[u8]) -> &[u8] {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    content_type[..end].trim_ascii()
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Default `types`: what APIs and their browser clients send as text. `text/*` includes
/// `text/event-stream`, which works because every chunk is flushed.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Levels {
    br: u32,
    gzip: u32,
    zstd: u32,
}

/// Default levels, from `benches/compression.rs` (200 KB of JSON): br 4 is the smallest output
/// at about gzip's CPU cost (Cloudflare's level for dynamic brotli); gzip 5 is as small as 6
/// for 25% less CPU; zstd 3 is zstd's own default.
impl Default for Levels {
    fn default() -> Self {
        Levels {
            br: 4,
            gzip: 5,
            zstd: 3,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    algorithms: Vec<String>,
    types: Vec<String>,
    min_size: ByteSize,
    levels: Levels,
    identity_upstream: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // zstd first: at level 3 it costs a quarter of br 4's CPU and under a third of
            // gzip 5's on a 200 KB body (half of br's on 2 KB) and its output is a third
            // smaller than gzip's; br next for clients without zstd (Safari), gzip for
            // everything else (most HTTP libraries). See docs/config.md for the figures.
            algorithms: ["zstd", "br", "gzip"].map(String::from).to_vec(),
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            min_size: ByteSize(1024),
            levels: Levels::default(),
            identity_upstream: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ResponseCompression {
    /// The configured `algorithms`, best first, without repeats (never empty).
    preference: Vec<Algo>,
    types: Vec<TypePattern>,
    min_size: u64,
    /// Per [`Algo::index`].
    levels: [u32; 3],
    identity_upstream: bool,
}

/// Per-request state (`RequestCtx::plugins.response_compression`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct State {
    step: Step,
    /// The upstream is asked for identity bodies (`identity_upstream`).
    identity_upstream: bool,
}

impl State {
    /// For `cache_vary_filter`: the route asks its upstream for identity bodies, so an
    /// upstream `Vary: Accept-Encoding` says nothing about this request (every request
    /// reached the upstream with the same `Accept-Encoding`) and must not split the cache
    /// into one object per client `Accept-Encoding` string.
    pub fn ignores_accept_encoding(&self) -> bool {
        self.identity_upstream
    }
}

/// Where this request's answer stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// No compression for this request (no plugin, `HEAD`, already decided against).
    #[default]
    Off,
    /// `request_filter` ran: the coding the client gets if the answer qualifies (`None`:
    /// identity, but a compressible answer still gets `Vary: Accept-Encoding`).
    Negotiated(Option<Algo>),
    /// `response_filter` decided to compress; `hand_off` gives it to the module.
    Decided(Decision),
}

/// A decision made from the response head, carried out by [`CompressionModule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub algo: Algo,
    pub level: u32,
    /// Status of the head decided on: the module leaves any other head alone.
    pub status: u16,
}

fn content_length(resp: &ResponseHeader) -> Option<u64> {
    let v = resp.headers.get(CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// `Content-Encoding` other than `identity` (which is not a content coding at all).
fn encoded(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(CONTENT_ENCODING).iter().any(|v| {
        let v = v.as_bytes().trim_ascii();
        !v.is_empty() && !v.eq_ignore_ascii_case(b"identity")
    })
}

fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|d| {
            let name = d.split(|&b| b == b'=').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
        })
    })
}

/// Adds `Accept-Encoding` to `Vary` unless it is named already (or `Vary: *`). A single
/// existing line is extended (`Vary: Origin, Accept-Encoding`), otherwise a line is added.
fn add_vary(resp: &mut ResponseHeader) -> Result<()> {
    let mut lines = 0;
    let mut named = false;
    for v in resp.headers.get_all(VARY) {
        lines += 1;
        named |= v.as_bytes().split(|&b| b == b',').any(|n| {
            let n = n.trim_ascii();
            n == b"*" || n.eq_ignore_ascii_case(b"accept-encoding")
        });
    }
    if named {
        return Ok(());
    }
    match resp.headers.get(VARY) {
        Some(one) if lines == 1 && !one.as_bytes().trim_ascii().is_empty() => {
            let mut merged = Vec::with_capacity(one.len() + 17);
            merged.extend_from_slice(one.as_bytes().trim_ascii());
            merged.extend_from_slice(b", Accept-Encoding");
            resp.insert_header(VARY, merged)?;
        }
        Some(_) if lines == 1 => resp.insert_header(VARY, "Accept-Encoding")?,
        _ => {
            resp.append_header(VARY, "Accept-Encoding")?;
        }
    };
    Ok(())
}

impl ResponseCompression {
    /// Whether an answer with this head may be compressed at all (for any client).
    pub fn compressible(&self, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if !(200..600).contains(&status) || matches!(status, 204 | 206 | 304) {
            return false;
        }
        if resp.headers.contains_key(CONTENT_RANGE) || encoded(resp) || no_transform(resp) {
            return false;
        }
        let Some(ct) = resp.headers.get(CONTENT_TYPE) else {
            return false;
        };
        let media = media_type(ct.as_bytes());
        if !self.types.iter().any(|t| t.matches(media)) {
            return false;
        }
        match content_length(resp) {
            // Nothing to compress, and a body-less head must keep its framing.
            Some(0) => false,
            Some(n) => n >= self.min_size,
            // Unknown length (chunked, or close-delimited): compressed.
            None => true,
        }
    }
}

impl Hooks for ResponseCompression {
    type State = State;
    const PHASES: u32 =
        phase::REQUEST | phase::UPSTREAM_REQUEST | phase::RESPONSE | phase::HAND_OFF;

    fn build(
        c: &mut Compiler,
        path: &str,
        config: Option<&serde_yaml::Value>,
        _env: &BuildEnv,
    ) -> Option<Self> {
        let cfg: Config = c.plugin_config(path, config)?;
        let mut ok = true;
        let mut preference = Vec::new();
        for (i, a) in cfg.algorithms.iter().enumerate() {
            match Algo::from_token(a.trim().to_ascii_lowercase().as_str()) {
                Some(algo) if preference.contains(&algo) => {
                    c.error(
                        &format!("{path}.config.algorithms[{i}]"),
                        format!("{a:?} is listed twice"),
                    );
                    ok = false;
                }
                Some(algo) => preference.push(algo),
                None => {
                    c.error(
                        &format!("{path}.config.algorithms[{i}]"),
                        format!("unknown algorithm {a:?} (known: br, gzip, zstd)"),
                    );
                    ok = false;
                }
            }
        }
        if cfg.algorithms.is_empty() {
            c.error(
                &format!("{path}.config.algorithms"),
                "must name at least one of br, gzip, zstd (remove the plugin to turn compression off)",
            );
            ok = false;
        }
        let mut types = Vec::new();
        for (i, t) in cfg.types.iter().enumerate() {
            match TypePattern::parse(t) {
                Ok(p) => types.push(p),
                Err(msg) => {
                    c.error(&format!("{path}.config.types[{i}]"), msg);
                    ok = false;
                }
            }
        }
        if cfg.types.is_empty() {
            c.error(
                &format!("{path}.config.types"),
                "must name at least one media type",
            );
            ok = false;
        }
        let mut levels = [0; 3];
        for (algo, level) in [
            (Algo::Br, cfg.levels.br),
            (Algo::Gzip, cfg.levels.gzip),
            (Algo::Zstd, cfg.levels.zstd),
        ] {
            let range = algo.levels();
            if !range.contains(&level) {
                c.error(
                    &format!("{path}.config.levels.{}", algo.token()),
                    format!(
                        "level {level} out of range {}-{}",
                        range.start(),
                        range.end()
                    ),
                );
                ok = false;
            }
            levels[algo.index()] = level;
        }
        if !ok {
            return None;
        }
        Some(ResponseCompression {
            preference,
            types,
            min_size: cfg.min_size.0,
            levels,
            identity_upstream: cfg.identity_upstream,
        })
    }
    /// `request_filter`: the coding this client gets. `HEAD` answers are left alone (their
    /// head describes the identity body, as with NGINX).
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let req = session.req_header();
        let state = &mut ctx.plugins.response_compression;
        state.identity_upstream = self.identity_upstream;
        state.step = if req.method == Method::HEAD {
            Step::Off
        } else {
            Step::Negotiated(negotiate(
                req.headers.get_all(ACCEPT_ENCODING),
                &self.preference,
            ))
        };
        Outcome::Continue
    }
    /// `upstream_request_filter`: with `identity_upstream`, ask for the identity body. The
    /// gateway compresses per client, and proxy-cache stores one identity object that serves
    /// every client (an upstream that compressed for one client would otherwise hand its
    /// coding to clients that cannot decode it).
    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &RequestCtx) -> Result<()> {
        if self.identity_upstream {
            req.insert_header(ACCEPT_ENCODING, "identity")?;
        }
        Ok(())
    }
    /// `response_filter` (after response-transformer): decides from the head. A
    /// compressible answer gets `Vary: Accept-Encoding` whether or not this client gets a
    /// coding (a shared cache must not hand the compressed form to another client); the
    /// head itself is rewritten by the module, which knows whether a body follows.
    fn response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        gateway_made: bool,
    ) -> Result<()> {
        if gateway_made {
            return Ok(());
        }
        let Step::Negotiated(choice) = ctx.plugins.response_compression.step else {
            return Ok(());
        };
        if resp.status.is_informational() {
            // Wait for the final head.
            return Ok(());
        }
        ctx.plugins.response_compression.step = Step::Off;
        // The stale-while-revalidate refresh answers nobody: nothing to compress.
        if ctx.plugins.proxy_cache.background || !self.compressible(resp) {
            return Ok(());
        }
        add_vary(resp)?;
        if let Some(algo) = choice {
            ctx.plugins.response_compression.step = Step::Decided(Decision {
                algo,
                level: self.levels[algo.index()],
                status: resp.status.as_u16(),
            });
        }
        Ok(())
    }

    /// End of `response_filter`, after every plugin's response hook succeeded: hands the
    /// decision to the session's [`CompressionModule`], which rewrites the head and encodes
    /// the body.
    fn hand_off(&self, session: &mut Session, _resp: &ResponseHeader, ctx: &mut RequestCtx) {
        let Step::Decided(d) = std::mem::take(&mut ctx.plugins.response_compression.step) else {
            return;
        };
        let counter = ctx.route().map(|r| {
            FAMILIES
                .compressed
                .with_label_values(&[r.name.as_str(), d.algo.token()])
        });
        if let Some(m) = session
            .downstream_modules_ctx
            .get_mut::<CompressionModule>()
        {
            m.armed = Some((d, counter));
        }
    }

    /// `init_downstream_modules`: installs [`CompressionModule`] in place of Pingora's
    /// default (disabled) compression module. Installed whatever the config (a reload may
    /// add the plugin); unarmed it does nothing.
    fn init_downstream_modules(modules: &mut HttpModules) {
        modules.add_module(Box::new(CompressionModuleBuilder));
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// `response_compressed_total{route,encoding}` exists from the start for every encoding
    /// (and the byte counters, which are not per route, once a route compresses).
    fn route_series(route: &str, create: bool) {
        let f = &*FAMILIES;
        for a in Algo::ALL {
            let e = a.token();
            if create {
                f.compressed.with_label_values(&[route, e]);
                f.bytes_in.with_label_values(&[e]);
                f.bytes_out.with_label_values(&[e]);
            } else {
                let _ = f.compressed.remove_label_values(&[route, e]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------------

/// brotli window bits for unknown or large bodies: 512 KiB, ngx_brotli's default
/// (`brotli_window 512k`); brotli's own default (4 MiB) costs that much memory per response.
const BR_MAX_WINDOW_BITS: u32 = 19;
/// zstd window for unknown or large bodies: 1 MiB (level 3's default is 2 MiB).
const ZSTD_MAX_WINDOW_LOG: u32 = 20;

/// Window bits that cover `n` bytes, between `min` and `max`.
fn window_bits(n: u64, min: u32, max: u32) -> u32 {
    let bits = 64 - n.max(1).saturating_sub(1).leading_zeros();
    bits.clamp(min, max)
}

enum Kind {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    // The zstd context is `Send` but not `Sync`, and a Pingora module must be both: the
    // (uncontended) lock is what makes it `Sync`.
    Zstd(parking_lot::Mutex<zstd::stream::write::Encoder<'static, Vec<u8>>>),
    Finished,
}

/// A streaming encoder: [`Encoder::encode`] takes each chunk and returns what may be sent
/// now (everything the chunk contributed: each call flushes), and at `end` the rest of the
/// stream.
pub struct Encoder {
    algo: Algo,
    kind: Kind,
    bytes_in: u64,
    bytes_out: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("algo", &self.algo)
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .finish()
    }
}

impl Encoder {
    /// An encoder for `algo` at `level` (validated at load); `size_hint` is the body's
    /// length when known, which lets brotli and zstd use a window no larger than the body.
    pub fn new(algo: Algo, level: u32, size_hint: Option<u64>) -> std::io::Result<Encoder> {
        let kind = match algo {
            Algo::Gzip => Kind::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Algo::Br => {
                let lgwin = match size_hint {
                    // brotli's window holds 16 bytes less than 2^lgwin.
                    Some(n) => window_bits(n.saturating_add(16), 10, BR_MAX_WINDOW_BITS),
                    None => BR_MAX_WINDOW_BITS,
                };
                let params = brotli::enc::BrotliEncoderParams {
                    quality: level as i32,
                    lgwin: lgwin as i32,
                    size_hint: size_hint.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                    ..Default::default()
                };
                Kind::Br(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    4096,
                    &params,
                )))
            }
            Algo::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level as i32)?;
                match size_hint {
                    // The exact length lets zstd size its tables for the body (a 2 KB body
                    // then costs a third of the time) and records it in the frame. The body
                    // is the `Content-Length` answer's, which Pingora holds to that length;
                    // a mismatch would fail the stream at its end, never corrupt it.
                    Some(n) => e.set_pledged_src_size(Some(n))?,
                    None => e.window_log(ZSTD_MAX_WINDOW_LOG)?,
                }
                Kind::Zstd(parking_lot::Mutex::new(e))
            }
        };
        Ok(Encoder {
            algo,
            kind,
            bytes_in: 0,
            bytes_out: 0,
        })
    }

    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// (identity bytes in, encoded bytes out) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    /// Compresses `input`; with `end`, finishes the stream. Returns the bytes to send now
    /// (possibly empty; an encoder that already finished returns nothing).
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        self.bytes_in += input.len() as u64;
        // Room for what this chunk will likely add, without over-reserving for big chunks.
        let reserve = (input.len() / 3).min(64 * 1024) + 64;
        let out: Vec<u8> = match &mut self.kind {
            Kind::Finished => return Ok(Bytes::new()),
            Kind::Gzip(e) => {
                e.get_mut().reserve(reserve);
                e.write_all(input)?;
                if end {
                    e.try_finish()?;
                } else if !input.is_empty() {
                    e.flush()?;
                }
                std::mem::take(e.get_mut())
            }
            Kind::Br(e) => {
                e.get_mut().reserve(reserve);
                e.write_all(input)?;
                if !end {
                    if !input.is_empty() {
                        e.flush()?;
                    }
                    std::mem::take(e.get_mut())
                } else {
                    // Only consuming the writer emits the final meta-block (a flush does not).
                    let Kind::Br(e) = std::mem::replace(&mut self.kind, Kind::Finished) else {
                        return Ok(Bytes::new());
                    };
                    e.into_inner()
                }
            }
            Kind::Zstd(e) => {
                let e = e.get_mut();
                e.get_mut().reserve(reserve);
                e.write_all(input)?;
                if end {
                    e.do_finish()?;
                } else if !input.is_empty() {
                    e.flush()?;
                }
                std::mem::take(e.get_mut())
            }
        };
        if end {
            self.kind = Kind::Finished;
        }
        self.bytes_out += out.len() as u64;
        Ok(Bytes::from(out))
    }
}

// ---------------------------------------------------------------------------------------------
// The downstream module
// ---------------------------------------------------------------------------------------------

/// `response_compressed_total{route,encoding}` and `response_compression_*_bytes_total{encoding}`
/// (`encoding`: the `Content-Encoding` tokens of [`Algo`]).
struct Families {
    compressed: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
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
    armed: Option<(Decision, Option<IntCounter>)>,
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

struct CompressionModuleBuilder;

impl HttpModuleBuilder for CompressionModuleBuilder {
    fn order(&self) -> i16 {
        // After other modules, like Pingora's own compression module.
        i16::MIN / 2
    }

    fn init(&self) -> Module {
        Box::<CompressionModule>::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn accepted(v: &str) -> Accepted {
        Accepted::parse([v.as_bytes()])
    }

    const PREF: &[Algo] = &[Algo::Br, Algo::Zstd, Algo::Gzip];

    fn choose(v: &str) -> Option<Algo> {
        accepted(v).choose(PREF)
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q(b"0"), Some(0));
        assert_eq!(parse_q(b"0.5"), Some(500));
        assert_eq!(parse_q(b"0.125"), Some(125));
        assert_eq!(parse_q(b"0.05"), Some(50));
        assert_eq!(parse_q(b"1"), Some(1000));
        assert_eq!(parse_q(b"1.000"), Some(1000));
        assert_eq!(parse_q(b"0."), Some(0));
        for bad in [
            &b"1.5"[..],
            b"2",
            b"0.1234",
            b"-1",
            b"",
            b"abc",
            b".5",
            b"0.5x",
        ] {
            assert_eq!(parse_q(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn server_preference_breaks_ties() {
        assert_eq!(choose("gzip, deflate, br, zstd"), Some(Algo::Br));
        assert_eq!(choose("gzip, deflate, zstd"), Some(Algo::Zstd));
        assert_eq!(choose("gzip"), Some(Algo::Gzip));
        assert_eq!(choose("GZIP"), Some(Algo::Gzip));
        assert_eq!(choose("x-gzip"), Some(Algo::Gzip));
        assert_eq!(
            accepted("br, gzip").choose(&[Algo::Gzip, Algo::Br]),
            Some(Algo::Gzip)
        );
        // Only configured algorithms are chosen.
        assert_eq!(accepted("br").choose(&[Algo::Gzip]), None);
    }

    #[test]
    fn higher_q_wins_over_preference() {
        assert_eq!(choose("br;q=0.5, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("br;q=0.5, gzip;q=0.8, zstd;q=0.1"), Some(Algo::Gzip));
        assert_eq!(choose("gzip;q=1.0, br;q=0.999"), Some(Algo::Gzip));
        assert_eq!(choose(" gzip ; q = 0.4 , br ; Q=0.3 "), Some(Algo::Gzip));
    }

    #[test]
    fn q_zero_excludes() {
        assert_eq!(choose("gzip;q=0"), None);
        assert_eq!(choose("gzip;q=0, br"), Some(Algo::Br));
        assert_eq!(choose("gzip;q=0.000, br;q=0"), None);
        assert_eq!(choose("*;q=0"), None);
        assert_eq!(choose("*;q=0, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("br;q=0, *"), Some(Algo::Zstd));
        // Listed twice: the most restrictive entry counts.
        assert_eq!(choose("gzip, gzip;q=0"), None);
    }

    #[test]
    fn star_and_identity() {
        assert_eq!(choose("*"), Some(Algo::Br));
        assert_eq!(choose("*;q=0.5, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("identity"), None);
        assert_eq!(choose("identity;q=0"), None);
        assert_eq!(choose("identity;q=0, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("identity;q=0, *;q=0"), None);
        // Identity named with a higher q than every coding wins; equal q does not.
        assert_eq!(choose("identity, gzip;q=0.5"), None);
        assert_eq!(choose("identity, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("identity;q=0.5, gzip;q=0.6"), Some(Algo::Gzip));
    }

    #[test]
    fn absent_empty_and_odd_headers() {
        assert_eq!(
            Accepted::parse(std::iter::empty::<&[u8]>()).choose(PREF),
            None
        );
        assert_eq!(choose(""), None);
        assert_eq!(choose(" , ,"), None);
        assert_eq!(choose("deflate, compress"), None);
        // An invalid q drops that element only.
        assert_eq!(choose("br;q=2, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("br;q=abc"), None);
        // Other parameters are ignored.
        assert_eq!(choose("gzip;level=9"), Some(Algo::Gzip));
        // Several field lines are one list.
        assert_eq!(
            Accepted::parse([&b"gzip;q=0.2"[..], b"zstd;q=0.3"]).choose(PREF),
            Some(Algo::Zstd)
        );
        let values = [
            HeaderValue::from_static("gzip"),
            HeaderValue::from_static("br;q=0"),
        ];
        assert_eq!(negotiate(values.iter(), PREF), Some(Algo::Gzip));
    }

    #[test]
    fn media_types() {
        let p = |s: &str| TypePattern::parse(s).unwrap();
        assert!(p("text/*").matches(b"text/html"));
        assert!(p("text/*").matches(b"TEXT/Plain"));
        assert!(!p("text/*").matches(b"text/"));
        assert!(!p("text/*").matches(b"textual/html"));
        assert!(p("application/json").matches(b"Application/JSON"));
        assert!(!p("application/json").matches(b"application/jsonp"));
        assert!(p("application/*+json").matches(b"application/problem+json"));
        assert!(!p("application/*+json").matches(b"application/+json"));
        assert!(!p("application/*+json").matches(b"text/x+json"));
        assert!(p("*/*").matches(b"image/png"));
        assert!(p("*").matches(b"anything"));
        assert_eq!(
            media_type(b" application/json ; charset=utf-8"),
            b"application/json"
        );
        for bad in [
            "json",
            "/json",
            "application/",
            "app lication/json",
            "a/*+",
            "a/b/c",
        ] {
            assert!(TypePattern::parse(bad).is_err(), "{bad}");
        }
    }

    fn plugin() -> ResponseCompression {
        ResponseCompression {
            preference: PREF.to_vec(),
            types: DEFAULT_TYPES
                .iter()
                .map(|t| TypePattern::parse(t).unwrap())
                .collect(),
            min_size: 1024,
            levels: [4, 6, 3],
            identity_upstream: true,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn what_is_compressible() {
        let p = plugin();
        let json = ("content-type", "application/json; charset=utf-8");
        assert!(p.compressible(&resp(200, &[json])));
        assert!(p.compressible(&resp(200, &[json, ("content-length", "1024")])));
        assert!(p.compressible(&resp(404, &[json, ("content-length", "5000")])));
        assert!(p.compressible(&resp(200, &[json, ("content-encoding", "identity")])));
        assert!(!p.compressible(&resp(200, &[json, ("content-length", "1023")])));
        assert!(!p.compressible(&resp(200, &[json, ("content-length", "0")])));
        assert!(!p.compressible(&resp(200, &[("content-type", "image/png")])));
        assert!(!p.compressible(&resp(200, &[])));
        assert!(!p.compressible(&resp(200, &[json, ("content-encoding", "gzip")])));
        assert!(!p.compressible(&resp(
            200,
            &[json, ("cache-control", "public, No-Transform")]
        )));
        assert!(p.compressible(&resp(200, &[json, ("cache-control", "max-age=60")])));
        assert!(!p.compressible(&resp(206, &[json])));
        assert!(!p.compressible(&resp(200, &[json, ("content-range", "bytes 0-9/100")])));
        for s in [101, 204, 304] {
            assert!(!p.compressible(&resp(s, &[json])), "{s}");
        }
    }

    #[test]
    fn vary_is_merged_once() {
        let vary = |r: &ResponseHeader| -> Vec<String> {
            r.headers
                .get_all(VARY)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        let mut r = resp(200, &[]);
        add_vary(&mut r).unwrap();
        assert_eq!(vary(&r), ["Accept-Encoding"]);
        add_vary(&mut r).unwrap();
        assert_eq!(vary(&r), ["Accept-Encoding"]);
        let mut r = resp(200, &[("vary", "Origin")]);
        add_vary(&mut r).unwrap();
        assert_eq!(vary(&r), ["Origin, Accept-Encoding"]);
        let mut r = resp(200, &[("vary", "origin, accept-encoding")]);
        add_vary(&mut r).unwrap();
        assert_eq!(vary(&r), ["origin, accept-encoding"]);
        let mut r = resp(200, &[("vary", "*")]);
        add_vary(&mut r).unwrap();
        assert_eq!(vary(&r), ["*"]);
        let mut r = resp(200, &[("vary", "Origin"), ("vary", "Cookie")]);
        add_vary(&mut r).unwrap();
        assert_eq!(vary(&r), ["Origin", "Cookie", "Accept-Encoding"]);
    }

    fn decode(algo: Algo, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match algo {
            Algo::Gzip => {
                flate2::read::GzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algo::Br => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Algo::Zstd => {
                zstd::stream::read::Decoder::new(data)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    fn body(n: usize) -> Vec<u8> {
        let mut b = Vec::new();
        let mut i = 0;
        while b.len() < n {
            b.extend_from_slice(format!("{{\"id\":{i},\"name\":\"item {i}\"}},").as_bytes());
            i += 1;
        }
        b.truncate(n);
        b
    }

    #[test]
    fn encoders_round_trip_in_chunks() {
        let input = body(300_000);
        for algo in Algo::ALL {
            for hint in [None, Some(input.len() as u64)] {
                let mut e = Encoder::new(algo, *algo.levels().start().max(&3), hint).unwrap();
                let mut out = Vec::new();
                for chunk in input.chunks(16 * 1024) {
                    out.extend_from_slice(&e.encode(chunk, false).unwrap());
                }
                out.extend_from_slice(&e.encode(&[], true).unwrap());
                assert_eq!(decode(algo, &out), input, "{algo:?} {hint:?}");
                assert!(out.len() < input.len() / 4, "{algo:?}: {}", out.len());
                assert_eq!(e.totals(), (input.len() as u64, out.len() as u64));
                // Finished: nothing more.
                assert!(e.encode(b"x", true).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn every_chunk_is_flushed() {
        // What was sent so far decodes to everything given so far: nothing is held back.
        for algo in Algo::ALL {
            let mut e = Encoder::new(algo, 5, None).unwrap();
            let first = e.encode(b"{\"event\":\"first\"}\n", false).unwrap();
            assert!(!first.is_empty(), "{algo:?}");
            let mut partial = Vec::new();
            match algo {
                Algo::Gzip => {
                    let mut d = flate2::write::GzDecoder::new(Vec::new());
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    partial = d.get_ref().clone();
                }
                Algo::Br => {
                    let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    partial = d.get_ref().clone();
                }
                Algo::Zstd => {
                    let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    partial.extend_from_slice(d.get_ref());
                }
            }
            assert_eq!(partial, b"{\"event\":\"first\"}\n", "{algo:?}");
        }
    }

    #[test]
    fn empty_and_one_shot_bodies() {
        for algo in Algo::ALL {
            let mut e = Encoder::new(algo, 4, Some(0)).unwrap();
            let out = e.encode(&[], true).unwrap();
            assert!(!out.is_empty(), "{algo:?}: a valid empty stream");
            assert_eq!(decode(algo, &out), b"");
            let input = body(2048);
            let mut e = Encoder::new(algo, 4, Some(2048)).unwrap();
            let out = e.encode(&input, true).unwrap();
            assert_eq!(decode(algo, &out), input);
        }
    }

    #[test]
    fn zstd_body_shorter_than_its_length_fails_at_the_end() {
        let mut e = Encoder::new(Algo::Zstd, 3, Some(100)).unwrap();
        assert!(e.encode(&[b'a'; 50], false).is_ok());
        assert!(e.encode(&[], true).is_err());
    }

    #[test]
    fn window_sizes() {
        assert_eq!(window_bits(0, 10, 19), 10);
        assert_eq!(window_bits(1024, 10, 19), 10);
        assert_eq!(window_bits(1025, 10, 19), 11);
        assert_eq!(window_bits(200_000, 10, 19), 18);
        assert_eq!(window_bits(u64::MAX, 10, 19), 19);
    }
}
