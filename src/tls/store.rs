//! The served certificates and their choice by SNI, on the accept path (the TLS handshake that
//! [`crate::tls::Terminator`] runs before any `ProxyHttp` phase).
//!
//! [`CertStore`] is the rustls certificate resolver of the HTTPS listeners. Its contents come
//! from two places: the config's `server.tls.certificates` (replaced by every reload that
//! compiles) and the certificates ACME issued ([`crate::acme`], replaced when one is issued or
//! renewed). Both are combined into one [`Resolved`] table, published with one pointer store;
//! a handshake reads it with one `ArcSwap` load and two hash lookups at most, no lock and no
//! allocation. Connections keep the certificate they were handshaken with: a swap only
//! affects new handshakes.
//!
//! Choice: the client's SNI (rustls lower-cases it) is looked up among the exact DNS names of
//! every certificate, then among the wildcard names (`*.example.net` covers one label:
//! `a.example.net`, neither `example.net` nor `a.b.example.net`). Among certificates that
//! name the same host, the configured ones come first in list order, then ACME's. No SNI
//! (an IP address was dialled) or no match: the first configured certificate, else the first
//! ACME one.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, PrivateKeyDer, ResolvesServerCert};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A certificate expiring within this is reported at load (a warning, not an error).
pub const EXPIRY_WARNING_SECS: i64 = 14 * 86_400;

/// Where a served certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `server.tls` entry: its YAML path (`server.tls.certificates[1]`).
    Config(String),
    /// Issued by the ACME server.
    Acme,
}

/// One loaded certificate chain with its private key, checked to fit together.
pub struct CertEntry {
    pub key: Arc<CertifiedKey>,
    /// The DNS names of the leaf's subjectAltName (lower case), else its CN.
    pub names: Vec<String>,
    /// `notAfter` of the leaf, Unix seconds.
    pub not_after: i64,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// The name in `tls_certificate_expiry_seconds{name}`.
    pub metric_name: String,
    pub origin: Origin,
    /// SHA-256 of the chain: what tells a reload that a certificate changed.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for CertEntry {
    // The key never appears: only what `/status` shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertEntry")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The certificates of one config generation, compared by content (a reload that changes a
/// certificate file is a change even when the config text is the same).
#[derive(Debug, Clone, Default)]
pub struct Certificates(pub Vec<Arc<CertEntry>>);

impl PartialEq for Certificates {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.fingerprint == b.fingerprint && a.origin == b.origin)
    }
}

impl Eq for Certificates {}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Loads a PEM certificate chain and its PEM private key, checking that the key belongs to
/// the leaf. Errors name the files, never their contents.
pub fn load_pair(cert: &Path, key: &Path, origin: Origin) -> Result<CertEntry, String> {
    let loaded =
        pingora::tls::load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy())
            .map_err(|e| format!("cannot read the certificate or key: {e}"))?;
    let (chain, key_der) = loaded.ok_or_else(|| {
        format!(
            "no PEM certificate in {} or no PEM private key in {}",
            cert.display(),
            key.display()
        )
    })?;
    entry(chain, key_der, origin)
}

fn entry(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    origin: Origin,
) -> Result<CertEntry, String> {
    let provider = super::provider().ok_or("no TLS crypto provider is available")?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        pingora::tls::RusTlsError::InconsistentKeys(_) => {
            "the certificate and key cannot be used together: the private key does not belong to the certificate".to_string()
        }
        e => format!("the certificate and key cannot be used together: {e}"),
    })?;
    let leaf = certified
        .cert
        .first()
        .ok_or("the certificate file holds no certificate")?;
    let info = leaf_info(leaf)?;
    let mut h = Sha256::new();
    for c in &certified.cert {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c.as_ref());
    }
    let (metric_name, _) = crate::observe::certs::describe(leaf)?;
    Ok(CertEntry {
        key: Arc::new(certified),
        names: info.names,
        not_after: info.not_after,
        serial: info.serial,
        metric_name,
        origin,
        fingerprint: h.finalize().into(),
    })
}

