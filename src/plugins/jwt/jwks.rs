//! JWKS key sets for `jwt` (the `jwks:` block). Pingora phase: `request_filter`, where a
//! token whose header `kid` names a key of the set is verified with that key, and a token
//! with an unknown `kid` may wait for one refresh of the set. Outside any phase, one
//! background task per key set keeps it fresh.
//!
//! **Keys.** A set is fetched from `url` (HTTP GET, at most [`MAX_JWKS_BYTES`] and
//! [`MAX_JWKS_KEYS`] entries) or read from `file`. RSA keys (2048 to 8192 bits) and EC keys on
//! P-256 / P-384 are used; a key marked for something else than signatures (`use`,
//! `key_ops`), of another type or curve, or whose `alg` is not supported is ignored, counted
//! in `jwt_jwks_keys_ignored` and logged once (when the list of ignored keys changes). Each
//! key is pinned to algorithms before any token is seen: its JWK `alg` when present, else
//! the algorithms of its type (RS*/PS* for RSA, ES256 for P-256, ES384 for P-384); a plugin
//! further narrows them to its `algorithms`. The token's `alg` must be one of those, so an
//! HS256 token "signed" with the public key, `alg: none` or an EC algorithm on an RSA key
//! never verify. A token without `kid` is accepted only when the set holds exactly one key.
//!
//! **Sharing and reloads.** Key sets live in the app's registry ([`crate::util::registry`]) keyed by their source
//! (the URL, or the absolute file path) that holds weak references: every plugin instance
//! naming the same source, in this config or the next one, shares one set and one refresher.
//! A reload keeps the keys; when no runtime uses a source any more, the set is dropped, its
//! refresher stops at once and its metric series are removed.
//!
//! **Refreshes.** A single task per set fetches: on a schedule (`refresh_interval`, or the
//! response's `Cache-Control: max-age` bounded by `min_refresh_interval` and
//! `refresh_interval`, minus up to 10% jitter; after a failure, from `min_refresh_interval`
//! doubling up to `refresh_interval`), and when a request asks for it because its `kid` is
//! unknown. Such requests are rate-limited: at most one fetch starts per
//! `min_refresh_interval`; a request that comes while a fetch is in flight waits for that
//! fetch (at most `timeout`), one that comes too soon after the last fetch is refused with
//! 401 at once. A failed or invalid fetch keeps the last good set (warning log, metric).
//! Nothing is fetched at config load (`gatehouse -t` never touches the network): the first
//! fetch starts when the server runs (the `jwks refresh` background service) or when a
//! reload adds the source; requests that come before it has succeeded get 401. A `file`
//! source is read at load instead, so a missing or invalid file is a config error.
//!
//! **Cache.** Every key set has a generation, bumped when a refresh removes or changes a key
//! that was there before. A cached verification remembers the generation it was made under
//! and is re-checked when it differs, so a token of a removed `kid` stops being accepted
//! with the refresh that removed it.

use super::{check_signature, now, Failure, Jws, Jwt, TokenInfo, VerifyKey};
use crate::config::diag::Compiler;
use crate::config::units::Dur;
use crate::plugins::BuildEnv;
use crate::util::registry::Registry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use once_cell::sync::{Lazy, OnceCell};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Largest JWKS document accepted (fetched or read).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most entries a JWKS `keys` array may have.
pub const MAX_JWKS_KEYS: usize = 256;

/// The algorithms a key set can verify, by bit position. Only asymmetric ones: an HMAC key
/// published in a key set would be a public secret.
const ALGS: [(&str, Algorithm); 8] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
];
const RSA_ALGS: u8 = 0b0011_1111;
const P256_ALGS: u8 = 1 << 6;
const P384_ALGS: u8 = 1 << 7;

fn alg_bit(name: &str) -> Option<u8> {
    ALGS.iter().position(|(n, _)| *n == name).map(|i| i as u8)
}

fn alg_names(mask: u8) -> Vec<&'static str> {
    ALGS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (n, _))| *n)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The `jwks:` block of the `jwt` config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct JwksConfig {
    url: Option<String>,
    file: Option<String>,
    refresh_interval: Dur,
    min_refresh_interval: Dur,
    timeout: Dur,
    algorithms: Vec<String>,
    /// Claim naming the consumer (`username`) a token belongs to; unset: no consumer.
    consumer_claim: Option<String>,
}

impl Default for JwksConfig {
    fn default() -> Self {
        JwksConfig {
            url: None,
            file: None,
            refresh_interval: Dur::secs(600),
            min_refresh_interval: Dur::secs(30),
            timeout: Dur::secs(2),
            algorithms: ALGS.iter().map(|(n, _)| n.to_string()).collect(),
            consumer_claim: None,
        }
    }
}

