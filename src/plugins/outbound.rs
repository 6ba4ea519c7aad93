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
use std::time::Duration;

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
