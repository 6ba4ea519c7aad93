//! `rate-limiting` (request_filter + response headers): requests per key per window
//! (`second`, `minute`, `hour`, `day`, every one set applies) with the sliding window
//! counter, or a token bucket (`rate` per second, `burst`). Keys: the consumer (its tier's
//! windows replace the plugin's; anonymous requests count by IP), the client IP, a request
//! header (absent: by IP), the route, or one global budget. Counted in this process
//! (`policy: local`, exact per key) or in Redis (`policy: redis`, shared by every node).
//! See [`crate::limits`] for the algorithms. Neither stores a key as it came (a header value
//! may be 32 KiB): both keep a fixed-size digest of it ([`crate::limits::local`],
//! [`crate::limits::redis`]).
//!
//! Over the limit: 429 `rate_limit_exceeded` with `Retry-After`. Unless
//! `hide_client_headers`, every response carries `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining`, `X-RateLimit-Reset` and `RateLimit-Policy` of the tightest
//! window. Redis down or slower than `redis.timeout`: `fault_tolerant: true` lets the
//! request through (counted in `rate_limit_backend_errors_total`), `false` answers 503.

use super::{phase, Answer, Build, Hooks, Outcome, Reply};
use crate::config::diag::Compiler;
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
use crate::limits::{
    self, BackendError, Decision, KeyBuf, Limits, LocalStore, RedisBackend, TokenBucket,
};
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Algorithm {
    #[default]
    SlidingWindow,
    TokenBucket,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitBy {
    #[default]
    Consumer,
    Ip,
    Header,
    Route,
    Global,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum PolicyKind {
    #[default]
    Local,
    Redis,
}

/// `redis:`: exactly one of `url`, `cluster_nodes`, `sentinel`. Shared with
/// `cache.purge_broadcast` (which takes `url` only).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    cluster_nodes: Option<Vec<String>>,
    #[serde(default)]
    sentinel: Option<SentinelConfig>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    db: i64,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: Dur,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SentinelConfig {
    master: String,
    nodes: Vec<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Never shows a URL or password (the URL may hold one).
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisConfig")
    }
}

fn default_timeout() -> Dur {
    Dur(Duration::from_millis(50))
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_millis(500))
}