/// Fetch settings of a key set (the last config that names the source wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    refresh: Duration,
    min_refresh: Duration,
    timeout: Duration,
}

/// Where a key set comes from.
#[derive(Clone)]
enum Source {
    Url(reqwest::Url),
    File(PathBuf),
}

impl Source {
    /// Registry key.
    fn id(&self) -> String {
        match self {
            Source::Url(u) => format!("url {u}"),
            Source::File(p) => format!("file {}", p.display()),
        }
    }

    /// Metric label and log name: the URL without user info, and its query (which may hold
    /// a credential) replaced by a short hash so two URLs that differ only there stay apart.
    fn label(&self) -> String {
        match self {
            Source::Url(u) => {
                let mut l = format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""));
                if let Some(p) = u.port() {
                    l.push_str(&format!(":{p}"));
                }
                l.push_str(u.path());
                if let Some(q) = u.query() {
                    l.push_str("?sha256:");
                    l.push_str(&hex::encode(&Sha256::digest(q.as_bytes())[..4]));
                }
                l
            }
            Source::File(p) => p.display().to_string(),
        }
    }
}

fn parse_url(s: &str) -> Result<reqwest::Url, String> {
    // The URL itself never goes into the message: its query may carry a credential.
    let u = reqwest::Url::parse(s).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(u)
}

/// A plugin instance's view of a key set.
pub(super) struct Jwks {
    set: Arc<KeySet>,
    /// Algorithms this plugin accepts (bits of [`ALGS`]).
    algs: u8,
    consumer_claim: Option<String>,
    /// `username` -> index into the consumers (only with `consumer_claim`).
    consumers: HashMap<String, usize>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.set.label)
            .field("algorithms", &alg_names(self.algs))
            .field("consumer_claim", &self.consumer_claim)
            .finish()
    }
}

impl Jwks {
    pub(super) fn build(
        c: &mut Compiler,
        path: &str,
        cfg: JwksConfig,
        env: &BuildEnv,
    ) -> Option<Jwks> {
        let mut ok = true;
        let mut err = |c: &mut Compiler, key: &str, msg: String| {
            ok = false;
            let p = if key.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{key}")
            };
            c.error(&p, msg);
        };
        let source = match (&cfg.url, &cfg.file) {
            (Some(u), None) => match parse_url(u) {
                Ok(u) => Some(Source::Url(u)),
                Err(e) => {
                    err(c, "url", e);
                    None
                }
            },
            (None, Some(f)) if f.trim().is_empty() => {
                err(c, "file", "must not be empty".into());
                None
            }
            (None, Some(f)) => Some(Source::File(c.file(f))),
            (Some(_), Some(_)) => {
                err(c, "", "set either url or file, not both".into());
                None
            }
            (None, None) => {
                err(c, "", "needs a url or a file".into());
                None
            }
        };
        let settings = Settings {
            refresh: cfg.refresh_interval.0,
            min_refresh: cfg.min_refresh_interval.0,
            timeout: cfg.timeout.0,
        };
        if settings.refresh < Duration::from_secs(1) {
            err(c, "refresh_interval", "must be at least 1s".into());
        }
        if settings.min_refresh < Duration::from_millis(100) {
            err(c, "min_refresh_interval", "must be at least 100ms".into());
        } else if settings.min_refresh > settings.refresh {
            err(
                c,
                "min_refresh_interval",
                "must not be longer than refresh_interval".into(),
            );
        }
        if settings.timeout.is_zero() || settings.timeout > Duration::from_secs(60) {
            err(c, "timeout", "must be between 1ms and 60s".into());
        }
        let mut algs = 0u8;
        for (i, name) in cfg.algorithms.iter().enumerate() {
            match alg_bit(name) {
                Some(b) => algs |= 1 << b,
                None => {
                    let why = if name.starts_with("HS") {
                        format!(
                            "{name} uses a shared secret, which a key set cannot hold (use jwt_secrets)"
                        )
                    } else {
                        format!(
                            "unsupported algorithm {name:?} (use {})",
                            alg_names(u8::MAX).join(", ")
                        )
                    };
                    err(c, &format!("algorithms[{i}]"), why);
                }
            }
        }
        if cfg.algorithms.is_empty() {
            err(c, "algorithms", "needs at least one algorithm".into());
        }
        if cfg.consumer_claim.as_deref() == Some("") {
            err(c, "consumer_claim", "must not be empty".into());
        }
        let source = source?;
        if !ok {
            return None;
        }
        let set = match KeySet::get_or_create(env.registry, source, settings) {
            Ok(s) => s,
            Err(e) => {
                c.error(&format!("{path}.file"), e);
                return None;
            }
        };
        let consumers = if cfg.consumer_claim.is_some() {
            env.consumer_index()
        } else {
            HashMap::new()
        };
        Some(Jwks {
            set,
            algs,
            consumer_claim: cfg.consumer_claim,
            consumers,
        })
    }

    /// Checks `jws` against the key its `kid` names; the generation of the set used.
    pub(super) fn check_signature(&self, jws: &Jws) -> Result<u64, Failure> {
        let table = self.set.table.load();
        let key = match &jws.kid {
            Some(kid) => table.by_kid.get(kid.as_str()),
            None => table.only.as_ref(),
        };
        let Some(key) = key else {
            // Before the first successful fetch every key is unknown: worth a wait.
            return Err(if jws.kid.is_some() || !table.loaded {
                Failure::UnknownKid
            } else {
                Failure::UnknownKey
            });
        };
        let bit = alg_bit(&jws.alg).ok_or(Failure::Algorithm)?;
        if self.algs & key.algs & (1 << bit) == 0 {
            return Err(Failure::Algorithm);
        }
        let vk = key
            .verifiers
            .iter()
            .find(|(b, _)| *b == bit)
            .map(|(_, k)| k)
            .ok_or(Failure::Algorithm)?;
        check_signature(jws, vk)?;
        Ok(table.generation)
    }

    /// Whether a verification made under `generation` still holds.
    #[inline]
    pub(super) fn current(&self, generation: u64) -> bool {
        self.set.table.load().generation == generation
    }

    /// The consumer named by the `consumer_claim` claim, when it is a configured username.
    pub(super) fn consumer_of(&self, claims: &Map<String, Value>) -> Option<usize> {
        let claim = self.consumer_claim.as_deref()?;
        let name = claims.get(claim)?.as_str()?;
        self.consumers.get(name).copied()
    }
}

