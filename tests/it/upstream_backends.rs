//! Real backends behind the gateway: HTTPS upstreams verified against a CA made here, mTLS
//! to an upstream that requires a client certificate, HTTP/2 and gRPC to upstreams (h2 over
//! TLS by ALPN, h2c with prior knowledge) from gRPC clients on the TLS listener and on the
//! plain listener (`server.h2c`), and the gateway's own refusals as gRPC statuses.
//!
//! The TLS servers are rustls (tokio-rustls), the gRPC server and client speak gRPC's
//! framing over the `h2` crate: length-prefixed messages, `grpc-status` trailers.
use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A CA made for one test, issuing server and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, as DER and PEM.
struct Leaf {
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
    pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        self.issue(p)
    }

    /// A client certificate with common name `cn`.
    fn client(&self, cn: &str) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        self.issue(p)
    }

    fn issue(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            der: cert.der().clone(),
            key_der: key.serialize_der(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join("pki")).unwrap();
    std::fs::write(dir.join("pki").join(name), text).unwrap();
}

fn provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// A rustls server config: `leaf`, the ALPN protocols offered, and when `client_ca` is set
/// a client certificate signed by it is required.
fn server_config(leaf: &Leaf, alpn: &[&[u8]], client_ca: Option<&Ca>) -> Arc<ServerConfig> {
    provider();
    let b = ServerConfig::builder();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            b.with_client_cert_verifier(
                WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::try_from(leaf.key_der.clone()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

// ---------------------------------------------------------------------------------------------
// HTTPS backend (HTTP/1.1 over rustls)
// ---------------------------------------------------------------------------------------------

/// What a TLS backend saw.
#[derive(Default)]
struct Seen {
    /// Completed handshakes.
    handshakes: AtomicUsize,
    /// Requests other than `/health`.
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    /// SNI of each handshake (None: none sent).
    sni: Mutex<Vec<Option<String>>>,
    /// Whether each handshake presented a client certificate.
    client_certs: Mutex<Vec<bool>>,
    /// Host header of each request.
    hosts: Mutex<Vec<String>>,
}

fn listener() -> (tokio::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (tokio::net::TcpListener::from_std(l).unwrap(), port)
}

/// The request's `Host` header ("" without one).
fn host_of(req: &Request<Incoming>) -> String {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok());
    host.unwrap_or("").to_string()
}

/// A server on a free port handing every connection, with a clone of `state`, to
/// `serve` on a task of its own; returns the port and `state`.
fn accept_loop<S, F, Fut>(state: Arc<S>, serve: F) -> (u16, Arc<S>)
where
    S: Send + Sync + 'static,
    F: Fn(tokio::net::TcpStream, Arc<S>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (l, port) = listener();
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(serve(tcp, st.clone()));
        }
    });
    (port, state)
}

/// An HTTPS/1.1 server answering `{"backend":"tls","path":..}`.
fn https_backend(cfg: Arc<ServerConfig>) -> (u16, Arc<Seen>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    accept_loop(Arc::new(Seen::default()), move |tcp, st| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            {
                let conn = tls.get_ref().1;
                st.sni
                    .lock()
                    .unwrap()
                    .push(conn.server_name().map(str::to_string));
                st.client_certs
                    .lock()
                    .unwrap()
                    .push(conn.peer_certificates().is_some_and(|c| !c.is_empty()));
            }
            st.handshakes.fetch_add(1, Ordering::SeqCst);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let st = st.clone();
                async move {
                    let path = req.uri().path().to_string();
                    if path == "/health" {
                        st.health_hits.fetch_add(1, Ordering::SeqCst);
                    } else {
                        st.hits.fetch_add(1, Ordering::SeqCst);
                    }
                    let host = host_of(&req);
                    st.hosts.lock().unwrap().push(host);
                    let body = serde_json::json!({"backend": "tls", "path": path}).to_string();
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    })
}

/// The gateway config of one HTTPS upstream `u` at `127.0.0.1:port` behind route `/t`.
fn tls_gateway(cfg: Cfg, port: u16, tls: &str, extra: &str) -> Gateway {
    cfg.upstream(
        "u",
        &[target_port(port)],
        &format!("tls: {tls}\nretries: 0\n{extra}"),
    )
    .route("r", &["/t"], "u", "")
    .start()
}

