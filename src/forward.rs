//! Upstream side of a request: `upstream_peer` (target selection), `upstream_request_filter`
//! (path, Host and X-Forwarded-* headers), the retry policy (`fail_to_connect`,
//! `error_while_proxy`, upstream 502/503/504 turned into retryable errors in
//! `upstream_response_filter`) and passive circuit breaking. [`crate::resilience`] has the
//! last word on every retry (route deadline, back-off, retry budget) and caps each attempt's
//! timeouts to the route's deadline.

use crate::ctx::RequestCtx;
use crate::errors;
use crate::router;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::time::Duration;

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Picks the target for this attempt and describes the connection to it.
pub fn peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    ctx.inflight = None;
    let Some(up) = ctx.upstream().cloned() else {
        return Err(errors::status_error(404, "no route"));
    };
    let set = ctx.targets.get_or_insert_with(|| up.targets());
    let Some(sel) = set.select(&up.cursor, ctx.client_ip, ctx.tried) else {
        return Err(errors::status_error(503, "no healthy target"));
    };
    ctx.attempts += 1;
    if sel.index < 64 {
        ctx.tried |= 1 << sel.index;
    }
    ctx.target = Some(sel.index);
    ctx.inflight = Some(set.track(sel));
    let mut peer = up.transport.peer(&set.targets[sel.index]);
    let o = &mut peer.options;
    o.connection_timeout = Some(up.timeouts.connect);
    o.read_timeout = Some(up.timeouts.read);
    o.write_timeout = Some(up.timeouts.write);
    o.idle_timeout = Some(if up.keepalive == 0 {
        Duration::ZERO
    } else {
        UPSTREAM_IDLE
    });
    // Read timeout of a WebSocket tunnel once the upstream switched (see crate::websocket).
    peer.options.upgraded_read_timeout = ctx.route().map(|r| r.websocket_idle_timeout);
    crate::resilience::cap_timeouts(&mut peer, ctx);
    Ok(Box::new(peer))
}