impl Jwt {
    /// [`Jwt::authenticate`], and for a token whose `kid` the key set does not know, one
    /// refresh of the set (rate-limited, shared with concurrent requests, bounded by the
    /// set's `timeout`) before the final answer.
    pub(super) async fn authenticate_or_refresh(
        &self,
        token: &str,
    ) -> Result<Arc<TokenInfo>, Failure> {
        let Some(jwks) = &self.jwks else {
            return self.authenticate(token, now());
        };
        jwks.set.ensure_started();
        let first = self.authenticate(token, now());
        if !matches!(first, Err(Failure::UnknownKid)) {
            return first;
        }
        let set = &jwks.set;
        let reason = match set.request_refresh() {
            None => UnknownKid::RateLimited,
            Some(mut done) => {
                // The fetch is bounded by the same timeout; the margin covers parsing.
                let wait = set.settings().timeout + Duration::from_millis(100);
                match tokio::time::timeout(wait, done.changed()).await {
                    Ok(_) => UnknownKid::NotInSet,
                    Err(_) => UnknownKid::Timeout,
                }
            }
        };
        // Again in every case: a fetch may also have ended while this request was refused.
        let result = self.authenticate(token, now());
        if matches!(result, Err(Failure::UnknownKid)) {
            set.metrics.unknown_kid[reason as usize].inc();
        }
        result
    }
}

/// Why a request with an unknown `kid` was refused (`reason` label).
#[derive(Clone, Copy)]
enum UnknownKid {
    RateLimited = 0,
    Timeout = 1,
    NotInSet = 2,
}

/// `jwt_jwks_unknown_kid_refusals_total{reason}` values, by [`UnknownKid`].
const UNKNOWN_KID_REASONS: [&str; 3] = ["rate_limited", "timeout", "not_in_set"];
/// `jwt_jwks_fetches_total{outcome}` values: success, error, invalid.
const FETCH_OUTCOMES: [&str; 3] = ["success", "error", "invalid"];

/// The `jwt_jwks_*` families (labelled by source: a configured JWKS URL or file, so the
/// label stays bounded by the config).
struct Families {
    fetches: prometheus::IntCounterVec,
    keys: prometheus::IntGaugeVec,
    ignored: prometheus::IntGaugeVec,
    unknown_kid: prometheus::IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    Families {
        fetches: r.counter_vec(
            "jwt_jwks_fetches_total",
            "JWKS key set fetches (or file reads) by source and outcome (success, error, invalid).",
            &["source", "outcome"],
        ),
        keys: r.gauge_vec(
            "jwt_jwks_keys",
            "Usable keys in the current JWKS key set, by source.",
            &["source"],
        ),
        ignored: r.gauge_vec(
            "jwt_jwks_keys_ignored",
            "Keys of the last JWKS document that cannot be used (other use, type, curve or alg), by source.",
            &["source"],
        ),
        unknown_kid: r.counter_vec(
            "jwt_jwks_unknown_kid_refusals_total",
            "Tokens refused because the JWKS key set has no key with their kid, by source and reason (rate_limited, timeout, not_in_set).",
            &["source", "reason"],
        ),
    }
});

