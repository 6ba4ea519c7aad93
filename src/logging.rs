//! What the request context tells observability, in Pingora's `logging` phase ([`finish`],
//! then [`on_logging`]: one metrics update and one access-log line per request, client
//! aborts included), `upstream_peer` ([`upstream_attempt`]: start of an upstream attempt)
//! and `upstream_response_filter` ([`upstream_response`]: upstream status and time to its
//! response head); and, at every config install, the shape of the snapshot the metrics
//! follow ([`install_metrics`]).
//!
//! Here, not in `observe`: this reads [`RequestCtx`] and the snapshot and hands plain
//! values down to [`crate::observe`], which stays a leaf. Nothing here takes a lock.

use crate::ctx::{RequestCtx, Runtime};
use crate::model::AccessLog;
use crate::observe::metrics::{self, Shape};
use crate::observe::{access_log, Finished, CLIENT_CLOSED};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// The client closed the connection: not a gateway or upstream error.
pub fn client_gone(e: &Error) -> bool {
    crate::forward::failure_status(e) == 0
}

/// The status the request ended with: what was sent, else what the failure maps to, else
/// 499 when the client left before any response head.
pub fn final_status(session: &Session, e: Option<&Error>) -> u16 {
    if let Some(h) = session.response_written() {
        return h.status.as_u16();
    }
    match e.map(crate::forward::failure_status) {
        Some(0) | None => CLIENT_CLOSED,
        Some(s) => s,
    }
}

/// The metric handles of route `index` of `rt` (`None`: no route matched): one atomic load
/// while `rt` is the installed snapshot.
pub fn route_metrics(rt: &Arc<Runtime>, index: Option<usize>) -> Arc<metrics::RouteMetrics> {
    metrics::route_metrics(Arc::as_ptr(rt).cast(), index, |i| {
        rt.routes
            .get(i)
            .map(|r| (r.name.as_str(), r.upstream.name.as_str()))
    })
}

/// `upstream_peer`: an upstream attempt starts (timing covers connect and the response head).
#[inline]
pub fn upstream_attempt(ctx: &mut RequestCtx) {
    ctx.upstream_started = Some(Instant::now());
    ctx.upstream_status = None;
    ctx.upstream_time = None;
}

/// `upstream_response_filter`: the upstream answered this attempt with `status`.
pub fn upstream_response(ctx: &mut RequestCtx, status: u16) {
    let took = ctx.upstream_started.map(|t| t.elapsed());
    ctx.upstream_status = Some(status);
    ctx.upstream_time = took;
    if let Some(d) = took {
        let rm = route_metrics(&ctx.rt, ctx.route);
        let chosen = ctx.upstream_override.as_ref().map(|u| u.name.as_str());
        rm.with_upstream(chosen, |u| u.observe(status, d.as_secs_f64()));
    }
}

/// The contract code of an answer the gateway made itself (not one proxied from the
/// upstream or served from cache); `None` for successes and client aborts.
fn error_code(ctx: &RequestCtx, status: u16) -> Option<&'static str> {
    if status < 400 || status == CLIENT_CLOSED {
        return None;
    }
    if let Some(code) = ctx.error_code {
        return Some(code);
    }
    let from_upstream = ctx.upstream_status == Some(status);
    let from_cache = matches!(ctx.cache_status, Some("HIT" | "STALE"));
    if from_upstream || from_cache {
        return None;
    }
    Some(crate::errors::code_for(status).0)
}

/// `logging`: how the request ended.
pub fn finish(session: &Session, e: Option<&Error>, ctx: &RequestCtx) -> Finished {
    let status = final_status(session, e);
    Finished {
        status,
        elapsed: ctx.started.elapsed(),
        error: error_code(ctx, status),
    }
}

/// `logging`: counts the request in its route's series and queues its access-log line.
pub fn on_logging(session: &Session, ctx: &RequestCtx, done: &Finished) {
    let status = done.status;
    let elapsed = done.elapsed;
    let method = metrics::method_index(&session.req_header().method);
    let rm = route_metrics(&ctx.rt, ctx.route);
    // The upstream that served (traffic-split's choice) names the `service` label.
    let chosen = ctx.upstream_override.as_ref().map(|u| u.name.as_str());
    rm.record_served(chosen, method, status, elapsed.as_secs_f64());
    if ctx.attempts > 1 {
        rm.with_upstream(chosen, |u| u.retried(u64::from(ctx.attempts - 1)));
    }
    if ctx.rt.server.access_log != AccessLog::Off {
        let req = session.req_header();
        let path = req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| req.uri.path());
        let line = access_log::format_line(&access_log::Record {
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip,
            method: req.method.as_str(),
            path,
            route: ctx.route().map(|r| r.name.as_str()),
            // The upstream that served: a plugin's choice (traffic-split) or the route's.
            upstream: ctx.upstream().map(|u| u.name.as_str()),
            target: ctx.selected_target().map(|t| t.addr.as_str()),
            status,
            bytes_sent: session.as_downstream().body_bytes_sent(),
            elapsed,
            upstream_time: ctx.upstream_time,
            consumer: ctx
                .consumer
                .and_then(|i| ctx.rt.consumers.get(i))
                .map(|c| c.username.as_str()),
            cache: ctx.cache_status,
            error: done.error,
            trace_id: ctx.trace_id,
        });
        access_log::submit(line);
    }
}

/// What the metrics need of a snapshot: its routes, upstreams and targets by name.
fn shape(rt: &Runtime) -> Shape {
    Shape {
        routes: rt
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.upstream.name.clone(),
                    r.plugins.names().iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect(),
        upstreams: rt
            .upstreams
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    u.targets().targets.iter().map(|t| t.addr.clone()).collect(),
                    u.health_check.is_some(),
                    u.passive.is_some(),
                )
            })
            .collect(),
    }
}

/// After a load or reload: the metric handles and series follow `rt`
/// ([`metrics::install`]).
pub fn install_metrics(rt: &Arc<Runtime>) {
    let weak = Arc::downgrade(rt);
    let identity: std::sync::Weak<dyn std::any::Any + Send + Sync> = weak;
    metrics::install(identity, shape(rt), &rt.version.to_string(), &rt.hash);
}
