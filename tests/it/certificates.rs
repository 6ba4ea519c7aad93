//! Certificates of the HTTPS listeners against the real binary and real rustls clients:
//! several certificates chosen by SNI (exact names before wildcards, the first for clients
//! without SNI or with an unknown name), the checks at load (both forms, expired, expiring
//! soon, a key of another certificate) with paths and lines, `/status` and
//! `tls_certificate_expiry_seconds`, and certificates swapped by a reload: rotation under a
//! loop of new connections with no failed request, `needs_upgrade: false`, open connections
//! untouched, an invalid new certificate refused as a whole.
use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::client::WantsClientCert;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ConfigBuilder};
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A test CA that issues server certificates into files.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// (year, month, day) `days` from today (UTC), for certificate validity.
fn ymd_in_days(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m, d) = gatehouse::util::clock::civil_from_days(now / 86_400 + days);
    (y as i32, m, d)
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "gatehouse certificates test CA");
        let cert = p.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes `dir/<file>.crt` and `.key` for `sans`, valid from yesterday for `days`
    /// (negative: expired); returns the serial (hex, as `/status` shows it).
    fn issue(&self, dir: &Path, file: &str, sans: &[&str], days: i64) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let (y, m, d) = ymd_in_days(days.min(0) - 2);
        p.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = ymd_in_days(days);
        p.not_after = rcgen::date_time_ymd(y, m, d);
        let serial: [u8; 8] = rand_serial();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join(format!("tls/{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("tls/{file}.key")), key.serialize_pem()).unwrap();
        hex(&serial)
    }
}

fn rand_serial() -> [u8; 8] {
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    // Positive (high bit clear), 8 bytes in DER (no leading zero byte), unique in the run.
    let v = ((t << 16) ^ N.fetch_add(1, Ordering::Relaxed)) & 0x3fff_ffff_ffff_ffff;
    (v | 0x4000_0000_0000_0000).to_be_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What one handshake served: the leaf's DNS names and serial.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    names: Vec<String>,
    serial: String,
}

fn describe(der: &[u8]) -> Served {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).unwrap();
    let names = c
        .subject_alternative_name()
        .unwrap()
        .map(|e| {
            e.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Served {
        names,
        serial: c.raw_serial_as_string().replace(':', ""),
    }
}

/// A client builder that accepts any server certificate (the handshake signature is still
/// checked), so a test sees which certificate the gateway chose.
fn any_certificate() -> ConfigBuilder<ClientConfig, WantsClientCert> {
    let any = gatehouse::upstream::peer::AnyServerCertificate::new().unwrap();
    let provider = CryptoProvider::get_default().unwrap().clone();
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(any)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the gateway with `sni` (none when `None`: an IP address is dialled).
async fn connect(port: u16, sni: Option<&str>) -> Result<(Tls, Served), String> {
    let cfg = Arc::new(any_certificate().with_no_client_auth());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let served = describe(leaf.ok_or("no certificate")?);
    Ok((tls, served))
}

/// One HTTP/1.1 request on an open connection (kept open): the status code.
async fn get(tls: &mut Tls, path: &str) -> Result<u16, String> {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk))
            .await
            .map_err(|_| "read timed out".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(r) = parse_response(&buf) {
            let len: usize = r
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if r.body.len() >= len {
                return Ok(r.status);
            }
        }
    }
}

/// The certificate served to `sni` (and that HTTP works over it).
async fn served(port: u16, sni: Option<&str>) -> Served {
    let (mut tls, s) = connect(port, sni)
        .await
        .unwrap_or_else(|e| panic!("sni {sni:?}: {e}"));
    assert_eq!(get(&mut tls, "/t").await, Ok(200), "sni {sni:?}");
    s
}

fn tls_lines(port: u16, body: &str) -> String {
    format!("tls:\n  listen: [\"127.0.0.1:{port}\"]\n{body}")
}

