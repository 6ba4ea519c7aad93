//! `gatehouse demo`: built-in demo upstreams (users, orders, products: two instances each
//! plus a backup) answering JSON, an HTTPS upstream (inventory) whose certificate comes from
//! a CA made at start, a gRPC service over h2c (greeter), and the gateway on
//! `conf/demo.yaml` (compiled into the binary), so a newcomer can try every feature with
//! curl. None of this runs in the gateway's request path: the demo upstreams are plain
//! servers on a runtime thread of their own, started before Pingora.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

pub const DEMO_CONFIG: &str = include_str!("../conf/demo.yaml");

/// HS256 secret of the demo consumer's `jwt_secrets` entry in `conf/demo.yaml`.
pub const DEMO_JWT_SECRET: &str = "gatehouse-demo-secret-not-for-production";

/// A token the demo config accepts: consumer `demo-app` (`iss: gatehouse-demo`), roles
/// `[reader]`, valid for 24 hours from now. Printed by the demo banner.
pub fn sample_jwt() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let claims = serde_json::json!({
        "iss": "gatehouse-demo", "sub": "demo-user", "roles": ["reader"], "exp": exp
    });
    jsonwebtoken::EncodingKey::from_secret(DEMO_JWT_SECRET.as_bytes())
        .and_then(|key| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &key,
            )
        })
        .unwrap_or_default()
}

/// (service, instance name, port)
pub const DEMO_BACKENDS: &[(&str, &str, u16)] = &[
    ("users", "users-1", 19001),
    ("users", "users-2", 19002),
    ("users", "users-backup", 19003),
    ("orders", "orders-1", 19011),
    ("orders", "orders-2", 19012),
    ("orders", "orders-backup", 19013),
    ("products", "products-1", 19021),
    ("products", "products-2", 19022),
    ("products", "products-backup", 19023),
    ("auth", "auth-1", 19031),
];

/// The HTTPS inventory service: its port and the name its certificate carries (the demo
/// config's `tls.sni`).
pub const INVENTORY_PORT: u16 = 19041;
pub const INVENTORY_TLS_NAME: &str = "inventory.demo.internal";

/// The gRPC greeter service (h2c).
pub const GREETER_PORT: u16 = 19051;

/// Where the demo CA is written, relative to the config file (the demo config's `tls.ca`).
pub const DEMO_CA_FILE: &str = "demo-pki/ca.pem";

/// The demo CA (PEM) and the inventory service's certificate and key (DER), made once per
/// process by [`write_pki`].
struct DemoPki {
    ca_pem: String,
    cert: Vec<u8>,
    key: Vec<u8>,
}

static PKI: OnceLock<DemoPki> = OnceLock::new();

/// A throwaway certificate authority and one server certificate it signed, made in memory:
/// the demo's HTTPS service, and tests and benchmarks that need a TLS setup that loads.
pub struct Pki {
    /// The CA's certificate (its key is dropped: nothing else is ever signed by it).
    pub ca: rcgen::Certificate,
    /// The server certificate and its key.
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

/// A new CA named `ca_name` (its CN; `None`: rcgen's default subject) and a server
/// certificate it signed for `names`.
pub fn make_pki(ca_name: Option<&str>, names: &[&str]) -> Result<Pki, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    if let Some(cn) = ca_name {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    let ca = p.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let cert = CertificateParams::new(names)?.signed_by(&key, &ca, &ca_key)?;
    Ok(Pki { ca, cert, key })
}

/// Writes a new CA (`ca.pem`) and a certificate it signed for `localhost` (`s.crt`, key
/// `s.key`) into `dir`: what a `server.tls` section with `client_auth: { ca: ca.pem }` needs
/// to load, for tests and benchmarks of client certificates.
pub fn write_server_pki(dir: &Path) -> std::io::Result<()> {
    let pki = make_pki(None, &["localhost"]).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("ca.pem"), pki.ca.pem())?;
    std::fs::write(dir.join("s.crt"), pki.cert.pem())?;
    std::fs::write(dir.join("s.key"), pki.key.serialize_pem())
}

fn demo_pki() -> Result<DemoPki, rcgen::Error> {
    let pki = make_pki(Some("gatehouse demo CA"), &[INVENTORY_TLS_NAME])?;
    Ok(DemoPki {
        ca_pem: pki.ca.pem(),
        cert: pki.cert.der().to_vec(),
        key: pki.key.serialize_der(),
    })
}

