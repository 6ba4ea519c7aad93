//! Shared harness for gatehouse integration tests: scriptable HTTP backends, a gateway
//! process wrapper, a raw-TCP client and helpers to build YAML configs; real Redis servers
//! (`redis`) and the byte sources of the bolero fuzz tests (`fuzz`).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tempfile::TempDir;

mod fuzz;
mod redis;
pub use fuzz::*;
pub use redis::*;

/// Path of the gateway binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Active HTTP health check used by most tests (fast, bounded).
pub const HC_HTTP: &str = "health_check: { path: /health, interval: 200ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1 }";
/// Active TCP-connect health check (no path).
pub const HC_TCP: &str =
    "health_check: { interval: 200ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1 }";

/// A free TCP port on 127.0.0.1 for a gateway to listen on later.
///
/// Not taken from the kernel's ephemeral range (32768-60999 here): a port released by
/// `bind(":0")` could be handed to a backend's `bind(":0")` or to the next `free_port` of a
/// parallel test before the gateway binds it (seen in CI: a test's requests reached another
/// test's admin listener). Ports come from 20000-31999 instead, from a per-process counter,
/// so no two calls in one test binary return the same port and the kernel never assigns
/// them to anyone else.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Test binaries run one after another; a per-process start spreads them anyway.
    let start = (std::process::id() % 120) * 100;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (BASE + (start + n) % SPAN) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {BASE}-{}", BASE + SPAN - 1);
}

/// An address on which nothing listens (connections are refused).
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Tokio runtime shared by every backend of a test binary (independent of the test's runtime).
fn backend_rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-backend")
            .enable_all()
            .build()
            .expect("backend runtime")
    })
}

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// One request as seen by a backend.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// path and query as received ("/a/b?x=1")
    pub uri: String,
    /// header names lowercase, in arrival order, repeated names kept
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// Every value of header `name` joined with ", ".
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        if vals.is_empty() {
            None
        } else {
            Some(vals.join(", "))
        }
    }
}

const MAX_RECORDED: usize = 2000;

struct BackendState {
    name: String,
    status: AtomicU16,
    delay_ms: AtomicU64,
    body: Mutex<Option<String>>,
    hangup: std::sync::atomic::AtomicBool,
    health_status: AtomicU16,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    /// TCP connections accepted.
    accepted: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: Mutex<VecDeque<Recorded>>,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
    extra_headers: Mutex<Vec<(String, String)>>,
}

