//! `traffic-split` (request_filter, response_filter): canary and blue/green releases across
//! upstreams. The first rule whose `match` fits the request (headers, cookies, query; a rule
//! without `match` fits all) picks one of its upstreams by smooth weighted round robin and
//! sets it as the request's `RequestCtx::upstream_override`, which `upstream_peer` (and so
//! every retry), the circuit breaker, the retry budget, the `upstream_*` metrics and the
//! access log follow. No rule fits: the route's `upstream`.
//!
//! The weighted order is computed at load (NGINX's smooth weighted round robin, expanded
//! into one schedule of `sum(weights)` slots after dividing by their gcd): a request takes
//! the next slot with one atomic add, no lock and no allocation.
//!
//! `sticky`: the side a weighted rule picked is recorded in a cookie (a hash of the cookie
//! and upstream names, not the name itself) so a client stays on its side; a cookie that
//! names no upstream of the rule (forged, stale after a config change, or a side whose
//! weight became 0) is ignored and replaced.

use super::{phase, Answer, Build, Hooks, Outcome};
use crate::config::diag::Compiler;
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
use crate::upstream::Upstream;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest weighted schedule (slots) a rule may need after dividing the weights by their gcd.
const MAX_SCHEDULE: u64 = 10_000;
/// Upstreams per rule (a slot is one byte).
const MAX_UPSTREAMS: usize = 255;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    rules: Vec<RuleConfig>,
    sticky: Option<StickyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    #[serde(rename = "match", default)]
    matches: Option<MatchConfig>,
    upstreams: Vec<SideConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct MatchConfig {
    headers: BTreeMap<String, String>,
    cookies: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SideConfig {
    name: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StickyConfig {
    cookie: String,
    #[serde(default = "day")]
    ttl: Dur,
}

fn day() -> Dur {
    Dur(Duration::from_secs(86_400))
}

/// What a request must carry for a rule to apply (all of it).
#[derive(Debug, Default)]
struct Match {
    headers: Vec<(HeaderName, HeaderValue)>,
    cookies: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

#[derive(Debug)]
struct Side {
    upstream: Arc<Upstream>,
    weight: u32,
    /// The sticky cookie's value for this side (16 hex digits).
    token: String,
    /// The whole `Set-Cookie` value recording this side.
    set_cookie: HeaderValue,
}

#[derive(Debug)]
struct Rule {
    matches: Match,
    sides: Vec<Side>,
    /// Side index per slot, in smooth weighted round-robin order.
    schedule: Vec<u8>,
    cursor: AtomicUsize,
}

#[derive(Debug)]
pub struct TrafficSplit {
    rules: Vec<Rule>,
    /// Name of the sticky cookie.
    sticky: Option<String>,
}

/// Per request: the (rule, side) whose cookie the answer sets.
pub type Pending = Option<(u16, u8)>;

/// FNV-1a over the cookie and upstream names: stable across processes and nodes, so a
/// client keeps its side through restarts and behind any gateway of a fleet.
fn token(cookie: &str, upstream: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cookie.bytes().chain([0]).chain(upstream.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The greatest common divisor of the non-zero weights (1 when there are none): weights are
/// divided by it so that a cycle is as short as it can be.
fn common_divisor(weights: &[u32]) -> u64 {
    weights
        .iter()
        .map(|w| u64::from(*w))
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1)
}

/// NGINX's smooth weighted round robin, run once over a full cycle: each step adds every
/// weight to its current value, takes the largest and lowers it by the total.
fn schedule(weights: &[u32]) -> Vec<u8> {
    let g = common_divisor(weights);
    let w: Vec<i64> = weights.iter().map(|x| (u64::from(*x) / g) as i64).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] || (w[best] == 0 && w[i] > 0) {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u8);
    }
    out
}

fn header_pairs(
    c: &mut Compiler,
    path: &str,
    map: BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in map {
        let at = format!("{path}.{name}");
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Err(_), _) => c.error(&at, format!("invalid header name {name:?}")),
            (_, Err(_)) => c.error(&at, "invalid header value"),
        }
    }
    out
}

