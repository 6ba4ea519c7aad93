//! Plugins: typed plugins built once at config load, run in the table's fixed order
//! whatever their order in the file. A route entry replaces a global entry of the same name;
//! `enabled: false` on a route switches a global one off.
//!
//! A plugin is a module (a folder when it is large) with a typed config ([`Hooks::Config`],
//! deserialized from the YAML `config` value by [`Compiler::plugin_config`] with path-aware
//! errors before [`Hooks::build`] runs) and an impl of [`Hooks`], the plugin interface ([`api`]: one hook per Pingora phase, no-op defaults), plus
//! one line in the table below. The table generates the [`Plugin`] enum, [`ORDER`], `name()`,
//! [`build`], every hook's dispatch (a `match`: no boxed futures, no dynamic lookup on the
//! hot path), the per-request state struct [`PluginStates`] (`RequestCtx::plugins`) and the
//! process-level entry points ([`install`], [`init_downstream_modules`],
//! [`register_metrics`], [`background_services`], [`admin`], [`status_sections`]).
//! [`Chain`] runs a route's plugins phase by phase.

pub mod acl;
pub mod basic_auth;
pub(crate) mod body_buf;
pub mod concurrency;
pub mod correlation_id;
pub mod cors;
pub mod error_responses;
pub mod fault_injection;
pub mod forward_auth;
pub mod held_body;
pub mod hmac_auth;
pub mod ip_restriction;
pub mod json_rewrite;
pub(crate) mod json_scan;
pub mod jwt;
pub mod key_auth;
pub mod mtls_auth;
pub mod oauth2_introspection;
pub mod opentelemetry;
pub(crate) mod outbound;
pub mod proxy_cache;
pub mod rate_limit;
pub mod request_mirror;
pub mod request_size_limiting;
pub mod request_transformer;
pub mod response_compression;
pub mod response_transformer;
pub mod security_headers;
pub mod traffic_split;
pub(crate) mod ttl_cache;

pub mod api;
mod chain;
#[cfg(test)]
pub(crate) mod testing;

pub use api::{
    phase, AdminRequest, Answer, BodyOutcome, Build, BuildEnv, Chunk, Explain, HeaderEdit, Hooks,
    Outcome, Reply,
};
pub use chain::Chain;

use crate::config::diag::Compiler;
use crate::ctx::RequestCtx;
use crate::ctx::{Live, Runtime};
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
use std::sync::Arc;

