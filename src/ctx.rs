//! Per-request state: everything the phases share lives in one [`RequestCtx`].

use crate::runtime::{Route, Runtime};
use crate::upstream::{InflightGuard, Upstream};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct RequestCtx {
    /// The config snapshot this request runs on from start to end.
    pub rt: Arc<Runtime>,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// The TCP peer is one of `server.trusted_proxies`.
    pub peer_trusted: bool,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    /// Bytes of the matched prefix (`strip_path`).
    pub prefix_len: usize,
    /// Upstream attempts so far (1 = first try).
    pub attempts: u32,
    /// Targets tried by this request (bit per index in `Upstream::targets`).
    pub tried: u64,
    /// Index of the target of the current attempt.
    pub target: Option<usize>,
    pub inflight: Option<InflightGuard>,
    pub body_bytes: u64,
    /// Request body cap for this request: `server.max_body_bytes`, lowered by
    /// `request-size-limiting`.
    pub body_limit: u64,
    /// Index into `rt.consumers` once authenticated.
    pub consumer: Option<usize>,
    pub started: Instant,
}

impl RequestCtx {
    pub fn new(rt: Arc<Runtime>) -> Self {
        RequestCtx {
            body_limit: rt.server.max_body_bytes,
            rt,
            request_id: String::new(),
            client_ip: None,
            peer_trusted: false,
            route: None,
            prefix_len: 0,
            attempts: 0,
            tried: 0,
            target: None,
            inflight: None,
            body_bytes: 0,
            consumer: None,
            started: Instant::now(),
        }
    }

    #[inline]
    pub fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.rt.routes.get(i))
    }

    /// The plugin chain for this request: the route's, or the global one when no route
    /// matched.
    #[inline]
    pub fn chain(&self) -> &crate::plugins::Chain {
        match self.route() {
            Some(r) => &r.plugins,
            None => &self.rt.global_plugins,
        }
    }

    #[inline]
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.route().map(|r| &r.upstream)
    }
}
