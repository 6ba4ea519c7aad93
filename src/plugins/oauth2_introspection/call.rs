//! oauth2-introspection's `request_filter` work: the token, the cache lookup, the coalesced
//! introspection call (RFC 7662 section 2) and what its answer means for the request, with the
//! metrics of each.

use super::cache::{self, Join, Lookup};
use super::{
    CallError, ClientAuth, ConsumerClaim, Decision, Endpoint, Oauth2Introspection, OnOutage,
    Source, State, Verdict, CALL_RESULTS, CLIENT_ID_HEADER, FAMILIES, MAX_ANSWER_BYTES,
    MAX_TOKEN_BYTES, OUTCOMES, SCOPE_HEADER, SOURCES, SUB_HEADER, UNAVAILABLE,
};
use crate::ctx::RequestCtx;
use crate::plugins::cors::is_cors_preflight;
use crate::plugins::{Outcome, Reply};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::HeaderValue;
use pingora::http::RequestHeader;
use prometheus::{Histogram, IntCounter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// The call counters, cloned into a call's task.
#[derive(Clone)]
pub(super) struct CallMetrics {
    results: [IntCounter; 3],
    duration: Histogram,
}

impl CallMetrics {
    fn new(route: &str) -> CallMetrics {
        let f = &*FAMILIES;
        let r = |x: &str| f.calls.with_label_values(&[route, x]);
        CallMetrics {
            results: [r(CALL_RESULTS[0]), r(CALL_RESULTS[1]), r(CALL_RESULTS[2])],
            duration: f.duration.with_label_values(&[route]),
        }
    }

    fn observe(&self, result: &Result<Answer, CallError>, took: std::time::Duration) {
        let i = match result {
            Ok(a) if a.active => 0,
            Ok(_) => 1,
            Err(_) => 2,
        };
        if let Some(c) = self.results.get(i) {
            c.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }
}

/// Metric handles of a route entry, resolved once.
pub(super) struct Handles {
    decisions: Vec<IntCounter>,
    lookups: Vec<IntCounter>,
    call: CallMetrics,
}

impl Handles {
    fn new(route: &str) -> Handles {
        let f = &*FAMILIES;
        Handles {
            decisions: OUTCOMES
                .iter()
                .map(|o| f.decisions.with_label_values(&[route, o]))
                .collect(),
            lookups: SOURCES
                .iter()
                .map(|s| f.lookups.with_label_values(&[route, s]))
                .collect(),
            call: CallMetrics::new(route),
        }
    }
}

/// A request that needs a call: its token, the token's digest and a stale decision, if any.
type Pending<'a> = (&'a str, [u8; 32], Option<Arc<Decision>>);

/// The token of a request.
enum Token<'a> {
    Missing,
    Malformed,
    Bearer(&'a str),
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The bearer token of `Authorization` (the only place it is read from: RFC 6750 2.1).
fn find_token(req: &RequestHeader) -> Token<'_> {
    let mut values = req.headers.get_all(AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Token::Missing;
    };
    if values.next().is_some() {
        return Token::Malformed;
    }
    let Ok(s) = v.to_str() else {
        return Token::Malformed;
    };
    let s = s.trim();
    let bearer = s.len() >= 6 && s.as_bytes()[..6].eq_ignore_ascii_case(b"bearer");
    if !bearer || (s.len() > 6 && s.as_bytes()[6] != b' ') {
        // Another scheme (Basic ...): no bearer token.
        return Token::Missing;
    }
    let t = s[6..].trim();
    if t.is_empty() {
        Token::Missing
    } else if t.len() > MAX_TOKEN_BYTES || !b64token(t) {
        Token::Malformed
    } else {
        Token::Bearer(t)
    }
}

/// Unix time in ms (the clock `exp` and `nbf` are compared with).
#[inline]
fn now_ms() -> u64 {
    crate::util::clock::now_us() / 1000
}

/// 401 `invalid_token` with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 3.1).
fn invalid_token(message: &'static str) -> Outcome {
    Outcome::Respond(Reply::error_with(401, "invalid_token", message).header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    ))
}

