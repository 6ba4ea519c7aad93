//! `error-responses` (extension; NGINX's `error_page 502 503 504 /50x.json`): configured
//! bodies for answers with a given status.
//!
//! Phases served:
//! - every gateway-made error ([`crate::errors::respond`], from `request_filter`,
//!   `fail_to_proxy`, ...): the `gateway_body` hook gives the configured body and Content-Type in
//!   place of the contract's JSON; the status, `Cache-Control: no-store`, extra headers
//!   (`Retry-After`, `WWW-Authenticate`) and the chain's response headers (security-headers,
//!   cors, correlation-id) stay as they are.
//! - with `upstream: true`, upstream (and cached) answers too: `response_filter` swaps the
//!   head's Content-Type and Content-Length; the downstream module drops the upstream's body
//!   and sends the configured one at its end ([`super::held_body`]: only a module sees the
//!   end of a body served from the cache after a revalidation). `request_filter` only notes
//!   a `HEAD`, whose answer has no body to replace.
//!
//! Bodies are read (`body_file`) and compiled at load: literal bytes with `$(request_id)`,
//! `$(status)` and `$(error)` (the contract code, e.g. `bad_gateway`) filled in per answer.
//! The three values are ASCII without quotes or markup (request ids are `[A-Za-z0-9._:-]`),
//! so they need no escaping in JSON or HTML. Any other `$(` text stays literal (bodies may
//! hold scripts). A body is at most [`MAX_BODY`] bytes.

use super::held_body::HeldBody;
use super::{phase, Answer, Build, Hooks, Outcome};
use crate::config::diag::Compiler;
use crate::ctx::RequestCtx;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Largest body accepted, inline or from a file.
pub const MAX_BODY: usize = 64 * 1024;

/// A `responses` key: one status or several separated by commas (`"502, 503, 504"`); YAML
/// may give a single status as a number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status such as 503, or several as \"502, 503, 504\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    responses: BTreeMap<Key, RawResponse>,
    upstream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    body: Option<String>,
    body_file: Option<String>,
    #[serde(default = "default_content_type")]
    content_type: String,
}

fn default_content_type() -> String {
    "application/json".into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Bytes),
    RequestId,
    Status,
    Error,
}

/// One configured body, compiled.
#[derive(Debug)]
struct Body {
    segs: Vec<Seg>,
    /// Bytes of the literal parts (capacity hint).
    literal_len: usize,
    content_type: HeaderValue,
}

impl Body {
    fn compile(text: &[u8], content_type: HeaderValue) -> Body {
        let mut segs = Vec::new();
        let mut lit = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.windows(2).position(|w| w == b"$(") {
            let after = &rest[at + 2..];
            let var = [
                (&b"request_id)"[..], Seg::RequestId),
                (&b"status)"[..], Seg::Status),
                (&b"error)"[..], Seg::Error),
            ]
            .into_iter()
            .find(|(name, _)| after.starts_with(name));
            match var {
                Some((name, seg)) => {
                    lit.extend_from_slice(&rest[..at]);
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(Bytes::from(std::mem::take(&mut lit))));
                    }
                    segs.push(seg);
                    rest = &after[name.len()..];
                }
                None => {
                    lit.extend_from_slice(&rest[..at + 2]);
                    rest = after;
                }
            }
        }
        lit.extend_from_slice(rest);
        if !lit.is_empty() || segs.is_empty() {
            segs.push(Seg::Lit(Bytes::from(lit)));
        }
        let literal_len = segs
            .iter()
            .map(|s| match s {
                Seg::Lit(b) => b.len(),
                _ => 0,
            })
            .sum();
        Body {
            segs,
            literal_len,
            content_type,
        }
    }

    /// The body for one answer: a static body is shared, not copied.
    fn render(&self, status: u16, code: &str, request_id: &str) -> Bytes {
        if let [Seg::Lit(b)] = self.segs.as_slice() {
            return b.clone();
        }
        let mut out = BytesMut::with_capacity(self.literal_len + request_id.len() + 32);
        for s in &self.segs {
            match s {
                Seg::Lit(b) => out.extend_from_slice(b),
                Seg::RequestId => out.extend_from_slice(request_id.as_bytes()),
                Seg::Status => {
                    let mut buf = [0u8; 5];
                    out.extend_from_slice(status_text(status, &mut buf));
                }
                Seg::Error => out.extend_from_slice(code.as_bytes()),
            }
        }
        out.freeze()
    }
}