fn certs_block(files: &[&str]) -> String {
    let mut s = "  certificates:\n".to_string();
    for f in files {
        s.push_str(&format!(
            "    - {{ cert: tls/{f}.crt, key: tls/{f}.key }}\n"
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Part 1: several certificates by SNI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sni_chooses_exact_names_before_wildcards_and_the_first_otherwise() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let ca = Ca::new();
    let cfg = Cfg::new();
    let dir = cfg.dir.path().to_path_buf();
    let s_default = ca.issue(&dir, "default", &["default.example.org"], 90);
    let s_wild = ca.issue(&dir, "wild", &["*.example.net", "example.net"], 90);
    let s_api = ca.issue(&dir, "api", &["api.example.net"], 90);
    let gw = cfg
        .server(&tls_lines(
            tls_port,
            &certs_block(&["default", "wild", "api"]),
        ))
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "")
        .start();

    assert_eq!(
        served(tls_port, Some("api.example.net")).await.serial,
        s_api
    );
    assert_eq!(
        served(tls_port, Some("API.Example.NET")).await.serial,
        s_api
    );
    assert_eq!(
        served(tls_port, Some("www.example.net")).await.serial,
        s_wild
    );
    assert_eq!(served(tls_port, Some("example.net")).await.serial, s_wild);
    assert_eq!(
        served(tls_port, Some("a.b.example.net")).await.serial,
        s_default,
        "a wildcard covers one label"
    );
    assert_eq!(
        served(tls_port, Some("unknown.example.com")).await.serial,
        s_default
    );
    assert_eq!(served(tls_port, None).await.serial, s_default, "no SNI");

    // A client that verifies the chain and the host name, as browsers do.
    let c = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .resolve("www.example.net", ([127, 0, 0, 1], tls_port).into())
        .resolve("api.example.net", ([127, 0, 0, 1], tls_port).into())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for host in ["www.example.net", "api.example.net"] {
        let r = c
            .get(format!("https://{host}:{tls_port}/t"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}\n{}", gw.stderr()));
        assert_eq!(r.status().as_u16(), 200, "{host}");
    }
    assert_eq!(a.hits(), 9);

    // /status: names, not_after, serial and origin of each, in order; no key material.
    let st = gw.status_json().await;
    let certs = st["certificates"]
        .as_array()
        .expect("certificates in /status");
    assert_eq!(certs.len(), 3, "{st}");
    assert_eq!(
        certs[0]["names"],
        serde_json::json!(["default.example.org"])
    );
    assert_eq!(
        certs[1]["names"],
        serde_json::json!(["*.example.net", "example.net"])
    );
    assert_eq!(certs[2]["serial"], s_api.as_str());
    assert_eq!(certs[2]["source"], "server.tls.certificates[2]");
    let (y, m, d) = ymd_in_days(90);
    assert!(
        certs[0]["not_after"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{y:04}-{m:02}-{d:02}T")),
        "{}",
        certs[0]
    );
    let text = st.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "{text}"
    );

    // One expiry gauge per certificate, by its first name.
    let m = gw.metrics_text().await;
    for name in ["default.example.org", "*.example.net", "api.example.net"] {
        let v = metric(&m, "tls_certificate_expiry_seconds", &[("name", name)])
            .unwrap_or_else(|| panic!("no gauge for {name}:\n{m}"));
        assert!(v > 88.0 * 86_400.0 && v < 91.0 * 86_400.0, "{name}: {v}");
    }
}

#[tokio::test]
async fn certificate_checks_at_load_name_path_and_line() {
    let ca = Ca::new();
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    ca.issue(d, "good", &["good.example"], 90);
    ca.issue(d, "old", &["old.example"], -3);
    ca.issue(d, "soon", &["soon.example"], 5);
    ca.issue(d, "other", &["other.example"], 90);
    let dd = d.display();
    let head =
        "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n";

    // Both forms at once.
    let yaml = format!(
        "{head}    cert: {dd}/tls/good.crt\n    key: {dd}/tls/good.key\n    certificates:\n      - {{ cert: {dd}/tls/good.crt, key: {dd}/tls/good.key }}\n"
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.tls.certificates: set either cert and key")
            && err.contains("(line 7)"),
        "{err}"
    );

    // An expired certificate is an error; a key of another certificate too; with lines.
    let yaml = format!(
        "{head}    certificates:\n      - {{ cert: {dd}/tls/good.crt, key: {dd}/tls/good.key }}\n      - {{ cert: {dd}/tls/old.crt, key: {dd}/tls/old.key }}\n      - {{ cert: {dd}/tls/good.crt, key: {dd}/tls/other.key }}\n      - {{ cert: {dd}/tls/missing.crt, key: {dd}/tls/good.key }}\n"
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.tls.certificates[1].cert: the certificate for old.example expired on")
            && err.contains("(line 7)"),
        "{err}"
    );
    assert!(
        err.contains(
            "server.tls.certificates[2].cert: the certificate and key cannot be used together"
        ) && err.contains("(line 8)"),
        "{err}"
    );
    assert!(
        err.contains("server.tls.certificates[3].cert: certificate file")
            && err.contains("(line 9)"),
        "{err}"
    );
    assert!(!err.contains("BEGIN"), "no key material in errors: {err}");

    // Expiring within 14 days: valid, with a warning naming path and line.
    let yaml = format!(
        "{head}  pid_file: {dd}/gh.pid\n  upgrade_sock: {dd}/gh.sock\n"
    )
    .replace(
        "    listen: [\"127.0.0.1:8443\"]\n",
        &format!(
            "    listen: [\"127.0.0.1:8443\"]\n    certificates:\n      - {{ cert: {dd}/tls/good.crt, key: {dd}/tls/good.key }}\n      - {{ cert: {dd}/tls/soon.crt, key: {dd}/tls/soon.key }}\n"
        ),
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "server.tls.certificates[1].cert (line 7): the certificate for soon.example expires in"
        ),
        "{err}"
    );

    // No certificate at all.
    let (code, err) = Gateway::validate(head);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("server.tls: needs a certificate"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Part 2: certificates reload with the config
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rotation_under_load_fails_no_request_and_keeps_open_connections() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let ca = Ca::new();
    let cfg = Cfg::new();
    let dir = cfg.dir.path().to_path_buf();
    let old = ca.issue(&dir, "server", &["localhost"], 90);
    let gw = cfg
        .server(&tls_lines(tls_port, &certs_block(&["server"])))
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "")
        .start();
    assert_eq!(served(tls_port, Some("localhost")).await.serial, old);
    // A connection opened before the rotation, used again after it.
    let (mut open, first) = connect(tls_port, Some("localhost")).await.unwrap();
    assert_eq!(first.serial, old);
    assert_eq!(get(&mut open, "/t").await, Ok(200));

    // A loop of new TLS connections (no pooling: each request is a handshake).
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .http1_only()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client
                    .get(format!("https://localhost:{tls_port}/t"))
                    .header("connection", "close")
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotate: new files in place, same config text; then a second rotation by SIGHUP.
    let mut serials = vec![old.clone()];
    for (i, how) in ["POST", "HUP"].iter().enumerate() {
        let new = ca.issue(&dir, "server", &["localhost"], 90 + i as i64);
        match *how {
            "POST" => {
                let (status, v) = gw.admin_reload().await;
                assert_eq!(status, 200, "{v}");
                assert_eq!(v["result"], "success", "{v}");
                assert_eq!(v["needs_upgrade"], false, "{v}");
            }
            _ => gw.signal("HUP"),
        }
        let mut seen = String::new();
        for _ in 0..100 {
            seen = served(tls_port, Some("localhost")).await.serial;
            if seen == new {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, new, "{how}: new handshakes get the new certificate");
        serials.push(new);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests");
    eprintln!("rotation under load: {ok} requests on new connections, none failed");

    // The connection opened before keeps working (with the certificate it was given).
    assert_eq!(get(&mut open, "/t").await, Ok(200));
    let st = gw.status_json().await;
    assert_eq!(st["certificates"][0]["serial"], serials[2].as_str(), "{st}");
    assert_eq!(st["version"], 3, "two reloads applied: {st}");
}

#[tokio::test]
async fn an_invalid_new_certificate_rejects_the_reload_and_the_old_one_serves() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let ca = Ca::new();
    let cfg = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "");
    let dir = cfg.dir.path().to_path_buf();
    let serial = ca.issue(&dir, "server", &["localhost"], 90);
    let yaml_one = |cfg: Cfg, files: &[&str]| cfg.server(&tls_lines(tls_port, &certs_block(files)));
    let gw = yaml_one(cfg, &["server"]).start();

    // The list grows by one, whose key belongs to another certificate.
    ca.issue(&dir, "b", &["b.example"], 90);
    ca.issue(&dir, "c", &["c.example"], 90);
    std::fs::copy(dir.join("tls/c.key"), dir.join("tls/b.key")).unwrap();
    let next = yaml_one(
        Cfg::new()
            .upstream("u", &[target(&a)], "")
            .route("r", &["/t"], "u", ""),
        &["server", "b"],
    );
    gw.write_config(next);
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 422, "{v}");
    let errs = v["errors"].to_string();
    assert!(
        errs.contains("server.tls.certificates[1].cert")
            && errs.contains("cannot be used together"),
        "{errs}"
    );
    assert!(!errs.contains("BEGIN"), "{errs}");
    assert_eq!(served(tls_port, Some("localhost")).await.serial, serial);
    assert_eq!(
        served(tls_port, Some("b.example")).await.serial,
        serial,
        "not added"
    );

    // An expired replacement of the one file: refused too.
    ca.issue(&dir, "server", &["localhost"], -1);
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 422, "{v}");
    assert!(v["errors"].to_string().contains("expired"), "{v}");
    assert_eq!(served(tls_port, Some("localhost")).await.serial, serial);

    // Fixed: the list with a third certificate is taken, without an upgrade.
    let fresh = ca.issue(&dir, "server", &["localhost"], 90);
    let s_b = ca.issue(&dir, "b", &["b.example"], 90);
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["needs_upgrade"], false, "{v}");
    assert_eq!(served(tls_port, Some("localhost")).await.serial, fresh);
    assert_eq!(served(tls_port, Some("b.example")).await.serial, s_b);
    let m = gw.metrics_text().await;
    assert!(
        metric(
            &m,
            "tls_certificate_expiry_seconds",
            &[("name", "b.example")]
        )
        .is_some(),
        "{m}"
    );

    // Changing the TLS listeners still waits for a binary upgrade.
    let moved = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "")
        .server(&tls_lines(free_port(), &certs_block(&["server", "b"])));
    gw.write_config(moved);
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["needs_upgrade"], true, "{v}");
}

