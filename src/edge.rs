//! Downstream connection guard, in front of Pingora's HTTP app (the accept path, before any
//! `ProxyHttp` phase runs):
//!
//! - `server.header_timeout`: the whole request head must arrive within it. Pingora only has a
//!   per-read timeout, so a slowloris client trickling one byte at a time would hold a
//!   connection for ever; here the stream is wrapped and reads fail once the deadline passes
//!   while a head is incomplete. The clock starts at accept, and on a keep-alive connection
//!   with the first byte of the next request (idle time is `keepalive_timeout`'s business).
//! - `server.max_connections`: connections beyond it are closed at once (logged, counted).
//! - `server.max_requests_per_connection`: Pingora's `keepalive_request_limit`.
//! - Chunk extensions (`5;name=value`) are refused: Pingora's parser accepts and drops them,
//!   so the wrapper tracks chunked framing and overwrites the `;` with a byte that makes
//!   Pingora's own chunk parser fail (JSON 400, connection closed). See [`ChunkScan`].

use crate::runtime::Shared;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections refused because `server.max_connections` was reached (exported as a metric).
pub static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);
/// Connections closed because a request head missed `server.header_timeout`.
pub static HEADER_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
/// Requests refused because a chunk-size line carried an extension (`5;name=value`).
pub static CHUNK_EXTENSIONS: AtomicU64 = AtomicU64::new(0);

pub struct EdgeGuard<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    open: AtomicUsize,
    last_refusal_log: AtomicU64,
    /// TLS handshakes for connections on `server.tls.listen` ports ([`crate::tls`]).
    tls: Option<crate::tls::Terminator>,
}

impl<A> EdgeGuard<A> {
    pub fn new(inner: A, shared: Arc<Shared>) -> Self {
        EdgeGuard {
            inner: Arc::new(inner),
            shared,
            open: AtomicUsize::new(0),
            last_refusal_log: AtomicU64::new(0),
            tls: None,
        }
    }

    /// Terminates TLS on the terminator's ports before anything else reads the connection.
    pub fn with_tls(mut self, tls: Option<crate::tls::Terminator>) -> Self {
        self.tls = tls;
        self
    }
}

struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A> ServerApp for EdgeGuard<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (max, header_timeout) = {
            let rt = self.shared.snapshot();
            (rt.server.max_connections, rt.server.header_timeout)
        };
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let _open = OpenGuard(&self.open);
        if max > 0 && n > max {
            CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
            // One line per second at most: a flood must not flood the log too.
            let now = crate::upstream::now_ms() / 1000;
            if self.last_refusal_log.swap(now, Ordering::Relaxed) != now {
                tracing::warn!(
                    open = n - 1,
                    max,
                    "server.max_connections reached: closing new connections"
                );
            }
            return None;
        }
        // After max_connections (a refused connection costs no handshake), before the head
        // deadline (which reads the decrypted bytes; the handshake has its own limit).
        let stream = match &self.tls {
            Some(t) => t.accept(stream, header_timeout).await?,
            None => stream,
        };
        // HTTP/2 (ALPN h2) frames are binary and multiplexed: there is no HTTP/1 head to
        // scan for, so the deadline wrapper applies to HTTP/1 connections only.
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(HeadDeadline::new(stream, header_timeout))
        };
        self.inner.process_new(stream, shutdown).await;
        // The guarded stream is never handed back for reuse outside this app.
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: the deadline is armed.
    Head,
    /// Head complete: body and response, no head deadline.
    Body,
    /// Response written; the next byte read starts a new head.
    Idle,
    /// After `101 Switching Protocols` (WebSocket): opaque bytes, never a head again.
    Tunnel,
}