/// Registers the `jwt_jwks_*` families (once, at startup).
pub(super) fn register_metrics() {
    Lazy::force(&FAMILIES);
}

/// Removes the series of a JWKS source no key set uses any more.
fn forget_series(source: &str) {
    let f = &*FAMILIES;
    for o in FETCH_OUTCOMES {
        let _ = f.fetches.remove_label_values(&[source, o]);
    }
    for r in UNKNOWN_KID_REASONS {
        let _ = f.unknown_kid.remove_label_values(&[source, r]);
    }
    let _ = f.keys.remove_label_values(&[source]);
    let _ = f.ignored.remove_label_values(&[source]);
}

// ---------------------------------------------------------------------------------------------
// JWK parsing
// ---------------------------------------------------------------------------------------------

/// A usable key of a set.
pub(super) struct JwkKey {
    /// Algorithms this key may verify (bits of [`ALGS`]).
    algs: u8,
    /// One pinned verifier per algorithm of `algs`: (bit, key).
    verifiers: Vec<(u8, VerifyKey)>,
    /// SHA-256 of the key type, material and algorithms: tells a changed key from the same.
    fingerprint: [u8; 32],
}

impl fmt::Debug for JwkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwkKey({})", alg_names(self.algs).join(","))
    }
}

/// A parsed JWKS document: the usable keys (with their `kid`) and why others were ignored.
#[derive(Debug)]
pub(super) struct ParsedSet {
    keys: Vec<(Option<String>, JwkKey)>,
    ignored: Vec<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// A JWK member: base64url (RFC 7517); trailing padding is tolerated, since the set comes
/// from a configured source and not from the client.
fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v.as_deref().ok_or_else(|| format!("no {field:?}"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("{field:?} is not base64url"))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// (algorithms of the key type, decoding key, material for the fingerprint)
type Material = (u8, DecodingKey, Vec<u8>);

fn rsa_key(raw: &RawJwk) -> Result<Material, String> {
    use aws_lc_rs::encoding::AsDer;
    let n_raw = b64("n", &raw.n)?;
    let e_raw = b64("e", &raw.e)?;
    let (n, e) = (strip_zeros(&n_raw), strip_zeros(&e_raw));
    let bits = n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!("RSA key of {bits} bits; 2048 to 8192 are accepted"));
    }
    if e.is_empty() || e.len() > 8 {
        return Err("RSA exponent out of range".into());
    }
    aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
        .as_der()
        .map_err(|_| "not a valid RSA public key".to_string())?;
    let mut material = b"RSA\0".to_vec();
    material.extend_from_slice(n);
    material.push(0);
    material.extend_from_slice(e);
    Ok((
        RSA_ALGS,
        DecodingKey::from_rsa_raw_components(n, e),
        material,
    ))
}

fn ec_key(raw: &RawJwk) -> Result<Material, String> {
    let crv = raw.crv.as_deref().ok_or("no \"crv\"")?;
    let (algs, size, verify): (
        u8,
        usize,
        &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm,
    ) = match crv {
        "P-256" => (
            P256_ALGS,
            32,
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        ),
        "P-384" => (
            P384_ALGS,
            48,
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
        ),
        other => return Err(format!("unsupported curve {:?}", short(other))),
    };
    let x = b64("x", &raw.x)?;
    let y = b64("y", &raw.y)?;
    if x.len() != size || y.len() != size {
        return Err(format!("coordinates of the wrong size for {crv}"));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    aws_lc_rs::signature::ParsedPublicKey::new(verify, &point)
        .map_err(|_| format!("not a point on {crv}"))?;
    let mut material = format!("EC\0{crv}\0").into_bytes();
    material.extend_from_slice(&point);
    Ok((algs, DecodingKey::from_ec_der(&point), material))
}

/// Log-friendly, bounded copy of a value from the document.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_jwk(raw: &RawJwk) -> Result<JwkKey, String> {
    if let Some(u) = &raw.use_ {
        if u != "sig" {
            return Err(format!("use {:?} is not \"sig\"", short(u)));
        }
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return Err("key_ops without \"verify\"".into());
        }
    }
    let (type_algs, key, mut material) = match raw.kty.as_str() {
        "RSA" => rsa_key(raw)?,
        "EC" => ec_key(raw)?,
        other => return Err(format!("unsupported kty {:?}", short(other))),
    };
    let algs = match &raw.alg {
        None => type_algs,
        Some(a) => {
            let bit = alg_bit(a).ok_or_else(|| format!("unsupported alg {:?}", short(a)))?;
            if type_algs & (1 << bit) == 0 {
                return Err(format!("alg {a} does not fit this {} key", raw.kty));
            }
            1 << bit
        }
    };
    material.push(algs);
    let verifiers = (0..ALGS.len() as u8)
        .filter(|b| algs & (1 << b) != 0)
        .map(|b| {
            let (alg_name, alg) = ALGS[b as usize];
            (
                b,
                VerifyKey {
                    alg,
                    alg_name,
                    key: key.clone(),
                },
            )
        })
        .collect();
    Ok(JwkKey {
        algs,
        verifiers,
        fingerprint: Sha256::digest(&material).into(),
    })
}