/// Makes the demo's CA and the inventory service's certificate (signed by it, for
/// [`INVENTORY_TLS_NAME`]) and writes the CA to [`DEMO_CA_FILE`] under `config_dir`, where
/// the demo config's `tls.ca` reads it. New ones at every start: no key outlives the demo.
pub fn write_pki(config_dir: &Path) -> std::io::Result<()> {
    let pki = match PKI.get() {
        Some(p) => p,
        None => {
            let made =
                demo_pki().map_err(|e| std::io::Error::other(format!("demo certificates: {e}")))?;
            PKI.get_or_init(|| made)
        }
    };
    let file = config_dir.join(DEMO_CA_FILE);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&file, &pki.ca_pem)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))
}

/// The bearer token the demo auth service (`auth-1`, used by the `profile` route's
/// forward-auth) accepts.
pub const DEMO_SESSION_TOKEN: &str = "demo-session-token";

/// The demo auth service's answer to a forward-auth call: 200 with the user's identity for
/// [`DEMO_SESSION_TOKEN`], 401 with `WWW-Authenticate` otherwise, 503 while switched down.
pub fn auth_decision(
    authorization: Option<&str>,
    down: bool,
) -> (u16, Vec<(&'static str, &'static str)>) {
    if down {
        return (503, Vec::new());
    }
    match authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        Some(t) if t == DEMO_SESSION_TOKEN => (
            200,
            vec![("x-user-id", "demo-user"), ("x-user-roles", "reader")],
        ),
        _ => (
            401,
            vec![("www-authenticate", "Bearer realm=\"demo-auth\"")],
        ),
    }
}

fn sample(service: &str) -> serde_json::Value {
    match service {
        "users" => serde_json::json!([
            {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
            {"id": 2, "name": "Alan Turing", "email": "alan@example.com"}
        ]),
        "orders" => serde_json::json!([
            {"id": 1001, "user_id": 1, "total": 42.5, "status": "shipped"},
            {"id": 1002, "user_id": 2, "total": 9.99, "status": "pending"}
        ]),
        _ => products(),
    }
}

/// The product catalogue: big enough (about 2 KB) for response-compression's `min_size`.
fn products() -> serde_json::Value {
    const ITEMS: &[(&str, &str, f64)] = &[
        ("KB-001", "Keyboard", 49.0),
        ("MS-002", "Mouse", 19.0),
        ("MN-003", "Monitor 27in", 289.0),
        ("HS-004", "Headset", 79.0),
        ("WC-005", "Webcam", 59.0),
        ("DK-006", "Docking station", 149.0),
        ("CB-007", "USB-C cable", 12.0),
        ("ST-008", "Laptop stand", 39.0),
        ("MP-009", "Mouse pad", 9.0),
        ("SP-010", "Speakers", 89.0),
        ("MC-011", "Microphone", 119.0),
        ("HB-012", "USB hub", 29.0),
    ];
    ITEMS
        .iter()
        .map(|(sku, name, price)| {
            serde_json::json!({
                "sku": sku, "name": name, "price": price, "currency": "EUR",
                "in_stock": true, "warehouse": "AMS-1",
                "description": format!("{name}: a demo catalogue entry for the gatehouse demo"),
            })
        })
        .collect()
}

/// Per-instance health switch, flipped with `POST /__demo/down` and `POST /__demo/up` on the
/// instance's own port, so the demo can show health checks and backup targets at work.
static DOWN: [AtomicBool; DEMO_BACKENDS.len()] =
    [const { AtomicBool::new(false) }; DEMO_BACKENDS.len()];

fn slot(instance: &str) -> usize {
    DEMO_BACKENDS
        .iter()
        .position(|(_, i, _)| *i == instance)
        .unwrap_or(0)
}

async fn handle(
    service: &'static str,
    instance: &'static str,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let down = &DOWN[slot(instance)];
    let mut status = 200;
    // `?delay_ms=N` (at most 10 s): a slow answer, to show timeouts and `routes[].timeout`.
    if let Some(ms) = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(10_000))).await;
    }
    // A JSON request body is echoed back as "received" (to show request-transformer).
    let (parts, incoming) = req.into_parts();
    let received = received_json(&parts.headers, incoming).await;
    let req = Request::from_parts(parts, ());
    let path = req.uri().path();
    if service == "auth" && path != "/health" && !path.starts_with("/__demo/") {
        let auth = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let (status, headers) = auth_decision(auth, down.load(Ordering::Relaxed));
        let mut resp = Response::builder().status(status);
        for (n, v) in headers {
            resp = resp.header(n, v);
        }
        return Ok(resp.body(Full::new(Bytes::new())).unwrap_or_default());
    }
    let body = if path == "/health" {
        if down.load(Ordering::Relaxed) {
            status = 503;
            serde_json::json!({"status": "down", "instance": instance})
        } else {
            serde_json::json!({"status": "ok", "instance": instance})
        }
    } else if path == "/__demo/down" || path == "/__demo/up" {
        let is_down = path == "/__demo/down";
        down.store(is_down, Ordering::Relaxed);
        serde_json::json!({"instance": instance, "health": if is_down { "failing" } else { "ok" }})
    } else {
        serde_json::json!({
            "service": service,
            "instance": instance,
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "forwarded_for": req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            "data": sample(service),
        })
    };
    // Show what the auth plugins sent upstream (only on routes that authenticate), and the
    // trace context of the opentelemetry plugin (products-stripped).
    let mut body = body;
    if let (Some(v), Some(obj)) = (received, body.as_object_mut()) {
        obj.insert("received".into(), v);
    }
    for (field, header) in [
        ("consumer", "x-consumer-username"),
        ("roles", "x-authenticated-roles"),
        ("traceparent", "traceparent"),
        ("user", "x-user-id"),
    ] {
        if let (Some(v), Some(obj)) = (
            req.headers().get(header).and_then(|v| v.to_str().ok()),
            body.as_object_mut(),
        ) {
            obj.insert(field.into(), v.into());
        }
    }
    let body = Bytes::from(body.to_string());
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("server", "demo-upstream")
        .body(Full::new(body))
        .unwrap_or_default();
    Ok(resp)
}