/// The phase after writing `data` in `phase`: a response going out means the next bytes
/// read begin a new request, unless it switched protocols.
fn after_write(phase: Phase, data: &[u8]) -> Phase {
    match phase {
        Phase::Body if data.starts_with(b"HTTP/1.1 101") || data.starts_with(b"HTTP/1.0 101") => {
            Phase::Tunnel
        }
        // `100 Continue` (and other interim answers) come before the request body: the
        // body still follows and must not be scanned as a new head.
        Phase::Body if data.starts_with(b"HTTP/1.1 1") || data.starts_with(b"HTTP/1.0 1") => {
            Phase::Body
        }
        Phase::Body => Phase::Idle,
        p => p,
    }
}

/// A stream whose reads fail once a request head takes longer than `timeout`, and which
/// poisons chunk extensions (see [`ChunkScan`]).
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Newlines seen in a row (CR ignored) while scanning for the end of the head.
    newlines: u8,
    /// Matching `transfer-encoding:` at the start of a head line: bytes matched so far.
    te_match: Option<u8>,
    /// The current head carries a Transfer-Encoding header (only `chunked` survives the
    /// strict framing check, so its body is chunked).
    te_seen: bool,
    /// Chunk framing of the current body, when it is chunked.
    chunks: Option<ChunkScan>,
}

const TE_NAME: &[u8] = b"transfer-encoding:";

/// Byte written over the `;` that starts a chunk extension: not a hex digit, whitespace,
/// `;`, CR or LF, so Pingora's chunk-size parser (httparse) fails with INVALID_CHUNK and the
/// request gets the JSON 400 and a closed connection, like any malformed chunk size.
const POISON: u8 = b'!';

/// Tracks RFC 9112 chunked framing over the raw body bytes, exactly enough to know which
/// bytes are chunk-size lines. Pingora's parser accepts and discards chunk extensions
/// (`5;name=value`); the issue asks for them to be refused like other ambiguous framing
/// (parsers disagree on them: a classic smuggling vector). The scanner never changes a
/// valid body: it only touches a `;` in a chunk-size line. On anything it does not expect
/// it stops scanning, since Pingora refuses such a body by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkScan {
    /// In a chunk-size line: the size so far, whether a hex digit was seen.
    Size(u64, bool),
    /// Whitespace after the size (BWS before a `;` or the line end).
    SizeWs(u64),
    /// After the size line's CR.
    SizeLf(u64),
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After chunk data: expecting CR LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty line. `true` at a line start.
    Trailer(bool),
    TrailerLf(bool),
    /// Body complete, or scanning abandoned.
    Done,
}

impl ChunkScan {
    fn start() -> Self {
        ChunkScan::Size(0, false)
    }

