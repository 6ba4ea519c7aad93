//! The gateway's own outbound HTTP calls, made by plugins off the proxy path: forward-auth's
//! auth service, oauth2-introspection's endpoint, JWKS key set fetches and OTLP span export.
//! One client policy for all of them and one way to name their URL in logs.
//!
//! **Proxies.** These calls always go straight to the configured host: the `HTTP_PROXY`,
//! `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` variables of the gateway's environment are
//! ignored. An edge gateway calls internal services (an authorizer, an identity provider, a
//! collector) with credentials; an ambient proxy setting meant for something else must not
//! reroute them. A deployment that needs a proxy for one of them points `url`/`endpoint` at it.

use super::BuildEnv;
use crate::config::diag::ErrorSink;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use prometheus::{HistogramVec, IntCounterVec};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// The state a `plugin` entry keeps across reloads (by [`entry_identity`] in the app's
/// registry: weak, so it dies with the last runtime using it), made once by `make` with the
/// entry's [`service_client`]; a client that cannot be built is an error at `at`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn entry_state<S: Send + Sync + 'static>(
    s: &mut ErrorSink,
    at: &str,
    plugin: &str,
    env: &BuildEnv,
    raw: Option<&serde_yaml::Value>,
    (timeout, connect_timeout): (Duration, Duration),
    ca: Ca,
    make: impl FnOnce(reqwest::Client) -> Result<S, String>,
) -> Option<Arc<S>> {
    let id = entry_identity(plugin, env.route, raw, &ca);
    let state = env.registry.try_get_or_insert_with(&id, || {
        make(service_client(plugin, timeout, connect_timeout, ca)?)
    });
    state.map_err(|e| s.error(at, e)).ok()
}

/// Why a call to a plugin's service failed (never cached; logged without address or secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallError {
    Timeout,
    Connect,
    /// The service answered with a status it must not (forward-auth: neither 2xx nor
    /// 401/403; oauth2-introspection: not 200).
    Status(u16),
    /// forward-auth: more auth-response header bytes to copy than a decision keeps.
    HeadersTooLarge,
    /// oauth2-introspection: the answer was not the expected JSON (or too long).
    Malformed,
    /// oauth2-introspection: too many other tokens are being introspected.
    Overloaded,
    /// oauth2-introspection: the call's task ended without a result (runtime shutdown).
    Lost,
    /// The request could not be sent or the answer could not be read.
    Other,
}

impl From<reqwest::Error> for CallError {
    fn from(e: reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout
        } else if e.is_connect() {
            CallError::Connect
        } else {
            CallError::Other
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("timed out"),
            CallError::Connect => f.write_str("connection failed"),
            CallError::Status(s) => write!(f, "answered status {s}"),
            CallError::HeadersTooLarge => f.write_str("answered with too many header bytes"),
            CallError::Malformed => f.write_str("answered something other than the expected JSON"),
            CallError::Overloaded => f.write_str("has too many calls in flight"),
            CallError::Lost => f.write_str("call was abandoned"),
            CallError::Other => f.write_str("request failed"),
        }
    }
}

/// `upstream_request_filter` of a plugin whose service's decision carries identity headers:
/// the client's copies of `names` removed (Pingora removed what the client's `Connection`
/// names after `request_filter`, so they are set again here), the decision's `headers` set.
pub(crate) fn set_identity_headers(
    req: &mut RequestHeader,
    names: &[HeaderName],
    headers: Option<&[(HeaderName, HeaderValue)]>,
) -> pingora::Result<()> {
    for name in names {
        req.remove_header(name);
    }
    for (n, v) in headers.unwrap_or_default() {
        req.append_header(n.clone(), v.clone())?;
    }
    Ok(())
}

/// The call-duration family of a plugin's service calls, by route.
pub(crate) fn call_duration(name: &str, help: &str) -> HistogramVec {
    let r = crate::observe::metrics::registry();
    r.histogram_vec(
        name,
        help,
        &["route"],
        crate::observe::metrics::UPSTREAM_BUCKETS,
    )
}

/// Creates (at 0) or removes `route`'s series of a plugin's families: each counter family
/// with each of its label values, and the call duration.
pub(crate) fn route_series(
    route: &str,
    create: bool,
    counters: &[(&IntCounterVec, &[&str])],
    duration: &HistogramVec,
) {
    for (family, values) in counters {
        for x in *values {
            if create {
                family.with_label_values(&[route, x]);
            } else {
                let _ = family.remove_label_values(&[route, x]);
            }
        }
    }
    if create {
        duration.with_label_values(&[route]);
    } else {
        let _ = duration.remove_label_values(&[route]);
    }
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
