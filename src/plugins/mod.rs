//! Plugin registry and dispatch: typed plugins built once at config load, run in the
//! contract's fixed order (`ORDER`) whatever their order in the file. A route entry replaces
//! a global entry of the same name; `enabled: false` on a route switches a global one off.
//!
//! Each plugin has its own module with a typed config (deserialized from the YAML `config`
//! value by [`Compiler::plugin_config`], with path-aware errors) and hooks per Pingora phase:
//!
//! | hook              | Pingora phase            | returns |
//! |-------------------|--------------------------|---------|
//! | `request`         | `request_filter`         | [`Outcome`]: `Continue` or `Respond(Reply)` |
//! | `request_body`    | `request_body_filter`    | `Err(Reply)` cuts the body off |
//! | `upstream_request`| `upstream_request_filter`| header edits |
//! | `response`        | `response_filter`, and every gateway-made answer | header edits |
//! | `response_body`   | `response_body_filter`   | body edits (synchronous) |
//!
//! Dispatch is a `match` over the [`Plugin`] enum: no boxed futures, no dynamic lookup on
//! the hot path. Names the contract defines but this build does not implement yet are
//! refused at load with "not implemented yet": never silently ignored.

pub mod acl;
pub(crate) mod body_buf;
pub mod concurrency;
pub mod correlation_id;
pub mod cors;
pub mod error_responses;
pub mod forward_auth;
pub mod held_body;
pub mod ip_restriction;
pub mod json_rewrite;
pub(crate) mod json_scan;
pub mod jwt;
pub mod key_auth;
pub mod opentelemetry;
pub mod proxy_cache;
pub mod rate_limit;
pub mod request_body;
pub mod request_transformer;
pub mod response_compression;
pub mod response_transformer;
pub mod security_headers;
pub mod size_limit;

use crate::config::diag::Compiler;
use crate::ctx::RequestCtx;
use crate::model::{Consumer, Tier};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The contract's fixed execution order.
pub const ORDER: &[&str] = &[
    "opentelemetry", // extension, first: every refusal below is traced
    "correlation-id",
    "cors",
    "ip-restriction",
    "request-size-limiting",
    "key-auth",
    "jwt",
    "forward-auth",
    "acl",
    "rate-limiting",
    "concurrency-limiting",
    "proxy-cache",
    "request-transformer",
    "response-transformer",
    "response-compression",
    "security-headers",
    "error-responses",
];

/// An answer the gateway gives itself instead of proxying.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Contract error code; `None` for a non-error answer without body (CORS preflight).
    pub code: Option<&'static str>,
    pub message: Cow<'static, str>,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, CORS preflight headers...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    /// The contract's JSON error with its default message for `status`.
    pub fn error(status: u16) -> Reply {
        let (code, message) = crate::errors::code_for(status);
        Reply::error_with(status, code, message)
    }

    pub fn error_with(
        status: u16,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply {
            status,
            code: Some(code),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// What a request-phase hook decided.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    Respond(Reply),
}

/// What plugin constructors may look at besides their own config.
#[derive(Clone)]
pub struct BuildEnv<'a> {
    pub consumers: &'a [Consumer],
    pub tiers: &'a BTreeMap<String, Tier>,
    /// Limiter state that survives reloads (rate-limiting, concurrency-limiting).
    pub limiters: &'a crate::limits::LimiterRegistry,
    /// Name of the route whose plugin list is being built; `None` for the global list.
    pub route: Option<&'a str>,
}

impl BuildEnv<'_> {
    /// `consumers[].username` -> index into `consumers`: for plugins that name the consumer
    /// by username (forward-auth's answer header, a JWKS token's claim).
    pub fn consumer_index(&self) -> std::collections::HashMap<String, usize> {
        self.consumers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.username.clone(), i))
            .collect()
    }
}

/// One configured plugin instance.
#[derive(Debug)]
pub enum Plugin {
    CorrelationId(correlation_id::CorrelationId),
    Cors(cors::Cors),
    RequestTransformer(request_transformer::RequestTransformer),
    ResponseTransformer(response_transformer::ResponseTransformer),
    IpRestriction(ip_restriction::IpRestriction),
    RequestSizeLimiting(size_limit::SizeLimit),
    KeyAuth(key_auth::KeyAuth),
    Jwt(jwt::Jwt),
    ForwardAuth(forward_auth::ForwardAuth),
    Acl(acl::Acl),
    RateLimiting(rate_limit::RateLimit),
    ConcurrencyLimiting(concurrency::Concurrency),
    ProxyCache(proxy_cache::ProxyCache),
    SecurityHeaders(security_headers::SecurityHeaders),
    OpenTelemetry(opentelemetry::OpenTelemetry),
    ErrorResponses(error_responses::ErrorResponses),
    ResponseCompression(response_compression::ResponseCompression),
}