/// A cookie name as RFC 6265 allows it (a token).
fn valid_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Every `name=value` pair of the request's `Cookie` headers.
fn cookies(req: &RequestHeader) -> impl Iterator<Item = (&str, &str)> {
    req.headers
        .get_all(http::header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
}

fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    cookies(req).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The raw (still percent-encoded) value of query parameter `name`.
fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri
        .query()?
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Match {
    fn fits(&self, req: &RequestHeader) -> bool {
        let h = &req.headers;
        self.headers.iter().all(|(n, v)| h.get(n) == Some(v))
            && self
                .cookies
                .iter()
                .all(|(n, v)| cookie(req, n) == Some(v.as_str()))
            && self
                .query
                .iter()
                .all(|(n, v)| query_param(req, n) == Some(v.as_str()))
    }
}

impl Rule {
    #[inline]
    fn next(&self) -> usize {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        usize::from(self.schedule[n % self.schedule.len()])
    }
}

impl TrafficSplit {
    /// The (rule, side) for this request and whether the side came from the sticky cookie.
    fn pick(&self, session: &Session) -> Option<(usize, usize, bool)> {
        let (ri, rule) = self.rule_for(session.req_header())?;
        if let Some(si) = self.sticky_side(rule, session.req_header()) {
            return Some((ri, si, true));
        }
        Some((ri, rule.next(), false))
    }

    /// The first rule whose `match` fits the request.
    fn rule_for(&self, req: &RequestHeader) -> Option<(usize, &Rule)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.fits(req))
    }

    /// The side of a weighted rule the request's sticky cookie names (a side it may still
    /// get: weight above 0).
    fn sticky_side(&self, rule: &Rule, req: &RequestHeader) -> Option<usize> {
        if rule.sides.len() < 2 {
            return None;
        }
        let v = cookie(req, self.sticky.as_deref()?)?;
        rule.sides.iter().position(|s| s.weight > 0 && s.token == v)
    }
}

