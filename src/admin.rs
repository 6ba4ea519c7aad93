//! Admin listener: a Pingora service of its own (so a `-u` upgrade hands its socket over with
//! the public ones), never on the public port.
//!
//! `GET /health`, `GET /status` (config version/hash, routes, targets with health; no
//! secrets), `GET /metrics` (Prometheus text, see [`crate::observe::metrics`]), `POST /reload`
//! (guarded by `admin.token` when set; answers the new version and a summary of what
//! changed), `POST /explain`, and the endpoints plugins declare (`POST /cache/purge` of
//! proxy-cache; same guard; see [`crate::plugins::Hooks::admin`]). Plugins add their
//! sections to `/status` ([`crate::plugins::Hooks::status_section`]).
//!
//! Browsers are kept out ([`AdminApp::browser_refusal`]): every endpoint but `/health`
//! answers only `Host` names that cannot be an attacker's DNS name (loopback names, IP
//! literals, `admin.allowed_hosts`), which defeats DNS rebinding; and without a token, a
//! request carrying `Origin` (a page's cross-site `fetch` or form post) is refused.

use crate::app::Shared;
use crate::upstream::health;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    shared: Arc<Shared>,
    started: std::time::Instant,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminApp {
            shared,
            started: std::time::Instant::now(),
        }
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let body = v.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A `Host` value the admin API answers: `localhost`, `*.localhost` and IP literals (a DNS
/// rebinding attack needs a name of the attacker's), or one of `admin.allowed_hosts`.
/// Port and one trailing dot are ignored.
fn admin_host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = crate::router::host_without_port(host);
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.parse::<std::net::Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let dot_localhost = name.len() > ".localhost".len()
        && name
            .get(name.len() - ".localhost".len()..)
            .is_some_and(|t| t.eq_ignore_ascii_case(".localhost"));
    dot_localhost || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

impl AdminApp {
    /// Refuses what a browser could send on a web page's behalf: a `Host` that is not ours
    /// (DNS rebinding would let a page read `/status` and `/metrics`), and, when no token
    /// guards the POST endpoints, any request with `Origin` (a cross-site `text/plain` POST
    /// needs no preflight). A request without `Host` (HTTP/1.0 tools) passes the first.
    fn browser_refusal(&self, s: &ServerSession) -> Option<Response<Vec<u8>>> {
        let rt = self.shared.snapshot();
        let req = s.req_header();
        let host = req.uri.authority().map(|a| a.as_str()).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let host_ok = match host {
            Some(h) => admin_host_allowed(h, &rt.admin.allowed_hosts),
            None => !req.headers.contains_key(http::header::HOST),
        };
        if !host_ok {
            return Some(json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "forbidden", "message": "unknown Host for the admin API (see admin.allowed_hosts)"}),
            ));
        }
        if rt.admin.token.is_none() && req.headers.contains_key(http::header::ORIGIN) {
            return Some(json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "forbidden", "message": "browser requests (Origin) are refused while admin.token is unset"}),
            ));
        }
        None
    }

    fn authorized(&self, s: &ServerSession) -> bool {
        let rt = self.shared.snapshot();
        let Some(token) = &rt.admin.token else {
            return true;
        };
        let got = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let expected = format!("Bearer {}", token.expose());
        ct_eq(got, expected.as_bytes())
    }

    fn status(&self) -> serde_json::Value {
        let rt = self.shared.snapshot();
        let routes: Vec<_> = rt
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "upstream": r.upstream.name,
                    "strip_path": r.strip_path,
                    "preserve_host": r.preserve_host,
                    "plugins": r.plugins.names(),
                })
            })
            .collect();
        let upstreams: Vec<_> = rt
            .upstreams
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name,
                    "balance": u.balance.as_str(),
                    "retries": u.retries,
                    "health_check": u.health_check.as_ref().map(|h| match &h.path {
                        Some(p) => format!("http {p}"),
                        None => "tcp".to_string(),
                    }),
                    "targets": health::describe(u),
                    "discovery": u.discovery.as_ref().map(|d| d.describe()),
                })
            })
            .collect();
        let mut status = serde_json::json!({
            "version": rt.version,
            "hash": rt.hash,
            "build": crate::observe::build_info::json(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "routes": routes,
            "upstreams": upstreams,
            // Names and validity of the served certificates (never key material).
            "certificates": self.shared.certs.status(),
            "acme": self.shared.acme.status(rt.server.tls.as_ref().and_then(|t| t.acme.as_ref())),
        });
        // The plugins' sections (proxy-cache's `cache`: one line per store).
        for (key, section) in crate::plugins::status_sections(&rt, &self.shared.registry) {
            status[key] = section;
        }
        status
    }

    /// An endpoint a plugin declared: method, token, bounded body, then the plugin.
    async fn plugin_endpoint(
        &self,
        s: &mut ServerSession,
        method: &Method,
        path: &str,
        want: &str,
    ) -> Response<Vec<u8>> {
        if method.as_str() != want {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed"}),
            );
        }
        if !self.authorized(s) {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "message": "admin token required"}),
            );
        }
        let body = match read_body(s).await {
            Ok(b) => b,
            Err(msg) => return json(StatusCode::BAD_REQUEST, bad_request(msg)),
        };
        let req = crate::plugins::AdminRequest {
            method,
            path,
            body: &body,
        };
        match crate::plugins::admin(&self.shared.snapshot(), &self.shared.registry, &req).await {
            Some((status, body)) => json(status, body),
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": "unknown admin endpoint"}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        // Liveness tells nothing and is probed under any name.
        if path != "/health" {
            if let Some(refused) = self.browser_refusal(s) {
                return refused;
            }
        }
        if let Some(want) = crate::plugins::admin_method(&path) {
            return self.plugin_endpoint(s, &method, &path, want).await;
        }
        match (method, path.as_str()) {
            (Method::GET, "/health") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (Method::GET, "/status") => json(StatusCode::OK, self.status()),
            // HEAD: the same head (with Content-Length), Pingora sends no body.
            (Method::GET | Method::HEAD, "/metrics") => {
                // The snapshot itself (not its `Arc`): scrapes that read it downcast to it.
                let rt = self.shared.snapshot();
                let body = crate::observe::metrics::render(&*rt).into_bytes();
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", crate::observe::metrics::CONTENT_TYPE)
                    .header("content-length", body.len())
                    .header("cache-control", "no-store")
                    .body(body)
                    .unwrap_or_default()
            }
            (Method::POST, "/reload") => {
                if !self.authorized(s) {
                    return json(
                        StatusCode::UNAUTHORIZED,
                        serde_json::json!({"error": "unauthorized", "message": "admin token required"}),
                    );
                }
                let shared = self.shared.clone();
                let res = tokio::task::spawn_blocking(move || shared.reload()).await;
                match res {
                    Ok(Ok(r)) => {
                        tracing::info!(version = r.version, hash = %r.hash, needs_upgrade = r.needs_upgrade, changes = %r.changes, "config reloaded via admin API");
                        json(
                            StatusCode::OK,
                            serde_json::json!({
                                "result": if r.unchanged { "unchanged" } else { "success" },
                                "version": r.version,
                                "hash": r.hash,
                                "needs_upgrade": r.needs_upgrade,
                                "changes": r.changes,
                            }),
                        )
                    }
                    Ok(Err(errs)) => {
                        tracing::error!("config reload rejected:\n{errs}");
                        let list: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
                        json(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            serde_json::json!({"error": "invalid_config", "errors": list}),
                        )
                    }
                    Err(_) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        serde_json::json!({"error": "internal_error"}),
                    ),
                }
            }
            (Method::POST, "/explain") => {
                let (status, body) = explain_endpoint(s, &self.shared.snapshot()).await;
                json(status, body)
            }
            (_, "/health" | "/status" | "/metrics" | "/reload" | "/explain") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": "unknown admin endpoint"}),
            ),
        }
    }
}

