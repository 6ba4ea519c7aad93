//! The gateway's own outbound HTTP calls, made by plugins off the proxy path: forward-auth's
//! auth service, oauth2-introspection's endpoint, JWKS key set fetches and OTLP span export.
//! One client policy for all of them and one way to name their URL in logs.
//!
//! **Proxies.** These calls always go straight to the configured host: the `HTTP_PROXY`,
//! `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` variables of the gateway's environment are
//! ignored. An edge gateway calls internal services (an authorizer, an identity provider, a
//! collector) with credentials; an ambient proxy setting meant for something else must not
//! reroute them. A deployment that needs a proxy for one of them points `url`/`endpoint` at it.

use crate::config::diag::ErrorSink;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A client builder with the policy above (callers add timeouts, redirects, pools, their
/// user agent).
pub(crate) fn client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy()
}

/// Idle pooled connections to a configured service (an auth service, an introspection
/// endpoint) are kept this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The client a plugin entry keeps for the one service it calls on the request path: the
/// policy above, no redirects (a redirect is the service's answer, not a place to go),
/// `ca`'s certificates trusted besides the system roots, user agent
/// `gatehouse/<version> <plugin>`.
pub(crate) fn service_client(
    plugin: &str,
    timeout: Duration,
    connect_timeout: Duration,
    ca: Ca,
) -> Result<reqwest::Client, String> {
    let mut b = client()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(format!("gatehouse/{} {plugin}", env!("CARGO_PKG_VERSION")));
    for cert in ca.certs {
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A service's URL (`v`, at YAML path `p`), or why not: http(s), a host, no credentials
/// (`instead` says where they go) and no fragment. The value itself never goes into an error
/// (its userinfo or query may hold a secret); `whose` names the service in "is required".
pub(crate) fn service_url(
    s: &mut ErrorSink,
    p: &str,
    v: Option<&str>,
    whose: &str,
    instead: &str,
) -> Option<reqwest::Url> {
    let Some(v) = v else {
        s.error(p, format!("is required ({whose} http:// or https:// URL)"));
        return None;
    };
    let u = match reqwest::Url::parse(v) {
        Ok(u) => u,
        Err(e) => {
            s.error(p, format!("is not a valid URL: {e}"));
            return None;
        }
    };
    let why = if !matches!(u.scheme(), "http" | "https") {
        "must be an http:// or https:// URL".to_string()
    } else if u.host_str().is_none_or(str::is_empty) {
        "needs a host".to_string()
    } else if !u.username().is_empty() || u.password().is_some() {
        format!("must not carry credentials (user:password@); {instead}")
    } else if u.fragment().is_some() {
        "must not have a #fragment".to_string()
    } else {
        return Some(u);
    };
    s.error(p, why);
    None
}

/// A service's `ca_file`: the certificates trusted besides the system roots, and a digest of
/// the file (empty without one).
#[derive(Default)]
pub(crate) struct Ca {
    certs: Vec<reqwest::Certificate>,
    digest: String,
}

impl Ca {
    /// Reads `file` (relative to the config file's folder); a missing, unreadable or
    /// certificate-less file is an error at `at`.
    pub(crate) fn load(s: &mut ErrorSink, at: &str, file: Option<&str>) -> Ca {
        let Some(f) = file else {
            return Ca::default();
        };
        let p = s.c.file(f);
        let read = std::fs::read(&p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
            .and_then(|pem| {
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|_| format!("{} holds no valid PEM certificate", p.display()))?;
                if certs.is_empty() {
                    return Err(format!("{} holds no PEM certificate", p.display()));
                }
                let digest = hex::encode(Sha256::digest(&pem));
                Ok(Ca { certs, digest })
            });
        read.unwrap_or_else(|e| {
            s.error(at, e);
            Ca::default()
        })
    }
}

/// The registry identity of a `plugin` entry that keeps a service client: where the entry is,
/// exactly what it says (a rotated secret gets a new client) and the CA file's content (so
/// does a renewed CA). Only a digest is kept.
pub(crate) fn entry_identity(
    plugin: &str,
    route: Option<&str>,
    raw: Option<&serde_yaml::Value>,
    ca: &Ca,
) -> String {
    let text = raw
        .map(|v| serde_yaml::to_string(v).unwrap_or_default())
        .unwrap_or_default();
    crate::util::digest::identity(&[plugin, route.unwrap_or(""), &text, &ca.digest])
}

/// Lets a failing service's warning through at most once a second per plugin entry (a
/// down service must not flood the log at request rate).
pub(crate) struct WarnGate {
    /// Last warning, in ms since `born` (shifted by a second so the first one passes).
    last_ms: AtomicU64,
    born: Instant,
}

impl WarnGate {
    const EVERY_MS: u64 = 1000;

    pub(crate) fn new() -> WarnGate {
        WarnGate {
            last_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// True at most once per second.
    pub(crate) fn may_warn(&self) -> bool {
        let now = self.born.elapsed().as_millis() as u64 + Self::EVERY_MS;
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= Self::EVERY_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// `scheme://host[:port]/path` of `url`: what logs, errors and `Debug` may show (never the
/// userinfo or the query, which may hold a credential).
pub(crate) fn redacted(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_scheme_host_port_and_path_only() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            redacted(&u("https://user:pw@auth.local:8443/check?key=s3cr3t#f")),
            "https://auth.local:8443/check"
        );
        assert_eq!(
            redacted(&u("http://collector/v1/traces")),
            "http://collector/v1/traces"
        );
    }
}
