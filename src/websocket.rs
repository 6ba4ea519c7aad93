//! Protocol switches (WebSocket): the upstream's `101 Switching Protocols` is checked in
//! `upstream_response_filter`, before it reaches the client or Pingora turns the connection
//! into a tunnel.
//!
//! **Why.** Once a 101 goes to the client, Pingora pipes bytes both ways with no further
//! parsing: whatever the client sends next reaches the upstream without routing, auth or
//! header cleaning. Pingora switches on the status alone (any 101 to a request with
//! `Upgrade`), so an upstream that answers a bare 101 (a misbehaving app, a path that echoes
//! a status, a confused intermediary) would open such a tunnel. A 101 is passed on only when
//! it completes the handshake the client asked for (RFC 9110 section 7.8, RFC 6455 section 4.2.2):
//! - the request carried `Upgrade`, and the answer's `Upgrade` names one of its protocols;
//! - the answer's `Connection` has the `upgrade` option;
//! - for `websocket`, `Sec-WebSocket-Accept` is exactly
//!   `base64(SHA-1(Sec-WebSocket-Key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))` for the
//!   client's key (SHA-1 from aws-lc, already linked for TLS and JWT).
//!
//! Anything else is refused with the gateway's JSON 502 and the connection closed: no 101,
//! no tunnel. Only a 101 pays for the check; other answers cost one status comparison.
//!
//! **Idle tunnels.** A WebSocket may stay silent far longer than a response may take to
//! start (`timeouts.read`) or a request body may pause (`server.body_timeout`). The route's
//! `websocket_idle_timeout` takes over both once the 101 passed the check: on the upstream
//! side through Pingora's HTTP/1 client session, which switches to
//! `PeerOptions::upgraded_read_timeout` when it reads a 101 (set in `upstream_peer`, a
//! patch of the vendored pingora-core), on the client side by the downstream session's read
//! timeout, set here in `upstream_response_filter`. Until the 101, `timeouts.read` applies
//! as to any request; a request that is not switched never sees the idle timeout.

use crate::config::diag::Compiler;
use crate::config::raw::RawRoute;
use crate::ctx::RequestCtx;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use std::time::Duration;

/// Longest `websocket_idle_timeout` accepted.
const MAX_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value that answers `key`.
pub fn accept_for(key: &[u8]) -> String {
    use aws_lc_rs::digest;
    use base64::Engine;
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WEBSOCKET_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// The comma-separated elements of every line of `name`, trimmed, empty ones skipped.
fn elements<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> impl Iterator<Item = &'a [u8]> {
    h.get_all(name).iter().flat_map(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
    })
}

/// Why the 101 `resp` to `req` does not complete the requested switch (`None`: it does).
pub fn invalid_switch(req: &RequestHeader, resp: &ResponseHeader) -> Option<&'static str> {
    let mut chosen = elements(&resp.headers, &UPGRADE);
    let Some(protocol) = chosen.next() else {
        return Some("101 without Upgrade");
    };
    if chosen.next().is_some() {
        return Some("101 naming several protocols");
    }
    if !elements(&req.headers, &UPGRADE).any(|p| p.eq_ignore_ascii_case(protocol)) {
        return Some("101 to a protocol the client did not ask for");
    }
    if !elements(&resp.headers, &CONNECTION).any(|o| o.eq_ignore_ascii_case(b"upgrade")) {
        return Some("101 without Connection: upgrade");
    }
    if protocol.eq_ignore_ascii_case(b"websocket") {
        let mut keys = req.headers.get_all(SEC_WEBSOCKET_KEY).iter();
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return Some("websocket 101 to a request without one Sec-WebSocket-Key");
        };
        let mut accepts = resp.headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
        let (Some(accept), None) = (accepts.next(), accepts.next()) else {
            return Some("websocket 101 without one Sec-WebSocket-Accept");
        };
        if accept.as_bytes().trim_ascii() != accept_for(key.as_bytes().trim_ascii()).as_bytes() {
            return Some("websocket 101 with a wrong Sec-WebSocket-Accept");
        }
    }
    None
}