/// A scriptable HTTP/1.1 server on 127.0.0.1.
///
/// Every request except `GET /health` counts as a hit and is recorded; by default it answers
/// 200 with `{"backend","method","path","query","headers"}`. `GET /health` answers
/// `health_status` and counts in `health_hits` only.
pub struct Backend {
    ip: std::net::IpAddr,
    port: u16,
    state: Arc<BackendState>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct InFlight(Arc<BackendState>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    /// Start a backend named `name` on a fresh port.
    pub fn start(name: &str) -> Backend {
        let listener = StdListener::bind("127.0.0.1:0").expect("backend bind");
        Self::on_listener(name, listener)
    }

    /// Start a backend on `addr` (another loopback address such as `127.0.0.2:PORT`, so that
    /// several backends share one port as DNS-discovered targets do). `None` if it is taken.
    pub fn start_at(name: &str, addr: SocketAddr) -> Option<Backend> {
        let listener = StdListener::bind(addr).ok()?;
        Some(Self::on_listener(name, listener))
    }

    fn on_listener(name: &str, listener: StdListener) -> Backend {
        let local = listener.local_addr().unwrap();
        let (ip, port) = (local.ip(), local.port());
        let state = Arc::new(BackendState {
            name: name.to_string(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            body: Mutex::new(None),
            hangup: std::sync::atomic::AtomicBool::new(false),
            health_status: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            requests: Mutex::new(VecDeque::new()),
            conns: Mutex::new(Vec::new()),
            extra_headers: Mutex::new(Vec::new()),
        });
        let b = Backend {
            ip,
            port,
            state,
            accept: Mutex::new(None),
        };
        b.serve(listener);
        b
    }

    fn serve(&self, listener: StdListener) {
        listener.set_nonblocking(true).unwrap();
        let state = self.state.clone();
        let handle = backend_rt().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                state.accepted.fetch_add(1, Ordering::SeqCst);
                let st = state.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut conns = state.conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(handle);
    }

    /// Headers added to every (non-health) response from now on.
    pub fn set_extra_headers(&self, headers: &[(&str, &str)]) {
        *self.state.extra_headers.lock().unwrap() = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// "127.0.0.1:PORT" (the address it listens on)
    pub fn addr(&self) -> String {
        SocketAddr::new(self.ip, self.port).to_string()
    }

    /// Status for every non-health request (default 200).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }
    /// Delay before answering every non-health request.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Replace the default JSON body (None restores it).
    pub fn set_body(&self, body: Option<&str>) {
        *self.state.body.lock().unwrap() = body.map(str::to_string);
    }
    /// When true, non-health requests are read and the connection is closed unanswered.
    pub fn set_hangup(&self, on: bool) {
        self.state.hangup.store(on, Ordering::SeqCst);
    }
    /// Status answered to `GET /health` (default 200).
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }
    /// TCP connections this backend has accepted (health checks' included).
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
    /// Reset hit counters and the request log (health counter too).
    pub fn reset(&self) {
        self.state.hits.store(0, Ordering::SeqCst);
        self.state.health_hits.store(0, Ordering::SeqCst);
        self.state.max_in_flight.store(0, Ordering::SeqCst);
        self.state.requests.lock().unwrap().clear();
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect()
    }
    pub fn last_request(&self) -> Option<Recorded> {
        self.state.requests.lock().unwrap().back().cloned()
    }

    /// Close the listener and every open connection; new connections are refused.
    pub fn stop(&self) {
        if let Some(h) = self.accept.lock().unwrap().take() {
            h.abort();
        }
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        // Wait until the port really refuses connections.
        let deadline = Instant::now() + Duration::from_secs(3);
        let addr: SocketAddr = self.addr().parse().unwrap();
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Err(_) => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        panic!("backend {} still accepts after stop()", self.name());
    }

    /// Listen again on the same port after `stop()`.
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match StdListener::bind((self.ip, self.port)) {
                Ok(l) => return self.serve(l),
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "backend {} cannot re-bind port {}: {e}",
                        self.name(),
                        self.port
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(h) = self.accept.lock().unwrap().take() {
            h.abort();
        }
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

async fn handle(
    st: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    if method == "GET" && path == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = st.health_status.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"status\":\"health\"}")))
            .unwrap());
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(st.clone());

