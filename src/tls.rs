//! `server.tls.min_version: "1.3"` for Pingora's rustls listeners.
//!
//! Pingora 0.9.1's rustls `TlsSettings::build` hard-codes TLS 1.2 and 1.3 and offers no way
//! to pass a protocol list, so the floor is enforced one step earlier, in the listener's
//! pre-TLS callback (runs on the raw TCP stream before the handshake): the ClientHello is
//! read, checked for TLS 1.3 in its `supported_versions` extension, and put back with
//! `rewind` for the real handshake. A client that does not offer TLS 1.3 has its connection
//! closed before any handshake; one that offers it negotiates 1.3 (rustls prefers it).
//! `"1.2"` (the default) needs nothing: rustls never speaks below 1.2.

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::prelude::*;
use pingora::protocols::l4::stream::Stream as L4Stream;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// TLS record type of a handshake message.
const HANDSHAKE: u8 = 22;
/// Handshake message type ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension `supported_versions` (RFC 8446 §4.2.1).
const SUPPORTED_VERSIONS: u16 = 43;
const TLS13: u16 = 0x0304;
/// Largest TLS record payload (RFC 8446 §5.1) plus room for expansion.
const MAX_RECORD: usize = 16 * 1024 + 256;

/// Refuses connections whose ClientHello does not offer TLS 1.3.
pub struct RequireTls13 {
    /// How long the ClientHello may take to arrive (`server.header_timeout`).
    pub timeout: Duration,
}

#[async_trait]
impl PreTlsProcess for RequireTls13 {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let read = async {
            let mut head = [0u8; 5];
            stream.read_exact(&mut head).await.ok()?;
            let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
            if head[0] != HANDSHAKE || len == 0 || len > MAX_RECORD {
                return None;
            }
            let mut record = vec![0u8; 5 + len];
            record[..5].copy_from_slice(&head);
            stream.read_exact(&mut record[5..]).await.ok()?;
            Some(record)
        };
        let record = match tokio::time::timeout(self.timeout, read).await {
            Ok(Some(r)) => r,
            _ => {
                return Error::e_explain(
                    ErrorType::TLSHandshakeTimedout,
                    "no TLS ClientHello within header_timeout",
                )
            }
        };
        let offers_13 = offers_tls13(&record[5..]);
        // Put the bytes back for the real handshake.
        stream.rewind(&record);
        if offers_13 {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::TLSHandshakeFailure,
                "client does not offer TLS 1.3 (server.tls.min_version is 1.3)",
            )
        }
    }
}

/// Whether a ClientHello (the handshake message, without the record header) lists TLS 1.3
/// in `supported_versions`. A hello that does not parse counts as not offering it.
pub fn offers_tls13(msg: &[u8]) -> bool {
    parse(msg).unwrap_or(false)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

fn parse(msg: &[u8]) -> Option<bool> {
    let mut r = Reader(msg);
    if r.u8()? != usize::from(CLIENT_HELLO) {
        return None;
    }
    let len = r.take(3)?;
    let len = (usize::from(len[0]) << 16) | (usize::from(len[1]) << 8) | usize::from(len[2]);
    // A hello split over several records is cut here; what we have must hold the extension.
    let body = &r.0[..len.min(r.0.len())];
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    let n = r.u16()?;
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let typ = ext.u16()?;
        let n = ext.u16()?;
        let data = ext.take(n)?;
        if typ == usize::from(SUPPORTED_VERSIONS) {
            let mut v = Reader(data);
            let n = v.u8()?;
            let list = v.take(n)?;
            return Some(
                list.chunks_exact(2)
                    .any(|c| u16::from_be_bytes([c[0], c[1]]) == TLS13),
            );
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![CLIENT_HELLO];
        let l = body.len() as u32;
        msg.extend(&l.to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    #[test]
    fn finds_tls13_in_supported_versions() {
        // server_name (0) then supported_versions (43) with 1.3 and 1.2
        let ext = [0, 0, 0, 0, 0, 43, 0, 5, 4, 0x03, 0x04, 0x03, 0x03];
        assert!(offers_tls13(&hello(&ext)));
        let only12 = [0, 43, 0, 3, 2, 0x03, 0x03];
        assert!(!offers_tls13(&hello(&only12)));
        assert!(!offers_tls13(&hello(&[])));
        assert!(!offers_tls13(b"\x01\x00"));
        assert!(!offers_tls13(b"GET / HTTP/1.1\r\n"));
    }
}
