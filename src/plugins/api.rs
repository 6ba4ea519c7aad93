//! The plugin interface: one trait, [`Hooks`], with a no-op default for every phase a plugin
//! may serve. A plugin implements the hooks it needs and names them in [`Hooks::PHASES`]; a
//! [`super::Chain`] skips every phase none of its plugins asked for (no call per body chunk,
//! no cache hook, no lookup).
//!
//! | hook                       | Pingora phase (caller)                                      |
//! |----------------------------|-------------------------------------------------------------|
//! | [`Hooks::request`]         | `request_filter`: `Continue` or answer with a [`Reply`]      |
//! | [`Hooks::request_body`]    | `request_body_filter`: may supply the body itself (replay)  |
//! | [`Hooks::upstream_request`]| `upstream_request_filter`: edits the upstream request head  |
//! | [`Hooks::response`]        | `response_filter`, and every answer the gateway makes       |
//! | [`Hooks::hand_off`]        | end of `response_filter`: arms the downstream module        |
//! | [`Hooks::gateway_body`]    | gateway-made error answers (`errors::respond`): own body    |
//! | [`Hooks::before_answer`]   | before the gateway writes an answer of its own              |
//! | [`Hooks::logging`]         | `logging`                                                   |
//! | `cache_*` hooks            | Pingora's cache phases, delegated to the chain's one [`phase::CACHE`] plugin |
//! | [`Hooks::init_downstream_modules`] | `init_downstream_modules` (once per server)         |
//! | [`Hooks::install`]         | after every config load and reload (the app)                |
//! | [`Hooks::register_metrics`], [`Hooks::route_series`] | metric families and per-route series |
//! | [`Hooks::background_services`] | services the server starts once (refreshers, subscribers) |
//! | [`Hooks::ADMIN_ENDPOINTS`], [`Hooks::admin`], [`Hooks::status_section`] | the admin API: endpoints of its own, a `/status` section |
//! | [`Hooks::explain`], [`Hooks::credential_headers`], [`Hooks::credential_query_param`] | `gatehouse explain` / `POST /explain`: the decision offline, what to mask |
//!
//! Dispatch is static: the plugin table in [`super`] generates a `match` per hook over the
//! [`super::Plugin`] enum, and `async fn` hooks are awaited through it (no boxed future, no
//! `dyn` on the request path).

use crate::config::diag::Compiler;
use crate::ctx::RequestCtx;
use crate::ctx::{Live, Route, Runtime};
use crate::model::{Consumer, Tier};
use crate::observe::Finished;
use crate::util::registry::Registry;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::services::ServiceWithDependents;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::errors::Reply;

/// What a request-phase hook decided.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    Respond(Reply),
}

/// What a request-body hook did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Left for the next plugin and the gateway's body cap.
    Continue,
    /// The plugin supplied the bytes itself (already counted): the gateway's body cap skips
    /// them; later plugins only look at them.
    Supplied,
}

/// Which hooks a plugin implements ([`Hooks::PHASES`]). A hook whose bit is not set is never
/// called, whatever the impl says.
pub mod phase {
    /// [`super::Hooks::request`].
    pub const REQUEST: u32 = 1;
    /// [`super::Hooks::request_body`].
    pub const REQUEST_BODY: u32 = 1 << 1;
    /// [`super::Hooks::upstream_request`].
    pub const UPSTREAM_REQUEST: u32 = 1 << 2;
    /// [`super::Hooks::response`].
    pub const RESPONSE: u32 = 1 << 3;
    /// With [`RESPONSE`]: the response hook runs after every other plugin's (the way back
    /// ends with CORS although `cors` runs second on the way in).
    pub const RESPONSE_LAST: u32 = 1 << 4;
    /// [`super::Hooks::hand_off`].
    pub const HAND_OFF: u32 = 1 << 5;
    /// [`super::Hooks::gateway_body`].
    pub const GATEWAY_BODY: u32 = 1 << 6;
    /// [`super::Hooks::before_answer`].
    pub const BEFORE_ANSWER: u32 = 1 << 7;
    /// [`super::Hooks::logging`].
    pub const LOGGING: u32 = 1 << 8;
    /// The `cache_*` hooks: the plugin runs Pingora's HTTP cache for its chain (the first
    /// such plugin of a chain gets every cache phase).
    pub const CACHE: u32 = 1 << 9;
}