/// The introspection answer (RFC 7662 2.2): `active` is required; the rest is read when
/// present and must then have its type (a string `exp` is a malformed answer). Other members
/// are ignored.
#[derive(Deserialize)]
pub(super) struct Answer {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

/// Seconds (a JSON number) to ms, saturating.
fn ms(secs: f64) -> u64 {
    (secs * 1000.0) as u64
}

impl Endpoint {
    /// The decision for `a`, received at `now`, with its own validity in
    /// [`Decision::valid_until_ms`].
    pub(super) fn decide(&self, a: &Answer, now: u64) -> Decision {
        let exp = a.exp.map(ms);
        // A token past its `exp` is inactive whatever the endpoint says (RFC 7662 4: the
        // resource server must not trust a stale "active").
        if !a.active || exp.is_some_and(|e| e <= now) {
            let until = now.saturating_add(self.negative_ttl_ms);
            return Decision {
                active: false,
                scope_ok: false,
                nbf_ms: None,
                fresh_until_ms: until,
                valid_until_ms: until,
                consumer: None,
                headers: Vec::new(),
            };
        }
        let fresh = exp
            .unwrap_or(u64::MAX)
            .min(now.saturating_add(self.max_ttl_ms));
        let valid = match self.on_outage {
            OnOutage::Reject => fresh,
            // Its own expiry: the token's `exp`; without one, one more `max_ttl`.
            OnOutage::ServeCached => exp
                .unwrap_or_else(|| fresh.saturating_add(self.max_ttl_ms))
                .max(fresh),
        };
        let scope = a.scope.as_deref().unwrap_or("");
        let scope_ok = self
            .required_scopes
            .iter()
            .all(|r| scope.split(' ').any(|s| s == &**r));
        let consumer = match self.consumer_claim {
            ConsumerClaim::ClientId => a.client_id.as_deref(),
            ConsumerClaim::Sub => a.sub.as_deref(),
        }
        .filter(|s| !s.is_empty())
        .map(Box::from);
        let headers = [
            (CLIENT_ID_HEADER, a.client_id.as_deref()),
            (SUB_HEADER, a.sub.as_deref()),
            (SCOPE_HEADER, a.scope.as_deref()),
        ]
        .into_iter()
        .filter_map(|(n, v)| {
            let v = HeaderValue::from_str(v.filter(|s| !s.is_empty())?).ok()?;
            Some((n, v))
        })
        .collect();
        Decision {
            active: true,
            scope_ok,
            nbf_ms: a.nbf.map(ms),
            fresh_until_ms: fresh,
            valid_until_ms: valid,
            consumer,
            headers,
        }
    }
}

/// `application/x-www-form-urlencoded` of `s` onto `out`.
pub(super) fn form_encode(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
    }
}

/// One introspection call for `token`.
async fn introspect(e: &Endpoint, token: &str) -> Result<Answer, CallError> {
    let mut body = Vec::with_capacity(token.len() + 96);
    body.extend_from_slice(b"token=");
    form_encode(token.as_bytes(), &mut body);
    body.extend_from_slice(b"&token_type_hint=access_token");
    let mut req = e
        .client
        .post(e.url.clone())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    match &e.auth {
        ClientAuth::Basic(v) => req = req.header(AUTHORIZATION, v.clone()),
        ClientAuth::Post(extra) => body.extend_from_slice(extra),
    }
    let mut resp = req.body(body).send().await?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(CallError::Status(status));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CallError::Malformed);
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf).map_err(|_| CallError::Malformed)
}

/// Unregisters a call from the flights when its task ends, however it ends.
struct Unregister(Arc<State>, [u8; 32]);

impl Drop for Unregister {
    fn drop(&mut self) {
        self.0.flights.remove(&self.1);
    }
}

/// A call's task: the call, the metrics, the cache, then the waiters.
async fn run_call(
    state: Arc<State>,
    token: String,
    key: [u8; 32],
    tx: tokio::sync::watch::Sender<cache::Shared>,
    metrics: CallMetrics,
) {
    let _unregister = Unregister(state.clone(), key);
    let started = Instant::now();
    let answer = introspect(&state.endpoint, &token).await;
    drop(token);
    metrics.observe(&answer, started.elapsed());
    let now = now_ms();
    let result = answer.map(|a| {
        let d = Arc::new(state.endpoint.decide(&a, now));
        // Into the cache before the waiters hear of it: a request arriving meanwhile finds it.
        state.cache.put(key, d.clone(), now);
        d
    });
    tx.send_replace(Some(result));
}

