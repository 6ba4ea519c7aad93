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
    pub keepalive_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub grace_period: u64,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub access_log: AccessLog,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// `None`: POST endpoints are open (the listener should then stay on loopback).
    pub token: Option<Secret>,
}

#[derive(Debug)]
pub struct Consumer {
    pub username: String,
    /// Name of an entry of `Runtime::tiers` (checked at load).
    pub tier: Option<String>,
    pub roles: Vec<String>,
    pub api_keys: Vec<Secret>,
    pub jwt_secrets: Vec<JwtSecretSpec>,
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
    pub plugins: Chain,
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
}

impl Runtime {
    /// Listener settings differ: they only change with a binary upgrade (`-u`).
    pub fn listeners_differ(&self, other: &Runtime) -> bool {
        self.server.listen != other.server.listen
            || self.server.tls != other.server.tls
            || self.admin.listen != other.admin.listen
            || self.server.threads != other.server.threads
    }

    fn target_keys(&self) -> Vec<(String, String)> {
        self.upstreams
            .iter()
            .flat_map(|u| u.targets.iter().map(|t| (u.name.clone(), t.addr.clone())))
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
}

/// Process-wide gateway state: the current runtime and what survives reloads.
pub struct Shared {
    current: ArcSwap<Runtime>,
    pub states: StateRegistry,
    pub config_path: PathBuf,
    versions: AtomicU64,
    reload_lock: Mutex<()>,
}

impl Shared {
    /// Loads the config file for the first time.
    pub fn load(config_path: PathBuf) -> Result<Arc<Shared>, ConfigErrors> {
        let states = StateRegistry::default();
        let rt = config::load_file(&config_path, &states, 1)?;
        Ok(Self::from_runtime(rt, states, config_path))
    }

    pub fn from_runtime(rt: Runtime, states: StateRegistry, config_path: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            versions: AtomicU64::new(rt.version),
            current: ArcSwap::from_pointee(rt),
            states,
            config_path,
            reload_lock: Mutex::new(()),
        })
    }

    /// The current snapshot (one atomic load).
    #[inline]
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Re-reads the file, compiles it off the request path and swaps it in. An invalid file
    /// changes nothing.
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock();
        let old = self.snapshot();
        let version = self.versions.load(Ordering::Relaxed) + 1;
        let new = config::load_file(&self.config_path, &self.states, version)?;
        if new.hash == old.hash {
            return Ok(Reloaded {
                version: old.version,
                hash: old.hash.clone(),
                needs_upgrade: false,
                unchanged: true,
            });
        }
        self.versions.store(version, Ordering::Relaxed);
        let needs_upgrade = new.listeners_differ(&old);
        let keep = new.target_keys();
        let hash = new.hash.clone();
        self.current.store(Arc::new(new));
        self.states.retain(&keep);
        Ok(Reloaded {
            version,
            hash,
            needs_upgrade,
            unchanged: false,
        })
    }
}