    let query = req.uri().query().map(str::to_string);
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = body_bytes(req).await;
    let mut hmap = serde_json::Map::new();
    for (k, v) in &headers {
        match hmap.get_mut(k) {
            Some(Value::String(s)) => {
                s.push_str(", ");
                s.push_str(v);
            }
            _ => {
                hmap.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    {
        let mut log = st.requests.lock().unwrap();
        if log.len() >= MAX_RECORDED {
            log.pop_front();
        }
        log.push_back(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            uri,
            headers,
            body: body.clone(),
        });
    }

    if st.hangup.load(Ordering::SeqCst) {
        // An error from the service makes hyper close the connection without a response.
        return Err("backend hangs up".into());
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = st.status.load(Ordering::SeqCst);
    let override_body = st.body.lock().unwrap().clone();
    let body = match override_body {
        Some(b) => b,
        None => json!({
            "backend": st.name,
            "method": method,
            "path": path,
            "query": query,
            "headers": Value::Object(hmap),
            "body_len": body.len(),
        })
        .to_string(),
    };
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend", st.name.as_str());
    for (n, v) in st.extra_headers.lock().unwrap().iter() {
        resp = resp.header(n.as_str(), v.as_str());
    }
    Ok(resp.body(Full::new(Bytes::from(body))).unwrap())
}

// ---------------------------------------------------------------------------------------------
// Gateway process
// ---------------------------------------------------------------------------------------------

/// A running gateway process, killed on drop.
pub struct Gateway {
    pub port: u16,
    pub admin_port: u16,
    pub pid: u32,
    pub client: reqwest::Client,
    child: Mutex<Child>,
    dir: TempDir,
}

/// A reqwest client: no redirects, no proxies, bounded time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("reqwest client")
}

fn port_of(v: &Value) -> Option<u16> {
    let s = v.as_str()?;
    s.rsplit(':').next()?.parse().ok()
}

impl Gateway {
    /// Write `yaml` to a temp dir, spawn the gateway and wait until it serves.
    pub fn start(yaml: &str) -> Gateway {
        Gateway::start_in(yaml, TempDir::new().expect("tempdir"))
    }

    /// Like `start`, keeping `dir` (which may hold pid_file/upgrade_sock) alive with the process.
    pub fn start_in(yaml: &str, dir: TempDir) -> Gateway {
        Gateway::start_in_env(yaml, dir, &[])
    }

    /// Like `start_in`, with `env` added to the gateway's environment (for `${NAME}` in the
    /// config; tests share one process, so they never set their own environment).
    pub fn start_in_env(yaml: &str, dir: TempDir, env: &[(&str, &str)]) -> Gateway {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test YAML must parse");
        let doc: Value = serde_json::to_value(doc).expect("yaml to json");
        let port = port_of(&doc["server"]["listen"][0]).expect("server.listen[0] with a port");
        let admin_port = port_of(&doc["admin"]["listen"]).expect("admin.listen with a port");

        let cfg = dir.path().join("gatehouse.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn gatehouse");
        let mut gw = Gateway {
            port,
            admin_port,
            pid: child.id(),
            client: client(),
            child: Mutex::new(child),
            dir,
        };
        gw.wait_ready(Duration::from_secs(10));
        gw
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "gatehouse exited early ({status}).\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    self.stderr(),
                    self.stdout()
                );
            }
            let public_up = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_millis(200),
            )
            .is_ok();
            if public_up {
                let (resp, _) = raw_request(
                    self.admin_port,
                    b"GET /health HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(2),
                );
                if resp.starts_with(b"HTTP/1.1 200") || resp.starts_with(b"HTTP/1.0 200") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "gatehouse not ready within {limit:?} (public :{} admin :{}).\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    self.port,
                    self.admin_port,
                    self.stderr(),
                    self.stdout()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `-t -c FILE` on `yaml`: (exit code, stderr).
    pub fn validate(yaml: &str) -> (i32, String) {
        let dir = TempDir::new().unwrap();
        let p = dir.path().join("check.yaml");
        std::fs::write(&p, yaml).unwrap();
        validate_file(&p, &[], &[])
    }

    /// Exit status if the gateway process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Diagnostics for a failed request: process state and captured stderr.
    pub fn diagnostics(&self) -> String {
        let state = match self.exited() {
            Some(st) => format!("gateway EXITED: {st}"),
            None => "gateway still running".to_string(),
        };
        format!("{state}\n--- stderr ---\n{}", self.stderr())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// GET `path` on the public port.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", self.diagnostics()))
    }

    /// GET `path` and return (status, JSON body or Null).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Send `req` and return (status, body text).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, String) {
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request failed: {e:?}\n{}", self.diagnostics()));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// POST `body` as `content_type` to `path`; (status, body).
    pub async fn post_typed(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        self.post_with(path, &[("content-type", content_type)], body)
            .await
    }

    /// POSTs one empty gRPC message (`application/grpc`) to `path` with `headers`.
    pub async fn post_grpc(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let r = self.client.post(self.url(path));
        with_headers(r.header("content-type", "application/grpc"), headers)
            .body(vec![0u8, 0, 0, 0, 0])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}\n{}", self.diagnostics()))
    }

