//! `jwt` (request_filter, upstream_request_filter): a `Bearer` token from `header_names`
//! (default `Authorization`) identifies a consumer by its `key_claim_name` claim (default
//! `iss`), which selects one of the consumers' `jwt_secrets`. That secret's algorithm is the
//! only one accepted: the token header's `alg` must equal it exactly, so `none`, `NoNe`,
//! another algorithm or an HS-signed token against an RSA/EC key never verify.
//!
//! Verification keys are built once at config load (a bad key file is a config error with
//! its path and line). A token is split and its header and claims decoded once, with strict
//! base64url (no padding, no stray bits) and a claim set without duplicate names; then the
//! signature is checked by `jsonwebtoken` (aws-lc backend) and the claims: `exp`/`nbf` must
//! be numbers and are enforced whenever present (`claims_to_verify` makes them required),
//! `iss`/`aud` when configured, with `leeway`.
//!
//! Successful verifications are cached per plugin instance (so never across config
//! snapshots) in a bounded, sharded LRU keyed by the SHA-256 of the token; an entry lives
//! until the token's `exp` (plus leeway), so a repeated RS256/ES256 token skips the signature
//! check. Tokens themselves are never stored, logged or echoed.
//!
//! With a `jwks:` block (see [`jwks`]), a token whose `key_claim_name` claim names no
//! `jwt_secrets` entry is verified with the key of a JWKS key set that its header's `kid`
//! selects; a request with an unknown `kid` may wait for one refresh of the set.
//!
//! Failures: 401 `missing_token` (`WWW-Authenticate: Bearer realm="gatehouse"`, RFC 6750
//! 3.1: no error code when no credentials were sent), `invalid_token` or `token_expired`
//! (`WWW-Authenticate: Bearer error="invalid_token"`).

use super::ttl_cache::TtlCache;
use super::{phase, Build, Hooks, Outcome, Reply};
use crate::config::diag::Compiler;
use crate::config::units::{ByteSize, Dur};
use crate::ctx::RequestCtx;
use crate::model::JwtSecretSpec;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Header carrying the token's roles upstream (comma-separated).
pub const ROLES_HEADER: HeaderName = HeaderName::from_static("x-authenticated-roles");

/// Lifetime of a cached verification of a token without `exp` (allowed when `exp` is not in
/// `claims_to_verify`).
const NO_EXP_CACHE_MS: u64 = 300_000;
/// Cache shards (each its own lock) to keep worker threads from queueing on one mutex.
const CACHE_SHARDS: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    header_names: Vec<String>,
    claims_to_verify: Vec<String>,
    key_claim_name: String,
    /// Accepted `iss` values (a string or a list); unchecked when absent.
    issuer: Option<OneOrMany>,
    /// Accepted `aud` values (a string or a list); unchecked when absent.
    audience: Option<OneOrMany>,
    leeway: Dur,
    max_token_bytes: ByteSize,
    /// Extension: the claim whose roles go upstream as `X-Authenticated-Roles`.
    roles_claim: String,
    /// Extension: strip the token header before proxying (Kong's jwt keeps it: default off).
    hide_credentials: bool,
    /// Extension: verified tokens kept in the cache (0: no cache).
    cache_entries: usize,
    /// Kong's key: `false` lets CORS preflights through unauthenticated.
    run_on_preflight: bool,
    /// Extension: a JWKS key set (`url` or `file`) for tokens of no `jwt_secrets` entry.
    jwks: Option<jwks::JwksConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_names: vec!["Authorization".into()],
            claims_to_verify: vec!["exp".into()],
            key_claim_name: "iss".into(),
            issuer: None,
            audience: None,
            leeway: Dur::secs(0),
            max_token_bytes: ByteSize(8 * 1024),
            roles_claim: "roles".into(),
            hide_credentials: true,
            cache_entries: 10_000,
            run_on_preflight: true,
            jwks: None,
        }
    }
}

/// The algorithms the contract supports, by their JOSE name.
fn algorithm(name: &str) -> Option<(Algorithm, &'static str)> {
    Some(match name {
        "HS256" => (Algorithm::HS256, "HS256"),
        "HS384" => (Algorithm::HS384, "HS384"),
        "HS512" => (Algorithm::HS512, "HS512"),
        "RS256" => (Algorithm::RS256, "RS256"),
        "RS384" => (Algorithm::RS384, "RS384"),
        "RS512" => (Algorithm::RS512, "RS512"),
        "ES256" => (Algorithm::ES256, "ES256"),
        "ES384" => (Algorithm::ES384, "ES384"),
        _ => return None,
    })
}