/// What plugin constructors may look at besides their own config.
#[derive(Clone)]
pub struct BuildEnv<'a> {
    pub consumers: &'a [Consumer],
    pub tiers: &'a BTreeMap<String, Tier>,
    /// State that survives reloads (limiter counters, clients, key sets, cache stores), by
    /// identity; owned by the app.
    pub registry: &'a Registry,
    /// Name of the route whose plugin list is being built; `None` for the global list.
    pub route: Option<&'a str>,
    /// The config's upstreams: for plugins that send a request elsewhere than the route's
    /// `upstream` (`RequestCtx::upstream_override`, a mirror).
    pub upstreams: &'a [Arc<crate::upstream::Upstream>],
    /// `server.tls.client_auth` is configured: TLS clients are asked for a certificate, so
    /// `RequestCtx::client_cert` can be set.
    pub client_auth: bool,
}

impl BuildEnv<'_> {
    /// `consumers[].username` -> index into `consumers`: for plugins that name the consumer
    /// by username (forward-auth's answer header, a JWKS token's claim).
    pub fn consumer_index(&self) -> std::collections::HashMap<String, usize> {
        self.consumers
            .iter()
            .enumerate()
            .map(|(i, c)| (c.username.clone(), i))
            .collect()
    }
}

/// A request body chunk a [`Hooks::request_body`] hook sees (it derefs to the chunk).
pub struct Chunk<'b> {
    pub data: &'b mut Option<Bytes>,
    /// The body ends with this chunk.
    pub end_of_stream: bool,
}

impl std::ops::Deref for Chunk<'_> {
    type Target = Option<Bytes>;
    fn deref(&self) -> &Option<Bytes> {
        self.data
    }
}

impl std::ops::DerefMut for Chunk<'_> {
    fn deref_mut(&mut self) -> &mut Option<Bytes> {
        self.data
    }
}

/// The response head a [`Hooks::response`] hook edits (it derefs to it), and who made it.
pub struct Answer<'r> {
    pub head: &'r mut ResponseHeader,
    /// The gateway answered itself (an error, a preflight, a cache hit's stand-in): there
    /// is no upstream response behind this head.
    pub gateway_made: bool,
}

impl std::ops::Deref for Answer<'_> {
    type Target = ResponseHeader;
    fn deref(&self) -> &ResponseHeader {
        self.head
    }
}

impl std::ops::DerefMut for Answer<'_> {
    fn deref_mut(&mut self) -> &mut ResponseHeader {
        self.head
    }
}

/// What [`Hooks::build`] works with besides the typed config.
pub struct Build<'x, 'a> {
    /// Takes the errors, each with its YAML path.
    pub c: &'x mut Compiler<'a>,
    /// The entry's YAML path, such as `routes[2].plugins[0]`.
    pub path: &'x str,
    pub env: &'x BuildEnv<'x>,
    /// The entry's `config` as written: for a plugin whose state survives reloads only while
    /// its entry says exactly the same (the registry identity).
    pub raw: Option<&'x serde_yaml::Value>,
}

/// A request to an admin endpoint a plugin declared ([`Hooks::ADMIN_ENDPOINTS`]), after the
/// admin API's own checks (Host, `Origin`, `admin.token`); the body is read and bounded.
#[derive(Debug)]
pub struct AdminRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// What `explain` knows of a request while it walks a route's chain offline (no Pingora
/// phase runs, nothing is counted or sent). A plugin's [`Hooks::explain`] reads it, may set
/// the consumer it authenticated, add a note to the upstream section or refuse.
pub struct Explain<'a> {
    pub rt: &'a Runtime,
    pub route: &'a Route,
    /// The request head as given (method, target, headers).
    pub req: &'a RequestHeader,
    pub client_ip: Option<std::net::IpAddr>,
    /// Index into `rt.consumers` of the consumer an earlier plugin authenticated.
    pub consumer: Option<usize>,
    /// Set by a plugin that refuses the request: the status; later plugins are not reached.
    pub refused: Option<u16>,
    /// Set by an authentication plugin whose consumer is known at request time only (a
    /// token, a client certificate): what the identity depends on, for the plugins after it.
    pub deferred_identity: Option<&'static str>,
    /// Against the running gateway's own config and state (`POST /explain`), not a file.
    pub live: bool,
    /// Notes for the upstream section (`upstream.notes`).
    pub notes: Vec<Value>,
    /// Set by a plugin that sends the request to another upstream than the route's (when
    /// exactly one can be chosen): the upstream section shows it instead.
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// Edits of the headers the upstream receives, in order; applied by `explain` after the
    /// gateway's own `Host` and `X-Forwarded-*`, as `upstream_request_filter` does.
    pub header_edits: Vec<HeaderEdit>,
    /// The query string the upstream receives (raw, percent-encoded; `None`: no query). A
    /// plugin that edits it rewrites it here.
    pub query: Option<String>,
}

