//! HTTPS listeners (`server.tls`): TLS termination with rustls under our own policy
//! (`min_version`, `max_version`, `cipher_suites`), on the accept path before any `ProxyHttp`
//! phase (called from [`crate::edge::EdgeGuard`]).
//!
//! Why not Pingora's TLS listener: Pingora 0.9.1's rustls `TlsSettings::build` hard-codes TLS
//! 1.2 and 1.3 and takes its cipher suites from the process-wide default `CryptoProvider`.
//! Restricting suites through it would mean installing a restricted provider for the whole
//! process, which reqwest (the gateway's own outbound calls: forward-auth, JWKS, OTLP) picks
//! up too, so a listener policy would silently break outbound TLS. (An earlier build
//! enforced `min_version: "1.3"` with a pre-TLS callback that read the ClientHello; that can
//! refuse a version but never choose a suite, since a ClientHello cannot be edited: TLS 1.3
//! hashes it into the handshake transcript.)
//!
//! So the TLS addresses are plain TCP listeners of the proxy service, and [`Terminator`]
//! runs the handshake with Pingora's own `Acceptor::from_server_config` over a
//! `ServerConfig` built here from a copy of the provider with only the configured suites and
//! the configured protocol versions. The result is Pingora's `TlsStream`, what its listener
//! would have produced: ALPN (`h2`, `http/1.1`) and the `SslDigest` that
//! `X-Forwarded-Proto` and the https-only routes look at. A client outside the policy gets a
//! TLS alert (`protocol_version`, `handshake_failure`) and the connection is counted in
//! `downstream_tls_handshake_failures_total`.
//!
//! The certificate of each handshake is chosen by SNI from [`store::CertStore`], which the
//! config's `certificates` (replaced on reload) and ACME fill: the `ServerConfig` built here
//! holds the store as its resolver and never changes until a binary upgrade, while the
//! certificates change under it.

pub mod client_auth;
pub mod store;

use crate::config::diag::Compiler;
use crate::config::raw::RawTls;
use crate::model::TlsSettings;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::tls::{version, CryptoProvider, ServerConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Handshakes that failed or timed out (exported as a metric).
pub static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Registers `downstream_tls_handshake_failures_total` (read at scrape time; once, at
/// startup).
pub fn register_metrics() {
    crate::observe::metrics::registry().on_scrape(|_, out| {
        crate::observe::metrics::scraped_counter(
            "downstream_tls_handshake_failures_total",
            "TLS handshakes on server.tls listeners that failed (outside the version or cipher suite policy, bad client) or timed out.",
            HANDSHAKE_FAILURES.load(Ordering::Relaxed),
            out,
        );
    });
}

/// Handshake time limit when `server.header_timeout` is 0 (Pingora's own).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// OpenSSL's names of the TLS 1.2 suites rustls implements (what NGINX's `ssl_ciphers`
/// takes), accepted as aliases of the IANA names.
const OPENSSL_NAMES: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// The crypto provider Pingora's listeners use (ring, installed as the process default if
/// nothing else was); its suite list is what `cipher_suites` picks from.
pub(crate) fn provider() -> Option<&'static Arc<CryptoProvider>> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
}

/// A provider suite's canonical name (rustls's, the IANA name with `TLS13_` for TLS 1.3) and
/// whether it is a TLS 1.3 suite.
fn suite_names(p: &CryptoProvider) -> Vec<(String, bool)> {
    p.cipher_suites
        .iter()
        .map(|s| (format!("{:?}", s.suite()), s.tls13().is_some()))
        .collect()
}

/// The canonical name of a configured suite name: rustls's own, the IANA TLS 1.3 name
/// (`TLS_AES_128_GCM_SHA256`) or OpenSSL's (`ECDHE-RSA-AES128-GCM-SHA256`), any case.
fn canonical<'a>(name: &str, known: &'a [(String, bool)]) -> Option<&'a (String, bool)> {
    let n = name.trim().to_ascii_uppercase();
    let alias = OPENSSL_NAMES
        .iter()
        .find(|(o, _)| *o == n)
        .map(|(_, iana)| *iana);
    known.iter().find(|(k, _)| {
        *k == n
            || alias == Some(k.as_str())
            || k.strip_prefix("TLS13_")
                .is_some_and(|rest| n.strip_prefix("TLS_") == Some(rest))
    })
}

/// What [`compile_policy`] adds to the compiled [`TlsSettings`].
pub struct Policy {
    pub max_version: String,
    pub cipher_suites: Vec<String>,
}

