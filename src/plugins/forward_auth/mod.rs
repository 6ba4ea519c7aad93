//! `forward-auth` (request_filter, upstream_request_filter): an external authorizer, like
//! NGINX `auth_request`, Traefik ForwardAuth or an AWS Lambda authorizer. Before proxying,
//! the gateway asks an auth service (`url`) whether the request may pass.
//!
//! The auth call carries no body, only headers: the configured `request_headers` copied from
//! the client request (default `Authorization`), and what the gateway knows about the
//! request: `X-Forwarded-Method`, `X-Forwarded-Uri` (path and query), `X-Forwarded-Host`,
//! `X-Forwarded-Proto`, `X-Forwarded-For` (the client IP the gateway computed, see
//! [`crate::request::client_ip`]) and `X-Request-ID`. Its method is `method` (default GET;
//! `original` uses the client's).
//!
//! - 2xx: the request passes. The configured `upstream_headers` of the auth response are
//!   added to the request (`X-User-Id`, ...). The client's own copies of those headers are
//!   removed on every request this plugin sees, whatever the outcome, so a client can never
//!   spoof them. With `consumer_header`, that auth-response header names one of the
//!   `consumers` (by `username`): it becomes the request's consumer for `acl`,
//!   `rate-limiting` / `concurrency-limiting` with `limit_by: consumer`, the access log and
//!   `X-Consumer-Username`.
//! - 401 / 403: the client gets the contract's JSON `unauthorized` / `forbidden` with the
//!   configured `client_headers` of the auth response (default `WWW-Authenticate`).
//! - Any other status, a connection failure or a timeout: 503 `service_unavailable`. The
//!   message never names the auth service; the log names its scheme, host and path only.
//!
//! The identity headers are written into the downstream request head in `request_filter`,
//! so later plugins see them too, and set again on the upstream request in
//! `upstream_request_filter` (after Pingora removed what the client's `Connection` names).
//! Client copies are dropped in every spelling (`X_User_Id` too) by
//! [`crate::owned_headers`], the upstream_headers being identity headers of the route. In the
//! downstream head, `rate-limiting` with `limit_by: header, header_name: X-User-Id` counts
//! per user, and `proxy-cache` keys its objects on them (one user's answer never reaches
//! another).
//!
//! Decisions (allow and deny, never failures) are cached for `cache.ttl` in a bounded,
//! sharded LRU keyed by the SHA-256 of the request headers named in `cache.key` (plus the
//! method and path when asked), so credentials are never kept as map keys. The HTTP client
//! (one pooled `reqwest` client per plugin entry) and the cache are kept by the identity of
//! the entry (its place and its exact config) in the app's registry of weak references
//! ([`crate::util::registry`]): a reload that leaves the entry unchanged keeps both; a
//! changed entry starts afresh.
//!
//! The network part of the hook is boxed, so the plugin enum's request future stays small for
//! every plugin, and a cache hit neither calls nor boxes anything.

mod cache;
mod call;
mod config;

use super::outbound::CallError;
use super::{phase, Build, Hooks, Outcome};
use crate::ctx::RequestCtx;
use cache::DecisionCache;
use call::Handles;
use config::AuthMethod;
use http::{HeaderName, HeaderValue};
use once_cell::sync::{Lazy, OnceCell};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::{HistogramVec, IntCounterVec};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REQUEST_ID: HeaderName = HeaderName::from_static(crate::request::REQUEST_ID_HEADER);

/// Bytes of auth-response headers copied per decision; an auth service answering with more is
/// treated as failing (it would bloat every upstream request and the cache).
const MAX_COPIED_HEADER_BYTES: usize = 16 * 1024;
/// Body bytes of an auth response read (and thrown away) so its connection can be reused;
/// beyond this the connection is dropped instead.
const MAX_DRAIN_BYTES: usize = 64 * 1024;
/// The 503 message: names no address, no URL, no upstream text.
const UNAVAILABLE: &str = "The authorization service is unavailable";

/// `forward_auth_*_total{result}` values.
pub const RESULTS: &[&str] = &["allow", "deny", "error"];