/// Parses a JWKS document (RFC 7517 5). Keys that cannot be used are listed in `ignored`;
/// an error is a document that is not a key set, too large, or without any usable key.
pub(super) fn parse_jwks(body: &[u8]) -> Result<ParsedSet, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            "not a JWK set (a JSON object with a \"keys\" array is expected)".to_string()
        } else {
            format!("not JSON (line {} column {})", e.line(), e.column())
        }
    })?;
    if raw.keys.len() > MAX_JWKS_KEYS {
        return Err(format!(
            "{} keys; at most {MAX_JWKS_KEYS} are accepted",
            raw.keys.len()
        ));
    }
    let mut keys: Vec<(Option<String>, JwkKey)> = Vec::new();
    let mut ignored = Vec::new();
    let mut kids = HashSet::new();
    for (i, v) in raw.keys.into_iter().enumerate() {
        let raw: RawJwk = match serde_json::from_value(v) {
            Ok(r) => r,
            Err(_) => {
                ignored.push(format!(
                    "keys[{i}]: not a JWK (kty and string members expected)"
                ));
                continue;
            }
        };
        let name = match &raw.kid {
            Some(k) => format!("kid {:?}", short(k)),
            None => format!("keys[{i}]"),
        };
        match parse_jwk(&raw) {
            Ok(key) => {
                if let Some(kid) = &raw.kid {
                    if !kids.insert(kid.clone()) {
                        ignored.push(format!("{name}: duplicate kid"));
                        continue;
                    }
                }
                keys.push((raw.kid, key));
            }
            Err(why) => ignored.push(format!("{name}: {why}")),
        }
    }
    if keys.len() > 1 {
        // Only a token's kid selects among several keys: one without kid is unreachable.
        keys.retain(|(kid, _)| {
            if kid.is_none() {
                ignored.push("a key without kid in a set of several".into());
            }
            kid.is_some()
        });
    }
    if keys.is_empty() {
        return Err(if ignored.is_empty() {
            "no keys".into()
        } else {
            format!(
                "no usable key ({} ignored: {})",
                ignored.len(),
                ignored.join("; ")
            )
        });
    }
    Ok(ParsedSet { keys, ignored })
}

// ---------------------------------------------------------------------------------------------
// Key sets and their refreshers
// ---------------------------------------------------------------------------------------------

/// One version of a set's keys (swapped whole).
struct KeyTable {
    by_kid: HashMap<String, Arc<JwkKey>>,
    /// The key a token without `kid` may use: the only key of a one-key set.
    only: Option<Arc<JwkKey>>,
    /// A fetch (or the file read) succeeded at least once.
    loaded: bool,
    /// Bumped when a key present before is removed or changed.
    generation: u64,
}

impl KeyTable {
    fn len(&self) -> usize {
        self.by_kid.len().max(usize::from(self.only.is_some()))
    }
}

#[derive(Default)]
struct FetchState {
    in_flight: bool,
    /// Start of the last fetch: the rate limit of fetches asked for by requests.
    last_start: Option<Instant>,
}

/// Shared by a set and its refresher task, which must not keep the set alive.
#[derive(Default)]
struct Signals {
    /// A fetch was asked for (`FetchState::in_flight` is set), or the set was dropped.
    wake: Notify,
    stopped: AtomicBool,
    /// A refresher task exists.
    running: AtomicBool,
}

/// The series of one source label, shared by the key sets with that label (kept in the
/// registry by label): removed when the last of them goes.
struct SetMetrics {
    fetches: [IntCounter; 3],
    keys: IntGauge,
    ignored: IntGauge,
    unknown_kid: [IntCounter; 3],
    registry: Registry,
    label: String,
}