// ---------------------------------------------------------------------------------------------
// Client certificates (server.tls.client_auth)
// ---------------------------------------------------------------------------------------------

impl Ca {
    /// A client certificate (PEM chain, PEM key) with `cn` and URI SANs.
    fn client(&self, cn: &str, uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A handshake (presenting `identity` when given) and one GET: the status, or why not.
async fn mtls_get(port: u16, identity: Option<&(String, String)>) -> Result<u16, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;
    let b = any_certificate();
    let cfg = match identity {
        Some((chain, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    // TLS 1.3: a refused client certificate shows on the first read.
    get(&mut tls, "/t").await
}

#[tokio::test]
async fn client_certificates_required_optional_and_swapped_by_a_reload() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let server_ca = Ca::new();
    let clients = Ca::new();
    let stranger = Ca::new();
    let cfg_with = |mode: Option<&str>| {
        let auth = mode
            .map(|m| format!("  client_auth: {{ ca: tls/clients-ca.pem, mode: {m} }}\n"))
            .unwrap_or_default();
        Cfg::new()
            .server(&tls_lines(
                tls_port,
                &format!("{}{auth}", certs_block(&["server"])),
            ))
            .upstream("u", &[target(&a)], "")
            .route("r", &["/t"], "u", "")
    };
    let cfg = cfg_with(Some("required"));
    let dir = cfg.dir.path().to_path_buf();
    server_ca.issue(&dir, "server", &["localhost"], 90);
    std::fs::write(dir.join("tls/clients-ca.pem"), clients.pem()).unwrap();
    let gw = cfg.start();
    let partner = clients.client("partner-a", &["spiffe://acme/partner-a"]);
    let forged = stranger.client("partner-a", &["spiffe://acme/partner-a"]);

    // required: only a certificate from the clients' CA gets through.
    assert_eq!(mtls_get(tls_port, Some(&partner)).await, Ok(200));
    let none = mtls_get(tls_port, None).await;
    assert!(none.is_err(), "no certificate: {none:?}");
    let bad = mtls_get(tls_port, Some(&forged)).await;
    assert!(bad.is_err(), "another CA's certificate: {bad:?}");
    assert_eq!(a.hits(), 1);
    // Counted by the gateway once it has sent its alert: the client may see the failure
    // first.
    let failures = gw
        .metric_reaching("downstream_tls_handshake_failures_total", &[], 2.0)
        .await
        .unwrap();
    assert!(failures >= 2.0, "{failures}");

    // optional, by a reload: no certificate passes, a forged one still fails.
    gw.write_config(cfg_with(Some("optional")));
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["needs_upgrade"], false, "{v}");
    assert_eq!(mtls_get(tls_port, None).await, Ok(200));
    assert_eq!(mtls_get(tls_port, Some(&partner)).await, Ok(200));
    assert!(mtls_get(tls_port, Some(&forged)).await.is_err());

    // A new CA file under the same path: the old clients are strangers now.
    std::fs::write(dir.join("tls/clients-ca.pem"), stranger.pem()).unwrap();
    gw.write_config(cfg_with(Some("required")));
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["needs_upgrade"], false, "{v}");
    assert!(mtls_get(tls_port, Some(&partner)).await.is_err());
    assert_eq!(mtls_get(tls_port, Some(&forged)).await, Ok(200));

    // Without client_auth nothing is asked for.
    gw.write_config(cfg_with(None));
    let (status, _) = gw.admin_reload().await;
    assert_eq!(status, 200);
    assert_eq!(mtls_get(tls_port, None).await, Ok(200));

    // Load errors with path and line.
    let (code, err) = Gateway::validate(&format!(
        "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n    cert: {d}/tls/server.crt\n    key: {d}/tls/server.key\n    client_auth: {{ ca: {d}/tls/missing.pem, mode: sometimes }}\n",
        d = dir.display()
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("server.tls.client_auth.mode: \"sometimes\" is not a mode")
            && err.contains("(line 7)"),
        "{err}"
    );
}
