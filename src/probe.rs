//! The public health route for load-balancer probes (`server.health_check_path`) and the
//! drain on `SIGTERM` (`server.drain_delay`).
//!
//! Pingora phase: `request_filter`, first thing, before routing and before every plugin:
//! `GET`/`HEAD` on the path get `200 {"status":"ok"}` from the gateway itself, with no auth,
//! no rate limit and no upstream; other methods get 405. These answers are not in
//! `http_requests_total` or the access log (a probe every second from every load balancer
//! would drown the route series and the log, as NGINX users switch off `access_log` in
//! their health `location`); they are counted in `health_route_requests_total{status_code}`.
//!
//! Draining: Pingora on `SIGTERM` stops accepting at once and closes idle keep-alive
//! connections, so a load balancer never sees the node fail its health check: it only sees
//! connections refused. [`run_forever`] replaces Pingora's signal watch: on `SIGTERM` the
//! process first keeps serving for `drain_delay` with the health path answering 503 (and
//! every response closing its connection), so load balancers take the node out while it
//! still answers; then Pingora's graceful shutdown (`grace_period`) starts. `SIGQUIT` (binary
//! upgrade, the new process keeps the sockets) is Pingora's as before; `SIGINT` stops at once,
//! also once the drain is under way (Pingora sleeps through `grace_period` without watching
//! signals: [`crate::process::exit_on_sigint`]). systemd hears `STOPPING=1` when a shutdown
//! starts, not on `SIGQUIT`: after a handover the service goes on in the new process.

use crate::config::diag::Compiler;
use crate::config::raw::RawRoute;
use crate::ctx::RequestCtx;
use crate::model::ServerSettings;
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Set on `SIGTERM`: the node is leaving.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// `health_route_requests_total` by status: 200, 503, 405.
static ANSWERS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const STATUSES: [u16; 3] = [200, 503, 405];

const OK_BODY: &[u8] = br#"{"status":"ok"}"#;

/// The process received `SIGTERM` and is draining.
#[inline]
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// `server.health_check_path`: an absolute path without query, trailing slash, dot
/// segments or percent-encoding (it is compared with the request path byte for byte).
pub fn compile_path(c: &mut Compiler, path: Option<&str>) -> Option<Box<str>> {
    let p = path?;
    let at = "server.health_check_path";
    if p == "/" {
        c.error(
            at,
            "must not be \"/\": every request would be a health check",
        );
        return None;
    }
    match crate::router::normalize_prefix(p) {
        Err(e) => {
            c.error(at, e);
            None
        }
        Ok(n) if n != p || p.contains('%') || !p.is_ascii() => {
            c.error(
                at,
                format!("{p:?} must be a plain path such as \"/health\" (no trailing slash or percent-encoding)"),
            );
            None
        }
        Ok(n) => Some(n.into_boxed_str()),
    }
}

/// A route listing the health path itself would never receive it: a load error naming both
/// lines. (A shorter prefix such as `/` or `/api` covering it is fine: the gateway answers
/// the health path before routing, as documented.)
pub fn check_routes(c: &mut Compiler, server: &ServerSettings, routes: &[RawRoute]) {
    let Some(h) = server.health_check_path.as_deref() else {
        return;
    };
    for (i, r) in routes.iter().enumerate() {
        for (j, p) in r.paths.iter().enumerate() {
            if crate::router::normalize_prefix(p).is_ok_and(|n| n == h) {
                let rp = format!("routes[{i}].paths[{j}]");
                let line = c.line_of(&rp).unwrap_or(0);
                c.error(
                    "server.health_check_path",
                    format!(
                        "{h:?} is also {rp} of route \"{}\" (line {line}): the gateway answers this path itself before routing, so the route would never receive it; choose another health_check_path or remove the path from the route",
                        r.name
                    ),
                );
            }
        }
    }
}

/// `request_filter`, before routing: answers the health path. `Ok(true)` when answered.
/// While draining every response also closes its connection.
pub async fn answer(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let draining = draining();
    if draining {
        session.set_keepalive(None);
    }
    let Some(path) = ctx.rt.server.health_check_path.as_deref() else {
        return Ok(false);
    };
    if session.req_header().uri.path() != path {
        return Ok(false);
    }
    ctx.probe = true;
    let method = &session.req_header().method;
    let head = *method == Method::HEAD;
    let (slot, body) = if *method != Method::GET && !head {
        let b = crate::errors::body(
            "method_not_allowed",
            "The health check answers GET and HEAD",
            &ctx.request_id,
        );
        (2, b)
    } else if draining {
        let b = crate::errors::body(
            "service_unavailable",
            "The gateway is shutting down",
            &ctx.request_id,
        );
        (1, b)
    } else {
        (0, Bytes::from_static(OK_BODY))
    };
    ANSWERS[slot].fetch_add(1, Ordering::Relaxed);
    let mut h = ResponseHeader::build(STATUSES[slot], Some(4))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if slot == 2 {
        h.insert_header(http::header::ALLOW, "GET, HEAD")?;
    }
    session.write_response_header(Box::new(h), head).await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// Registers [`metric_families`] (read at scrape time; once, at startup).
pub fn register_metrics() {
    crate::observe::metrics::registry().on_scrape(|_, out| out.extend(metric_families()));
}

/// `health_route_requests_total{status_code}`, for `GET /metrics`.
pub fn metric_families() -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    let Ok(v) = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "health_route_requests_total",
            "Requests to server.health_check_path answered by the gateway, by status code (503 while draining, 405 for other methods).",
        ),
        &["status_code"],
    ) else {
        return Vec::new();
    };
    for (i, s) in STATUSES.iter().enumerate() {
        v.with_label_values(&[&s.to_string()])
            .inc_by(ANSWERS[i].load(Ordering::Relaxed));
    }
    v.collect()
}

/// Pingora's `SIGQUIT`/`SIGTERM`/`SIGINT` watch with the drain step before a graceful
/// terminate.
struct DrainThenShutdown {
    delay: Duration,
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainThenShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = signal(SignalKind::quit()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        tokio::select! {
            _ = next(&mut quit) => return ShutdownSignal::GracefulUpgrade,
            _ = next(&mut int) => {
                crate::sdnotify::stopping();
                return ShutdownSignal::FastShutdown;
            }
            _ = next(&mut term) => {}
        }
        DRAINING.store(true, Ordering::Relaxed);
        crate::sdnotify::stopping();
        crate::process::exit_on_sigint();
        if self.delay.is_zero() {
            return ShutdownSignal::GracefulTerminate;
        }
        tracing::info!(
            drain_delay = ?self.delay,
            "SIGTERM: draining (health check answers 503) before the graceful shutdown"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            // A second SIGTERM cuts the drain short (SIGINT ends the process at once).
            _ = next(&mut term) => {}
        }
        tracing::info!("drain delay over: graceful shutdown starts");
        ShutdownSignal::GracefulTerminate
    }
}

/// Runs the server until it shuts down, with the drain step on `SIGTERM`, then exits.
pub fn run_forever(server: Server, drain_delay: Duration) -> ! {
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainThenShutdown { delay: drain_delay }),
    });
    crate::process::remove_pid_file_if_ours();
    std::process::exit(0)
}
