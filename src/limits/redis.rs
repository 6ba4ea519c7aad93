//! `policy: redis`: counts shared by every gateway node through one Redis.
//!
//! One round trip per request: an `EVALSHA` of a Lua script that implements the same
//! algorithm as [`super::local`] (sliding window counter over epoch-aligned buckets, or
//! GCRA), reads the clock with `TIME` so every node agrees on buckets, counts only when
//! every window has room, and returns the counts it saw; the headers are computed here with
//! the same code as the local policy. Keys expire by themselves (`PEXPIRE`).
//!
//! Three deployments, one [`RedisSpec`] each ([`Topology`]):
//! - a single server (`url`): a `redis` crate `ConnectionManager`, one multiplexed connection,
//!   reconnecting by itself;
//! - Redis Cluster (`cluster_nodes`): the crate's async cluster connection, which reads the
//!   slot map, routes each call to the master of its key's slot and follows `MOVED`/`ASK`
//!   and failovers. Every key of one limit carries one hash tag ([`slot_tagged`]) so the
//!   script's keys live in one slot and it stays atomic;
//! - Sentinel (`sentinel`): the sentinels name the master; a `ConnectionManager` to it is
//!   used until a call fails, then the master is asked for again (a failover moves it).
//!
//! Connections are created on first use inside the proxy's runtime, one per distinct spec in
//! the process. Each call is bounded by `timeout`; after a failure Redis is not asked again
//! for [`HOLD_OFF`], so an outage costs callers nothing but the decision of `fault_tolerant`.
//! The time spent without an answer is summed in [`fallback_seconds`]. URLs and passwords
//! are never logged: only [`RedisSpec::describe`] (hosts and ports) is.
//!
//! **Key names hold a digest, never the key.** Clients choose keys (`limit_by: header` takes
//! any header value), so a name holding the value would let distinct 31 KB values fill
//! Redis's memory for the window. The name ends with the first 16 bytes of the key's
//! SHA-256, in hex: 32 characters whatever the key ([`full_key`]). Unlike the local policy's
//! keyed SipHash, the digest has no secret, because every node of a fleet must compute the
//! same name for the same client to share its count; SHA-256 is collision resistant
//! without one, and 128 bits leave no collision to find or to stumble on.

use super::{decide_token, decide_windows, Decision, Limits, TokenBucket, WindowCounts};
use crate::util::clock::now_us;
use crate::util::redact::redact_url;
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{ConnectionAddr, Script, TlsCertificates, TlsMode};
use arc_swap::ArcSwapOption;
use once_cell::sync::{Lazy, OnceCell};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// After a failed call, Redis is skipped (the call fails at once) for this long.
pub const HOLD_OFF: Duration = Duration::from_millis(500);

/// KEYS[1]: key prefix. ARGV: n, then `window_ms limit` n times.
/// Returns {allowed, now_ms, curr_1, prev_1, elapsed_1, ...} with counts before this request.
const WINDOWS_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out = {0, now}
local allowed = 1
local keys = {}
for i = 0, n - 1 do
  local w = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  local b = math.floor(now / w)
  local base = KEYS[1] .. ':' .. string.format('%.0f', w) .. ':'
  local ck = base .. string.format('%.0f', b)
  local curr = tonumber(redis.call('GET', ck) or '0')
  local prev = tonumber(redis.call('GET', base .. string.format('%.0f', b - 1)) or '0')
  local elapsed = now - b * w
  local est = curr + math.ceil(prev * (w - elapsed) / w)
  if est >= limit then allowed = 0 end
  keys[i + 1] = {ck, w}
  out[#out + 1] = curr
  out[#out + 1] = prev
  out[#out + 1] = elapsed
end
if allowed == 1 then
  for i = 1, n do
    redis.call('INCR', keys[i][1])
    redis.call('PEXPIRE', keys[i][1], 2 * keys[i][2] + 1000)
  end
end
out[1] = allowed
return out
"#;

/// KEYS[1]: key. ARGV: interval_us, burst. Returns {allowed, now_us, tat_before}.
const TOKEN_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
local tat = stored
if tat < now then tat = now end
local new = tat + interval
local allowed = 0
if new - now <= burst * interval then
  allowed = 1
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
return {allowed, now, stored}
"#;

static WINDOWS_SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(WINDOWS_LUA));
static TOKEN_SCRIPT: Lazy<Script> = Lazy::new(|| Script::new(TOKEN_LUA));

/// Why a Redis check gave no answer. Never holds the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// Skipped: a recent call failed.
    HoldOff,
    Timeout,
    Redis(String),
    BadReply,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::HoldOff => f.write_str("skipped after a recent failure"),
            BackendError::Timeout => f.write_str("timed out"),
            BackendError::Redis(c) => write!(f, "redis error: {c}"),
            BackendError::BadReply => f.write_str("unexpected reply from the script"),
        }
    }
}