async fn get(gw: &Gateway, path: &str) -> (u16, String) {
    let r = gw
        .client
        .get(gw.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}\n{}", gw.stderr()));
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let ca = Ca::new("upstream CA");
    let (port, seen) = https_backend(server_config(&ca.server(), &[b"http/1.1"], None));
    let cfg = Cfg::new();
    write(cfg.dir.path(), "ca.pem", &ca.pem());
    let gw = tls_gateway(cfg, port, "{ ca: pki/ca.pem }", "");

    let (status, body) = get(&gw, "/t/x").await;
    assert_eq!(status, 200, "{body}\n{}", gw.stderr());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["backend"], "tls");
    assert_eq!(v["path"], "/t/x");
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
    // An IP target: verified against the certificate's IP entry, no SNI sent.
    assert_eq!(seen.sni.lock().unwrap()[0], None);
    assert!(!seen.client_certs.lock().unwrap()[0]);

    // Pooled: the next requests reuse the verified connection.
    for _ in 0..3 {
        assert_eq!(get(&gw, "/t/y").await.0, 200);
    }
    assert_eq!(seen.hits.load(Ordering::SeqCst), 4);
    assert_eq!(
        seen.handshakes.load(Ordering::SeqCst),
        1,
        "connection not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_is_sent_and_checked() {
    let ca = Ca::new("upstream CA");
    let (port, seen) = https_backend(server_config(&ca.server(), &[b"http/1.1"], None));
    let cfg = Cfg::new();
    write(cfg.dir.path(), "ca.pem", &ca.pem());
    // The certificate names localhost: that SNI is sent and verifies.
    let cfg = cfg
        .upstream(
            "good",
            &[target_port(port)],
            "tls: { ca: pki/ca.pem, sni: localhost }\nretries: 0",
        )
        .upstream(
            "wrong_name",
            &[target_port(port)],
            "tls: { ca: pki/ca.pem, sni: billing.internal }\nretries: 0",
        )
        .route("good", &["/good"], "good", "")
        .route("bad", &["/bad"], "wrong_name", "");
    let gw = cfg.start();
    assert_eq!(get(&gw, "/good").await.0, 200);
    assert_eq!(seen.sni.lock().unwrap()[0].as_deref(), Some("localhost"));

    let (status, body) = get(&gw, "/bad").await;
    assert_eq!(status, 502, "{body}");
    assert_error_body(&body, "bad_gateway");
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        1,
        "a request reached a target whose name does not match"
    );
    let log = gw.stderr();
    assert!(
        log.contains("TLS handshake with upstream target failed")
            && log.contains("does not match the server name"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_502_json_with_a_clear_log_line() {
    let ca = Ca::new("upstream CA");
    let other = Ca::new("some other CA");
    let (port, seen) = https_backend(server_config(&ca.server(), &[b"http/1.1"], None));
    let cfg = Cfg::new();
    write(cfg.dir.path(), "other.pem", &other.pem());
    let gw = tls_gateway(cfg, port, "{ ca: pki/other.pem }", "");

    let (status, body) = get(&gw, "/t/x").await;
    assert_eq!(status, 502, "{body}");
    let v = assert_error_body(&body, "bad_gateway");
    // Nothing of the upstream's or rustls's text in the body.
    assert!(
        !body.contains("Issuer") && !body.contains("127.0.0.1"),
        "{v}"
    );
    assert_eq!(seen.hits.load(Ordering::SeqCst), 0);
    let log = gw.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake with upstream target failed"))
        .unwrap_or_else(|| panic!("no handshake failure logged:\n{log}"));
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("unknown issuer"), "{line}");
    let m = gw.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "upstream_tls_handshake_failures_total",
            &[("upstream", "u"), ("target", &format!("127.0.0.1:{port}"))]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_accepts_any_certificate() {
    let ca = Ca::new("self-made CA nobody trusts");
    let (port, seen) = https_backend(server_config(&ca.server(), &[b"http/1.1"], None));
    let gw = tls_gateway(Cfg::new(), port, "{ verify: false }", "");
    let (status, body) = get(&gw, "/t/v").await;
    assert_eq!(status, 200, "{body}\n{}", gw.stderr());
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_upstream_gets_the_client_certificate() {
    let ca = Ca::new("upstream CA");
    let clients = Ca::new("client CA");
    let (port, seen) = https_backend(server_config(&ca.server(), &[b"http/1.1"], Some(&clients)));
    let client = clients.client("gatehouse");
    let cfg = Cfg::new();
    write(cfg.dir.path(), "ca.pem", &ca.pem());
    write(cfg.dir.path(), "gw.pem", &client.pem);
    write(cfg.dir.path(), "gw.key", &client.key_pem);
    let target = target_port(port);
    let gw = cfg
        .upstream(
            "mtls",
            std::slice::from_ref(&target),
            "tls: { ca: pki/ca.pem, client_cert: pki/gw.pem, client_key: pki/gw.key }\nretries: 0",
        )
        .upstream("nocert", &[target], "tls: { ca: pki/ca.pem }\nretries: 0")
        .route("mtls", &["/mtls"], "mtls", "")
        .route("nocert", &["/nocert"], "nocert", "")
        .start();

    let (status, body) = get(&gw, "/mtls").await;
    assert_eq!(status, 200, "{body}\n{}", gw.stderr());
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
    assert!(seen.client_certs.lock().unwrap().iter().all(|c| *c));

    // Same target, no client certificate: the upstream refuses the handshake.
    let (status, body) = get(&gw, "/nocert").await;
    assert_eq!(status, 502, "{body}");
    assert_error_body(&body, "bad_gateway");
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
    // The mTLS upstream's pooled connection (same address) was not handed to the other.
    assert_eq!(get(&gw, "/mtls").await.0, 200);
    assert_eq!(get(&gw, "/nocert").await.0, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_tls_upstream_run_over_tls() {
    let ca = Ca::new("upstream CA");
    let other = Ca::new("other CA");
    let (port, seen) = https_backend(server_config(&ca.server(), &[b"http/1.1"], None));
    let cfg = Cfg::new();
    write(cfg.dir.path(), "ca.pem", &ca.pem());
    write(cfg.dir.path(), "other.pem", &other.pem());
    let target = target_port(port);
    let gw = cfg
        .upstream(
            "good",
            std::slice::from_ref(&target),
            &format!("tls: {{ ca: pki/ca.pem }}\n{HC_HTTP}"),
        )
        .upstream(
            "untrusted",
            &[target],
            &format!("tls: {{ ca: pki/other.pem }}\n{HC_HTTP}"),
        )
        .route("good", &["/good"], "good", "")
        .route("untrusted", &["/untrusted"], "untrusted", "")
        .start();

    // /health requests reached the TLS server: the checks speak TLS.
    assert!(
        wait_until(Duration::from_secs(5), || seen
            .health_hits
            .load(Ordering::SeqCst)
            >= 2)
        .await,
        "no health check over TLS\n{}",
        gw.stderr()
    );
    // A target whose certificate does not verify is unhealthy: 503, not a 502 per request.
    let mut status = 0;
    for _ in 0..50 {
        status = get(&gw, "/untrusted").await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503, "{}", gw.stderr());
    assert_eq!(get(&gw, "/good").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_host_is_the_host_and_server_name_of_the_checks() {
    // A TLS upstream reached by IP whose certificate names api.internal only: its checks
    // pass with health_check.host (SNI and Host api.internal), and fail without.
    let ca = Ca::new("upstream CA");
    let leaf = ca.issue(CertificateParams::new(vec!["api.internal".to_string()]).unwrap());
    let (tls_port, seen) = https_backend(server_config(&leaf, &[b"http/1.1"], None));
    // A plain upstream whose /health answers 200 only to Host: status.internal.
    let (plain_port, plain_hosts) = host_checking_backend("status.internal");
    let cfg = Cfg::new();
    write(cfg.dir.path(), "ca.pem", &ca.pem());
    let tls_target = [format!("{{ addr: \"127.0.0.1:{tls_port}\" }}")];
    let plain_target = [format!("{{ addr: \"127.0.0.1:{plain_port}\" }}")];
    let hc = "health_check: { path: /health, interval: 200ms, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1";
    let gw = cfg
        .upstream(
            "tls-named",
            &tls_target,
            &format!("tls: {{ ca: pki/ca.pem }}\n{hc}, host: api.internal }}"),
        )
        .upstream(
            "tls-unnamed",
            &tls_target,
            &format!("tls: {{ ca: pki/ca.pem }}\n{hc} }}"),
        )
        .upstream(
            "plain-named",
            &plain_target,
            &format!("{hc}, host: \"status.internal:8080\" }}"),
        )
        .upstream("plain-unnamed", &plain_target, &format!("{hc} }}"))
        .route("r", &["/r"], "tls-named", "")
        .start();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let plain_addr = format!("127.0.0.1:{plain_port}");
    let wait = Duration::from_secs(5);
    assert!(
        gw.wait_target_health("tls-unnamed", &tls_addr, false, wait)
            .await,
        "a check whose server name is the IP must fail\n{}",
        gw.stderr()
    );
    assert!(
        gw.wait_target_health("plain-unnamed", &plain_addr, false, wait)
            .await
    );
    // Healthy after passing checks (each state is checked again after the other failed).
    for _ in 0..2 {
        assert!(
            gw.wait_target_health("tls-named", &tls_addr, true, wait)
                .await,
            "{}",
            gw.stderr()
        );
        assert!(
            gw.wait_target_health("plain-named", &plain_addr, true, wait)
                .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen.health_hits.load(Ordering::SeqCst) >= 2,
        "the named checks reached /health over TLS"
    );
    let sni = seen.sni.lock().unwrap().clone();
    assert!(sni.contains(&Some("api.internal".to_string())), "{sni:?}");
    let hosts = seen.hosts.lock().unwrap().clone();
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| h == "api.internal"),
        "only checks that passed the handshake reach the server: {hosts:?}"
    );
    let plain = plain_hosts.lock().unwrap().clone();
    assert!(
        plain.contains(&"status.internal:8080".to_string()),
        "{plain:?}"
    );
    assert!(plain.contains(&plain_addr), "{plain:?}");
}

/// A plain HTTP/1.1 server whose `/health` answers 200 to `Host: <name>` (any port) and 421
/// to any other Host; records every Host it sees.
fn host_checking_backend(name: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    accept_loop(
        Arc::default(),
        move |tcp, seen: Arc<Mutex<Vec<String>>>| async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let host = host_of(&req);
                seen.lock().unwrap().push(host.clone());
                let ok = host.split(':').next() == Some(name);
                async move {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(if ok { 200 } else { 421 })
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        },
    )
}

#[test]
fn health_check_host_is_checked_at_load() {
    let up = |extra: &str| {
        format!(
            "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:1\" }}]\n{extra}routes: []\n"
        )
    };
    for (extra, want) in [
        (
            "    health_check: { path: /h, host: \"http://api.internal\" }\n",
            "is not a Host value",
        ),
        (
            "    health_check: { path: /h, host: \"api.internal/x\" }\n",
            "is not a Host value",
        ),
        (
            "    health_check: { host: api.internal }\n",
            "has nothing to act on",
        ),
        (
            "    tls: { verify: false }\n    health_check: { host: \"bad_name..internal\" }\n",
            "is not a valid TLS server name",
        ),
    ] {
        let (code, out) = Gateway::validate(&up(extra));
        assert_ne!(code, 0, "{extra}: {out}");
        assert!(
            out.contains("upstreams[0].health_check.host: ") && out.contains(want),
            "{extra}: {out}"
        );
        assert!(out.contains("(line "), "{out}");
    }
    for ok in [
        "    health_check: { path: /h, host: \"api.internal:8080\" }\n",
        "    tls: { verify: false }\n    health_check: { host: api.internal }\n",
    ] {
        let (code, out) = Gateway::validate(&up(ok));
        assert_eq!(code, 0, "{ok}: {out}");
    }
}

#[test]
fn tls_settings_are_checked_at_load() {
    let dir = tempfile::TempDir::new().unwrap();
    let ca = Ca::new("c");
    let leaf = ca.server();
    write(dir.path(), "ca.pem", &ca.pem());
    write(dir.path(), "leaf.pem", &leaf.pem);
    write(dir.path(), "leaf.key", &leaf.key_pem);
    write(dir.path(), "garbage.pem", "not a certificate\n");
    let other = ca.server();
    write(dir.path(), "other.key", &other.key_pem);
    let d = dir.path().display();
    let check = |tls: &str, extra: &str| -> (i32, String) {
        let yaml = format!(
            "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:1\" }}]\n    tls: {tls}\n{extra}routes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n"
        );
        Gateway::validate(&yaml)
    };
    let (code, out) = check(
        &format!(
            "{{ ca: {d}/pki/ca.pem, client_cert: {d}/pki/leaf.pem, client_key: {d}/pki/leaf.key }}"
        ),
        "",
    );
    assert_eq!(code, 0, "{out}");

    let (code, out) = check(&format!("{{ client_cert: {d}/pki/leaf.pem }}"), "");
    assert_ne!(code, 0);
    assert!(
        out.contains("upstreams[0].tls.client_cert")
            && out.contains("line 4")
            && out.contains("client_key"),
        "{out}"
    );
    let (code, out) = check(&format!("{{ ca: {d}/pki/missing.pem }}"), "");
    assert_ne!(code, 0);
    assert!(
        out.contains("upstreams[0].tls.ca") && out.contains("missing.pem"),
        "{out}"
    );
    let (code, out) = check(&format!("{{ ca: {d}/pki/garbage.pem }}"), "");
    assert_ne!(code, 0);
    assert!(out.contains("no PEM certificate"), "{out}");
    let (code, out) = check(
        &format!("{{ client_cert: {d}/pki/leaf.pem, client_key: {d}/pki/other.key }}"),
        "",
    );
    assert_ne!(code, 0);
    assert!(out.contains("cannot be used together"), "{out}");
    let (code, out) = check("{ verfy: false }", "");
    assert_ne!(code, 0);
    assert!(out.contains("verfy"), "{out}");
    // Protocols that cannot work with (or without) TLS.
    let (code, out) = check("{ verify: true }", "    protocol: h2c\n");
    assert_ne!(code, 0);
    assert!(
        out.contains("upstreams[0].protocol") && out.contains("h2c"),
        "{out}"
    );
    let yaml = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:1\" }]\n    protocol: h2\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n";
    let (code, out) = Gateway::validate(yaml);
    assert_ne!(code, 0);
    assert!(
        out.contains("needs `tls`") && out.contains("line 4"),
        "{out}"
    );
    let yaml = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:1\" }]\n    protocol: h3\nroutes: []\n";
    let (code, out) = Gateway::validate(yaml);
    assert_ne!(code, 0);
    assert!(out.contains("h3"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// gRPC over HTTP/2 (h2 crate): a server and a client
// ---------------------------------------------------------------------------------------------

/// One gRPC message frame: uncompressed flag, big-endian length, payload.
fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

/// Complete messages taken off the front of `buf`.
fn unframe(buf: &mut BytesMut) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).to_vec());
    }
    out
}

fn trailers(status: u32, message: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", status.to_string().parse().unwrap());
    if !message.is_empty() {
        t.insert("grpc-message", message.parse().unwrap());
    }
    t
}

/// What the gRPC server saw.
#[derive(Default)]
struct GrpcSeen {
    calls: AtomicUsize,
    te_trailers: AtomicUsize,
    tls: AtomicUsize,
    authorities: Mutex<Vec<String>>,
}

/// A gRPC service `test.Echo` over HTTP/2: over TLS (ALPN h2) when `tls` is set, else h2c.
/// - `Unary`: one reply `echo:<request>`;
/// - `ServerStream`: the request is a count n, the replies `msg-0` .. `msg-(n-1)`;
/// - `Bidi`: each message is echoed as it arrives;
/// - `Fail`: trailers-only NOT_FOUND (5);
/// - `Slow`: answers after 1.5 s.
fn grpc_server(tls: Option<Arc<ServerConfig>>) -> (u16, Arc<GrpcSeen>) {
    accept_loop(Arc::new(GrpcSeen::default()), move |tcp, st| {
        let tls = tls.clone();
        async move {
            match tls {
                Some(cfg) => {
                    let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                        return;
                    };
                    st.tls.fetch_add(1, Ordering::SeqCst);
                    serve_h2(s, st).await
                }
                None => serve_h2(tcp, st).await,
            }
        }
    })
}

async fn serve_h2<S>(io: S, st: Arc<GrpcSeen>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        let st = st.clone();
        tokio::spawn(async move {
            let _ = grpc_call(req, respond, st).await;
        });
    }
}

async fn grpc_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    st: Arc<GrpcSeen>,
) -> Result<(), h2::Error> {
    st.calls.fetch_add(1, Ordering::SeqCst);
    if req.headers().get("te").is_some_and(|v| v == "trailers") {
        st.te_trailers.fetch_add(1, Ordering::SeqCst);
    }
    st.authorities.lock().unwrap().push(
        req.uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    );
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    let ok = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let mut buf = BytesMut::new();
    match path.as_str() {
        "/test.Echo/Bidi" => {
            let mut out = respond.send_response(ok, false)?;
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                for m in unframe(&mut buf) {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&m);
                    out.send_data(frame(&reply), false)?;
                }
            }
            out.send_trailers(trailers(0, ""))?;
        }
        "/test.Echo/Fail" => {
            let r = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "5")
                .header("grpc-message", "no such thing")
                .body(())
                .unwrap();
            respond.send_response(r, true)?;
        }
        _ => {
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
            }
            let msgs = unframe(&mut buf);
            let first = msgs.first().cloned().unwrap_or_default();
            if path == "/test.Echo/Slow" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let mut out = respond.send_response(ok, false)?;
            if path == "/test.Echo/ServerStream" {
                let n: usize = String::from_utf8_lossy(&first).parse().unwrap_or(0);
                for i in 0..n {
                    out.send_data(frame(format!("msg-{i}").as_bytes()), false)?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } else {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&first);
                out.send_data(frame(&reply), false)?;
            }
            out.send_trailers(trailers(0, ""))?;
        }
    }
    Ok(())
}

