//! `request-size-limiting` (request_filter + request_body_filter): 413 `payload_too_large`
//! before connecting upstream when Content-Length says so; a chunked body is cut off as it
//! crosses the limit (the gateway's body filter enforces `ctx.body_limit`).

use super::{phase, Build, Hooks, Outcome, Reply};
use crate::config::units::ByteSize;
use crate::ctx::RequestCtx;
use pingora::proxy::Session;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    allowed_payload_size: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allowed_payload_size: ByteSize(1024 * 1024),
        }
    }
}

#[derive(Debug)]
pub struct RequestSizeLimiting {
    pub limit: u64,
}

impl Hooks for RequestSizeLimiting {
    type State = ();
    const PHASES: u32 = phase::REQUEST;

    type Config = Config;

    fn build(_: Build<'_, '_>, cfg: Config) -> Option<Self> {
        Some(RequestSizeLimiting {
            limit: cfg.allowed_payload_size.0,
        })
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        ctx.body_limit = ctx.body_limit.min(self.limit);
        // Content-Length was checked to be plain digits in early_request_filter.
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(n) if n > self.limit => Outcome::Respond(Reply::error(413)),
            _ => Outcome::Continue,
        }
    }
}
