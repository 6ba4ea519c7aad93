//! `cors` (request_filter for preflights; response_filter and every gateway-made answer for
//! the headers of actual requests).
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//!   by the gateway with 204 and never reaches the upstream or the auth plugins (cors runs
//!   second). From an allowed origin it carries `Access-Control-Allow-Origin`,
//!   `-Allow-Methods`, `-Allow-Headers` (the configured list, or the request's
//!   `Access-Control-Request-Headers` echoed when `headers` is empty, as Kong does),
//!   `-Max-Age` and, with `credentials`, `-Allow-Credentials: true`. From a disallowed
//!   origin it is still answered 204, with no CORS header at all: the browser then refuses
//!   the actual request, and the upstream never sees preflights whatever their origin.
//! - Every other answer (proxied, or made by the gateway: 401, 404, 429, 502...) to an
//!   allowed origin gets `Access-Control-Allow-Origin` (the origin itself, or `*` when
//!   `origins` is `["*"]`), `-Expose-Headers` when configured and `-Allow-Credentials` with
//!   `credentials`. A disallowed origin gets none of them, and the upstream's own
//!   `Access-Control-Allow-Origin` / `-Allow-Credentials` / `-Expose-Headers` are dropped
//!   so the gateway's policy is the only one the browser sees.
//! - With a list of origins every answer carries `Vary: Origin` (caches must not hand one
//!   origin's answer to another).
//! - `*` with `credentials: true` is refused at load: browsers reject it, and echoing any
//!   origin with credentials would hand every site the user's session.
//!
//! A route restricted with `methods` must list `OPTIONS` for its preflights to reach this
//! plugin (otherwise the preflight gets the router's 405), as in Kong (which answers 404).

use super::{phase, Answer, Build, Hooks, Outcome, Reply};
use crate::config::diag::Compiler;
use crate::ctx::RequestCtx;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    origins: Option<Vec<String>>,
    methods: Vec<String>,
    headers: Vec<String>,
    exposed_headers: Vec<String>,
    credentials: bool,
    max_age: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            origins: None,
            methods: ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"]
                .map(String::from)
                .to_vec(),
            headers: Vec::new(),
            exposed_headers: Vec::new(),
            credentials: false,
            max_age: 3600,
        }
    }
}

#[derive(Debug)]
pub struct Cors {
    /// `origins` is `["*"]`.
    any: bool,
    /// Allowed origins, lowercase (`scheme://host[:port]`).
    origins: Vec<Box<[u8]>>,
    methods: HeaderValue,
    /// `None`: echo the preflight's `Access-Control-Request-Headers`.
    headers: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// `scheme://host[:port]` with nothing after the authority.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    scheme_ok
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'*' | b','))
}

fn joined(
    c: &mut Compiler,
    path: &str,
    items: &[String],
    check: fn(&str) -> bool,
) -> Option<HeaderValue> {
    let mut ok = true;
    for (i, it) in items.iter().enumerate() {
        if !check(it) {
            c.error(&format!("{path}[{i}]"), format!("invalid entry {it:?}"));
            ok = false;
        }
    }
    if !ok || items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl Cors {
    #[inline]
    fn allowed(&self, origin: &HeaderValue) -> bool {
        self.any
            || self
                .origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.as_bytes()))
    }
}

