//! OTLP JSON encoding of one server span, straight from borrowed request data (Pingora's
//! `logging` phase): the only allocation per exported span is the `Vec<u8>` it is written
//! into.

use super::TraceCtx;
use crate::ctx::RequestCtx;
use crate::util::hex_id::HexId;
use pingora::proxy::Session;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use std::fmt;

/// OTLP `SpanKind.SPAN_KIND_SERVER`.
const KIND_SERVER: u8 = 2;
/// OTLP `Status.StatusCode`.
const STATUS_UNSET: u8 = 0;
const STATUS_ERROR: u8 = 2;
/// OTLP `SpanFlags`: the span knows whether its parent is remote, and whether it is.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// An OTLP `AnyValue`.
enum Val<'a> {
    Str(&'a str),
    Disp(&'a dyn fmt::Display),
    Int(i64),
}

impl Serialize for Val<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Val::Str(v) => m.serialize_entry("stringValue", v)?,
            Val::Disp(v) => m.serialize_entry("stringValue", &DisplayStr(*v))?,
            // OTLP JSON: int64 as a decimal string.
            Val::Int(v) => m.serialize_entry("intValue", &DisplayStr(v))?,
        }
        m.end()
    }
}

struct DisplayStr<'a>(&'a dyn fmt::Display);

impl Serialize for DisplayStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// An OTLP `KeyValue`.
struct Attr<'a>(&'static str, Val<'a>);

impl Serialize for Attr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("key", self.0)?;
        m.serialize_entry("value", &self.1)?;
        m.end()
    }
}

struct Attrs<'a, const N: usize>([Option<Attr<'a>>; N]);

impl<const N: usize> Serialize for Attrs<'_, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().flatten())
    }
}

struct SpanName<'a>(&'a str, Option<&'a str>);

impl fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(route) => write!(f, "{} {route}", self.0),
            None => f.write_str(self.0),
        }
    }
}

struct SpanJson<'a, const N: usize> {
    t: &'a TraceCtx,
    name: SpanName<'a>,
    end_unix_ns: u64,
    attributes: Attrs<'a, N>,
    status_code: u8,
    status_message: Option<&'a str>,
}

struct Status<'a>(u8, Option<&'a str>);

impl Serialize for Status<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", &self.0)?;
        if let Some(msg) = self.1 {
            m.serialize_entry("message", msg)?;
        }
        m.end()
    }
}

impl<const N: usize> Serialize for SpanJson<'_, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.t;
        let mut st = s.serialize_struct("Span", 12)?;
        st.serialize_field("traceId", &t.trace_hex())?;
        st.serialize_field("spanId", &HexId(t.span_id))?;
        if let Some(ts) = t.tracestate.as_ref().and_then(|v| v.to_str().ok()) {
            st.serialize_field("traceState", ts)?;
        }
        if let Some(p) = t.parent_id {
            st.serialize_field("parentSpanId", &HexId(p))?;
        }
        let remote = if t.parent_id.is_some() {
            FLAG_IS_REMOTE
        } else {
            0
        };
        st.serialize_field(
            "flags",
            &(u32::from(t.sampled) | FLAG_HAS_IS_REMOTE | remote),
        )?;
        st.serialize_field("name", &DisplayStr(&self.name))?;
        st.serialize_field("kind", &KIND_SERVER)?;
        st.serialize_field("startTimeUnixNano", &DisplayStr(&t.start_unix_ns))?;
        st.serialize_field("endTimeUnixNano", &DisplayStr(&self.end_unix_ns))?;
        st.serialize_field("attributes", &self.attributes)?;
        st.serialize_field("status", &Status(self.status_code, self.status_message))?;
        st.end()
    }
}

/// OTel's `http.request.method`: the known methods, else `_OTHER` (the original goes in
/// `http.request.method_original`).
fn semconv_method(m: &http::Method) -> Option<&'static str> {
    Some(match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn protocol_version(v: http::Version) -> Option<&'static str> {
    match v {
        http::Version::HTTP_10 => Some("1.0"),
        http::Version::HTTP_11 => Some("1.1"),
        http::Version::HTTP_2 => Some("2"),
        _ => None,
    }
}

/// One span as OTLP JSON (an element of `scopeSpans[].spans`). Attributes follow the OTel
/// HTTP server semantic conventions; `gatehouse.*` carry what is the gateway's own.
pub(crate) fn encode_span(
    session: &Session,
    ctx: &RequestCtx,
    t: &TraceCtx,
    status: u16,
    end_unix_ns: u64,
    error: Option<&str>,
) -> Vec<u8> {
    let req = session.req_header();
    let path = req.uri.path();
    let route = ctx.route();
    // The matched prefix: low-cardinality like a route template (a config path prefix).
    let http_route = route.map(|_| match path.get(..ctx.prefix_len) {
        Some(p) if !p.is_empty() => p,
        _ => "/",
    });
    let method = semconv_method(&req.method);
    let peer = session.client_addr().and_then(|a| a.as_inet());
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some();
    let host = crate::request::host(req);
    let user_agent = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let upstream = ctx.upstream();
    let target = ctx.selected_target().map(|t| t.addr.as_str());
    let peer_ip = peer.map(|a| a.ip());
    let client_ip = ctx.client_ip;
    let server_error = status >= 500 && status != crate::observe::CLIENT_CLOSED;
    let error_type = server_error.then_some(status);
    let attributes = Attrs([
        Some(Attr(
            "http.request.method",
            Val::Str(method.unwrap_or("_OTHER")),
        )),
        method.is_none().then(|| {
            Attr(
                "http.request.method_original",
                Val::Str(req.method.as_str()),
            )
        }),
        Some(Attr("url.path", Val::Str(path))),
        Some(Attr(
            "url.scheme",
            Val::Str(if tls { "https" } else { "http" }),
        )),
        http_route.map(|r| Attr("http.route", Val::Str(r))),
        Some(Attr(
            "http.response.status_code",
            Val::Int(i64::from(status)),
        )),
        protocol_version(req.version).map(|v| Attr("network.protocol.version", Val::Str(v))),
        host.map(|h| Attr("server.address", Val::Str(h))),
        client_ip
            .as_ref()
            .map(|ip| Attr("client.address", Val::Disp(ip))),
        peer_ip
            .as_ref()
            .map(|ip| Attr("network.peer.address", Val::Disp(ip))),
        peer.map(|a| Attr("network.peer.port", Val::Int(i64::from(a.port())))),
        user_agent.map(|u| Attr("user_agent.original", Val::Str(u))),
        error_type
            .as_ref()
            .map(|s| Attr("error.type", Val::Disp(s))),
        route.map(|r| Attr("gatehouse.route", Val::Str(&r.name))),
        upstream.map(|u| Attr("gatehouse.upstream", Val::Str(&u.name))),
        target.map(|a| Attr("gatehouse.upstream.address", Val::Str(a))),
        error.map(|e| Attr("gatehouse.error", Val::Str(e))),
        ctx.cache_status
            .map(|c| Attr("gatehouse.cache", Val::Str(c))),
        Some(Attr("gatehouse.request_id", Val::Str(&ctx.request_id))),
    ]);
    let span = SpanJson {
        t,
        name: SpanName(method.unwrap_or("HTTP"), http_route),
        end_unix_ns,
        attributes,
        status_code: if server_error {
            STATUS_ERROR
        } else {
            STATUS_UNSET
        },
        status_message: if server_error { error } else { None },
    };
    let mut out = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut out, &span).is_err() {
        out.clear();
    }
    out
}