    /// `GET path` with `headers`: (status, body).
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.send(with_headers(self.client.get(self.url(path)), headers))
            .await
    }

    /// `GET path` with `headers`: the whole response (its headers too).
    pub async fn get_response(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        with_headers(self.client.get(self.url(path)), headers)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", self.diagnostics()))
    }

    /// `POST body` to `path` with `headers`: (status, body).
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let req = with_headers(self.client.post(self.url(path)), headers);
        self.send(req.body(body)).await
    }

    /// Admin `GET /status` as JSON.
    pub async fn status_json(&self) -> Value {
        let r = self
            .client
            .get(self.admin_url("/status"))
            .send()
            .await
            .expect("admin /status");
        r.json().await.expect("/status JSON")
    }

    /// `healthy` of target `addr` of upstream `upstream` in `/status`.
    pub async fn target_healthy(&self, upstream: &str, addr: &str) -> Option<bool> {
        let st = self.status_json().await;
        st["upstreams"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == upstream)?["targets"]
            .as_array()?
            .iter()
            .find(|t| t["addr"] == addr)?["healthy"]
            .as_bool()
    }

    /// Poll `/status` until the target reports `healthy == want` (false on timeout).
    pub async fn wait_target_health(
        &self,
        upstream: &str,
        addr: &str,
        want: bool,
        limit: Duration,
    ) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.target_healthy(upstream, addr).await == Some(want) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Run `gatehouse -t -c path` with extra env vars set / removed: (exit code, stderr).
/// `-t` checks that the directories of `pid_file` and `upgrade_sock` exist; the defaults
/// follow systemd's `$RUNTIME_DIRECTORY`, which points to a fresh directory here.
pub fn validate_file(path: &Path, set_env: &[(&str, &str)], remove_env: &[&str]) -> (i32, String) {
    let run = TempDir::new().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("-t").arg("-c").arg(path).stdin(Stdio::null());
    cmd.env("RUNTIME_DIRECTORY", run.path());
    for (k, v) in set_env {
        cmd.env(k, v);
    }
    for k in remove_env {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse -t");
    // Bounded wait: -t must not start serving.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gatehouse -t -c {} did not exit within 20s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/// Send `bytes` to 127.0.0.1:`port`, read until the peer closes or `limit` passes.
/// Returns (bytes read, closed_by_peer). Write errors are ignored (the peer may answer and
/// close before reading everything); a reset after data was read counts as closed.
pub fn raw_request(port: u16, bytes: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => return (Vec::new(), true),
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(limit));
    let _ = s.write_all(bytes);
    read_until_close(&mut s, limit)
}

/// Read from `s` until EOF/reset or until `limit` passes.
pub fn read_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (out, false)
            }
            Err(_) => return (out, true),
        }
    }
}

/// First value of header `name` (case-insensitive) among `headers`, whose names are lowercase.
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

/// The whole body of a request a test server received (empty when reading it failed).
pub async fn body_bytes(req: hyper::Request<hyper::body::Incoming>) -> Vec<u8> {
    match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// `headers` as (lowercase name, value) pairs in order, repeated names kept.
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// One request head read from `c` (through the blank line; what follows stays in `buf` for
/// the next call), or None when the peer closes or fails first.
pub fn read_head(c: &mut impl Read, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 4096];
        match c.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    Some(head)
}