impl Plugin {
    pub fn name(&self) -> &'static str {
        match self {
            Plugin::CorrelationId(_) => "correlation-id",
            Plugin::Cors(_) => "cors",
            Plugin::RequestTransformer(_) => "request-transformer",
            Plugin::ResponseTransformer(_) => "response-transformer",
            Plugin::IpRestriction(_) => "ip-restriction",
            Plugin::RequestSizeLimiting(_) => "request-size-limiting",
            Plugin::KeyAuth(_) => "key-auth",
            Plugin::Jwt(_) => "jwt",
            Plugin::ForwardAuth(_) => "forward-auth",
            Plugin::Acl(_) => "acl",
            Plugin::RateLimiting(_) => "rate-limiting",
            Plugin::ConcurrencyLimiting(_) => "concurrency-limiting",
            Plugin::ProxyCache(_) => "proxy-cache",
            Plugin::SecurityHeaders(_) => "security-headers",
            Plugin::OpenTelemetry(_) => "opentelemetry",
            Plugin::ErrorResponses(_) => "error-responses",
            Plugin::ResponseCompression(_) => "response-compression",
        }
    }

    /// `request_filter`.
    pub async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        match self {
            Plugin::CorrelationId(p) => p.request(session, ctx),
            Plugin::Cors(p) => p.request(session, ctx),
            Plugin::RequestTransformer(p) => p.request(session, ctx).await,
            Plugin::ResponseTransformer(p) => {
                p.request(session, ctx);
                Outcome::Continue
            }
            Plugin::IpRestriction(p) => p.request(ctx),
            Plugin::RequestSizeLimiting(p) => p.request(session, ctx),
            Plugin::KeyAuth(p) => p.request(session, ctx),
            Plugin::Jwt(p) => p.request(session, ctx).await,
            Plugin::ForwardAuth(p) => p.request(session, ctx).await,
            Plugin::Acl(p) => p.request(ctx),
            Plugin::RateLimiting(p) => p.request(session, ctx).await,
            Plugin::ConcurrencyLimiting(p) => p.request(ctx),
            Plugin::ProxyCache(_) => Outcome::Continue,
            Plugin::SecurityHeaders(_) => Outcome::Continue,
            Plugin::OpenTelemetry(p) => p.request(session, ctx),
            Plugin::ErrorResponses(p) => {
                p.request(session, ctx);
                Outcome::Continue
            }
            Plugin::ResponseCompression(p) => p.request(session, ctx),
        }
    }

    /// `upstream_request_filter`.
    pub fn upstream_request(
        &self,
        _session: &Session,
        req: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        match self {
            Plugin::CorrelationId(p) => p.upstream_request(req, ctx),
            Plugin::RequestTransformer(p) => p.upstream_request(req, ctx),
            Plugin::KeyAuth(p) => p.upstream_request(req, ctx),
            Plugin::Jwt(p) => p.upstream_request(req, ctx),
            Plugin::OpenTelemetry(p) => p.upstream_request(req, ctx),
            Plugin::ForwardAuth(p) => p.upstream_request(req, ctx),
            Plugin::ResponseTransformer(p) => p.upstream_request(req),
            Plugin::ResponseCompression(p) => p.upstream_request(req),
            _ => Ok(()),
        }
    }

    /// `response_filter`, and the gateway's own answers (`gateway_made`).
    pub fn response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        gateway_made: bool,
    ) -> Result<()> {
        match self {
            Plugin::CorrelationId(p) => p.response(resp, ctx),
            Plugin::Cors(p) => p.response(resp, ctx, gateway_made),
            Plugin::ResponseTransformer(p) => p.response(resp, ctx, gateway_made),
            Plugin::ProxyCache(p) => p.response(resp, ctx),
            Plugin::SecurityHeaders(p) => p.response(resp),
            Plugin::RateLimiting(p) => p.response(resp, ctx),
            Plugin::OpenTelemetry(p) => p.response(resp, ctx),
            Plugin::ErrorResponses(p) => p.response(resp, ctx, gateway_made),
            Plugin::ResponseCompression(p) => p.response(resp, ctx, gateway_made),
            _ => Ok(()),
        }
    }

    /// `response_body_filter` (synchronous in Pingora). No plugin edits bodies here:
    /// response-transformer and error-responses hold bodies back in the downstream module
    /// ([`held_body`]), the only place that sees the end of a body served from the cache
    /// after a revalidation.
    pub fn response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        Ok(())
    }
}

