//! gRPC answers for the gateway's own refusals (used by [`crate::errors::respond`], in
//! whatever Pingora phase refused): a gRPC client reads `grpc-status`, not an HTTP status
//! with a JSON body, so a refused gRPC request gets HTTP 200 with a trailers-only answer
//! (one HEADERS frame ending the stream) carrying the mapped `grpc-status` and a
//! `grpc-message`.

use pingora::http::RequestHeader;

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
    fn statuses_and_messages() {
        assert_eq!(status_for(401), 16);
        assert_eq!(status_for(429), 8);
        assert_eq!(status_for(504), 4);
        assert_eq!(encode_message("50% off\n"), "50%25 off%0A");
    }
}