impl RedisConfig {
    /// Checks the settings (errors under `path`, never echoing a secret) and describes the
    /// deployment.
    pub fn compile(&self, c: &mut Compiler, path: &str) -> Option<limits::RedisSpec> {
        let mut ok = true;
        let set = [
            self.url.is_some(),
            self.cluster_nodes.is_some(),
            self.sentinel.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            c.error(path, "needs exactly one of url, cluster_nodes or sentinel");
            return None;
        }
        for (k, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.0.is_zero() {
                c.error(&format!("{path}.{k}"), "must be greater than 0");
                ok = false;
            }
        }
        let topology = if let Some(url) = &self.url {
            for (k, v) in [
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
                ("tls", self.tls),
                ("db", self.db != 0),
            ] {
                if v {
                    c.error(
                        &format!("{path}.{k}"),
                        "applies to cluster_nodes and sentinel (a url carries its own: rediss://user:password@host:port/db)",
                    );
                    ok = false;
                }
            }
            limits::Topology::Single { url: url.clone() }
        } else if let Some(nodes) = &self.cluster_nodes {
            if nodes.is_empty() {
                c.error(
                    &format!("{path}.cluster_nodes"),
                    "needs at least one host:port",
                );
                ok = false;
            }
            if self.db != 0 {
                c.error(&format!("{path}.db"), "Redis Cluster has database 0 only");
                ok = false;
            }
            limits::Topology::Cluster {
                nodes: nodes.clone(),
            }
        } else {
            let s = self.sentinel.as_ref()?;
            if s.nodes.is_empty() {
                c.error(
                    &format!("{path}.sentinel.nodes"),
                    "needs at least one host:port",
                );
                ok = false;
            }
            if s.master.is_empty() {
                c.error(
                    &format!("{path}.sentinel.master"),
                    "needs the master's name",
                );
                ok = false;
            }
            limits::Topology::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
                username: s.username.clone(),
                password: s.password.clone(),
            }
        };
        let ca_pem = match &self.ca_file {
            None => None,
            Some(f) => {
                let is_tls = self.tls
                    || self
                        .url
                        .as_deref()
                        .is_some_and(|u| u.starts_with("rediss://"));
                if !is_tls {
                    c.error(
                        &format!("{path}.ca_file"),
                        "applies with tls: true (or a rediss:// url)",
                    );
                    ok = false;
                }
                let p = c.file(f);
                match std::fs::read(&p) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        c.error(
                            &format!("{path}.ca_file"),
                            format!("cannot read {}: {e}", p.display()),
                        );
                        ok = false;
                        None
                    }
                }
            }
        };
        let spec = limits::RedisSpec {
            topology,
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db,
            tls: self.tls,
            ca_pem,
            timeout: self.timeout.0,
            connect_timeout: self.connect_timeout.0,
        };
        ok.then_some(spec)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    second: Option<u64>,
    minute: Option<u64>,
    hour: Option<u64>,
    day: Option<u64>,
    algorithm: Algorithm,
    rate: Option<f64>,
    burst: Option<u64>,
    limit_by: LimitBy,
    header_name: Option<String>,
    policy: PolicyKind,
    redis: Option<RedisConfig>,
    fault_tolerant: bool,
    hide_client_headers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            second: None,
            minute: None,
            hour: None,
            day: None,
            algorithm: Algorithm::SlidingWindow,
            rate: None,
            burst: None,
            limit_by: LimitBy::Consumer,
            header_name: None,
            policy: PolicyKind::Local,
            redis: None,
            fault_tolerant: true,
            hide_client_headers: false,
        }
    }
}

#[derive(Debug)]
enum Algo {
    Windows(Limits),
    Token(TokenBucket),
}

enum Store {
    Local(Arc<LocalStore>),
    Redis {
        conn: Arc<RedisBackend>,
        /// `gatehouse:rl:<identity>:`, the same on every node with the same route and key
        /// settings.
        prefix: String,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Local(s) => write!(f, "Local({} keys)", s.keys()),
            Store::Redis { conn, .. } => write!(f, "Redis({})", conn.addr()),
        }
    }
}

#[derive(Debug)]
pub struct RateLimit {
    limit_by: LimitBy,
    header_name: Option<HeaderName>,
    algo: Algo,
    /// Tier limits by consumer index (`limit_by: consumer` only); `None`: the plugin's own.
    tiers: Vec<Option<Arc<Limits>>>,
    store: Store,
    fault_tolerant: bool,
    hide_client_headers: bool,
}

static X_LIMIT: &str = "X-RateLimit-Limit";
static X_REMAINING: &str = "X-RateLimit-Remaining";
static X_RESET: &str = "X-RateLimit-Reset";
static POLICY: &str = "RateLimit-Policy";

impl RateLimit {
    /// What `explain` says about this limiter: the key kind, the header, the algorithm.
    pub fn explain_key(&self) -> (LimitBy, Option<&str>, String) {
        (
            self.limit_by,
            self.header_name.as_ref().map(|h| h.as_str()),
            format!("{:?}", self.algo),
        )
    }

    /// The key of this request, and the consumer tier's limits when they apply.
    fn key(&self, req: &RequestHeader, ctx: &RequestCtx) -> (KeyBuf, Option<&Limits>) {
        let route = ctx.route().map_or("", |r| r.name.as_str());
        self.key_of(req, ctx.consumer, &ctx.rt, ctx.client_ip, route)
    }

