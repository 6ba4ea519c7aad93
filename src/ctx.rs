//! Per-request state: everything the phases share lives in one [`RequestCtx`].

use crate::plugins::{Chain, PluginStates};
use crate::upstream::{InflightGuard, Target, TargetSet, Upstream};
use crate::util::hex_id::HexId;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The config snapshot with this build's plugin chains: the one instantiation of
/// [`crate::runtime::Runtime`] (generic, so the snapshot layer names no plugin).
pub type Runtime = crate::runtime::Runtime<crate::plugins::Chain>;
/// A route of [`Runtime`].
pub type Route = crate::runtime::Route<crate::plugins::Chain>;
/// The handle to the snapshot in use now (held by the gateway, owned by the app).
pub type Live = crate::runtime::Live<crate::plugins::Chain>;

pub struct RequestCtx {
    /// The config snapshot this request runs on from start to end.
    pub rt: Arc<Runtime>,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// The TCP peer is one of `server.trusted_proxies`.
    pub peer_trusted: bool,
    /// Index into `rt.routes`.
    pub route: Option<usize>,
    /// The upstream this request goes to in place of its route's `upstream`, set by a
    /// request-phase plugin (`traffic-split`) before the first attempt. Every reader of
    /// [`Self::upstream`] follows it: target selection, retries, the circuit breaker, the
    /// retry budget, the `upstream_*` metrics and the access log.
    pub upstream_override: Option<Arc<Upstream>>,
    /// Bytes of the matched prefix (`strip_path`).
    pub prefix_len: usize,
    /// The path has `%2F`: only a route with `allow_encoded_slashes` takes it.
    pub encoded_slash: bool,
    /// Upstream attempts so far (1 = first try).
    pub attempts: u32,
    /// Targets tried by this request (bit per index in `targets`).
    pub tried: u64,
    /// The upstream's target set, taken at the first attempt and kept for the retries (DNS
    /// discovery may swap the upstream's set meanwhile).
    pub targets: Option<Arc<TargetSet>>,
    /// Index of the target of the current attempt in `targets`.
    pub target: Option<usize>,
    pub inflight: Option<InflightGuard>,
    pub body_bytes: u64,
    /// Request body cap for this request: `server.max_body_bytes`, lowered by
    /// `request-size-limiting`.
    pub body_limit: u64,
    /// Index into `rt.consumers` once authenticated.
    pub consumer: Option<usize>,
    pub started: Instant,
    /// Start of the current upstream attempt (`upstream_peer`), for `upstream_ms`.
    pub upstream_started: Option<Instant>,
    /// Status of the last upstream response head, when one arrived.
    pub upstream_status: Option<u16>,
    /// Time from the last attempt's start to its response head.
    pub upstream_time: Option<std::time::Duration>,
    /// `X-Cache-Status` value set by proxy-cache (`HIT`, `MISS`, ...), for the access log.
    pub cache_status: Option<&'static str>,
    /// Contract code of a gateway-made error answer (e.g. `missing_api_key`), for the access
    /// log; when unset it is derived from the status.
    pub error_code: Option<&'static str>,
    /// The request's `Origin` header, captured in `early_request_filter` so `cors` can
    /// decorate every answer, including errors made before a route matched.
    pub origin: Option<http::HeaderValue>,
    /// The client certificate verified in the TLS handshake (`server.tls.client_auth`).
    pub client_cert: Option<Arc<crate::tls::client_auth::ClientCert>>,
    /// The request's trace id once a plugin (opentelemetry) started or continued a trace,
    /// for the access log.
    pub trace_id: Option<HexId<16>>,
    /// Answered by the public health route ([`crate::probe`]): not a routed request, so not
    /// in the request metrics or the access log.
    pub probe: bool,
    /// Route deadline and pending retry back-off.
    pub resilience: crate::upstream::policy::RequestState,
    /// Each plugin's state for this request, one field per plugin (named after its module).
    pub plugins: PluginStates,
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
            upstream_override: None,
            prefix_len: 0,
            encoded_slash: false,
            attempts: 0,
            tried: 0,
            targets: None,
            target: None,
            inflight: None,
            body_bytes: 0,
            consumer: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_status: None,
            upstream_time: None,
            cache_status: None,
            error_code: None,
            origin: None,
            client_cert: None,
            trace_id: None,
            probe: false,
            resilience: Default::default(),
            plugins: Default::default(),
        }
    }

    #[inline]
    pub fn route(&self) -> Option<&Route> {
        self.rt.route(self.route)
    }

    /// The plugin chain for this request: the route's, or the global one when no route
    /// matched.
    #[inline]
    pub fn chain(&self) -> &Chain {
        self.chain_in(&self.rt)
    }

    /// [`Self::chain`] looked up in `rt` (a clone of `self.rt`): a chain the hooks can run
    /// while they change `self`.
    #[inline]
    pub fn chain_in<'a>(&self, rt: &'a Runtime) -> &'a Chain {
        match self.route.and_then(|i| rt.routes.get(i)) {
            Some(r) => &r.plugins,
            None => &rt.global_plugins,
        }
    }

    /// The upstream of this request: the override a plugin chose, else the route's.
    #[inline]
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.upstream_override {
            Some(u) => Some(u),
            None => self.route().map(|r| &r.upstream),
        }
    }

    /// The target of the current (or last) upstream attempt.
    #[inline]
    pub fn selected_target(&self) -> Option<&Target> {
        self.targets.as_ref()?.targets.get(self.target?)
    }
}
