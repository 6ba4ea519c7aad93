//! `hmac-auth` (request_filter, request_body_filter, upstream_request_filter): a request
//! signed with a consumer's `hmacauth_credentials` secret, Kong's scheme:
//!
//! ```text
//! Authorization: hmac username="alice", algorithm="hmac-sha256",
//!                headers="x-date @request-target digest", signature="<base64>"
//! ```
//!
//! The signing string is one line per name in `headers`, joined by `\n`: `request-line` is
//! the request line as sent (`GET /path?q HTTP/1.1`), `@request-target` (or
//! `(request-target)`) is `<name>: <lower-case method> <path?query>`, any other name is
//! `<name>: <value>` (repeated headers joined by `, `). The signature is the base64 of the
//! HMAC of that string; it is computed piece by piece (no string is built) and compared with
//! the presented one in constant time.
//!
//! Replay: `X-Date` (or else `Date`) must be within `clock_skew` of the gateway's clock and
//! must be one of the signed headers, so a captured request stops verifying once its date
//! leaves the window. With `validate_request_body`, `Digest: SHA-256=<base64>` must be
//! signed too; `request_body_filter` holds the body back (up to `max_body_bytes`, hashing
//! it as it arrives) and passes it on only when its digest matched, so the upstream never
//! receives a byte of a body that was not signed. (A chunk left empty, not `None`, is how
//! the filter holds back: `None` would end the upstream body.)

use super::body_buf::Chunks;
use super::{phase, BodyOutcome, Build, Chunk, Hooks, Outcome, Reply};
use crate::config::units::ByteSize;
use crate::ctx::RequestCtx;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// The algorithms, in Kong's names, and their aws-lc HMAC.
const ALGORITHMS: [(&str, hmac::Algorithm); 4] = [
    ("hmac-sha1", hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
    ("hmac-sha256", hmac::HMAC_SHA256),
    ("hmac-sha384", hmac::HMAC_SHA384),
    ("hmac-sha512", hmac::HMAC_SHA512),
];
/// Longest signature accepted (SHA-512: 64 bytes), decoded on the stack.
const MAX_SIG: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seconds a request's date may differ from the gateway's clock.
    clock_skew: u64,
    algorithms: Vec<String>,
    /// Headers every signature must cover.
    enforce_headers: Vec<String>,
    validate_request_body: bool,
    /// Largest body held back for the digest check (`validate_request_body`).
    max_body_bytes: ByteSize,
    hide_credentials: bool,
    realm: String,
    run_on_preflight: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clock_skew: 300,
            algorithms: vec![
                "hmac-sha256".into(),
                "hmac-sha384".into(),
                "hmac-sha512".into(),
            ],
            enforce_headers: Vec::new(),
            validate_request_body: false,
            max_body_bytes: ByteSize(1024 * 1024),
            hide_credentials: true,
            realm: "gatehouse".into(),
            run_on_preflight: true,
        }
    }
}

struct Cred {
    consumer: usize,
    /// One key per algorithm of [`ALGORITHMS`] that is allowed (`None`: not allowed).
    keys: [Option<hmac::Key>; 4],
}

pub struct HmacAuth {
    creds: HashMap<Box<[u8]>, Cred>,
    clock_skew: Duration,
    /// Lower-case names.
    enforce_headers: Vec<String>,
    validate_request_body: bool,
    max_body: usize,
    hide_credentials: bool,
    realm_header: HeaderValue,
    run_on_preflight: bool,
}

impl std::fmt::Debug for HmacAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacAuth")
            .field("creds", &self.creds.len())
            .field("clock_skew", &self.clock_skew)
            .field("enforce_headers", &self.enforce_headers)
            .field("validate_request_body", &self.validate_request_body)
            .finish_non_exhaustive()
    }
}

/// Why a request is refused (each a message of the 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacFailure {
    Missing,
    Malformed,
    Algorithm,
    NoDate,
    Skew,
    DateUnsigned,
    EnforcedUnsigned,
    HeaderMissing,
    Mismatch,
    DigestMissing,
    DigestMismatch,
}

