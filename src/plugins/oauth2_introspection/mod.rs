//! `oauth2-introspection` (request_filter, upstream_request_filter): opaque OAuth 2.0 access
//! tokens checked with the authorization server's introspection endpoint (RFC 7662).
//!
//! The token comes from `Authorization: Bearer …` only. On a cache miss the gateway POSTs
//! `token=…&token_type_hint=access_token` to `endpoint`, authenticated as the gateway's own
//! client (`client_id` and a `client_secret` that may only come from `${ENV}`), by HTTP Basic
//! (`client_secret_basic`, the default) or in the form body (`client_secret_post`). The JSON
//! answer decides:
//!
//! - `active: false`, an `exp` already past, or an `nbf` still ahead: 401 `invalid_token`
//!   with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 3.1);
//! - active, but a `required_scopes` entry missing from the space-separated `scope`: 403
//!   `insufficient_scope` with `WWW-Authenticate: Bearer error="insufficient_scope",
//!   scope="…"`;
//! - active with every scope: the request goes on. The `consumer_claim` (`client_id` or
//!   `sub`) naming a configured consumer makes it the request's consumer, as key-auth does; a
//!   value naming none leaves the request without a consumer, as jwt does for a JWKS token of
//!   no consumer (a consumer an earlier plugin found stays). Either way the upstream gets the
//!   token's `client_id`, `sub` and `scope` as `X-Credential-Client-Id`, `X-Credential-Sub`
//!   and `X-Credential-Scope` (identity headers: a client's own copies are always dropped).
//! - no answer within `timeout`, a status other than 200, a body that is not the expected
//!   JSON: an outage, 503 `service_unavailable` (`on_outage: reject`), or, with `on_outage:
//!   serve_cached`, the token's earlier decision as long as it holds (the token's own `exp`).
//!
//! Decisions are cached in a bounded, sharded LRU keyed by the SHA-256 of the token (the
//! token itself is never kept as a key, logged or counted): an active token until
//! min(`exp`, now + `cache.max_ttl`), an inactive one for `cache.negative_ttl`. Concurrent
//! misses for one token share one introspection call ([`cache::Flights`]): the call runs in a
//! task of its own, so a requester that goes away (client disconnect, timeout) leaves the
//! others waiting on a call that still completes and fills the cache. The HTTP client, the
//! cache and the calls in flight are kept by the entry's identity (its place, its exact
//! config and the `ca_file` content) in the app's registry ([`crate::util::registry`]), so a
//! reload that leaves the entry unchanged keeps them.
//!
//! The cache hit path ([`Oauth2Introspection::decide_cached`]) hashes the token, takes one
//! shard lock and clones an `Arc`: no allocation, no call; the network part is boxed so the
//! plugin enum's request future stays small.

mod cache;
mod call;
mod config;

use super::outbound::CallError;
use super::{phase, Build, Hooks, Outcome};
use crate::ctx::RequestCtx;
use crate::observe::metrics::label_values;
use cache::{DecisionCache, Flights};
use call::Handles;
use http::{HeaderName, HeaderValue};
use once_cell::sync::{Lazy, OnceCell};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::{HistogramVec, IntCounterVec};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Upstream header: the token's `client_id`.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static("x-credential-client-id");
/// Upstream header: the token's `sub`.
pub const SUB_HEADER: HeaderName = HeaderName::from_static("x-credential-sub");
/// Upstream header: the token's `scope`.
pub const SCOPE_HEADER: HeaderName = HeaderName::from_static("x-credential-scope");
/// The headers this plugin writes upstream that identify the caller.
static IDENTITY_HEADERS: [HeaderName; 3] = [CLIENT_ID_HEADER, SUB_HEADER, SCOPE_HEADER];

