//! `server.tls.acme` end to end against a real ACME server: Let's Encrypt's pebble (Debian's
//! `pebble` package), which validates HTTP-01 against the gateway's plain listener (its
//! `httpPort`), resolving the domain through pebble-challtestsrv's DNS (every name is
//! 127.0.0.1). The gateway then serves pebble's certificate for the domain, checked by a
//! client that trusts only pebble's root; the certificate is stored 0600 and served again by
//! a new process while pebble is down, without a new order. A failing ACME server is retried
//! with back-off while the configured certificate serves. Skipped with a notice when pebble
//! is not installed; a failure when `CI=true`.
use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

const DOMAIN: &str = "api.example.com";

/// pebble and its DNS server, killed on drop.
struct Pebble {
    children: Vec<Child>,
    port: u16,
    mgmt_port: u16,
    /// The root of pebble's own HTTPS certificate (what `acme.ca` names).
    tls_ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn installed(bin: &str) -> bool {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(bin).exists())
}

fn wait_listening(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port`; `None` (with a notice) when the
    /// package is missing outside CI.
    fn start(http_port: u16) -> Option<Pebble> {
        if !installed("pebble") || !installed("pebble-challtestsrv") {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("pebble is required when CI=true (apt-get install pebble)");
            }
            eprintln!("NOTICE: pebble not installed; skipping this ACME test");
            return None;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path().to_path_buf();
        // pebble's HTTPS certificate, from a CA of the test's own.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test TLS root");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(d.join("tls-ca.pem"), ca.pem()).unwrap();
        std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();

        let (dns_port, dns_mgmt, port, mgmt_port, tls_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let log_dir = d.clone();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns_port}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{dns_mgmt}"))
            .stdin(Stdio::null())
            .stdout(log("dns.log"))
            .stderr(log("dns.err"))
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();
        let mut pebble = Pebble {
            children: vec![dns],
            port,
            mgmt_port,
            tls_ca: d.join("tls-ca.pem"),
            dir,
        };
        assert!(
            wait_listening(dns_mgmt, Duration::from_secs(10)),
            "pebble-challtestsrv did not start"
        );
        let log = |name: &str| std::fs::File::create(log_dir.join(name)).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(pebble.dir.path().join("pebble.json"))
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // No random sleeps before validation; no nonce rejections (a client retries
            // them, but the test wants to be quick and deterministic).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("spawn pebble");
        pebble.children.push(child);
        assert!(
            wait_listening(port, Duration::from_secs(10)),
            "pebble did not start:\n{}",
            pebble.log()
        );
        Some(pebble)
    }

    fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// pebble's issuing root (a new one every start), from its management API.
    async fn issuing_root(&self) -> String {
        let ca = std::fs::read(&self.tls_ca).unwrap();
        let c = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let r = c
            .get(format!("https://localhost:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .expect("pebble /roots/0");
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.unwrap()
    }
}

/// A client that trusts only `root_pem` and resolves DOMAIN to the gateway's TLS port.
fn client_trusting(root_pem: &str, tls_port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .resolve(DOMAIN, ([127, 0, 0, 1], tls_port).into())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn acme_lines(tls_port: u16, directory: &str, storage: &Path, ca: &Path, extra: &str) -> String {
    format!(
        "tls:\n  listen: [\"127.0.0.1:{tls_port}\"]\n{extra}  acme:\n    directory: {directory}\n    email: ops@example.com\n    domains: [{DOMAIN}]\n    storage: {}\n    ca: {}\n",
        storage.display(),
        ca.display()
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn pebble_issues_the_certificate_and_the_gateway_serves_it() {
    let a = Backend::start("a");
    let cfg = Cfg::new();
    let Some(pebble) = Pebble::start(cfg.port) else {
        return;
    };
    let storage_dir = tempfile::TempDir::new().unwrap();
    let storage = storage_dir.path().join("acme");
    let tls_port = free_port();
    let lines = acme_lines(tls_port, &pebble.directory(), &storage, &pebble.tls_ca, "");
    let gw = cfg
        .server(&lines)
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "")
        .start();

    // Issued in the background: the gateway serves from the start, the certificate follows.
    let root = pebble.issuing_root().await;
    let c = client_trusting(&root, tls_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last;
    loop {
        match c.get(format!("https://{DOMAIN}:{tls_port}/t")).send().await {
            Ok(r) => {
                assert_eq!(r.status().as_u16(), 200);
                break;
            }
            Err(e) => last = format!("{e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no pebble certificate served within 60 s: {last}\n--- gateway ---\n{}\n--- pebble ---\n{}",
            gw.stderr(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.hits(), 1);
    let log = gw.stderr();
    assert!(
        log.contains("acme: answering an http-01 validation"),
        "pebble validated HTTP-01 against the plain listener: {log}"
    );
    assert!(log.contains("acme: certificate issued"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");

    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "acme_orders_total", &[("result", "issued")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "acme_orders_total", &[("result", "failed")]),
        Some(0.0)
    );
    let v = metric(&m, "tls_certificate_expiry_seconds", &[("name", DOMAIN)])
        .unwrap_or_else(|| panic!("{m}"));
    assert!(v > 86_400.0, "{v}");

    let st = gw.status_json().await;
    let certs = st["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{st}");
    assert_eq!(certs[0]["source"], "acme");
    assert_eq!(certs[0]["names"], serde_json::json!([DOMAIN]));
    let serial = certs[0]["serial"].as_str().unwrap().to_string();
    assert!(st["acme"]["issued_at"].is_string(), "{st}");
    assert_eq!(st["acme"]["failures"], 0);
    assert!(!st.to_string().contains("PRIVATE"), "{st}");

    // Stored 0600 under a directory per ACME server, 0700.
    let server_dir = storage.join(format!("localhost_{}", pebble.port));
    assert_eq!(mode(&server_dir), 0o700);
    for f in ["account.json", "api.example.com.crt", "api.example.com.key"] {
        assert_eq!(mode(&server_dir.join(f)), 0o600, "{f}");
    }

    // A reload keeps the certificate and orders nothing.
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c
        .get(format!("https://{DOMAIN}:{tls_port}/t"))
        .send()
        .await
        .expect("served after a reload");
    assert_eq!(r.status().as_u16(), 200);
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "acme_orders_total", &[("result", "issued")]),
        Some(1.0)
    );
    drop(gw);

    // A new process with pebble gone: the stored certificate serves from the first
    // handshake, no order is placed.
    let directory = pebble.directory();
    let ca = storage_dir.path().join("pebble-tls-ca.pem");
    std::fs::copy(&pebble.tls_ca, &ca).unwrap();
    drop(pebble);
    let cfg = Cfg::new();
    let lines = acme_lines(tls_port, &directory, &storage, &ca, "");
    let gw = cfg
        .server(&lines)
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "")
        .start();
    // A new client: the old one's pooled connection went with the old process.
    let c = client_trusting(&root, tls_port);
    let r = c
        .get(format!("https://{DOMAIN}:{tls_port}/t"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "stored certificate not served at once: {e:?}\n{}",
                gw.stderr()
            )
        });
    assert_eq!(r.status().as_u16(), 200);
    let st = gw.status_json().await;
    assert_eq!(st["certificates"][0]["serial"], serial.as_str(), "{st}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "acme_orders_total", &[("result", "issued")]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "acme_orders_total", &[("result", "failed")]),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_failing_acme_server_backs_off_and_the_configured_certificate_serves() {
    let a = Backend::start("a");
    let cfg = Cfg::new();
    make_certs(cfg.dir.path());
    let ca = cfg.dir.path().join("tls/ca.pem");
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let tls_port = free_port();
    // Nothing listens there.
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let lines = acme_lines(
        tls_port,
        &directory,
        Path::new("acme"),
        &ca,
        "  certificates:\n    - { cert: tls/server.crt, key: tls/server.key }\n",
    );
    let gw = cfg
        .server(&lines)
        .upstream("u", &[target(&a)], "")
        .route("r", &["/t"], "u", "")
        .start();

    let mut failed = None;
    for _ in 0..100 {
        let m = gw.metrics_text().await;
        failed = metric(&m, "acme_orders_total", &[("result", "failed")]).filter(|v| *v >= 1.0);
        if failed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed, Some(1.0), "{}", gw.stderr());
    assert!(
        gw.stderr()
            .contains("acme: order failed, next attempt in 60s"),
        "{}",
        gw.stderr()
    );
    let st = gw.status_json().await;
    assert_eq!(st["acme"]["failures"], 1, "{st}");
    assert!(
        st["acme"]["last_error"]
            .as_str()
            .unwrap()
            .contains(&directory),
        "{st}"
    );
    assert!(st["acme"]["next_attempt"].is_string(), "{st}");

    // The configured certificate serves meanwhile.
    let c = client_trusting(&ca_pem, tls_port);
    let r = c
        .get(format!("https://localhost:{tls_port}/t"))
        .send()
        .await;
    // `localhost` resolves to the gateway by the system resolver.
    assert_eq!(r.unwrap().status().as_u16(), 200);
    // Backing off: no second attempt within the first minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(&m, "acme_orders_total", &[("result", "failed")]),
        Some(1.0)
    );
}

#[test]
fn acme_config_errors_name_path_and_line() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let yaml = format!(
        "server:
  listen: []
  tls:
    listen: [\"127.0.0.1:8443\"]
    acme:
      directory: http://acme.example/dir
      email: not-an-address
      domains: [\"*.example.com\", ok.example.com, OK.example.com, 10.0.0.1]
      storage: {}
      renew_before: 0s
",
        file.display()
    );
    let (code, err) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{err}");
    for (path, line, text) in [
        ("server.tls.acme.directory", 6, "is not an https URL"),
        ("server.tls.acme.email", 7, "is not an e-mail address"),
        (
            "server.tls.acme.domains[0]",
            8,
            "wildcard certificates need the DNS-01 challenge",
        ),
        (
            "server.tls.acme.domains[2]",
            8,
            "ok.example.com is listed twice",
        ),
        ("server.tls.acme.domains[3]", 8, "is an IP address"),
        ("server.tls.acme.storage", 9, "is not a directory"),
        ("server.tls.acme.renew_before", 10, "must be more than 0"),
        ("server.tls.acme", 5, "server.listen needs one"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!("{path}: "))
                && l.contains(text)
                && l.contains(&format!("(line {line})"))),
            "{path} (line {line}) {text:?} missing:\n{err}"
        );
    }
}