impl HmacFailure {
    fn message(self) -> &'static str {
        use HmacFailure::*;
        match self {
            Missing => "An HMAC signature is required (Authorization: hmac ...)",
            Malformed => "The HMAC authorization is malformed (username, algorithm, headers, signature)",
            Algorithm => "The HMAC algorithm is not allowed",
            NoDate => "HMAC signature cannot be verified, a valid date or x-date header is required",
            Skew => "HMAC signature cannot be verified, the date is outside the allowed clock skew",
            DateUnsigned => "HMAC signature cannot be verified, the date or x-date header must be signed",
            EnforcedUnsigned => "HMAC signature cannot be verified, a required header is not signed",
            HeaderMissing => "HMAC signature cannot be verified, a signed header is missing",
            Mismatch => "HMAC signature does not match",
            DigestMissing => "HMAC signature cannot be verified, a signed Digest: SHA-256=... header is required for the body",
            DigestMismatch => "The request body does not match its digest",
        }
    }
}

/// `request_body_filter`'s state with `validate_request_body`.
#[derive(Default)]
pub struct State {
    body: Option<Box<BodyCheck>>,
}

struct BodyCheck {
    hasher: Sha256,
    expected: [u8; 32],
    held: Chunks,
    done: bool,
}

/// The parameters of `hmac k="v", ...`.
#[derive(Debug, Default, PartialEq)]
pub struct Params<'a> {
    pub username: &'a [u8],
    pub algorithm: &'a [u8],
    pub headers: Option<&'a [u8]>,
    pub signature: &'a [u8],
}

/// Parses `hmac username="…", algorithm="…", headers="…", signature="…"`; `None` when the
/// value is not the hmac scheme at all, `Some(Err)` when it is malformed.
pub fn parse_params(v: &[u8]) -> Option<Result<Params<'_>, HmacFailure>> {
    let v = v.trim_ascii();
    let (scheme, rest) = v.split_at_checked(5)?;
    if !scheme.eq_ignore_ascii_case(b"hmac ") {
        return None;
    }
    let mut p = Params::default();
    let (mut user, mut alg, mut sig) = (false, false, false);
    let mut rest = rest.trim_ascii();
    while !rest.is_empty() {
        let Some(eq) = rest.iter().position(|&b| b == b'=') else {
            return Some(Err(HmacFailure::Malformed));
        };
        let key = rest[..eq].trim_ascii();
        let after = rest[eq + 1..].trim_ascii_start();
        let Some(after) = after.strip_prefix(b"\"") else {
            return Some(Err(HmacFailure::Malformed));
        };
        let Some(end) = after.iter().position(|&b| b == b'"') else {
            return Some(Err(HmacFailure::Malformed));
        };
        let value = &after[..end];
        let seen = match key.to_ascii_lowercase().as_slice() {
            b"username" => {
                p.username = value;
                &mut user
            }
            b"algorithm" => {
                p.algorithm = value;
                &mut alg
            }
            b"headers" => {
                if p.headers.replace(value).is_some() {
                    return Some(Err(HmacFailure::Malformed));
                }
                rest = next_param(&after[end + 1..])?;
                continue;
            }
            b"signature" => {
                p.signature = value;
                &mut sig
            }
            _ => {
                rest = next_param(&after[end + 1..])?;
                continue;
            }
        };
        if std::mem::replace(seen, true) {
            return Some(Err(HmacFailure::Malformed));
        }
        rest = next_param(&after[end + 1..])?;
    }
    if !(user && alg && sig) || p.username.is_empty() {
        return Some(Err(HmacFailure::Malformed));
    }
    Some(Ok(p))
}

/// After a quoted value: `, next` or the end.
fn next_param(s: &[u8]) -> Option<&[u8]> {
    let s = s.trim_ascii_start();
    if s.is_empty() {
        return Some(s);
    }
    match s.strip_prefix(b",") {
        Some(r) => Some(r.trim_ascii_start()),
        // Garbage after a value: report as malformed through an impossible key.
        None => Some(b"\x00"),
    }
}

fn version(req: &RequestHeader) -> &'static str {
    match req.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// Feeds the signing string of `names` over `req` into `m`.