/// Path rewrite, Host and forwarding headers for the upstream request.
pub fn rewrite_request(session: &Session, req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    // Re-framed by the gateway: a chunked body never goes upstream with a Content-Length too.
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        req.remove_header(&http::header::CONTENT_LENGTH);
    }
    // Identity headers are the gateway's to set (key-auth, jwt): a client's own copies never
    // reach an upstream, on any route.
    req.remove_header(&crate::owned_headers::CONSUMER_HEADER);
    req.remove_header(&crate::owned_headers::ROLES_HEADER);
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    if route.strip_path && ctx.prefix_len > 0 {
        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let new = router::strip_prefix(pq, ctx.prefix_len);
        let uri = http::Uri::builder()
            .path_and_query(new)
            .build()
            .map_err(|_| errors::status_error(400, "bad path after strip_path"))?;
        req.set_uri(uri);
    }
    // The client's Host, before it is replaced: a trusted proxy's own X-Forwarded-Host
    // (kept by owned_headers) wins; anyone else's was dropped before routing.
    if route.forwarded_host && !req.headers.contains_key("x-forwarded-host") {
        if let Some(h) = req.headers.get(http::header::HOST).cloned() {
            req.insert_header("x-forwarded-host", h)?;
        }
    }
    if !route.preserve_host {
        if let Some(t) = ctx.selected_target() {
            req.insert_header(http::header::HOST, t.host.as_str())?;
        }
    }
    let peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let mut peer_value = None;
    if let Some(peer_ip) = peer_ip {
        let mut buf = IpText::default();
        let peer_text = buf.format(peer_ip);
        // Behind a trusted proxy the chain is extended (every line, joined in order: one
        // list, as the gateway read it for the client IP); otherwise whatever the client
        // sent is dropped, so an upstream can never be fooled by a spoofed chain.
        let prev = req.headers.get_all("x-forwarded-for");
        let xff = match (ctx.peer_trusted, prev.iter().next().is_some()) {
            (true, true) => {
                let mut v = Vec::with_capacity(64);
                for line in prev.iter() {
                    v.extend_from_slice(line.as_bytes());
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(peer_text);
                http::HeaderValue::from_bytes(&v)
                    .map_err(|_| errors::status_error(400, "bad x-forwarded-for"))?
            }
            _ => {
                let v = http::HeaderValue::from_bytes(peer_text)
                    .map_err(|_| errors::status_error(400, "bad address"))?;
                peer_value = Some(v.clone());
                v
            }
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    if let Some(ip) = ctx.client_ip {
        // The usual case (no trusted proxy): the client is the peer, whose text is made.
        let v = match peer_value {
            Some(v) if Some(ip) == peer_ip => v,
            _ => http::HeaderValue::from_bytes(IpText::default().format(ip))
                .map_err(|_| errors::status_error(400, "bad address"))?,
        };
        req.insert_header("x-real-ip", v)?;
    }
    // One value: a trusted proxy's right-most one (what https-only routes and forward-auth
    // went by), else the gateway's own; the upstream never sees a list to read differently.
    let proxy_proto = crate::request::forwarded_proto(&req.headers)
        .filter(|_| ctx.peer_trusted)
        .and_then(|v| http::HeaderValue::from_bytes(v).ok());
    let proto = match proxy_proto {
        Some(v) => v,
        None => {
            let tls = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .is_some();
            http::HeaderValue::from_static(if tls { "https" } else { "http" })
        }
    };
    req.insert_header("x-forwarded-proto", proto)?;
    Ok(())
}

fn record_failure(ctx: &RequestCtx) {
    let (Some(up), Some(t)) = (ctx.upstream(), ctx.selected_target()) else {
        return;
    };
    if let Some(p) = &up.passive {
        if t.state.record_failure(p) {
            crate::observe::metrics::circuit_ejection(&up.name, &t.addr);
            tracing::warn!(upstream = %up.name, target = %t.addr, "target ejected by passive circuit breaker");
        }
    }
}

/// More attempts allowed for this request (`retries` extra attempts after the first).
fn attempts_left(ctx: &RequestCtx) -> bool {
    ctx.upstream().is_some_and(|u| ctx.attempts <= u.retries)
}

fn retryable_method(session: &Session) -> bool {
    session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated()
}

/// Upstream answered 502/503/504 before anything went downstream: count it against the
/// target and, while attempts are left for an idempotent request, turn it into a retryable
/// error so Pingora asks `upstream_peer` for another target. The last attempt's answer goes
/// to the client as it is.
pub fn check_response(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let status = resp.status.as_u16();
    if !matches!(status, 502..=504) {
        return Ok(());
    }
    record_failure(ctx);
    if retryable_method(session) && attempts_left(ctx) && crate::resilience::allow_retry(ctx) {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(status),
            "upstream answered with a retryable status",
        );
        e.set_retry(true);
        return Err(e.into_up());
    }
    Ok(())
}

/// Connecting failed: nothing reached the upstream, so every method may retry.
pub fn on_connect_failure(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    if matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    ) {
        if let Some(up) = ctx.upstream() {
            if let Some(t) = ctx.selected_target() {
                crate::observe::metrics::upstream_tls_failure(&up.name, &t.addr);
                tracing::warn!(
                    upstream = %up.name,
                    target = %t.addr,
                    server_name = up.transport.server_name(t),
                    reason = crate::upstream::peer::handshake_reason(&e),
                    error = %e,
                    "TLS handshake with upstream target failed"
                );
            }
        }
    }
    record_failure(ctx);
    crate::resilience::note_error(ctx, &e);
    e.set_retry(attempts_left(ctx) && crate::resilience::allow_retry(ctx));
    e
}

/// An error after the connection was made.
pub fn on_proxy_error(session: &Session, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    if matches!(e.etype(), ErrorType::HTTPStatus(_)) && e.retry() {
        // Our own retryable-status error: already counted and decided.
        return e;
    }
    if crate::websocket::idle_end(ctx, &e) {
        // A tunnel closed after its idle timeout: its normal end.
        e.set_retry(false);
        return e;
    }
    if e.esource() == &ErrorSource::Upstream {
        record_failure(ctx);
    }
    crate::resilience::note_error(ctx, &e);
    let can = e.esource() == &ErrorSource::Upstream
        && retryable_method(session)
        && session.response_written().is_none()
        && attempts_left(ctx)
        && crate::resilience::allow_retry(ctx);
    e.set_retry(can);
    e
}

/// Status and contract code for a request that failed (0: the client is gone, nothing to
/// write).
pub fn failure_status(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(s) => *s,
        ConnectTimedout => 504,
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => 504,
        ReadTimedout => 408,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// An IP address formatted on the stack (at most 45 bytes for IPv6), so the forwarding
/// headers cost no temporary `String` per request.
struct IpText {
    buf: [u8; 48],
}

impl Default for IpText {
    fn default() -> Self {
        IpText { buf: [0; 48] }
    }
}

impl IpText {
    fn format(&mut self, ip: std::net::IpAddr) -> &[u8] {
        use std::io::Write;
        let mut cur = std::io::Cursor::new(&mut self.buf[..]);
        // 48 bytes always hold an address: the write cannot fail.
        let _ = write!(cur, "{ip}");
        let n = cur.position() as usize;
        &self.buf[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::IpText;

    #[test]
    fn ip_text() {
        let v6: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(IpText::default().format(v6), v6.to_string().as_bytes());
        let v4: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(IpText::default().format(v4), b"203.0.113.9");
    }
}
