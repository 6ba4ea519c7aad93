//! How the gateway reaches an upstream's targets: TLS (server name, certificate checks, CA,
//! client certificate for mTLS) and the HTTP version (`protocol`). Compiled once per config
//! into a [`Transport`]; Pingora's `upstream_peer` phase asks [`Transport::peer`] for the
//! `HttpPeer` of each attempt, and the active health checks ([`super::health`]) use the same
//! TLS settings through [`UpstreamTls::health_config`].
//!
//! Pingora's rustls connector does the handshakes. Two of its rules shape this module:
//! - an empty server name turns *all* certificate checks off (as NGINX does without
//!   `proxy_ssl_name`). So a target written as an IP literal gets its IP as the name: rustls
//!   then sends no SNI but still checks the chain and the certificate's IP address entries.
//! - its connection-reuse hash does not cover the CA list or the ALPN. The settings are
//!   folded into the peer's `group_key` instead, so a pooled connection is only reused by a
//!   peer with the same TLS settings and protocol (a reload that changes the CA never reuses
//!   a connection verified under the old one).

use super::Target;
use crate::config::diag::Compiler;
use crate::config::raw::{RawUpstream, RawUpstreamTls, UpstreamProtocol};
use pingora::protocols::tls::CaType;
use pingora::tls::{
    CertificateDer, ClientConfig, CryptoProvider, PrivateKeyDer, RootCertStore, RusTlsError,
    ServerCertVerified, ServerCertVerifier, ServerName, UnixTime,
};
use pingora::upstreams::peer::{HttpPeer, ALPN};
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::crypto::WebPkiSupportedAlgorithms;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Concurrent streams on one pooled HTTP/2 connection before another is opened.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Connection settings shared by every target of one upstream.
#[derive(Debug)]
pub struct Transport {
    pub protocol: UpstreamProtocol,
    pub tls: Option<UpstreamTls>,
    /// Hash of the protocol and TLS settings (Pingora's `group_key`, part of its reuse key).
    group_key: u64,
}

/// `upstreams[].tls`, loaded.
pub struct UpstreamTls {
    /// `tls.sni`; `None`: each target's own host name (or IP).
    pub sni: Option<String>,
    pub verify: bool,
    /// `tls.ca` (`None`: the system's roots).
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    /// The same policy as a rustls client config, for the health checks' handshakes.
    health: Arc<ClientConfig>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key never reaches a log line.
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Client config for health checks: HTTP/1.1 only (a path check speaks HTTP/1.1).
    pub fn health_config(&self) -> Arc<ClientConfig> {
        self.health.clone()
    }
}

impl Transport {
    /// Plain HTTP/1.1 (an upstream that failed to compile, or tests).
    pub fn plain() -> Self {
        Transport {
            protocol: UpstreamProtocol::Http1,
            tls: None,
            group_key: 0,
        }
    }

    /// Server name for a target: `tls.sni`, else the host part of its address.
    pub fn server_name<'a>(&'a self, t: &'a Target) -> &'a str {
        match self.tls.as_ref().and_then(|x| x.sni.as_deref()) {
            Some(s) => s,
            None => host_of(&t.host),
        }
    }

    /// The peer for one attempt at `t` (timeouts are set by the caller).
    pub fn peer(&self, t: &Target) -> HttpPeer {
        let Some(tls) = &self.tls else {
            let mut peer = HttpPeer::new(t.sock, false, String::new());
            if self.protocol == UpstreamProtocol::H2c {
                // Plain TCP with an HTTP/2 minimum: Pingora sends the h2 preface at once.
                peer.options.alpn = ALPN::H2;
                peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
            }
            peer.group_key = self.group_key;
            return peer;
        };
        let mut peer = HttpPeer::new(t.sock, true, self.server_name(t).to_string());
        let o = &mut peer.options;
        o.verify_cert = tls.verify;
        o.verify_hostname = tls.verify;
        o.ca = tls.ca.clone();
        o.alpn = match self.protocol {
            UpstreamProtocol::H2 => {
                o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
                ALPN::H2
            }
            _ => ALPN::H1,
        };
        peer.client_cert_key = tls.client.clone();
        peer.group_key = self.group_key;
        peer
    }
}