impl SetMetrics {
    /// Runs under the registry's lock (from `get_or_insert_with`), like the check in `drop`:
    /// series created for a new set of the label are never removed by an old one going.
    fn new(registry: Registry, label: String) -> SetMetrics {
        let f = &*FAMILIES;
        SetMetrics {
            fetches: FETCH_OUTCOMES.map(|o| f.fetches.with_label_values(&[label.as_str(), o])),
            keys: f.keys.with_label_values(&[label.as_str()]),
            ignored: f.ignored.with_label_values(&[label.as_str()]),
            unknown_kid: UNKNOWN_KID_REASONS
                .map(|r| f.unknown_kid.with_label_values(&[label.as_str(), r])),
            registry,
            label,
        }
    }
}

impl Drop for SetMetrics {
    fn drop(&mut self) {
        let label = &self.label;
        self.registry
            .unless_live::<SetMetrics>(label, || forget_series(label));
    }
}

/// The keys of one source, shared by every plugin instance that names it.
pub struct KeySet {
    source: Source,
    label: String,
    settings: Mutex<Settings>,
    table: ArcSwap<KeyTable>,
    /// Serializes table installs (the refresher, and a config load re-reading a file).
    install: Mutex<()>,
    fetch: Mutex<FetchState>,
    /// Completed fetches; requests waiting for a refresh watch it.
    done: watch::Sender<u64>,
    signals: Arc<Signals>,
    /// What was logged about ignored keys last (logged again only when it changes).
    last_ignored: Mutex<Vec<String>>,
    metrics: Arc<SetMetrics>,
}

/// The runtime refreshers are spawned on once the server runs (the background service's);
/// before that, the current one, if any.
static RUNTIME: OnceCell<tokio::runtime::Handle> = OnceCell::new();

