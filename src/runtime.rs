//! The compiled, immutable runtime and the handle that swaps it.
//!
//! A request loads the current [`Runtime`] once (one `ArcSwap` load in `new_ctx`) and keeps
//! that snapshot to the end, so a reload never changes a request half-way. A reload builds
//! and validates the new runtime off the request path and installs it with one pointer store;
//! state that must survive (target health, circuit state, in-flight counts) lives in the
//! [`StateRegistry`] keyed by stable names and is picked up by the new runtime.

use crate::config::{self, ConfigErrors};
use crate::plugins::Chain;
use crate::router::Router;
use crate::upstream::{StateRegistry, Upstream};
use crate::util::registry::Registry;
use arc_swap::ArcSwap;
use ipnet::IpNet;
use parking_lot::Mutex;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A secret string (API key, token): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: String,
    /// `"1.2"` or `"1.3"` (at least `min_version`).
    pub max_version: String,
    /// Canonical rustls names in preference order; empty: the provider's defaults.
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsSettings>,
    pub threads: usize,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_per_connection: u32,
    pub work_stealing: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub grace_period: u64,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub access_log: AccessLog,
    /// `error_log`: where the process log goes with `-d` (read at startup).
    pub error_log: Option<PathBuf>,
    /// `health_check_path`: answered by [`crate::probe`] before routing.
    pub health_check_path: Option<Box<str>>,
    /// Read once at startup (like `grace_period`).
    pub drain_delay: Duration,
    /// `server.h2c`: HTTP/2 prior knowledge on the plain listeners (read at startup).
    pub h2c: bool,
    /// `server.flood` caps ([`crate::flood`]; 0: off).
    pub flood: crate::config::raw::RawFlood,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// `None`: POST endpoints are open (the listener should then stay on loopback).
    pub token: Option<Secret>,
    /// `admin.allowed_hosts`, lower-case: `Host` names answered besides `localhost`,
    /// `*.localhost` and IP literals.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug)]
pub struct Consumer {
    pub username: String,
    /// `username` as the `X-Consumer-Username` value, validated once at load.
    pub header: http::HeaderValue,
    /// Name of an entry of `Runtime::tiers` (checked at load).
    pub tier: Option<String>,
    pub roles: Vec<String>,
    pub api_keys: Vec<Secret>,
    pub jwt_secrets: Vec<JwtSecretSpec>,
    /// `basicauth_credentials`, checked at load (usernames unique over all consumers).
    pub basic_credentials: Vec<BasicCredential>,
    /// `hmacauth_credentials` (usernames unique over all consumers).
    pub hmac_credentials: Vec<HmacCredential>,
}

/// One `hmacauth_credentials` entry.
#[derive(Debug, Clone)]
pub struct HmacCredential {
    pub username: String,
    pub secret: Secret,
}

/// One `basicauth_credentials` entry.
#[derive(Debug, Clone)]
pub struct BasicCredential {
    pub username: String,
    pub password: PasswordSpec,
}

/// A basic-auth password as configured: a hash (parsed at load) or, from `${ENV}` only,
/// plain text. `Debug` never shows any of them.
#[derive(Debug, Clone)]
pub enum PasswordSpec {
    /// `$argon2id$...` PHC string.
    Argon2(Secret),
    /// `$2a$`/`$2b$`/`$2y$` bcrypt hash.
    Bcrypt(Secret),
    /// Plain text from the environment.
    Plain(Secret),
}

/// One `jwt_secrets` entry as configured; the jwt plugin turns it into a verifying key.
#[derive(Debug, Clone)]
pub struct JwtSecretSpec {
    /// Matched against the token's `key_claim_name` claim.
    pub key: String,
    pub algorithm: String,
    pub secret: Option<Secret>,
    pub secret_is_base64: bool,
    /// `rsa_public_key_file` or `ecdsa_public_key_file`, resolved against the config dir.
    pub public_key_file: Option<PathBuf>,
}

/// Request limits of a consumer tier (`tiers:`), per window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tier {
    pub second: Option<u64>,
    pub minute: Option<u64>,
    pub hour: Option<u64>,
    pub day: Option<u64>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// `allow_encoded_slashes`: `%2F` in the path is data this route's upstream keeps
    /// within a segment; elsewhere such a path is refused.
    pub allow_encoded_slashes: bool,
    /// `forwarded_host`: the client's `Host` goes upstream as `X-Forwarded-Host`.
    pub forwarded_host: bool,
    pub plugins: Chain,
    /// `protocols: [https]`: how plain HTTP is answered ([`crate::https_redirect`]).
    pub https_only: Option<crate::https_redirect::HttpsOnly>,
    /// `timeout`: total time for the upstream exchange, retries included.
    pub timeout: Option<crate::resilience::RouteTimeout>,
    /// Identity and forwarding headers a client may not send on this route.
    pub owned_headers: crate::owned_headers::OwnedHeaders,
}

/// `cache:`: settings of the proxy-cache stores as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheSettings {
    pub purge_broadcast: Option<PurgeBroadcast>,
}

/// `cache.purge_broadcast`: admin purges are published on `channel` of the Redis at `url`,
/// and every node subscribed there applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeBroadcast {
    /// May hold a password: never logged (see `addr`).
    pub url: Secret,
    /// The URL without credentials, for logs and `/status`.
    pub addr: String,
    pub channel: String,
    pub timeout: Duration,
}

