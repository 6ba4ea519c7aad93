//! Serde mirror of the YAML contract (`../shared/spec/config.md`).
//!
//! No logic lives here: every struct rejects unknown keys, carries the contract's defaults and
//! is turned into the typed runtime by [`super::compile`]. Durations and sizes are parsed by
//! their own types so that serde_yaml reports the line of a bad value.

use super::units::{ByteSize, Dur, Secs};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub admin: RawAdmin,
    pub upstreams: Vec<RawUpstream>,
    pub consumers: Vec<RawConsumer>,
    pub tiers: BTreeMap<String, RawTier>,
    pub routes: Vec<RawRoute>,
    pub plugins: Vec<RawPlugin>,
    /// Extension: settings of the proxy-cache stores as a whole.
    pub cache: RawCache,
}

/// `cache:` (extension).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    /// A Redis whose pub/sub channel carries admin purges to every node.
    pub purge_broadcast: Option<RawPurgeBroadcast>,
}

/// `cache.purge_broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPurgeBroadcast {
    pub url: String,
    #[serde(default = "default_purge_channel")]
    pub channel: String,
    #[serde(default = "default_purge_timeout")]
    pub timeout: Dur,
}

fn default_purge_channel() -> String {
    "gatehouse:cache:purge".into()
}

fn default_purge_timeout() -> Dur {
    Dur::secs(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: Vec<String>,
    pub tls: Option<RawTls>,
    pub threads: usize,
    pub max_body_bytes: ByteSize,
    pub max_header_bytes: ByteSize,
    pub max_uri_bytes: ByteSize,
    pub header_timeout: Dur,
    /// Longest wait for the next bytes of a request body (extension).
    pub body_timeout: Dur,
    pub keepalive_timeout: Dur,
    /// Open downstream connections beyond this are closed at once (0: no cap).
    pub max_connections: usize,
    /// Requests served on one keep-alive connection before it is closed (0: no cap).
    pub max_requests_per_connection: u32,
    /// Pingora's runtime flavour: work-stealing threads, or one single-threaded runtime
    /// per thread (see loadtest/RESULTS.md for the measured difference).
    pub work_stealing: bool,
    pub trusted_proxies: Vec<String>,
    /// Whole seconds: `"30s"`, `"2m"` or a bare integer.
    pub grace_period: Secs,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub access_log: String,
    /// Extension: where the process log goes with `-d` (empty: the journal under systemd,
    /// else nowhere).
    pub error_log: String,
    /// Extension: a path on the public listeners answered by the gateway itself for load
    /// balancer probes (absent: off).
    pub health_check_path: Option<String>,
    /// Extension: on SIGTERM, keep serving (with the health path at 503) this long before
    /// Pingora's graceful shutdown starts.
    pub drain_delay: Dur,
    /// Plain listeners also accept HTTP/2 with prior knowledge (h2c), e.g. gRPC clients
    /// without TLS. Read at startup.
    pub h2c: bool,
    /// Extension: per client IP caps on new connections and requests per second.
    pub flood: RawFlood,
}

/// `server.flood` (0: no cap).
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct RawFlood {
    pub connections_per_ip_per_second: u32,
    pub requests_per_ip_per_second: u32,
}

/// Directory of the default `pid_file` and `upgrade_sock`: the one systemd creates for the
/// service (`RuntimeDirectory=`, passed as `$RUNTIME_DIRECTORY`; the first one if several),
/// else `/run/gatehouse`.
pub fn runtime_dir() -> String {
    std::env::var("RUNTIME_DIRECTORY")
        .ok()
        .and_then(|v| v.split(':').next().map(str::to_string))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/run/gatehouse".to_string())
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: vec!["0.0.0.0:8080".into()],
            tls: None,
            threads: 2,
            max_body_bytes: ByteSize(10 * 1024 * 1024),
            max_header_bytes: ByteSize(32 * 1024),
            max_uri_bytes: ByteSize(8 * 1024),
            header_timeout: Dur::secs(10),
            body_timeout: Dur::secs(60),
            keepalive_timeout: Dur::secs(60),
            max_connections: 10_000,
            max_requests_per_connection: 1000,
            work_stealing: true,
            trusted_proxies: vec![],
            grace_period: Secs(30),
            pid_file: format!("{}/gatehouse.pid", runtime_dir()),
            upgrade_sock: format!("{}/upgrade.sock", runtime_dir()),
            access_log: "stdout".into(),
            error_log: String::new(),
            health_check_path: None,
            drain_delay: Dur::secs(0),
            h2c: false,
            flood: RawFlood::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Vec<String>,
    /// One certificate: the same as a one-entry `certificates` list.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Certificates chosen by the client's SNI; the first also answers clients without SNI.
    #[serde(default)]
    pub certificates: Vec<RawCertPair>,
    /// Certificates issued and renewed automatically (HTTP-01).
    pub acme: Option<RawAcme>,
    /// Client certificates (mTLS) verified at the handshake.
    pub client_auth: Option<RawClientAuth>,
    #[serde(default = "default_tls_min")]
    pub min_version: String,
    /// Extension: highest TLS version offered (`"1.2"` or `"1.3"`).
    #[serde(default = "default_tls_max")]
    pub max_version: String,
    /// Extension: the cipher suites offered, in the server's order of preference (empty:
    /// rustls's defaults).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

/// `server.tls.certificates[]`: a PEM certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

/// `server.tls.acme`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// The ACME server's directory URL.
    pub directory: String,
    /// Contact address given to the ACME server (optional).
    pub email: Option<String>,
    pub domains: Vec<String>,
    /// Directory of the account key and the issued certificates.
    pub storage: String,
    #[serde(default = "default_renew_before")]
    pub renew_before: Dur,
    /// PEM file of an extra root that the ACME directory's own certificate is checked against.
    pub ca: Option<String>,
}

fn default_renew_before() -> Dur {
    Dur::secs(30 * 86_400)
}

/// `server.tls.client_auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// PEM file of the CAs client certificates must chain to.
    pub ca: String,
    /// `optional` (default) or `required`.
    #[serde(default = "default_client_auth_mode")]
    pub mode: String,
}