impl KeySet {
    fn new(source: Source, settings: Settings, metrics: Arc<SetMetrics>) -> KeySet {
        let label = source.label();
        metrics.keys.set(0);
        metrics.ignored.set(0);
        KeySet {
            source,
            label,
            settings: Mutex::new(settings),
            table: ArcSwap::from_pointee(KeyTable {
                by_kid: HashMap::new(),
                only: None,
                loaded: false,
                generation: 1,
            }),
            install: Mutex::new(()),
            fetch: Mutex::new(FetchState::default()),
            done: watch::Sender::new(0),
            signals: Arc::default(),
            last_ignored: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// The set of `source` in `registry` (weak: a set lives exactly as long as a runtime
    /// uses it), created on first use; `settings` replace the previous ones. A file source is
    /// (re-)read now: a load error is returned for the config.
    fn get_or_create(
        registry: &Registry,
        source: Source,
        settings: Settings,
    ) -> Result<Arc<KeySet>, String> {
        let label = source.label();
        let metrics = registry
            .get_or_insert_with(&label, || SetMetrics::new(registry.clone(), label.clone()));
        let id = source.id();
        let set = registry.get_or_insert_with(&id, || KeySet::new(source, settings, metrics));
        *set.settings.lock() = settings;
        if let Source::File(p) = &set.source {
            let parsed = read_file(p).and_then(|b| parse_jwks(&b).map_err(FetchError::Invalid));
            match parsed {
                Ok(parsed) => {
                    set.metrics.fetches[0].inc();
                    set.install(parsed);
                }
                Err(e) => {
                    let (outcome, why) = e.split();
                    set.metrics.fetches[outcome].inc();
                    return Err(format!("{}: {why}", p.display()));
                }
            }
        }
        set.ensure_started();
        Ok(set)
    }

    fn settings(&self) -> Settings {
        *self.settings.lock()
    }

    /// Spawns the refresher if there is none and a runtime to run it on.
    fn ensure_started(self: &Arc<Self>) {
        if self.signals.running.load(Ordering::Acquire) {
            return;
        }
        let handle = RUNTIME
            .get()
            .cloned()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let Some(handle) = handle else {
            return;
        };
        if self.signals.running.swap(true, Ordering::AcqRel) {
            return;
        }
        handle.spawn(refresher(Arc::downgrade(self), self.signals.clone()));
    }

    /// Asks for a fetch on behalf of a request with an unknown `kid`: a receiver that
    /// changes when the fetch in flight (joined or started now) ends, or `None` when the last
    /// fetch started less than `min_refresh_interval` ago.
    fn request_refresh(&self) -> Option<watch::Receiver<u64>> {
        let min = self.settings().min_refresh;
        let mut st = self.fetch.lock();
        if !st.in_flight {
            if st.last_start.is_some_and(|t| t.elapsed() < min)
                || !self.signals.running.load(Ordering::Acquire)
            {
                return None;
            }
            st.in_flight = true;
            st.last_start = Some(Instant::now());
            self.signals.wake.notify_one();
        }
        // Subscribed under the lock the refresher takes to finish: this fetch's end is seen.
        Some(self.done.subscribe())
    }

    /// The refresher claims a fetch: a scheduled one (`timer`) or one asked for.
    fn begin(&self, timer: bool) -> bool {
        let mut st = self.fetch.lock();
        if st.in_flight {
            return true;
        }
        if timer {
            st.in_flight = true;
            st.last_start = Some(Instant::now());
        }
        timer
    }

    fn finish(&self) {
        let mut st = self.fetch.lock();
        st.in_flight = false;
        self.done.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes `parsed` the current keys.
    fn install(&self, parsed: ParsedSet) {
        let _serial = self.install.lock();
        let old = self.table.load_full();
        let count = parsed.keys.len();
        let mut by_kid = HashMap::with_capacity(count);
        let mut only = None;
        for (kid, key) in parsed.keys {
            let key = Arc::new(key);
            if count == 1 {
                only = Some(key.clone());
            }
            if let Some(kid) = kid {
                by_kid.insert(kid, key);
            }
        }
        let gone = |old: &Arc<JwkKey>, new: Option<&Arc<JwkKey>>| {
            new.is_none_or(|n| n.fingerprint != old.fingerprint)
        };
        let removed = old.by_kid.iter().any(|(kid, k)| gone(k, by_kid.get(kid)))
            || old.only.as_ref().is_some_and(|k| gone(k, only.as_ref()));
        let table = KeyTable {
            by_kid,
            only,
            loaded: true,
            generation: old.generation + u64::from(removed),
        };
        let added = table
            .by_kid
            .keys()
            .filter(|k| !old.by_kid.contains_key(*k))
            .count();
        if !old.loaded {
            tracing::info!(source = %self.label, keys = count, "JWKS loaded");
        } else if removed || added > 0 {
            tracing::info!(
                source = %self.label,
                keys = count,
                added,
                removed_or_changed = removed,
                "JWKS changed"
            );
        }
        self.metrics.keys.set(count as i64);
        self.metrics.ignored.set(parsed.ignored.len() as i64);
        let mut last = self.last_ignored.lock();
        if *last != parsed.ignored {
            if !parsed.ignored.is_empty() {
                tracing::warn!(
                    source = %self.label,
                    "JWKS: {} keys ignored: {}",
                    parsed.ignored.len(),
                    parsed.ignored.join("; ")
                );
            }
            *last = parsed.ignored;
        }
        self.table.store(Arc::new(table));
    }

    async fn fetch(
        &self,
        client: &mut Option<reqwest::Client>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        match &self.source {
            Source::Url(url) => {
                if client.is_none() {
                    *client = Some(http_client()?);
                }
                match client {
                    Some(c) => fetch_url(c, url, timeout).await,
                    None => Err(FetchError::Transport("no HTTP client".into())),
                }
            }
            Source::File(path) => {
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || read_file(&path));
                match tokio::time::timeout(timeout, read).await {
                    Ok(Ok(r)) => r.map(|b| (b, None)),
                    Ok(Err(_)) => Err(FetchError::Transport("the read task failed".into())),
                    Err(_) => Err(FetchError::Transport(format!(
                        "timed out after {timeout:?}"
                    ))),
                }
            }
        }
    }

    /// Installs a fetch result (or keeps the last good set); the delay to the next fetch.
    fn complete(
        &self,
        result: Result<(Vec<u8>, Option<Duration>), FetchError>,
        failures: &mut u32,
        s: Settings,
    ) -> Duration {
        let (outcome, why) = match result.map(|(body, age)| (parse_jwks(&body), age)) {
            Ok((Ok(parsed), max_age)) => {
                self.metrics.fetches[0].inc();
                self.install(parsed);
                *failures = 0;
                let next = max_age.map_or(s.refresh, |a| a.max(s.min_refresh).min(s.refresh));
                return jitter(next);
            }
            Ok((Err(e), _)) => (2, e),
            Err(e) => e.split(),
        };
        self.metrics.fetches[outcome].inc();
        *failures = failures.saturating_add(1);
        let table = self.table.load();
        tracing::warn!(
            source = %self.label,
            keys = table.len(),
            "JWKS refresh failed ({}): {why}; keeping the last good key set",
            FETCH_OUTCOMES[outcome]
        );
        let backoff = s
            .min_refresh
            .saturating_mul(1u32 << (*failures - 1).min(16))
            .min(s.refresh);
        jitter(backoff)
    }
}

impl Drop for KeySet {
    fn drop(&mut self) {
        // The refresher ends; the series go with the last set of this label (`SetMetrics`).
        self.signals.stopped.store(true, Ordering::Release);
        self.signals.wake.notify_one();
    }
}

/// Up to 10% less than `d`, so gateways started together do not fetch together.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms - rand::random_range(0..=ms / 10))
}

/// Marks the refresher gone however its task ends (also when its runtime shuts down), so a
/// later request can start another one and no fetch stays "in flight" forever.
struct Alive {
    set: Weak<KeySet>,
    signals: Arc<Signals>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.signals.running.store(false, Ordering::Release);
        if let Some(set) = self.set.upgrade() {
            let in_flight = set.fetch.lock().in_flight;
            if in_flight {
                set.finish();
            }
        }
    }
}