/// A gRPC client connection to the gateway: h2 over TLS (ALPN) with `ca`, else h2c.
struct GrpcClient {
    send: h2::client::SendRequest<Bytes>,
    base: String,
}

/// What a call got back.
#[derive(Debug)]
struct GrpcReply {
    http_status: u16,
    headers: http::HeaderMap,
    messages: Vec<String>,
    trailers: Option<http::HeaderMap>,
}

impl GrpcReply {
    /// `grpc-status` from the trailers, or from the headers of a trailers-only answer.
    fn grpc_status(&self) -> Option<u32> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    fn grpc_message(&self) -> String {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| self.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

impl GrpcClient {
    async fn connect(port: u16, ca: Option<&Ca>) -> GrpcClient {
        let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let send = match ca {
            Some(ca) => {
                provider();
                let mut roots = RootCertStore::empty();
                roots.add(ca.der()).unwrap();
                let mut cfg = ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"h2".to_vec()];
                let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let (send, conn) = h2::client::handshake(tls).await.unwrap();
                tokio::spawn(conn);
                send
            }
            None => {
                let (send, conn) = h2::client::handshake(tcp).await.unwrap();
                tokio::spawn(conn);
                send
            }
        };
        let scheme = if ca.is_some() { "https" } else { "http" };
        GrpcClient {
            send,
            base: format!("{scheme}://localhost:{port}"),
        }
    }

    fn request(&self, path: &str, extra: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// A call sending `messages` then ending the request stream.
    async fn call(&mut self, path: &str, messages: &[&str], extra: &[(&str, &str)]) -> GrpcReply {
        let mut send = self.send.clone().ready().await.unwrap();
        let (resp, mut stream) = send.send_request(self.request(path, extra), false).unwrap();
        // A refusal may answer (and close the stream) before the request stream ends: the
        // answer is what the caller checks, so a send after it is not an error here.
        for m in messages {
            if stream.send_data(frame(m.as_bytes()), false).is_err() {
                break;
            }
        }
        let _ = stream.send_data(Bytes::new(), true);
        read_reply(resp).await
    }
}

async fn read_reply(resp: h2::client::ResponseFuture) -> GrpcReply {
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("no response in 10 s")
        .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    GrpcReply {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        messages: unframe(&mut buf)
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect(),
        trailers,
    }
}

/// Unary, server stream, bidirectional stream and an error status, through `client`.
async fn grpc_suite(client: &mut GrpcClient, seen: &GrpcSeen) {
    let r = client.call("/test.Echo/Unary", &["hello"], &[]).await;
    assert_eq!(r.http_status, 200, "{r:?}");
    assert_eq!(r.messages, vec!["echo:hello".to_string()], "{r:?}");
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    assert!(
        r.trailers.is_some(),
        "grpc-status must come as a trailer: {r:?}"
    );
    assert!(
        seen.te_trailers.load(Ordering::SeqCst) >= 1,
        "te: trailers not forwarded"
    );

    let r = client.call("/test.Echo/ServerStream", &["5"], &[]).await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}");
    let want: Vec<String> = (0..5).map(|i| format!("msg-{i}")).collect();
    assert_eq!(r.messages, want);

    let r = client.call("/test.Echo/Fail", &["x"], &[]).await;
    assert_eq!(r.http_status, 200);
    assert_eq!(r.grpc_status(), Some(5), "{r:?}");
    assert_eq!(r.grpc_message(), "no such thing");

    // Bidirectional: each echo arrives before the next message is sent.
    let mut send = client.send.clone().ready().await.unwrap();
    let (resp, mut stream) = send
        .send_request(client.request("/test.Echo/Bidi", &[]), false)
        .unwrap();
    stream.send_data(frame(b"one"), false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("bidi: no response headers")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    for word in ["one", "two", "three"] {
        if word != "one" {
            stream.send_data(frame(word.as_bytes()), false).unwrap();
        }
        let got = loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.data())
                .await
                .expect("bidi: echo did not arrive while the stream is open")
                .unwrap()
                .unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            let m = unframe(&mut buf);
            if !m.is_empty() {
                break m;
            }
        };
        assert_eq!(got, vec![format!("echo:{word}").into_bytes()]);
    }
    stream.send_data(Bytes::new(), true).unwrap();
    while let Some(c) = body.data().await {
        assert!(c.unwrap().is_empty());
    }
    let t = body.trailers().await.unwrap().expect("bidi: no trailers");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
}

