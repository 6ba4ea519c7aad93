//! `key-auth` (request_filter, upstream_request_filter): an API key from a header
//! (`key_names`, first one present wins) or the query (`query_param`) identifies a consumer.
//! No key: 401 `missing_api_key`; unknown key: 401 `invalid_api_key`.
//!
//! Lookup never scans: the SHA-256 of the presented key indexes a map built at load, then the
//! stored key is compared with the presented one in constant time (`subtle`), so neither the
//! map nor the comparison tells an attacker how much of a guess was right. The consumer goes
//! into `ctx.consumer` and upstream as `X-Consumer-Username` (the client's own copies are
//! removed for every route in `forward::rewrite_request`); with `hide_credentials` the key
//! header and query parameter are stripped before proxying.

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::ctx::RequestCtx;
use crate::util::form;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    key_names: Vec<String>,
    /// `null` or `""` switches the query parameter off.
    query_param: Option<String>,
    hide_credentials: bool,
    /// Kong's key: `false` lets CORS preflights through unauthenticated.
    run_on_preflight: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key_names: vec!["X-API-Key".into()],
            query_param: Some("api_key".into()),
            hide_credentials: true,
            run_on_preflight: true,
        }
    }
}

struct StoredKey {
    consumer: usize,
    key: Box<[u8]>,
}

pub struct KeyAuth {
    key_names: Vec<HeaderName>,
    query_param: Option<String>,
    hide_credentials: bool,
    /// SHA-256 of the key -> its consumer and the key itself (for the constant-time check).
    keys: HashMap<[u8; 32], StoredKey>,
    run_on_preflight: bool,
}

impl std::fmt::Debug for KeyAuth {
    // Never print keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAuth")
            .field("key_names", &self.key_names)
            .field("query_param", &self.query_param)
            .field("hide_credentials", &self.hide_credentials)
            .field("keys", &self.keys.len())
            .field("run_on_preflight", &self.run_on_preflight)
            .finish()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFailure {
    Missing,
    Invalid,
}

impl KeyFailure {
    pub fn reply(self) -> Reply {
        let r = match self {
            KeyFailure::Missing => {
                Reply::error_with(401, "missing_api_key", "An API key is required")
            }
            KeyFailure::Invalid => {
                Reply::error_with(401, "invalid_api_key", "The API key is not valid")
            }
        };
        r.header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Key realm=\"gatehouse\""),
        )
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// What the request carries.
enum Presented<'a> {
    None,
    Key(Cow<'a, [u8]>),
    /// The same credential more than once: ambiguous, refused.
    Ambiguous,
}

impl KeyAuth {
    /// The headers that may carry a key, for `explain` (which masks them).
    pub fn key_names(&self) -> &[HeaderName] {
        &self.key_names
    }

    /// The query parameter that may carry a key, for `explain`.
    pub fn query_param(&self) -> Option<&str> {
        self.query_param.as_deref()
    }

    /// The consumer owning `key`, if any. Constant time in the key's content.
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        let stored = self.keys.get(&digest(key))?;
        bool::from(stored.key.as_ref().ct_eq(key)).then_some(stored.consumer)
    }

    fn presented<'a>(&self, req: &'a RequestHeader) -> Presented<'a> {
        for name in &self.key_names {
            let mut values = req.headers.get_all(name).iter();
            if let Some(v) = values.next() {
                if values.next().is_some() {
                    return Presented::Ambiguous;
                }
                if v.is_empty() {
                    return Presented::None;
                }
                return Presented::Key(Cow::Borrowed(v.as_bytes()));
            }
        }
        let (Some(param), Some(query)) = (&self.query_param, req.uri.query()) else {
            return Presented::None;
        };
        let mut found = None;
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if form::decode(k).as_ref() == param.as_bytes() {
                if found.is_some() {
                    return Presented::Ambiguous;
                }
                found = Some(form::decode(v));
            }
        }
        match found {
            Some(v) if !v.is_empty() => Presented::Key(v),
            _ => Presented::None,
        }
    }

    /// Authenticates the request head: the consumer index or why not.
    pub fn check(&self, req: &RequestHeader) -> Result<usize, KeyFailure> {
        match self.presented(req) {
            Presented::None => Err(KeyFailure::Missing),
            Presented::Ambiguous => Err(KeyFailure::Invalid),
            Presented::Key(k) => self.lookup(&k).ok_or(KeyFailure::Invalid),
        }
    }
}

