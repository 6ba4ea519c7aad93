//! The one `ProxyHttp` implementation. Each hook is a few lines delegating to a module:
//!
//! | Pingora hook              | module                                   |
//! |---------------------------|------------------------------------------|
//! | `new_ctx`                 | [`crate::ctx`] (one config snapshot load) |
//! | `init_downstream_modules` | every plugin's modules ([`crate::plugins::init_downstream_modules`]) |
//! | `early_request_filter`    | [`crate::request`]: id, client IP, limits |
//! | `request_filter`          | [`crate::probe`] (health path), [`crate::acme`] (HTTP-01), [`crate::request::route`], [`crate::owned_headers`], [`crate::https_redirect`], the chain's `request` hooks |
//! | `request_body_filter`     | the chain's `request_body` hooks (a body a plugin read ahead and replays), then the body size cap (`server.max_body_bytes`) |
//! | `request_cache_filter`, `cache_key_callback`, `cache_miss`, `cache_hit_filter`, `response_cache_filter`, `cache_vary_filter`, `should_serve_stale` | the chain's cache plugin (Pingora's cache phases, run after `request_filter`) |
//! | `upstream_peer`           | [`crate::forward::peer`] -> [`crate::upstream::select`] |
//! | `upstream_request_filter` | [`crate::forward::rewrite_request`], then the chain's `upstream_request` hooks |
//! | `response_filter`         | the cache plugin's `settle_cache`, the chain's `response` hooks, then their `hand_off` to the downstream module |
//! | `upstream_response_filter`| [`crate::websocket::on_response`] (a 101 must complete the handshake; the tunnel's idle timeout), [`crate::forward::check_response`] (retry on 502/503/504) |
//! | `fail_to_connect`, `error_while_proxy` | [`crate::forward`] retry policy |
//! | `fail_to_proxy`           | [`crate::errors`] JSON error (the chain's `gateway_body`, `before_answer` and `response` hooks) |
//! | `logging`                 | releases the least_conn guard; the chain's `logging` hooks; [`crate::logging`]: metrics, access log |
//! | (timing in `upstream_peer`, `upstream_response_filter`) | [`crate::logging`] upstream time |
//! | (`upstream_peer`, the retry hooks, `response_body_filter`) | [`crate::resilience`]: route deadline (or a gRPC client's, [`crate::grpc::note_deadline`]), retry back-off, retry budget |
//!
//! The plugin hooks are in [`crate::plugins::api`]; a [`Chain`] skips a phase none of its
//! plugins serves, and the gateway only clones the snapshot handle (to run a chain while its
//! hooks change `ctx`) when the phase has work.

use crate::ctx::Live;
use crate::ctx::RequestCtx;
use crate::errors;
use crate::forward;
use crate::plugins::{phase, BodyOutcome, Chain, Reply};
use crate::request::{self, NoRoute};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

pub struct Gateway {
    shared: Arc<Live>,
    /// ACME's HTTP-01 challenge answers (the app's, kept across reloads).
    acme: Arc<crate::acme::AcmeState>,
}