/// The request body as JSON when it is `application/json` and at most 64 KB.
async fn received_json(
    headers: &http::HeaderMap,
    body: hyper::body::Incoming,
) -> Option<serde_json::Value> {
    use http_body_util::BodyExt;
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return None;
    }
    let bytes = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// Serves one demo backend until the process exits.
pub async fn serve_backend(
    service: &'static str,
    instance: &'static str,
    addr: SocketAddr,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(service, instance, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The demo's endpoints as `(method, path, what it shows)`: the index answered at `/`.
pub const INDEX: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/users", "response-transformer envelope, request-transformer on POST, CORS, retries and backup targets"),
    ("GET", "/api/v1/orders/1001", "rate-limiting: 10 a minute per client IP, then 429; request-mirror: a copy to orders-3"),
    ("GET", "/api/v1/products", "proxy-cache (X-Cache-Status) and response-compression"),
    ("GET", "/products/KB-001", "strip_path, weighted balancing, ip-restriction, opentelemetry"),
    ("GET", "/api/v1/account", "key-auth: send X-API-Key: demo-api-key"),
    ("GET", "/api/v1/reports", "jwt + acl: send the Bearer token printed at start"),
    ("GET", "/api/v1/admin", "acl: the sample token lacks the admin role (403)"),
    ("GET", "/api/v1/profile", "forward-auth: send Authorization: Bearer demo-session-token"),
    ("GET", "/api/v1/inventory", "HTTPS upstream: certificate checked against a CA made at start (tls.ca, tls.sni)"),
    ("POST", "/demo.Greeter/SayHello", "gRPC over h2c: from the client (server.h2c) and to the upstream (protocol: h2c)"),
    ("GET", "/health", "the load-balancer probe, answered by the gateway itself"),
];

/// Set once the demo runs: the gateway then answers `GET /` (which no demo route matches)
/// with [`INDEX`] instead of a 404.
static INDEX_BODY: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();

/// The index body for `GET /` and `HEAD /` when the demo runs.
pub fn index_for(req: &pingora::http::RequestHeader) -> Option<bytes::Bytes> {
    if req.uri.path() != "/" || !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return None;
    }
    INDEX_BODY.get().cloned()
}

fn index_body() -> bytes::Bytes {
    let endpoints: Vec<_> = INDEX
        .iter()
        .map(|(m, p, what)| serde_json::json!({"method": m, "path": p, "shows": what}))
        .collect();
    let v = serde_json::json!({
        "gatehouse": "demo",
        "message": "Try these endpoints; the admin API (/status, /metrics) is on the admin listener",
        "endpoints": endpoints,
    });
    bytes::Bytes::from(v.to_string())
}