fn sign_into(m: &mut hmac::Context, req: &RequestHeader, names: &[u8]) -> Result<(), HmacFailure> {
    let target = req
        .uri
        .path_and_query()
        .map_or(req.uri.path(), |pq| pq.as_str());
    for (i, name) in names
        .split(|&b| b == b' ')
        .filter(|n| !n.is_empty())
        .enumerate()
    {
        if i > 0 {
            m.update(b"\n");
        }
        if name.eq_ignore_ascii_case(b"request-line") {
            m.update(req.method.as_str().as_bytes());
            m.update(b" ");
            m.update(target.as_bytes());
            m.update(b" ");
            m.update(version(req).as_bytes());
        } else if name.eq_ignore_ascii_case(b"@request-target")
            || name.eq_ignore_ascii_case(b"(request-target)")
        {
            m.update(name);
            m.update(b": ");
            for b in req.method.as_str().bytes() {
                m.update(&[b.to_ascii_lowercase()]);
            }
            m.update(b" ");
            m.update(target.as_bytes());
        } else {
            let Ok(h) = http::HeaderName::from_bytes(name) else {
                return Err(HmacFailure::HeaderMissing);
            };
            let mut values = req.headers.get_all(&h).iter();
            let Some(first) = values.next() else {
                return Err(HmacFailure::HeaderMissing);
            };
            m.update(name);
            m.update(b": ");
            m.update(first.as_bytes());
            for v in values {
                m.update(b", ");
                m.update(v.as_bytes());
            }
        }
    }
    Ok(())
}

fn signed(names: &[u8], want: &str) -> bool {
    names
        .split(|&b| b == b' ')
        .any(|n| n.eq_ignore_ascii_case(want.as_bytes()))
}

impl HmacAuth {
    fn reply(&self, f: HmacFailure) -> Reply {
        let code = if f == HmacFailure::Missing {
            "missing_credentials"
        } else {
            "invalid_signature"
        };
        Reply::error_with(401, code, f.message())
            .header(http::header::WWW_AUTHENTICATE, self.realm_header.clone())
    }

    /// Verifies the request head at `now`: the consumer, and the body digest to check when
    /// `validate_request_body` is on and a body follows.
    pub fn check(
        &self,
        req: &RequestHeader,
        now: SystemTime,
        body_follows: bool,
    ) -> Result<(usize, Option<[u8; 32]>), HmacFailure> {
        let mut found = None;
        for name in [
            http::header::AUTHORIZATION,
            http::header::PROXY_AUTHORIZATION,
        ] {
            for v in req.headers.get_all(&name) {
                if let Some(p) = parse_params(v.as_bytes()) {
                    if found.is_some() {
                        return Err(HmacFailure::Malformed);
                    }
                    found = Some(p);
                }
            }
        }
        let p = found.ok_or(HmacFailure::Missing)??;
        let alg = ALGORITHMS
            .iter()
            .position(|(n, _)| n.as_bytes().eq_ignore_ascii_case(p.algorithm))
            .ok_or(HmacFailure::Algorithm)?;
        let names = p.headers.unwrap_or(b"date");
        // The date: present, valid, within the skew and signed.
        let (date_name, date) = match req.headers.get("x-date") {
            Some(d) => ("x-date", d),
            None => (
                "date",
                req.headers
                    .get(http::header::DATE)
                    .ok_or(HmacFailure::NoDate)?,
            ),
        };
        let date = std::str::from_utf8(date.as_bytes())
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .ok_or(HmacFailure::NoDate)?;
        let off = match now.duration_since(date) {
            Ok(d) => d,
            Err(ahead) => ahead.duration(),
        };
        if off > self.clock_skew {
            return Err(HmacFailure::Skew);
        }
        if !signed(names, date_name) {
            return Err(HmacFailure::DateUnsigned);
        }
        if self.enforce_headers.iter().any(|h| !signed(names, h)) {
            return Err(HmacFailure::EnforcedUnsigned);
        }
        let mut sig = [0u8; MAX_SIG];
        if p.signature.len() > MAX_SIG.div_ceil(3) * 4 {
            return Err(HmacFailure::Mismatch);
        }
        let sig = match STANDARD.decode_slice(p.signature, &mut sig) {
            Ok(n) => &sig[..n],
            Err(_) => return Err(HmacFailure::Malformed),
        };
        let cred = self.creds.get(p.username).ok_or(HmacFailure::Mismatch)?;
        let key = cred.keys[alg].as_ref().ok_or(HmacFailure::Algorithm)?;
        let mut m = hmac::Context::with_key(key);
        sign_into(&mut m, req, names)?;
        let tag = m.sign();
        if !bool::from(tag.as_ref().ct_eq(sig)) {
            return Err(HmacFailure::Mismatch);
        }
        let digest = if self.validate_request_body {
            self.expected_digest(req, names, body_follows)?
        } else {
            None
        };
        Ok((cred.consumer, digest))
    }

