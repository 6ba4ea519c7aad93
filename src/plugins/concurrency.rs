//! `concurrency-limiting` (request_filter): at most `max` requests in flight per key (the
//! client IP, the consumer — anonymous requests count by IP — or the route), like NGINX
//! `limit_conn`. Over it: 429 `too_many_concurrent_requests`. The slot is an RAII guard in
//! the request context (`RequestCtx::plugins.concurrency`): released when the request ends,
//! whether it was answered, failed or abandoned by the client.

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::ctx::RequestCtx;
use crate::limits::{self, ConcurrencyGuard, ConcurrencyStore, KeyBuf};
use crate::observe::Finished;
use pingora::proxy::Session;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum LimitBy {
    #[default]
    Ip,
    Consumer,
    Route,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    max: u32,
    limit_by: LimitBy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max: 10,
            limit_by: LimitBy::Ip,
        }
    }
}

pub struct Concurrency {
    max: u32,
    limit_by: LimitBy,
    store: Arc<ConcurrencyStore>,
}

impl std::fmt::Debug for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concurrency")
            .field("max", &self.max)
            .field("limit_by", &self.limit_by)
            .finish()
    }
}

impl Hooks for Concurrency {
    /// This request's in-flight slot, freed when dropped.
    type State = Option<ConcurrencyGuard>;
    const PHASES: u32 = phase::REQUEST | phase::LOGGING;

    type Config = Config;

    fn build(Build { c, path, env, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        if cfg.max == 0 {
            c.error(&format!("{path}.config.max"), "must be at least 1");
            return None;
        }
        let scope = env.route.unwrap_or("plugins");
        let id =
            crate::util::digest::identity(&["concurrency-limiting", scope, &format!("{cfg:?}")]);
        Some(Concurrency {
            max: cfg.max,
            limit_by: cfg.limit_by,
            store: limits::concurrency_store(env.registry, &id),
        })
    }

    async fn request(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        let key = self.key(ctx);
        match self.store.try_acquire(key.as_bytes(), self.max) {
            Some(guard) => {
                ctx.plugins.concurrency = Some(guard);
                Outcome::Continue
            }
            None => Outcome::Respond(Reply::error_with(
                429,
                "too_many_concurrent_requests",
                "Too many requests in flight for this client",
            )),
        }
    }

    /// `logging`: the slot is free as soon as the answer is out.
    fn logging(&self, _session: &Session, ctx: &mut RequestCtx, _done: &Finished) {
        ctx.plugins.concurrency = None;
    }
}

impl Concurrency {
    fn key(&self, ctx: &RequestCtx) -> KeyBuf {
        match self.limit_by {
            LimitBy::Ip => KeyBuf::ip(ctx.client_ip),
            LimitBy::Consumer => match ctx.consumer.and_then(|i| ctx.rt.consumers.get(i)) {
                Some(c) => KeyBuf::new(b'c', &[c.username.as_bytes()]),
                None => KeyBuf::ip(ctx.client_ip),
            },
            LimitBy::Route => {
                let name = ctx.route().map_or("", |r| r.name.as_str());
                KeyBuf::new(b'r', &[name.as_bytes()])
            }
        }
    }

    /// Requests in flight for a key (tests).
    pub fn store(&self) -> &ConcurrencyStore {
        &self.store
    }
}