/// Plays a scripted answer on a raw upstream connection: each part after its delay, flushed
/// on its own (so the gateway sees the pieces arrive apart); for a HEAD request only the head
/// of the first part. False when the gateway went away.
pub fn write_script<'a>(
    c: &mut impl Write,
    head_only: bool,
    parts: impl IntoIterator<Item = (Duration, &'a [u8])>,
) -> bool {
    for (delay, part) in parts {
        if head_only {
            let end = part
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(part.len(), |p| p + 4);
            return c.write_all(&part[..end]).is_ok();
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if c.write_all(part).and_then(|_| c.flush()).is_err() {
            return false;
        }
    }
    true
}

/// A parsed raw HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Parse the first response in `raw` (Content-Length, chunked or read-to-close bodies).
pub fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let rest = &raw[head_end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if get("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        decode_chunked(rest)
    } else if let Some(cl) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..cl.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_str, 16) else {
            return out;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        if data.starts_with(b"\r\n") {
            data = &data[2..];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// Assert `body` is a gateway error `{"error": code, "message": .., "request_id": ..}`
/// that leaks no upstream address. Returns the parsed JSON.
pub fn assert_error_body(body: &str, code: &str) -> Value {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
    assert_eq!(v["error"], code, "error code in {body}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message must be a non-empty string: {body}"
    );
    assert!(
        v["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "request_id must be a non-empty string: {body}"
    );
    assert!(
        !body.contains("127.0.0.1"),
        "error body leaks an upstream address: {body}"
    );
    v
}

/// The start of a config whose route `r` (on `/`, to upstream `u` at an address nothing
/// answers on) has plugins: append the plugin entries (`      - name: ...`). Config-error
/// tests count their line numbers from it.
pub const ROUTE_R_PLUGINS: &str = "upstreams:\n  - name: u\n    targets: [{ addr: \"127.0.0.1:1\" }]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n";

/// Asserts that `gatehouse -t` refuses `yaml` with each of `wants` in its errors; returns the
/// errors.
pub fn assert_refused(yaml: &str, wants: &[&str]) -> String {
    let (code, err) = Gateway::validate(yaml);
    assert_eq!(code, 1, "{err}");
    for want in wants {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    err
}

/// `req` with each of `headers` added.
pub fn with_headers(
    mut req: reqwest::RequestBuilder,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// [`assert_refused`] on [`ROUTE_R_PLUGINS`] followed by `plugins` (its entries); returns the
/// whole config and the errors.
pub fn assert_plugins_refused(plugins: &str, wants: &[&str]) -> (String, String) {
    let yaml = [ROUTE_R_PLUGINS, plugins].concat();
    let err = assert_refused(&yaml, wants);
    (yaml, err)
}

/// `backend` field of a default backend JSON body.
pub fn backend_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["backend"].as_str().unwrap_or("").to_string()
}

/// Poll `cond` every 25 ms until true or `limit` passes; returns the last result.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, mut cond: F) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// YAML config builder
// ---------------------------------------------------------------------------------------------

/// `{ addr: "..." }` target entry.
/// A gateway with one upstream `u` (backend `b`) and one route `r` on `path` carrying
/// `route_extra` (plugins, timeouts, ...).
pub fn one_route(b: &Backend, path: &str, route_extra: &str) -> Gateway {
    Cfg::new()
        .upstream("u", &[target(b)], "")
        .route("r", &[path], "u", route_extra)
        .start()
}

/// Backend `b` behind upstream `u` and a catch-all route `r` on `/`; `server` lines go under
/// `server:` (limits, timeouts): for tests of the listener rather than of routing.
pub fn catch_all(server: &str) -> (Backend, Gateway) {
    let b = Backend::start("b");
    let gw = Cfg::new()
        .server(server)
        .upstream("u", &[target(&b)], "")
        .route("r", &["/"], "u", "")
        .start();
    (b, gw)
}

/// Backend `a` behind upstream `u`: a config for [`Cfg::route_u`] routes (add them, then
/// `start`).
pub fn upstream_u() -> (Backend, Cfg) {
    let a = Backend::start("a");
    let cfg = Cfg::new().upstream("u", &[target(&a)], "");
    (a, cfg)
}

/// Backends `a` and `b` behind upstreams `ua` and `ub`: a config for routes to choose
/// between (add the routes, then `start`).
pub fn two_upstreams() -> (Backend, Backend, Cfg) {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let cfg = Cfg::new()
        .upstream("ua", &[target(&a)], "")
        .upstream("ub", &[target(&b)], "");
    (a, b, cfg)
}

/// A gateway with upstream `u` over `targets` (`upstream_extra` lines at its level:
/// retries, balance, health checks) and route `r` on `path` (`route_extra` at its level).
pub fn one_upstream(
    targets: &[String],
    upstream_extra: &str,
    path: &str,
    route_extra: &str,
) -> Gateway {
    Cfg::new()
        .upstream("u", targets, upstream_extra)
        .route("r", &[path], "u", route_extra)
        .start()
}

pub fn target(b: &Backend) -> String {
    target_addr(&b.addr())
}
/// A target on 127.0.0.1:`port` (a server of the test's own).
pub fn target_port(port: u16) -> String {
    target_addr(&format!("127.0.0.1:{port}"))
}

pub fn target_addr(addr: &str) -> String {
    format!("{{ addr: \"{addr}\" }}")
}
/// `{ addr: "...", weight: w }`
pub fn target_w(b: &Backend, weight: u32) -> String {
    format!("{{ addr: \"{}\", weight: {weight} }}", b.addr())
}
/// `{ addr: "...", backup: true }`
pub fn target_backup(b: &Backend) -> String {
    format!("{{ addr: \"{}\", backup: true }}", b.addr())
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{pad}{l}\n"))
        .collect()
}

/// Builder for a test config: public and admin ports, a temp dir for pid file / upgrade
/// socket, `server:` extras, upstreams and routes.
pub struct Cfg {
    pub port: u16,
    pub admin_port: u16,
    pub dir: TempDir,
    server: Vec<String>,
    upstreams: Vec<String>,
    routes: Vec<String>,
    extra: Vec<String>,
}

impl Default for Cfg {
    fn default() -> Self {
        Self::new()
    }
}

impl Cfg {
    pub fn new() -> Cfg {
        Cfg {
            port: free_port(),
            admin_port: free_port(),
            dir: TempDir::new().unwrap(),
            server: Vec::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// An HTTPS listener on `tls_port` (`extra` lines go under `server.tls`), with the
    /// certificate [`make_certs`] writes into this config's directory; also the CA's PEM,
    /// for [`https_client`].
    pub fn tls_listener(self, tls_port: u16, extra: &str) -> (Cfg, String) {
        let ca = make_certs(self.dir.path());
        let mut tls = format!(
            "tls:\n  listen: [\"127.0.0.1:{tls_port}\"]\n  cert: tls/server.crt\n  key: tls/server.key"
        );
        if !extra.is_empty() {
            tls.push('\n');
            tls.push_str(&indent(extra, 2));
        }
        (self.server(&tls), ca)
    }

    /// Extra lines under `server:` (e.g. `max_body_bytes: 1024`).
    pub fn server(mut self, lines: &str) -> Cfg {
        self.server.push(lines.to_string());
        self
    }

    /// An upstream; `extra` lines go at the upstream's level (`balance: weighted`, ...).
    pub fn upstream(mut self, name: &str, targets: &[String], extra: &str) -> Cfg {
        let mut s = format!("  - name: {name}\n    targets:\n");
        for t in targets {
            s.push_str(&format!("      - {t}\n"));
        }
        s.push_str(&indent(extra, 4));
        self.upstreams.push(s);
        self
    }

    /// An upstream with no `targets:` list; `extra` lines go at its level (`discovery: ...`).
    pub fn upstream_untargeted(mut self, name: &str, extra: &str) -> Cfg {
        let mut s = format!("  - name: {name}\n");
        s.push_str(&indent(extra, 4));
        self.upstreams.push(s);
        self
    }

    /// A route; `extra` lines go at the route's level (`strip_path: true`, `hosts: [..]`, ...).
    pub fn route(mut self, name: &str, paths: &[&str], upstream: &str, extra: &str) -> Cfg {
        let paths: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
        let mut s = format!(
            "  - name: {name}\n    paths: [{}]\n    upstream: {upstream}\n",
            paths.join(", ")
        );
        s.push_str(&indent(extra, 4));
        self.routes.push(s);
        self
    }

    /// Route `name` on `/name` to upstream `u`, `extra` at its level: a test's usual route.
    pub fn route_u(self, name: &str, extra: &str) -> Cfg {
        self.route(name, &[&format!("/{name}")], "u", extra)
    }

    /// Route `r` on `/` to upstream `u`, `extra` at its level: every path of the listener.
    pub fn route_root(self, extra: &str) -> Cfg {
        self.route("r", &["/"], "u", extra)
    }

    /// Raw top-level YAML appended at the end.
    pub fn top(mut self, yaml: &str) -> Cfg {
        self.extra.push(yaml.to_string());
        self
    }

    pub fn yaml(&self) -> String {
        let d = self.dir.path().display();
        let mut y = format!(
            "server:\n  listen: [\"127.0.0.1:{}\"]\n  threads: 1\n  grace_period: 1\n  pid_file: {d}/gatehouse.pid\n  upgrade_sock: {d}/upgrade.sock\n  access_log: off\n",
            self.port
        );
        for s in &self.server {
            y.push_str(&indent(s, 2));
        }
        y.push_str(&format!(
            "admin:\n  listen: \"127.0.0.1:{}\"\n",
            self.admin_port
        ));
        if !self.upstreams.is_empty() {
            y.push_str("upstreams:\n");
            for u in &self.upstreams {
                y.push_str(u);
            }
        }
        if !self.routes.is_empty() {
            y.push_str("routes:\n");
            for r in &self.routes {
                y.push_str(r);
            }
        }
        for e in &self.extra {
            y.push_str(e);
            if !e.ends_with('\n') {
                y.push('\n');
            }
        }
        y
    }

    /// Start a gateway on this config.
    pub fn start(self) -> Gateway {
        let yaml = self.yaml();
        Gateway::start_in(&yaml, self.dir)
    }

    /// Start a gateway on this config with `env` added to its environment.
    pub fn start_env(self, env: &[(&str, &str)]) -> Gateway {
        let yaml = self.yaml();
        Gateway::start_in_env(&yaml, self.dir, env)
    }
}

/// Path of a file under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

// ---------------------------------------------------------------------------------------------
// Observability helpers: metrics text, signals, config rewrites, access log files
// ---------------------------------------------------------------------------------------------

/// Send signal `sig` (`HUP`, `QUIT`, `USR1`, ...) to `pid` with kill(1).
pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -s {sig} {pid} failed");
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text exposition format (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => match line.split_once(' ') {
                Some((n, r)) => (n, r),
                None => continue,
            },
        };
        let mut labels = std::collections::BTreeMap::new();
        let value_part = if let Some(body) = rest.strip_prefix('{') {
            // label="value" pairs; values may contain escaped quotes
            let mut chars = body.char_indices().peekable();
            let mut end = body.len();
            let mut key = String::new();
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        let mut val = String::new();
                        let _ = chars.next(); // opening quote
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => {
                                    if let Some((_, n)) = chars.next() {
                                        val.push(match n {
                                            'n' => '\n',
                                            o => o,
                                        });
                                    }
                                }
                                '"' => break,
                                o => val.push(o),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), val);
                    }
                    o => key.push(o),
                }
            }
            &body[end..]
        } else {
            rest
        };
        let value = value_part
            .split_whitespace()
            .next()
            .and_then(|v| match v {
                "+Inf" => Some(f64::INFINITY),
                "-Inf" => Some(f64::NEG_INFINITY),
                v => v.parse().ok(),
            })
            .unwrap_or(f64::NAN);
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// Samples named `name` whose labels include every `(key, value)` of `labels`.
pub fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample `name{labels...}` (labels must match exactly), if present.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let all = parse_metrics(text);
    let found: Vec<&Sample> = samples(&all, name, labels)
        .into_iter()
        .filter(|s| s.labels.len() == labels.len())
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} matches several series: {found:?}"
    );
    found.first().map(|s| s.value)
}

