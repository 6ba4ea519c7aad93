//! `request-mirror` (request_filter, upstream_request_filter, request_body_filter, logging):
//! shadow traffic. A sampled share of a route's requests is copied to another upstream (a
//! new version, a replay recorder) once the real request is on its way; the shadow's answer
//! is read and discarded. Nothing the shadow does (slow, failing, absent) delays or changes
//! the client's answer.
//!
//! **What is copied.** The request as the route's upstream got it: the head is taken in
//! `upstream_request_filter` (this plugin's hook runs last), so `strip_path`, the forwarding
//! headers, identity headers and request-transformer's rewrites are in it; the body is the
//! bytes Pingora handed upstream in `request_body_filter` (request-transformer's rewritten
//! body included: the chain lets a later plugin see a supplied body), buffered as shared
//! `Bytes` handles (no copy) up to `max_body`. A body over `max_body` is not mirrored at all
//! (never truncated). Hop-by-hop headers go; `Host` is the shadow target's own (the client's
//! with `preserve_host`); `headers` are added.
//!
//! **When.** The sampling draw happens in `request_filter`, after every other plugin's
//! request hook admitted the request (the table puts this plugin last): a request refused
//! by authentication, a limit or a fault, or answered from the cache, never reaches the
//! upstream and is not mirrored. The copy is handed over at the end of the request body of
//! the first attempt that sent it (a retry is not mirrored again); a body-less request whose
//! upstream protocol never reports the end of its body is handed over in `logging`.
//!
//! **Sending.** Each instance has a bounded number of slots (`queue`): a copy that finds no
//! free slot is dropped and counted; one that gets a slot is sent by its own task, off the
//! request path, and frees the slot when it is done or after `timeout` (the whole exchange).
//! The target comes from the shadow upstream's balancer (its health checks and circuit
//! breaker state apply, and its in-flight count for `least_conn`) and the connection from
//! Pingora's connector with the upstream's own TLS and HTTP version settings (the same
//! `HttpPeer` the proxy would use), pooled in a connector of this plugin's: Pingora's
//! connector takes the upstream's `HttpPeer` as it is (SNI, CA, client certificate, h2/h2c),
//! which reqwest could not express (no SNI other than the URL's host). A shadow's failure
//! is never recorded against any target's health, never counted in the `upstream_*` or
//! request metrics, and takes nothing from a retry budget.

use super::{phase, Build, Chunk, Hooks, Outcome};
use crate::config::units::{ByteSize, Dur};
use crate::ctx::RequestCtx;
use crate::observe::Finished;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use prometheus::{IntCounter, IntCounterVec};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an idle pooled connection to a shadow target is kept.
const IDLE: Duration = Duration::from_secs(60);
/// Idle connections kept by the mirrors' connector (all shadow targets together).
const POOL: usize = 256;
/// Most slots an instance may have.
const MAX_QUEUE: usize = 65_536;
/// Informational (1xx) heads skipped before the final one.
const MAX_INFORMATIONAL: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    upstream: String,
    sample: f64,
    timeout: Dur,
    max_body: ByteSize,
    queue: usize,
    headers: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: String::new(),
            sample: 1.0,
            timeout: Dur(Duration::from_secs(2)),
            max_body: ByteSize(64 * 1024),
            queue: 1024,
            headers: BTreeMap::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics: the `mirror_*` families
// ---------------------------------------------------------------------------------------------

struct Families {
    requests: IntCounterVec,
    dropped: IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        requests: r.counter_vec(
            "mirror_requests_total",
            "Request copies request-mirror sent to a shadow upstream, by route, shadow upstream and result (sent: the shadow answered, the answer was discarded; failed: no available target, a connection or protocol error; timeout: not done within the plugin's timeout).",
            &["route", "upstream", "result"],
        ),
        dropped: r.counter_vec(
            "mirror_dropped_total",
            "Sampled requests request-mirror did not copy, by route, shadow upstream and reason (queue_full, body_too_large, incomplete, upgrade).",
            &["route", "upstream", "reason"],
        ),
    }
});

const RESULTS: [&str; 3] = ["sent", "failed", "timeout"];
const REASONS: [&str; 4] = ["queue_full", "body_too_large", "incomplete", "upgrade"];

/// (route, upstream) pairs whose series exist, so a route that drops the plugin removes
/// them (a counter family cannot be searched by one label).
static SERIES: Lazy<Mutex<Vec<(String, String)>>> = Lazy::new(|| Mutex::new(Vec::new()));

