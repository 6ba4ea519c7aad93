//! The app: the process-wide shared state ([`Shared`]: the live snapshot and the registries
//! that outlive it), the first load and every reload (SIGHUP, `POST /reload`). A reload
//! reads and compiles the file off the request path, swaps the snapshot in with one pointer
//! store, forgets the state of targets and routes that are gone, and re-installs what
//! follows the snapshot (metric handles, cache stores); systemd hears about it.
//!
//! Above the gateway hooks: the gateway only holds [`Live`] and never reloads.

use crate::config::ConfigErrors;
use crate::ctx::{Live, Runtime};
use crate::upstream::{LiveConfig, StateRegistry, Upstream};
use crate::util::registry::Registry;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        crate::flood::register_metrics();
        crate::tls::register_metrics();
        crate::probe::register_metrics();
        crate::resilience::register_metrics();
        crate::upstream::metrics::register_metrics(|rt| {
            rt.downcast_ref::<Runtime>()
                .map(|rt| rt.upstreams.as_slice())
        });
        crate::acme::register_metrics();
        crate::plugins::register_metrics();
        crate::observe::metrics::registry().on_route_plugins(crate::plugins::route_series);
    });
}

/// Process-wide gateway state: the current runtime and what survives reloads.
pub struct Shared {
    live: Arc<Live>,
    pub states: StateRegistry,
    /// State that survives reloads by identity (limiter counters, forward-auth clients, JWKS
    /// key sets, OTLP exporters, cache stores), handed to every config compile.
    pub registry: Registry,
    pub config_path: PathBuf,
    /// The certificates the HTTPS listeners serve (configured and ACME-issued), chosen per
    /// handshake by SNI; a reload swaps the configured ones.
    pub certs: Arc<crate::tls::store::CertStore>,
    /// ACME's HTTP-01 challenge answers and the state of its issuance.
    pub acme: Arc<crate::acme::AcmeState>,
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
        let rt = crate::config::load_file(&config_path, &states, &registry, 1)?;
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
        crate::logging::install_metrics(&rt);
        crate::plugins::install(&rt, &registry);
        let certs = Arc::new(crate::tls::store::CertStore::default());
        if let Some(t) = &rt.tls {
            certs.set_configured(&t.certificates);
            certs.client_auth.set(t.client_auth.as_ref());
        }
        Arc::new(Shared {
            certs,
            acme: Arc::default(),
            versions: AtomicU64::new(rt.version),
            live: Arc::new(Live::new(rt)),
            states,
            registry,
            config_path,
            reload_lock: Mutex::new(fingerprint),
        })
    }

    /// The current snapshot (one atomic load).
    #[inline]
    pub fn snapshot(&self) -> Arc<Runtime> {
        self.live.snapshot()
    }

    /// The handle to the current snapshot, for the gateway (which never reloads).
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
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
        let new = crate::config::load_str(&text, base, &self.states, &self.registry, version)?;
        let certs_of = |rt: &Runtime| {
            rt.tls
                .as_ref()
                .map(|t| (t.certificates.clone(), t.client_auth.clone()))
        };
        // Certificate files can change under an unchanged config text (a rotation).
        let certs_changed = certs_of(&new) != certs_of(&old);
        if new.hash == old.hash && !certs_changed {
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
        self.live.store(new.clone());
        // New handshakes get the new certificates; open connections keep theirs.
        if certs_changed {
            let (certs, client_auth) = certs_of(&new).unwrap_or_default();
            self.certs.set_configured(&certs);
            self.certs.client_auth.set(client_auth.as_ref());
        }
        self.states.retain(&keep);
        self.states.resilience.retain(
            new.upstreams.iter().map(|u| u.name.as_str()),
            new.routes.iter().map(|r| r.name.as_str()),
        );
        self.states.discovery.retain(&new.upstreams);
        crate::logging::install_metrics(&new);
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

/// The background services of `upstream/` (health checks, DNS discovery) follow the live
/// snapshot through this.
impl LiveConfig for Shared {
    fn with_upstreams(&self, f: &mut dyn FnMut(&[Arc<Upstream>])) {
        self.live.with_upstreams(f)
    }

    fn states(&self) -> &StateRegistry {
        &self.states
    }
}