/// Generates, from the table's lines (`"name" => Variant(module::Type)`, in execution order),
/// everything that lists the plugins: see the module doc.
macro_rules! plugin_table {
    ($( $name:literal => $variant:ident($module:ident :: $ty:ident), )*) => {
        // `$` for the forwarding macro defined inside.
        plugin_table!(@with ($) $( $name => $variant($module::$ty), )*);
    };
    (@with ($d:tt) $( $name:literal => $variant:ident($module:ident :: $ty:ident), )*) => {
        /// The execution order (and every known name).
        pub const ORDER: &[&str] = &[$( $name, )*];

        /// One configured plugin instance.
        #[derive(Debug)]
        pub enum Plugin {
            $( $variant($module::$ty), )*
        }

        /// Per-request state of every plugin (`RequestCtx::plugins`), one field per plugin
        /// named after its module (`()` for a plugin without state).
        #[derive(Default)]
        pub struct PluginStates {
            $( pub $module: <$module::$ty as Hooks>::State, )*
        }

        $(
            impl Member for $module::$ty {
                #[allow(unreachable_patterns)]
                fn of(p: &Plugin) -> Option<&Self> {
                    match p {
                        Plugin::$variant(x) => Some(x),
                        _ => None,
                    }
                }
            }
        )*

        /// Builds one plugin from its YAML entry. `path` is the YAML path of the entry
        /// (`routes[2].plugins[0]`).
        pub fn build(
            c: &mut Compiler,
            path: &str,
            name: &str,
            config: Option<&serde_yaml::Value>,
            env: &BuildEnv,
        ) -> Option<Plugin> {
            match name {
                $( $name => build_one(c, path, config, env).map(Plugin::$variant), )*
                _ => {
                    c.error(
                        &format!("{path}.name"),
                        format!("unknown plugin \"{name}\" (known: {})", ORDER.join(", ")),
                    );
                    None
                }
            }
        }

        /// `init_downstream_modules`: every plugin's downstream modules.
        pub fn init_downstream_modules(modules: &mut HttpModules) {
            $( <$module::$ty as Hooks>::init_downstream_modules(modules); )*
        }

        /// Every plugin's metric families (once, at startup).
        pub fn register_metrics() {
            $( <$module::$ty as Hooks>::register_metrics(); )*
        }

        /// Creates or removes the series plugin `name` keeps for `route`.
        pub fn route_series(name: &str, route: &str, create: bool) {
            match name {
                $( $name => <$module::$ty as Hooks>::route_series(route, create), )*
                _ => {}
            }
        }

        /// After `rt` was loaded or reloaded and became current: each plugin's `install`
        /// with its entries in `rt`'s routes and the app's `registry`.
        pub fn install(rt: &Runtime, registry: &Registry) {
            #[derive(Default)]
            #[allow(non_snake_case)]
            struct Instances<'a> {
                $( $variant: Vec<(&'a str, &'a $module::$ty)>, )*
            }
            let mut all = Instances::default();
            for r in &rt.routes {
                for p in &r.plugins.plugins {
                    match &**p {
                        $( Plugin::$variant(x) => all.$variant.push((r.name.as_str(), x)), )*
                    }
                }
            }
            $( <$module::$ty as Hooks>::install(rt, registry, &all.$variant); )*
        }

        /// Every plugin's background services, for the server to start once.
        pub fn background_services(
            live: &Arc<Live>,
            registry: &Registry,
        ) -> Vec<Box<dyn ServiceWithDependents>> {
            let mut all = Vec::new();
            $( all.extend(<$module::$ty as Hooks>::background_services(live, registry)); )*
            all
        }

        /// The method of the admin endpoint some plugin serves at `path`, if any.
        pub fn admin_method(path: &str) -> Option<&'static str> {
            $(
                if let Some((m, _)) = <$module::$ty as Hooks>::ADMIN_ENDPOINTS
                    .iter()
                    .find(|(_, p)| *p == path)
                {
                    return Some(*m);
                }
            )*
            None
        }

        /// Answers an admin request with the plugin that declared its method and path.
        pub async fn admin(
            rt: &Runtime,
            registry: &Registry,
            req: &AdminRequest<'_>,
        ) -> Option<(http::StatusCode, serde_json::Value)> {
            $(
                if <$module::$ty as Hooks>::ADMIN_ENDPOINTS
                    .iter()
                    .any(|(m, p)| *p == req.path && *m == req.method.as_str())
                {
                    return <$module::$ty as Hooks>::admin(rt, registry, req).await;
                }
            )*
            None
        }

        /// Every plugin's section of admin `/status`, in the table's order.
        pub fn status_sections(
            rt: &Runtime,
            registry: &Registry,
        ) -> Vec<(&'static str, serde_json::Value)> {
            let mut all = Vec::new();
            $( all.extend(<$module::$ty as Hooks>::status_section(rt, registry)); )*
            all
        }

        impl Plugin {
            pub fn name(&self) -> &'static str {
                match self {
                    $( Plugin::$variant(_) => $name, )*
                }
            }

            /// Position in [`ORDER`].
            fn order(&self) -> usize {
                let name = self.name();
                ORDER.iter().position(|n| *n == name).unwrap_or(usize::MAX)
            }

            /// The plugin's [`phase`] bits.
            #[inline]
            fn phases(&self) -> u32 {
                match self {
                    $( Plugin::$variant(_) => <$module::$ty as Hooks>::PHASES, )*
                }
            }

            async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
                match self {
                    $( Plugin::$variant(p) => Hooks::request(p, session, ctx).await, )*
                }
            }
        }

        /// Writes `Plugin` methods that hand a [`Hooks`] call to the plugin inside, with the
        /// hook's own signature (a `match`: static dispatch).
        macro_rules! forward_hooks {
            ($d( $d(#[$d meta:meta])* $d vis:vis fn $d hook:ident(&self $d(, $d arg:ident: $d ty:ty)*) $d(-> $d ret:ty)?; )*) => {
                impl Plugin {
                    $d(
                        $d(#[$d meta])*
                        $d vis fn $d hook(&self $d(, $d arg: $d ty)*) $d(-> $d ret)? {
                            match self {
                                $( Plugin::$variant(p) => Hooks::$d hook(p $d(, $d arg)*), )*
                            }
                        }
                    )*
                }
            };
        }

        forward_hooks! {
            fn identity_headers(&self) -> &[HeaderName];
            fn request_body(&self, body: &mut Chunk<'_>, ctx: &mut RequestCtx) -> Result<BodyOutcome>;
            fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()>;
            fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()>;
            fn hand_off(&self, session: &mut Session, resp: &ResponseHeader, ctx: &mut RequestCtx);
            fn gateway_body(&self, ctx: &RequestCtx, status: u16, code: &str)
                -> Option<(Bytes, HeaderValue)>;
            fn before_answer(&self, session: &Session, ctx: &mut RequestCtx);
            fn logging(&self, session: &Session, ctx: &mut RequestCtx, done: &Finished);
            fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx);
            fn cache_key(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey>;
            fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx);
            fn cache_hit_filter(&self, meta: &CacheMeta, is_fresh: bool, ctx: &mut RequestCtx)
                -> Option<ForcedFreshness>;
            fn response_cache_filter(&self, req: &RequestHeader, resp: &ResponseHeader, ctx: &RequestCtx)
                -> RespCacheable;
            fn cache_vary_filter(&self, meta: &CacheMeta, req: &RequestHeader, ctx: &RequestCtx)
                -> Option<HashBinary>;
            fn should_serve_stale(&self, error: Option<&Error>) -> bool;
            fn settle_cache(&self, session: &mut Session, ctx: &mut RequestCtx);
            /// `explain`: the plugin's decision for the request in `x`.
            pub fn explain(&self, x: &mut Explain) -> serde_json::Value;
            /// Headers whose values are this plugin's credentials.
            pub fn credential_headers(&self) -> &[HeaderName];
            /// A query parameter whose value is this plugin's credential.
            pub fn credential_query_param(&self) -> Option<&str>;
        }
    };
}

/// A plugin type of the table: its instance inside a [`Plugin`] ([`Chain::find`]).
pub trait Member: Sized {
    fn of(p: &Plugin) -> Option<&Self>;
}

/// One plugin of type `P` from its entry: the typed config first (its errors at the bad
/// key's path), then `P`'s own checks.
fn build_one<P: Hooks>(
    c: &mut Compiler,
    path: &str,
    raw: Option<&serde_yaml::Value>,
    env: &BuildEnv,
) -> Option<P> {
    let cfg = c.plugin_config(path, raw)?;
    P::build(Build { c, path, env, raw }, cfg)
}

// The one table: name => enum variant (module::type), in execution order.
plugin_table! {
    "opentelemetry"         => OpenTelemetry(opentelemetry::OpenTelemetry), // first: every refusal below is traced
    "correlation-id"        => CorrelationId(correlation_id::CorrelationId),
    "cors"                  => Cors(cors::Cors),
    "ip-restriction"        => IpRestriction(ip_restriction::IpRestriction),
    "request-size-limiting" => RequestSizeLimiting(request_size_limiting::RequestSizeLimiting),
    "key-auth"              => KeyAuth(key_auth::KeyAuth),
    "basic-auth"            => BasicAuth(basic_auth::BasicAuth),
    "hmac-auth"             => HmacAuth(hmac_auth::HmacAuth),
    "mtls-auth"             => MtlsAuth(mtls_auth::MtlsAuth),
    "jwt"                   => Jwt(jwt::Jwt),
    "oauth2-introspection"  => Oauth2Introspection(oauth2_introspection::Oauth2Introspection),
    "forward-auth"          => ForwardAuth(forward_auth::ForwardAuth),
    "acl"                   => Acl(acl::Acl),
    "rate-limiting"         => RateLimiting(rate_limit::RateLimit),
    "concurrency-limiting"  => ConcurrencyLimiting(concurrency::Concurrency),
    "fault-injection"       => FaultInjection(fault_injection::FaultInjection), // after auth and limits: chaos for admitted requests only
    "traffic-split"         => TrafficSplit(traffic_split::TrafficSplit), // sets RequestCtx::upstream_override
    "proxy-cache"           => ProxyCache(proxy_cache::ProxyCache),
    "request-transformer"   => RequestTransformer(request_transformer::RequestTransformer),
    "response-transformer"  => ResponseTransformer(response_transformer::ResponseTransformer),
    "response-compression"  => ResponseCompression(response_compression::ResponseCompression),
    "security-headers"      => SecurityHeaders(security_headers::SecurityHeaders),
    "error-responses"       => ErrorResponses(error_responses::ErrorResponses),
    "request-mirror"        => RequestMirror(request_mirror::RequestMirror), // last: copies the request as it went upstream, once every plugin admitted it
}

/// Sends the authenticated consumer upstream as `X-Consumer-Username` (key-auth and jwt both
/// call this; client-sent copies were already removed in `forward::rewrite_request`).
pub(crate) fn send_consumer(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(c) = ctx.consumer.and_then(|i| ctx.rt.consumers.get(i)) {
        req.insert_header(crate::owned_headers::CONSUMER_HEADER, c.header.clone())?;
    }
    Ok(())
}