/// One instance's series handles, resolved at build.
#[derive(Debug)]
struct Counters {
    sent: IntCounter,
    failed: IntCounter,
    timeout: IntCounter,
    queue_full: IntCounter,
    body_too_large: IntCounter,
    incomplete: IntCounter,
    upgrade: IntCounter,
}

impl Counters {
    fn new(route: &str, upstream: &str) -> Counters {
        let f = &*FAMILIES;
        {
            let mut s = SERIES.lock();
            if !s.iter().any(|(r, u)| r == route && u == upstream) {
                s.push((route.to_string(), upstream.to_string()));
            }
        }
        let res = |r: &str| f.requests.with_label_values(&[route, upstream, r]);
        let drop = |r: &str| f.dropped.with_label_values(&[route, upstream, r]);
        Counters {
            sent: res("sent"),
            failed: res("failed"),
            timeout: res("timeout"),
            queue_full: drop("queue_full"),
            body_too_large: drop("body_too_large"),
            incomplete: drop("incomplete"),
            upgrade: drop("upgrade"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per request
// ---------------------------------------------------------------------------------------------

/// A sampled request's copy, as it is gathered (`RequestCtx::plugins.request_mirror`).
#[derive(Debug, Default)]
pub struct Capture {
    /// The upstream request head of the first attempt that got that far (set in
    /// `upstream_request_filter`, whose hook only reads the context).
    head: OnceLock<RequestHeader>,
    chunks: Vec<Bytes>,
    len: usize,
    /// The attempt whose body is in `chunks` (a retry replays the body from its start).
    attempt: u32,
    /// Some body hook call was made (a body-less request over HTTP/2 may see none).
    body_seen: bool,
    /// Handed over, dropped or given up: nothing more to do.
    finished: bool,
}

/// Per request: `Some` when the request was sampled.
pub type State = Option<Box<Capture>>;

// ---------------------------------------------------------------------------------------------
// The sender
// ---------------------------------------------------------------------------------------------

/// What an instance's sending tasks share.
struct Sender {
    upstream: Arc<Upstream>,
    connector: Arc<MirrorConnector>,
    timeout: Duration,
    slots: Arc<Semaphore>,
    headers: Vec<(HeaderName, HeaderValue)>,
    counters: Counters,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("upstream", &self.upstream.name)
            .field("timeout", &self.timeout)
            .field("free_slots", &self.slots.available_permits())
            .finish()
    }
}

/// Pingora's connector and its connection pool, shared by every mirror of a registry (kept
/// across reloads).
struct MirrorConnector(Connector);

/// One copy on its way.
struct Job {
    head: RequestHeader,
    body: Vec<Bytes>,
    preserve_host: bool,
    client_ip: Option<IpAddr>,
}

/// Why an exchange failed (for the debug log only).
type Failure = Box<Error>;

fn fail(why: &'static str) -> Failure {
    Error::explain(ErrorType::InternalError, why)
}

/// Hop-by-hop headers (RFC 9110 7.6.1) and `Expect` (no interim answer is awaited).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

impl Sender {
    /// Hands `job` to a free slot's task; counts a drop when there is none.
    fn dispatch(self: &Arc<Self>, job: Job) {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                self.counters.queue_full.inc();
                return;
            }
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.counters.failed.inc();
            return;
        };
        let me = self.clone();
        rt.spawn(async move { me.run(job, slot).await });
    }

    async fn run(&self, job: Job, _slot: OwnedSemaphorePermit) {
        match tokio::time::timeout(self.timeout, self.exchange(job)).await {
            Ok(Ok(())) => self.counters.sent.inc(),
            Ok(Err(e)) => {
                tracing::debug!(upstream = %self.upstream.name, error = %e, "request-mirror: shadow exchange failed");
                self.counters.failed.inc();
            }
            Err(_) => self.counters.timeout.inc(),
        }
    }

    async fn exchange(&self, job: Job) -> Result<(), Failure> {
        let up = &self.upstream;
        let set = up.targets();
        let sel = set
            .select(&up.cursor, job.client_ip, 0)
            .ok_or_else(|| fail("no available target"))?;
        let _inflight = set.track(sel);
        let target = &set.targets[sel.index];
        let mut peer = up.transport.peer(target);
        let o = &mut peer.options;
        o.connection_timeout = Some(up.timeouts.connect.min(self.timeout));
        o.read_timeout = Some(up.timeouts.read.min(self.timeout));
        o.write_timeout = Some(up.timeouts.write.min(self.timeout));
        o.idle_timeout = Some(if up.keepalive == 0 {
            Duration::ZERO
        } else {
            IDLE
        });
        let idle = o.idle_timeout;
        let tls = peer.is_tls();

        let mut head = job.head;
        // Headers the `Connection` header names are hop-by-hop too.
        let named: Vec<HeaderName> = head
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for h in HOP_BY_HOP.iter().chain(&named) {
            head.remove_header(h);
        }
        let had_length = head.remove_header(&header::CONTENT_LENGTH).is_some();
        let len: usize = job.body.iter().map(Bytes::len).sum();
        if had_length || len > 0 {
            head.insert_header(header::CONTENT_LENGTH, len)?;
        }
        for (n, v) in &self.headers {
            head.insert_header(n.clone(), v.clone())?;
        }
        let host = if job.preserve_host {
            head.headers.get(header::HOST).cloned()
        } else {
            HeaderValue::from_str(&target.host).ok()
        };

        let (mut session, _reused) = self.connector.0.get_http_session(&peer).await?;
        match &session {
            HttpSession::H1(_) => {
                head.set_version(http::Version::HTTP_11);
                if let Some(h) = host {
                    head.insert_header(header::HOST, h)?;
                }
            }
            _ => {
                // :authority instead of Host on HTTP/2.
                head.remove_header(&header::HOST);
                let authority = host
                    .as_ref()
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                    .ok_or_else(|| fail("no authority for an HTTP/2 shadow request"))?;
                let pq = head
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                let uri = http::Uri::builder()
                    .scheme(if tls { "https" } else { "http" })
                    .authority(authority)
                    .path_and_query(pq)
                    .build()
                    .map_err(|_| fail("invalid shadow request target"))?;
                head.set_uri(uri);
                head.set_version(http::Version::HTTP_2);
            }
        }
        session.write_request_header(Box::new(head)).await?;
        let n = job.body.len();
        for (i, chunk) in job.body.into_iter().enumerate() {
            session.write_request_body(chunk, i + 1 == n).await?;
        }
        session.finish_request_body().await?;
        for _ in 0..=MAX_INFORMATIONAL {
            session.read_response_header().await?;
            let status = session
                .response_header()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
            if !(100..200).contains(&status) || status == 101 {
                break;
            }
        }
        // The answer is read to its end (so the connection can be reused) and discarded.
        while session.read_response_body().await?.is_some() {}
        self.connector
            .0
            .release_http_session(session, &peer, idle)
            .await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct RequestMirror {
    sample: f64,
    max_body: usize,
    sender: Arc<Sender>,
}

impl RequestMirror {
    /// Gives the copy gathered in `cap` to the sender, or counts why not.
    fn hand_over(&self, cap: &mut Capture, preserve_host: bool, client_ip: Option<IpAddr>) {
        cap.finished = true;
        let Some(head) = cap.head.take() else {
            return;
        };
        if is_tunnel(&head) {
            self.sender.counters.upgrade.inc();
            return;
        }
        self.sender.dispatch(Job {
            head,
            body: std::mem::take(&mut cap.chunks),
            preserve_host,
            client_ip,
        });
    }
}

/// An upgrade (WebSocket) or CONNECT request: a tunnel cannot be replayed.
fn is_tunnel(head: &RequestHeader) -> bool {
    head.headers.contains_key(header::UPGRADE) || head.method == http::Method::CONNECT
}

/// `request_body_filter` hands the copy over at the end of the body; these are what it
/// needs from the context besides the capture.
fn request_facts(ctx: &RequestCtx) -> (bool, Option<IpAddr>) {
    (ctx.route().is_some_and(|r| r.preserve_host), ctx.client_ip)
}

impl Hooks for RequestMirror {
    type State = State;
    const PHASES: u32 =
        phase::REQUEST | phase::UPSTREAM_REQUEST | phase::REQUEST_BODY | phase::LOGGING;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let p = format!("{path}.config");
        let errors = c.error_count();
        if !(0.0..=1.0).contains(&cfg.sample) {
            c.error(
                &format!("{p}.sample"),
                format!("must be from 0.0 to 1.0, got {}", cfg.sample),
            );
        }
        if cfg.timeout.0.is_zero() {
            c.error(&format!("{p}.timeout"), "must be more than 0");
        }
        if cfg.queue == 0 || cfg.queue > MAX_QUEUE {
            c.error(
                &format!("{p}.queue"),
                format!("must be from 1 to {MAX_QUEUE}, got {}", cfg.queue),
            );
        }
        let mut headers = Vec::new();
        for (name, value) in &cfg.headers {
            let at = format!("{p}.headers.{name}");
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    if HOP_BY_HOP.contains(&n) || n == header::HOST || n == header::CONTENT_LENGTH {
                        c.error(&at, format!("{name} is the gateway's to set"));
                    } else {
                        headers.push((n, v));
                    }
                }
                (Err(_), _) => c.error(&at, format!("invalid header name {name:?}")),
                (_, Err(_)) => c.error(&at, "invalid header value"),
            }
        }
        let upstream = if cfg.upstream.is_empty() {
            c.error(
                &format!("{p}.upstream"),
                "required: the name of the shadow upstream (one of `upstreams`)",
            );
            None
        } else {
            let found = env.upstreams.iter().find(|u| u.name == cfg.upstream);
            if found.is_none() {
                c.error(
                    &format!("{p}.upstream"),
                    format!("unknown upstream \"{}\"", cfg.upstream),
                );
            }
            found.cloned()
        };
        if c.error_count() != errors {
            return None;
        }
        let upstream = upstream?;
        let connector = env
            .registry
            .get_or_insert_with("request-mirror connector", || {
                MirrorConnector(Connector::new(Some(ConnectorOptions::new(POOL))))
            });
        let counters = Counters::new(env.route.unwrap_or(""), &upstream.name);
        Some(RequestMirror {
            sample: cfg.sample,
            max_body: usize::try_from(cfg.max_body.0).unwrap_or(usize::MAX),
            sender: Arc::new(Sender {
                upstream,
                connector,
                timeout: cfg.timeout.0,
                slots: Arc::new(Semaphore::new(cfg.queue)),
                headers,
                counters,
            }),
        })
    }

