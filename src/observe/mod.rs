//! Observability: Prometheus metrics ([`metrics`]), the JSON access log ([`access_log`]) and
//! the reload change summary ([`changes`]).
//!
//! Pingora phases served: `logging` ([`finish`], then [`on_logging`]: one metrics update and
//! one access-log line per request, client aborts included), `upstream_peer` ([`upstream_attempt`]: start of
//! an upstream attempt) and `upstream_response_filter` ([`upstream_response`]: upstream
//! status and time to its response head). Nothing here takes a lock on the request path.

pub mod access_log;
pub mod build_info;
pub mod certs;
pub mod changes;
pub mod metrics;

use crate::ctx::RequestCtx;
use crate::model::AccessLog;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// Status logged when the client went away before a response head was sent (NGINX's 499).
pub const CLIENT_CLOSED: u16 = 499;

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
        let rm = metrics::route_metrics(&ctx.rt, ctx.route);
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

/// How a request ended, computed once in `logging` for the metrics, the access log and the
/// plugins' `logging` hooks.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// The status sent (or 499 for a client that left first).
    pub status: u16,
    /// From the request head to now.
    pub elapsed: Duration,
    /// The contract code of a gateway-made error answer.
    pub error: Option<&'static str>,
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
    let rm = metrics::route_metrics(&ctx.rt, ctx.route);
    // The upstream that served (traffic-split's choice) names the `service` label.
    let chosen = ctx.upstream_override.as_ref().map(|u| u.name.as_str());
    rm.record_served(chosen, method, status, elapsed.as_secs_f64());
    if ctx.attempts > 1 {
        rm.with_upstream(chosen, |u| u.retried(u64::from(ctx.attempts - 1)));
    }
    if ctx.rt.server.access_log != AccessLog::Off {
        let line = access_log::format_line(session, ctx, status, elapsed, done.error);
        access_log::submit(line);
    }
}
