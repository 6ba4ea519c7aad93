//! gRPC answers for the gateway's own refusals (used by [`crate::errors::respond`], in
//! whatever Pingora phase refused): a gRPC client reads `grpc-status`, not an HTTP status
//! with a JSON body, so a refused gRPC request gets HTTP 200 with a trailers-only answer
//! (one HEADERS frame ending the stream) carrying the mapped `grpc-status` and a
//! `grpc-message`.
//!
//! And the client's deadline (`upstream_peer`, first attempt): a gRPC request's
//! `grpc-timeout` bounds the upstream exchange like a shorter `routes[].timeout` would
//! ([`crate::resilience`] keeps whichever deadline comes first), so a call whose client has
//! given up is not waited for until `timeouts.read`; it ends with `DEADLINE_EXCEEDED`.

use crate::ctx::RequestCtx;
use pingora::http::RequestHeader;
use std::time::Duration;

/// A gRPC request: `content-type: application/grpc` or `application/grpc+proto` and the
/// like. gRPC-Web (`application/grpc-web*`) reads its status from the body and is left to
/// the JSON answer.
#[inline]
pub fn is_grpc(req: &RequestHeader) -> bool {
    let Some(ct) = req.headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    ct.len() >= 16
        && ct[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(ct.get(16), None | Some(b'+' | b';'))
}

/// `grpc-timeout` of a gRPC request: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`), as gRPC over HTTP/2 defines it. `None`: absent, not gRPC, or malformed (then the
/// route's own limits apply, as without the header).
pub fn client_timeout(req: &RequestHeader) -> Option<Duration> {
    let v = req.headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !is_grpc(req) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `upstream_peer`, before the first attempt: the client's `grpc-timeout` for
/// [`crate::resilience::before_attempt`]. One header lookup for other requests.
#[inline]
pub fn note_deadline(req: &RequestHeader, ctx: &mut RequestCtx) {
    if ctx.attempts == 0 {
        ctx.resilience.client_timeout = client_timeout(req);
    }
}

/// The gRPC status code for an HTTP status the gateway answers with.
pub fn status_for(http: u16) -> u8 {
    match http {
        // INTERNAL: the request itself could not be read as gRPC expects.
        400 | 413 | 414 | 431 => 13,
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 | 504 => 4,  // DEADLINE_EXCEEDED
        429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        500 => 13,       // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// `grpc-message`: percent-encoded as the gRPC spec asks (bytes outside printable ASCII and
/// `%` itself).
pub fn encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        r
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(is_grpc(&req("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(&req("application/grpc-web")));
        assert!(!is_grpc(&req("application/json")));
    }

    #[test]
    fn grpc_timeouts() {
        let with = |v: &str, ct: &str| {
            let mut r = req(ct);
            r.insert_header("grpc-timeout", v).unwrap();
            client_timeout(&r)
        };
        let g = "application/grpc";
        assert_eq!(with("300m", g), Some(Duration::from_millis(300)));
        assert_eq!(with("2S", g), Some(Duration::from_secs(2)));
        assert_eq!(with("1H", g), Some(Duration::from_secs(3600)));
        assert_eq!(with("5M", g), Some(Duration::from_secs(300)));
        assert_eq!(
            with("99999999u", g),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(with("10n", g), Some(Duration::from_nanos(10)));
        for bad in ["", "m", "123456789m", "10", "10x", "-1S", "1.5S", " 1S"] {
            assert_eq!(with(bad, g), None, "{bad:?}");
        }
        assert_eq!(with("300m", "application/json"), None);
        assert_eq!(client_timeout(&req(g)), None);
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(status_for(401), 16);
        assert_eq!(status_for(429), 8);
        assert_eq!(status_for(504), 4);
        assert_eq!(encode_message("50% off\n"), "50%25 off%0A");
    }
}