/// Checks `max_version`, `cipher_suites` (names, duplicates, each usable under the version
/// range, each enabled version left with a suite), that no port is both a plain and a TLS
/// listener (the terminator tells them apart by port). Errors go to `c` with their YAML path.
pub fn compile_policy(c: &mut Compiler, t: &RawTls, plain_listen: &[String]) -> Policy {
    let min13 = t.min_version == "1.3";
    let max_ok = matches!(t.max_version.as_str(), "1.2" | "1.3");
    if !max_ok {
        c.error("server.tls.max_version", "must be \"1.2\" or \"1.3\"");
    } else if min13 && t.max_version == "1.2" {
        c.error(
            "server.tls.max_version",
            "is \"1.2\", below min_version \"1.3\"",
        );
    }
    let max12 = t.max_version == "1.2";
    let plain_ports: Vec<u16> = plain_listen
        .iter()
        .filter_map(|l| l.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    for (i, l) in t.listen.iter().enumerate() {
        if let Ok(a) = l.parse::<SocketAddr>() {
            if plain_ports.contains(&a.port()) {
                c.error(
                    &format!("server.tls.listen[{i}]"),
                    format!(
                        "port {} is also a plain HTTP listener in server.listen: a port is either HTTPS or plain HTTP",
                        a.port()
                    ),
                );
            }
        }
    }
    let mut suites = Vec::new();
    let Some(p) = provider() else {
        c.error("server.tls", "no TLS crypto provider is available");
        return Policy {
            max_version: t.max_version.clone(),
            cipher_suites: suites,
        };
    };
    let known = suite_names(p);
    let (mut has12, mut has13) = (false, false);
    for (i, name) in t.cipher_suites.iter().enumerate() {
        let path = format!("server.tls.cipher_suites[{i}]");
        let Some((canon, is13)) = canonical(name, &known) else {
            let list: Vec<&str> = known.iter().map(|(k, _)| k.as_str()).collect();
            c.error(
                &path,
                format!(
                    "unknown cipher suite {name:?} (known: {}; OpenSSL names such as ECDHE-RSA-AES128-GCM-SHA256 are accepted too)",
                    list.join(", ")
                ),
            );
            continue;
        };
        if suites.contains(canon) {
            c.error(&path, format!("{canon} is listed twice"));
            continue;
        }
        if *is13 && max12 {
            c.error(
                &path,
                format!("{canon} is a TLS 1.3 suite, but max_version is \"1.2\""),
            );
        } else if !*is13 && min13 {
            c.error(
                &path,
                format!("{canon} is a TLS 1.2 suite, but min_version \"1.3\" allows TLS 1.3 only, so it would never be used"),
            );
        }
        has12 |= !*is13;
        has13 |= *is13;
        suites.push(canon.clone());
    }
    if !t.cipher_suites.is_empty() && suites.len() == t.cipher_suites.len() {
        if !min13 && !has12 {
            c.error(
                "server.tls.cipher_suites",
                "lists no TLS 1.2 suite, so TLS 1.2 clients would all fail: add one (e.g. TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) or set min_version: \"1.3\"",
            );
        }
        if max_ok && !max12 && !has13 {
            c.error(
                "server.tls.cipher_suites",
                "lists no TLS 1.3 suite: add one (e.g. TLS13_AES_128_GCM_SHA256) or set max_version: \"1.2\"",
            );
        }
    }
    Policy {
        max_version: t.max_version.clone(),
        cipher_suites: suites,
    }
}

/// Loads and checks every certificate of `server.tls` (`cert`/`key` or `certificates`):
/// files present, key belonging to the certificate, not expired (an error), expiring within
/// 14 days (a warning in the log, with path and line: the load goes on).
pub fn compile_certificates(c: &mut Compiler, t: &RawTls) -> store::Certificates {
    let mut pairs: Vec<(String, &str, &str)> = Vec::new();
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            if !t.certificates.is_empty() {
                c.error(
                    "server.tls.certificates",
                    "set either cert and key (one certificate) or certificates (a list), not both",
                );
            }
            pairs.push(("server.tls".to_string(), cert, key));
        }
        (Some(_), None) => c.error(
            "server.tls.cert",
            "needs key (the certificate's private key)",
        ),
        (None, Some(_)) => c.error(
            "server.tls.key",
            "needs cert (the certificate it belongs to)",
        ),
        (None, None) => {
            if t.certificates.is_empty() && t.acme.is_none() {
                c.error(
                    "server.tls",
                    "needs a certificate: certificates (a list of cert and key), cert and key, or acme",
                );
            }
        }
    }
    for (i, p) in t.certificates.iter().enumerate() {
        pairs.push((format!("server.tls.certificates[{i}]"), &p.cert, &p.key));
    }
    let now = store::now_unix();
    let mut out = Vec::new();
    for (base, cert, key) in pairs {
        let (cert_at, key_at) = (format!("{base}.cert"), format!("{base}.key"));
        // Load errors (unreadable, no PEM, a key of another certificate) go on `cert`.
        let (cert, key) = (c.file(cert), c.file(key));
        let mut found = true;
        if !cert.is_file() {
            c.error(
                &cert_at,
                format!("certificate file {} not found", cert.display()),
            );
            found = false;
        }
        if !key.is_file() {
            c.error(&key_at, format!("key file {} not found", key.display()));
            found = false;
        }
        if !found {
            continue;
        }
        let origin = store::Origin::Config(if base == "server.tls" {
            "server.tls.cert".to_string()
        } else {
            base.clone()
        });
        let e = match store::load_pair(&cert, &key, origin) {
            Ok(e) => e,
            Err(msg) => {
                c.error(&cert_at, msg);
                continue;
            }
        };
        let until =
            crate::util::clock::rfc3339_millis(Duration::from_secs(e.not_after.max(0) as u64));
        let names = e.names.join(", ");
        if e.not_after <= now {
            c.error(
                &cert_at,
                format!("the certificate for {names} expired on {until}"),
            );
            continue;
        }
        if e.not_after - now < store::EXPIRY_WARNING_SECS {
            let line = c
                .line_of(&cert_at)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            tracing::warn!(
                "{cert_at}{line}: the certificate for {names} expires in {} days, on {until}",
                (e.not_after - now) / 86_400
            );
        }
        out.push(Arc::new(e));
    }
    store::Certificates(out)
}

