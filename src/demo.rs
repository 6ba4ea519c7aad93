//! `gatehouse demo`: built-in demo upstreams (users, orders, products: two instances each
//! plus a backup) answering JSON, and the gateway on `conf/demo.yaml` (compiled into the
//! binary), so a newcomer can try every feature with curl.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
];

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
    let path = req.uri().path();
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
    // Show what the auth plugins sent upstream (only on routes that authenticate).
    let mut body = body;
    for (field, header) in [
        ("consumer", "x-consumer-username"),
        ("roles", "x-authenticated-roles"),
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

/// Starts every demo backend on a runtime thread of its own; returns once they listen.
pub fn start_backends() -> std::io::Result<()> {
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
    format!(
        r#"gatehouse demo is running.

  gateway   http://{listen}
  admin     http://{admin}   (/health, /status, /cache/purge)
  upstreams users 127.0.0.1:19001-19003, orders :19011-19013, products :19021-19023 (third of each is a backup)

Try:
  curl -s http://{listen}/api/v1/users               # no "email"; wrapped as {{success, data, meta}}
  curl -si -X OPTIONS http://{listen}/api/v1/users -H 'Origin: http://localhost:3000' \
       -H 'Access-Control-Request-Method: POST'      # CORS preflight: 204 from the gateway itself
  curl -si http://{listen}/api/v1/users -H 'Origin: http://localhost:3000'  # Access-Control-Allow-Origin
  curl -si http://{listen}/api/v1/users -H 'Origin: https://evil.example'   # not allowed: no CORS headers
  curl -s http://{listen}/api/v1/orders/1001
  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' http://{listen}/api/v1/orders/1001; done; echo
                                                     # rate-limiting, 10 a minute per IP: ... 200 429 429
  curl -si http://{listen}/api/v1/orders/1001 | grep -i ratelimit   # X-RateLimit-*, RateLimit-Policy: 10;w=60
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
  curl -s http://{listen}/nope                       # 404 with request_id
  curl -s http://{admin}/status                      # routes, targets, health
  curl -s -X POST http://127.0.0.1:19001/__demo/down # fail users-1's health check ...
  curl -s -X POST http://127.0.0.1:19002/__demo/down # ... and users-2's: within ~6 s the backup serves
  curl -s http://{listen}/api/v1/users               # "instance":"users-backup"
  curl -s -X POST http://127.0.0.1:19001/__demo/up   # users-1 recovers and takes over again
  kill -HUP $(pgrep -f 'gatehouse demo')             # reload: the gateway keeps running

Ctrl-C stops it.
"#
    )
}