impl Gateway {
    pub fn new(shared: Arc<Live>, acme: Arc<crate::acme::AcmeState>) -> Self {
        Gateway { shared, acme }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.snapshot())
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // In place of Pingora's default (disabled) compression module.
        crate::plugins::init_downstream_modules(modules);
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        request::begin(session, ctx);
        // For `cors`: every answer, even one made before routing, may need CORS headers.
        ctx.origin = session
            .req_header()
            .headers
            .get(http::header::ORIGIN)
            .cloned();
        request::close_if_dual_framing(session);
        // server.flood, before routing and every plugin: 429 and the connection closed.
        let cap = ctx.rt.server.flood.requests_per_ip_per_second;
        if cap > 0 {
            if let Some(ip) = ctx.client_ip {
                if !crate::flood::admit_request(ip, cap) {
                    return Err(errors::status_error(429, "server.flood: requests per IP"));
                }
            }
        }
        match request::check_limits(session, ctx).or_else(|| request::normalize_path(session, ctx))
        {
            Some(status) => Err(errors::status_error(status, "request refused by limits")),
            None => Ok(()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The public health route, before routing and every plugin.
        if crate::probe::answer(session, ctx).await? {
            return Ok(true);
        }
        // ACME's HTTP-01 validations, before routing and every plugin.
        if crate::acme::challenge::answer_challenge(session, ctx, &self.acme).await? {
            return Ok(true);
        }
        let reply = match request::route(session, ctx) {
            Ok(()) => {
                // The snapshot is held by ctx; a clone of the Arc lets the chain borrow it
                // while the hooks mutate ctx.
                let rt = ctx.rt.clone();
                let route = rt.route(ctx.route);
                // Before anything reads them: identity and forwarding headers the client may
                // not send are gone, whatever their spelling.
                if let Some(r) = route {
                    r.owned_headers
                        .strip(session.req_header_mut(), ctx.peer_trusted);
                }
                let chain = route.map(|r| &r.plugins);
                match chain {
                    // https-only routes answer plain HTTP before any plugin.
                    Some(chain) => match crate::https_redirect::check(session, ctx) {
                        None => chain.request(session, ctx).await,
                        refused => refused,
                    },
                    None => None,
                }
            }
            Err(NoRoute::NotFound) => match crate::demo::index_for(session.req_header()) {
                // `gatehouse demo` prints http://127.0.0.1:8080 first: answer it with an index.
                Some(body) => {
                    crate::demo::answer_index(session, body).await?;
                    return Ok(true);
                }
                None => Some(Reply::error(404)),
            },
            Err(NoRoute::MethodNotAllowed(allow)) => {
                let reply = Reply::error(405);
                Some(match http::HeaderValue::from_str(&allow) {
                    Ok(v) => reply.header(http::header::ALLOW, v),
                    Err(_) => reply,
                })
            }
            Err(NoRoute::EncodedSlash) => Some(Reply::error_with(
                400,
                "bad_request",
                "Encoded slashes (%2F) are not allowed in this route's paths",
            )),
        };
        match reply {
            Some(r) => {
                errors::respond(session, ctx, &r, false).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A body a plugin already read (and counted) goes out as the plugin supplies it.
        if ctx.chain().has(phase::REQUEST_BODY) {
            let rt = ctx.rt.clone();
            if ctx.chain_in(&rt).request_body(body, end_of_stream, ctx)? == BodyOutcome::Supplied {
                return Ok(());
            }
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.body_limit {
                // Cut off as it crosses the limit: nothing past it is forwarded.
                *body = None;
                return Err(errors::status_error(
                    413,
                    "request body over max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    // Pingora's cache phases (between request_filter and upstream_peer): the chain's cache
    // plugin. Pingora calls `request_cache_filter` for every request; the others only run
    // once it enabled the cache.

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if ctx.chain().has(phase::CACHE) {
            let rt = ctx.rt.clone();
            ctx.chain_in(&rt).request_cache_filter(session, ctx);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let rt = ctx.rt.clone();
        ctx.chain_in(&rt).cache_key(session, ctx)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let rt = ctx.rt.clone();
        ctx.chain_in(&rt).cache_miss(session, ctx);
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let rt = ctx.rt.clone();
        Ok(ctx.chain_in(&rt).cache_hit_filter(meta, is_fresh, ctx))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(ctx
            .chain()
            .response_cache_filter(session.req_header(), resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        ctx.chain().cache_vary_filter(meta, req, ctx)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        ctx.chain().should_serve_stale(error)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        crate::grpc::note_deadline(session.req_header(), ctx);
        crate::resilience::before_attempt(ctx).await?;
        crate::logging::upstream_attempt(ctx);
        forward::peer(ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::rewrite_request(session, upstream_request, ctx)?;
        ctx.chain().upstream_request(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let rt = ctx.rt.clone();
        let chain: &Chain = ctx.chain_in(&rt);
        chain.settle_cache(session, ctx);
        chain.response(upstream_response, ctx, false)?;
        chain.hand_off(session, upstream_response, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        // Plugins that change bodies do it in the downstream module (see `hand_off`), the
        // only place that sees the end of a body served from the cache after a revalidation.
        crate::resilience::check_body(ctx, end_of_stream)?;
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::logging::upstream_response(ctx, upstream_response.status.as_u16());
        // Before anything else sees it: a 101 that is not a complete handshake must not turn
        // the client connection into a tunnel.
        crate::websocket::on_response(session, upstream_response, ctx)?;
        forward::check_response(session, upstream_response, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        forward::on_connect_failure(ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        forward::on_proxy_error(session, ctx, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = forward::failure_status(e);
        if status > 0 && session.response_written().is_none() {
            if ctx.request_id.is_empty() {
                ctx.request_id = request::new_request_id();
            }
            if let Err(we) = errors::respond(session, ctx, &Reply::error(status), true).await {
                tracing::debug!("could not write error response: {we}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        // Refusals the gateway decided itself are answers, not errors; neither is a client
        // that went away (logged as 499 in the access log), nor a WebSocket tunnel closed
        // after its idle timeout (logged as its 101).
        matches!(
            e.etype(),
            ErrorType::HTTPStatus(400 | 404 | 408 | 413 | 414 | 429 | 431)
        ) || crate::logging::client_gone(e)
            || crate::websocket::idle_end(ctx, e)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.inflight = None;
        if ctx.probe {
            return;
        }
        let done = crate::logging::finish(session, e, ctx);
        // First the plugins (a concurrency slot is released, the span queued), then the
        // metrics and the access-log line.
        if ctx.chain().has(phase::LOGGING) {
            let rt = ctx.rt.clone();
            ctx.chain_in(&rt).logging(session, ctx, &done);
        }
        crate::logging::on_logging(session, ctx, &done);
    }
}