/// Makes sure `jsonwebtoken` has its crypto provider before any verification, so the
/// request path can never hit its "no provider" panic (e.g. if feature unification ever
/// enabled a second backend).
fn ensure_provider() {
    if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    }
}

/// A verification key pinned to one algorithm.
pub struct VerifyKey {
    alg: Algorithm,
    alg_name: &'static str,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyKey({})", self.alg_name)
    }
}

impl VerifyKey {
    fn named(alg_name: &str) -> Result<(Algorithm, &'static str), String> {
        algorithm(alg_name).ok_or_else(|| format!("unsupported algorithm {alg_name:?}"))
    }

    /// An HMAC secret: at least as long as the hash output (RFC 7518 3.2).
    pub fn hmac(alg_name: &str, secret: &[u8]) -> Result<VerifyKey, String> {
        ensure_provider();
        let (alg, alg_name) = Self::named(alg_name)?;
        if alg.family() != AlgorithmFamily::Hmac {
            return Err(format!("{alg_name} does not use a shared secret"));
        }
        let min = match alg {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        };
        if secret.len() < min {
            return Err(format!(
                "{alg_name} secrets must be at least {min} bytes (RFC 7518 3.2), this one has {}",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| "must not be empty".to_string())?;
        Ok(VerifyKey { alg, alg_name, key })
    }

    /// A PEM RSA public key (`PUBLIC KEY` or `RSA PUBLIC KEY`) of 2048 to 8192 bits.
    pub fn rsa_pem(alg_name: &str, pem: &[u8]) -> Result<VerifyKey, String> {
        ensure_provider();
        let (alg, alg_name) = Self::named(alg_name)?;
        if alg.family() != AlgorithmFamily::Rsa {
            return Err(format!("{alg_name} does not use an RSA key"));
        }
        let not_rsa = || "not a PEM RSA public key".to_string();
        let key = DecodingKey::from_rsa_pem(pem).map_err(|_| not_rsa())?;
        let der = key.try_get_as_bytes().map_err(|_| not_rsa())?;
        let public = aws_lc_rs::rsa::PublicKey::from_der(der).map_err(|_| not_rsa())?;
        let n = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(&public).n;
        let first = n.iter().position(|&b| b != 0).unwrap_or(n.len());
        let bits = (n.len() - first) * 8 - n.get(first).map_or(0, |b| b.leading_zeros() as usize);
        if !(2048..=8192).contains(&bits) {
            return Err(format!(
                "the RSA key has {bits} bits; 2048 to 8192 are accepted"
            ));
        }
        Ok(VerifyKey { alg, alg_name, key })
    }

    /// A PEM EC public key (`PUBLIC KEY`) on the algorithm's curve (P-256 for ES256, P-384
    /// for ES384), checked to be a valid point.
    pub fn ec_pem(alg_name: &str, pem: &[u8]) -> Result<VerifyKey, String> {
        ensure_provider();
        let (alg, alg_name) = Self::named(alg_name)?;
        let (verify_alg, curve) = match alg {
            Algorithm::ES256 => (&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, "P-256"),
            Algorithm::ES384 => (&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED, "P-384"),
            _ => return Err(format!("{alg_name} does not use an EC key")),
        };
        let wrong = || format!("not a PEM {curve} public key (needed for {alg_name})");
        let key = DecodingKey::from_ec_pem(pem).map_err(|_| wrong())?;
        let point = key.try_get_as_bytes().map_err(|_| wrong())?;
        aws_lc_rs::signature::ParsedPublicKey::new(verify_alg, point).map_err(|_| wrong())?;
        Ok(VerifyKey { alg, alg_name, key })
    }

    /// Wraps a key built elsewhere (JWK test vectors); no policy checks.
    pub fn from_decoding_key(alg_name: &str, key: DecodingKey) -> Option<VerifyKey> {
        ensure_provider();
        let (alg, alg_name) = algorithm(alg_name)?;
        (alg.family() == key.family()).then_some(VerifyKey { alg, alg_name, key })
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    TooLarge,
    UnknownKey,
    /// The JWKS key set has no key with the token's `kid` (a refresh may help).
    UnknownKid,
    Algorithm,
    Signature,
    ClaimType,
    MissingClaim,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl Failure {
    pub fn reply(self) -> Reply {
        let (code, message) = match self {
            Failure::Missing => ("missing_token", "A bearer token is required"),
            Failure::Expired => ("token_expired", "The token has expired"),
            Failure::Malformed => ("invalid_token", "The token is malformed"),
            Failure::TooLarge => ("invalid_token", "The token is too large"),
            Failure::UnknownKey => ("invalid_token", "No credential matches the token"),
            Failure::UnknownKid => ("invalid_token", "The token's signing key is not known"),
            Failure::Algorithm => ("invalid_token", "The token's algorithm is not accepted"),
            Failure::Signature => ("invalid_token", "The token's signature is invalid"),
            Failure::ClaimType => ("invalid_token", "The token's exp and nbf must be numbers"),
            Failure::MissingClaim => ("invalid_token", "The token lacks a required claim"),
            Failure::NotYetValid => ("invalid_token", "The token is not valid yet"),
            Failure::Issuer => ("invalid_token", "The token's issuer is not accepted"),
            Failure::Audience => ("invalid_token", "The token's audience is not accepted"),
        };
        let challenge = if self == Failure::Missing {
            HeaderValue::from_static("Bearer realm=\"gatehouse\"")
        } else {
            HeaderValue::from_static("Bearer error=\"invalid_token\"")
        };
        Reply::error_with(401, code, message).header(http::header::WWW_AUTHENTICATE, challenge)
    }
}

/// A compact JWS split and decoded, not yet verified.
pub struct Jws<'a> {
    signing_input: &'a str,
    signature: &'a str,
    alg: String,
    /// The header's `kid` (JWKS key selection).
    kid: Option<String>,
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
struct JwsHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    crit: Option<Value>,
    b64: Option<Value>,
}

/// Splits `token` into exactly three strict-base64url parts and decodes the header (which
/// must name an `alg`, and may use no `crit` extension nor an unencoded payload) and payload.
pub fn parse_jws(token: &str) -> Result<Jws<'_>, Failure> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Failure::Malformed)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(Failure::Malformed)?;
    if payload_b64.contains('.') {
        return Err(Failure::Malformed);
    }
    let header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| Failure::Malformed)?;
    let h: JwsHeader = serde_json::from_slice(&header).map_err(|_| Failure::Malformed)?;
    if h.crit.is_some() || h.b64.is_some_and(|b| b != Value::Bool(true)) {
        return Err(Failure::Malformed);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| Failure::Malformed)?;
    Ok(Jws {
        signing_input,
        signature,
        alg: h.alg.into_owned(),
        kid: h.kid.map(Cow::into_owned),
        payload,
    })
}

/// The algorithm pin, then the signature (strict base64url) over the exact signing input.
pub fn check_signature(jws: &Jws, key: &VerifyKey) -> Result<(), Failure> {
    if jws.alg != key.alg_name {
        return Err(Failure::Algorithm);
    }
    match jsonwebtoken::crypto::verify(
        jws.signature,
        jws.signing_input.as_bytes(),
        &key.key,
        key.alg,
    ) {
        Ok(true) => Ok(()),
        _ => Err(Failure::Signature),
    }
}

/// A claim set: a JSON object whose member names are unique (a duplicate `exp` or `iss` is a
/// classic parser-differential trick).
struct Claims(Map<String, Value>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Claims, A::Error> {
                let mut m = Map::new();
                while let Some(k) = a.next_key::<String>()? {
                    if m.contains_key(&k) {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    let v: Value = a.next_value()?;
                    m.insert(k, v);
                }
                Ok(Claims(m))
            }
        }
        d.deserialize_map(V)
    }
}