impl Hooks for TrafficSplit {
    type State = Pending;
    const PHASES: u32 = phase::REQUEST | phase::RESPONSE;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let p = format!("{path}.config");
        let errors = c.error_count();
        if cfg.rules.is_empty() {
            c.error(&format!("{p}.rules"), "needs at least one rule");
        }
        let sticky = cfg.sticky.map(|s| {
            if !valid_cookie_name(&s.cookie) {
                c.error(
                    &format!("{p}.sticky.cookie"),
                    format!("invalid cookie name {:?}", s.cookie),
                );
            }
            if s.ttl.0.is_zero() {
                c.error(&format!("{p}.sticky.ttl"), "must be more than 0");
            }
            (s.cookie, s.ttl.0.as_secs().max(1))
        });
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.into_iter().enumerate() {
            let rp = format!("{p}.rules[{i}]");
            let m = r.matches.unwrap_or_default();
            let mut cookies = Vec::new();
            for (name, value) in m.cookies {
                if !valid_cookie_name(&name) {
                    c.error(
                        &format!("{rp}.match.cookies.{name}"),
                        format!("invalid cookie name {name:?}"),
                    );
                }
                cookies.push((name, value));
            }
            let matches = Match {
                headers: header_pairs(c, &format!("{rp}.match.headers"), m.headers),
                cookies,
                query: m.query.into_iter().collect(),
            };
            if r.upstreams.is_empty() || r.upstreams.len() > MAX_UPSTREAMS {
                c.error(
                    &format!("{rp}.upstreams"),
                    format!("needs 1 to {MAX_UPSTREAMS} upstreams"),
                );
                continue;
            }
            let mut sides = Vec::new();
            for (j, s) in r.upstreams.iter().enumerate() {
                let sp = format!("{rp}.upstreams[{j}]");
                if r.upstreams[..j].iter().any(|o| o.name == s.name) {
                    c.error(
                        &format!("{sp}.name"),
                        format!("upstream \"{}\" listed twice", s.name),
                    );
                    continue;
                }
                let Some(up) = env.upstreams.iter().find(|u| u.name == s.name) else {
                    c.error(
                        &format!("{sp}.name"),
                        format!("unknown upstream \"{}\"", s.name),
                    );
                    continue;
                };
                let (tok, set_cookie) = match &sticky {
                    Some((name, ttl)) => {
                        let tok = token(name, &s.name);
                        let v =
                            format!("{name}={tok}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax");
                        (
                            tok,
                            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("")),
                        )
                    }
                    None => (String::new(), HeaderValue::from_static("")),
                };
                sides.push(Side {
                    upstream: up.clone(),
                    weight: s.weight,
                    token: tok,
                    set_cookie,
                });
            }
            let weights: Vec<u32> = sides.iter().map(|s| s.weight).collect();
            let g = common_divisor(&weights);
            let total: u64 = weights.iter().map(|w| u64::from(*w) / g).sum();
            if total == 0 && !sides.is_empty() {
                c.error(&format!("{rp}.upstreams"), "needs a weight above 0");
                continue;
            }
            if total > MAX_SCHEDULE {
                c.error(
                    &format!("{rp}.upstreams"),
                    format!("weights too fine: {total} slots after dividing by their gcd (at most {MAX_SCHEDULE}; use percentages or per mille)"),
                );
                continue;
            }
            rules.push(Rule {
                matches,
                schedule: schedule(&weights),
                sides,
                cursor: AtomicUsize::new(0),
            });
        }
        (c.error_count() == errors).then_some(TrafficSplit {
            rules,
            sticky: sticky.map(|(name, _)| name),
        })
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if let Some((ri, si, from_cookie)) = self.pick(session) {
            let rule = &self.rules[ri];
            ctx.upstream_override = Some(rule.sides[si].upstream.clone());
            if self.sticky.is_some() && !from_cookie && rule.sides.len() > 1 {
                ctx.plugins.traffic_split = Some((ri as u16, si as u8));
            }
        }
        Outcome::Continue
    }

    /// The side a weighted rule picked goes back in the sticky cookie (also on an error
    /// answer: the client stays where it is).
    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if let Some((ri, si)) = ctx.plugins.traffic_split.take() {
            if let Some(side) = self
                .rules
                .get(usize::from(ri))
                .and_then(|r| r.sides.get(usize::from(si)))
            {
                resp.append_header(http::header::SET_COOKIE, side.set_cookie.clone())?;
            }
        }
        Ok(())
    }

    /// The rule the explained request matches and its upstreams (weights as shares). When
    /// only one can be chosen (one upstream with weight above 0, or a sticky cookie naming
    /// one), the upstream section shows it; a weighted choice is a note (no cursor moves).
    fn explain(&self, x: &mut super::Explain) -> serde_json::Value {
        use serde_json::json;
        let Some((ri, rule)) = self.rule_for(x.req) else {
            return json!({"result": "no rule matches: the route's upstream",
                          "upstream": x.route.upstream.name});
        };
        let total: u64 = rule.sides.iter().map(|s| u64::from(s.weight)).sum();
        let share = |w: u32| {
            let pct = u64::from(w) as f64 * 100.0 / total.max(1) as f64;
            // At most 2 decimals, without trailing zeros ("12.5%", "33.33%", "90%").
            let t = format!("{pct:.2}");
            format!("{}%", t.trim_end_matches('0').trim_end_matches('.'))
        };
        let candidates: Vec<serde_json::Value> = rule
            .sides
            .iter()
            .map(|s| json!({"upstream": s.upstream.name, "weight": s.weight, "share": share(s.weight)}))
            .collect();
        let live: Vec<&Side> = rule.sides.iter().filter(|s| s.weight > 0).collect();
        let (chosen, why) = if let Some(si) = self.sticky_side(rule, x.req) {
            (Some(&rule.sides[si]), "the sticky cookie names it")
        } else if let [only] = live.as_slice() {
            (Some(*only), "the rule's only upstream with weight above 0")
        } else {
            (None, "")
        };
        let mut d = json!({"rule": ri, "upstreams": candidates});
        match chosen {
            Some(side) => {
                x.upstream = Some(side.upstream.clone());
                d["result"] = json!(format!("upstream {}: {why}", side.upstream.name));
            }
            None => {
                let split: Vec<String> = live
                    .iter()
                    .map(|s| format!("{} {}", s.upstream.name, share(s.weight)))
                    .collect();
                let sticky = match &self.sticky {
                    Some(c) => format!("; the cookie {c} then keeps the client on its side"),
                    None => String::new(),
                };
                x.notes.push(json!(format!(
                    "traffic-split rule {ri} chooses by weight: {}; the section shows the route's upstream {}{sticky}",
                    split.join(", "),
                    x.route.upstream.name
                )));
                d["result"] = json!("weighted choice per request");
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_smooth_and_exact() {
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let s = schedule(&[5, 95]);
        assert_eq!(s.len(), 20, "divided by the gcd");
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 1);
        let s = schedule(&[0, 3]);
        assert_eq!(s, vec![1]);
        let s = schedule(&[30, 70]);
        assert_eq!(s.len(), 10);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 3);
    }

    #[test]
    fn tokens_are_stable_and_distinct() {
        assert_eq!(token("c", "api-v1"), token("c", "api-v1"));
        assert_ne!(token("c", "api-v1"), token("c", "api-v2"));
        assert_ne!(token("c", "api-v1"), token("d", "api-v1"));
        assert_eq!(token("c", "a").len(), 16);
    }
}