struct LeafInfo {
    names: Vec<String>,
    not_after: i64,
    serial: String,
}

fn leaf_info(der: &[u8]) -> Result<LeafInfo, String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        // Only for certificates without DNS SANs (clients ignore the CN when there are some).
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    Ok(LeafInfo {
        names,
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.raw_serial_as_string().replace(':', ""),
    })
}

/// What a handshake reads: built off the handshake path whenever a source changes.
#[derive(Default)]
struct Resolved {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the parent domain of the wildcard (`example.net` for `*.example.net`).
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Every served certificate in order of precedence (for `/status` and the metric).
    all: Vec<Arc<CertEntry>>,
}

impl Resolved {
    fn build(configured: &[Arc<CertEntry>], acme: &[Arc<CertEntry>]) -> Resolved {
        let mut r = Resolved::default();
        for e in configured.iter().chain(acme) {
            for name in &e.names {
                match name.strip_prefix("*.") {
                    Some(parent) => r.wildcard.entry(parent.into()),
                    None => r.exact.entry(name.as_str().into()),
                }
                .or_insert_with(|| e.key.clone());
            }
            if r.default.is_none() {
                r.default = Some(e.key.clone());
            }
            r.all.push(e.clone());
        }
        r
    }

    #[inline]
    fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(k) = self.exact.get(name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

#[derive(Default)]
struct Sources {
    configured: Vec<Arc<CertEntry>>,
    acme: Vec<Arc<CertEntry>>,
}

/// The served certificates: survives reloads (kept in [`crate::app::Shared`]).
#[derive(Default)]
pub struct CertStore {
    current: ArcSwap<Resolved>,
    /// `client_auth`'s verifier: the client CA, swapped by a reload like the certificates.
    pub client_auth: Arc<super::client_auth::ClientVerifier>,
    /// Writers only (a reload, the ACME service): serializes rebuilding the table.
    sources: Mutex<Sources>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.current.load().all)
            .finish()
    }
}

impl CertStore {
    /// Replaces the configured certificates (a reload, or the first load).
    pub fn set_configured(&self, certs: &Certificates) {
        let mut s = self.sources.lock();
        s.configured = certs.0.clone();
        self.publish(&s);
    }

    /// Replaces the ACME-issued certificates.
    pub fn set_acme(&self, certs: Vec<Arc<CertEntry>>) {
        let mut s = self.sources.lock();
        s.acme = certs;
        self.publish(&s);
    }

    fn publish(&self, s: &Sources) {
        let r = Resolved::build(&s.configured, &s.acme);
        crate::observe::certs::set_served(
            r.all.iter().map(|e| (e.metric_name.clone(), e.not_after)),
        );
        self.current.store(Arc::new(r));
    }

    /// Every served certificate, in order of precedence.
    pub fn served(&self) -> Vec<Arc<CertEntry>> {
        self.current.load().all.clone()
    }

    /// The certificate a handshake with this SNI gets.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.current.load().choose(sni)
    }

    /// `/status`: names, validity and origin of each served certificate (no key material).
    pub fn status(&self) -> serde_json::Value {
        let now = now_unix();
        self.current
            .load()
            .all
            .iter()
            .map(|e| {
                serde_json::json!({
                    "names": e.names,
                    "not_after": crate::util::clock::rfc3339_millis(
                        std::time::Duration::from_secs(e.not_after.max(0) as u64)
                    ),
                    "expires_in_seconds": e.not_after - now,
                    "serial": e.serial,
                    "source": match &e.origin {
                        Origin::Config(path) => path.as_str(),
                        Origin::Acme => "acme",
                    },
                })
            })
            .collect()
    }
}

impl ResolvesServerCert for CertStore {
    // The handshake path: one ArcSwap load, at most two hash lookups, one Arc clone.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().choose(hello.server_name())
    }
}