impl Hooks for KeyAuth {
    type State = ();
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let mut key_names = Vec::new();
        for (i, n) in cfg.key_names.iter().enumerate() {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) => key_names.push(h),
                Err(_) => c.error(
                    &format!("{path}.config.key_names[{i}]"),
                    format!("invalid header name {n:?}"),
                ),
            }
        }
        let query_param = cfg.query_param.filter(|q| !q.is_empty());
        if let Some(q) = &query_param {
            // Whatever its name, the key's query parameter never reaches the access log.
            crate::observe::access_log::register_secret_param(q);
        }
        if cfg.key_names.is_empty() && query_param.is_none() {
            c.error(
                &format!("{path}.config"),
                "needs key_names or a query_param to read the key from",
            );
        }
        let mut keys = HashMap::new();
        for (ci, cons) in env.consumers.iter().enumerate() {
            for k in &cons.api_keys {
                let bytes = k.expose().as_bytes();
                // Duplicates and empty keys are reported by the consumers section.
                keys.insert(
                    digest(bytes),
                    StoredKey {
                        consumer: ci,
                        key: bytes.into(),
                    },
                );
            }
        }
        Some(KeyAuth {
            key_names,
            query_param,
            hide_credentials: cfg.hide_credentials,
            keys,
            run_on_preflight: cfg.run_on_preflight,
        })
    }
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if !self.run_on_preflight && super::cors::is_cors_preflight(session.req_header()) {
            return Outcome::Continue;
        }
        let consumer = match self.check(session.req_header()) {
            Ok(consumer) => consumer,
            Err(f) => {
                tracing::debug!(request_id = %ctx.request_id, reason = ?f, "key-auth refused");
                return Outcome::Respond(f.reply());
            }
        };
        ctx.consumer = Some(consumer);
        Outcome::Continue
    }
    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        super::send_consumer(req, ctx)?;
        if self.hide_credentials {
            for name in &self.key_names {
                req.remove_header(name);
            }
            if let Some(param) = &self.query_param {
                strip_query_param(req, param)?;
            }
        }
        Ok(())
    }

    /// `explain`: the key given in the request's headers or query, checked.
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        match self.check(x.req) {
            Ok(i) => {
                x.consumer = Some(i);
                serde_json::json!({"result": "authenticated", "consumer": x.consumer_name()})
            }
            Err(e) => {
                x.refused = Some(401);
                serde_json::json!({"result": "refused", "status": 401, "error": format!("{e:?}")})
            }
        }
    }

    fn credential_headers(&self) -> &[HeaderName] {
        self.key_names()
    }

    fn credential_query_param(&self) -> Option<&str> {
        self.query_param()
    }
}

/// Removes every `param=...` pair from the request target's query.
fn strip_query_param(req: &mut RequestHeader, param: &str) -> Result<()> {
    let Some(query) = req.uri.query() else {
        return Ok(());
    };
    let keep: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            form::decode(k).as_ref() != param.as_bytes()
        })
        .collect();
    if keep.len() == query.split('&').count() {
        return Ok(());
    }
    let path = req.uri.path();
    let pq = if keep.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", keep.join("&"))
    };
    let uri = http::Uri::builder()
        .path_and_query(pq)
        .build()
        .map_err(|_| {
            crate::errors::status_error(400, "bad request target after hide_credentials")
        })?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(keys: &[(&str, usize)]) -> KeyAuth {
        KeyAuth {
            key_names: vec![HeaderName::from_static("x-api-key")],
            query_param: Some("api_key".into()),
            hide_credentials: true,
            run_on_preflight: true,
            keys: keys
                .iter()
                .map(|(k, c)| {
                    (
                        digest(k.as_bytes()),
                        StoredKey {
                            consumer: *c,
                            key: k.as_bytes().into(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn lookup_header_query_and_failures() {
        let p = plugin(&[("alpha-key", 0), ("beta+key/=", 1)]);
        assert_eq!(p.lookup(b"alpha-key"), Some(0));
        assert_eq!(p.lookup(b"alpha-kez"), None);
        assert_eq!(p.lookup(b""), None);
        assert_eq!(p.check(&req("/", &[("x-api-key", "alpha-key")])), Ok(0));
        assert_eq!(p.check(&req("/?api_key=alpha-key", &[])), Ok(0));
        assert_eq!(
            p.check(&req("/?x=1&api%5Fkey=beta%2Bkey%2F%3D", &[])),
            Ok(1)
        );
        assert_eq!(p.check(&req("/", &[])), Err(KeyFailure::Missing));
        assert_eq!(p.check(&req("/?api_key=", &[])), Err(KeyFailure::Missing));
        assert_eq!(
            p.check(&req("/", &[("x-api-key", "nope")])),
            Err(KeyFailure::Invalid)
        );
        // The header wins over the query.
        assert_eq!(
            p.check(&req("/?api_key=alpha-key", &[("x-api-key", "nope")])),
            Err(KeyFailure::Invalid)
        );
        // Two copies are ambiguous.
        assert_eq!(
            p.check(&req(
                "/",
                &[("x-api-key", "alpha-key"), ("x-api-key", "alpha-key")]
            )),
            Err(KeyFailure::Invalid)
        );
        assert_eq!(
            p.check(&req("/?api_key=alpha-key&api_key=alpha-key", &[])),
            Err(KeyFailure::Invalid)
        );
    }

    #[test]
    fn strips_only_the_key_param() {
        let mut r = req("/a/b?x=1&api_key=secret&y=2", &[]);
        strip_query_param(&mut r, "api_key").unwrap();
        assert_eq!(r.uri.to_string(), "/a/b?x=1&y=2");
        let mut r = req("/a?api%5fkey=secret", &[]);
        strip_query_param(&mut r, "api_key").unwrap();
        assert_eq!(r.uri.to_string(), "/a");
        let mut r = req("/a?apikey=1", &[]);
        strip_query_param(&mut r, "api_key").unwrap();
        assert_eq!(r.uri.to_string(), "/a?apikey=1");
    }
}
