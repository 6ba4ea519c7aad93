//! `server.tls.client_auth`: client certificates (mTLS) verified in the TLS handshake, on the
//! accept path before any `ProxyHttp` phase.
//!
//! [`ClientVerifier`] is the listeners' rustls client-certificate verifier. It delegates to a
//! webpki verifier for the configured CA, swapped by a reload like the server certificates
//! (one `ArcSwap` load per handshake): without `client_auth` it asks for no certificate,
//! with `mode: optional` it asks and accepts a handshake without one, with `mode: required`
//! a handshake without a valid certificate fails (`certificate_required` alert). A
//! certificate that does not chain to `ca` fails the handshake in both modes.
//!
//! The verified leaf is parsed once per handshake into a [`ClientCert`] (subject, SANs,
//! serial), which Pingora keeps in the connection's `SslDigest::extension`; every request on
//! the connection reads it from there into `RequestCtx::client_cert` ([`client_cert`]).

use crate::config::diag::Compiler;
use crate::config::raw::RawClientAuth;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora::protocols::tls::TlsRef;
use pingora::tls::{
    CertificateDer, ClientCertVerified, ClientCertVerifier, RootCertStore, RusTlsError, UnixTime,
    WebPkiClientVerifier,
};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::DistinguishedName;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// `server.tls.client_auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A certificate is asked for; a handshake without one goes on (routes decide).
    Optional,
    /// A handshake without a valid certificate fails.
    Required,
}

/// `server.tls.client_auth`, compiled: the CA loaded and its verifier built.
#[derive(Clone)]
pub struct ClientAuthSettings {
    pub ca: PathBuf,
    pub mode: Mode,
    verifier: Arc<dyn ClientCertVerifier>,
    /// SHA-256 of the CA file: a reload that rewrites it is a change.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClientAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuthSettings")
            .field("ca", &self.ca)
            .field("mode", &self.mode)
            .finish()
    }
}

impl PartialEq for ClientAuthSettings {
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca && self.mode == other.mode && self.fingerprint == other.fingerprint
    }
}

impl Eq for ClientAuthSettings {}

/// Checks `server.tls.client_auth`; errors go to `c` with their YAML path.
pub fn compile(c: &mut Compiler, a: &RawClientAuth) -> Option<ClientAuthSettings> {
    let at = "server.tls.client_auth";
    let mode = match a.mode.as_str() {
        "optional" => Some(Mode::Optional),
        "required" => Some(Mode::Required),
        other => {
            c.error(
                &format!("{at}.mode"),
                format!("{other:?} is not a mode: use optional or required"),
            );
            None
        }
    };
    let ca = c.file(&a.ca);
    match ClientAuthSettings::load(ca, mode?) {
        Ok(s) => Some(s),
        Err(e) => {
            c.error(&format!("{at}.ca"), e);
            None
        }
    }
}

impl ClientAuthSettings {
    /// Loads the CA file and builds its verifier.
    pub fn load(ca: PathBuf, mode: Mode) -> Result<ClientAuthSettings, String> {
        let pem = std::fs::read(&ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let mut roots = RootCertStore::empty();
        pingora::tls::load_ca_file_into_store(&ca, &mut roots)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        if roots.is_empty() {
            return Err(format!("{} holds no PEM CA certificate", ca.display()));
        }
        let provider = super::provider()
            .ok_or("no TLS crypto provider is available")?
            .clone();
        let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if mode == Mode::Optional {
            b = b.allow_unauthenticated();
        }
        let verifier = b.build().map_err(|e| format!("{}: {e}", ca.display()))?;
        Ok(ClientAuthSettings {
            ca,
            mode,
            verifier,
            fingerprint: Sha256::digest(&pem).into(),
        })
    }
}

/// The listeners' client-certificate verifier, following `server.tls.client_auth` across
/// reloads.
#[derive(Default)]
pub struct ClientVerifier {
    current: ArcSwapOption<ClientAuthSettings>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("current", &self.current.load())
            .finish()
    }
}

impl ClientVerifier {
    /// Applies the config's `client_auth` to new handshakes.
    pub fn set(&self, settings: Option<&ClientAuthSettings>) {
        self.current.store(settings.cloned().map(Arc::new));
    }

    fn signature_algorithms() -> Option<WebPkiSupportedAlgorithms> {
        super::provider().map(|p| p.signature_verification_algorithms)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current.load().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|s| s.mode == Mode::Required)
    }

    // rustls borrows the hints from the verifier, which a swappable CA cannot lend: no hints
    // (RFC 8446 4.2.4: an empty list lets the client send any certificate it has).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RusTlsError> {
        match self.current.load().as_ref() {
            Some(s) => s
                .verifier
                .verify_client_cert(end_entity, intermediates, now),
            None => Err(RusTlsError::General(
                "no client certificate was asked for".into(),
            )),
        }
    }

    crate::util::handshake::handshake_signatures!(|_: &Self| Self::signature_algorithms());
}