/// `status` in decimal, on the stack.
fn status_text(status: u16, buf: &mut [u8; 5]) -> &[u8] {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// This request's upstream-body replacement (`RequestCtx::plugins.error_responses`).
#[derive(Debug, Default)]
pub enum Pending {
    #[default]
    None,
    /// A `HEAD` request: nothing to replace.
    Head,
    /// The upstream's body is dropped; this one leaves at its end.
    Replace(Bytes),
    /// Handed to the downstream module (`hand_off`).
    Done,
}

#[derive(Debug)]
pub struct ErrorResponses {
    /// By status, sorted.
    bodies: Vec<(u16, Arc<Body>)>,
    upstream: bool,
}

impl ErrorResponses {
    fn find(&self, status: u16) -> Option<&Body> {
        self.bodies
            .binary_search_by_key(&status, |(s, _)| *s)
            .ok()
            .and_then(|i| self.bodies.get(i))
            .map(|(_, b)| &**b)
    }
}

impl Hooks for ErrorResponses {
    type State = Pending;
    const PHASES: u32 = phase::REQUEST | phase::RESPONSE | phase::HAND_OFF | phase::GATEWAY_BODY;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let cp = format!("{path}.config");
        if cfg.responses.is_empty() {
            c.error(
                &format!("{cp}.responses"),
                "needs at least one status, e.g. responses: { \"503\": { body: '...' } }",
            );
        }
        let mut bodies: Vec<(u16, Arc<Body>)> = Vec::new();
        for (key, r) in &cfg.responses {
            let kp = format!("{cp}.responses.{}", key.0);
            let mut statuses = Vec::new();
            for part in key.0.split(',') {
                match part.trim().parse::<u16>() {
                    Ok(s) if (400..=599).contains(&s) => statuses.push(s),
                    _ => c.error(
                        &kp,
                        format!(
                            "{:?} is not a status from 400 to 599 (several are separated by commas: \"502, 503, 504\")",
                            part.trim()
                        ),
                    ),
                }
            }
            let text: Option<Vec<u8>> = match (&r.body, &r.body_file) {
                (Some(b), None) => Some(b.clone().into_bytes()),
                (None, Some(f)) => read_body_file(c, &format!("{kp}.body_file"), f),
                (Some(_), Some(_)) => {
                    c.error(&kp, "set body or body_file, not both");
                    None
                }
                (None, None) => {
                    c.error(&kp, "needs body or body_file");
                    None
                }
            };
            if let Some(t) = &text {
                if t.len() > MAX_BODY {
                    c.error(
                        &format!("{kp}.body"),
                        format!(
                            "is {} bytes, more than the {} KiB allowed",
                            t.len(),
                            MAX_BODY / 1024
                        ),
                    );
                }
            }
            let content_type = match HeaderValue::from_str(r.content_type.trim()) {
                Ok(v) if !r.content_type.trim().is_empty() => Some(v),
                _ => {
                    c.error(
                        &format!("{kp}.content_type"),
                        "must be a media type such as application/json",
                    );
                    None
                }
            };
            let (Some(text), Some(content_type)) = (text, content_type) else {
                continue;
            };
            let body = Arc::new(Body::compile(&text, content_type));
            for s in statuses {
                if bodies.iter().any(|(b, _)| *b == s) {
                    c.error(&kp, format!("status {s} is configured twice"));
                    continue;
                }
                bodies.push((s, body.clone()));
            }
        }
        bodies.sort_by_key(|(s, _)| *s);
        Some(ErrorResponses {
            bodies,
            upstream: cfg.upstream,
        })
    }
    /// `request_filter`: a `HEAD` answer has no body to replace.
    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if self.upstream && session.req_header().method == http::Method::HEAD {
            ctx.plugins.error_responses = Pending::Head;
        }
        Outcome::Continue
    }
    /// `response_filter` for upstream (and cached) answers with `upstream: true`. Only an
    /// answer that has a body is replaced (Content-Length above 0, or chunked): Pingora sends
    /// a body-less head as complete, with no body phase to put one in.
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if resp.gateway_made
            || !self.upstream
            || !matches!(ctx.plugins.error_responses, Pending::None)
        {
            return Ok(());
        }
        let status = resp.status.as_u16();
        let Some(b) = self.find(status) else {
            return Ok(());
        };
        let chunked = resp.headers.contains_key(header::TRANSFER_ENCODING);
        let has_body = chunked
            || resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0);
        if !has_body {
            return Ok(());
        }
        let body = b.render(status, crate::errors::code_for(status).0, &ctx.request_id);
        for h in [
            header::TRANSFER_ENCODING,
            header::CONTENT_ENCODING,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
            header::ETAG,
            header::LAST_MODIFIED,
        ] {
            resp.remove_header(&h);
        }
        resp.insert_header(header::CONTENT_TYPE, b.content_type.clone())?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        // response-transformer (earlier in the chain) must not rewrite a body that is dropped.
        ctx.plugins.response_transformer = Default::default();
        ctx.plugins.error_responses = Pending::Replace(body);
        Ok(())
    }

    /// End of `response_filter`: gives the replacement decided on to the downstream module,
    /// which drops the upstream's body and sends this one at its end.
    fn hand_off(&self, session: &mut Session, resp: &ResponseHeader, ctx: &mut RequestCtx) {
        match std::mem::take(&mut ctx.plugins.error_responses) {
            Pending::Replace(b) => {
                ctx.plugins.error_responses = Pending::Done;
                super::held_body::hold(session, HeldBody::replace(resp, b));
            }
            other => ctx.plugins.error_responses = other,
        }
    }

    /// For [`crate::errors::respond`]: the configured body and Content-Type for a
    /// gateway-made error with `status` and contract `code`.
    fn gateway_body(
        &self,
        ctx: &RequestCtx,
        status: u16,
        code: &str,
    ) -> Option<(Bytes, HeaderValue)> {
        self.find(status).map(|b| {
            (
                b.render(status, code, &ctx.request_id),
                b.content_type.clone(),
            )
        })
    }
}