    /// The counter key (and a consumer tier's limits) of a request: [`Self::key`] for the
    /// proxy, and `explain` for a described request.
    fn key_of(
        &self,
        req: &RequestHeader,
        consumer: Option<usize>,
        rt: &crate::ctx::Runtime,
        client_ip: Option<std::net::IpAddr>,
        route: &str,
    ) -> (KeyBuf, Option<&Limits>) {
        match self.limit_by {
            LimitBy::Consumer => {
                if let Some(i) = consumer {
                    if let Some(c) = rt.consumers.get(i) {
                        let tier = self.tiers.get(i).and_then(|t| t.as_deref());
                        return (KeyBuf::new(b'c', &[c.username.as_bytes()]), tier);
                    }
                }
                (KeyBuf::ip(client_ip), None)
            }
            LimitBy::Ip => (KeyBuf::ip(client_ip), None),
            LimitBy::Header => {
                let v = self.header_name.as_ref().and_then(|h| req.headers.get(h));
                match v {
                    Some(v) => (KeyBuf::new(b'h', &[v.as_bytes()]), None),
                    None => (KeyBuf::ip(client_ip), None),
                }
            }
            LimitBy::Route => (KeyBuf::new(b'r', &[route.as_bytes()]), None),
            LimitBy::Global => (KeyBuf::new(b'g', &[]), None),
        }
    }

    /// `explain` on the live config: what the key's counters hold now, per window (local
    /// counters only; nothing is counted or created).
    fn current_counts(&self, key: &KeyBuf, tier: Option<&Limits>) -> serde_json::Value {
        use serde_json::json;
        match (&self.store, tier, &self.algo) {
            (Store::Local(s), Some(l), _) | (Store::Local(s), None, Algo::Windows(l)) => {
                let now = crate::util::clock::now_us();
                let w: Vec<_> = s
                    .current_windows(key.as_bytes(), l, now)
                    .into_iter()
                    .map(|(ms, used, limit)| {
                        json!({"window_s": ms / 1000, "counted": used, "limit": limit})
                    })
                    .collect();
                json!(w)
            }
            (Store::Local(_), None, Algo::Token(_)) => {
                json!("a token bucket: no count to show")
            }
            (Store::Redis { .. }, _, _) => json!("kept in Redis (not read by explain)"),
        }
    }

    async fn check(&self, key: &KeyBuf, tier: Option<&Limits>) -> Result<Decision, BackendError> {
        let k = key.as_bytes();
        match &self.store {
            Store::Local(s) => {
                let now = crate::util::clock::now_us();
                Ok(match (tier, &self.algo) {
                    (Some(l), _) | (None, Algo::Windows(l)) => s.check_windows(k, l, now),
                    (None, Algo::Token(tb)) => s.check_token(k, tb, now),
                })
            }
            Store::Redis { conn, prefix } => match (tier, &self.algo) {
                (Some(l), _) | (None, Algo::Windows(l)) => conn.check_windows(prefix, k, l).await,
                (None, Algo::Token(tb)) => conn.check_token(prefix, k, tb).await,
            },
        }
    }

    /// [`Self::request`] on the request head alone.
    pub async fn check_request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Outcome {
        let (key, tier) = self.key(req, ctx);
        match self.check(&key, tier).await {
            Ok(d) => {
                let retry_s = d.retry_after_ms.div_ceil(1000).max(1);
                if !self.hide_client_headers {
                    ctx.plugins.rate_limit = Some(d.status);
                }
                if d.allowed {
                    return Outcome::Continue;
                }
                let route = ctx.route().map_or("", |r| r.name.as_str());
                let consumer = ctx
                    .consumer
                    .and_then(|i| ctx.rt.consumers.get(i))
                    .map(|c| c.username.as_str());
                limits::record_hit(route, consumer);
                Outcome::Respond(
                    Reply::error_with(429, "rate_limit_exceeded", "API rate limit exceeded")
                        .header(http::header::RETRY_AFTER, HeaderValue::from(retry_s)),
                )
            }
            Err(e) => {
                limits::record_backend_error();
                tracing::debug!("rate-limiting backend: {e}");
                if self.fault_tolerant {
                    Outcome::Continue
                } else {
                    Outcome::Respond(Reply::error_with(
                        503,
                        "service_unavailable",
                        "Rate limiting is unavailable",
                    ))
                }
            }
        }
    }
}