/// The `forward_auth_*` families.
struct Families {
    calls: IntCounterVec,
    cache_hits: IntCounterVec,
    duration: HistogramVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        calls: r.counter_vec(
            "forward_auth_calls_total",
            "Calls to a forward-auth service by route and result (allow, deny, error: other status, connection failure or timeout).",
            &["route", "result"],
        ),
        cache_hits: r.counter_vec(
            "forward_auth_cache_hits_total",
            "forward-auth decisions served from its cache without a call, by route and result (allow, deny).",
            &["route", "result"],
        ),
        duration: super::outbound::call_duration(
            "forward_auth_call_duration_seconds",
            "Time of a call to a forward-auth service, by route, in seconds.",
        ),
    }
});

/// Creates (at 0) or removes the `forward_auth_*` series of `route` (no cache hit is an
/// error).
fn route_series(route: &str, create: bool) {
    let f = &*FAMILIES;
    let counters = [(&f.calls, RESULTS), (&f.cache_hits, &RESULTS[..2])];
    super::outbound::route_series(route, create, &counters, &f.duration);
}

/// What the auth service decided (what the cache keeps).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// `upstream_headers` values of the auth response, in configured order.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// `consumer_header` value of the auth response.
        consumer: Option<Box<str>>,
    },
    Deny {
        /// 401 or 403.
        status: u16,
        /// `client_headers` values of the auth response.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// What survives a reload that leaves the plugin entry unchanged.
struct State {
    client: reqwest::Client,
    cache: Option<DecisionCache>,
    warn: super::outbound::WarnGate,
}

pub struct ForwardAuth {
    url: reqwest::Url,
    /// `scheme://host[:port]/path` for logs: no credentials, no query.
    target: String,
    method: AuthMethod,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    /// `consumers[].username` -> index into `Runtime::consumers` (this config's).
    consumers: HashMap<String, usize>,
    run_on_preflight: bool,
    key_headers: Vec<HeaderName>,
    key_method: bool,
    key_path: bool,
    state: Arc<State>,
    /// Name of the route of a route entry (`None`: a global entry, which labels by the
    /// request's route).
    route: Option<Box<str>>,
    /// A route entry's metric handles, resolved at its first request (not at load, so a config
    /// that fails to load leaves no series behind).
    handles: OnceCell<Handles>,
}

impl fmt::Debug for ForwardAuth {
    // The URL may carry a secret in its query: only the redacted target is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("target", &self.target)
            .field("method", &self.method)
            .field("request_headers", &self.request_headers)
            .field("upstream_headers", &self.upstream_headers)
            .field("client_headers", &self.client_headers)
            .field("consumer_header", &self.consumer_header)
            .field("run_on_preflight", &self.run_on_preflight)
            .field("cached", &self.state.cache.as_ref().map(DecisionCache::len))
            .finish()
    }
}

impl Hooks for ForwardAuth {
    /// The allow decision (its `upstream_headers` values), set again upstream.
    type State = Option<Arc<Decision>>;
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;
    type Config = config::Config;

    fn build(b: Build<'_, '_>, cfg: config::Config) -> Option<Self> {
        config::build(b, cfg)
    }