    /// The sampling draw, after every other plugin admitted the request.
    async fn request(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if self.sample >= 1.0 || (self.sample > 0.0 && rand::random::<f64>() < self.sample) {
            ctx.plugins.request_mirror = Some(Box::default());
        }
        Outcome::Continue
    }

    /// The head as it goes upstream (first attempt that gets this far).
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        if let Some(cap) = &ctx.plugins.request_mirror {
            if !cap.finished && cap.head.get().is_none() {
                let _ = cap.head.set(req.clone());
            }
        }
        Ok(())
    }

    fn request_body(
        &self,
        body: &mut Chunk<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<super::BodyOutcome> {
        if ctx.plugins.request_mirror.is_none() {
            return Ok(super::BodyOutcome::Continue);
        }
        let attempt = ctx.attempts;
        let limit = ctx.body_limit;
        let (preserve_host, client_ip) = request_facts(ctx);
        let Some(cap) = ctx.plugins.request_mirror.as_deref_mut() else {
            return Ok(super::BodyOutcome::Continue);
        };
        let Some(head) = cap.head.get() else {
            return Ok(super::BodyOutcome::Continue);
        };
        if cap.finished {
            return Ok(super::BodyOutcome::Continue);
        }
        if is_tunnel(head) {
            // Counted now: its bytes are the tunnel's, with no end to wait for.
            self.hand_over(cap, preserve_host, client_ip);
            return Ok(super::BodyOutcome::Continue);
        }
        cap.body_seen = true;
        if cap.attempt != attempt {
            cap.chunks.clear();
            cap.len = 0;
            cap.attempt = attempt;
        }
        if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
            cap.len += b.len();
            if cap.len > self.max_body {
                cap.finished = true;
                cap.chunks = Vec::new();
                self.sender.counters.body_too_large.inc();
                return Ok(super::BodyOutcome::Continue);
            }
            cap.chunks.push(b.clone());
        }
        if body.end_of_stream {
            if cap.len as u64 > limit {
                // The gateway refuses this body (413): nothing went upstream whole.
                cap.finished = true;
            } else {
                self.hand_over(cap, preserve_host, client_ip);
            }
        }
        Ok(super::BodyOutcome::Continue)
    }

    /// A copy the body phase never handed over: a body-less request whose upstream protocol
    /// reported no end of body goes now; one whose body never ended is counted.
    fn logging(&self, _session: &Session, ctx: &mut RequestCtx, _done: &Finished) {
        if ctx.plugins.request_mirror.is_none() {
            return;
        }
        let (preserve_host, client_ip) = request_facts(ctx);
        let Some(cap) = ctx.plugins.request_mirror.as_deref_mut() else {
            return;
        };
        if cap.finished {
            return;
        }
        let Some(head) = cap.head.get() else {
            // Never sent upstream (answered from the cache, failed before): not mirrored.
            return;
        };
        let bodyless = !head.headers.contains_key(header::TRANSFER_ENCODING)
            && head
                .headers
                .get(header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        if !cap.body_seen && bodyless {
            self.hand_over(cap, preserve_host, client_ip);
        } else {
            cap.finished = true;
            self.sender.counters.incomplete.inc();
        }
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// A route that no longer has the plugin loses its series.
    fn route_series(route: &str, create: bool) {
        if create {
            return;
        }
        let mut s = SERIES.lock();
        s.retain(|(r, u)| {
            if r != route {
                return true;
            }
            for res in RESULTS {
                let _ = FAMILIES.requests.remove_label_values(&[r, u, res]);
            }
            for reason in REASONS {
                let _ = FAMILIES.dropped.remove_label_values(&[r, u, reason]);
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{ctx, runtime, session};
    use crate::plugins::{BodyOutcome, Plugin};

    fn mirror_of(rt: &crate::ctx::Runtime) -> &RequestMirror {
        match &*rt.routes[0].plugins.plugins[0] {
            Plugin::RequestMirror(p) => p,
            other => panic!("{}", other.name()),
        }
    }

    fn chunk(p: &RequestMirror, c: &mut RequestCtx, b: &'static [u8], end: bool) {
        let mut body = Some(Bytes::from_static(b));
        assert_eq!(
            p.request_body(
                &mut Chunk {
                    data: &mut body,
                    end_of_stream: end
                },
                c
            )
            .unwrap(),
            BodyOutcome::Continue
        );
        assert_eq!(body.as_deref(), Some(b), "the body goes upstream untouched");
    }

    #[tokio::test]
    async fn a_retry_starts_the_copy_over_and_the_end_hands_it_over() {
        let rt = runtime("      - name: request-mirror\n        config: { upstream: u }");
        let p = mirror_of(&rt);
        let mut s = session("POST /a HTTP/1.1\nHost: x\nContent-Length: 6").await;
        let mut c = ctx(&rt);
        assert!(matches!(
            Hooks::request(p, &mut s, &mut c).await,
            Outcome::Continue
        ));
        let mut head = RequestHeader::build("POST", b"/a", None).unwrap();
        c.attempts = 1;
        p.upstream_request(&mut head, &c).unwrap();
        chunk(p, &mut c, b"abc", false);
        // The second attempt replays the body from its start.
        c.attempts = 2;
        p.upstream_request(&mut head, &c).unwrap();
        chunk(p, &mut c, b"abc", false);
        {
            let cap = c.plugins.request_mirror.as_deref().unwrap();
            assert_eq!((cap.len, cap.chunks.len(), cap.finished), (3, 1, false));
        }
        chunk(p, &mut c, b"def", true);
        let cap = c.plugins.request_mirror.as_deref().unwrap();
        assert!(cap.finished && cap.head.get().is_none() && cap.chunks.is_empty());
    }

    #[tokio::test]
    async fn a_long_body_is_dropped_whole_and_counted() {
        let rt =
            runtime("      - name: request-mirror\n        config: { upstream: u, max_body: 4 }");
        let p = mirror_of(&rt);
        let before = p.sender.counters.body_too_large.get();
        let mut s = session("POST /a HTTP/1.1\nHost: x\nContent-Length: 6").await;
        let mut c = ctx(&rt);
        Hooks::request(p, &mut s, &mut c).await;
        c.attempts = 1;
        p.upstream_request(&mut RequestHeader::build("POST", b"/a", None).unwrap(), &c)
            .unwrap();
        chunk(p, &mut c, b"abc", false);
        chunk(p, &mut c, b"def", true);
        let cap = c.plugins.request_mirror.as_deref().unwrap();
        assert!(cap.finished && cap.chunks.is_empty());
        assert_eq!(p.sender.counters.body_too_large.get(), before + 1);
    }

    #[tokio::test]
    async fn sampled_out_requests_carry_nothing() {
        let rt =
            runtime("      - name: request-mirror\n        config: { upstream: u, sample: 0 }");
        let p = mirror_of(&rt);
        let mut s = session("GET /a HTTP/1.1\nHost: x").await;
        let mut c = ctx(&rt);
        for _ in 0..100 {
            Hooks::request(p, &mut s, &mut c).await;
            assert!(c.plugins.request_mirror.is_none());
        }
    }
}