/// Where the shared counters live.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server: `redis://[user:password@]host[:port][/db]` (`rediss://` for TLS).
    Single { url: String },
    /// Redis Cluster: some of its nodes (`host:port`); the rest is discovered.
    Cluster { nodes: Vec<String> },
    /// Sentinel: the sentinels (`host:port`) and the name of the master they watch.
    Sentinel {
        master: String,
        nodes: Vec<String>,
        /// Credentials of the sentinels themselves (`requirepass` in sentinel.conf).
        username: Option<String>,
        password: Option<String>,
    },
}

/// How to reach one Redis deployment. `Debug` and [`Self::describe`] never show a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub topology: Topology,
    /// For cluster nodes and the Sentinel's master (a single server's URL holds its own).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Database of the Sentinel's master (a cluster has only database 0).
    pub db: i64,
    /// TLS to every node (cluster nodes, sentinels and master); a single server uses
    /// `rediss://`.
    pub tls: bool,
    /// PEM of the CA that signs the servers' certificates (else the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Bound of one call (connecting included).
    pub timeout: Duration,
    /// Bound of one connection attempt made in the background.
    pub connect_timeout: Duration,
}

impl fmt::Debug for RedisSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl RedisSpec {
    /// Hosts and ports only, for logs and `Debug`.
    pub fn describe(&self) -> String {
        let tls = if self.tls { " (tls)" } else { "" };
        match &self.topology {
            Topology::Single { url } => redact_url(url),
            Topology::Cluster { nodes } => format!("cluster {}{tls}", nodes.join(",")),
            Topology::Sentinel { master, nodes, .. } => {
                format!("sentinel {master}@{}{tls}", nodes.join(","))
            }
        }
    }

    /// A stable id of everything that makes a different connection (secrets hashed).
    pub fn identity(&self) -> String {
        let topo = match &self.topology {
            Topology::Single { url } => format!("single {url}"),
            Topology::Cluster { nodes } => format!("cluster {nodes:?}"),
            Topology::Sentinel {
                master,
                nodes,
                username,
                password,
            } => format!("sentinel {master} {nodes:?} {username:?} {password:?}"),
        };
        crate::util::digest::identity(&[
            &topo,
            &format!("{:?} {:?}", self.username, self.password),
            &format!(
                "{} {} {:?} {:?} {:?}",
                self.db, self.tls, self.ca_pem, self.timeout, self.connect_timeout
            ),
        ])
    }

