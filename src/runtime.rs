//! The config snapshot a request runs on: one compiled generation of the whole config
//! (settings, upstreams, consumers, routes with their router and plugin chains), immutable,
//! and the handle that swaps it ([`Live`]).
//!
//! A request loads the current [`Runtime`] once (one `ArcSwap` load in `new_ctx`) and keeps
//! that snapshot to the end, so a reload never changes a request half-way. A reload (in
//! [`crate::app`]) builds and validates the new runtime off the request path and installs
//! it with one pointer store; state that must survive (target health, circuit state,
//! in-flight counts) lives in [`crate::upstream::StateRegistry`] keyed by stable names and is
//! picked up by the new runtime.
//!
//! **Why generic.** A route holds its plugin chain, and plugins sit above this layer (they
//! read the per-request context, which holds this snapshot). So the snapshot is generic over
//! the chain type `C` and never names a plugin; its one instantiation,
//! `Runtime<plugins::Chain>`, is named in [`crate::ctx`] (`ctx::Runtime`, `ctx::Route`,
//! `ctx::Live`): the module that the per-request loop with plugin state already ties to
//! plugins. Every other module uses those aliases; the generic form costs nothing at run time
//! (one monomorphization).

use crate::model::{AdminSettings, CacheSettings, Consumer, HttpsOnly, ServerSettings, Tier};
use crate::owned_headers::OwnedHeaders;
use crate::router::Router;
use crate::tls::client_auth::ClientAuthSettings;
use crate::tls::store::Certificates;
use crate::upstream::policy::RouteTimeout;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::sync::Arc;

#[derive(Debug)]
pub struct Route<C> {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// `allow_encoded_slashes`: `%2F` in the path is data this route's upstream keeps
    /// within a segment; elsewhere such a path is refused.
    pub allow_encoded_slashes: bool,
    /// `forwarded_host`: the client's `Host` goes upstream as `X-Forwarded-Host`.
    pub forwarded_host: bool,
    pub plugins: C,
    /// `protocols: [https]`: how plain HTTP is answered ([`crate::https_redirect`]).
    pub https_only: Option<HttpsOnly>,
    /// `timeout`: total time for the upstream exchange, retries included.
    pub timeout: Option<RouteTimeout>,
    /// Identity and forwarding headers a client may not send on this route.
    pub owned_headers: OwnedHeaders,
    /// `websocket_idle_timeout`: read timeout of both sides once a 101 opened a tunnel.
    pub websocket_idle_timeout: std::time::Duration,
}

/// One compiled config generation.
#[derive(Debug)]
pub struct Runtime<C> {
    /// Increments with every successful load in this process.
    pub version: u64,
    /// First 16 hex digits of the SHA-256 of the file.
    pub hash: String,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub upstreams: Vec<Arc<Upstream>>,
    pub consumers: Vec<Consumer>,
    pub tiers: std::collections::BTreeMap<String, Tier>,
    pub routes: Vec<Route<C>>,
    pub router: Router,
    /// The global plugins alone: what runs for requests that match no route (404) and
    /// decorates the gateway's own answers to them.
    pub global_plugins: C,
    pub cache: CacheSettings,
    /// `server.tls`'s loaded parts (present with `server.tls`).
    pub tls: Option<TlsMaterial>,
}

/// What `server.tls` loads and checks at compile time, beside its plain settings
/// (`server.tls` in the model): the served certificates (`cert`/`key`, `certificates`) and
/// the client-certificate verifier (`client_auth`). A reload swaps them into the app's
/// certificate store for new handshakes; compared by content, so a rewritten file is a
/// change under an unchanged config text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    pub certificates: Certificates,
    pub client_auth: Option<ClientAuthSettings>,
}

impl<C> Runtime<C> {
    /// The route at `index` (a request's matched route, `RequestCtx::route`).
    #[inline]
    pub fn route(&self, index: Option<usize>) -> Option<&Route<C>> {
        index.and_then(|i| self.routes.get(i))
    }

    /// The plugin chain of the route at `index`, or the global one when no route matched.
    /// Takes the index rather than the request context, so a hook can hold the chain (through
    /// its own `Arc` of the snapshot) while it hands the context to the chain mutably.
    #[inline]
    pub fn chain(&self, index: Option<usize>) -> &C {
        self.route(index)
            .map_or(&self.global_plugins, |r| &r.plugins)
    }

    /// Listener settings differ: they only change with a binary upgrade (`-u`).
    pub fn listeners_differ(&self, other: &Runtime<C>) -> bool {
        self.server.listen != other.server.listen
            || match (&self.server.tls, &other.server.tls) {
                (Some(a), Some(b)) => a.listener_differs(b),
                (a, b) => a.is_some() != b.is_some(),
            }
            || self.admin.listen != other.admin.listen
            || self.server.threads != other.server.threads
            || self.server.work_stealing != other.server.work_stealing
    }

    /// `(upstream, target address)` of every target: the target states a reload keeps.
    pub fn target_keys(&self) -> Vec<(String, String)> {
        self.upstreams
            .iter()
            .flat_map(|u| {
                let set = u.targets();
                set.targets
                    .iter()
                    .map(|t| (u.name.clone(), t.addr.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The snapshot in use now, swapped whole by a reload. The gateway holds it (one atomic
/// load per request); the app's shared state ([`crate::app::Shared`]) owns it.
pub struct Live<C> {
    current: ArcSwap<Runtime<C>>,
}

impl<C> Live<C> {
    pub fn new(rt: Arc<Runtime<C>>) -> Self {
        Live {
            current: ArcSwap::new(rt),
        }
    }

    /// The current snapshot (one atomic load).
    #[inline]
    pub fn snapshot(&self) -> Arc<Runtime<C>> {
        self.current.load_full()
    }

    /// The current snapshot's upstreams, without taking a reference count.
    pub fn with_upstreams(&self, f: &mut dyn FnMut(&[Arc<Upstream>])) {
        f(&self.current.load().upstreams)
    }

    /// Installs a new snapshot: requests that start from now on run on it.
    pub fn store(&self, rt: Arc<Runtime<C>>) {
        self.current.store(rt);
    }
}