/// Starts every demo backend on a runtime thread of its own; returns once they listen.
pub fn start_backends() -> std::io::Result<()> {
    INDEX_BODY.get_or_init(index_body);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-upstreams".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut ok = true;
                for (service, instance, port) in DEMO_BACKENDS {
                    let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                    // Bind first so a busy port is reported before the gateway starts.
                    match TcpListener::bind(addr).await {
                        Ok(l) => drop(l),
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::new(
                                e.kind(),
                                format!("demo upstream {instance} on {addr}: {e}"),
                            )));
                            ok = false;
                            break;
                        }
                    }
                    tokio::spawn(serve_backend(service, instance, addr));
                }
                if ok {
                    let inventory = SocketAddr::from(([127, 0, 0, 1], INVENTORY_PORT));
                    let greeter = SocketAddr::from(([127, 0, 0, 1], GREETER_PORT));
                    match (
                        TcpListener::bind(inventory).await,
                        TcpListener::bind(greeter).await,
                    ) {
                        (Ok(i), Ok(g)) => {
                            tokio::spawn(serve_inventory(i));
                            tokio::spawn(serve_greeter(g));
                        }
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = tx.send(Err(std::io::Error::new(
                                e.kind(),
                                format!("demo upstreams on {inventory} and {greeter}: {e}"),
                            )));
                            ok = false;
                        }
                    }
                }
                if ok {
                    let _ = tx.send(Ok(()));
                }
                std::future::pending::<()>().await;
            })
        })?;
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("demo upstreams failed to start")))
}