    fn certs(&self) -> Option<TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    /// Checks the addresses and builds the client (no connection is made yet). The error
    /// never holds a secret.
    fn connector(&self) -> Result<Connector, String> {
        if self.tls
            || matches!(&self.topology, Topology::Single { url } if url.starts_with("rediss://"))
        {
            // rustls needs a process-wide crypto provider before any TLS client is built.
            pingora::tls::install_default_crypto_provider();
        }
        match &self.topology {
            Topology::Single { url } => {
                let client = match self.certs() {
                    Some(c) => ::redis::Client::build_with_tls(url.as_str(), c),
                    None => ::redis::Client::open(url.as_str()),
                };
                client
                    .map(|client| Connector::Single {
                        client,
                        conn: OnceCell::new(),
                    })
                    .map_err(|_| {
                        "invalid Redis URL (expected redis://[user:password@]host[:port][/db])"
                            .to_string()
                    })
            }
            Topology::Cluster { nodes } => {
                let mut urls = Vec::with_capacity(nodes.len());
                for n in nodes {
                    let (host, port) = host_port(n)?;
                    let scheme = if self.tls { "rediss" } else { "redis" };
                    urls.push(format!("{scheme}://{host}:{port}"));
                }
                let mut b = ClusterClient::builder(urls)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.timeout)
                    // MOVED/ASK and a moved master cost a retry each; the caller's timeout
                    // bounds them all.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(u) = &self.username {
                    b = b.username(u);
                }
                if let Some(p) = &self.password {
                    b = b.password(p);
                }
                if self.tls {
                    b = b.tls(TlsMode::Secure);
                    if let Some(c) = self.certs() {
                        b = b.certs(c);
                    }
                }
                let client = b
                    .build()
                    .map_err(|e| format!("invalid cluster settings: {}", e.category()))?;
                Ok(Connector::Cluster {
                    client,
                    conn: OnceCell::new(),
                })
            }
            Topology::Sentinel {
                master,
                nodes,
                username,
                password,
            } => {
                let mut addrs = Vec::with_capacity(nodes.len());
                for n in nodes {
                    let (host, port) = host_port(n)?;
                    addrs.push(ConnectionAddr::Tcp(host.to_string(), port));
                }
                let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(|e| format!("invalid sentinel settings: {}", e.category()))?
                    .set_client_to_redis_db(self.db);
                if let Some(u) = &self.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &self.password {
                    b = b.set_client_to_redis_password(p);
                }
                if let Some(u) = username {
                    b = b.set_client_to_sentinel_username(u);
                }
                if let Some(p) = password {
                    b = b.set_client_to_sentinel_password(p);
                }
                if self.tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(c) = self.certs() {
                        b = b
                            .set_client_to_redis_certificates(c.clone())
                            .set_client_to_sentinel_certificates(c);
                    }
                }
                let client = b
                    .build()
                    .map_err(|e| format!("invalid sentinel settings: {}", e.category()))?;
                Ok(Connector::Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    conn: ArcSwapOption::empty(),
                })
            }
        }
    }
}

/// `host:port` (IPv6 in brackets) of a cluster node or sentinel.
fn host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("invalid address {s:?} (expected host:port)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok((host, port))
}

enum Connector {
    Single {
        client: ::redis::Client,
        conn: OnceCell<ConnectionManager>,
    },
    Cluster {
        client: ClusterClient,
        conn: OnceCell<ClusterConnection>,
    },
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        /// The master's connection; emptied when a call fails so the next one asks the
        /// sentinels again.
        conn: ArcSwapOption<ConnectionManager>,
    },
}

/// Time some backend spent without answering, in microseconds: finished stretches, plus
/// (for the backends down now) `now * down_now - sum of their start times`.
static FALLBACK_DONE_US: AtomicU64 = AtomicU64::new(0);
static DOWN_NOW: AtomicU64 = AtomicU64::new(0);
static DOWN_SINCE_SUM_US: AtomicU64 = AtomicU64::new(0);

/// `rate_limit_backend_fallback_seconds_total`: summed time during which a Redis backend
/// gave no answers (from the first failed call to the next successful one), so requests
/// took the `fault_tolerant` decision.
pub fn fallback_seconds() -> f64 {
    let now = now_us();
    let down = DOWN_NOW.load(Ordering::Relaxed);
    let since = DOWN_SINCE_SUM_US.load(Ordering::Relaxed);
    let open = (now.saturating_mul(down)).saturating_sub(since);
    (FALLBACK_DONE_US.load(Ordering::Relaxed) + open) as f64 / 1e6
}