/// One edit of the upstream request's headers as `explain` shows it. Values are the text
/// shown: a literal, or a template with the variables `explain` cannot know left as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(HeaderName),
    /// Every value of the first moves to the second (an existing second is replaced).
    Rename(HeaderName, HeaderName),
    /// Sets the header when the request has it.
    Replace(HeaderName, String),
    /// Sets the header when the request does not have it.
    Add(HeaderName, String),
}

impl Explain<'_> {
    /// The username of the authenticated consumer, if any.
    pub fn consumer_name(&self) -> Option<&str> {
        self.consumer
            .and_then(|i| self.rt.consumers.get(i))
            .map(|c| c.username.as_str())
    }
}

/// One plugin. Every hook has a no-op default; [`Hooks::PHASES`] names the ones implemented.
// `async fn` here is only ever called on concrete types through the generated enum, where
// the futures' `Send` is checked at the call (the trait is never used as `dyn`).
#[allow(async_fn_in_trait)]
pub trait Hooks: Sized + Send + Sync + std::fmt::Debug + 'static {
    /// Per-request state, a field of `RequestCtx::plugins` named after the plugin's module
    /// (`()` for none).
    type State: Default + Send + Sync + 'static;

    /// The hooks this plugin implements ([`phase`] bits).
    const PHASES: u32;

    /// The plugin's typed `config` (serde, `deny_unknown_fields`; an absent or null `config`
    /// is the `Default`). The table deserializes it, with the YAML path of a bad key, before
    /// [`Hooks::build`] runs.
    type Config: DeserializeOwned + Default;

    /// Builds the plugin from its typed config; errors go to `b.c` under `b.path`.
    fn build(b: Build<'_, '_>, cfg: Self::Config) -> Option<Self>;

    /// Headers this plugin writes into the upstream request that identify the caller
    /// (forward-auth's `upstream_headers`): a client may not send them, and the cache keys on
    /// them. Read once when the chain is built.
    fn identity_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// `request_filter`, in the chain's order until one answers.
    async fn request(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Outcome {
        Outcome::Continue
    }

    /// `request_body_filter`, per chunk.
    fn request_body(&self, _body: &mut Chunk<'_>, _ctx: &mut RequestCtx) -> Result<BodyOutcome> {
        Ok(BodyOutcome::Continue)
    }

    /// `upstream_request_filter`, after the gateway's own rewrite.
    fn upstream_request(&self, _req: &mut RequestHeader, _ctx: &RequestCtx) -> Result<()> {
        Ok(())
    }

    /// `response_filter` and every answer the gateway makes itself
    /// ([`Answer::gateway_made`]).
    fn response(&self, _resp: &mut Answer<'_>, _ctx: &mut RequestCtx) -> Result<()> {
        Ok(())
    }

    /// End of `response_filter`, after every response hook succeeded: hands what the
    /// response hooks decided to the session's downstream module.
    fn hand_off(&self, _session: &mut Session, _resp: &ResponseHeader, _ctx: &mut RequestCtx) {}

    /// A body (and its Content-Type) for a gateway-made error answer with `status` and
    /// contract `code`, in place of the JSON error. The first plugin with one wins.
    fn gateway_body(
        &self,
        _ctx: &RequestCtx,
        _status: u16,
        _code: &str,
    ) -> Option<(Bytes, HeaderValue)> {
        None
    }

    /// Before the gateway writes an answer of its own, also one made before any plugin's
    /// `request` ran (no route, early refusals).
    fn before_answer(&self, _session: &Session, _ctx: &mut RequestCtx) {}

    /// `logging`, once per request (not for the health probe).
    fn logging(&self, _session: &Session, _ctx: &mut RequestCtx, _done: &Finished) {}

    // Pingora's cache phases ([`phase::CACHE`]), between `request_filter` and `upstream_peer`.

    /// `request_cache_filter`: enable the cache for this request, or not.
    fn request_cache_filter(&self, _session: &mut Session, _ctx: &mut RequestCtx) {}

    /// `cache_key_callback`.
    fn cache_key(&self, _session: &Session, _ctx: &mut RequestCtx) -> Result<CacheKey> {
        Error::e_explain(ErrorType::InternalError, "cache key without a cache plugin")
    }

    /// `cache_miss`.
    fn cache_miss(&self, session: &mut Session, _ctx: &mut RequestCtx) {
        session.cache.cache_miss();
    }

    /// `cache_hit_filter`.
    fn cache_hit_filter(
        &self,
        _meta: &CacheMeta,
        _is_fresh: bool,
        _ctx: &mut RequestCtx,
    ) -> Option<ForcedFreshness> {
        None
    }

    /// `response_cache_filter`: `req` is the client's request head.
    fn response_cache_filter(
        &self,
        _req: &RequestHeader,
        _resp: &ResponseHeader,
        _ctx: &RequestCtx,
    ) -> RespCacheable {
        RespCacheable::Uncacheable(pingora::cache::NoCacheReason::Custom("no cache plugin"))
    }

    /// `cache_vary_filter`.
    fn cache_vary_filter(
        &self,
        _meta: &CacheMeta,
        _req: &RequestHeader,
        _ctx: &RequestCtx,
    ) -> Option<HashBinary> {
        None
    }

    /// `should_serve_stale`: `error` is the upstream's (`None`: stale-while-revalidate).
    fn should_serve_stale(&self, _error: Option<&Error>) -> bool {
        false
    }

    /// Start of `response_filter`, before every response hook: what the cache phase
    /// settled on for this answer.
    fn settle_cache(&self, _session: &mut Session, _ctx: &mut RequestCtx) {}

    // Process-level hooks (no instance): called for every plugin in the table.

    /// `init_downstream_modules`: Pingora modules this plugin needs on every session.
    fn init_downstream_modules(_modules: &mut HttpModules) {}

    /// After a config was loaded or reloaded and became current: `instances` are this
    /// plugin's entries in the new config's routes, with their route names; `registry` is
    /// the app's state that survives reloads.
    fn install(_rt: &Runtime, _registry: &Registry, _instances: &[(&str, &Self)]) {}

    /// Registers the plugin's metric families (once, at startup).
    fn register_metrics() {}

    /// Creates (at 0; `create`) or removes (`!create`) the series of `route`, when a
    /// config starts or stops using the plugin on that route.
    fn route_series(_route: &str, _create: bool) {}

    /// Pingora background services this plugin needs for the life of the server (key
    /// refreshers, subscriptions), started once by the server. `live` follows reloads;
    /// `registry` is the app's state that survives them.
    fn background_services(
        _live: &Arc<Live>,
        _registry: &Registry,
    ) -> Vec<Box<dyn ServiceWithDependents>> {
        Vec::new()
    }

    /// Admin API endpoints this plugin serves, as `(method, path)`. The admin API refuses
    /// other methods on these paths (405), asks for `admin.token` when one is set, reads
    /// the body (bounded) and calls [`Hooks::admin`].
    const ADMIN_ENDPOINTS: &'static [(&'static str, &'static str)] = &[];

    /// Answers a request to one of [`Hooks::ADMIN_ENDPOINTS`]: status and JSON body.
    async fn admin(
        _rt: &Runtime,
        _registry: &Registry,
        _req: &AdminRequest<'_>,
    ) -> Option<(http::StatusCode, Value)> {
        None
    }

    /// A section of admin `GET /status`: `(key, value)`. Never secrets.
    fn status_section(_rt: &Runtime, _registry: &Registry) -> Option<(&'static str, Value)> {
        None
    }

    /// `explain`: what this plugin would decide for `x`'s request, as the step's
    /// `decision` JSON. The default: the plugin runs, its decision is made at request time.
    fn explain(&self, _x: &mut Explain) -> Value {
        json!({"result": "runs"})
    }

    /// Request headers whose values are this plugin's credentials: `explain` masks them
    /// and leaves them out of what the upstream would receive.
    fn credential_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// A query parameter whose value is this plugin's credential (`explain` masks it).
    fn credential_query_param(&self) -> Option<&str> {
        None
    }
}
