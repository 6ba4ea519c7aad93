//! `server.tls.acme`: certificates issued and renewed automatically by an ACME server (Let's
//! Encrypt, or any RFC 8555 CA) with the HTTP-01 challenge.
//!
//! - Issuance and renewal run in a Pingora background service ([`AcmeService`]), never on a
//!   request path and never holding up startup: a stored certificate that is still valid is
//!   served from the first handshake, and one that is missing or due is ordered while the
//!   listeners already serve (the configured certificates, if any).
//! - The HTTP-01 answers are given on the plain listeners in the `request_filter` phase,
//!   before routing and every plugin ([`answer_challenge`]): only for tokens of an order in
//!   progress; other paths under `/.well-known/acme-challenge/` are routed as usual.
//! - The issued certificate goes into the SNI store ([`crate::tls::store`]) at once, without
//!   a restart; it and the account key are kept in `storage` (files 0600, directory 0700), so
//!   a restart, a reload or a binary upgrade reuses them.
//! - A failed order is retried with a doubling back-off (1 minute to 6 hours), each failure
//!   logged and counted in `acme_orders_total{result="failed"}`.
//!
//! The account key and certificate keys are never logged; errors carry the ACME server's
//! problem document, which holds none.

use crate::config::diag::Compiler;
use crate::config::raw::RawAcme;
use crate::tls::store::{now_unix, CertEntry};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod challenge;
pub mod service;
mod storage;

/// Orders that ended with a certificate / with an error (`acme_orders_total{result}`).
static ISSUED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
/// ACME is configured (the metric is exported from then on).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// First wait after a failed order; doubled after each further failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// A valid certificate is looked at again at least this often (its file may be replaced).
const RECHECK: Duration = Duration::from_secs(12 * 3600);
/// One order, from the account to the certificate, must finish within this.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// `server.tls.acme`, compiled: plain settings, defined in the model.
pub use crate::model::AcmeSettings;

/// A DNS name an ACME CA can validate with HTTP-01: letters, digits and hyphens in labels of
/// at most 63 bytes, no wildcard, no IP address.
fn check_domain(d: &str) -> Result<(), String> {
    if d.starts_with("*.") {
        return Err(format!(
            "{d:?} is a wildcard: wildcard certificates need the DNS-01 challenge, and this client answers HTTP-01 only"
        ));
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{d:?} is an IP address: a DNS name is needed"));
    }
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{d:?} is not a valid DNS name"))
    }
}

/// Checks `server.tls.acme`; errors go to `c` with their YAML path.
pub fn compile(c: &mut Compiler, a: &RawAcme, plain_listen: &[String]) -> Option<AcmeSettings> {
    let at = "server.tls.acme";
    let before = c.error_count();
    match a.directory.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
        _ => c.error(
            &format!("{at}.directory"),
            format!(
                "{:?} is not an https URL (e.g. https://acme-v02.api.letsencrypt.org/directory)",
                a.directory
            ),
        ),
    }
    if let Some(e) = &a.email {
        let valid = e.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && host.contains('.') && !e.contains(|c: char| c.is_whitespace())
        });
        if !valid {
            c.error(
                &format!("{at}.email"),
                format!("{e:?} is not an e-mail address"),
            );
        }
    }
    if a.domains.is_empty() {
        c.error(&format!("{at}.domains"), "needs at least one domain");
    }
    let mut domains: Vec<String> = Vec::new();
    for (i, d) in a.domains.iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        let path = format!("{at}.domains[{i}]");
        if let Err(e) = check_domain(&d) {
            c.error(&path, e);
        } else if domains.contains(&d) {
            c.error(&path, format!("{d} is listed twice"));
        } else {
            domains.push(d);
        }
    }
    let storage = c.file(&a.storage);
    if a.storage.trim().is_empty() {
        c.error(
            &format!("{at}.storage"),
            "needs a directory for the account key and the certificates",
        );
    } else if storage.exists() && !storage.is_dir() {
        c.error(
            &format!("{at}.storage"),
            format!("{} exists and is not a directory", storage.display()),
        );
    }
    if a.renew_before.0.is_zero() {
        c.error(
            &format!("{at}.renew_before"),
            "must be more than 0 (e.g. 30d)",
        );
    }
    let ca = a.ca.as_ref().map(|p| c.file(p));
    if let Some(ca) = &ca {
        match std::fs::read(ca) {
            Err(e) => c.error(
                &format!("{at}.ca"),
                format!("cannot read {}: {e}", ca.display()),
            ),
            Ok(pem) if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => c
                .error(
                    &format!("{at}.ca"),
                    format!("{} holds no PEM certificate", ca.display()),
                ),
            Ok(_) => {}
        }
    }
    if plain_listen.is_empty() {
        c.error(
            at,
            "HTTP-01 challenges are answered on the plain HTTP listeners: server.listen needs one (the ACME server connects to port 80 of each domain)",
        );
    }
    (c.error_count() == before).then(|| AcmeSettings {
        directory: a.directory.clone(),
        email: a.email.clone(),
        domains,
        storage,
        renew_before: a.renew_before.0,
        ca,
    })
}

