//! The auth call of forward-auth's `request_filter`: the cache lookup, the HTTP call to the
//! auth service and what its answer means for the request, and the metrics of both.

use super::config::AuthMethod;
use super::{
    CallError, Decision, ForwardAuth, FAMILIES, MAX_COPIED_HEADER_BYTES, MAX_DRAIN_BYTES, RESULTS,
    UNAVAILABLE, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_METHOD, X_FORWARDED_PROTO,
    X_FORWARDED_URI, X_REQUEST_ID,
};
use crate::ctx::RequestCtx;
use crate::plugins::cors::is_cors_preflight;
use crate::plugins::{Outcome, Reply};
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use prometheus::{Histogram, IntCounter};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Metric handles of a route entry, resolved once at load.
pub(super) struct Handles {
    calls: [IntCounter; 3],
    hits: [IntCounter; 2],
    duration: Histogram,
}

impl Handles {
    fn new(route: &str) -> Handles {
        let f = &*FAMILIES;
        let call = |r: &str| f.calls.with_label_values(&[route, r]);
        let hit = |r: &str| f.cache_hits.with_label_values(&[route, r]);
        Handles {
            calls: [call("allow"), call("deny"), call("error")],
            hits: [hit("allow"), hit("deny")],
            duration: f.duration.with_label_values(&[route]),
        }
    }
}

/// What to count.
#[derive(Clone, Copy)]
pub(super) enum Count {
    Call(usize, Duration),
    Hit(usize),
}

impl ForwardAuth {
    pub(super) fn count(&self, ctx: &RequestCtx, what: Count) {
        if let Some(route) = &self.route {
            let h = self.handles.get_or_init(|| Handles::new(route));
            match what {
                Count::Call(i, took) => {
                    if let Some(c) = h.calls.get(i) {
                        c.inc();
                    }
                    h.duration.observe(took.as_secs_f64());
                }
                Count::Hit(i) => {
                    if let Some(c) = h.hits.get(i) {
                        c.inc();
                    }
                }
            }
            return;
        }
        // A global entry serves many routes: label by the request's.
        let route = ctx.route().map_or("", |r| r.name.as_str());
        let f = &*FAMILIES;
        match what {
            Count::Call(i, took) => {
                let r = RESULTS.get(i).copied().unwrap_or("error");
                f.calls.with_label_values(&[route, r]).inc();
                f.duration
                    .with_label_values(&[route])
                    .observe(took.as_secs_f64());
            }
            Count::Hit(i) => {
                let r = RESULTS.get(i).copied().unwrap_or("allow");
                f.cache_hits.with_label_values(&[route, r]).inc();
            }
        }
    }

    /// SHA-256 of the cache key material: each `cache.key` header (every value, length
    /// prefixed; absent and empty differ), then the method and path+query when configured.
    pub(super) fn cache_key(&self, req: &RequestHeader) -> [u8; 32] {
        let mut h = Sha256::new();
        for name in &self.key_headers {
            let values = req.headers.get_all(name);
            h.update((values.iter().count() as u32).to_le_bytes());
            for v in values {
                h.update((v.len() as u32).to_le_bytes());
                h.update(v.as_bytes());
            }
        }
        if self.key_method {
            let m = req.method.as_str();
            h.update((m.len() as u32).to_le_bytes());
            h.update(m.as_bytes());
        }
        if self.key_path {
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            h.update((pq.len() as u32).to_le_bytes());
            h.update(pq.as_bytes());
        }
        h.finalize().into()
    }