/// The one task that fetches a set: on its schedule and when requests ask.
async fn refresher(set: Weak<KeySet>, signals: Arc<Signals>) {
    let _alive = Alive {
        set: set.clone(),
        signals: signals.clone(),
    };
    let mut client = None;
    let mut failures = 0u32;
    let mut due = match set.upgrade() {
        Some(s) if s.table.load().loaded => Instant::now() + jitter(s.settings().refresh),
        Some(_) => Instant::now(),
        None => return,
    };
    loop {
        let timer = tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => true,
            _ = signals.wake.notified() => false,
        };
        if signals.stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(s) = set.upgrade() else {
            return;
        };
        if !s.begin(timer) {
            // A stale wake-up: the fetch it asked for already ran.
            continue;
        }
        let settings = s.settings();
        let result = s.fetch(&mut client, settings.timeout).await;
        let delay = s.complete(result, &mut failures, settings);
        s.finish();
        due = Instant::now() + delay;
    }
}

/// Starts the refreshers of the key sets loaded before the server ran (the initial config
/// is compiled before Pingora's runtimes exist, and before `-d` forks), and runs those of
/// sets added by reloads.
pub struct Refreshers {
    registry: Registry,
}

impl Refreshers {
    /// For the key sets of the app's `registry`.
    pub fn new(registry: Registry) -> Refreshers {
        Refreshers { registry }
    }
}

#[async_trait]
impl BackgroundService for Refreshers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = RUNTIME.set(tokio::runtime::Handle::current());
        let sets: Vec<Arc<KeySet>> = self
            .registry
            .live::<KeySet>()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        for s in &sets {
            s.ensure_started();
        }
        drop(sets);
        let _ = shutdown.changed().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------------------

enum FetchError {
    /// The source could not be read (connection, HTTP status, timeout, file access).
    Transport(String),
    /// It answered something that is not an acceptable key set.
    Invalid(String),
}

impl FetchError {
    /// Index into [`FETCH_OUTCOMES`], and the message.
    fn split(self) -> (usize, String) {
        match self {
            FetchError::Transport(m) => (1, m),
            FetchError::Invalid(m) => (2, m),
        }
    }
}

/// The fetching client: straight to the key server, whatever the environment's proxy
/// settings (see [`crate::plugins::outbound`]).
fn http_client() -> Result<reqwest::Client, FetchError> {
    crate::plugins::outbound::client()
        .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION"), " (jwks)"))
        .redirect(reqwest::redirect::Policy::limited(3))
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| FetchError::Transport(format!("cannot build the HTTP client: {e}")))
}

/// A reqwest error without its URL (whose query may hold a credential), with its causes.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &reqwest::Url,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let get = async {
        let mut resp = client
            .get(url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| FetchError::Transport(describe(e)))?;
        if !resp.status().is_success() {
            return Err(FetchError::Transport(format!(
                "HTTP status {}",
                resp.status().as_u16()
            )));
        }
        let too_large = || FetchError::Invalid(format!("larger than {MAX_JWKS_BYTES} bytes"));
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let max_age = max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Transport(describe(e)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    };
    match tokio::time::timeout(timeout, get).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Transport(format!(
            "timed out after {timeout:?}"
        ))),
    }
}

/// `Cache-Control` of a JWKS response: `max-age`, or zero for `no-store` / `no-cache`.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut age = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(s) = v.to_str() else {
            continue;
        };
        for d in s.split(',').map(str::trim) {
            if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if let Some((k, v)) = d.split_once('=') {
                if k.trim().eq_ignore_ascii_case("max-age") {
                    if let Ok(secs) = v.trim().trim_matches('"').parse::<u64>() {
                        age = Some(Duration::from_secs(secs));
                    }
                }
            }
        }
    }
    age
}

/// Reads a JWKS file, at most [`MAX_JWKS_BYTES`].
fn read_file(path: &Path) -> Result<Vec<u8>, FetchError> {
    let cannot = |e: std::io::Error| FetchError::Transport(format!("cannot read it ({e})"));
    let f = std::fs::File::open(path).map_err(cannot)?;
    let mut buf = Vec::new();
    f.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() > MAX_JWKS_BYTES {
        return Err(FetchError::Invalid(format!(
            "larger than {MAX_JWKS_BYTES} bytes"
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
