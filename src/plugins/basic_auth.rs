//! `basic-auth` (request_filter, upstream_request_filter): `Authorization: Basic
//! base64(user:password)` identifies a consumer by one of its `basicauth_credentials`.
//! No credentials: 401 `missing_credentials`; wrong or malformed ones: 401
//! `invalid_credentials`; both with `WWW-Authenticate: Basic realm="…"`.
//!
//! Stored passwords are Argon2id or bcrypt hashes (plain text only from `${ENV}`, checked at
//! load). A hash check costs milliseconds of CPU on purpose, so it runs on Tokio's blocking
//! pool (never on the proxy's event loop), and a success is cached per plugin instance (so
//! never across config snapshots: a changed password takes effect on reload) for
//! `cache_ttl`, keyed by an HMAC-SHA256 of `user \0 password` under a random per-instance
//! key: the cache holds no password and its keys cannot be tested offline. A hit costs one
//! HMAC and one LRU lookup. Failures are never cached (a wrong guess must cost the hash).
//! Plain passwords are compared as SHA-256 digests with `subtle` (constant time, length
//! hidden); the hash crates compare their outputs in constant time themselves.
//!
//! The consumer goes into `ctx.consumer` and upstream as `X-Consumer-Username`, exactly as
//! key-auth sets it; with `hide_credentials` (default) the `Authorization` header is removed
//! before proxying.

use super::ttl_cache::TtlCache;
use super::{phase, Build, Hooks, Outcome, Reply};
use crate::config::diag::Compiler;
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
use crate::model::PasswordSpec;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const CACHE_SHARDS: usize = 8;
/// Longest decoded `user:password` accepted (decoded on the stack, no allocation).
const MAX_DECODED: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Shown in `WWW-Authenticate: Basic realm="…"`.
    realm: String,
    hide_credentials: bool,
    /// Kong's key: `false` lets CORS preflights through unauthenticated.
    run_on_preflight: bool,
    /// Successful checks kept (0: none; every request pays the hash).
    cache_entries: usize,
    /// How long a successful check is reused.
    cache_ttl: Dur,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "gatehouse".into(),
            hide_credentials: true,
            run_on_preflight: true,
            cache_entries: 10_000,
            cache_ttl: Dur(Duration::from_secs(300)),
        }
    }
}

/// One credential: its consumer and its password (hash strings shared with the blocking
/// verification task without copying).
struct Entry {
    consumer: usize,
    password: Stored,
}

#[derive(Clone)]
pub enum Stored {
    Argon2(Arc<str>),
    Bcrypt(Arc<str>),
    /// SHA-256 of the plain password.
    Plain([u8; 32]),
}

pub struct BasicAuth {
    realm_header: HeaderValue,
    hide_credentials: bool,
    run_on_preflight: bool,
    users: HashMap<Box<[u8]>, Entry>,
    cache: Option<TtlCache<Instant, usize>>,
    cache_ttl: Duration,
    /// Key of the cache's HMAC (random per instance; boxed: aws-lc's key is over 1 KB and
    /// the plugin enum is as large as its largest plugin).
    cache_key: Box<hmac::Key>,
}

impl std::fmt::Debug for BasicAuth {
    // Never print credentials or hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm_header)
            .field("hide_credentials", &self.hide_credentials)
            .field("users", &self.users.len())
            .field("cache", &self.cache.as_ref().map(TtlCache::len))
            .finish_non_exhaustive()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicFailure {
    Missing,
    Invalid,
}

/// Where a check stands after the cheap part: decided, or a hash to verify.
pub enum Step<'a> {
    Done(Result<usize, BasicFailure>),
    Verify(Pending<'a>),
}

/// A check waiting for its hash verification (the slow part).
pub struct Pending<'a> {
    consumer: usize,
    stored: Stored,
    password: &'a [u8],
    cache_key: [u8; 32],
    now: Instant,
}