    /// `Digest: SHA-256=<base64>` of a request with a body (signed), checked for a request
    /// without one when present.
    fn expected_digest(
        &self,
        req: &RequestHeader,
        names: &[u8],
        body_follows: bool,
    ) -> Result<Option<[u8; 32]>, HmacFailure> {
        let Some(v) = req.headers.get("digest") else {
            return if body_follows {
                Err(HmacFailure::DigestMissing)
            } else {
                Ok(None)
            };
        };
        if !signed(names, "digest") {
            return Err(HmacFailure::DigestMissing);
        }
        let mut want = None;
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if let Some((alg, b64)) = part.split_at_checked(8) {
                if alg.eq_ignore_ascii_case(b"sha-256=") {
                    let mut d = [0u8; 33];
                    match STANDARD.decode_slice(b64, &mut d) {
                        Ok(32) => want = Some(<[u8; 32]>::try_from(&d[..32]).ok()),
                        _ => return Err(HmacFailure::DigestMismatch),
                    }
                }
            }
        }
        let want = want.flatten().ok_or(HmacFailure::DigestMissing)?;
        if !body_follows {
            let empty: [u8; 32] = Sha256::digest(b"").into();
            return if bool::from(empty.ct_eq(&want)) {
                Ok(None)
            } else {
                Err(HmacFailure::DigestMismatch)
            };
        }
        Ok(Some(want))
    }
}

