//! [`Chain`]: the plugins of one route (globals merged in) in the execution order, and the
//! per-phase loops the gateway hooks call. Each loop first checks the chain's union of
//! [`phase`] bits, so a phase no plugin of the chain serves costs one branch.

use super::api::{phase, Answer, BodyOutcome, Chunk, Outcome, Reply};
use super::Plugin;
use crate::ctx::RequestCtx;
use crate::observe::Finished;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;

/// The plugins of one route (globals merged in), in the table's order.
#[derive(Debug, Default)]
pub struct Chain {
    /// Shared with other routes when it comes from the global list.
    pub plugins: Vec<Arc<Plugin>>,
    /// Union of the plugins' [`phase`] bits.
    phases: u32,
    /// Every plugin's [`super::Hooks::identity_headers`].
    identity_headers: Vec<HeaderName>,
}

impl Chain {
    /// A chain of `plugins`, put in the table's order.
    pub fn new(mut plugins: Vec<Arc<Plugin>>) -> Chain {
        plugins.sort_by_key(|p| p.order());
        let phases = plugins.iter().fold(0, |acc, p| acc | p.phases());
        let mut identity_headers: Vec<HeaderName> = Vec::new();
        for h in plugins.iter().flat_map(|p| p.identity_headers()) {
            if !identity_headers.contains(h) {
                identity_headers.push(h.clone());
            }
        }
        Chain {
            plugins,
            phases,
            identity_headers,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// The chain's plugin of type `T`, if it has one (tests, benchmarks and `explain` look
    /// into a compiled route with it).
    pub fn find<T: super::Member>(&self) -> Option<&T> {
        self.plugins.iter().find_map(|p| T::of(p))
    }

    /// Some plugin of the chain serves `phase` (a [`phase`] bit).
    #[inline]
    pub fn has(&self, phase: u32) -> bool {
        self.phases & phase != 0
    }

    /// Headers the chain's plugins write into the upstream request that identify the caller
    /// (a client may not send them; the cache keys on them).
    pub fn identity_headers(&self) -> &[HeaderName] {
        &self.identity_headers
    }

    fn with(&self, phase: u32) -> impl Iterator<Item = &Plugin> {
        self.plugins
            .iter()
            .map(|p| &**p)
            .filter(move |p| p.phases() & phase != 0)
    }

    /// `request_filter`: the request hooks in order until one answers.
    pub async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Option<Reply> {
        if !self.has(phase::REQUEST) {
            return None;
        }
        for p in self.with(phase::REQUEST) {
            if let Outcome::Respond(r) = p.request(session, ctx).await {
                return Some(r);
            }
        }
        None
    }

    /// `request_body_filter`: `Supplied` when a plugin put the bytes in place itself. The
    /// plugins after it still see the bytes that go upstream (request-mirror copies them).
    pub fn request_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<BodyOutcome> {
        let mut outcome = BodyOutcome::Continue;
        if self.has(phase::REQUEST_BODY) {
            let mut chunk = Chunk {
                data: body,
                end_of_stream,
            };
            for p in self.with(phase::REQUEST_BODY) {
                if p.request_body(&mut chunk, ctx)? == BodyOutcome::Supplied {
                    outcome = BodyOutcome::Supplied;
                }
            }
        }
        Ok(outcome)
    }

    /// `upstream_request_filter`.
    pub fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        if self.has(phase::UPSTREAM_REQUEST) {
            for p in self.with(phase::UPSTREAM_REQUEST) {
                p.upstream_request(req, ctx)?;
            }
        }
        Ok(())
    }

    /// `response_filter` and gateway-made answers: the response hooks in order, those with
    /// [`phase::RESPONSE_LAST`] after the others.
    pub fn response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        gateway_made: bool,
    ) -> Result<()> {
        if !self.has(phase::RESPONSE) {
            return Ok(());
        }
        let mut answer = Answer {
            head: resp,
            gateway_made,
        };
        for p in self.with(phase::RESPONSE) {
            if p.phases() & phase::RESPONSE_LAST == 0 {
                p.response(&mut answer, ctx)?;
            }
        }
        if self.has(phase::RESPONSE_LAST) {
            for p in self.with(phase::RESPONSE_LAST) {
                p.response(&mut answer, ctx)?;
            }
        }
        Ok(())
    }

    /// End of `response_filter`: hands decisions to the downstream module.
    pub fn hand_off(&self, session: &mut Session, resp: &ResponseHeader, ctx: &mut RequestCtx) {
        if self.has(phase::HAND_OFF) {
            for p in self.with(phase::HAND_OFF) {
                p.hand_off(session, resp, ctx);
            }
        }
    }

    /// The first plugin's own body for a gateway-made error answer.
    pub fn gateway_body(
        &self,
        ctx: &RequestCtx,
        status: u16,
        code: &str,
    ) -> Option<(Bytes, HeaderValue)> {
        if !self.has(phase::GATEWAY_BODY) {
            return None;
        }
        self.with(phase::GATEWAY_BODY)
            .find_map(|p| p.gateway_body(ctx, status, code))
    }

    /// Before the gateway writes an answer of its own.
    pub fn before_answer(&self, session: &Session, ctx: &mut RequestCtx) {
        if self.has(phase::BEFORE_ANSWER) {
            for p in self.with(phase::BEFORE_ANSWER) {
                p.before_answer(session, ctx);
            }
        }
    }

    /// `logging`.
    pub fn logging(&self, session: &Session, ctx: &mut RequestCtx, done: &Finished) {
        if self.has(phase::LOGGING) {
            for p in self.with(phase::LOGGING) {
                p.logging(session, ctx, done);
            }
        }
    }

    /// The plugin that runs the cache phases, if any.
    #[inline]
    fn cache(&self) -> Option<&Plugin> {
        if !self.has(phase::CACHE) {
            return None;
        }
        self.with(phase::CACHE).next()
    }

    /// `request_cache_filter`.
    pub fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if let Some(p) = self.cache() {
            p.request_cache_filter(session, ctx);
        }
    }

    /// `cache_key_callback`.
    pub fn cache_key(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        match self.cache() {
            Some(p) => p.cache_key(session, ctx),
            None => Error::e_explain(ErrorType::InternalError, "cache key without a cache plugin"),
        }
    }

    /// `cache_miss`.
    pub fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        match self.cache() {
            Some(p) => p.cache_miss(session, ctx),
            None => session.cache.cache_miss(),
        }
    }

    /// `cache_hit_filter`.
    pub fn cache_hit_filter(
        &self,
        meta: &CacheMeta,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Option<ForcedFreshness> {
        self.cache()
            .and_then(|p| p.cache_hit_filter(meta, is_fresh, ctx))
    }

    /// `response_cache_filter`.
    pub fn response_cache_filter(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        ctx: &RequestCtx,
    ) -> RespCacheable {
        match self.cache() {
            Some(p) => p.response_cache_filter(req, resp, ctx),
            None => RespCacheable::Uncacheable(NoCacheReason::Custom("no cache plugin")),
        }
    }

    /// `cache_vary_filter`.
    pub fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        req: &RequestHeader,
        ctx: &RequestCtx,
    ) -> Option<HashBinary> {
        self.cache()
            .and_then(|p| p.cache_vary_filter(meta, req, ctx))
    }

    /// `should_serve_stale`.
    pub fn should_serve_stale(&self, error: Option<&Error>) -> bool {
        self.cache().is_some_and(|p| p.should_serve_stale(error))
    }

    /// Start of `response_filter`.
    pub fn settle_cache(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if let Some(p) = self.cache() {
            p.settle_cache(session, ctx);
        }
    }
}