fn default_client_auth_mode() -> String {
    "optional".into()
}

fn default_tls_max() -> String {
    "1.3".into()
}

fn default_tls_min() -> String {
    "1.2".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    pub token: String,
    /// Host names the admin API answers besides loopback names and IP literals.
    pub allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9901".into(),
            token: String::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Weighted,
    LeastConn,
    IpHash,
}

impl Balance {
    /// The name as written in the YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Weighted => "weighted",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    #[serde(default)]
    pub balance: Balance,
    /// Fixed targets (a host name is resolved once, at load); empty with `discovery`.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// Targets from DNS, re-resolved while running (instead of `targets`).
    pub discovery: Option<RawDiscovery>,
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default = "default_retries")]
    pub retries: u32,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
    /// Wait before each retry (extension; absent: retry at once).
    pub retry_backoff: Option<RawBackoff>,
    /// Cap on retries per upstream pool (extension; on by default).
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    /// HTTPS to every target (absent: plain TCP).
    pub tls: Option<RawUpstreamTls>,
    /// The HTTP version spoken to the targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// `upstreams[].retry_backoff` (absent: retries start at once).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackoff {
    pub base: Dur,
    pub max: Dur,
}

impl Default for RawBackoff {
    fn default() -> Self {
        RawBackoff {
            base: Dur(Duration::from_millis(25)),
            max: Dur(Duration::from_millis(250)),
        }
    }
}

/// `upstreams[].retry_budget` (on by default with Linkerd's values).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetryBudget {
    pub enabled: bool,
    pub ratio: f64,
    pub min_retries_per_second: u32,
    pub window: Dur,
}

impl Default for RawRetryBudget {
    fn default() -> Self {
        RawRetryBudget {
            enabled: true,
            ratio: 0.2,
            min_retries_per_second: 10,
            window: Dur::secs(10),
        }
    }
}

/// `upstreams[].protocol`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS too when `tls` is set).
    #[default]
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN (needs `tls`).
    H2,
    /// HTTP/2 with prior knowledge over plain TCP (no `tls`).
    H2c,
}

/// `upstreams[].discovery`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// Host name whose A and AAAA records are the targets (with `port`).
    pub dns: Option<String>,
    /// Port of every discovered target (with `dns`).
    pub port: Option<u16>,
    /// SRV record name whose records give the targets, ports and weights (instead of
    /// `dns` and `port`).
    pub srv: Option<String>,
    /// Longest wait between lookups (a shorter TTL brings the next one forward).
    #[serde(default = "default_discovery_interval")]
    pub interval: Dur,
    /// Shortest wait between lookups, whatever the TTL (and the wait after a failed one).
    #[serde(default = "default_discovery_min_interval")]
    pub min_interval: Dur,
    /// Time allowed for one lookup.
    #[serde(default = "default_discovery_timeout")]
    pub timeout: Dur,
    /// DNS servers as `ip` or `ip:port` (empty: the system's resolv.conf).
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// Start (and reload) even when the name has no address yet.
    #[serde(default)]
    pub allow_empty: bool,
}