impl Hooks for HmacAuth {
    type State = State;
    const PHASES: u32 = phase::REQUEST | phase::REQUEST_BODY | phase::UPSTREAM_REQUEST;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let mut allowed = [false; 4];
        let mut ok = true;
        for (i, a) in cfg.algorithms.iter().enumerate() {
            match ALGORITHMS
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(a))
            {
                Some(j) => allowed[j] = true,
                None => {
                    ok = false;
                    c.error(
                        &format!("{path}.config.algorithms[{i}]"),
                        format!(
                            "unknown algorithm {a:?} (known: hmac-sha1, hmac-sha256, hmac-sha384, hmac-sha512)"
                        ),
                    );
                }
            }
        }
        if cfg.algorithms.is_empty() {
            ok = false;
            c.error(&format!("{path}.config.algorithms"), "must not be empty");
        }
        if !super::basic_auth::realm_ok(c, path, &cfg.realm) {
            ok = false;
        }
        let mut enforce_headers = Vec::new();
        for (i, h) in cfg.enforce_headers.iter().enumerate() {
            let l = h.to_ascii_lowercase();
            let special = matches!(
                l.as_str(),
                "request-line" | "@request-target" | "(request-target)"
            );
            if !special && http::HeaderName::from_bytes(l.as_bytes()).is_err() {
                ok = false;
                c.error(
                    &format!("{path}.config.enforce_headers[{i}]"),
                    format!("invalid header name {h:?}"),
                );
            }
            enforce_headers.push(l);
        }
        if !ok {
            return None;
        }
        let mut creds = HashMap::new();
        for (ci, cons) in env.consumers.iter().enumerate() {
            for h in &cons.hmac_credentials {
                // Duplicates and empty secrets are reported by the consumers section.
                let secret = h.secret.expose().as_bytes();
                let keys = std::array::from_fn(|j| {
                    allowed[j].then(|| hmac::Key::new(ALGORITHMS[j].1, secret))
                });
                creds.insert(h.username.as_bytes().into(), Cred { consumer: ci, keys });
            }
        }
        Some(HmacAuth {
            creds,
            clock_skew: Duration::from_secs(cfg.clock_skew),
            enforce_headers,
            validate_request_body: cfg.validate_request_body,
            max_body: usize::try_from(cfg.max_body_bytes.0).unwrap_or(usize::MAX),
            hide_credentials: cfg.hide_credentials,
            realm_header: HeaderValue::from_str(&format!("hmac realm=\"{}\"", cfg.realm)).ok()?,
            run_on_preflight: cfg.run_on_preflight,
        })
    }

    /// `explain`: the credentials are verified at request time (never offline), so what
    /// depends on the consumer (`acl`, `$(consumer)`) is described, not decided.
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        x.deferred_identity = Some("the HMAC signature's consumer");
        serde_json::json!({"result": "decided at request time (the signature is verified then)"})
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if !self.run_on_preflight && super::cors::is_cors_preflight(session.req_header()) {
            return Outcome::Continue;
        }
        let body_follows = !session.is_body_empty();
        match self.check(session.req_header(), SystemTime::now(), body_follows) {
            Ok((consumer, digest)) => {
                ctx.consumer = Some(consumer);
                ctx.plugins.hmac_auth.body = digest.map(|expected| {
                    Box::new(BodyCheck {
                        hasher: Sha256::new(),
                        expected,
                        held: Chunks::Empty,
                        done: false,
                    })
                });
                Outcome::Continue
            }
            Err(f) => {
                tracing::debug!(request_id = %ctx.request_id, reason = ?f, "hmac-auth refused");
                Outcome::Respond(self.reply(f))
            }
        }
    }

    fn request_body(&self, body: &mut Chunk<'_>, ctx: &mut RequestCtx) -> Result<BodyOutcome> {
        let Some(check) = ctx.plugins.hmac_auth.body.as_mut() else {
            return Ok(BodyOutcome::Continue);
        };
        // A retry replays bytes already checked.
        if check.done {
            return Ok(BodyOutcome::Continue);
        }
        if let Some(b) = body.take() {
            check.hasher.update(&b);
            if check.held.len() + b.len() > self.max_body {
                check.done = true;
                return Err(crate::errors::status_error(
                    413,
                    "hmac-auth: the body is over max_body_bytes for its digest check",
                ));
            }
            check.held.push(b, 16 * 1024);
        }
        if !body.end_of_stream {
            // Empty, not None: None would end the upstream body here.
            *body.data = Some(Bytes::new());
            return Ok(BodyOutcome::Continue);
        }
        check.done = true;
        let got: [u8; 32] = std::mem::take(&mut check.hasher).finalize().into();
        if !bool::from(got.ct_eq(&check.expected)) {
            tracing::debug!(request_id = %ctx.request_id, "hmac-auth body digest mismatch");
            return Err(crate::errors::status_error(
                401,
                "hmac-auth: the request body does not match its digest",
            ));
        }
        *body.data = Some(std::mem::take(&mut check.held).into_bytes());
        Ok(BodyOutcome::Continue)
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        super::send_consumer(req, ctx)?;
        if self.hide_credentials {
            req.remove_header(&http::header::AUTHORIZATION);
            req.remove_header(&http::header::PROXY_AUTHORIZATION);
        }
        Ok(())
    }
}