/// Roles in a claim value: an array of strings, or one string of names separated by spaces
/// or commas (OAuth `scope` style).
pub fn roles_in(v: &Value) -> Vec<&str> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// A verified token: what the request context keeps.
#[derive(Debug)]
pub struct TokenInfo {
    /// Index into `rt.consumers`: `None` for a JWKS token that names no consumer.
    pub consumer: Option<usize>,
    pub claims: Map<String, Value>,
    /// `X-Authenticated-Roles` value (roles of `roles_claim`), if any.
    pub roles: Option<HeaderValue>,
    /// Unix time in ms from which this verification no longer holds (`exp` + leeway).
    valid_until_ms: u64,
    /// Generation of the JWKS key set that verified it (0: a `jwt_secrets` key).
    jwks_generation: u64,
}

struct Credential {
    consumer: usize,
    key: VerifyKey,
}

/// Bounded LRU of verified tokens (until each token's `valid_until_ms`), sharded by the
/// first byte of the token's SHA-256.
type VerifyCache = TtlCache<u64, Arc<TokenInfo>>;

pub struct Jwt {
    header_names: Vec<HeaderName>,
    require_exp: bool,
    require_nbf: bool,
    key_claim: String,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: f64,
    max_token_bytes: usize,
    roles_claim: String,
    hide_credentials: bool,
    /// `key_claim_name` value -> credential.
    credentials: HashMap<String, Credential>,
    cache: Option<VerifyCache>,
    run_on_preflight: bool,
    jwks: Option<jwks::Jwks>,
}