/// Tokens longer than this are refused without a call (an introspection request must stay
/// small; real access tokens are far shorter).
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Bytes of an introspection answer read; a longer one is a failed call.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Distinct tokens being introspected at once per plugin entry; past this a new token is
/// treated as an outage (a flood of random tokens cannot open unbounded outbound calls).
const MAX_IN_FLIGHT: usize = 1024;
/// The 503 message: names no address, no URL, no upstream text.
const UNAVAILABLE: &str = "The authorization service is unavailable";

label_values! {
    /// `oauth2_introspection_decisions_total{outcome}` values.
    pub const OUTCOMES;
    /// What a request came to (indexes [`OUTCOMES`]).
    enum Verdict {
        Active = "active",
        Inactive = "inactive",
        InsufficientScope = "insufficient_scope",
        NoToken = "no_token",
        Outage = "outage",
    }
}
label_values! {
    /// `oauth2_introspection_lookups_total{source}` values: a fresh cache entry, an
    /// introspection call this request started, one it joined, a cached decision served during
    /// an outage.
    pub const SOURCES;
    /// Where a request's decision came from (indexes [`SOURCES`]).
    enum Source {
        Cache = "cache",
        Call = "call",
        Coalesced = "coalesced",
        Stale = "stale",
    }
}
/// `oauth2_introspection_calls_total{result}` values.
pub const CALL_RESULTS: &[&str] = &["active", "inactive", "error"];

/// The `oauth2_introspection_*` families.
struct Families {
    decisions: IntCounterVec,
    lookups: IntCounterVec,
    calls: IntCounterVec,
    duration: HistogramVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        decisions: r.counter_vec(
            "oauth2_introspection_decisions_total",
            "oauth2-introspection decisions by route and outcome (active, inactive, insufficient_scope, no_token, outage).",
            &["route", "outcome"],
        ),
        lookups: r.counter_vec(
            "oauth2_introspection_lookups_total",
            "Where oauth2-introspection found a token's decision, by route and source (cache, call, coalesced: joined another request's call, stale: cached decision served during an outage).",
            &["route", "source"],
        ),
        calls: r.counter_vec(
            "oauth2_introspection_calls_total",
            "Calls to an introspection endpoint by route and result (active, inactive, error: timeout, connection failure, status other than 200 or an answer that is not the expected JSON).",
            &["route", "result"],
        ),
        duration: super::outbound::call_duration(
            "oauth2_introspection_call_duration_seconds",
            "Time of a call to an introspection endpoint, by route, in seconds.",
        ),
    }
});

/// Creates (at 0) or removes the `oauth2_introspection_*` series of `route`.
fn route_series(route: &str, create: bool) {
    let f = &*FAMILIES;
    let counters = [
        (&f.decisions, OUTCOMES),
        (&f.lookups, SOURCES),
        (&f.calls, CALL_RESULTS),
    ];
    super::outbound::route_series(route, create, &counters, &f.duration);
}

/// What the introspection endpoint said about a token, as the cache keeps it.
#[derive(PartialEq, Eq)]
pub struct Decision {
    /// `active: true`, and not past its `exp`.
    pub active: bool,
    /// Every `required_scopes` entry is in the token's `scope`.
    pub scope_ok: bool,
    /// Unix ms before which the token is not valid yet (`nbf`).
    pub nbf_ms: Option<u64>,
    /// Unix ms after which the endpoint is asked again.
    pub fresh_until_ms: u64,
    /// Unix ms after which the decision no longer holds even during an outage (its own
    /// expiry; equal to `fresh_until_ms` unless `on_outage: serve_cached`).
    pub valid_until_ms: u64,
    /// The `consumer_claim` value (a consumer's `username` or not).
    pub consumer: Option<Box<str>>,
    /// `X-Credential-*` values for the upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for Decision {
    // The claims are not secrets, but nothing of the token is printed either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("active", &self.active)
            .field("scope_ok", &self.scope_ok)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// `on_outage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOutage {
    Reject,
    ServeCached,
}

/// `consumer_claim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ConsumerClaim {
    #[serde(rename = "client_id")]
    ClientId,
    #[serde(rename = "sub")]
    Sub,
}

