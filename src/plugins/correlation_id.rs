//! `correlation-id` (request_filter, upstream_request_filter, response_filter): chooses the
//! header that carries the request id, sends the id upstream and echoes it to the client.
//! Every request has an id with or without this plugin (see `request::begin`); the plugin
//! only decides where it travels.

use super::{phase, Answer, Build, Hooks, Outcome};
use crate::ctx::RequestCtx;
use crate::request::valid_request_id;
use http::HeaderName;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    header_name: String,
    echo_downstream: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_name: "X-Request-ID".into(),
            echo_downstream: true,
        }
    }
}

#[derive(Debug)]
pub struct CorrelationId {
    header: HeaderName,
    echo: bool,
}

impl Hooks for CorrelationId {
    type State = ();
    const PHASES: u32 = phase::REQUEST | phase::UPSTREAM_REQUEST | phase::RESPONSE;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let Ok(header) = HeaderName::from_bytes(cfg.header_name.as_bytes()) else {
            c.error(&format!("{path}.config.header_name"), "invalid header name");
            return None;
        };
        Some(CorrelationId {
            header,
            echo: cfg.echo_downstream,
        })
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Outcome {
        // With a custom header name the incoming id is read from that header instead.
        if self.header != crate::request::REQUEST_ID_HEADER {
            if let Some(v) = session.req_header().headers.get(&self.header) {
                if valid_request_id(v.as_bytes()) {
                    ctx.request_id = String::from_utf8_lossy(v.as_bytes()).into_owned();
                }
            }
        }
        Outcome::Continue
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        req.insert_header(self.header.clone(), ctx.request_id.as_str())?;
        Ok(())
    }

    fn response(&self, resp: &mut Answer<'_>, ctx: &mut RequestCtx) -> Result<()> {
        if self.echo {
            resp.insert_header(self.header.clone(), ctx.request_id.as_str())?;
        }
        Ok(())
    }
}
