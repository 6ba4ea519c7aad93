//! mtls-auth against the real binary, a real HTTPS listener with `client_auth` and real
//! rustls clients presenting certificates made here: subject and URI-SAN matches (the
//! consumer and the verified subject reach the upstream, client-sent copies of the subject
//! header in any spelling never do), 401 without a certificate (also on the plain-HTTP
//! listener, and as a gRPC status), 403 for a certificate of no consumer, another CA's
//! certificate refused at the handshake in both modes, acl on the consumer's roles, the
//! outcome metrics (across a reload), upstream hit counts, and the load errors with paths
//! and lines.
use crate::common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use std::path::Path;

/// A CA that issues client certificates.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    /// A client certificate and its key (one PEM, as reqwest's `Identity` reads it) whose
    /// subject renders as `CN=<cn>,O=<o>` (`o` absent: `CN=<cn>`), with URI SANs `uris`.
    fn client(&self, cn: &str, o: Option<&str>, uris: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        // RFC 4514 lists the RDNs last first: O before CN in the certificate.
        if let Some(o) = o {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }
}

/// An HTTPS client trusting the gateway's CA, presenting `identity` when given. One client
/// per identity: the certificate belongs to the connection.
fn client(server_ca: &str, identity: Option<&str>) -> reqwest::Client {
    let mut b = https_client_builder(server_ca);
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

const CONSUMERS: &str = "consumers:
  - username: partner-a
    roles: [partner]
    mtls_credentials: [{ subject: \"cn = partner-a, o=Acme\" }]
  - username: partner-b
    roles: [guest]
    mtls_credentials: [{ san: \"spiffe://acme/partner-b\" }]
";

const MTLS: &str = "plugins:
  - name: mtls-auth
    config: { upstream_header: X-Client-Subject }";

/// A gateway with an HTTPS listener on `tls_port` asking for client certificates of
/// `clients` in `mode`; routes `/p` (mtls-auth) and `/acl` (mtls-auth then acl: partner).
fn start(a: &Backend, tls_port: u16, mode: &str, clients: &Ca) -> (Gateway, String) {
    let (cfg, server_ca) = Cfg::new().tls_listener(
        tls_port,
        &format!("client_auth: {{ ca: tls/clients-ca.pem, mode: {mode} }}"),
    );
    std::fs::write(
        cfg.dir.path().join("tls/clients-ca.pem"),
        clients.cert.pem(),
    )
    .unwrap();
    let gw = cfg
        .upstream("u", &[target(a)], "")
        .route("p", &["/p"], "u", MTLS)
        .route(
            "acl",
            &["/acl"],
            "u",
            "plugins:\n  - name: mtls-auth\n  - name: acl\n    config: { allow_roles: [partner] }",
        )
        .top(CONSUMERS)
        .start();
    (gw, server_ca)
}

async fn get(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut r = c.get(url);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    let r = r.send().await.map_err(|e| format!("{e:?}"))?;
    let s = r.status().as_u16();
    Ok((s, r.text().await.unwrap_or_default()))
}

/// `a`'s last request came as `consumer` with the certificate's `subject` in one
/// X-Client-Subject header, and without the client's look-alikes (`x_client_subject`,
/// `x_Client-subject`), which the gateway drops.
fn sent_as(a: &Backend, consumer: &str, subject: &str) {
    let up = a.last_request().unwrap();
    assert_eq!(
        up.header_joined("x-consumer-username").as_deref(),
        Some(consumer)
    );
    assert_eq!(
        up.header_joined("x-client-subject").as_deref(),
        Some(subject)
    );
    // Underscore spellings some servers fold into X-Client-Subject.
    let look_alike =
        |n: &str| n.contains('_') && n.replace('_', "-").eq_ignore_ascii_case("x-client-subject");
    assert!(
        !up.headers.iter().any(|(n, _)| look_alike(n)),
        "{:?}",
        up.headers
    );
}

#[tokio::test]
async fn certificates_identify_consumers_on_an_optional_listener() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let clients = Ca::new("clients CA");
    let stranger = Ca::new("another CA");
    let (gw, server_ca) = start(&a, tls_port, "optional", &clients);
    let url = |p: &str| format!("https://127.0.0.1:{tls_port}{p}");
    let partner_a = client(
        &server_ca,
        Some(&clients.client("partner-a", Some("Acme"), &[])),
    );
    let partner_b = client(
        &server_ca,
        Some(&clients.client("b-gateway", None, &["spiffe://acme/partner-b"])),
    );
    let unknown = client(
        &server_ca,
        Some(&clients.client("partner-c", Some("Acme"), &[])),
    );
    let forged = client(
        &server_ca,
        Some(&stranger.client("partner-a", Some("Acme"), &[])),
    );
    let anonymous = client(&server_ca, None);

    // No certificate: 401, the gateway's JSON error.
    let (s, body) = get(&anonymous, &url("/p/x"), &[]).await.unwrap();
    assert_eq!(s, 401, "{body}");
    let v = assert_error_body(&body, "missing_client_certificate");
    assert_eq!(v["message"], "A verified client certificate is required");

    // A certificate of the trusted CA that no consumer claims: 403.
    let (s, body) = get(&unknown, &url("/p/x"), &[]).await.unwrap();
    assert_eq!(s, 403, "{body}");
    assert_error_body(&body, "unknown_client_certificate");
    assert_eq!(a.hits(), 0, "refused requests never reach the upstream");

    // Subject match (written with other spacing and case in the config): the consumer and
    // the verified subject go upstream; the client's own subject headers do not, in any
    // spelling.
    let (s, body) = get(
        &partner_a,
        &url("/p/x"),
        &[
            ("X-Client-Subject", "CN=admin,O=Acme"),
            ("x_client_subject", "CN=admin,O=Acme"),
            ("X-Consumer-Username", "admin"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    sent_as(&a, "partner-a", "CN=partner-a,O=Acme");

    // URI SAN match.
    let (s, body) = get(
        &partner_b,
        &url("/p/x"),
        &[("x_Client-subject", "CN=admin")],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    sent_as(&a, "partner-b", "CN=b-gateway");
    assert_eq!(a.hits(), 2);

    // acl after mtls-auth reads the consumer's roles.
    let (s, body) = get(&partner_a, &url("/acl"), &[]).await.unwrap();
    assert_eq!(s, 200, "{body}");
    let (s, body) = get(&partner_b, &url("/acl"), &[]).await.unwrap();
    assert_eq!(s, 403, "{body}");
    assert_error_body(&body, "forbidden");
    let (s, body) = get(&anonymous, &url("/acl"), &[]).await.unwrap();
    assert_eq!(s, 401, "{body}");
    assert_error_body(&body, "missing_client_certificate");
    assert_eq!(a.hits(), 3);

    // Another CA's certificate fails the handshake, even on an optional listener: it is
    // not treated as "no certificate".
    let r = get(&forged, &url("/p/x"), &[]).await;
    assert!(r.is_err(), "another CA's certificate: {r:?}");

    // The plain-HTTP listener never has a certificate: 401 (a gRPC status for gRPC).
    let (s, body) = gw.get_with("/p/x", &[]).await;
    assert_eq!(s, 401, "{body}");
    assert_error_body(&body, "missing_client_certificate");
    let r = gw.post_grpc("/p/x", &[]).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["grpc-status"].to_str().unwrap(), "16");
    assert_eq!(a.hits(), 3, "refused requests never reach the upstream");

    // Outcomes per route.
    let m = gw.metrics_text().await;
    let n = |route: &str, outcome: &str| {
        metric(
            &m,
            "mtls_auth_requests_total",
            &[("route", route), ("outcome", outcome)],
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(n("p", "allowed"), 2.0, "{m}");
    assert_eq!(n("p", "no_certificate"), 3.0, "{m}");
    assert_eq!(n("p", "unknown_certificate"), 1.0, "{m}");
    assert_eq!(n("acl", "allowed"), 2.0, "{m}");
    assert_eq!(n("acl", "no_certificate"), 1.0, "{m}");
    assert_eq!(n("acl", "unknown_certificate"), 0.0, "{m}");
    // Certificates are never logged.
    assert!(!gw.stderr().contains("BEGIN CERTIFICATE"));

    // A reload that gives the unknown certificate a consumer: it passes at once (even on
    // its open connection: consumers come from the snapshot), and the route's counters go
    // on from where they were.
    let yaml = std::fs::read_to_string(gw.config_path()).unwrap().replace(
        "consumers:\n",
        "consumers:\n  - username: partner-c\n    mtls_credentials: [{ subject: \"CN=partner-c,O=Acme\" }]\n",
    );
    gw.write_config_yaml(&yaml);
    let (status, v) = gw.admin_reload().await;
    assert_eq!(status, 200, "{v}");
    let (s, body) = get(&unknown, &url("/p/x"), &[]).await.unwrap();
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        a.last_request().unwrap().header("x-consumer-username"),
        Some("partner-c")
    );
    let m = gw.metrics_text().await;
    let allowed = metric(
        &m,
        "mtls_auth_requests_total",
        &[("route", "p"), ("outcome", "allowed")],
    );
    assert_eq!(allowed, Some(3.0), "{m}");
}

#[tokio::test]
async fn a_required_listener_with_mtls_auth() {
    let a = Backend::start("a");
    let tls_port = free_port();
    let clients = Ca::new("clients CA");
    let stranger = Ca::new("another CA");
    let (_gw, server_ca) = start(&a, tls_port, "required", &clients);
    let url = format!("https://127.0.0.1:{tls_port}/p");
    let partner_a = client(
        &server_ca,
        Some(&clients.client("partner-a", Some("Acme"), &[])),
    );
    let unknown = client(&server_ca, Some(&clients.client("partner-c", None, &[])));

    assert_eq!(get(&partner_a, &url, &[]).await.unwrap().0, 200);
    let (s, body) = get(&unknown, &url, &[]).await.unwrap();
    assert_eq!(s, 403, "{body}");
    assert_error_body(&body, "unknown_client_certificate");
    for (what, c) in [
        ("no certificate", client(&server_ca, None)),
        (
            "another CA's certificate",
            client(
                &server_ca,
                Some(&stranger.client("partner-a", Some("Acme"), &[])),
            ),
        ),
    ] {
        let r = get(&c, &url, &[]).await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    assert_eq!(a.hits(), 1);
}

fn validate_in(dir: &Path, yaml: &str) -> (i32, String) {
    let p = dir.join("gatehouse.yaml");
    std::fs::write(&p, yaml).unwrap();
    validate_file(&p, &[], &[])
}

#[test]
fn config_errors_name_path_and_line() {
    let dir = tempfile::TempDir::new().unwrap();
    make_certs(dir.path());
    let head = "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n    cert: tls/server.crt\n    key: tls/server.key\n    client_auth: { ca: tls/ca.pem }\nupstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:9\" }]\nroutes:\n  - name: p\n    paths: [\"/p\"]\n    upstream: u\n    plugins: [{ name: mtls-auth }]\n";
    // Lines 1-15 above; consumers from line 16.
    let (code, err) = validate_in(
        dir.path(),
        &format!(
            "{head}consumers:
  - username: a
    mtls_credentials:
      - {{ subject: \"CN=a,O=Acme\", san: \"spiffe://acme/a\" }}
      - {{}}
      - {{ subject: \"partner-a\" }}
      - {{ subject: \"CN=a;O=Acme\" }}
      - {{ san: \"\" }}
      - {{ subject: \"CN=a,O=Acme\" }}
      - {{ san: \"spiffe://acme/a\" }}
  - username: b
    mtls_credentials:
      - {{ subject: \"cn = a , o = Acme\" }}
      - {{ san: \"spiffe://acme/a\" }}
"
        ),
    );
    assert_eq!(code, 1, "{err}");
    for (want, line) in [
        ("consumers[0].mtls_credentials[0]: needs exactly one of subject", 19),
        ("consumers[0].mtls_credentials[1]: needs exactly one of subject", 20),
        (
            "consumers[0].mtls_credentials[2].subject: \"partner-a\" is not an RFC 4514 name",
            21,
        ),
        (
            "consumers[0].mtls_credentials[3].subject: \"CN=a;O=Acme\" is not an RFC 4514 name: ';' is not a separator",
            22,
        ),
        ("consumers[0].mtls_credentials[4].san: must not be empty", 23),
        (
            "consumers[1].mtls_credentials[0].subject: subject \"cn = a , o = Acme\" is claimed by consumers \"a\" (consumers[0].mtls_credentials[5].subject) and \"b\"",
            28,
        ),
        (
            "consumers[1].mtls_credentials[1].san: san \"spiffe://acme/a\" is claimed by consumers \"a\" (consumers[0].mtls_credentials[6].san) and \"b\"",
            29,
        ),
    ] {
        let hit = err
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no {want:?} in\n{err}"));
        assert!(hit.contains(&format!("(line {line})")), "{hit}\n{err}");
    }
    // An unknown key is a deserialization error (reported alone, before the checks above).
    let (code, err) = validate_in(
        dir.path(),
        &format!(
            "{head}consumers:\n  - username: b\n    mtls_credentials: [{{ subjekt: \"CN=b\" }}]\n"
        ),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("consumers[0].mtls_credentials[0]") && err.contains("subjekt"),
        "{err}"
    );

    // mtls-auth without server.tls.client_auth could never let a request through.
    let no_auth = head.replace("    client_auth: { ca: tls/ca.pem }\n", "");
    let (code, err) = validate_in(dir.path(), &no_auth);
    assert_eq!(code, 1, "{err}");
    let hit = err
        .lines()
        .find(|l| l.contains("routes[0].plugins[0].name: mtls-auth needs server.tls.client_auth"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(hit.contains("(line 14)"), "{hit}");
    // The same as a global plugin.
    let global = no_auth.replace("    plugins: [{ name: mtls-auth }]\n", "")
        + "plugins:\n  - name: mtls-auth\n    config: { upstream_header: \"bad header\" }\n";
    let (code, err) = validate_in(dir.path(), &global);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("plugins[0].name: mtls-auth needs server.tls.client_auth")
            && err.contains("plugins[0].config.upstream_header: invalid header name"),
        "{err}"
    );
}

#[test]
fn explain_leaves_the_decision_to_request_time() {
    let dir = tempfile::TempDir::new().unwrap();
    make_certs(dir.path());
    let p = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &p,
        format!(
            "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n    cert: tls/server.crt\n    key: tls/server.key\n    client_auth: {{ ca: tls/ca.pem }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: acl\n    paths: [\"/acl\"]\n    upstream: u\n    plugins:\n      - name: mtls-auth\n      - name: acl\n        config: {{ allow_roles: [partner] }}\n{CONSUMERS}"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["explain", "-c"])
        .arg(&p)
        .args(["GET https://127.0.0.1/acl/x", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plugins"][0]["plugin"], "mtls-auth", "{v}");
    assert_eq!(
        v["plugins"][0]["decision"]["result"], "decided at request time (client certificate)",
        "{v}"
    );
    assert_eq!(
        v["plugins"][1]["decision"]["result"],
        "depends on the client certificate's consumer (decided at request time)",
        "{v}"
    );
    assert_eq!(v["result"]["status"], "proxied", "{v}");
}