/// `health_check.host`: a `Host` value (`name` or `name:port`, no scheme, path or user) whose
/// name is a valid TLS server name on a TLS upstream, and something for it to act on.
fn check_health_host(
    c: &mut Compiler,
    at: &str,
    host: &str,
    hc: &crate::config::raw::RawHealthCheck,
    u: &RawUpstream,
) {
    let authority = host.parse::<http::uri::Authority>().ok();
    let valid = !host.is_empty()
        && !host.contains('@')
        && authority.is_some()
        && http::HeaderValue::from_str(host).is_ok();
    if !valid {
        c.error(
            at,
            format!("{host:?} is not a Host value (a name or name:port, no scheme or path)"),
        );
        return;
    }
    if u.tls.is_some() && ServerName::try_from(host_of(host)).is_err() {
        c.error(
            at,
            format!("{:?} is not a valid TLS server name", host_of(host)),
        );
    }
    if u.tls.is_none() && hc.path.is_none() {
        c.error(
            at,
            "has nothing to act on: it is the Host of a path check (set `path`) and the TLS server name of a TLS upstream's checks",
        );
    }
}

/// `host` of `host:port` / `[v6]:port` (the whole text when there is no port).
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Checks and loads `tls` and `protocol` of upstream `p`.
pub fn compile(c: &mut Compiler, p: &str, u: &RawUpstream) -> Transport {
    let mut key = Sha256::new();
    key.update([u.protocol as u8]);
    match (u.protocol, &u.tls) {
        (UpstreamProtocol::H2, None) => c.error(
            &format!("{p}.protocol"),
            "h2 is HTTP/2 over TLS and needs `tls`; for HTTP/2 over plain TCP use h2c",
        ),
        (UpstreamProtocol::H2c, Some(_)) => c.error(
            &format!("{p}.protocol"),
            "h2c is HTTP/2 over plain TCP; with `tls` use h2",
        ),
        _ => {}
    }
    if let Some(hc) = &u.health_check {
        if hc.path.is_some() && u.protocol != UpstreamProtocol::Http1 {
            c.error(
                &format!("{p}.health_check.path"),
                "a path check speaks HTTP/1.1, which an HTTP/2 upstream may refuse: omit `path` (the check is then a connect, with the TLS handshake when `tls` is set)",
            );
        }
        if let Some(host) = &hc.host {
            check_health_host(c, &format!("{p}.health_check.host"), host, hc, u);
        }
    }
    let tls = u
        .tls
        .as_ref()
        .and_then(|t| compile_tls(c, &format!("{p}.tls"), t, &mut key));
    let digest = key.finalize();
    let mut group = [0u8; 8];
    group.copy_from_slice(&digest[..8]);
    Transport {
        protocol: u.protocol,
        tls,
        group_key: u64::from_le_bytes(group),
    }
}

fn compile_tls(
    c: &mut Compiler,
    p: &str,
    t: &RawUpstreamTls,
    key: &mut Sha256,
) -> Option<UpstreamTls> {
    let mut ok = true;
    if let Some(sni) = &t.sni {
        if ServerName::try_from(sni.as_str()).is_err() {
            c.error(
                &format!("{p}.sni"),
                format!("{sni:?} is not a valid host name"),
            );
            ok = false;
        }
        key.update(b"sni:");
        key.update(sni.as_bytes());
    }
    key.update([t.verify as u8]);
    let ca = match &t.ca {
        Some(file) => {
            let path = c.file(file);
            match load_ca(&path) {
                Ok(certs) => {
                    for der in &certs {
                        key.update(der);
                    }
                    Some(certs)
                }
                Err(e) => {
                    c.error(&format!("{p}.ca"), format!("{}: {e}", path.display()));
                    ok = false;
                    None
                }
            }
        }
        None => None,
    };
    let client = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(k)) => {
            let (cp, kp) = (c.file(cert), c.file(k));
            match load_client(&cp, &kp) {
                Ok(ck) => {
                    key.update(b"client:");
                    key.update(ck.0.concat());
                    Some(ck)
                }
                Err(e) => {
                    c.error(&format!("{p}.client_cert"), e);
                    ok = false;
                    None
                }
            }
        }
        (None, None) => None,
        (Some(_), None) => {
            c.error(
                &format!("{p}.client_cert"),
                "needs client_key too (both or neither)",
            );
            ok = false;
            None
        }
        (None, Some(_)) => {
            c.error(
                &format!("{p}.client_key"),
                "needs client_cert too (both or neither)",
            );
            ok = false;
            None
        }
    };
    if !ok {
        return None;
    }
    let health = match health_config(ca.as_deref(), client.as_ref(), t.verify) {
        Ok(h) => h,
        Err(e) => {
            c.error(p, e);
            return None;
        }
    };
    Some(UpstreamTls {
        sni: t.sni.clone(),
        verify: t.verify,
        ca: ca.map(|certs| {
            let wrapped: Vec<WrappedX509> = certs
                .into_iter()
                .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
                .collect();
            Arc::<[WrappedX509]>::from(wrapped)
        }),
        client: client.map(|(certs, key)| Arc::new(CertKey::new(certs, key))),
        health: Arc::new(health),
    })
}

