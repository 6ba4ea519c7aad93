//! `security-headers` (response_filter and every gateway-made answer): adds the configured
//! headers to every response and, with `hide_server`, removes the upstream's `Server` and
//! `X-Powered-By`.

use super::{phase, Answer, Build, Hooks};
use crate::ctx::RequestCtx;
use http::{HeaderName, HeaderValue};
use pingora::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    headers: BTreeMap<String, String>,
    hide_server: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            headers: BTreeMap::from([
                ("X-Content-Type-Options".into(), "nosniff".into()),
                ("X-Frame-Options".into(), "DENY".into()),
            ]),
            hide_server: true,
        }
    }
}

#[derive(Debug)]
pub struct SecurityHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
    hide_server: bool,
}

impl Hooks for SecurityHeaders {
    type State = ();
    const PHASES: u32 = phase::RESPONSE;

    type Config = Config;

    fn build(Build { c, path, .. }: Build<'_, '_>, cfg: Config) -> Option<Self> {
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => c.error(
                    &format!("{path}.config.headers.{k}"),
                    "invalid header name or value",
                ),
            }
        }
        Some(SecurityHeaders {
            headers,
            hide_server: cfg.hide_server,
        })
    }
    fn response(&self, resp: &mut Answer<'_>, _ctx: &mut RequestCtx) -> Result<()> {
        if self.hide_server {
            resp.remove_header(&http::header::SERVER);
            resp.remove_header("x-powered-by");
        }
        for (n, v) in &self.headers {
            resp.insert_header(n.clone(), v.clone())?;
        }
        Ok(())
    }
}