/// `user:password` of an `Authorization: Basic` header, decoded into `buf`.
fn decode<'b>(
    req: &RequestHeader,
    buf: &'b mut [u8; MAX_DECODED],
) -> Result<&'b [u8], BasicFailure> {
    let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(BasicFailure::Missing);
    };
    if values.next().is_some() {
        return Err(BasicFailure::Invalid);
    }
    let v = v.as_bytes().trim_ascii();
    if v.eq_ignore_ascii_case(b"basic") {
        // `Basic ` with nothing after (the trailing space is trimmed by HTTP parsers).
        return Err(BasicFailure::Missing);
    }
    let Some((scheme, rest)) = v.split_at_checked(6) else {
        return Err(BasicFailure::Invalid);
    };
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return Err(BasicFailure::Invalid);
    }
    let rest = rest.trim_ascii();
    if rest.is_empty() {
        return Err(BasicFailure::Missing);
    }
    // base64 needs room for its estimate: 3 bytes per 4 characters.
    if rest.len() / 4 * 3 > MAX_DECODED {
        return Err(BasicFailure::Invalid);
    }
    let n = STANDARD
        .decode_slice(rest, buf)
        .map_err(|_| BasicFailure::Invalid)?;
    Ok(&buf[..n])
}

/// Checks `password` against `stored` (the slow part for hashes).
pub fn verify_password(stored: &Stored, password: &[u8]) -> bool {
    match stored {
        Stored::Argon2(h) => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(h).is_ok_and(|hash| {
                argon2::Argon2::default()
                    .verify_password(password, &hash)
                    .is_ok()
            })
        }
        Stored::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        Stored::Plain(d) => {
            let got: [u8; 32] = Sha256::digest(password).into();
            bool::from(got.ct_eq(d))
        }
    }
}

impl BasicAuth {
    fn failure(&self, f: BasicFailure) -> Reply {
        let r = match f {
            BasicFailure::Missing => {
                Reply::error_with(401, "missing_credentials", "Basic credentials are required")
            }
            BasicFailure::Invalid => {
                Reply::error_with(401, "invalid_credentials", "The credentials are not valid")
            }
        };
        r.header(http::header::WWW_AUTHENTICATE, self.realm_header.clone())
    }

    fn keyed(&self, user: &[u8], password: &[u8]) -> [u8; 32] {
        let mut m = hmac::Context::with_key(&self.cache_key);
        m.update(user);
        m.update(&[0]);
        m.update(password);
        let mut out = [0u8; 32];
        out.copy_from_slice(m.sign().as_ref());
        out
    }

    /// The cheap part of a check: decode (into `buf`), cache, credential lookup.
    pub fn begin<'a>(&self, req: &RequestHeader, buf: &'a mut [u8; MAX_DECODED]) -> Step<'a> {
        let decoded = match decode(req, buf) {
            Ok(d) => d,
            Err(f) => return Step::Done(Err(f)),
        };
        let now = Instant::now();
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Step::Done(Err(BasicFailure::Invalid));
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let key = self.keyed(user, password);
        if let Some(c) = self.cache.as_ref().and_then(|c| c.get(&key, now)) {
            return Step::Done(Ok(c));
        }
        let Some(e) = self.users.get(user) else {
            return Step::Done(Err(BasicFailure::Invalid));
        };
        Step::Verify(Pending {
            consumer: e.consumer,
            stored: e.password.clone(),
            password,
            cache_key: key,
            now,
        })
    }

    /// The end of a check once the hash is verified: the consumer, remembered in the cache.
    fn finish(&self, p: &Pending<'_>, verified: bool) -> Result<usize, BasicFailure> {
        if !verified {
            return Err(BasicFailure::Invalid);
        }
        if let Some(c) = &self.cache {
            c.put(p.cache_key, p.now + self.cache_ttl, p.consumer);
        }
        Ok(p.consumer)
    }

    /// The whole check on the calling thread (benches and unit tests; requests verify
    /// hashes on the blocking pool).
    pub fn check_blocking(&self, req: &RequestHeader) -> Result<usize, BasicFailure> {
        let mut buf = [0u8; MAX_DECODED];
        match self.begin(req, &mut buf) {
            Step::Done(r) => r,
            Step::Verify(p) => self.finish(&p, verify_password(&p.stored, p.password)),
        }
    }

    async fn check(&self, req: &RequestHeader) -> Result<usize, BasicFailure> {
        let mut buf = [0u8; MAX_DECODED];
        let p = match self.begin(req, &mut buf) {
            Step::Done(r) => return r,
            Step::Verify(p) => p,
        };
        let verified = if let Stored::Plain(_) = p.stored {
            verify_password(&p.stored, p.password)
        } else {
            let (stored, password) = (p.stored.clone(), p.password.to_vec());
            tokio::task::spawn_blocking(move || verify_password(&stored, &password))
                .await
                .unwrap_or(false)
        };
        self.finish(&p, verified)
    }
}