/// The plugins of one route (globals merged in), in `ORDER`.
#[derive(Debug, Default)]
pub struct Chain {
    /// Shared with other routes when it comes from the global list.
    pub plugins: Vec<Arc<Plugin>>,
}

impl Chain {
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Runs the request hooks in order until one answers.
    pub async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Option<Reply> {
        for p in &self.plugins {
            if let Outcome::Respond(r) = p.request(session, ctx).await {
                return Some(r);
            }
        }
        None
    }

    pub fn upstream_request(
        &self,
        session: &Session,
        req: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        for p in &self.plugins {
            p.upstream_request(session, req, ctx)?;
        }
        Ok(())
    }

    pub fn response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        gateway_made: bool,
    ) -> Result<()> {
        // The way back ends with the cors headers (contract order: response-transformer,
        // security-headers, cors), although cors runs second on the way in.
        let mut cors = None;
        for p in &self.plugins {
            if matches!(**p, Plugin::Cors(_)) {
                cors = Some(p);
                continue;
            }
            p.response(resp, ctx, gateway_made)?;
        }
        if let Some(p) = cors {
            p.response(resp, ctx, gateway_made)?;
        }
        Ok(())
    }

    pub fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        for p in &self.plugins {
            p.response_body(body, end_of_stream, ctx)?;
        }
        Ok(())
    }
}

/// Builds one plugin from its YAML entry. `path` is the YAML path of the entry
/// (`routes[2].plugins[0]`).
pub fn build(
    c: &mut Compiler,
    path: &str,
    name: &str,
    config: Option<&serde_yaml::Value>,
    env: &BuildEnv,
) -> Option<Plugin> {
    let _ = env;
    match name {
        "correlation-id" => {
            correlation_id::CorrelationId::build(c, path, config).map(Plugin::CorrelationId)
        }
        "cors" => cors::Cors::build(c, path, config).map(Plugin::Cors),
        "request-transformer" => request_transformer::RequestTransformer::build(c, path, config)
            .map(Plugin::RequestTransformer),
        "response-transformer" => response_transformer::ResponseTransformer::build(c, path, config)
            .map(Plugin::ResponseTransformer),
        "ip-restriction" => {
            ip_restriction::IpRestriction::build(c, path, config).map(Plugin::IpRestriction)
        }
        "request-size-limiting" => {
            size_limit::SizeLimit::build(c, path, config).map(Plugin::RequestSizeLimiting)
        }
        "key-auth" => key_auth::KeyAuth::build(c, path, config, env).map(Plugin::KeyAuth),
        "jwt" => jwt::Jwt::build(c, path, config, env).map(Plugin::Jwt),
        "forward-auth" => {
            forward_auth::ForwardAuth::build(c, path, config, env).map(Plugin::ForwardAuth)
        }
        "acl" => acl::Acl::build(c, path, config).map(Plugin::Acl),
        "rate-limiting" => {
            rate_limit::RateLimit::build(c, path, config, env).map(Plugin::RateLimiting)
        }
        "concurrency-limiting" => {
            concurrency::Concurrency::build(c, path, config, env).map(Plugin::ConcurrencyLimiting)
        }
        "proxy-cache" => proxy_cache::ProxyCache::build(c, path, config).map(Plugin::ProxyCache),
        "security-headers" => {
            security_headers::SecurityHeaders::build(c, path, config).map(Plugin::SecurityHeaders)
        }
        "opentelemetry" => {
            opentelemetry::OpenTelemetry::build(c, path, config).map(Plugin::OpenTelemetry)
        }
        "error-responses" => {
            error_responses::ErrorResponses::build(c, path, config).map(Plugin::ErrorResponses)
        }
        "response-compression" => response_compression::ResponseCompression::build(c, path, config)
            .map(Plugin::ResponseCompression),
        _ if ORDER.contains(&name) => {
            c.error(
                &format!("{path}.name"),
                format!("plugin \"{name}\" is not implemented yet in this build"),
            );
            None
        }
        _ => {
            c.error(
                &format!("{path}.name"),
                format!("unknown plugin \"{name}\" (known: {})", ORDER.join(", ")),
            );
            None
        }
    }
}

/// Sends the authenticated consumer upstream as `X-Consumer-Username` (key-auth and jwt both
/// call this; client-sent copies were already removed in `forward::rewrite_request`).
pub(crate) fn send_consumer(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(c) = ctx.consumer.and_then(|i| ctx.rt.consumers.get(i)) {
        req.insert_header(crate::owned_headers::CONSUMER_HEADER, c.header.clone())?;
    }
    Ok(())
}