impl Hooks for RateLimit {
    /// The tightest window's numbers for the `X-RateLimit-*` headers.
    type State = Option<limits::RateLimitStatus>;
    const PHASES: u32 = phase::REQUEST | phase::RESPONSE;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let cp = format!("{path}.config");
        let mut ok = true;
        let windows = [cfg.second, cfg.minute, cfg.hour, cfg.day];
        for (i, w) in windows.iter().enumerate() {
            if *w == Some(0) {
                c.error(
                    &format!("{cp}.{}", limits::WINDOWS[i].0),
                    "must be at least 1",
                );
                ok = false;
            }
        }
        let any_window = windows.iter().any(Option::is_some);
        let algo = match cfg.algorithm {
            Algorithm::SlidingWindow => {
                if !any_window {
                    c.error(
                        &cp,
                        "sets no limit: use second, minute, hour or day (or algorithm: token_bucket with rate and burst)",
                    );
                    ok = false;
                }
                for (k, set) in [("rate", cfg.rate.is_some()), ("burst", cfg.burst.is_some())] {
                    if set {
                        c.error(
                            &format!("{cp}.{k}"),
                            "applies to algorithm: token_bucket only",
                        );
                        ok = false;
                    }
                }
                Algo::Windows(Limits::from_slots(windows))
            }
            Algorithm::TokenBucket => {
                if any_window {
                    c.error(
                        &cp,
                        "algorithm: token_bucket uses rate and burst; second, minute, hour and day apply to sliding_window",
                    );
                    ok = false;
                }
                let rate = match cfg.rate {
                    Some(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => r,
                    Some(_) => {
                        c.error(
                            &format!("{cp}.rate"),
                            "must be a number of requests per second above 0 (at most 1000000)",
                        );
                        ok = false;
                        1.0
                    }
                    None => {
                        c.error(
                            &format!("{cp}.rate"),
                            "algorithm: token_bucket needs a rate",
                        );
                        ok = false;
                        1.0
                    }
                };
                if cfg.burst == Some(0) {
                    c.error(&format!("{cp}.burst"), "must be at least 1");
                    ok = false;
                }
                let burst = cfg.burst.unwrap_or_else(|| rate.ceil().max(1.0) as u64);
                Algo::Token(TokenBucket::new(rate, burst))
            }
        };
        let header_name = match (&cfg.header_name, cfg.limit_by) {
            (Some(h), LimitBy::Header) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    c.error(
                        &format!("{cp}.header_name"),
                        format!("invalid header name {h:?}"),
                    );
                    ok = false;
                    None
                }
            },
            (None, LimitBy::Header) => {
                c.error(
                    &format!("{cp}.header_name"),
                    "limit_by: header needs a header_name",
                );
                ok = false;
                None
            }
            (Some(_), _) => {
                c.error(
                    &format!("{cp}.header_name"),
                    "applies to limit_by: header only",
                );
                ok = false;
                None
            }
            (None, _) => None,
        };
        let scope = env.route.unwrap_or("plugins");
        let store = match (cfg.policy, &cfg.redis) {
            (PolicyKind::Local, Some(_)) => {
                c.error(&format!("{cp}.redis"), "applies to policy: redis only");
                ok = false;
                None
            }
            (PolicyKind::Local, None) => {
                // The identity: route (or global list) and the whole config, defaults
                // filled in. Unchanged identity = same counters after a reload.
                let id =
                    crate::util::digest::identity(&["rate-limiting", scope, &format!("{cfg:?}")]);
                Some(Store::Local(limits::local_store(env.registry, &id)))
            }
            (PolicyKind::Redis, None) => {
                c.error(&format!("{cp}.redis"), "policy: redis needs redis: { url }");
                ok = false;
                None
            }
            (PolicyKind::Redis, Some(r)) => {
                let rp = format!("{cp}.redis");
                match r
                    .compile(c, &rp)
                    .map(|spec| limits::redis_backend(env.registry, &spec))
                {
                    Some(Ok(conn)) => {
                        // Shared by every node configured alike: route and key settings
                        // only, so nodes agree even if their Redis URLs are spelled
                        // differently, and a changed limit keeps the counts.
                        let id = crate::util::digest::identity(&[
                            "rate-limiting",
                            scope,
                            &format!("{:?}", cfg.limit_by),
                            cfg.header_name.as_deref().unwrap_or(""),
                        ]);
                        Some(Store::Redis {
                            conn,
                            prefix: format!("gatehouse:rl:{id}:"),
                        })
                    }
                    Some(Err(e)) => {
                        // Never echoes the URL: it may hold a password.
                        let at = if r.url.is_some() {
                            format!("{rp}.url")
                        } else {
                            rp
                        };
                        c.error(&at, e);
                        ok = false;
                        None
                    }
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let tiers = if cfg.limit_by == LimitBy::Consumer {
            let mut by_name: HashMap<&str, Arc<Limits>> = HashMap::new();
            for (name, t) in env.tiers {
                by_name.insert(
                    name,
                    Arc::new(Limits::from_slots([t.second, t.minute, t.hour, t.day])),
                );
            }
            env.consumers
                .iter()
                .map(|c| c.tier.as_deref().and_then(|t| by_name.get(t).cloned()))
                .collect()
        } else {
            Vec::new()
        };
        if !ok {
            return None;
        }
        Some(RateLimit {
            limit_by: cfg.limit_by,
            header_name,
            algo,
            tiers,
            store: store?,
            fault_tolerant: cfg.fault_tolerant,
            hide_client_headers: cfg.hide_client_headers,
        })
    }
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        self.check_request(session.req_header(), ctx).await
    }
    /// `X-RateLimit-*` and `RateLimit-Policy` on every response, gateway-made ones too.
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if self.hide_client_headers {
            return Ok(());
        }
        if let Some(s) = &ctx.plugins.rate_limit {
            resp.insert_header(X_LIMIT, s.limit)?;
            resp.insert_header(X_REMAINING, s.remaining)?;
            resp.insert_header(X_RESET, s.reset_s)?;
            resp.insert_header(POLICY, s.policy.clone())?;
        }
        Ok(())
    }

    fn register_metrics() {
        limits::register_metrics();
    }

    /// `rate_limit_hits_total{client_id="anonymous",route}` exists from the start.
    fn route_series(route: &str, create: bool) {
        limits::hits_series(route, create);
    }

    /// `explain`: the key this request would be counted under (nothing is counted).
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        let (by, header, algo) = self.explain_key();
        let client_ip = || {
            format!(
                "client IP {}",
                x.client_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "(unknown)".into())
            )
        };
        let key = match by {
            LimitBy::Consumer => match x.consumer {
                Some(_) => format!("consumer {}", x.consumer_name().unwrap_or("?")),
                None => client_ip(),
            },
            LimitBy::Ip => client_ip(),
            LimitBy::Header => {
                let h = header.unwrap_or("");
                match x.req.headers.get(h) {
                    Some(_) => format!("header {h} (value given)"),
                    None => format!("header {h} absent: client IP"),
                }
            }
            LimitBy::Route => format!("route {}", x.route.name),
            LimitBy::Global => "one global budget".to_string(),
        };
        let mut out = serde_json::json!({"result": "counted (the counter is not consumed by explain)", "key": key, "limits": algo});
        if x.live {
            let (k, tier) =
                self.key_of(x.req, x.consumer, x.rt, x.client_ip, x.route.name.as_str());
            out["current"] = self.current_counts(&k, tier);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::ctx::Runtime;
    use crate::upstream::StateRegistry;
    use crate::util::registry::Registry;
    use std::path::Path;

    const CONSUMERS: &str = "tiers:\n  premium: { minute: 3 }\nconsumers:\n  - { username: gold, tier: premium }\n  - { username: plain }\n";

    fn yaml(plugin: &str, extra: &str, routes_before: &str) -> String {
        format!(
            "server: {{ listen: [\"127.0.0.1:18080\"] }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\n{extra}routes:\n{routes_before}  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n      - name: rate-limiting\n        config: {plugin}\n"
        )
    }

    fn load(y: &str, limiters: &Registry) -> Result<Arc<Runtime>, String> {
        config::load_str(y, Path::new("."), &StateRegistry::default(), limiters, 1)
            .map(Arc::new)
            .map_err(|e| format!("{e:?}"))
    }

    fn rt(plugin: &str, extra: &str, limiters: &Registry) -> Arc<Runtime> {
        load(&yaml(plugin, extra, ""), limiters).unwrap_or_else(|e| panic!("{e}"))
    }

    fn plugin(rt: &Runtime) -> &RateLimit {
        let route = rt.routes.iter().find(|r| r.name == "r").expect("route r");
        route.plugins.find().expect("rate-limiting on route r")
    }

    fn ctx(rt: &Arc<Runtime>, consumer: Option<usize>, ip: &str) -> RequestCtx {
        let mut c = RequestCtx::new(rt.clone());
        c.route = rt.routes.iter().position(|r| r.name == "r");
        c.consumer = consumer;
        c.client_ip = Some(ip.parse().expect("ip"));
        c
    }

    fn get() -> RequestHeader {
        RequestHeader::build("GET", b"/", None).expect("request head")
    }

    /// Sends `n` requests; returns how many passed.
    async fn passed(rt: &Arc<Runtime>, n: usize, consumer: Option<usize>, ip: &str) -> usize {
        let p = plugin(rt);
        let mut ok = 0;
        for _ in 0..n {
            let mut c = ctx(rt, consumer, ip);
            if matches!(p.check_request(&get(), &mut c).await, Outcome::Continue) {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test]
    async fn consumer_tier_overrides_plugin_windows() {
        let reg = Registry::default();
        let rt = rt("{ minute: 1 }", CONSUMERS, &reg);
        // gold has tier premium (minute: 3), plain has no tier (the plugin's minute: 1).
        assert_eq!(passed(&rt, 5, Some(0), "10.0.0.1").await, 3);
        assert_eq!(passed(&rt, 5, Some(1), "10.0.0.1").await, 1);
        // Anonymous: by IP, the plugin's windows; each IP its own budget.
        assert_eq!(passed(&rt, 3, None, "10.0.0.1").await, 1);
        assert_eq!(passed(&rt, 3, None, "10.0.0.2").await, 1);

        let mut c = ctx(&rt, Some(0), "10.0.0.9");
        let out = plugin(&rt).check_request(&get(), &mut c).await;
        let Outcome::Respond(reply) = out else {
            panic!("gold is over its tier");
        };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.code, Some("rate_limit_exceeded"));
        let retry = reply
            .headers
            .iter()
            .find(|(n, _)| n == http::header::RETRY_AFTER)
            .map(|(_, v)| v.to_str().unwrap().parse::<u64>().unwrap())
            .expect("Retry-After");
        assert!((1..=120).contains(&retry), "{retry}");
        let st = c.plugins.rate_limit.expect("headers state");
        assert_eq!((st.limit, st.remaining), (3, 0));
        assert_eq!(st.policy, "3;w=60");
    }

    #[tokio::test]
    async fn limit_by_header_and_fallback_to_ip() {
        let reg = Registry::default();
        let rt = rt(
            "{ minute: 2, limit_by: header, header_name: X-Tenant }",
            "",
            &reg,
        );
        let p = plugin(&rt);
        let mut ok = [0; 3];
        for _ in 0..4 {
            for (i, tenant) in ["a", "b", ""].iter().enumerate() {
                let mut req = get();
                if !tenant.is_empty() {
                    req.insert_header("X-Tenant", *tenant).unwrap();
                }
                let mut c = ctx(&rt, None, "192.0.2.1");
                if matches!(p.check_request(&req, &mut c).await, Outcome::Continue) {
                    ok[i] += 1;
                }
            }
        }
        assert_eq!(
            ok,
            [2, 2, 2],
            "each tenant and the header-less IP count apart"
        );
    }

    #[tokio::test]
    async fn token_bucket_burst_then_refusal() {
        let reg = Registry::default();
        let rt = rt(
            "{ algorithm: token_bucket, rate: 1, burst: 4, limit_by: ip }",
            "",
            &reg,
        );
        assert_eq!(passed(&rt, 10, None, "10.1.1.1").await, 4);
        let mut c = ctx(&rt, None, "10.1.1.1");
        plugin(&rt).check_request(&get(), &mut c).await;
        assert_eq!(
            c.plugins.rate_limit.map(|s| s.policy),
            Some("4;w=4".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn counters_survive_a_reload_with_the_same_identity() {
        let reg = Registry::default();
        let old = rt("{ minute: 3, limit_by: ip }", "", &reg);
        assert_eq!(passed(&old, 2, None, "10.0.0.1").await, 2);
        // Another route added in front: same route name and config, same counters.
        let other = "  - name: other\n    paths: [\"/other\"]\n    upstream: u\n";
        let new = load(&yaml("{ minute: 3, limit_by: ip }", "", other), &reg).unwrap();
        assert_eq!(passed(&new, 5, None, "10.0.0.1").await, 1);
        // A changed limit is a new identity: fresh counters.
        let changed = rt("{ minute: 4, limit_by: ip }", "", &reg);
        assert_eq!(passed(&changed, 5, None, "10.0.0.1").await, 4);
        drop((old, new, changed));
        assert_eq!(
            crate::limits::live_stores(&reg),
            0,
            "stores go with the last runtime using them"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let reg = Registry::default();
        let cases = [
            ("{}", "routes[0].plugins[0].config", "sets no limit"),
            ("{ minute: 0 }", "config.minute", "at least 1"),
            ("{ algorithm: token_bucket }", "config.rate", "needs a rate"),
            (
                "{ algorithm: token_bucket, rate: 5, minute: 3 }",
                "routes[0].plugins[0].config",
                "token_bucket uses rate",
            ),
            ("{ minute: 3, rate: 5 }", "config.rate", "token_bucket only"),
            (
                "{ minute: 3, limit_by: header }",
                "config.header_name",
                "needs a header_name",
            ),
            (
                "{ minute: 3, header_name: X-A }",
                "config.header_name",
                "limit_by: header only",
            ),
            (
                "{ minute: 3, policy: redis }",
                "config.redis",
                "needs redis",
            ),
            (
                "{ minute: 3, redis: { url: \"redis://h\" } }",
                "config.redis",
                "policy: redis only",
            ),
            (
                "{ minute: 3, policy: redis, redis: { url: \"nope://:hunter2@h\" } }",
                "config.redis.url",
                "invalid Redis URL",
            ),
            (
                "{ minute: 3, limit_by: everyone }",
                "config.limit_by",
                "unknown variant",
            ),
            ("{ minute: 3, windw: 1 }", "config", "unknown field"),
        ];
        for (cfg, path, msg) in cases {
            let e = load(&yaml(cfg, "", ""), &reg).expect_err(cfg);
            assert!(e.contains(path) && e.contains(msg), "{cfg}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(load(
            &yaml("{ minute: 3, policy: redis, redis: { url: \"redis://:pw@127.0.0.1:1/0\", timeout: 20ms } }", "", ""),
            &reg
        )
        .is_ok());
    }
}