    /// The hook without a session (unit tests call it directly). `tls`: the client connection
    /// is HTTPS.
    pub async fn authorize(
        &self,
        req: &mut RequestHeader,
        tls: bool,
        ctx: &mut RequestCtx,
    ) -> Outcome {
        // Whatever happens next, the client's own copies never go upstream.
        for name in &self.upstream_headers {
            req.remove_header(name);
        }
        if !self.run_on_preflight && is_cors_preflight(req) {
            return Outcome::Continue;
        }
        let now = Instant::now();
        let key = self.state.cache.as_ref().map(|_| self.cache_key(req));
        let cached = match (&self.state.cache, &key) {
            (Some(cache), Some(k)) => cache.get(k, now),
            _ => None,
        };
        let decision = match cached {
            Some(d) => {
                self.count(
                    ctx,
                    Count::Hit(usize::from(!matches!(*d, Decision::Allow { .. }))),
                );
                d
            }
            None => {
                let started = Instant::now();
                let res = Box::pin(self.call(req, tls, ctx)).await;
                let took = started.elapsed();
                match res {
                    Ok(d) => {
                        let d = Arc::new(d);
                        let i = usize::from(!matches!(*d, Decision::Allow { .. }));
                        self.count(ctx, Count::Call(i, took));
                        if let (Some(cache), Some(k)) = (&self.state.cache, key) {
                            cache.put(k, d.clone(), Instant::now());
                        }
                        d
                    }
                    Err(e) => {
                        self.count(ctx, Count::Call(2, took));
                        if self.state.warn.may_warn() {
                            tracing::warn!(
                                route = ctx.route().map_or("", |r| r.name.as_str()),
                                request_id = %ctx.request_id,
                                auth_service = %self.target,
                                "forward-auth: the auth service {e}; answering 503"
                            );
                        } else {
                            tracing::debug!(request_id = %ctx.request_id, "forward-auth: the auth service {e}");
                        }
                        return Outcome::Respond(Reply::error_with(
                            503,
                            "service_unavailable",
                            UNAVAILABLE,
                        ));
                    }
                }
            }
        };
        match &*decision {
            Decision::Allow { headers, consumer } => {
                for (n, v) in headers {
                    if req.append_header(n.clone(), v.clone()).is_err() {
                        return Outcome::Respond(Reply::error(500));
                    }
                }
                ctx.plugins.forward_auth = Some(decision.clone());
                if let Some(i) = consumer
                    .as_deref()
                    .and_then(|name| self.consumers.get(name))
                {
                    ctx.consumer = Some(*i);
                }
                Outcome::Continue
            }
            Decision::Deny { status, headers } => {
                let mut reply = Reply::error(*status);
                reply.headers.extend(headers.iter().cloned());
                Outcome::Respond(reply)
            }
        }
    }

    /// The headers of the auth call.
    pub(super) fn call_headers(
        &self,
        req: &RequestHeader,
        tls: bool,
        ctx: &RequestCtx,
    ) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.request_headers.len() + 6);
        for name in &self.request_headers {
            for v in req.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(req.method.as_str()) {
            h.insert(X_FORWARDED_METHOD, v);
        }
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(v) = HeaderValue::from_str(pq) {
            h.insert(X_FORWARDED_URI, v);
        }
        let host = req.headers.get(HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(v) = host {
            h.insert(X_FORWARDED_HOST, v);
        }
        // Behind a trusted proxy its X-Forwarded-Proto stands (as upstream, see forward.rs).
        let proto = crate::request::forwarded_proto(&req.headers)
            .filter(|_| ctx.peer_trusted)
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .unwrap_or(HeaderValue::from_static(if tls { "https" } else { "http" }));
        h.insert(X_FORWARDED_PROTO, proto);
        if let Some(ip) = ctx.client_ip {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                h.insert(X_FORWARDED_FOR, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            h.insert(X_REQUEST_ID, v);
        }
        h
    }

    /// One call to the auth service.
    async fn call(
        &self,
        req: &RequestHeader,
        tls: bool,
        ctx: &RequestCtx,
    ) -> Result<Decision, CallError> {
        let method = match &self.method {
            AuthMethod::Fixed(m) => m.clone(),
            AuthMethod::Original => req.method.clone(),
        };
        let headers = self.call_headers(req, tls, ctx);
        let mut resp = self
            .state
            .client
            .request(method, self.url.clone())
            .headers(headers)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let pick = |names: &[HeaderName]| -> Result<Vec<(HeaderName, HeaderValue)>, CallError> {
            let mut out = Vec::new();
            let mut bytes = 0;
            for n in names {
                for v in resp.headers().get_all(n) {
                    bytes += n.as_str().len() + v.len();
                    if bytes > MAX_COPIED_HEADER_BYTES {
                        return Err(CallError::HeadersTooLarge);
                    }
                    out.push((n.clone(), v.clone()));
                }
            }
            Ok(out)
        };
        let decision = match status {
            200..=299 => Decision::Allow {
                headers: pick(&self.upstream_headers)?,
                consumer: self
                    .consumer_header
                    .as_ref()
                    .and_then(|h| resp.headers().get(h))
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.trim().into()),
            },
            401 | 403 => Decision::Deny {
                status,
                headers: pick(&self.client_headers)?,
            },
            s => return Err(CallError::Status(s)),
        };
        // Read the (ignored) body so the connection goes back to the pool; a large or slow one
        // is cut (the connection is then dropped), still within the client's timeout.
        let mut drained = 0;
        while let Ok(Some(chunk)) = resp.chunk().await {
            drained += chunk.len();
            if drained > MAX_DRAIN_BYTES {
                break;
            }
        }
        Ok(decision)
    }
}