fn read_body_file(c: &mut Compiler, path: &str, file: &str) -> Option<Vec<u8>> {
    let f = c.file(file);
    match std::fs::metadata(&f) {
        Ok(m) if m.len() > MAX_BODY as u64 => {
            c.error(
                path,
                format!(
                    "{} is {} bytes, more than the {} KiB allowed",
                    f.display(),
                    m.len(),
                    MAX_BODY / 1024
                ),
            );
            return None;
        }
        Ok(m) if m.is_file() => {}
        _ => {
            c.error(path, format!("file {} not found", f.display()));
            return None;
        }
    }
    match std::fs::read(&f) {
        Ok(b) => Some(b),
        Err(e) => {
            c.error(path, format!("cannot read {}: {e}", f.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::Runtime;
    use crate::upstream::StateRegistry;
    use std::path::Path;

    fn load(yaml: &str, dir: &Path) -> Result<Runtime, String> {
        crate::config::load_str(
            yaml,
            dir,
            &StateRegistry::default(),
            &crate::util::registry::Registry::default(),
            1,
        )
        .map_err(|e| e.to_string())
    }

    fn with_plugin(config: &str) -> String {
        format!("plugins:\n  - name: error-responses\n    config:\n{config}")
    }

    fn plugin(rt: &Runtime) -> &ErrorResponses {
        match &*rt.global_plugins.plugins[0] {
            super::super::Plugin::ErrorResponses(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn templates() {
        let b = Body::compile(
            br#"{"e":"$(error)","s":$(status),"id":"$(request_id)"} $(x) $"#,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(
            b.render(503, "service_unavailable", "abc-1"),
            Bytes::from_static(br#"{"e":"service_unavailable","s":503,"id":"abc-1"} $(x) $"#)
        );
        let lit = Body::compile(b"static $(", HeaderValue::from_static("text/plain"));
        assert_eq!(lit.segs.len(), 1, "unknown $( stays literal, one segment");
        assert_eq!(lit.render(502, "bad_gateway", "x"), "static $(");
        let empty = Body::compile(b"", HeaderValue::from_static("text/plain"));
        assert_eq!(empty.render(502, "bad_gateway", "x"), "");
        let mut buf = [0u8; 5];
        assert_eq!(status_text(404, &mut buf), b"404");
    }

    #[test]
    fn keys_bodies_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("50x.html"), "<p>down $(request_id)</p>").unwrap();
        let rt = load(
            &with_plugin(
                "      upstream: true\n      responses:\n        503: { body: '{\"error\":\"maintenance\"}' }\n        \"502, 504\": { body_file: 50x.html, content_type: text/html }\n",
            ),
            dir.path(),
        )
        .unwrap();
        let p = plugin(&rt);
        assert!(p.upstream);
        assert_eq!(
            p.bodies.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [502, 503, 504]
        );
        let b = p.find(504).unwrap();
        assert_eq!(b.content_type, "text/html");
        assert_eq!(b.render(504, "gateway_timeout", "r1"), "<p>down r1</p>");
        assert_eq!(p.find(503).unwrap().content_type, "application/json");
        assert!(p.find(500).is_none());
    }

    #[test]
    fn config_errors_name_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.json"), vec![b'x'; MAX_BODY + 1]).unwrap();
        let e = load(
            &with_plugin(
                "      responses:\n        \"503\": { body: a, body_file: b }\n        \"200\": { body: a }\n        \"504\": {}\n        \"502\": { body_file: nope.json }\n        \"500\": { body_file: big.json }\n        \"501\": { body: a, content_type: \"\" }\n",
            ),
            dir.path(),
        )
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        let want = [
            "plugins[0].config.responses.200: \"200\" is not a status from 400 to 599",
            "plugins[0].config.responses.500.body_file: ",
            "plugins[0].config.responses.501.content_type: must be a media type such as application/json (line 10)",
            "plugins[0].config.responses.502.body_file: file ",
            "plugins[0].config.responses.503: set body or body_file, not both (line 5)",
            "plugins[0].config.responses.504: needs body or body_file (line 7)",
        ];
        assert_eq!(lines.len(), want.len(), "{e}");
        for (l, w) in lines.iter().zip(want) {
            assert!(l.starts_with(w), "{l:?} should start with {w:?}\n{e}");
            assert!(l.ends_with(")"), "{l}");
        }
        assert!(lines[0].ends_with("(line 6)"), "{}", lines[0]);
        assert!(
            lines[1].contains("more than the 64 KiB allowed (line 9)"),
            "{}",
            lines[1]
        );
        assert!(lines[3].ends_with("not found (line 8)"), "{}", lines[3]);

        let e = load(
            &with_plugin(
                "      responses:\n        \"502,503\": { body: a }\n        503: { body: b }\n",
            ),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "plugins[0].config.responses.503: status 503 is configured twice (line 6)"
        );
        let e = load("plugins:\n  - name: error-responses\n", dir.path()).unwrap_err();
        assert!(
            e.starts_with("plugins[0].config.responses: needs at least one status")
                && e.ends_with("(line 2)"),
            "{e}"
        );
        let e = load(
            &with_plugin("      responses:\n        503: { bodyy: x }\n"),
            dir.path(),
        )
        .unwrap_err();
        assert!(
            e.contains("unknown field `bodyy`") && e.ends_with("(line 5)"),
            "{e}"
        );
        let big = "x".repeat(MAX_BODY + 1);
        let e = load(
            &with_plugin(&format!(
                "      responses:\n        503: {{ body: {big} }}\n"
            )),
            dir.path(),
        )
        .unwrap_err();
        assert!(
            e.starts_with("plugins[0].config.responses.503.body: is 65537 bytes")
                && e.ends_with("(line 5)"),
            "{e}"
        );
    }
}