fn default_discovery_interval() -> Dur {
    Dur::secs(30)
}
fn default_discovery_min_interval() -> Dur {
    Dur::secs(1)
}
fn default_discovery_timeout() -> Dur {
    Dur::secs(2)
}

/// `upstreams[].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Server name sent and verified (default: the target's host name).
    pub sni: Option<String>,
    /// Check the certificate chain and host name (default true).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM file of the CAs that may sign the targets' certificates (default: system roots).
    pub ca: Option<String>,
    /// PEM certificate chain presented to targets that ask for one (mTLS).
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<String>,
}

fn default_keepalive() -> usize {
    32
}
fn default_retries() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub backup: bool,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub connect: Dur,
    pub read: Dur,
    pub write: Dur,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: Dur::secs(5),
            read: Dur::secs(60),
            write: Dur::secs(60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    /// `Host` of path checks and TLS server name of the checks (default: the target's).
    pub host: Option<String>,
    pub interval: Dur,
    pub timeout: Dur,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        RawHealthCheck {
            path: None,
            host: None,
            interval: Dur::secs(2),
            timeout: Dur::secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPassive {
    pub max_fails: u32,
    pub fail_timeout: Dur,
}

impl Default for RawPassive {
    fn default() -> Self {
        RawPassive {
            max_fails: 3,
            fail_timeout: Dur::secs(10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub username: String,
    pub tier: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub keyauth_credentials: Vec<RawKeyCredential>,
    #[serde(default)]
    pub jwt_secrets: Vec<RawJwtSecret>,
    #[serde(default)]
    pub basicauth_credentials: Vec<RawBasicCredential>,
    #[serde(default)]
    pub hmacauth_credentials: Vec<RawHmacCredential>,
    #[serde(default)]
    pub mtls_credentials: Vec<RawMtlsCredential>,
}

/// `consumers[].mtls_credentials[]`: exactly one of `subject` (an RFC 4514 name) or `san`
/// (checked at compile).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtlsCredential {
    pub subject: Option<String>,
    pub san: Option<String>,
}

/// `consumers[].hmacauth_credentials[]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHmacCredential {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for RawHmacCredential {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawHmacCredential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `consumers[].basicauth_credentials[]`: `password` is an Argon2id/bcrypt hash, or plain
/// text from `${ENV}` (checked at compile).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicCredential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RawBasicCredential {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBasicCredential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyCredential {
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtSecret {
    pub key: String,
    #[serde(default = "default_jwt_alg")]
    pub algorithm: String,
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_is_base64: bool,
    pub rsa_public_key_file: Option<String>,
    pub ecdsa_public_key_file: Option<String>,
}

fn default_jwt_alg() -> String {
    "HS256".into()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    pub second: Option<u64>,
    pub minute: Option<u64>,
    pub hour: Option<u64>,
    pub day: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub strip_path: bool,
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// Let `%2F` through on this route (its upstream keeps it within a segment).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// Send the client's `Host` upstream as `X-Forwarded-Host` (useful with
    /// `preserve_host: false`, where the upstream's `Host` is the target's address).
    #[serde(default)]
    pub forwarded_host: bool,
    pub upstream: String,
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    /// Kong's route `protocols` (`[http, https]`); `[https]` refuses plain HTTP.
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
    /// Kong's `https_redirect_status_code`: the answer to plain HTTP on an https-only route.
    #[serde(default)]
    pub https_redirect_status_code: Option<u16>,
    /// Total time for the upstream exchange, retries included (extension; absent: none).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Longest silence in both directions of a WebSocket (or other upgraded) connection once
    /// the upstream switched protocols; replaces the upstream's `timeouts.read` and
    /// `server.body_timeout` for the tunnel.
    #[serde(default = "default_websocket_idle_timeout")]
    pub websocket_idle_timeout: Dur,
}

fn default_websocket_idle_timeout() -> Dur {
    Dur::secs(3600)
}

fn default_true() -> bool {
    true
}

/// A plugin entry. `config` stays an untyped YAML value here: the plugin registry
/// deserializes it into the plugin's own typed config struct (with path-aware errors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: String,
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}