/// The plain listener with h2c, and the gRPC server on `port` as upstream `grpc` (`extra`
/// at its level) for `/test.Echo`.
fn h2c_grpc(port: u16, extra: &str) -> Cfg {
    Cfg::new()
        .server("h2c: true")
        .upstream(
            "grpc",
            &[target_port(port)],
            &format!("protocol: h2c\n{extra}"),
        )
        .route("grpc", &["/test.Echo"], "grpc", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_from_the_plain_listener() {
    let (port, seen) = grpc_server(None);
    let gw = h2c_grpc(port, "").start();
    let mut c = GrpcClient::connect(gw.port, None).await;
    grpc_suite(&mut c, &seen).await;
    assert_eq!(seen.calls.load(Ordering::SeqCst), 4);
    // HTTP/1.1 clients still work on the same listener.
    let r = gw.client.get(gw.url("/nothing")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_tls_from_the_tls_listener() {
    let upstream_ca = Ca::new("upstream CA");
    let (port, seen) = grpc_server(Some(server_config(&upstream_ca.server(), &[b"h2"], None)));
    let tls_port = free_port();
    let cfg = Cfg::new();
    let listener_ca = Ca::new("listener CA");
    let listener = listener_ca.server();
    write(cfg.dir.path(), "listener.pem", &listener.pem);
    write(cfg.dir.path(), "listener.key", &listener.key_pem);
    write(cfg.dir.path(), "upstream-ca.pem", &upstream_ca.pem());
    let _gw = cfg
        .server(&format!(
            "tls:\n  listen: [\"127.0.0.1:{tls_port}\"]\n  cert: pki/listener.pem\n  key: pki/listener.key"
        ))
        .upstream(
            "grpc",
            &[target_port(port)],
            "protocol: h2\ntls: { ca: pki/upstream-ca.pem, sni: localhost }",
        )
        .route("grpc", &["/test.Echo"], "grpc", "")
        .start();
    let mut c = GrpcClient::connect(tls_port, Some(&listener_ca)).await;
    grpc_suite(&mut c, &seen).await;
    assert_eq!(
        seen.tls.load(Ordering::SeqCst),
        1,
        "one multiplexed upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refusals_of_grpc_requests_are_grpc_statuses() {
    let (port, seen) = grpc_server(None);
    let gw = h2c_grpc(port, "retries: 0\ntimeouts: { read: 500ms }")
        .upstream("dead", &[format!("{{ addr: \"{}\" }}", dead_addr())], "retries: 0")
        .route(
            "locked",
            &["/test.Locked"],
            "grpc",
            "plugins:\n  - name: key-auth",
        )
        .route("down", &["/test.Down"], "dead", "")
        .top("consumers:\n  - username: alice\n    keyauth_credentials: [{ key: alice-key-0123456789 }]\n")
        .start();
    let mut c = GrpcClient::connect(gw.port, None).await;

    let cases: [(&str, u32); 4] = [
        ("/test.Locked/Call", 16), // UNAUTHENTICATED
        ("/no.Such/Call", 12),     // UNIMPLEMENTED
        ("/test.Down/Call", 14),   // UNAVAILABLE
        ("/test.Echo/Slow", 4),    // DEADLINE_EXCEEDED (read timeout)
    ];
    for (path, want) in cases {
        let r = c.call(path, &["x"], &[]).await;
        assert_eq!(r.http_status, 200, "{path}: {r:?}");
        assert_eq!(r.grpc_status(), Some(want), "{path}: {r:?}");
        assert_eq!(
            r.headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/grpc"),
            "{path}"
        );
        assert!(
            r.messages.is_empty(),
            "{path}: a JSON body reached a gRPC client: {r:?}"
        );
        assert!(!r.grpc_message().is_empty(), "{path}");
    }
    // The key opens the route.
    let r = c
        .call(
            "/test.Locked/Call",
            &["k"],
            &[("x-api-key", "alice-key-0123456789")],
        )
        .await;
    assert_eq!(r.grpc_status(), Some(0), "{r:?}\n{}", gw.stderr());
    assert_eq!(
        seen.calls.load(Ordering::SeqCst),
        2,
        "Slow and the keyed call"
    );

    // A JSON client still gets JSON.
    let (status, body) = get(&gw, "/test.Down/Call").await;
    assert_eq!(status, 502);
    assert_error_body(&body, "bad_gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_that_speaks_http1_is_a_502_not_a_hang() {
    let a = Backend::start("a");
    let gw = one_upstream(&[target(&a)], "protocol: h2c\nretries: 0", "/t", "");
    let r = tokio::time::timeout(Duration::from_secs(10), gw.client.get(gw.url("/t")).send())
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    assert_error_body(&r.text().await.unwrap(), "bad_gateway");
}

// ---------------------------------------------------------------------------------------------
// WebSocket tunnels: idle timeout (tokio-tungstenite client and server)
// ---------------------------------------------------------------------------------------------

/// What the WebSocket backend saw.
#[derive(Default)]
struct WsSeen {
    opened: AtomicUsize,
    closed: AtomicUsize,
    echoed: AtomicUsize,
}

/// An HTTP/1.1 server (hyper) that upgrades `Upgrade: websocket` requests and echoes every
/// message (tungstenite); any other request is answered after `?ms=N` milliseconds.
fn ws_backend() -> (u16, Arc<WsSeen>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    accept_loop(Arc::new(WsSeen::default()), |tcp, st| async move {
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let st = st.clone();
            async move {
                let key = req
                    .headers()
                    .get("sec-websocket-key")
                    .map(|k| derive_accept_key(k.as_bytes()));
                let Some(accept) = key else {
                    let ms: u64 = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("ms="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    return Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                        Bytes::from_static(b"{\"plain\":true}"),
                    )));
                };
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(up) = on_upgrade.await else {
                        return;
                    };
                    st.opened.fetch_add(1, Ordering::SeqCst);
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(up),
                        Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_ok() {
                            st.echoed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    st.closed.fetch_add(1, Ordering::SeqCst);
                });
                Ok(Response::builder()
                    .status(101)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .header("sec-websocket-accept", accept)
                    .body(Full::new(Bytes::new()))
                    .unwrap())
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades()
            .await;
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket client connected to `path` through the gateway on `port`.
async fn ws_connect(port: u16, path: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}{path}"), tcp)
        .await
        .expect("WebSocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `text` and waits (at most 3 s) for its echo.
async fn ws_echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send {text}: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => Ok(()),
        other => Err(format!("no echo of {text}: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_use_the_routes_idle_timeout_not_the_read_timeout() {
    use futures_util::StreamExt;
    let (port, seen) = ws_backend();
    // Both limits a tunnel would otherwise run into are 1 s: the upstream's read timeout
    // and the client side's body timeout.
    let cfg = Cfg::new()
        .server("body_timeout: 1s")
        .upstream(
            "ws",
            &[format!("{{ addr: \"127.0.0.1:{port}\" }}")],
            "retries: 0\ntimeouts: { read: 1s }\npassive: { max_fails: 2, fail_timeout: 30s }",
        )
        .route("ws", &["/ws"], "ws", "websocket_idle_timeout: 4s");
    let gw = start_with_access_log(cfg, "stdout");

    // Idle for 2 s (twice timeouts.read): still open, still echoing.
    let quiet = async {
        let mut ws = ws_connect(gw.port, "/ws/quiet").await;
        ws_echo(&mut ws, "before").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ws_echo(&mut ws, "after 2 s idle").await
    };
    // Messages every 1.5 s for 7.5 s (longer than the idle timeout): never cut.
    let busy = async {
        let mut ws = ws_connect(gw.port, "/ws/busy").await;
        for i in 0..6 {
            ws_echo(&mut ws, &format!("tick {i}")).await?;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        ws_echo(&mut ws, "last").await
    };
    // Idle for longer than 4 s: closed, between the idle timeout and a margin.
    let idle = async {
        let mut ws = ws_connect(gw.port, "/ws/idle").await;
        ws_echo(&mut ws, "only").await?;
        let since = std::time::Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        let took = since.elapsed();
        match end {
            Ok(None)
            | Ok(Some(Err(_)))
            | Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => {}
            other => return Err(format!("idle tunnel not closed: {other:?}")),
        }
        if took < Duration::from_millis(3800) || took > Duration::from_secs(7) {
            return Err(format!("idle tunnel closed after {took:?}, want ~4 s"));
        }
        Ok(())
    };
    // A request on the same route that is not switched keeps timeouts.read: 504 after 1 s.
    let plain = async {
        let started = std::time::Instant::now();
        let (status, body) = get(&gw, "/ws/plain?ms=2500").await;
        (status, body, started.elapsed())
    };
    let (quiet, busy, idle, (status, body, took)) = tokio::join!(quiet, busy, idle, plain);
    quiet.unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr()));
    busy.unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr()));
    idle.unwrap_or_else(|e| panic!("{e}\n{}", gw.stderr()));
    assert_eq!(status, 504, "{body}");
    assert_error_body(&body, "gateway_timeout");
    assert!(took < Duration::from_millis(2400), "took {took:?}");

    assert_eq!(seen.opened.load(Ordering::SeqCst), 3);
    assert!(
        wait_until(Duration::from_secs(3), || seen
            .closed
            .load(Ordering::SeqCst)
            >= 1)
        .await,
        "the upstream side of the idle tunnel was not closed"
    );
    // The ended tunnel is logged as its 101, not as a 504, and is no target failure: with the
    // plain request's timeout counted, a second failure would have ejected the target
    // (max_fails: 2), yet a new tunnel still opens.
    let logged = wait_until(Duration::from_secs(3), || {
        gw.stdout().lines().any(|l| l.contains("/ws/idle"))
    })
    .await;
    assert!(logged, "no access log line:\n{}", gw.stdout());
    let line = gw
        .stdout()
        .lines()
        .find(|l| l.contains("/ws/idle"))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 101, "{line}");
    assert!(v["error"].is_null(), "{line}");
    assert!(
        !gw.stderr()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("/ws/idle")),
        "an idle tunnel's end is no error:\n{}",
        gw.stderr()
    );
    assert!(!gw.stderr().contains("ejected"), "{}", gw.stderr());
    let mut ws = ws_connect(gw.port, "/ws/again").await;
    ws_echo(&mut ws, "again").await.unwrap();
}

#[test]
fn websocket_idle_timeout_is_checked_at_load() {
    let base = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:1\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n";
    for (value, want) in [
        (
            "0",
            "routes[0].websocket_idle_timeout: must be greater than 0 (line 8)",
        ),
        (
            "8d",
            "routes[0].websocket_idle_timeout: must be at most 7d (line 8)",
        ),
        ("10", "routes[0].websocket_idle_timeout"),
    ] {
        let (code, out) =
            Gateway::validate(&format!("{base}    websocket_idle_timeout: {value}\n"));
        assert_ne!(code, 0, "{value}: {out}");
        assert!(out.contains(want), "{value}: {out}");
        assert!(out.contains("line 8"), "{value}: {out}");
    }
    let (code, out) = Gateway::validate(&format!("{base}    websocket_idle_timeout: 15m\n"));
    assert_eq!(code, 0, "{out}");
}

// ---------------------------------------------------------------------------------------------
// gRPC deadlines: tonic's client and server (raw-bytes codec) over hyper's HTTP/2
// ---------------------------------------------------------------------------------------------

/// Messages as raw bytes: the calls below need no protobuf schema.
#[derive(Default, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// What the tonic server saw: calls started and calls that ran to their end.
#[derive(Default)]
struct SlowSeen {
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// `test.Slow/Wait`: answers `done:<request>` after the number of milliseconds in the
/// request.
#[derive(Clone)]
struct SlowService(Arc<SlowSeen>);

impl tonic::server::UnaryService<Bytes> for SlowService {
    type Response = Bytes;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tonic::Response<Bytes>, tonic::Status>> + Send>,
    >;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let seen = self.0.clone();
        Box::pin(async move {
            seen.started.fetch_add(1, Ordering::SeqCst);
            let msg = req.into_inner();
            let ms: u64 = std::str::from_utf8(&msg)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            seen.finished.fetch_add(1, Ordering::SeqCst);
            let mut out = b"done:".to_vec();
            out.extend_from_slice(&msg);
            Ok(tonic::Response::new(Bytes::from(out)))
        })
    }
}

/// A tonic gRPC server over h2c (hyper's HTTP/2 server) serving [`SlowService`].
fn tonic_slow_server() -> (u16, Arc<SlowSeen>) {
    accept_loop(Arc::new(SlowSeen::default()), |tcp, st| async move {
        let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let st = st.clone();
            async move {
                let mut grpc = tonic::server::Grpc::new(RawCodec);
                Ok::<_, std::convert::Infallible>(grpc.unary(SlowService(st), req).await)
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    })
}

/// hyper's HTTP/2 client connection as the service tonic's generic client calls through.
#[derive(Clone)]
struct H2Conn(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2Conn {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A tonic client over h2c to `port`.
async fn tonic_client(port: u16) -> tonic::client::Grpc<H2Conn> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let origin: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    tonic::client::Grpc::with_origin(H2Conn(send), origin)
}

/// One `test.Slow/Wait` call taking `ms` upstream, with `deadline` as its grpc-timeout.
async fn slow_call(
    client: &mut tonic::client::Grpc<H2Conn>,
    ms: u64,
    deadline: Option<Duration>,
) -> (Result<Bytes, tonic::Status>, Duration) {
    client.ready().await.unwrap();
    let mut req = tonic::Request::new(Bytes::from(ms.to_string()));
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    let started = std::time::Instant::now();
    let res = client
        .unary(
            req,
            http::uri::PathAndQuery::from_static("/test.Slow/Wait"),
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner);
    (res, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_clients_deadline_ends_the_call_with_deadline_exceeded() {
    let (port, seen) = tonic_slow_server();
    // Generous upstream and route limits: only the client's deadline is short.
    let gw = Cfg::new()
        .server("h2c: true")
        .upstream(
            "grpc",
            &[format!("{{ addr: \"127.0.0.1:{port}\" }}")],
            "protocol: h2c\nretries: 1\ntimeouts: { read: 10s }",
        )
        .route("grpc", &["/test.Slow"], "grpc", "timeout: 20s")
        .route("short", &["/test.Short"], "grpc", "timeout: 300ms")
        .start();
    let mut client = tonic_client(gw.port).await;

    // The call takes 3 s upstream; the client allows 400 ms (grpc-timeout: 400000u).
    let (res, took) = slow_call(&mut client, 3000, Some(Duration::from_millis(400))).await;
    let status = res.expect_err("the call must not succeed");
    assert_eq!(
        status.code(),
        tonic::Code::DeadlineExceeded,
        "{status:?}\n{}",
        gw.stderr()
    );
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "answered after {took:?}, want ~400 ms (not timeouts.read)"
    );
    // One attempt: no retry once the client's deadline has passed.
    assert_eq!(seen.started.load(Ordering::SeqCst), 1);

    // A deadline longer than the call: it completes.
    let (res, _) = slow_call(&mut client, 200, Some(Duration::from_secs(5))).await;
    assert_eq!(
        res.expect("call within its deadline"),
        Bytes::from_static(b"done:200")
    );
    // No deadline: the route's limits alone.
    let (res, _) = slow_call(&mut client, 100, None).await;
    assert_eq!(
        res.expect("call without deadline"),
        Bytes::from_static(b"done:100")
    );

    // The upstream stopped working on the abandoned call: it was cancelled, not finished.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        seen.finished.load(Ordering::SeqCst),
        2,
        "the abandoned call ran to its end upstream"
    );

    // A route timeout shorter than the client's deadline still wins.
    client.ready().await.unwrap();
    let mut req = tonic::Request::new(Bytes::from_static(b"3000"));
    req.set_timeout(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let res = client
        .unary(
            req,
            http::uri::PathAndQuery::from_static("/test.Short/Wait"),
            RawCodec,
        )
        .await;
    let took = started.elapsed();
    assert_eq!(res.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Only the route's own expiry is a route timeout.
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "route_timeouts_total", &[("route", "grpc")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "route_timeouts_total", &[("route", "short")]),
        Some(1.0)
    );
}

/// request-mirror on a WebSocket route: the tunnel works as without it, and the upgrade is
/// not copied to the shadow (counted as `upgrade`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_route_keeps_websocket_tunnels_and_does_not_copy_them() {
    let (port, seen) = ws_backend();
    let shadow = Backend::start("shadow");
    let gw = Cfg::new()
        .upstream("ws", &[format!("{{ addr: \"127.0.0.1:{port}\" }}")], "")
        .upstream("shadow", &[target(&shadow)], "")
        .route(
            "ws",
            &["/ws"],
            "ws",
            "plugins:\n  - name: request-mirror\n    config: { upstream: shadow }",
        )
        .start();
    let mut ws = ws_connect(gw.port, "/ws/m").await;
    for i in 0..3 {
        ws_echo(&mut ws, &format!("m{i}")).await.unwrap();
    }
    drop(ws);
    assert_eq!(seen.echoed.load(Ordering::SeqCst), 3);
    let mut upgrades = 0.0;
    for _ in 0..100 {
        let m = gw.metrics_text().await;
        upgrades = metric(
            &m,
            "mirror_dropped_total",
            &[
                ("route", "ws"),
                ("upstream", "shadow"),
                ("reason", "upgrade"),
            ],
        )
        .unwrap_or(0.0);
        if upgrades >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upgrades, 1.0);
    assert_eq!(shadow.hits(), 0);
}

/// Sequential requests to one upstream ride one pooled connection: the pool hands the idle
/// connection back for the next request (matched to its peer by the address recorded at
/// connect, without asking the kernel) instead of opening a new one each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_pooled_upstream_connection() {
    let b = Backend::start("b");
    let gw = one_route(&b, "/p", "");
    for i in 0..20 {
        let (status, body) = get(&gw, &format!("/p/{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(b.hits(), 20);
    assert_eq!(
        b.accepted(),
        1,
        "one upstream connection for 20 keep-alive requests"
    );
}