/// A shared Redis connection for rate limits.
pub struct RedisBackend {
    connector: Connector,
    /// Hosts and ports, no credentials, for logs.
    addr: String,
    timeout: Duration,
    connect_timeout: Duration,
    down_until_us: AtomicU64,
    down: AtomicBool,
    /// When `down` was set (microseconds since the epoch).
    down_since_us: AtomicU64,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Runs one script call on `conn`, bounded by `timeout`.
async fn invoke<C: ConnectionLike>(
    inv: &::redis::ScriptInvocation<'_>,
    conn: &mut C,
    timeout: Duration,
) -> Result<Vec<i64>, BackendError> {
    match tokio::time::timeout(timeout, inv.invoke_async::<Vec<i64>>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.is_timeout() => Err(BackendError::Timeout),
        Ok(Err(e)) => Err(BackendError::Redis(e.category().to_string())),
        Err(_) => Err(BackendError::Timeout),
    }
}

impl RedisBackend {
    /// A backend for `spec`; no connection is made until the first call.
    pub fn new(spec: &RedisSpec) -> Result<RedisBackend, String> {
        Ok(RedisBackend {
            connector: spec.connector()?,
            addr: spec.describe(),
            timeout: spec.timeout,
            connect_timeout: spec.connect_timeout,
            down_until_us: AtomicU64::new(0),
            down: AtomicBool::new(false),
            down_since_us: AtomicU64::new(0),
        })
    }

    /// The address (no credentials) for logs and docs.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500))
    }

    /// One call on whichever deployment this is; connections are made on first use on the
    /// caller's Tokio runtime.
    async fn run(&self, inv: &::redis::ScriptInvocation<'_>) -> Result<Vec<i64>, BackendError> {
        match &self.connector {
            Connector::Single { client, conn } => {
                let mut c = conn
                    .get_or_try_init(|| {
                        ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            self.manager_config(),
                        )
                    })
                    .cloned()
                    .map_err(|e| BackendError::Redis(e.category().to_string()))?;
                invoke(inv, &mut c, self.timeout).await
            }
            Connector::Cluster { client, conn } => {
                let mut c = conn
                    .get_or_init(|| {
                        client.get_pending_async_connection_with_config(
                            ClusterConfig::new()
                                .set_connection_timeout(self.connect_timeout)
                                .set_response_timeout(self.timeout),
                        )
                    })
                    .clone();
                invoke(inv, &mut c, self.timeout).await
            }
            Connector::Sentinel { client, conn } => {
                let current = conn.load_full();
                let mut c = match current {
                    Some(c) => ConnectionManager::clone(&c),
                    None => {
                        // Ask the sentinels for the master (one asker at a time; the others
                        // wait at most the timeout).
                        let asked = tokio::time::timeout(self.timeout, async {
                            let mut s = client.lock().await;
                            if let Some(c) = conn.load_full() {
                                return Ok(ConnectionManager::clone(&c));
                            }
                            let master = s.async_get_client().await?;
                            let m = ConnectionManager::new_lazy_with_config(
                                master,
                                self.manager_config(),
                            )?;
                            conn.store(Some(Arc::new(m.clone())));
                            Ok::<_, ::redis::RedisError>(m)
                        })
                        .await;
                        match asked {
                            Ok(Ok(m)) => m,
                            Ok(Err(e)) => {
                                return Err(BackendError::Redis(e.category().to_string()))
                            }
                            Err(_) => return Err(BackendError::Timeout),
                        }
                    }
                };
                let r = invoke(inv, &mut c, self.timeout).await;
                if matches!(r, Err(BackendError::Redis(_) | BackendError::Timeout)) {
                    // The master may have moved (or been demoted: READONLY): ask again.
                    conn.store(None);
                }
                r
            }
        }
    }

    async fn call(&self, inv: &::redis::ScriptInvocation<'_>) -> Result<Vec<i64>, BackendError> {
        let now = now_us();
        if now < self.down_until_us.load(Ordering::Relaxed) {
            return Err(BackendError::HoldOff);
        }
        let result = self.run(inv).await;
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    let since = self.down_since_us.load(Ordering::Relaxed);
                    FALLBACK_DONE_US.fetch_add(now_us().saturating_sub(since), Ordering::Relaxed);
                    DOWN_SINCE_SUM_US.fetch_sub(since, Ordering::Relaxed);
                    DOWN_NOW.fetch_sub(1, Ordering::Relaxed);
                    tracing::info!(redis = %self.addr, "rate-limiting: redis answers again");
                }
            }
            Err(e) => {
                self.down_until_us
                    .store(now_us() + HOLD_OFF.as_micros() as u64, Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    self.down_since_us.store(now, Ordering::Relaxed);
                    DOWN_SINCE_SUM_US.fetch_add(now, Ordering::Relaxed);
                    DOWN_NOW.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(redis = %self.addr, "rate-limiting: redis unavailable: {e}");
                }
            }
        }
        result
    }

    /// Sliding-window check-and-count of `key` (under `prefix`) against `limits`.
    pub async fn check_windows(
        &self,
        prefix: &str,
        key: &[u8],
        limits: &Limits,
    ) -> Result<Decision, BackendError> {
        let mut inv = WINDOWS_SCRIPT.prepare_invoke();
        inv.key(slot_tagged(full_key(prefix, b'w', key)))
            .arg(limits.windows.len());
        for w in &limits.windows {
            inv.arg(w.window_ms).arg(w.limit);
        }
        let v = self.call(&inv).await?;
        let n = limits.windows.len();
        if v.len() != 2 + 3 * n {
            return Err(BackendError::BadReply);
        }
        let mut counts = [WindowCounts::default(); 4];
        for (i, c) in counts.iter_mut().enumerate().take(n.min(4)) {
            *c = WindowCounts {
                curr: v[2 + 3 * i].max(0) as u64,
                prev: v[3 + 3 * i].max(0) as u64,
                elapsed_ms: v[4 + 3 * i].max(0) as u64,
            };
        }
        let mut d = decide_windows(limits, &counts[..n.min(4)]);
        // The script decided (and counted) atomically; its word is final.
        let allowed = v[0] == 1;
        if allowed != d.allowed {
            d.allowed = allowed;
            if allowed {
                d.retry_after_ms = 0;
            } else {
                d.status.remaining = 0;
                d.retry_after_ms = d.retry_after_ms.max(1000);
            }
        }
        Ok(d)
    }

    /// Token-bucket (GCRA) check-and-take of `key` (under `prefix`).
    pub async fn check_token(
        &self,
        prefix: &str,
        key: &[u8],
        tb: &TokenBucket,
    ) -> Result<Decision, BackendError> {
        let mut inv = TOKEN_SCRIPT.prepare_invoke();
        inv.key(slot_tagged(full_key(prefix, b't', key)))
            .arg(tb.interval_us)
            .arg(tb.burst);
        let v = self.call(&inv).await?;
        if v.len() != 3 {
            return Err(BackendError::BadReply);
        }
        let (mut d, _) = decide_token(tb, v[2].max(0) as u64, v[1].max(0) as u64);
        d.allowed = v[0] == 1;
        Ok(d)
    }
}