impl Oauth2Introspection {
    fn count(&self, ctx: &RequestCtx, verdict: Verdict, source: Option<Source>) {
        if let Some(route) = &self.route {
            let h = self.handles.get_or_init(|| Handles::new(route));
            if let Some(c) = h.decisions.get(verdict as usize) {
                c.inc();
            }
            if let Some(c) = source.and_then(|s| h.lookups.get(s as usize)) {
                c.inc();
            }
            return;
        }
        // A global entry serves many routes: label by the request's.
        let route = ctx.route().map_or("", |r| r.name.as_str());
        let f = &*FAMILIES;
        f.decisions
            .with_label_values(&[route, OUTCOMES[verdict as usize]])
            .inc();
        if let Some(s) = source {
            f.lookups
                .with_label_values(&[route, SOURCES[s as usize]])
                .inc();
        }
    }

    fn call_metrics(&self, ctx: &RequestCtx) -> CallMetrics {
        match &self.route {
            Some(route) => self
                .handles
                .get_or_init(|| Handles::new(route))
                .call
                .clone(),
            None => CallMetrics::new(ctx.route().map_or("", |r| r.name.as_str())),
        }
    }

    /// What `d` means for the request at `now`.
    fn apply(&self, d: Arc<Decision>, now: u64, source: Source, ctx: &mut RequestCtx) -> Outcome {
        if !d.active {
            self.count(ctx, Verdict::Inactive, Some(source));
            return invalid_token("The token is not active");
        }
        if d.nbf_ms.is_some_and(|nbf| now < nbf) {
            self.count(ctx, Verdict::Inactive, Some(source));
            return invalid_token("The token is not valid yet");
        }
        if !d.scope_ok {
            self.count(ctx, Verdict::InsufficientScope, Some(source));
            return Outcome::Respond(
                Reply::error_with(
                    403,
                    "insufficient_scope",
                    "The token lacks a required scope",
                )
                .header(WWW_AUTHENTICATE, self.scope_challenge.clone()),
            );
        }
        self.count(ctx, Verdict::Active, Some(source));
        // A name of no consumer leaves one found by an earlier plugin in place (as jwt).
        if let Some(i) = d.consumer.as_deref().and_then(|c| self.consumers.get(c)) {
            ctx.consumer = Some(*i);
        }
        ctx.plugins.oauth2_introspection = Some(d);
        Outcome::Continue
    }