/// The rustls server config of the HTTPS listeners.
pub fn server_config(
    t: &TlsSettings,
    certs: Arc<store::CertStore>,
) -> Result<ServerConfig, String> {
    let base = provider().ok_or("no TLS crypto provider is available")?;
    let mut p = CryptoProvider::clone(base);
    if !t.cipher_suites.is_empty() {
        // In the configured order: with `ignore_client_order` below it is the preference.
        p.cipher_suites = t
            .cipher_suites
            .iter()
            .filter_map(|n| {
                base.cipher_suites
                    .iter()
                    .find(|s| format!("{:?}", s.suite()) == *n)
                    .copied()
            })
            .collect();
    }
    let versions = match (t.min_version.as_str(), t.max_version.as_str()) {
        ("1.3", _) => &[&version::TLS13][..],
        (_, "1.2") => &[&version::TLS12][..],
        _ => &[&version::TLS12, &version::TLS13][..],
    };
    // The certificates are chosen per handshake by the store (SNI), which reloads and ACME
    // update in place: this config itself never changes until a binary upgrade.
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(certs.client_auth.clone())
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ignore_client_order = !t.cipher_suites.is_empty();
    Ok(cfg)
}

/// Runs the TLS handshake for connections accepted on a `server.tls.listen` port.
pub struct Terminator {
    acceptor: Acceptor,
    ports: Vec<u16>,
}

impl Terminator {
    pub fn new(t: &TlsSettings, certs: Arc<store::CertStore>) -> Result<Terminator, String> {
        Ok(Terminator {
            // The verified client certificate rides on the connection's SslDigest.
            acceptor: Acceptor::from_server_config_with_callbacks(
                Arc::new(server_config(t, certs)?),
                Box::new(client_auth::Identify),
            ),
            ports: t.listen.iter().map(|a| a.port()).collect(),
        })
    }

    /// The connection as the HTTP layer should see it: unchanged when it did not arrive on a
    /// TLS port, the TLS stream after a handshake, `None` when the handshake failed or took
    /// longer than `timeout` (`server.header_timeout`).
    pub async fn accept(&self, stream: Stream, timeout: Duration) -> Option<Stream> {
        let port = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()));
        if !port.is_some_and(|p| self.ports.contains(&p)) {
            return Some(stream);
        }
        // Pingora hands a plain TCP endpoint's connection over as its L4 stream.
        if !stream.as_any().is::<L4Stream>() {
            return Some(stream);
        }
        let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        let limit = if timeout.is_zero() {
            DEFAULT_HANDSHAKE_TIMEOUT
        } else {
            timeout
        };
        match tokio::time::timeout(limit, self.acceptor.tls_handshake(*l4)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                HANDSHAKE_FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TLS handshake not done within {limit:?}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_aliases_resolve_to_rustls_names() {
        let known = suite_names(provider().unwrap());
        assert_eq!(known.len(), 9, "{known:?}");
        let c = |n: &str| canonical(n, &known).map(|(k, is13)| (k.as_str(), *is13));
        assert_eq!(
            c("TLS13_AES_128_GCM_SHA256"),
            Some(("TLS13_AES_128_GCM_SHA256", true))
        );
        assert_eq!(
            c("tls_aes_256_gcm_sha384"),
            Some(("TLS13_AES_256_GCM_SHA384", true))
        );
        assert_eq!(
            c("ECDHE-RSA-AES128-GCM-SHA256"),
            Some(("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", false))
        );
        assert_eq!(
            c(" TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 "),
            Some(("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", false))
        );
        for bad in [
            "TLS_RSA_WITH_AES_128_CBC_SHA",
            "AES128-SHA",
            "TLS13_AES_128_CCM_SHA256",
            "",
            "TLS_",
        ] {
            assert_eq!(c(bad), None, "{bad}");
        }
    }
}