/// One compiled config generation.
#[derive(Debug)]
pub struct Runtime {
    /// Increments with every successful load in this process.
    pub version: u64,
    /// First 16 hex digits of the SHA-256 of the file.
    pub hash: String,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub upstreams: Vec<Arc<Upstream>>,
    pub consumers: Vec<Consumer>,
    pub tiers: std::collections::BTreeMap<String, Tier>,
    pub routes: Vec<Route>,
    pub router: Router,
    /// The global plugins alone: what runs for requests that match no route (404) and
    /// decorates the gateway's own answers to them.
    pub global_plugins: Chain,
    pub cache: CacheSettings,
}

impl Runtime {
    /// Listener settings differ: they only change with a binary upgrade (`-u`).
    pub fn listeners_differ(&self, other: &Runtime) -> bool {
        self.server.listen != other.server.listen
            || self.server.tls != other.server.tls
            || self.admin.listen != other.admin.listen
            || self.server.threads != other.server.threads
            || self.server.work_stealing != other.server.work_stealing
    }

    fn target_keys(&self) -> Vec<(String, String)> {
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

/// Result of a successful reload.
#[derive(Debug)]
pub struct Reloaded {
    pub version: u64,
    pub hash: String,
    /// Listener changes were found: they wait for a binary upgrade.
    pub needs_upgrade: bool,
    pub unchanged: bool,
    /// Routes, upstreams, plugins, consumers and settings that differ from the previous file.
    pub changes: crate::observe::changes::Changes,
}

/// Every part of the gateway registers its metric families with the one registry
/// ([`crate::observe::metrics::registry`]), once per process, before the first config is
/// installed: the families exist (at 0) from the first scrape.
fn register_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        crate::edge::register_metrics();
        crate::flood::register_metrics();
        crate::tls::register_metrics();
        crate::probe::register_metrics();
        crate::resilience::register_metrics();
        crate::upstream::metrics::register_metrics();
        crate::plugins::register_metrics();
        crate::observe::metrics::registry().on_route_plugins(crate::plugins::route_series);
    });
}

/// Process-wide gateway state: the current runtime and what survives reloads.
pub struct Shared {
    current: ArcSwap<Runtime>,
    pub states: StateRegistry,
    /// State that survives reloads by identity (limiter counters, forward-auth clients, JWKS
    /// key sets, OTLP exporters, cache stores), handed to every config compile.
    pub registry: Registry,
    pub config_path: PathBuf,
    versions: AtomicU64,
    /// Held during a reload; also keeps the fingerprint of the file in use (what the reload
    /// summary compares against).
    reload_lock: Mutex<crate::observe::changes::Fingerprint>,
}

impl Shared {
    /// Loads the config file for the first time.
    pub fn load(config_path: PathBuf) -> Result<Arc<Shared>, ConfigErrors> {
        let states = StateRegistry::default();
        let registry = Registry::default();
        let rt = config::load_file(&config_path, &states, &registry, 1)?;
        Ok(Self::from_runtime(rt, states, registry, config_path))
    }

    pub fn from_runtime(
        rt: Runtime,
        states: StateRegistry,
        registry: Registry,
        config_path: PathBuf,
    ) -> Arc<Shared> {
        let fingerprint = std::fs::read_to_string(&config_path)
            .map(|t| crate::observe::changes::fingerprint(&t))
            .unwrap_or_default();
        let rt = Arc::new(rt);
        register_metrics();
        crate::observe::metrics::install(&rt);
        crate::plugins::install(&rt, &registry);
        Arc::new(Shared {
            versions: AtomicU64::new(rt.version),
            current: ArcSwap::new(rt),
            states,
            registry,
            config_path,
            reload_lock: Mutex::new(fingerprint),
        })
    }

    /// The current snapshot (one atomic load).
    #[inline]
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Re-reads the file, compiles it off the request path and swaps it in. An invalid file
    /// changes nothing.
    /// Counted in `config_reloads_total{result}`; `config_info` and the per-route metric
    /// handles follow the new runtime.
    /// systemd hears `RELOADING=1` before and `READY=1` after (its reload protocol).
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        crate::sdnotify::reloading();
        let res = self.reload_inner();
        crate::observe::metrics::config_reload(res.is_ok());
        crate::sdnotify::reloaded(match &res {
            Ok(_) => "serving; config reloaded",
            Err(_) => "serving; config reload rejected, the previous config stays",
        });
        res
    }

    fn reload_inner(&self) -> Result<Reloaded, ConfigErrors> {
        let mut fingerprint = self.reload_lock.lock();
        let old = self.snapshot();
        let version = self.versions.load(Ordering::Relaxed) + 1;
        // Read once: the same text is compiled and fingerprinted for the change summary.
        let text = std::fs::read_to_string(&self.config_path).map_err(|e| {
            ConfigErrors::single(
                "",
                None,
                format!("cannot read {}: {e}", self.config_path.display()),
            )
        })?;
        let base = self
            .config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let new = config::load_str(&text, base, &self.states, &self.registry, version)?;
        if new.hash == old.hash {
            return Ok(Reloaded {
                version: old.version,
                hash: old.hash.clone(),
                needs_upgrade: false,
                unchanged: true,
                changes: Default::default(),
            });
        }
        let new_fingerprint = crate::observe::changes::fingerprint(&text);
        let changes = crate::observe::changes::diff(&fingerprint, &new_fingerprint);
        *fingerprint = new_fingerprint;
        self.versions.store(version, Ordering::Relaxed);
        let needs_upgrade = new.listeners_differ(&old);
        let keep = new.target_keys();
        let hash = new.hash.clone();
        let new = Arc::new(new);
        self.current.store(new.clone());
        self.states.retain(&keep);
        self.states.resilience.retain(&new);
        self.states.discovery.retain(&new);
        crate::observe::metrics::install(&new);
        crate::plugins::install(&new, &self.registry);
        Ok(Reloaded {
            version,
            hash,
            needs_upgrade,
            unchanged: false,
            changes,
        })
    }
}