    /// The part of the hook decided without a call: `Ok` with the outcome (no token, a
    /// malformed one, a fresh cached decision), or `Err` with the token, its digest and a
    /// stale decision, if any, for the call.
    #[inline]
    fn first_step<'a>(
        &self,
        req: &'a RequestHeader,
        now: u64,
        ctx: &mut RequestCtx,
    ) -> Result<Outcome, Pending<'a>> {
        let token = match find_token(req) {
            Token::Bearer(t) => t,
            Token::Missing => {
                self.count(ctx, Verdict::NoToken, None);
                return Ok(Outcome::Respond(
                    Reply::error_with(401, "missing_token", "A bearer token is required").header(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"gatehouse\""),
                    ),
                ));
            }
            Token::Malformed => {
                self.count(ctx, Verdict::NoToken, None);
                return Ok(invalid_token("The token is malformed"));
            }
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        match self.state.cache.lookup(&key, now) {
            Lookup::Fresh(d) => Ok(self.apply(d, now, Source::Cache, ctx)),
            Lookup::Stale(d) => Err((token, key, Some(d))),
            Lookup::Miss => Err((token, key, None)),
        }
    }

    /// The cache-hit path alone (benchmarks): `Some` when the request is decided without an
    /// introspection call.
    pub fn decide_cached(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Option<Outcome> {
        if !self.run_on_preflight && is_cors_preflight(req) {
            return Some(Outcome::Continue);
        }
        self.first_step(req, now_ms(), ctx).ok()
    }

    /// The hook without a session (tests call it directly).
    pub async fn authorize(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Outcome {
        if !self.run_on_preflight && is_cors_preflight(req) {
            return Outcome::Continue;
        }
        match self.first_step(req, now_ms(), ctx) {
            Ok(o) => o,
            Err((token, key, stale)) => Box::pin(self.resolve(token, key, stale, ctx)).await,
        }
    }

    /// A miss (or a stale entry): the token's introspection call, started here or joined.
    async fn resolve(
        &self,
        token: &str,
        key: [u8; 32],
        stale: Option<Arc<Decision>>,
        ctx: &mut RequestCtx,
    ) -> Outcome {
        let (result, source) = match self.state.flights.join(&key) {
            Join::Full => (Err(CallError::Overloaded), Source::Call),
            Join::Follow(rx) => (cache::outcome(rx).await, Source::Coalesced),
            Join::Lead(tx, rx) => {
                // A call for this token may have ended between the lookup and the join.
                if let Lookup::Fresh(d) = self.state.cache.lookup(&key, now_ms()) {
                    tx.send_replace(Some(Ok(d.clone())));
                    self.state.flights.remove(&key);
                    return self.apply(d, now_ms(), Source::Cache, ctx);
                }
                // Its own task: a requester that goes away mid-call strands no follower, and
                // the answer still fills the cache.
                tokio::spawn(run_call(
                    self.state.clone(),
                    token.to_owned(),
                    key,
                    tx,
                    self.call_metrics(ctx),
                ));
                (cache::outcome(rx).await, Source::Call)
            }
        };
        let now = now_ms();
        match result {
            Ok(d) => self.apply(d, now, source, ctx),
            Err(e) => {
                let e_target = &self.state.endpoint.target;
                if self.state.warn.may_warn() {
                    tracing::warn!(
                        route = ctx.route().map_or("", |r| r.name.as_str()),
                        request_id = %ctx.request_id,
                        endpoint = %e_target,
                        "oauth2-introspection: the introspection endpoint {e}"
                    );
                } else {
                    tracing::debug!(request_id = %ctx.request_id, "oauth2-introspection: the introspection endpoint {e}");
                }
                if self.state.endpoint.on_outage == OnOutage::ServeCached {
                    if let Some(d) = stale.filter(|d| now < d.valid_until_ms) {
                        return self.apply(d, now, Source::Stale, ctx);
                    }
                }
                self.count(ctx, Verdict::Outage, None);
                Outcome::Respond(Reply::error_with(503, "service_unavailable", UNAVAILABLE))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("head");
        for a in auth {
            r.append_header("authorization", *a).expect("header");
        }
        r
    }

    #[test]
    fn bearer_token_from_authorization_only() {
        let t = |a: &[&str]| match find_token(&req(a)) {
            Token::Missing => "missing".to_string(),
            Token::Malformed => "malformed".to_string(),
            Token::Bearer(t) => t.to_string(),
        };
        assert_eq!(t(&[]), "missing");
        assert_eq!(t(&["Basic dXNlcjpwdw=="]), "missing");
        assert_eq!(t(&["Bearer"]), "missing");
        assert_eq!(t(&["Bearer   "]), "missing");
        assert_eq!(t(&["Bearerabc"]), "missing");
        assert_eq!(t(&["Bearer abc.DEF-_~+/=="]), "abc.DEF-_~+/==");
        assert_eq!(t(&["bearer  xyz "]), "xyz");
        assert_eq!(t(&["Bearer a b"]), "malformed");
        assert_eq!(t(&["Bearer a\"b"]), "malformed");
        assert_eq!(t(&["Bearer ==="]), "malformed");
        assert_eq!(t(&["Bearer a", "Bearer b"]), "malformed");
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(t(&[&long]), "malformed");
    }

    #[test]
    fn form_encoding() {
        let mut out = Vec::new();
        form_encode(b"a b+c/d=e&f~*", &mut out);
        assert_eq!(out, b"a+b%2Bc%2Fd%3De%26f%7E*");
    }
}
