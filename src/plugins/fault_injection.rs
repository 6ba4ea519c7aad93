//! `fault-injection` (request_filter): chaos testing like Envoy's and APISIX's fault filters.
//! For a matching request (every request without `match`), `delay` waits `duration` in
//! `percentage` % of the requests (a tokio timer: no thread is held), then `abort` answers
//! with `status` in `percentage` % of them: gatehouse's JSON error (a gRPC status for gRPC
//! clients) through the ordinary refusal path, without contacting the upstream. Each
//! injected fault is counted in `fault_injections_total{route,kind}`.

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::config::diag::Compiler;
use crate::config::units::Dur;
use crate::ctx::RequestCtx;
use http::{HeaderName, HeaderValue};
use once_cell::sync::Lazy;
use pingora::proxy::Session;
use prometheus::IntCounterVec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Contract code of an injected abort.
pub const CODE: &str = "fault_injected";
const MESSAGE: &str = "Fault injected by the gateway";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    abort: Option<AbortConfig>,
    delay: Option<DelayConfig>,
    #[serde(rename = "match")]
    matches: Option<MatchConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortConfig {
    status: u16,
    #[serde(default = "hundred")]
    percentage: f64,
    /// The `message` of the JSON error (the gRPC message for gRPC clients).
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelayConfig {
    duration: Dur,
    #[serde(default = "hundred")]
    percentage: f64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct MatchConfig {
    headers: BTreeMap<String, String>,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Debug)]
struct Abort {
    status: u16,
    /// Probability in [0, 1].
    chance: f64,
    message: std::borrow::Cow<'static, str>,
}

#[derive(Debug)]
struct Delay {
    duration: Duration,
    chance: f64,
}

#[derive(Debug)]
pub struct FaultInjection {
    abort: Option<Abort>,
    delay: Option<Delay>,
    /// Every header must be present with exactly this value.
    headers: Vec<(HeaderName, HeaderValue)>,
}

struct Families {
    injected: IntCounterVec,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| Families {
    injected: crate::observe::metrics::registry().counter_vec(
        "fault_injections_total",
        "Faults injected by fault-injection, by route and kind (abort, delay).",
        &["route", "kind"],
    ),
});

const KINDS: [&str; 2] = ["abort", "delay"];

fn count(ctx: &RequestCtx, kind: &str) {
    let route = ctx.route().map_or("", |r| r.name.as_str());
    FAMILIES.injected.with_label_values(&[route, kind]).inc();
}

fn percentage(c: &mut Compiler, path: &str, p: f64) -> f64 {
    if !(0.0..=100.0).contains(&p) {
        c.error(path, format!("must be between 0 and 100, not {p}"));
    }
    p / 100.0
}

/// True with probability `chance` (0 never, 1 always: no draw for either).
#[inline]
fn roll(chance: f64) -> bool {
    chance >= 1.0 || (chance > 0.0 && rand::random::<f64>() < chance)
}

impl FaultInjection {
    fn matches(&self, session: &Session) -> bool {
        let h = &session.req_header().headers;
        self.headers.iter().all(|(n, v)| h.get(n) == Some(v))
    }
}

impl Hooks for FaultInjection {
    type State = ();
    const PHASES: u32 = phase::REQUEST;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let p = format!("{path}.config");
        if cfg.abort.is_none() && cfg.delay.is_none() {
            c.error(&p, "needs an abort or a delay");
            return None;
        }
        let errors = c.error_count();
        let abort = cfg.abort.map(|a| {
            if !(400..=599).contains(&a.status) {
                c.error(
                    &format!("{p}.abort.status"),
                    format!("must be an error status (400-599), not {}", a.status),
                );
            }
            Abort {
                status: a.status,
                chance: percentage(c, &format!("{p}.abort.percentage"), a.percentage),
                message: a.message.map_or(MESSAGE.into(), Into::into),
            }
        });
        let delay = cfg.delay.map(|d| Delay {
            duration: d.duration.0,
            chance: percentage(c, &format!("{p}.delay.percentage"), d.percentage),
        });
        let mut headers = Vec::new();
        for (name, value) in cfg.matches.unwrap_or_default().headers {
            let at = format!("{p}.match.headers.{name}");
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => c.error(&at, format!("invalid header name {name:?}")),
                (_, Err(_)) => c.error(&at, "invalid header value"),
            }
        }
        (c.error_count() == errors).then_some(FaultInjection {
            abort,
            delay,
            headers,
        })
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        if !self.headers.is_empty() && !self.matches(session) {
            return Outcome::Continue;
        }
        if let Some(d) = &self.delay {
            if roll(d.chance) {
                count(ctx, "delay");
                tokio::time::sleep(d.duration).await;
            }
        }
        if let Some(a) = &self.abort {
            if roll(a.chance) {
                count(ctx, "abort");
                return Outcome::Respond(Reply::error_with(a.status, CODE, a.message.clone()));
            }
        }
        Outcome::Continue
    }

    fn register_metrics() {
        Lazy::force(&FAMILIES);
    }

    /// Both kinds' series of `route` exist from the start (at 0).
    fn route_series(route: &str, create: bool) {
        for kind in KINDS {
            if create {
                FAMILIES.injected.with_label_values(&[route, kind]);
            } else {
                let _ = FAMILIES.injected.remove_label_values(&[route, kind]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roll_extremes_never_draw_wrong() {
        assert!((0..1000).all(|_| roll(1.0)));
        assert!((0..1000).all(|_| !roll(0.0)));
        let hits = (0..20_000).filter(|_| roll(0.25)).count();
        assert!((4_400..=5_600).contains(&hits), "{hits}");
    }
}