/// The verified client certificate of a connection: what routes and plugins may identify
/// the client by. Plain data, parsed once per handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject as an RFC 4514 string, most specific first (`CN=partner-a,O=Acme`).
    pub subject: String,
    /// subjectAltName entries: DNS names, URIs (`spiffe://acme/partner-a`), e-mail addresses
    /// and IP addresses, as text.
    pub sans: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

impl ClientCert {
    /// Parses a DER leaf certificate.
    pub fn parse(der: &[u8]) -> Option<ClientCert> {
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        sans.push(s.to_string())
                    }
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            sans.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(ClientCert {
            subject: rfc4514(cert.subject()),
            sans,
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// RFC 4514 form of a name: RDNs in reverse order, `,` between them, `+` inside one,
/// short attribute names where known (else the dotted OID), special characters escaped.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let reg = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type();
            match x509_parser::objects::oid2abbrev(oid, reg) {
                // The registry's name for emailAddress is not RFC 4514's.
                Ok(n) if n != "emailAddress" => out.push_str(n),
                _ => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            escape_value(atv.as_str().unwrap_or(""), &mut out);
        }
    }
    out
}

fn escape_value(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, ch) in v.chars().enumerate() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(ch, '#' | ' '))
            || (i == last && ch == ' ');
        if special {
            out.push('\\');
        }
        if ch == '\0' {
            out.push_str("\\00");
        } else {
            out.push(ch);
        }
    }
}

/// The post-handshake callback: the verified leaf, parsed, into the connection's digest.
pub struct Identify;

#[async_trait]
impl pingora::listeners::TlsAccept for Identify {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        // Only a certificate rustls verified against `ca` gets here (else no handshake).
        let leaf = tls.peer_certificate_der()?;
        let cert = ClientCert::parse(leaf)?;
        Some(Arc::new(Arc::new(cert)))
    }
}

/// The verified client certificate of the connection a request came on, if any.
pub fn client_cert(session: &pingora::proxy::Session) -> Option<Arc<ClientCert>> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<Arc<ClientCert>>()
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::store::{load_pair, CertStore, Certificates, Origin};
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use pingora::protocols::Ssl;

    /// A CA and a leaf it signs (PEM chain, PEM key).
    fn issue(
        ca: &rcgen::Certificate,
        ca_key: &rcgen::KeyPair,
        cn: &str,
        sans: &[&str],
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        (
            p.signed_by(&key, ca, ca_key).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    #[tokio::test]
    async fn the_verified_client_certificate_rides_on_the_connection() {
        let d = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(d.path().join("ca.pem"), ca.pem()).unwrap();
        let (srv, srv_key) = issue(&ca, &ca_key, "server", &["localhost"]);
        std::fs::write(d.path().join("s.crt"), srv).unwrap();
        std::fs::write(d.path().join("s.key"), srv_key).unwrap();
        let store = Arc::new(CertStore::default());
        let entry = load_pair(
            &d.path().join("s.crt"),
            &d.path().join("s.key"),
            Origin::Config("server.tls.cert".into()),
        )
        .unwrap();
        store.set_configured(&Certificates(vec![Arc::new(entry)]));
        let auth = ClientAuthSettings::load(d.path().join("ca.pem"), Mode::Required).unwrap();
        store.client_auth.set(Some(&auth));
        let t = crate::model::TlsSettings {
            listen: Vec::new(),
            min_version: "1.2".into(),
            max_version: "1.3".into(),
            cipher_suites: Vec::new(),
            acme: None,
        };
        let acceptor = pingora::listeners::tls::Acceptor::from_server_config_with_callbacks(
            Arc::new(super::super::server_config(&t, store).unwrap()),
            Box::new(Identify),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let (chain, key) = issue(&ca, &ca_key, "partner-a", &["spiffe://acme/partner-a"]);
        let client = tokio::spawn(async move {
            let certs: Vec<CertificateDer<'static>> =
                rustls::pki_types::pem::PemObject::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(
                super::super::provider().unwrap().clone(),
            )
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = pingora::tls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .unwrap();
            // Hold the connection until the server is done with it.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            drop(tls);
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.tls_handshake(L4Stream::from(tcp)).await.unwrap();
        let digest = tls.get_ssl_digest().unwrap();
        let cert = digest.extension.get::<Arc<ClientCert>>().unwrap();
        assert_eq!(cert.subject, "CN=partner-a");
        assert_eq!(cert.sans, ["spiffe://acme/partner-a"]);
        client.await.unwrap();
    }

    #[test]
    fn subject_and_sans_as_text() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "partner-a");
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://acme/partner-a".try_into().unwrap(),
        ));
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()));
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@acme.example".try_into().unwrap(),
        ));
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let c = ClientCert::parse(&der).unwrap();
        assert_eq!(c.subject, "CN=partner-a,O=Acme\\, Inc.");
        assert_eq!(
            c.sans,
            [
                "client.example",
                "spiffe://acme/partner-a",
                "10.1.2.3",
                "ops@acme.example"
            ]
        );
        assert!(!c.serial.is_empty());
    }
}
