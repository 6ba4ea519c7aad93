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

use crate::config::units::ByteSize;
use crate::ctx::RequestCtx;
use crate::plugins::{phase, Answer, Build, Hooks, Outcome};
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    VARY,
};
use http::Method;
use once_cell::sync::Lazy;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;

mod encoder;
mod module;
mod negotiate;

pub use encoder::Encoder;
pub use module::CompressionModule;
use module::{CompressionModuleBuilder, FAMILIES};
pub use negotiate::{negotiate, Accepted, Algo};

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
pub struct Config {
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

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
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
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if resp.gateway_made {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PREF: &[Algo] = &[Algo::Br, Algo::Zstd, Algo::Gzip];

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
}