impl Hooks for Cors {
    type State = ();
    const PHASES: u32 = phase::REQUEST | phase::RESPONSE | phase::RESPONSE_LAST;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let op = format!("{path}.config.origins");
        let Some(list) = cfg.origins else {
            c.error(
                &op,
                "origins is required: a list of origins like \"https://app.example.com\", or [\"*\"]",
            );
            return None;
        };
        if list.is_empty() {
            c.error(&op, "needs at least one origin");
            return None;
        }
        let mut any = false;
        let mut origins = Vec::new();
        let mut ok = true;
        for (i, o) in list.iter().enumerate() {
            let o = o.trim();
            if o == "*" {
                any = true;
            } else if o.eq_ignore_ascii_case("null") {
                c.error(
                    &format!("{op}[{i}]"),
                    "\"null\" is not accepted: sandboxed documents and file:// pages all send it",
                );
                ok = false;
            } else if valid_origin(o) {
                origins.push(o.to_ascii_lowercase().into_bytes().into_boxed_slice());
            } else {
                c.error(
                    &format!("{op}[{i}]"),
                    format!("invalid origin {o:?}: expected scheme://host[:port] with no path (e.g. \"https://app.example.com\"), or \"*\""),
                );
                ok = false;
            }
        }
        if any && cfg.credentials {
            c.error(
                &format!("{path}.config.credentials"),
                "credentials: true cannot be combined with origins \"*\" (browsers refuse it); list the origins",
            );
            ok = false;
        }
        let methods = match joined(c, &format!("{path}.config.methods"), &cfg.methods, |m| {
            Method::from_bytes(m.as_bytes()).is_ok() && m.bytes().all(|b| !b.is_ascii_lowercase())
        }) {
            Some(m) => m,
            None if cfg.methods.is_empty() => {
                c.error(
                    &format!("{path}.config.methods"),
                    "needs at least one method",
                );
                return None;
            }
            None => return None,
        };
        let is_header = |h: &str| HeaderName::from_bytes(h.as_bytes()).is_ok();
        let headers = joined(
            c,
            &format!("{path}.config.headers"),
            &cfg.headers,
            is_header,
        );
        let exposed = joined(
            c,
            &format!("{path}.config.exposed_headers"),
            &cfg.exposed_headers,
            is_header,
        );
        if !ok
            || (headers.is_none() && !cfg.headers.is_empty())
            || (exposed.is_none() && !cfg.exposed_headers.is_empty())
        {
            return None;
        }
        Some(Cors {
            any,
            origins,
            methods,
            headers,
            exposed,
            credentials: cfg.credentials,
            max_age: HeaderValue::from(cfg.max_age),
        })
    }
    /// `request_filter`: answers preflights.
    async fn request(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Outcome {
        let req = session.req_header();
        if !is_cors_preflight(req) {
            return Outcome::Continue;
        }
        let Some(origin) = req.headers.get(ORIGIN) else {
            return Outcome::Continue;
        };
        let mut reply = Reply {
            status: 204,
            code: None,
            message: "".into(),
            headers: Vec::new(),
        };
        if self.allowed(origin) {
            // Allow-Origin and Allow-Credentials come from `response` (as for any answer).
            reply
                .headers
                .push((ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone()));
            match &self.headers {
                Some(h) => reply
                    .headers
                    .push((ACCESS_CONTROL_ALLOW_HEADERS, h.clone())),
                None => {
                    if let Some(h) = req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                        reply
                            .headers
                            .push((ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
                    }
                    reply.headers.push((
                        VARY,
                        HeaderValue::from_static("Access-Control-Request-Headers"),
                    ));
                }
            }
            reply
                .headers
                .push((ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        }
        Outcome::Respond(reply)
    }
    /// `response_filter` and gateway-made answers: the headers of an actual response.
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if !resp.gateway_made {
            resp.remove_header(&ACCESS_CONTROL_ALLOW_ORIGIN);
            resp.remove_header(&ACCESS_CONTROL_ALLOW_CREDENTIALS);
            resp.remove_header(&ACCESS_CONTROL_EXPOSE_HEADERS);
        }
        if !self.any && !varies_by_origin(resp) {
            resp.append_header(VARY, HeaderValue::from_static("Origin"))?;
        }
        let Some(origin) = &ctx.origin else {
            return Ok(());
        };
        if !self.allowed(origin) {
            return Ok(());
        }
        let allow = if self.any {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, allow)?;
        if self.credentials {
            resp.insert_header(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            )?;
        }
        // Not on a preflight answer (it has Allow-Methods): exposure is for actual responses.
        if let Some(e) = &self.exposed {
            if !resp.headers.contains_key(ACCESS_CONTROL_ALLOW_METHODS) {
                resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone())?;
            }
        }
        Ok(())
    }
}

/// A CORS preflight: `OPTIONS` with both `Origin` and `Access-Control-Request-Method` (what
/// the `cors` plugin answers, and what auth plugins with `run_on_preflight: false` let
/// through). An `OPTIONS` without them is an ordinary request.
#[inline]
pub fn is_cors_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        && req.headers.contains_key(ORIGIN)
}

/// `Vary` already names `Origin` (or is `*`).
fn varies_by_origin(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            t == b"*" || t.eq_ignore_ascii_case(b"origin")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_scheme_host_port() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "capacitor://localhost",
            "http://[::1]:3000",
        ] {
            assert!(valid_origin(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://*.example.com",
            "://x",
            "https://a b",
            "1http://x",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
    }

    #[test]
    fn preflight_detection() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build(method, b"/x", None).unwrap();
            for (n, v) in headers {
                r.append_header(n.to_string(), *v).unwrap();
            }
            r
        };
        let origin = ("Origin", "https://app.example.com");
        let acrm = ("Access-Control-Request-Method", "PUT");
        assert!(is_cors_preflight(&req("OPTIONS", &[origin, acrm])));
        assert!(!is_cors_preflight(&req("OPTIONS", &[origin])));
        assert!(!is_cors_preflight(&req("OPTIONS", &[acrm])));
        assert!(!is_cors_preflight(&req("OPTIONS", &[])));
        assert!(!is_cors_preflight(&req("GET", &[origin, acrm])));
    }

    #[test]
    fn vary_detection() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        assert!(!varies_by_origin(&r));
        r.append_header(VARY, "Accept-Encoding").unwrap();
        assert!(!varies_by_origin(&r));
        r.append_header(VARY, "accept, ORIGIN").unwrap();
        assert!(varies_by_origin(&r));
    }
}
