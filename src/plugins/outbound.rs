//! The gateway's own outbound HTTP calls, made by plugins off the proxy path: forward-auth's
//! auth service, JWKS key set fetches and OTLP span export. One client policy for all of them
//! and one way to name their URL in logs.
//!
//! **Proxies.** These calls always go straight to the configured host: the `HTTP_PROXY`,
//! `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` variables of the gateway's environment are
//! ignored. An edge gateway calls internal services (an authorizer, an identity provider, a
//! collector) with credentials; an ambient proxy setting meant for something else must not
//! reroute them. A deployment that needs a proxy for one of them points `url`/`endpoint` at it.

/// A client builder with the policy above (callers add timeouts, redirects, pools, their
/// user agent).
pub(crate) fn client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy()
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
