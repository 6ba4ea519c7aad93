//! The gateway's own responses: the contract's JSON error
//! `{"error": code, "message": text, "request_id": id}` with the right status, one
//! constructor per code. Upstream addresses and upstream error text never appear here.

use crate::ctx::RequestCtx;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;

/// An answer the gateway gives itself instead of proxying.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Contract error code; `None` for a non-error answer without body (CORS preflight).
    pub code: Option<&'static str>,
    pub message: Cow<'static, str>,
    /// Extra headers (`WWW-Authenticate`, `Retry-After`, CORS preflight headers...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    /// The contract's JSON error with its default message for `status`.
    pub fn error(status: u16) -> Reply {
        let (code, message) = code_for(status);
        Reply::error_with(status, code, message)
    }

    pub fn error_with(
        status: u16,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply {
            status,
            code: Some(code),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// The contract's code and default message for a status the gateway answers itself.
pub fn code_for(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("bad_request", "The request is malformed"),
        401 => ("unauthorized", "Authentication is required"),
        403 => ("forbidden", "Access is not allowed"),
        404 => ("not_found", "No route matches this request"),
        405 => ("method_not_allowed", "Method not allowed"),
        408 => ("request_timeout", "The request took too long to arrive"),
        413 => ("payload_too_large", "The request body is too large"),
        414 => ("uri_too_long", "The request target is too long"),
        429 => ("too_many_requests", "Too many requests"),
        431 => (
            "request_header_fields_too_large",
            "The request headers are too large",
        ),
        502 => ("bad_gateway", "The upstream service failed to answer"),
        503 => (
            "service_unavailable",
            "No healthy upstream target is available",
        ),
        504 => (
            "gateway_timeout",
            "The upstream service did not answer in time",
        ),
        _ => (
            "internal_error",
            "The gateway failed to process the request",
        ),
    }
}

/// The JSON body. Codes and messages are ours; the request id is escaped anyway.
pub fn body(code: &str, message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    Bytes::from(v.to_string())
}

/// Writes a gateway-made answer: the contract's JSON error (or an empty body for a
/// non-error reply such as a CORS preflight), decorated by the request's plugin chain
/// (security headers, CORS, correlation id). `close`: ask the client to close the
/// connection (framing or size refusals, where the rest of the bytes cannot be trusted).
pub async fn respond(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reply: &Reply,
    close: bool,
) -> Result<()> {
    // The access log names the contract code of the refusal (`missing_api_key`, ...).
    ctx.error_code = reply.code.or(ctx.error_code);
    // A plugin (error-responses) may have a body of its own for this status.
    let custom = reply
        .code
        .and_then(|code| ctx.chain().gateway_body(ctx, reply.status, code));
    let (body, content_type) = match custom {
        Some((b, ct)) => (Some(b), Some(ct)),
        None => (
            reply
                .code
                .map(|code| body(code, &reply.message, &ctx.request_id)),
            None,
        ),
    };
    // A gRPC client gets its refusal as a gRPC status (HTTP 200, trailers-only).
    let grpc =
        reply.code.is_some() && reply.status >= 400 && crate::grpc::is_grpc(session.req_header());
    let (body, content_type) = if grpc {
        (None, None)
    } else {
        (body, content_type)
    };
    let mut h = ResponseHeader::build(
        if grpc { 200 } else { reply.status },
        Some(6 + reply.headers.len()),
    )?;
    if grpc {
        h.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
        h.insert_header(
            "grpc-status",
            crate::grpc::status_for(reply.status).to_string(),
        )?;
        let message = if reply.message.is_empty() {
            code_for(reply.status).1
        } else {
            &reply.message
        };
        h.insert_header("grpc-message", crate::grpc::encode_message(message))?;
    } else if let Some(ct) = content_type {
        h.insert_header(http::header::CONTENT_TYPE, ct)?;
    } else if body.is_some() {
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    h.insert_header(
        http::header::CONTENT_LENGTH,
        body.as_ref().map_or(0, |b| b.len()),
    )?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (n, v) in &reply.headers {
        h.append_header(n.clone(), v.clone())?;
    }
    // The chain decorates the answer: a refusal made before the plugins ran still gets
    // the request's trace (`before_answer`), then every response hook.
    let rt = ctx.rt.clone();
    let chain = ctx.chain_in(&rt);
    chain.before_answer(session, ctx);
    chain.response(&mut h, ctx, true)?;
    if close {
        h.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    let end = body.is_none();
    if end {
        if let pingora::protocols::http::ServerSession::H2(_) = session.as_mut() {
            // Pingora's proxy session ignores `end` for HTTP/2 and would leave the stream
            // open (reset by the drop after a failed proxy attempt): end it with the
            // HEADERS frame, which is also what a gRPC trailers-only answer is.
            let mut h = Box::new(h);
            session
                .downstream_modules_ctx
                .response_header_filter(&mut h, true)
                .await?;
            if let pingora::protocols::http::ServerSession::H2(s) = session.as_mut() {
                s.write_response_header(h, true)?;
            }
            return Ok(());
        }
    }
    session.write_response_header(Box::new(h), end).await?;
    if let Some(b) = body {
        session.write_response_body(Some(b), true).await?;
    }
    Ok(())
}

/// An error that makes Pingora answer with `status` through `fail_to_proxy`.
pub fn status_error(status: u16, context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(status), context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_contract_json() {
        let b = body("not_found", "No route", "abc");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "not_found");
        assert_eq!(v["message"], "No route");
        assert_eq!(v["request_id"], "abc");
    }
}