/// ACME state that outlives reloads (kept in [`Shared::acme`]).
#[derive(Default)]
pub struct AcmeState {
    /// HTTP-01 token -> key authorization, for the orders in progress.
    challenges: ArcSwap<HashMap<String, String>>,
    /// Serializes writers of `challenges`.
    writing: Mutex<()>,
    status: Mutex<Status>,
}

#[derive(Default, Clone)]
struct Status {
    last_error: Option<String>,
    failures: u32,
    next_attempt: Option<i64>,
    issued_at: Option<i64>,
}

impl AcmeState {
    fn publish_challenge(&self, token: &str, key_authorization: &str) {
        let _w = self.writing.lock();
        let mut m = HashMap::clone(&self.challenges.load());
        m.insert(token.to_string(), key_authorization.to_string());
        self.challenges.store(Arc::new(m));
    }

    fn withdraw_challenges(&self, tokens: &[String]) {
        let _w = self.writing.lock();
        let mut m = HashMap::clone(&self.challenges.load());
        for t in tokens {
            m.remove(t);
        }
        self.challenges.store(Arc::new(m));
    }

    /// The key authorization of a token of an order in progress.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges.load().get(token).cloned()
    }

    /// `/status`'s `acme` section.
    pub fn status(&self, settings: Option<&AcmeSettings>) -> serde_json::Value {
        let Some(s) = settings else {
            return serde_json::Value::Null;
        };
        let st = self.status.lock().clone();
        let time =
            |t: i64| crate::util::clock::rfc3339_millis(Duration::from_secs(t.max(0) as u64));
        serde_json::json!({
            "directory": s.directory,
            "domains": s.domains,
            "last_error": st.last_error,
            "failures": st.failures,
            "next_attempt": st.next_attempt.map(time),
            "issued_at": st.issued_at.map(time),
        })
    }
}

/// Registers [`metric_families`] (read at scrape time; once, at startup).
pub fn register_metrics() {
    crate::observe::metrics::registry().on_scrape(|_, out| out.extend(metric_families()));
}

/// `acme_orders_total{result}` once ACME is configured.
pub fn metric_families() -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    if !ACTIVE.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let Ok(v) = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "acme_orders_total",
            "ACME certificate orders by result: issued, failed (each failure is retried with a doubling back-off).",
        ),
        &["result"],
    ) else {
        return Vec::new();
    };
    v.with_label_values(&["issued"])
        .inc_by(ISSUED.load(Ordering::Relaxed));
    v.with_label_values(&["failed"])
        .inc_by(FAILED.load(Ordering::Relaxed));
    v.collect()
}

/// The directory under `storage` for one ACME server (its host and port): accounts and
/// certificates of staging and production never mix.
fn server_dir(s: &AcmeSettings) -> PathBuf {
    let host = s
        .directory
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| {
            u.authority().map(|a| {
                a.as_str().replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                    "_",
                )
            })
        })
        .unwrap_or_else(|| "acme".to_string());
    Path::new(&s.storage).join(host)
}
