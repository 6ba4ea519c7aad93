//! The compiled model: the settings, consumers and policies a config snapshot is made of,
//! as plain immutable data. Built by `config::compile`, read by every feature; it imports
//! nothing above the raw config, so any feature may name it. The snapshot that assembles
//! these with upstreams, the router and plugin chains is [`crate::runtime::Runtime`].

use crate::config::raw::RawFlood;
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string (API key, token): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub min_version: String,
    /// `"1.2"` or `"1.3"` (at least `min_version`).
    pub max_version: String,
    /// Canonical rustls names in preference order; empty: the provider's defaults.
    pub cipher_suites: Vec<String>,
    /// `acme`: read by the ACME service at every turn, so a reload applies it.
    pub acme: Option<AcmeSettings>,
}

/// `server.tls.acme`, compiled (the ACME client in `crate::acme` acts on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub email: Option<String>,
    /// Lower case; the first names the stored files.
    pub domains: Vec<String>,
    pub storage: PathBuf,
    pub renew_before: Duration,
    /// Extra root for the TLS of the ACME server itself.
    pub ca: Option<PathBuf>,
}

impl TlsSettings {
    /// What the listening sockets and the rustls config are built from, which only a binary
    /// upgrade changes (certificates, the client verifier and ACME are swapped in by a
    /// reload; the loaded certificates and verifier are in the snapshot,
    /// `crate::runtime::TlsMaterial`).
    pub fn listener_differs(&self, other: &TlsSettings) -> bool {
        self.listen != other.listen
            || self.min_version != other.min_version
            || self.max_version != other.max_version
            || self.cipher_suites != other.cipher_suites
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub tls: Option<TlsSettings>,
    pub threads: usize,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_per_connection: u32,
    pub work_stealing: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub grace_period: u64,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub access_log: AccessLog,
    /// `error_log`: where the process log goes with `-d` (read at startup).
    pub error_log: Option<PathBuf>,
    /// `health_check_path`: answered by [`crate::probe`] before routing.
    pub health_check_path: Option<Box<str>>,
    /// Read once at startup (like `grace_period`).
    pub drain_delay: Duration,
    /// `server.h2c`: HTTP/2 prior knowledge on the plain listeners (read at startup).
    pub h2c: bool,
    /// `server.flood` caps ([`crate::flood`]; 0: off).
    pub flood: RawFlood,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// `None`: POST endpoints are open (the listener should then stay on loopback).
    pub token: Option<Secret>,
    /// `admin.allowed_hosts`, lower-case: `Host` names answered besides `localhost`,
    /// `*.localhost` and IP literals.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug)]
pub struct Consumer {
    pub username: String,
    /// `username` as the `X-Consumer-Username` value, validated once at load.
    pub header: http::HeaderValue,
    /// Name of an entry of `Runtime::tiers` (checked at load).
    pub tier: Option<String>,
    pub roles: Vec<String>,
    pub api_keys: Vec<Secret>,
    pub jwt_secrets: Vec<JwtSecretSpec>,
    /// `basicauth_credentials`, checked at load (usernames unique over all consumers).
    pub basic_credentials: Vec<BasicCredential>,
    /// `hmacauth_credentials` (usernames unique over all consumers).
    pub hmac_credentials: Vec<HmacCredential>,
    /// `mtls_credentials` (each subject and SAN unique over all consumers).
    pub mtls_credentials: Vec<MtlsCredential>,
}

/// One `mtls_credentials` entry: what a verified client certificate identifies this
/// consumer by. Nothing secret (a certificate is public; its key never reaches the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtlsCredential {
    /// The certificate's subject, as configured and in the normalised form of
    /// [`crate::util::dn`] (compared with the certificate's).
    Subject {
        text: String,
        normal: Box<[crate::util::dn::Token]>,
    },
    /// One of the certificate's subjectAltNames (URI, DNS name, e-mail address or IP
    /// address), compared exactly.
    San(String),
}

/// One `hmacauth_credentials` entry.
#[derive(Debug, Clone)]
pub struct HmacCredential {
    pub username: String,
    pub secret: Secret,
}

/// One `basicauth_credentials` entry.
#[derive(Debug, Clone)]
pub struct BasicCredential {
    pub username: String,
    pub password: PasswordSpec,
}

/// A basic-auth password as configured: a hash (parsed at load) or, from `${ENV}` only,
/// plain text. `Debug` never shows any of them.
#[derive(Debug, Clone)]
pub enum PasswordSpec {
    /// `$argon2id$...` PHC string.
    Argon2(Secret),
    /// `$2a$`/`$2b$`/`$2y$` bcrypt hash.
    Bcrypt(Secret),
    /// Plain text from the environment.
    Plain(Secret),
}

/// One `jwt_secrets` entry as configured; the jwt plugin turns it into a verifying key.
#[derive(Debug, Clone)]
pub struct JwtSecretSpec {
    /// Matched against the token's `key_claim_name` claim.
    pub key: String,
    pub algorithm: String,
    pub secret: Option<Secret>,
    pub secret_is_base64: bool,
    /// `rsa_public_key_file` or `ecdsa_public_key_file`, resolved against the config dir.
    pub public_key_file: Option<PathBuf>,
}

/// Request limits of a consumer tier (`tiers:`), per window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tier {
    pub second: Option<u64>,
    pub minute: Option<u64>,
    pub hour: Option<u64>,
    pub day: Option<u64>,
}

/// `cache:`: settings of the proxy-cache stores as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheSettings {
    pub purge_broadcast: Option<PurgeBroadcast>,
}

/// `cache.purge_broadcast`: admin purges are published on `channel` of the Redis at `url`,
/// and every node subscribed there applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeBroadcast {
    /// May hold a password: never logged (see `addr`).
    pub url: Secret,
    /// The URL without credentials, for logs and `/status`.
    pub addr: String,
    pub channel: String,
    pub timeout: Duration,
}

/// `routes[].protocols: [https]`: a route that only accepts HTTPS, and how it answers plain
/// HTTP ([`crate::https_redirect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpsOnly {
    /// 426, or the redirect status (301, 302, 307, 308).
    pub status: u16,
}