impl fmt::Debug for Jwt {
    // Keys stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("header_names", &self.header_names)
            .field("key_claim", &self.key_claim)
            .field("credentials", &self.credentials.len())
            .field("cache", &self.cache.as_ref().map(TtlCache::len))
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Failure::ClaimType),
        Some(_) => Err(Failure::ClaimType),
    }
}

fn load_key(c: &mut Compiler, sp: &str, spec: &JwtSecretSpec) -> Option<VerifyKey> {
    // Unsupported algorithms, missing secrets and missing files are reported by the
    // consumers section already.
    let (alg, name) = algorithm(&spec.algorithm)?;
    if alg.family() == AlgorithmFamily::Hmac {
        if spec.public_key_file.is_some() {
            c.error_once(sp, format!("{name} uses `secret`, not a public key file"));
            return None;
        }
        let secret = spec.secret.as_ref()?;
        let bytes = if spec.secret_is_base64 {
            match STANDARD.decode(secret.expose().trim()) {
                Ok(b) => b,
                Err(_) => {
                    c.error_once(
                        &format!("{sp}.secret"),
                        "is not valid base64 (secret_is_base64 is set)",
                    );
                    return None;
                }
            }
        } else {
            secret.expose().as_bytes().to_vec()
        };
        return VerifyKey::hmac(name, &bytes)
            .map_err(|e| c.error_once(&format!("{sp}.secret"), e))
            .ok();
    }
    let rsa = alg.family() == AlgorithmFamily::Rsa;
    let field = if rsa {
        "rsa_public_key_file"
    } else {
        "ecdsa_public_key_file"
    };
    if spec.secret.is_some() {
        c.error_once(
            &format!("{sp}.secret"),
            format!("{name} uses {field}, not a secret"),
        );
        return None;
    }
    let file = spec.public_key_file.as_ref()?;
    if !file.is_file() {
        return None;
    }
    let fp = format!("{sp}.{field}");
    let pem = match std::fs::read(file) {
        Ok(p) => p,
        Err(e) => {
            c.error_once(&fp, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let key = if rsa {
        VerifyKey::rsa_pem(name, &pem)
    } else {
        VerifyKey::ec_pem(name, &pem)
    };
    key.map_err(|e| c.error_once(&fp, format!("{}: {e}", file.display())))
        .ok()
}

impl Jwt {
    /// The token of the request: `Ok(None)` when there is none.
    fn find_token<'a>(&self, req: &'a RequestHeader) -> Result<Option<&'a str>, Failure> {
        for name in &self.header_names {
            let mut values = req.headers.get_all(name).iter();
            let Some(v) = values.next() else {
                continue;
            };
            if values.next().is_some() {
                return Err(Failure::Malformed);
            }
            let s = v.to_str().map_err(|_| Failure::Malformed)?.trim();
            let bearer = s.len() >= 6 && s.as_bytes()[..6].eq_ignore_ascii_case(b"bearer");
            let token = if bearer && (s.len() == 6 || s.as_bytes()[6] == b' ') {
                s[6..].trim()
            } else if name == http::header::AUTHORIZATION {
                // Another scheme (Basic...): not a token for this plugin.
                continue;
            } else {
                s
            };
            return Ok((!token.is_empty()).then_some(token));
        }
        Ok(None)
    }

    /// Verifies `token` at time `now` (Unix seconds), from the cache when it was verified
    /// before by this instance.
    pub fn authenticate(&self, token: &str, now: f64) -> Result<Arc<TokenInfo>, Failure> {
        if token.len() > self.max_token_bytes {
            return Err(Failure::TooLarge);
        }
        let now_ms = (now * 1000.0) as u64;
        let Some(cache) = &self.cache else {
            return self.verify(token, now).map(Arc::new);
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = cache.get(&digest, now_ms) {
            // A JWKS verification holds while no key was removed from the set since.
            let current = hit.jwks_generation == 0
                || self
                    .jwks
                    .as_ref()
                    .is_some_and(|j| j.current(hit.jwks_generation));
            if current {
                return Ok(hit);
            }
        }
        let info = Arc::new(self.verify(token, now)?);
        cache.put(digest, info.valid_until_ms, info.clone());
        Ok(info)
    }

    fn verify(&self, token: &str, now: f64) -> Result<TokenInfo, Failure> {
        let jws = parse_jws(token)?;
        let Claims(claims) =
            serde_json::from_slice(&jws.payload).map_err(|_| Failure::Malformed)?;
        let cred = match claims.get(&self.key_claim) {
            Some(Value::String(k)) => self.credentials.get(k),
            _ => None,
        };
        let (consumer, jwks_generation) = match (cred, &self.jwks) {
            (Some(cred), _) => {
                check_signature(&jws, &cred.key)?;
                (Some(cred.consumer), 0)
            }
            (None, Some(jwks)) => (None, jwks.check_signature(&jws)?),
            (None, None) => return Err(Failure::UnknownKey),
        };
        // Only authentic tokens get past here: claim errors do not help forgers.
        let exp = number(&claims, "exp")?;
        let nbf = number(&claims, "nbf")?;
        if (self.require_exp && exp.is_none()) || (self.require_nbf && nbf.is_none()) {
            return Err(Failure::MissingClaim);
        }
        if let Some(nbf) = nbf {
            if now + self.leeway < nbf {
                return Err(Failure::NotYetValid);
            }
        }
        if let Some(exp) = exp {
            if now >= exp + self.leeway {
                return Err(Failure::Expired);
            }
        }
        if !self.issuers.is_empty() {
            let ok = claims
                .get("iss")
                .and_then(Value::as_str)
                .is_some_and(|iss| self.issuers.iter().any(|i| i == iss));
            if !ok {
                return Err(Failure::Issuer);
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |a: &str| self.audiences.iter().any(|x| x == a);
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => accepted(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(Failure::Audience);
            }
        }
        let roles = claims.get(&self.roles_claim).and_then(|v| {
            let joined = roles_in(v).join(",");
            (!joined.is_empty())
                .then(|| HeaderValue::from_str(&joined).ok())
                .flatten()
        });
        let now_ms = (now * 1000.0) as u64;
        let valid_until_ms = match exp {
            // Saturating float-to-int conversion: a far-future exp stays far.
            Some(exp) => ((exp + self.leeway) * 1000.0) as u64,
            None => now_ms.saturating_add(NO_EXP_CACHE_MS),
        };
        let consumer = consumer.or_else(|| self.jwks.as_ref()?.consumer_of(&claims));
        Ok(TokenInfo {
            consumer,
            claims,
            roles,
            valid_until_ms,
            jwks_generation,
        })
    }
}

impl Hooks for Jwt {
    /// The verified token (claims, roles) once this plugin authenticated the request.
    type State = Option<Arc<TokenInfo>>;
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        ensure_provider();
        let cp = format!("{path}.config");
        let mut header_names = Vec::new();
        for (i, n) in cfg.header_names.iter().enumerate() {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) => header_names.push(h),
                Err(_) => c.error(
                    &format!("{cp}.header_names[{i}]"),
                    format!("invalid header name {n:?}"),
                ),
            }
        }
        if cfg.header_names.is_empty() {
            c.error(&format!("{cp}.header_names"), "needs at least one header");
        }
        let (mut require_exp, mut require_nbf) = (false, false);
        for (i, claim) in cfg.claims_to_verify.iter().enumerate() {
            match claim.as_str() {
                "exp" => require_exp = true,
                "nbf" => require_nbf = true,
                other => c.error(
                    &format!("{cp}.claims_to_verify[{i}]"),
                    format!("unknown claim {other:?} (use exp, nbf)"),
                ),
            }
        }
        for (name, v) in [
            ("key_claim_name", &cfg.key_claim_name),
            ("roles_claim", &cfg.roles_claim),
        ] {
            if v.is_empty() {
                c.error(&format!("{cp}.{name}"), "must not be empty");
            }
        }
        if cfg.max_token_bytes.0 < 16 {
            c.error(
                &format!("{cp}.max_token_bytes"),
                "must be at least 16 bytes",
            );
        }
        let mut credentials: HashMap<String, Credential> = HashMap::new();
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (ci, cons) in env.consumers.iter().enumerate() {
            for (j, spec) in cons.jwt_secrets.iter().enumerate() {
                let sp = format!("consumers[{ci}].jwt_secrets[{j}]");
                if let Some(prev) = seen.insert(&spec.key, &cons.username) {
                    c.error_once(
                        &format!("{sp}.key"),
                        format!(
                            "duplicate jwt_secrets key \"{}\" (also used by consumer \"{prev}\")",
                            spec.key
                        ),
                    );
                    continue;
                }
                if let Some(key) = load_key(c, &sp, spec) {
                    credentials.insert(spec.key.clone(), Credential { consumer: ci, key });
                }
            }
        }
        let jwks = match cfg.jwks {
            Some(j) => Some(jwks::Jwks::build(c, &format!("{cp}.jwks"), j, env)?),
            None => None,
        };
        Some(Jwt {
            header_names,
            require_exp,
            require_nbf,
            key_claim: cfg.key_claim_name,
            issuers: cfg.issuer.map(OneOrMany::into_vec).unwrap_or_default(),
            audiences: cfg.audience.map(OneOrMany::into_vec).unwrap_or_default(),
            leeway: cfg.leeway.0.as_secs_f64(),
            max_token_bytes: usize::try_from(cfg.max_token_bytes.0).unwrap_or(usize::MAX),
            roles_claim: cfg.roles_claim,
            hide_credentials: cfg.hide_credentials,
            credentials,
            cache: VerifyCache::new(cfg.cache_entries, CACHE_SHARDS),
            run_on_preflight: cfg.run_on_preflight,
            jwks,
        })
    }
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if !self.run_on_preflight && super::cors::is_cors_preflight(session.req_header()) {
            return Outcome::Continue;
        }
        let result = match self.find_token(session.req_header()) {
            Ok(Some(token)) => self.authenticate_or_refresh(token).await,
            Ok(None) => Err(Failure::Missing),
            Err(f) => Err(f),
        };
        match result {
            Ok(info) => {
                // A JWKS token of no consumer leaves one found by key-auth in place.
                if info.consumer.is_some() {
                    ctx.consumer = info.consumer;
                }
                ctx.plugins.jwt = Some(info);
                Outcome::Continue
            }
            Err(f) => {
                tracing::debug!(request_id = %ctx.request_id, reason = ?f, "jwt refused");
                let reply = f.reply();
                Outcome::Respond(reply)
            }
        }
    }
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        super::send_consumer(req, ctx)?;
        if let Some(roles) = ctx.plugins.jwt.as_ref().and_then(|t| t.roles.clone()) {
            req.insert_header(ROLES_HEADER, roles)?;
        }
        if self.hide_credentials {
            for name in &self.header_names {
                req.remove_header(name);
            }
        }
        Ok(())
    }

    fn register_metrics() {
        jwks::register_metrics();
    }

    /// The JWKS refreshers: those of key sets loaded before the server ran, and those of
    /// sets later reloads add.
    fn background_services(
        _live: &Arc<crate::ctx::Live>,
        registry: &crate::util::registry::Registry,
    ) -> Vec<Box<dyn pingora::services::ServiceWithDependents>> {
        vec![Box::new(pingora::services::background::background_service(
            "jwks refresh",
            jwks::Refreshers::new(registry.clone()),
        ))]
    }

    fn explain(&self, x: &mut super::Explain) -> Value {
        x.deferred_identity = Some("the token's roles claim");
        serde_json::json!({"result": "verifies the bearer token (not decided offline)"})
    }
}

pub mod jwks;

#[cfg(test)]
mod tests;
