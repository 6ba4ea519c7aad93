//! HTTPS listeners: rustls with a certificate generated here (rcgen), HTTP/2 by ALPN,
//! X-Forwarded-Proto https to a plain-HTTP upstream, and `min_version`.
use crate::common;

use common::*;

fn client(ca_pem: &str, max_tls12: bool) -> reqwest::Client {
    let mut b = https_client_builder(ca_pem);
    if max_tls12 {
        b = b.max_tls_version(reqwest::tls::Version::TLS_1_2);
    }
    b.build().unwrap()
}

fn tls_cfg(backend: &Backend, tls_port: u16, min_version: &str) -> (Cfg, String) {
    // cert and key relative to the config file
    let (cfg, ca) = Cfg::new().tls_listener(tls_port, &format!("min_version: \"{min_version}\""));
    let cfg = cfg
        .upstream("u", &[target(backend)], "")
        .route("r", &["/t"], "u", "");
    (cfg, ca)
}

#[tokio::test]
async fn https_through_the_gateway_negotiates_h2() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let (cfg, ca) = tls_cfg(&a, tls_port, "1.2");
    let gw = cfg.start();

    let c = client(&ca, false);
    let r = c
        .get(format!("https://localhost:{tls_port}/t/x?q=1"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("HTTPS request failed: {e:?}\n{}", gw.stderr()));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.version(),
        reqwest::Version::HTTP_2,
        "h2 not negotiated by ALPN"
    );
    let body = r.text().await.unwrap();
    assert_eq!(backend_of(&body), "a");
    let seen = a.last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.uri, "/t/x?q=1");

    // several requests multiplexed on the one h2 connection
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get(format!("https://127.0.0.1:{tls_port}/t/{i}"))
                .send()
                .await
                .map(|r| (r.status().as_u16(), r.version()))
        }));
    }
    for t in tasks {
        let (s, v) = t.await.unwrap().expect("h2 request");
        assert_eq!((s, v), (200, reqwest::Version::HTTP_2));
    }

    // TLS 1.2 is accepted at the default min_version
    let r = client(&ca, true)
        .get(format!("https://localhost:{tls_port}/t"))
        .send()
        .await
        .expect("TLS 1.2 client at min_version 1.2");
    assert_eq!(r.status().as_u16(), 200);

    // the plain listener still says http
    let (s, _) = gw.send(gw.client.get(gw.url("/t"))).await;
    assert_eq!(s, 200);
    assert_eq!(
        a.last_request().unwrap().header("x-forwarded-proto"),
        Some("http")
    );

    // the gateway's own answers over TLS too
    let r = c
        .get(format!("https://localhost:{tls_port}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_error_body(&r.text().await.unwrap(), "not_found");
}

#[tokio::test]
async fn min_version_13_refuses_tls12_clients() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let (cfg, ca) = tls_cfg(&a, tls_port, "1.3");
    let gw = cfg.start();

    let err = client(&ca, true)
        .get(format!("https://localhost:{tls_port}/t"))
        .send()
        .await;
    assert!(
        err.is_err(),
        "TLS 1.2-only client accepted at min_version 1.3"
    );
    assert_eq!(a.hits(), 0);

    let r = client(&ca, false)
        .get(format!("https://localhost:{tls_port}/t"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("TLS 1.3 client refused: {e:?}\n{}", gw.stderr()));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(a.hits(), 1);
    assert!(gw.exited().is_none());
}

/// A client sending an IP address as SNI (wrk and some probes do; RFC 6066 forbids it) gets
/// its answer, and the gateway's log does not grow a line per handshake: rustls's warning
/// about it stays out unless `GATEHOUSE_LOG` names rustls.
#[tokio::test]
async fn ip_address_sni_is_served_without_a_log_line_per_handshake() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let (cfg, ca) = tls_cfg(&a, tls_port, "1.2");
    let gw = cfg.start();
    let ca_file = gw.dir().join("sni-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    for _ in 0..3 {
        // openssl sends the -servername value as SNI as given (curl leaves SNI out for an
        // IP address)
        let mut child = std::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{tls_port}"))
            .args(["-servername", "127.0.0.1", "-CAfile"])
            .arg(&ca_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /t/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().expect("openssl output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert_eq!(a.hits(), 3);
    let log = gw.stderr();
    assert!(!log.contains("Illegal SNI"), "{log}");
}