/// The text printed when the demo starts.
pub fn banner(listen: &str, admin: &str) -> String {
    let token = sample_jwt();
    let session = DEMO_SESSION_TOKEN;
    format!(
        r#"gatehouse demo is running.

  gateway   http://{listen}   (/ lists the demo endpoints)
  admin     http://{admin}   (/health, /status, /cache/purge)
  upstreams users 127.0.0.1:19001-19003, orders :19011-19013, products :19021-19023 (third of each is a backup)
  auth      127.0.0.1:19031 (the profile route's forward-auth service)
  inventory https://127.0.0.1:19041 (HTTPS, certificate for inventory.demo.internal from a CA made now)
  greeter   127.0.0.1:19051 (gRPC over h2c: demo.Greeter/SayHello)

Try:
  curl -s http://{listen}/api/v1/users               # no "email"; wrapped as {{success, data, meta}}
  curl -si -X POST http://{listen}/api/v1/users -H 'Content-Type: application/json' \
       -d '{{"name":"Grace","password":"s3cret"}}'    # "received": no password, _meta added; X-Response-Time
  curl -si -X OPTIONS http://{listen}/api/v1/users -H 'Origin: http://localhost:3000' \
       -H 'Access-Control-Request-Method: POST'      # CORS preflight: 204 from the gateway itself
  curl -si http://{listen}/api/v1/users -H 'Origin: http://localhost:3000'  # Access-Control-Allow-Origin
  curl -si http://{listen}/api/v1/users -H 'Origin: https://evil.example'   # not allowed: no CORS headers
  curl -s http://{listen}/api/v1/orders/1001
  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' http://{listen}/api/v1/orders/1001; done; echo
                                                     # rate-limiting, 10 a minute per IP: ... 200 429 429
  curl -si http://{listen}/api/v1/orders/1001 | grep -i ratelimit   # X-RateLimit-*, RateLimit-Policy: 10;w=60
  curl -s http://{admin}/metrics | grep '^mirror_requests_total'   # request-mirror: every admitted order
                                                     # request was copied to orders-3 ("sent"), its answer discarded
  curl -si http://{listen}/api/v1/products | grep -i -e x-cache -e '^age'   # proxy-cache: MISS, then HIT with Age
  curl -s -X POST http://{admin}/cache/purge -d '{{"route":"products"}}'      # {{"purged":1,...}}: next GET is a MISS
  curl -s -D- -o /dev/null http://{listen}/api/v1/products -H 'Accept-Encoding: gzip, br' | grep -i -e content-enc -e vary
                                                     # response-compression: br (per client, from the cached identity body)
  curl -s http://{listen}/products/KB-001            # strip_path: upstream sees /KB-001; weighted 3:1 products-1/-2
  curl -s -X POST http://{listen}/api/v1/products    # methods: [GET, HEAD] -> 404 not_found
  curl -s http://{listen}/api/v1/account -H 'X-API-Key: demo-api-key'   # key-auth: 200, "consumer":"demo-app"
  curl -s http://{listen}/api/v1/account             # 401 missing_api_key
  TOKEN={token}
                                                     # sample JWT: demo-app, roles [reader], valid 24 h
  curl -s http://{listen}/api/v1/reports -H "Authorization: Bearer $TOKEN"   # jwt + acl [reader, admin]: 200
  curl -s http://{listen}/api/v1/admin -H "Authorization: Bearer $TOKEN"     # acl [admin]: 403 forbidden
  curl -s http://{listen}/api/v1/reports             # 401 missing_token
  curl -s http://{listen}/api/v1/profile -H 'Authorization: Bearer {session}'
                                                     # forward-auth: the auth service says yes: "user":"demo-user"
  curl -si http://{listen}/api/v1/profile            # 401 from the auth service, its WWW-Authenticate passed on
  curl -s http://{listen}/nope                       # 404 with request_id
  curl -si http://{listen}/products/KB-001 -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
                                                     # opentelemetry: X-Trace-Id 4bf9...; the body's
                                                     # "traceparent" has the same trace id, the gateway's span as parent
  curl -s http://{listen}/api/v1/inventory           # HTTPS upstream: "tls_server_name":"inventory.demo.internal"
  printf '\0\0\0\0\5\n\3Ada' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' \
       -H 'te: trailers' --data-binary @- http://{listen}/demo.Greeter/SayHello | tail -c +8; echo
                                                     # gRPC over h2c: "Hello, Ada!" (a HelloRequest {{name: "Ada"}})
  curl -s http://{listen}/health                     # load-balancer probe: {{"status":"ok"}}, no plugin, no upstream
  curl -s http://{admin}/status                      # routes, targets, health
  curl -s -X POST http://127.0.0.1:19001/__demo/down # fail users-1's health check ...
  curl -s -X POST http://127.0.0.1:19002/__demo/down # ... and users-2's: within ~6 s the backup serves
  curl -s http://{listen}/api/v1/users               # "instance":"users-backup"
  curl -s -X POST http://127.0.0.1:19003/__demo/down # the backup too: no target left ...
  curl -si http://{listen}/api/v1/users              # ... 503 with error-responses' own body
  curl -s -X POST http://127.0.0.1:19001/__demo/up   # users-1 recovers and takes over again
  time curl -s 'http://{listen}/api/v1/users?delay_ms=5000'   # read timeout 1s, retry, route
                                                     # timeout 1.5s: 504 after 1.5 s, not 2 s
  curl -s http://{admin}/metrics | grep -e route_timeouts -e retries_skipped   # resilience counters
  kill -HUP $(pgrep -f 'gatehouse demo')             # reload: the gateway keeps running

Ctrl-C stops it.
"#
    )
}

/// Writes the demo index (`GET /` or `HEAD /` while the demo runs).
pub async fn answer_index(
    session: &mut pingora::proxy::Session,
    body: bytes::Bytes,
) -> pingora::Result<()> {
    let mut h = pingora::http::ResponseHeader::build(200, Some(3))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

// ---------------------------------------------------------------------------------------------
// HTTPS upstream: inventory
// ---------------------------------------------------------------------------------------------

/// The inventory service over HTTPS (HTTP/1.1), with the certificate [`write_pki`] made.
async fn serve_inventory(listener: TcpListener) {
    let Some(acceptor) = inventory_acceptor() else {
        eprintln!("demo inventory service: no certificate (write_pki was not called)");
        return;
    };
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let sni = sni.clone();
                async move { Ok::<_, Infallible>(inventory(req.uri().path(), sni)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn inventory_acceptor() -> Option<pingora::tls::TlsAcceptor> {
    use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig};
    let pki = PKI.get()?;
    pingora::tls::install_default_crypto_provider();
    let key = PrivateKeyDer::try_from(pki.key.clone()).ok()?;
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(pki.cert.clone())], key)
        .ok()?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(pingora::tls::TlsAcceptor::from(Arc::new(cfg)))
}

fn inventory(path: &str, sni: Option<String>) -> Response<Full<Bytes>> {
    let body = if path == "/health" {
        serde_json::json!({"status": "ok", "instance": "inventory-1"})
    } else {
        serde_json::json!({
            "service": "inventory",
            "instance": "inventory-1",
            "path": path,
            "tls_server_name": sni,
            "data": [
                {"sku": "KB-001", "warehouse": "AMS-1", "on_hand": 42},
                {"sku": "MS-002", "warehouse": "AMS-1", "on_hand": 7},
            ],
        })
    };
    Response::builder()
        .header("content-type", "application/json")
        .header("server", "demo-upstream")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// gRPC upstream over h2c: greeter
// ---------------------------------------------------------------------------------------------

/// Largest request message the greeter reads.
const GREETER_MAX_MESSAGE: usize = 64 * 1024;

/// `demo.Greeter/SayHello` over HTTP/2 with prior knowledge: `HelloRequest { string name = 1; }`
/// in, `HelloReply { string message = 1; }` out (protobuf, coded here: two strings need no
/// protobuf library).
async fn serve_greeter(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((req, respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let _ = greet(req, respond).await;
                });
            }
        });
    }
}