/// Run `promtool check metrics` on `text` when promtool is installed; without it, print a
/// notice and skip, except under `CI=true`, where its absence fails the test.
pub fn promtool_check(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("promtool is required under CI=true (Debian package prometheus): {e}");
            }
            eprintln!("NOTICE: promtool not installed ({e}); skipping `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Gateway {
    /// The config file this gateway runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("gatehouse.yaml")
    }

    /// Write `yaml` as this gateway's config file (for a reload).
    pub fn write_config_yaml(&self, yaml: &str) {
        std::fs::write(self.config_path(), yaml).expect("write config");
    }

    /// Write `cfg` as this gateway's config file, keeping this gateway's ports and dir.
    pub fn write_config(&self, mut cfg: Cfg) {
        cfg.port = self.port;
        cfg.admin_port = self.admin_port;
        let yaml = cfg.yaml().replace(
            &cfg.dir.path().display().to_string(),
            &self.dir().display().to_string(),
        );
        self.write_config_yaml(&yaml);
    }

    pub fn signal(&self, sig: &str) {
        send_signal(self.pid, sig);
    }

    /// The value of one series once it reaches `want` (polled for up to 2 s: requests are
    /// counted in the logging phase, which may run just after the client got its answer),
    /// else its last value.
    pub async fn metric_reaching(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
    ) -> Option<f64> {
        let mut last = None;
        for _ in 0..100 {
            last = metric(&self.metrics_text().await, name, labels);
            if last >= Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    }

    /// Admin `GET /metrics` as text (asserts 200 and the Prometheus content type).
    pub async fn metrics_text(&self) -> String {
        let r = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e:?}\n{}", self.diagnostics()));
        assert_eq!(r.status().as_u16(), 200, "GET /metrics");
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/plain"), "content-type {ct}");
        r.text().await.expect("metrics body")
    }

    /// The value of the series printed exactly as `series` (its name and, if it has any, its
    /// labels as the gateway writes them); 0 when absent.
    pub async fn series_value(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The sum of every series of metric `name`, whatever its labels; 0 when there is none.
    pub async fn metric_total(&self, name: &str) -> f64 {
        parse_metrics(&self.metrics_text().await)
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Admin `POST /reload`: (status, JSON body).
    /// `req` over a fresh raw TCP connection (at most `limit`): the response, its raw bytes
    /// and whether the gateway closed the connection. Panics, with the gateway's
    /// diagnostics, when no complete response came.
    pub fn raw_exchange(&self, req: &[u8], limit: Duration) -> (RawResponse, Vec<u8>, bool) {
        let (raw, closed) = raw_request(self.port, req, limit);
        let resp = parse_response(&raw).unwrap_or_else(|| {
            panic!(
                "no response to {:?}: {:?}\n{}",
                String::from_utf8_lossy(req.split(|b| *b == b'\r').next().unwrap_or(req)),
                String::from_utf8_lossy(&raw),
                self.diagnostics()
            )
        });
        (resp, raw, closed)
    }

    pub async fn admin_reload(&self) -> (u16, Value) {
        let r = self
            .client
            .post(self.admin_url("/reload"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /reload: {e:?}\n{}", self.diagnostics()));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Poll `/status` until its `version` is `v` (false on timeout).
    pub async fn wait_version(&self, v: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.status_json().await["version"].as_u64() == Some(v) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Start a gateway on `cfg` with `server.access_log` set to `value` (the builder writes
/// `access_log: off`).
pub fn start_with_access_log(cfg: Cfg, value: &str) -> Gateway {
    let yaml = cfg
        .yaml()
        .replace("  access_log: off\n", &format!("  access_log: {value}\n"));
    Gateway::start_in(&yaml, cfg.dir)
}

/// Non-empty lines of a file (empty when it does not exist).
pub fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A test CA and a server certificate for localhost/127.0.0.1 signed by it, written to
/// `dir/tls/` (`server.crt`, `server.key`, `ca.pem`); returns the CA's PEM.
pub fn make_certs(dir: &std::path::Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "gatehouse test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join("tls/server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls/server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls/ca.pem"), ca_cert.pem()).unwrap();
    ca_cert.pem()
}

/// A client for the gateway's HTTPS listener that trusts only `ca_pem` (rustls, no proxy,
/// 10 s timeout); `https_client_builder` for more settings.
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    https_client_builder(ca_pem).build().unwrap()
}

pub fn https_client_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(10))
}

/// An in-test HTTP server (see [`spawn_http`]), stopped on drop.
pub struct HttpServer {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub fn start<F, Fut>(handler: F) -> HttpServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, std::convert::Infallible>>
            + Send
            + 'static,
    {
        let (port, task) = spawn_http(handler);
        HttpServer { port, task }
    }

    /// `http://127.0.0.1:PORT` + `path`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain HTTP/1 server on an ephemeral 127.0.0.1 port (kept bound, so no other test can
/// be handed the port) answering every request with `handler`, on the shared backend
/// runtime. Returns the port and the accept task (abort it to stop the server). For test
/// peers with logic of their own: auth services, collectors, key servers.
pub fn spawn_http<F, Fut>(handler: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let listener = StdListener::bind("127.0.0.1:0").expect("test server bind");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let task = backend_rt().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("from_std");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
    (port, task)
}

/// Resident set size of process `pid` in KiB (0 once it is gone).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether `pid` runs (a zombie or a dead process does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Processes a test does not own as children (daemons, the new process of an upgrade):
/// SIGKILLed on drop, whatever happened.
#[derive(Default)]
pub struct KillOnDrop(std::sync::Mutex<Vec<u32>>);

impl KillOnDrop {
    pub fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            if alive(*pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The pid a pid file names, if it names one.
pub fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