/// Largest body of a `POST` endpoint (`/explain`, the plugins' endpoints).
const BODY_LIMIT: usize = 64 * 1024;

/// `{"error": "bad_request", "message": ...}`.
fn bad_request(msg: String) -> serde_json::Value {
    serde_json::json!({"error": "bad_request", "message": msg})
}

/// The request body, at most [`BODY_LIMIT`] bytes; `Err`: the message of a 400.
async fn read_body(s: &mut ServerSession) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match s.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > BODY_LIMIT {
                    return Err(format!("body over {BODY_LIMIT} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err("could not read the request body".into()),
        }
    }
}

/// `POST /explain`: `{method, url, headers, client_ip}` explained against the live config.
async fn explain_endpoint(
    s: &mut ServerSession,
    rt: &crate::ctx::Runtime,
) -> (StatusCode, serde_json::Value) {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, bad_request(msg));
    let body = match read_body(s).await {
        Ok(b) => b,
        Err(msg) => return bad(msg),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        method: String,
        url: String,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        client_ip: Option<String>,
    }
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad(format!(
                "body must be {{\"method\", \"url\", \"headers\"}}: {e}"
            ))
        }
    };
    let ask = crate::explain::Ask {
        method: b.method,
        url: b.url,
        headers: b.headers.into_iter().collect(),
        client_ip: b.client_ip,
    };
    let v = crate::explain::explain(rt, &ask, true);
    if v.get("error").is_some() {
        (StatusCode::BAD_REQUEST, v)
    } else {
        (StatusCode::OK, v)
    }
}

#[cfg(test)]
mod tests {
    use super::admin_host_allowed;

    #[test]
    fn admin_hosts() {
        let extra = vec!["gatehouse-admin.svc".to_string()];
        for h in [
            "localhost",
            "LocalHost:9901",
            "localhost.",
            "app.localhost:1",
            "127.0.0.1:9901",
            "10.1.2.3",
            "[::1]:9901",
            "gatehouse-admin.svc:9901",
        ] {
            assert!(admin_host_allowed(h, &extra), "{h}");
        }
        for h in [
            "evil.example",
            "localhost.evil.example",
            "evillocalhost",
            "127.0.0.1.nip.io",
            "[::1",
            "",
        ] {
            assert!(!admin_host_allowed(h, &extra), "{h}");
        }
    }
}