/// Hex characters of a key's digest in its Redis name.
pub const KEY_DIGEST_HEX: usize = 32;

/// `<prefix><algorithm>:<hex of SHA-256(key)[..16]>`: a fixed length whatever the key, the
/// same on every node; window counters and token-bucket times never share a name.
fn full_key(prefix: &str, algorithm: u8, key: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key);
    let mut k = Vec::with_capacity(prefix.len() + 2 + KEY_DIGEST_HEX);
    k.extend_from_slice(prefix.as_bytes());
    k.push(algorithm);
    k.push(b':');
    k.extend_from_slice(hex::encode(&digest[..KEY_DIGEST_HEX / 2]).as_bytes());
    k
}

/// `{<key>}`: the whole limit key is a Redis Cluster hash tag, so every key the script
/// derives from it (`<key>:<window>:<bucket>`) hashes to the same slot as the key itself
/// and the script stays atomic on one node. Works around whatever [`full_key`] returns: a
/// `}` inside it only shortens the tag, which is still the same for all derived keys.
fn slot_tagged(key: Vec<u8>) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 2);
    k.push(b'{');
    k.extend_from_slice(&key);
    k.push(b'}');
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_have_a_fixed_length_and_hold_no_key() {
        let short = full_key("p:", b'w', b"h1.2.3.4");
        let long = full_key("p:", b'w', &[b'v'; 31_000]);
        assert_eq!(short.len(), 4 + KEY_DIGEST_HEX);
        assert_eq!(long.len(), short.len());
        assert!(long.starts_with(b"p:w:"));
        assert!(!long.windows(8).any(|w| w == b"vvvvvvvv"));
        // The same on every node (no secret), distinct per key and per algorithm.
        assert_eq!(full_key("p:", b'w', b"a"), full_key("p:", b'w', b"a"));
        assert_ne!(full_key("p:", b'w', b"a"), full_key("p:", b'w', b"b"));
        assert_ne!(full_key("p:", b'w', b"a"), full_key("p:", b't', b"a"));
        // SHA-256("a") begins ca978112ca1bbdcafac231b39a23dc4d.
        assert_eq!(
            full_key("", b'w', b"a"),
            b"w:ca978112ca1bbdcafac231b39a23dc4d".to_vec()
        );
    }

    /// What Redis Cluster hashes: the text between the first `{` and the next `}` when
    /// non-empty, else the whole key.
    fn hashed(k: &[u8]) -> &[u8] {
        if let Some(open) = k.iter().position(|&b| b == b'{') {
            if let Some(len) = k[open + 1..].iter().position(|&b| b == b'}') {
                if len > 0 {
                    return &k[open + 1..open + 1 + len];
                }
            }
        }
        k
    }

    #[test]
    fn every_key_of_one_limit_hashes_alike() {
        for raw in [&b"4\x7f\0\0\x01"[..], b"hten}ant{x", b"}", b"{", b""] {
            let k = slot_tagged(full_key("gatehouse:rl:abc:", b'w', raw));
            // The script appends `:<window>:<bucket>` to KEYS[1].
            let mut derived = k.clone();
            derived.extend_from_slice(b":60000:29544301");
            assert_eq!(hashed(&k), hashed(&derived), "{raw:?}");
            assert!(!hashed(&k).is_empty());
            assert!(hashed(&k).starts_with(b"gatehouse:rl:abc:w:"), "{raw:?}");
        }
        // Different limits (identity) and keys land on different tags.
        let a = slot_tagged(full_key("gatehouse:rl:abc:", b'w', b"ha"));
        let b = slot_tagged(full_key("gatehouse:rl:abc:", b'w', b"hb"));
        assert_ne!(hashed(&a), hashed(&b));
    }

    #[test]
    fn specs_never_show_secrets() {
        let spec = RedisSpec {
            topology: Topology::Sentinel {
                master: "mymaster".into(),
                nodes: vec!["10.0.0.1:26379".into()],
                username: None,
                password: Some("sentinel-pw".into()),
            },
            username: Some("app".into()),
            password: Some("master-pw".into()),
            db: 0,
            tls: true,
            ca_pem: None,
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
        };
        let shown = format!("{spec:?} {}", spec.describe());
        assert!(!shown.contains("pw"), "{shown}");
        assert_eq!(spec.describe(), "sentinel mymaster@10.0.0.1:26379 (tls)");
        assert!(host_port("10.0.0.1").is_err());
        assert!(host_port("[::1]:7000").is_ok());
        assert!(host_port("a@b:1").is_err());
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_and_holds_off() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("redis://:pw@127.0.0.1:{port}/");
        let b = RedisBackend::new(&RedisSpec {
            topology: Topology::Single { url },
            username: None,
            password: None,
            db: 0,
            tls: false,
            ca_pem: None,
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
        })
        .unwrap();
        let limits = Limits::from_slots([None, Some(5), None, None]);
        let t = std::time::Instant::now();
        let e = b.check_windows("t:", b"k", &limits).await.unwrap_err();
        assert!(
            matches!(e, BackendError::Redis(_) | BackendError::Timeout),
            "{e:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!format!("{e} {b:?}").contains("pw"));
        let e = b.check_windows("t:", b"k", &limits).await.unwrap_err();
        assert_eq!(e, BackendError::HoldOff);
    }
}