/// `upstream_response_filter`: a 101 that does not complete the client's handshake becomes
/// the gateway's 502 (see the module doc). `req` is the client's request head.
pub fn check_switch(req: &RequestHeader, resp: &ResponseHeader) -> Result<()> {
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    match invalid_switch(req, resp) {
        None => Ok(()),
        Some(why) => Error::e_explain(
            ErrorType::HTTPStatus(502),
            format!("upstream protocol switch refused: {why}"),
        ),
    }
}

/// `upstream_response_filter`: [`check_switch`], and for a switch that passed it the
/// client side of the tunnel gets the route's idle timeout (the upstream side switched in
/// Pingora's client session when it read the 101).
pub fn on_response(session: &mut Session, resp: &ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    check_switch(session.req_header(), resp)?;
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        if let Some(r) = ctx.route() {
            session.set_read_timeout(Some(r.websocket_idle_timeout));
        }
    }
    Ok(())
}

/// An error that ended an open tunnel by its idle timeout: the tunnel's normal end, neither
/// a target failure nor worth an error line.
#[inline]
pub fn idle_end(ctx: &RequestCtx, e: &Error) -> bool {
    ctx.upstream_status == Some(101)
        && matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        )
}

/// Compiles `routes[i].websocket_idle_timeout` (`p`: the route's YAML path).
pub fn compile_idle_timeout(c: &mut Compiler, p: &str, r: &RawRoute) -> Duration {
    let d = r.websocket_idle_timeout.0;
    if d.is_zero() {
        c.error(
            &format!("{p}.websocket_idle_timeout"),
            "must be greater than 0",
        );
    } else if d > MAX_IDLE {
        c.error(&format!("{p}.websocket_idle_timeout"), "must be at most 7d");
    }
    d.clamp(Duration::from_millis(1), MAX_IDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(101, None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    /// RFC 6455 section 1.3's example.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn rfc_6455_example() {
        assert_eq!(accept_for(KEY.as_bytes()), ACCEPT);
    }

    #[test]
    fn only_a_complete_handshake_switches() {
        let ws = req(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
        ]);
        let good = [
            ("Upgrade", "WebSocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Accept", ACCEPT),
        ];
        assert_eq!(invalid_switch(&ws, &resp(&good)), None);
        assert!(check_switch(&ws, &resp(&good)).is_ok());
        for (bad, why) in [
            (&[][..], "bare"),
            (&good[1..], "no Upgrade"),
            (&[good[0], good[2]][..], "no Connection"),
            (&good[..2], "no accept"),
            (
                &[good[0], good[1], ("Sec-WebSocket-Accept", "AAAA")][..],
                "wrong accept",
            ),
            (
                &[("Upgrade", "h2c"), good[1], good[2]][..],
                "other protocol",
            ),
            (
                &[("Upgrade", "websocket, h2c"), good[1], good[2]][..],
                "two protocols",
            ),
            (
                &[good[0], good[1], good[2], ("Sec-WebSocket-Accept", ACCEPT)][..],
                "two accepts",
            ),
        ] {
            assert!(invalid_switch(&ws, &resp(bad)).is_some(), "{why}");
            let e = check_switch(&ws, &resp(bad)).unwrap_err();
            assert_eq!(e.etype(), &ErrorType::HTTPStatus(502), "{why}");
        }
        // A 101 to a request that asked for no switch at all.
        let plain = req(&[]);
        assert!(invalid_switch(&plain, &resp(&good)).is_some());
        // A websocket 101 needs the client's key.
        let keyless = req(&[("Upgrade", "websocket"), ("Connection", "Upgrade")]);
        assert!(invalid_switch(&keyless, &resp(&good)).is_some());
        // Other answers are not checked.
        let ok = ResponseHeader::build(200, None).unwrap();
        assert!(check_switch(&plain, &ok).is_ok());
    }
}