/// The DER certificates of a PEM file, each checked to parse (Pingora's wrapper would panic
/// on one that does not).
fn pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| format!("not a PEM file: {e}"))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        out.push(pem.contents);
    }
    Ok(out)
}

fn load_ca(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let certs = pem_certs(path)?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".into());
    }
    let mut store = RootCertStore::empty();
    for der in &certs {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("not usable as a CA certificate: {e}"))?;
    }
    Ok(certs)
}

type ClientCert = (Vec<Vec<u8>>, Vec<u8>);

fn load_client(cert: &Path, key: &Path) -> Result<ClientCert, String> {
    let loaded =
        pingora::tls::load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy())
            .map_err(|e| format!("cannot read the client certificate or key: {e}"))?;
    let (certs, k) = loaded.ok_or_else(|| {
        format!(
            "no PEM certificate in {} or no PEM private key in {}",
            cert.display(),
            key.display()
        )
    })?;
    let certs: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
    for der in &certs {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("{}: a certificate does not parse: {e}", cert.display()))?;
    }
    let key_der = k.secret_der().to_vec();
    // What Pingora's connector does with the key at every handshake: checked here once.
    PrivateKeyDer::try_from(key_der.clone())
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    // Key and certificate must belong together.
    pingora::tls::install_default_crypto_provider();
    ClientConfig::builder()
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(
            certs
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            k.clone_key(),
        )
        .map_err(|e| format!("the client certificate and key cannot be used together: {e}"))?;
    Ok((certs, key_der))
}

fn roots(ca: Option<&[Vec<u8>]>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(certs) => {
            for der in certs {
                store
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| e.to_string())?;
            }
        }
        None => {
            pingora::tls::load_platform_certs_incl_env_into_store(&mut store)
                .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?;
        }
    }
    Ok(store)
}

/// The rustls config of the health checks, with the data path's verification rules.
fn health_config(
    ca: Option<&[Vec<u8>]>,
    client: Option<&ClientCert>,
    verify: bool,
) -> Result<ClientConfig, String> {
    pingora::tls::install_default_crypto_provider();
    let store = Arc::new(roots(ca)?);
    let builder = ClientConfig::builder().with_root_certificates(store);
    let mut cfg = match client {
        Some((certs, key)) => {
            let key = PrivateKeyDer::try_from(key.clone()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(
                    certs
                        .iter()
                        .map(|c| CertificateDer::from(c.clone()))
                        .collect(),
                    key,
                )
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    if !verify {
        cfg.dangerous()
            .set_certificate_verifier(AnyServerCertificate::new()?);
    }
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accepts any server certificate but still checks the handshake signatures, with the
/// process's crypto provider (what Pingora's connector does for the data path): the health
/// checks of `verify: false` upstreams, and test clients that look at whichever certificate
/// a server chose.
#[derive(Debug)]
pub struct AnyServerCertificate(WebPkiSupportedAlgorithms);

impl AnyServerCertificate {
    pub fn new() -> Result<Arc<AnyServerCertificate>, String> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default().ok_or("no crypto provider")?;
        Ok(Arc::new(AnyServerCertificate(
            provider.signature_verification_algorithms,
        )))
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }

    crate::util::handshake::handshake_signatures!(|v: &Self| Some(v.0));
}

/// A short reason for a failed upstream handshake, for the log line (the full error follows
/// it).
pub fn handshake_reason(e: &pingora::Error) -> &'static str {
    let text = e.to_string().to_ascii_lowercase();
    let has = |s: &str| text.contains(s);
    if has("unknownissuer") || has("unknown issuer") {
        "certificate signed by an unknown issuer (not under tls.ca or the system's roots)"
    } else if has("not valid for name") || has("notvalidforname") {
        "certificate does not match the server name (tls.sni or the target's host)"
    } else if has("expired") {
        "certificate expired"
    } else if has("notvalidyet") || has("not valid yet") {
        "certificate not valid yet"
    } else if has("revoked") {
        "certificate revoked"
    } else if has("certificaterequired") || has("certificate required") {
        "the target requires a client certificate (tls.client_cert)"
    } else if has("badcertificate") || has("unknownca") || has("bad certificate") {
        "the target refused the client certificate"
    } else {
        "TLS handshake failed"
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("billing.internal:8443"), "billing.internal");
        assert_eq!(host_of("127.0.0.1:443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }
}