/// Same as [`load_pair`], for an ACME certificate stored on disk.
pub fn load_acme(cert: &Path, key: &Path) -> Result<CertEntry, String> {
    load_pair(cert, key, Origin::Acme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, sans: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn load(dir: &Path, name: &str, sans: &[&str], i: usize) -> Arc<CertEntry> {
        let (c, k) = pair(dir, name, sans);
        Arc::new(
            load_pair(
                &c,
                &k,
                Origin::Config(format!("server.tls.certificates[{i}]")),
            )
            .unwrap(),
        )
    }

    #[test]
    fn exact_names_before_wildcards_and_the_first_as_default() {
        let d = tempfile::tempdir().unwrap();
        let first = load(d.path(), "first", &["first.example"], 0);
        let wild = load(d.path(), "wild", &["*.example.net", "example.net"], 1);
        let exact = load(d.path(), "exact", &["API.example.net"], 2);
        let store = CertStore::default();
        store.set_configured(&Certificates(vec![
            first.clone(),
            wild.clone(),
            exact.clone(),
        ]));
        let pick = |sni: Option<&str>| {
            let k = store.choose(sni).unwrap();
            [&first, &wild, &exact]
                .iter()
                .position(|e| Arc::ptr_eq(&e.key, &k))
                .unwrap()
        };
        assert_eq!(pick(Some("api.example.net")), 2, "exact beats wildcard");
        assert_eq!(pick(Some("www.example.net")), 1);
        assert_eq!(pick(Some("example.net")), 1, "its own exact SAN");
        assert_eq!(
            pick(Some("a.b.example.net")),
            0,
            "a wildcard covers one label"
        );
        assert_eq!(pick(Some("first.example")), 0);
        assert_eq!(pick(Some("unknown.example")), 0, "no match: the first");
        assert_eq!(pick(None), 0, "no SNI: the first");
        assert_eq!(exact.names, ["api.example.net"], "names are lower-cased");
    }

    #[test]
    fn acme_certificates_come_after_the_configured_ones() {
        let d = tempfile::tempdir().unwrap();
        let conf = load(d.path(), "conf", &["a.example"], 0);
        let (c, k) = pair(d.path(), "acme", &["a.example", "b.example"]);
        let acme = Arc::new(load_acme(&c, &k).unwrap());
        let store = CertStore::default();
        store.set_acme(vec![acme.clone()]);
        assert!(
            Arc::ptr_eq(&store.choose(None).unwrap(), &acme.key),
            "alone: default"
        );
        store.set_configured(&Certificates(vec![conf.clone()]));
        assert!(Arc::ptr_eq(
            &store.choose(Some("a.example")).unwrap(),
            &conf.key
        ));
        assert!(Arc::ptr_eq(
            &store.choose(Some("b.example")).unwrap(),
            &acme.key
        ));
        assert!(Arc::ptr_eq(&store.choose(None).unwrap(), &conf.key));
        let status = store.status();
        assert_eq!(status[0]["source"], "server.tls.certificates[0]");
        assert_eq!(status[1]["source"], "acme");
        assert_eq!(
            status[1]["names"],
            serde_json::json!(["a.example", "b.example"])
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (c, _) = pair(d.path(), "a", &["a.example"]);
        let (_, k) = pair(d.path(), "b", &["b.example"]);
        let e = load_pair(&c, &k, Origin::Acme).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }

    #[test]
    fn equality_follows_the_content() {
        let d = tempfile::tempdir().unwrap();
        let a = load(d.path(), "a", &["a.example"], 0);
        let (c, k) = (d.path().join("a.crt"), d.path().join("a.key"));
        let again = Arc::new(load_pair(&c, &k, a.origin.clone()).unwrap());
        assert_eq!(Certificates(vec![a.clone()]), Certificates(vec![again]));
        let b = load(d.path(), "a", &["a.example"], 0);
        assert_ne!(Certificates(vec![a]), Certificates(vec![b]), "rotated");
    }
}