/// How the gateway authenticates itself to the endpoint.
pub(crate) enum ClientAuth {
    /// The `Authorization: Basic …` value (marked sensitive).
    Basic(HeaderValue),
    /// `&client_id=…&client_secret=…`, appended to the form body.
    Post(Box<[u8]>),
}

/// Everything an introspection call needs, shared with the call's task.
pub(crate) struct Endpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `scheme://host[:port]/path` for logs: no credentials, no query.
    target: String,
    auth: ClientAuth,
    required_scopes: Vec<Box<str>>,
    consumer_claim: ConsumerClaim,
    on_outage: OnOutage,
    max_ttl_ms: u64,
    negative_ttl_ms: u64,
}

/// What survives a reload that leaves the plugin entry unchanged.
pub(crate) struct State {
    endpoint: Endpoint,
    cache: DecisionCache,
    flights: Flights,
    warn: super::outbound::WarnGate,
}

pub struct Oauth2Introspection {
    state: Arc<State>,
    /// `consumers[].username` -> index into `Runtime::consumers` (this config's: the cache,
    /// which may outlive it, keeps names).
    consumers: HashMap<String, usize>,
    hide_credentials: bool,
    run_on_preflight: bool,
    /// `Bearer error="insufficient_scope", scope="…"`.
    scope_challenge: HeaderValue,
    /// Name of the route of a route entry (`None`: a global entry, which labels by the
    /// request's route).
    route: Option<Box<str>>,
    /// A route entry's metric handles, resolved at its first request (so a config that fails
    /// to load leaves no series behind).
    handles: OnceCell<Handles>,
}

impl fmt::Debug for Oauth2Introspection {
    // Never the secret, the Basic value or the endpoint's query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.state.endpoint;
        f.debug_struct("Oauth2Introspection")
            .field("endpoint", &e.target)
            .field(
                "auth_method",
                &match e.auth {
                    ClientAuth::Basic(_) => "client_secret_basic",
                    ClientAuth::Post(_) => "client_secret_post",
                },
            )
            .field("required_scopes", &e.required_scopes)
            .field("consumer_claim", &e.consumer_claim)
            .field("on_outage", &e.on_outage)
            .field("hide_credentials", &self.hide_credentials)
            .field("cached", &self.state.cache.len())
            .finish()
    }
}

impl Hooks for Oauth2Introspection {
    /// The active decision that let the request through (its `X-Credential-*` values).
    type State = Option<Arc<Decision>>;
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;

    type Config = config::Config;

    fn build(b: Build<'_, '_>, cfg: config::Config) -> Option<Self> {
        config::build(b, cfg)
    }

    /// `request_filter`.
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        self.authorize(session.req_header(), ctx).await
    }

    /// `X-Credential-Client-Id`, `X-Credential-Sub`, `X-Credential-Scope`: identity headers
    /// of the route ([`crate::owned_headers`]), never taken from the client.
    fn identity_headers(&self) -> &[HeaderName] {
        &IDENTITY_HEADERS
    }

    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        x.deferred_identity = Some("the token's introspection answer");
        serde_json::json!({"result": "asks the authorization server (not decided offline)"})
    }

    /// `upstream_request_filter`: the consumer, the token's identity headers (set here, after
    /// Pingora removed what the client's `Connection` names), and the token itself removed
    /// with `hide_credentials`.
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        let decided = ctx.plugins.oauth2_introspection.as_deref();
        let headers = decided.map(|d| &d.headers[..]);
        super::outbound::set_identity_headers(req, &IDENTITY_HEADERS, headers)?;
        super::send_consumer(req, ctx)?;
        if self.hide_credentials {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        Ok(())
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// The `oauth2_introspection_*` series of `route` exist from the start (at 0).
    fn route_series(route: &str, create: bool) {
        route_series(route, create);
    }
}

#[cfg(test)]
mod tests;