    /// Advance over `bytes`, poisoning any chunk extension in place. Returns how many
    /// extensions were poisoned.
    fn scan(&mut self, bytes: &mut [u8]) -> usize {
        let mut poisoned = 0;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                ChunkScan::Size(n, digits) => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        match n.checked_mul(16).and_then(|v| v.checked_add(d)) {
                            Some(v) => ChunkScan::Size(v, true),
                            // Overlong: Pingora refuses it.
                            None => ChunkScan::Done,
                        }
                    }
                    b';' if digits => {
                        bytes[i] = POISON;
                        poisoned += 1;
                        ChunkScan::Done
                    }
                    b' ' | b'\t' if digits => ChunkScan::SizeWs(n),
                    b'\r' if digits => ChunkScan::SizeLf(n),
                    b'\n' if digits => Self::after_size(n),
                    _ => ChunkScan::Done,
                },
                ChunkScan::SizeWs(n) => match b {
                    b' ' | b'\t' => ChunkScan::SizeWs(n),
                    b';' => {
                        bytes[i] = POISON;
                        poisoned += 1;
                        ChunkScan::Done
                    }
                    b'\r' => ChunkScan::SizeLf(n),
                    b'\n' => Self::after_size(n),
                    _ => ChunkScan::Done,
                },
                ChunkScan::SizeLf(n) => match b {
                    b'\n' => Self::after_size(n),
                    _ => ChunkScan::Done,
                },
                ChunkScan::Data(left) => {
                    // Skip the data in one step: it is never inspected.
                    let avail = (bytes.len() - i) as u64;
                    if avail >= left {
                        i += left as usize;
                        *self = ChunkScan::DataCr;
                        continue;
                    }
                    i = bytes.len();
                    *self = ChunkScan::Data(left - avail);
                    continue;
                }
                ChunkScan::DataCr => match b {
                    b'\r' => ChunkScan::DataLf,
                    b'\n' => ChunkScan::start(),
                    _ => ChunkScan::Done,
                },
                ChunkScan::DataLf => match b {
                    b'\n' => ChunkScan::start(),
                    _ => ChunkScan::Done,
                },
                ChunkScan::Trailer(line_start) => match b {
                    b'\r' => ChunkScan::TrailerLf(line_start),
                    b'\n' if line_start => ChunkScan::Done,
                    b'\n' => ChunkScan::Trailer(true),
                    _ => ChunkScan::Trailer(false),
                },
                ChunkScan::TrailerLf(line_start) => match b {
                    b'\n' if line_start => ChunkScan::Done,
                    b'\n' => ChunkScan::Trailer(true),
                    _ => ChunkScan::Done,
                },
                ChunkScan::Done => return poisoned,
            };
            i += 1;
        }
        poisoned
    }

    fn after_size(n: u64) -> Self {
        if n == 0 {
            ChunkScan::Trailer(true)
        } else {
            ChunkScan::Data(n)
        }
    }
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("phase", &self.phase)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HeadDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        let mut s = HeadDeadline {
            inner,
            timeout,
            phase: Phase::Idle,
            sleep: None,
            newlines: 0,
            te_match: None,
            te_seen: false,
            chunks: None,
        };
        // A new connection owes its first head from the moment it is accepted.
        s.arm();
        s
    }

    fn arm(&mut self) {
        self.phase = Phase::Head;
        self.newlines = 0;
        // The request line is not a header line; matching starts after its LF.
        self.te_match = None;
        self.te_seen = false;
        self.chunks = None;
        if !self.timeout.is_zero() {
            self.sleep = Some(Box::pin(tokio::time::sleep_until(
                Instant::now() + self.timeout,
            )));
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Head {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    HEADER_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not received within server.header_timeout",
                    )));
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let filled = buf.filled().len();
            if filled > before {
                if this.phase == Phase::Idle {
                    this.arm();
                }
                let mut body_from = before;
                if this.phase == Phase::Head {
                    let new = &buf.filled()[before..filled];
                    let mut nl = this.newlines;
                    let mut te = this.te_match;
                    let mut done = None;
                    for (i, &b) in new.iter().enumerate() {
                        match b {
                            b'\n' => {
                                nl += 1;
                                te = Some(0);
                                if nl == 2 {
                                    done = Some(i + 1);
                                    break;
                                }
                            }
                            b'\r' => {}
                            _ => {
                                nl = 0;
                                te = match te {
                                    Some(k) if usize::from(k) < TE_NAME.len() => {
                                        if b.to_ascii_lowercase() == TE_NAME[usize::from(k)] {
                                            if usize::from(k) + 1 == TE_NAME.len() {
                                                this.te_seen = true;
                                                None
                                            } else {
                                                Some(k + 1)
                                            }
                                        } else {
                                            None
                                        }
                                    }
                                    _ => None,
                                };
                            }
                        }
                    }
                    if let Some(end) = done {
                        this.phase = Phase::Body;
                        this.sleep = None;
                        this.newlines = 0;
                        this.te_match = None;
                        if this.te_seen {
                            this.chunks = Some(ChunkScan::start());
                        }
                        body_from = before + end;
                    } else {
                        this.newlines = nl;
                        this.te_match = te;
                        body_from = filled;
                    }
                }
                if this.phase == Phase::Body && body_from < filled {
                    if let Some(scan) = this.chunks.as_mut() {
                        if scan.scan(&mut buf.filled_mut()[body_from..filled]) > 0 {
                            CHUNK_EXTENSIONS.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        res
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.phase = after_write(self.phase, data);
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.phase = after_write(self.phase, first);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scan `input` split into pieces of `step` bytes; return the bytes as Pingora sees them.
    fn scan(input: &[u8], step: usize) -> (Vec<u8>, usize, ChunkScan) {
        let mut s = ChunkScan::start();
        let mut out = input.to_vec();
        let mut n = 0;
        for piece in out.chunks_mut(step) {
            n += s.scan(piece);
        }
        (out, n, s)
    }

    #[test]
    fn valid_bodies_pass_unchanged_in_any_split() {
        let bodies: [&[u8]; 4] = [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"4\r\na;b;\r\n1\r\n;\r\n0\r\nX-T: 1;2\r\n\r\n",
            b"A\r\n0123456789\r\n0\n\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
        ];
        for body in bodies {
            for step in 1..=body.len() {
                let (out, n, end) = scan(body, step);
                assert_eq!(out, body, "step {step}");
                assert_eq!(n, 0);
                assert_eq!(end, ChunkScan::Done, "{:?} step {step}", body);
            }
        }
    }

    #[test]
    fn extensions_are_poisoned_in_any_split() {
        let cases: [(&[u8], usize); 4] = [
            (b"5;a=b\r\nhello\r\n0\r\n\r\n", 1),
            (b"3\r\nabc\r\n2 ; x\r\nde\r\n0\r\n\r\n", 10),
            (b"0;last\r\n\r\n", 1),
            (b"1\r\n;\r\n0;e\r\n\r\n", 7),
        ];
        for (body, at) in cases {
            for step in 1..=body.len() {
                let (out, n, _) = scan(body, step);
                assert_eq!(n, 1, "{:?} step {step}", String::from_utf8_lossy(body));
                assert_eq!(out[at], POISON);
                let mut expect = body.to_vec();
                expect[at] = POISON;
                assert_eq!(out, expect, "only the ';' changes");
            }
        }
    }

    #[test]
    fn malformed_or_overlong_sizes_stop_scanning() {
        for body in [
            &b"0x10\r\n"[..],
            b"fffffffffffffffffffff\r\n",
            b";x\r\n",
            b"-1\r\n",
        ] {
            let (out, n, end) = scan(body, 3);
            assert_eq!(out, body, "untouched: Pingora refuses it itself");
            assert_eq!(n, 0);
            assert_eq!(end, ChunkScan::Done);
        }
    }

    #[test]
    fn fuzz_valid_encodings_are_never_changed() {
        // Any body chunked any way, with any trailer, delivered in any split, passes
        // byte for byte; arbitrary bytes never panic.
        bolero::check!()
            .with_iterations(2000)
            .with_type::<(Vec<Vec<u8>>, bool, u8)>()
            .for_each(|(chunks, trailer, step)| {
                let mut wire = Vec::new();
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    wire.extend_from_slice(c);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n");
                if *trailer {
                    wire.extend_from_slice(b"X-Sum: a;b=c\r\n");
                }
                wire.extend_from_slice(b"\r\n");
                let (out, n, end) = scan(&wire, usize::from(*step).max(1));
                assert_eq!(out, wire);
                assert_eq!(n, 0);
                assert_eq!(end, ChunkScan::Done);
            });
        bolero::check!()
            .with_iterations(2000)
            .for_each(|bytes: &[u8]| {
                let _ = scan(bytes, 7);
            });
    }

    #[test]
    fn interim_responses_keep_the_body_phase() {
        assert_eq!(
            after_write(Phase::Body, b"HTTP/1.1 100 Continue\r\n\r\n"),
            Phase::Body
        );
        assert_eq!(
            after_write(Phase::Body, b"HTTP/1.1 101 Switching"),
            Phase::Tunnel
        );
        assert_eq!(
            after_write(Phase::Body, b"HTTP/1.1 200 OK\r\n"),
            Phase::Idle
        );
    }
}