/// Checks a `realm` (of basic-auth, hmac-auth): it goes into `WWW-Authenticate` as a quoted
/// string, so non-empty printable ASCII without '"' or '\'; an error at `{path}.config.realm`.
pub(crate) fn realm_ok(c: &mut Compiler, path: &str, realm: &str) -> bool {
    let ok = !realm.is_empty()
        && realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if !ok {
        c.error(
            &format!("{path}.config.realm"),
            "must be non-empty printable ASCII without '\"' or '\\'",
        );
    }
    ok
}

impl Hooks for BasicAuth {
    type State = ();
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        if !realm_ok(c, path, &cfg.realm) {
            return None;
        }
        let realm_header = HeaderValue::from_str(&format!("Basic realm=\"{}\"", cfg.realm)).ok()?;
        let mut users = HashMap::new();
        for (ci, cons) in env.consumers.iter().enumerate() {
            for b in &cons.basic_credentials {
                // Duplicate usernames and bad passwords are reported by the consumers section.
                let password = match &b.password {
                    PasswordSpec::Argon2(h) => Stored::Argon2(h.expose().into()),
                    PasswordSpec::Bcrypt(h) => Stored::Bcrypt(h.expose().into()),
                    PasswordSpec::Plain(p) => Stored::Plain(Sha256::digest(p.expose()).into()),
                };
                users.insert(
                    b.username.as_bytes().into(),
                    Entry {
                        consumer: ci,
                        password,
                    },
                );
            }
        }
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        Some(BasicAuth {
            realm_header,
            hide_credentials: cfg.hide_credentials,
            run_on_preflight: cfg.run_on_preflight,
            users,
            cache: TtlCache::new(cfg.cache_entries, CACHE_SHARDS),
            cache_ttl: cfg.cache_ttl.0,
            cache_key: Box::new(hmac::Key::new(hmac::HMAC_SHA256, &k)),
        })
    }

    /// `explain`: the credentials are verified at request time (never offline), so what
    /// depends on the consumer (`acl`, `$(consumer)`) is described, not decided.
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        x.deferred_identity = Some("the Basic credentials' consumer");
        serde_json::json!({"result": "decided at request time (the password is verified then)"})
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if !self.run_on_preflight && super::cors::is_cors_preflight(session.req_header()) {
            return Outcome::Continue;
        }
        match self.check(session.req_header()).await {
            Ok(consumer) => {
                ctx.consumer = Some(consumer);
                Outcome::Continue
            }
            Err(f) => {
                tracing::debug!(request_id = %ctx.request_id, reason = ?f, "basic-auth refused");
                Outcome::Respond(self.failure(f))
            }
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        super::send_consumer(req, ctx)?;
        if self.hide_credentials {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Low-cost parameters keep the tests fast; the format is what production hashes use.
    fn argon2_hash(pw: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        a.hash_password(pw.as_bytes(), &salt).unwrap().to_string()
    }

    fn plugin(creds: &[(&str, Stored, usize)], cache_entries: usize) -> BasicAuth {
        BasicAuth {
            realm_header: HeaderValue::from_static("Basic realm=\"t\""),
            hide_credentials: true,
            run_on_preflight: true,
            users: creds
                .iter()
                .map(|(u, s, c)| {
                    (
                        u.as_bytes().into(),
                        Entry {
                            consumer: *c,
                            password: s.clone(),
                        },
                    )
                })
                .collect(),
            cache: TtlCache::new(cache_entries, 1),
            cache_ttl: Duration::from_secs(60),
            cache_key: Box::new(hmac::Key::new(hmac::HMAC_SHA256, b"k")),
        }
    }

    fn req(auth: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for a in auth {
            r.append_header("authorization", *a).unwrap();
        }
        r
    }

    fn basic(up: &str) -> String {
        format!("Basic {}", STANDARD.encode(up))
    }

    #[test]
    fn hashes_plain_and_failures() {
        let bc = bcrypt::hash_with_salt("b-pass", 4, *b"0123456789abcdef")
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        let p = plugin(
            &[
                ("ann", Stored::Argon2(argon2_hash("a-pass").into()), 0),
                ("bob", Stored::Bcrypt(bc.into()), 1),
                ("cy", Stored::Plain(Sha256::digest(b"c:pass").into()), 2),
            ],
            10,
        );
        assert_eq!(p.check_blocking(&req(&[&basic("ann:a-pass")])), Ok(0));
        assert_eq!(p.check_blocking(&req(&[&basic("bob:b-pass")])), Ok(1));
        // The password may hold ':' (split at the first one).
        assert_eq!(p.check_blocking(&req(&[&basic("cy:c:pass")])), Ok(2));
        assert_eq!(
            p.check_blocking(&req(&[&format!(
                "bAsIc   {}",
                STANDARD.encode("ann:a-pass")
            )])),
            Ok(0)
        );
        use BasicFailure::*;
        for (h, want) in [
            (vec![], Missing),
            (vec!["Basic ".to_string()], Missing),
            (vec![basic("ann:wrong")], Invalid),
            (vec![basic("bob:a-pass")], Invalid),
            (vec![basic("nobody:x")], Invalid),
            (vec![basic("ann")], Invalid),
            (vec!["Basic !!!".to_string()], Invalid),
            (vec!["Bearer abc".to_string()], Invalid),
            (vec![basic("ann:a-pass"), basic("ann:a-pass")], Invalid),
            (vec![format!("Basic {}", "QUFB".repeat(400))], Invalid),
        ] {
            let hs: Vec<&str> = h.iter().map(String::as_str).collect();
            assert_eq!(p.check_blocking(&req(&hs)), Err(want), "{h:?}");
        }
    }

    #[test]
    fn success_is_cached_failure_is_not() {
        let p = plugin(
            &[("ann", Stored::Argon2(argon2_hash("a-pass").into()), 3)],
            10,
        );
        assert_eq!(p.check_blocking(&req(&[&basic("ann:a-pass")])), Ok(3));
        assert_eq!(p.cache.as_ref().unwrap().len(), 1);
        assert_eq!(
            p.check_blocking(&req(&[&basic("ann:nope")])),
            Err(BasicFailure::Invalid)
        );
        assert_eq!(p.cache.as_ref().unwrap().len(), 1);
        // A hit answers without the hash: prove it by breaking the stored hash.
        let mut broken = p;
        broken.users.clear();
        assert_eq!(broken.check_blocking(&req(&[&basic("ann:a-pass")])), Ok(3));
        assert_eq!(
            broken.check_blocking(&req(&[&basic("ann:a-pass-x")])),
            Err(BasicFailure::Invalid)
        );
    }
}