/// The signature a client sends for `req` with `secret` (tests and benches; the same
/// signing string the plugin verifies).
pub fn sign(req: &RequestHeader, algorithm: &str, headers: &str, secret: &[u8]) -> Option<String> {
    let alg = ALGORITHMS.iter().find(|(n, _)| *n == algorithm)?.1;
    let mut m = hmac::Context::with_key(&hmac::Key::new(alg, secret));
    sign_into(&mut m, req, headers.as_bytes()).ok()?;
    Some(STANDARD.encode(m.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(algs: [bool; 4], validate: bool) -> HmacAuth {
        let keys = std::array::from_fn(|j| {
            algs[j].then(|| hmac::Key::new(ALGORITHMS[j].1, b"alice-secret"))
        });
        HmacAuth {
            creds: [(b"alice".as_slice().into(), Cred { consumer: 4, keys })]
                .into_iter()
                .collect(),
            clock_skew: Duration::from_secs(300),
            enforce_headers: vec!["@request-target".into()],
            validate_request_body: validate,
            max_body: 1024,
            hide_credentials: true,
            realm_header: HeaderValue::from_static("hmac realm=\"t\""),
            run_on_preflight: true,
        }
    }

    fn req(date: SystemTime, extra: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/a/b?x=1", None).unwrap();
        r.insert_header("date", httpdate::fmt_http_date(date))
            .unwrap();
        for (n, v) in extra {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn authorize(r: &mut RequestHeader, alg: &str, headers: &str, secret: &[u8]) {
        let sig = sign(r, alg, headers, secret).unwrap();
        r.insert_header(
            "authorization",
            format!("hmac username=\"alice\", algorithm=\"{alg}\", headers=\"{headers}\", signature=\"{sig}\""),
        )
        .unwrap();
    }

    #[test]
    fn parses_params() {
        let p = parse_params(
            b"hmac username=\"a\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"c2ln\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.username, b"a");
        assert_eq!(p.headers, Some(b"date".as_slice()));
        assert!(parse_params(b"Basic abc").is_none());
        assert_eq!(
            parse_params(b"hmac username=\"a\", signature=\"x\"").unwrap(),
            Err(HmacFailure::Malformed)
        );
        assert_eq!(
            parse_params(b"hmac username=\"a\" algorithm=\"b\", signature=\"x\"").unwrap(),
            Err(HmacFailure::Malformed)
        );
    }

    #[test]
    fn verifies_and_refuses() {
        let now = SystemTime::now();
        let p = plugin([false, true, true, true], false);
        let mut r = req(now, &[]);
        authorize(
            &mut r,
            "hmac-sha256",
            "date @request-target",
            b"alice-secret",
        );
        assert_eq!(p.check(&r, now, false), Ok((4, None)));
        let mut r2 = req(now, &[]);
        authorize(
            &mut r2,
            "hmac-sha512",
            "@request-target date",
            b"alice-secret",
        );
        assert_eq!(p.check(&r2, now, false), Ok((4, None)));
        // Wrong secret, wrong target, sha1 not allowed, skew, unsigned date, enforced.
        let mut bad = req(now, &[]);
        authorize(&mut bad, "hmac-sha256", "date @request-target", b"other");
        assert_eq!(p.check(&bad, now, false), Err(HmacFailure::Mismatch));
        let mut moved = r.clone();
        moved.set_uri("/a/c?x=1".parse().unwrap());
        assert_eq!(p.check(&moved, now, false), Err(HmacFailure::Mismatch));
        let mut sha1 = req(now, &[]);
        authorize(
            &mut sha1,
            "hmac-sha1",
            "date @request-target",
            b"alice-secret",
        );
        assert_eq!(p.check(&sha1, now, false), Err(HmacFailure::Algorithm));
        assert_eq!(
            p.check(&r, now + Duration::from_secs(301), false),
            Err(HmacFailure::Skew)
        );
        assert_eq!(
            p.check(&r, now - Duration::from_secs(301), false),
            Err(HmacFailure::Skew)
        );
        let mut nodate = req(now, &[]);
        authorize(
            &mut nodate,
            "hmac-sha256",
            "@request-target",
            b"alice-secret",
        );
        assert_eq!(p.check(&nodate, now, false), Err(HmacFailure::DateUnsigned));
        let mut noenf = req(now, &[]);
        authorize(&mut noenf, "hmac-sha256", "date", b"alice-secret");
        assert_eq!(
            p.check(&noenf, now, false),
            Err(HmacFailure::EnforcedUnsigned)
        );
        assert_eq!(
            p.check(&req(now, &[]), now, false),
            Err(HmacFailure::Missing)
        );
    }

    #[test]
    fn body_digest() {
        let now = SystemTime::now();
        let p = plugin([false, true, false, false], true);
        let body = b"{\"a\":1}";
        let d = format!("SHA-256={}", STANDARD.encode(Sha256::digest(body)));
        let mut r = req(now, &[("digest", &d)]);
        authorize(
            &mut r,
            "hmac-sha256",
            "date @request-target digest",
            b"alice-secret",
        );
        let want: [u8; 32] = Sha256::digest(body).into();
        assert_eq!(p.check(&r, now, true), Ok((4, Some(want))));
        let mut unsigned = req(now, &[("digest", &d)]);
        authorize(
            &mut unsigned,
            "hmac-sha256",
            "date @request-target",
            b"alice-secret",
        );
        assert_eq!(
            p.check(&unsigned, now, true),
            Err(HmacFailure::DigestMissing)
        );
        let mut none = req(now, &[]);
        authorize(
            &mut none,
            "hmac-sha256",
            "date @request-target",
            b"alice-secret",
        );
        assert_eq!(p.check(&none, now, true), Err(HmacFailure::DigestMissing));
        assert_eq!(p.check(&none, now, false), Ok((4, None)));
    }
}