    /// `request_filter`.
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        self.authorize(session.req_header_mut(), tls, ctx).await
    }
    /// The `upstream_headers` names: identity headers of the route ([`crate::owned_headers`]).
    fn identity_headers(&self) -> &[HeaderName] {
        &self.upstream_headers
    }
    /// `upstream_request_filter`: the identity headers of the auth answer, set again here
    /// because Pingora removes the headers a client's `Connection` names between
    /// `request_filter` and this phase; and the consumer named by `consumer_header`, if any.
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        let decided = match ctx.plugins.forward_auth.as_deref() {
            Some(Decision::Allow { headers, .. }) => Some(&headers[..]),
            _ => None,
        };
        super::outbound::set_identity_headers(req, &self.upstream_headers, decided)?;
        if self.consumer_header.is_some() {
            super::send_consumer(req, ctx)?;
        }
        Ok(())
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// The `forward_auth_*` series of `route` exist from the start (at 0).
    fn route_series(route: &str, create: bool) {
        route_series(route, create);
    }

    fn explain(&self, _x: &mut crate::plugins::Explain) -> serde_json::Value {
        serde_json::json!({"result": "asks the external authorizer (not decided offline)"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::ctx::Runtime;
    use crate::plugins::cors::is_cors_preflight;
    use crate::upstream::StateRegistry;
    use crate::util::registry::Registry;
    use http::Method;
    use std::path::Path;

    /// A config whose forward-auth `config:` lines start at line 12.
    fn yaml(route: &str, config_lines: &str) -> String {
        let mut y = format!(
            "server: {{ listen: [\"127.0.0.1:18080\"] }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: {route}\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: forward-auth\n        config:\n"
        );
        for l in config_lines.lines() {
            y.push_str("          ");
            y.push_str(l);
            y.push('\n');
        }
        y.push_str("consumers:\n  - { username: alice, roles: [reader] }\n");
        y
    }

    fn load(y: &str) -> Result<Arc<Runtime>, config::ConfigErrors> {
        load_in(&Registry::default(), y)
    }

    /// [`load`] with the state that survives reloads in `reg`.
    fn load_in(reg: &Registry, y: &str) -> Result<Arc<Runtime>, config::ConfigErrors> {
        config::load_str(y, Path::new("."), &StateRegistry::default(), reg, 1).map(Arc::new)
    }

    fn plugin(rt: &Runtime) -> &ForwardAuth {
        rt.routes
            .first()
            .and_then(|r| r.plugins.find())
            .expect("forward-auth on the first route")
    }

    /// The one error of `config_lines`: (path, line, message).
    fn error(config_lines: &str) -> (String, Option<usize>, String) {
        let errs = load(&yaml("r", config_lines)).expect_err("config must be refused");
        assert_eq!(errs.0.len(), 1, "exactly one error: {errs:?}");
        let e = &errs.0[0];
        (e.path.clone(), e.line, e.message.clone())
    }

    const P: &str = "routes[0].plugins[0].config";

    #[test]
    fn config_errors_name_path_and_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            ("url: ftp://auth.local/check", "url", 12, "http:// or https://"),
            ("method: GET", "url", 11, "is required"),
            ("url: http://a/\nmethod: \"NOT A METHOD\"", "method", 13, "invalid method"),
            ("url: http://a/\ntimeout: 0s", "timeout", 13, "greater than 0"),
            ("url: http://a/\ntimeout: 5x", "timeout", 13, "unknown unit"),
            (
                "url: http://a/\ntimeout: 500ms\nconnect_timeout: 1s",
                "connect_timeout",
                14,
                "longer than timeout",
            ),
            (
                "url: http://a/\nrequest_headers: [Authorization, Host]",
                "request_headers[1]",
                13,
                "connection header",
            ),
            (
                "url: http://a/\nrequest_headers:\n  - Authorization\n  - X-Forwarded-Uri",
                "request_headers[1]",
                15,
                "set by the gateway on the auth call",
            ),
            (
                "url: http://a/\nrequest_headers: [\"bad header\"]\ncache: { ttl: 0s }",
                "request_headers[0]",
                13,
                "invalid header name",
            ),
            (
                "url: http://a/\nupstream_headers: [X-User-Id, X-Consumer-Username]",
                "upstream_headers[1]",
                13,
                "set by the gateway on the upstream request",
            ),
            (
                "url: http://a/\nupstream_headers: [Content-Length]",
                "upstream_headers[0]",
                13,
                "never copied",
            ),
            (
                "url: http://a/\nupstream_headers: [Authorization]",
                "upstream_headers[0]",
                13,
                "also in request_headers",
            ),
            (
                "url: http://a/\nclient_headers: [Content-Type]",
                "client_headers[0]",
                13,
                "never copied",
            ),
            (
                "url: http://a/\nrequest_headers: [Authorization, Cookie]\ncache:\n  key: [Authorization]",
                "request_headers[1]",
                13,
                "not in cache.key",
            ),
            (
                "url: http://a/\ncache:\n  max_entries: 0",
                "cache.max_entries",
                14,
                "at least 1",
            ),
            (
                "url: http://a/\ncache: { key: [] }",
                "cache.key",
                13,
                "at least one header",
            ),
            ("url: http://a/\ncache: { ttl: 5m, size: 3 }", "cache.size", 13, "unknown field"),
            ("url: http://a/\nbogus: 1", "bogus", 13, "unknown field"),
            (
                "url: http://a/\nca_file: /nonexistent/gatehouse-ca.pem",
                "ca_file",
                13,
                "cannot read",
            ),
        ];
        for (text, path, line, msg) in cases {
            let (p, l, m) = error(text);
            assert_eq!(p, format!("{P}.{path}"), "{text}");
            assert_eq!(l, Some(*line), "{text}: {m}");
            assert!(m.contains(msg), "{text}: {m}");
        }
    }

    #[test]
    fn url_credentials_refused_without_echo() {
        let (p, l, m) = error("url: \"http://svc:hunter2-secret@auth.local/check\"");
        assert_eq!(p, format!("{P}.url"));
        assert_eq!(l, Some(12));
        assert!(m.contains("credentials"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn defaults_and_debug_redaction() {
        let rt = load(&yaml(
            "r",
            "url: \"http://auth.local:9000/check?token=q-secret\"",
        ))
        .expect("valid config");
        let p = plugin(&rt);
        assert_eq!(p.method, AuthMethod::Fixed(Method::GET));
        assert_eq!(p.request_headers, vec![http::header::AUTHORIZATION]);
        assert_eq!(p.key_headers, p.request_headers);
        assert_eq!(p.client_headers, vec![http::header::WWW_AUTHENTICATE]);
        assert!(p.upstream_headers.is_empty());
        assert!(p.run_on_preflight);
        assert_eq!(p.target, "http://auth.local:9000/check");
        let cache = p.state.cache.as_ref().expect("cache on by default");
        assert_eq!(cache.ttl(), std::time::Duration::from_secs(300));
        let dbg = format!("{:?}", rt);
        assert!(!dbg.contains("q-secret"), "{dbg}");

        // `original`, cache off (an empty key is fine then), a key wider than the headers.
        let rt = load(&yaml(
            "r",
            "url: https://auth.local/\nmethod: original\ncache: { ttl: 0s, key: [] }",
        ))
        .expect("valid");
        assert_eq!(plugin(&rt).method, AuthMethod::Original);
        assert!(plugin(&rt).state.cache.is_none());
        let rt = load(&yaml(
            "r",
            "url: http://a/\nrequest_headers: [Cookie]\ncache: { key: [Cookie, X-Tenant] }",
        ))
        .expect("valid");
        assert_eq!(plugin(&rt).key_headers.len(), 2);
    }

    #[test]
    fn state_survives_an_identical_entry_only() {
        let reg = Registry::default();
        let a = load_in(&reg, &yaml("keep-r", "url: http://keep.local/a")).expect("valid");
        let b = load_in(&reg, &yaml("keep-r", "url: http://keep.local/a")).expect("valid");
        assert!(Arc::ptr_eq(&plugin(&a).state, &plugin(&b).state));
        let other_cfg = load_in(&reg, &yaml("keep-r", "url: http://keep.local/b")).expect("valid");
        assert!(!Arc::ptr_eq(&plugin(&a).state, &plugin(&other_cfg).state));
        let other_route =
            load_in(&reg, &yaml("keep-s", "url: http://keep.local/a")).expect("valid");
        assert!(!Arc::ptr_eq(&plugin(&a).state, &plugin(&other_route).state));
        // Once no runtime holds it, the state goes.
        let weak = Arc::downgrade(&plugin(&a).state);
        drop((a, b));
        assert!(weak.upgrade().is_none());
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).expect("head");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn cache_key_material() {
        let rt = load(&yaml(
            "r",
            "url: http://ck.local/\nrequest_headers: [Authorization, Cookie]",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let k = |r: &RequestHeader| p.cache_key(r);
        let a = req("GET", "/x", &[("authorization", "Bearer a")]);
        assert_eq!(
            k(&a),
            k(&req("POST", "/y?z", &[("authorization", "Bearer a")]))
        );
        assert_ne!(
            k(&a),
            k(&req("GET", "/x", &[("authorization", "Bearer b")]))
        );
        // Absent and empty differ; a value moved between headers differs.
        assert_ne!(
            k(&req("GET", "/", &[])),
            k(&req("GET", "/", &[("authorization", "")]))
        );
        assert_ne!(
            k(&req("GET", "/", &[("authorization", "x")])),
            k(&req("GET", "/", &[("cookie", "x")]))
        );
        // Two values are not one joined value.
        assert_ne!(
            k(&req("GET", "/", &[("cookie", "a"), ("cookie", "b")])),
            k(&req("GET", "/", &[("cookie", "ab")]))
        );

        let rt = load(&yaml(
            "r",
            "url: http://ck2.local/\ncache: { include_method: true, include_path: true }",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let h = [("authorization", "Bearer a")];
        let base = p.cache_key(&req("GET", "/x?1", &h));
        assert_ne!(base, p.cache_key(&req("POST", "/x?1", &h)));
        assert_ne!(base, p.cache_key(&req("GET", "/x?2", &h)));
        assert_eq!(base, p.cache_key(&req("GET", "/x?1", &h)));
    }

    #[test]
    fn call_headers_carry_the_request_and_only_the_chosen_headers() {
        let rt = load(&yaml(
            "r",
            "url: http://ch.local/\nrequest_headers: [Authorization, Cookie]",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let mut ctx = RequestCtx::new(rt.clone());
        ctx.request_id = "req-1".into();
        ctx.client_ip = Some("203.0.113.7".parse().expect("ip"));
        let r = req(
            "DELETE",
            "/api/items/7?force=1",
            &[
                ("host", "api.example.com"),
                ("authorization", "Bearer t"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x-api-key", "not-for-the-auth-service"),
                ("x-forwarded-proto", "https"),
            ],
        );
        let h = p.call_headers(&r, false, &ctx);
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-method"), Some("DELETE"));
        assert_eq!(get("x-forwarded-uri"), Some("/api/items/7?force=1"));
        assert_eq!(get("x-forwarded-host"), Some("api.example.com"));
        // The peer is not a trusted proxy: its X-Forwarded-Proto is not believed.
        assert_eq!(get("x-forwarded-proto"), Some("http"));
        assert_eq!(get("x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(get("x-request-id"), Some("req-1"));
        assert_eq!(get("authorization"), Some("Bearer t"));
        assert_eq!(h.get_all("cookie").iter().count(), 2);
        assert!(h.get("x-api-key").is_none());
        assert!(h.get("host").is_none());
        assert_eq!(h.len(), 9);
        ctx.peer_trusted = true;
        let h = p.call_headers(&r, false, &ctx);
        assert_eq!(
            h.get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
            Some("https")
        );
    }

    #[test]
    fn preflight_detection() {
        let pre = [
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ];
        assert!(is_cors_preflight(&req("OPTIONS", "/", &pre)));
        assert!(!is_cors_preflight(&req("GET", "/", &pre)));
        assert!(!is_cors_preflight(&req(
            "OPTIONS",
            "/",
            &[("origin", "https://app.example")]
        )));
    }

    #[tokio::test]
    async fn failure_answers_503_and_strips_spoofed_headers() {
        // Nothing listens on port 9 of 127.0.0.1 (discard; refused here).
        let rt = load(&yaml(
            "r",
            "url: http://127.0.0.1:9/check\nupstream_headers: [X-User-Id]\ntimeout: 2s",
        ))
        .expect("valid");
        let p = plugin(&rt);
        let mut ctx = RequestCtx::new(rt.clone());
        ctx.route = Some(0);
        let mut r = req("GET", "/", &[("x-user-id", "spoofed")]);
        let Outcome::Respond(reply) = p.authorize(&mut r, false, &mut ctx).await else {
            panic!("an unreachable auth service must refuse");
        };
        assert_eq!(reply.status, 503);
        assert_eq!(reply.code, Some("service_unavailable"));
        assert!(!reply.message.contains("127.0.0.1"));
        assert!(r.headers.get("x-user-id").is_none());
        assert_eq!(p.state.cache.as_ref().map(DecisionCache::len), Some(0));
    }
}
