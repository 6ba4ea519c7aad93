//! HTTP-01 answers: `GET /.well-known/acme-challenge/<token>` gets the token's key
//! authorization while its order is in progress.
//!
//! Pingora phase: `request_filter`, first thing after the health path, before routing and
//! every plugin (an auth plugin or an https-only route must not stand between the ACME
//! server and the answer). Only when `server.tls.acme` is set and only for tokens of this
//! gateway's orders: anything else under the prefix is routed as usual (a backend may run an
//! ACME client of its own).

use super::AcmeState;
use crate::ctx::RequestCtx;
use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Answers the request when it is an HTTP-01 validation of an order in progress.
pub async fn answer_challenge(
    session: &mut Session,
    ctx: &RequestCtx,
    state: &AcmeState,
) -> Result<bool> {
    if ctx.rt.server.tls.as_ref().is_none_or(|t| t.acme.is_none()) {
        return Ok(false);
    }
    let req = session.req_header();
    let Some(token) = req.uri.path().strip_prefix(PREFIX) else {
        return Ok(false);
    };
    let head = req.method == Method::HEAD;
    if req.method != Method::GET && !head {
        return Ok(false);
    }
    let Some(key_authorization) = state.challenge(token) else {
        return Ok(false);
    };
    tracing::info!(token, "acme: answering an http-01 validation");
    let body = Bytes::from(key_authorization);
    let mut h = ResponseHeader::build(200, Some(3))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/octet-stream")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(h), head).await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}