/// A trailers-only gRPC answer with `status` and `message`.
fn grpc_status(status: u8, message: &str) -> http::Response<()> {
    http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", status.to_string())
        .header("grpc-message", crate::grpc::encode_message(message))
        .body(())
        .unwrap_or_default()
}

async fn greet(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Result<(), h2::Error> {
    if req.uri().path() != "/demo.Greeter/SayHello" {
        respond.send_response(grpc_status(12, "unknown method"), true)?;
        return Ok(());
    }
    let mut body = req.into_body();
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        if buf.len() > GREETER_MAX_MESSAGE + 5 {
            respond.send_response(grpc_status(8, "message too large"), true)?;
            return Ok(());
        }
    }
    let Some(name) = hello_request_name(&buf) else {
        respond.send_response(grpc_status(3, "expected one HelloRequest"), true)?;
        return Ok(());
    };
    let name = if name.is_empty() { "stranger" } else { name };
    let reply = hello_reply(&format!("Hello, {name}!"));
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    let mut out = respond.send_response(head, false)?;
    out.send_data(reply, false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    out.send_trailers(trailers)?;
    Ok(())
}

/// Reads one protobuf varint at `*at`.
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `name` of the one uncompressed `HelloRequest` message in a gRPC request body.
pub fn hello_request_name(body: &[u8]) -> Option<&str> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let msg = rest.get(4..)?;
    if flag != 0 || msg.len() != len {
        return None;
    }
    let (mut at, mut name) = (0, "");
    while at < msg.len() {
        let key = varint(msg, &mut at)?;
        match key & 7 {
            0 => {
                varint(msg, &mut at)?;
            }
            2 => {
                let n = usize::try_from(varint(msg, &mut at)?).ok()?;
                let bytes = msg.get(at..at.checked_add(n)?)?;
                at += n;
                if key >> 3 == 1 {
                    name = std::str::from_utf8(bytes).ok()?;
                }
            }
            _ => return None,
        }
    }
    Some(name)
}

/// One gRPC message frame holding `HelloReply { message }`.
pub fn hello_reply(message: &str) -> Bytes {
    let mut msg = vec![0x0a];
    let mut n = message.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            msg.push(byte);
            break;
        }
        msg.push(byte | 0x80);
    }
    msg.extend_from_slice(message.as_bytes());
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_messages() {
        // printf '\0\0\0\0\5\n\3Ada' from the banner.
        assert_eq!(hello_request_name(b"\0\0\0\0\x05\n\x03Ada"), Some("Ada"));
        assert_eq!(hello_request_name(b"\0\0\0\0\0"), Some(""));
        assert_eq!(hello_request_name(b"\0\0\0\0\x05\n\x09Ada"), None);
        assert_eq!(hello_request_name(b"\x01\0\0\0\x05\n\x03Ada"), None);
        assert_eq!(hello_request_name(b""), None);
        let long = "x".repeat(300);
        let reply = hello_reply(&long);
        assert_eq!(&reply[5..8], &[0x0a, 0xac, 0x02]);
        assert_eq!(reply.len(), 5 + 3 + 300);
        assert_eq!(&hello_reply("Hi")[..], b"\0\0\0\0\x04\n\x02Hi");
    }
}
