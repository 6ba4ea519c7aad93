//! Downstream connection guard, in front of Pingora's HTTP app (the accept path, before any
//! `ProxyHttp` phase runs):
//!
//! - `server.header_timeout`: the whole request head must arrive within it. Pingora only has a
//!   per-read timeout, so a slowloris client trickling one byte at a time would hold a
//!   connection for ever; here the stream is wrapped and reads fail once the deadline passes
//!   while a head is incomplete. The clock starts at accept, and on a keep-alive connection
//!   with the first byte of the next request (idle time is `keepalive_timeout`'s business).
//!   With HTTP/1.1 pipelining the next requests arrive in the same reads: the wrapper follows
//!   the framing of every request (head, Content-Length or chunked body, next head) over the
//!   raw bytes, so each head has its deadline and each chunked body its scan.
//! - `server.flood.connections_per_ip_per_second`: a connection from an address over it is
//!   closed at once, before anything else (see [`crate::flood`]).
//! - `server.max_connections`: connections beyond it are closed at once (logged, counted).
//! - `server.max_requests_per_connection`: Pingora's `keepalive_request_limit`.
//! - Chunk extensions (`5;name=value`) are refused: Pingora's parser accepts and drops them,
//!   so the wrapper tracks chunked framing and overwrites the `;` with a byte that makes
//!   Pingora's own chunk parser fail (JSON 400, connection closed). See [`ChunkScan`].

use crate::app::Shared;
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

/// Registers the `downstream_*` counters above (read at scrape time; once, at startup).
pub fn register_metrics() {
    crate::observe::metrics::registry().on_scrape(|_, out| {
        use crate::observe::metrics::scraped_counter;
        scraped_counter(
            "downstream_connections_refused_total",
            "Connections closed at accept because server.max_connections was reached.",
            CONNECTIONS_REFUSED.load(Ordering::Relaxed),
            out,
        );
        scraped_counter(
            "downstream_header_timeouts_total",
            "Connections closed because a request head missed server.header_timeout.",
            HEADER_TIMEOUTS.load(Ordering::Relaxed),
            out,
        );
        scraped_counter(
            "downstream_chunk_extensions_refused_total",
            "Requests refused (400, connection closed) because a chunk-size line carried an extension.",
            CHUNK_EXTENSIONS.load(Ordering::Relaxed),
            out,
        );
    });
}

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
        // Every accepted connection counts as open until it ends, refused ones included (they
        // end at once). Here rather than in a wrapper app: each `ServerApp` layer boxes one
        // more future that a connection holds for its whole life.
        let _conn = crate::observe::metrics::ConnectionGuard::open();
        let (max, header_timeout, admitted) = {
            let rt = self.shared.snapshot();
            let flood = &rt.server.flood;
            // server.flood: first, before the connection costs a handshake or a slot.
            let admitted = flood.connections_per_ip_per_second == 0
                || match peer_ip(&stream) {
                    // A trusted proxy carries many clients' connections.
                    Some(ip) if !rt.server.trusted_proxies.iter().any(|n| n.contains(&ip)) => {
                        crate::flood::admit_connection(ip, flood.connections_per_ip_per_second)
                    }
                    _ => true,
                };
            (
                rt.server.max_connections,
                rt.server.header_timeout,
                admitted,
            )
        };
        if !admitted {
            return None;
        }
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let _open = OpenGuard(&self.open);
        if max > 0 && n > max {
            CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
            // One line per second at most: a flood must not flood the log too.
            let now = crate::util::clock::now_ms() / 1000;
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
        // Boxed: the handshake's state is large and only lives during the handshake; inline,
        // it would size this future (held for the connection's whole life) on plain
        // listeners too.
        let stream = match &self.tls {
            Some(t) => Box::pin(t.accept(stream, header_timeout)).await?,
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

/// The TCP peer's address (from the socket digest Pingora's listener attached at accept).
fn peer_ip(stream: &Stream) -> Option<std::net::IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (or waiting for the first byte of one).
    Head,
    /// Reading a request body framed by Content-Length: bytes left.
    Length(u64),
    /// Reading a chunked request body.
    Chunked(ChunkScan),
    /// After `101 Switching Protocols` (WebSocket): opaque bytes, never a head again.
    Tunnel,
    /// Framing this scanner cannot follow (a Content-Length the gateway refuses, a chunked
    /// body Pingora refuses): the request gets a 400 and the connection closes, so nothing
    /// after it is scanned.
    Opaque,
}

/// Header names the head scanner looks for, lower case with the colon.
const NAMES: [&[u8]; 3] = [b"transfer-encoding:", b"content-length:", b"upgrade:"];
const TE: usize = 0;
const CL: usize = 1;
const UPGRADE: usize = 2;

/// A Content-Length value as it streams by: optional whitespace, digits, optional whitespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClValue {
    Lead,
    Digits(u64, u8),
    Trail(u64),
    Invalid,
}

impl ClValue {
    fn push(self, b: u8) -> Self {
        match (self, b) {
            (ClValue::Lead, b' ' | b'\t') => ClValue::Lead,
            (ClValue::Lead, b'0'..=b'9') => ClValue::Digits(u64::from(b - b'0'), 1),
            // 19 digits always fit a u64; the gateway refuses longer values (400).
            (ClValue::Digits(n, k), b'0'..=b'9') if k < 19 => {
                ClValue::Digits(n * 10 + u64::from(b - b'0'), k + 1)
            }
            (ClValue::Digits(n, _), b' ' | b'\t') => ClValue::Trail(n),
            (ClValue::Trail(n), b' ' | b'\t') => ClValue::Trail(n),
            _ => ClValue::Invalid,
        }
    }

    fn value(self) -> Option<u64> {
        match self {
            ClValue::Digits(n, _) | ClValue::Trail(n) => Some(n),
            _ => None,
        }
    }
}

/// What the head scanner knows about the request head being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct HeadScan {
    /// A byte of this head has been read.
    started: bool,
    /// Past the request line: header names are matched at line starts.
    in_fields: bool,
    /// Newlines seen in a row (CR ignored): two end the head.
    newlines: u8,
    /// Matching a tracked name at the start of a line: candidates (bit per [`NAMES`]
    /// entry) and bytes matched; `None` inside a value or an untracked line.
    name: Option<(u8, u8)>,
    /// Inside a Content-Length value.
    cl_value: Option<ClValue>,
    te: bool,
    upgrade: bool,
    /// Content-Length: `None` absent, `Some(None)` unusable (refused by the gateway).
    cl: Option<Option<u64>>,
}

impl HeadScan {
    /// Whether every byte up to the next `\n` leaves this state as it is: inside the request
    /// line, or inside a header line whose name is not one the scanner tracks (or is past a
    /// tracked name, except a Content-Length value). Such a line already had a byte that is
    /// not CR or LF, so `newlines` is 0 and stays 0, and nothing else looks at its bytes.
    fn mid_untracked_line(&self) -> bool {
        self.started && self.cl_value.is_none() && (!self.in_fields || self.name.is_none())
    }

    /// Advances over one byte; true when it ends the head.
    fn push(&mut self, b: u8) -> bool {
        self.started = true;
        match b {
            b'\n' => {
                if let Some(v) = self.cl_value.take() {
                    // A repeated Content-Length is refused by the gateway too.
                    self.cl = Some(match self.cl {
                        None => v.value(),
                        Some(_) => None,
                    });
                }
                self.newlines += 1;
                self.in_fields = true;
                self.name = Some((0b111, 0));
                self.newlines == 2
            }
            b'\r' => false,
            _ => {
                self.newlines = 0;
                if let Some(v) = self.cl_value.as_mut() {
                    *v = v.push(b);
                } else if let Some((mask, pos)) = self.name.filter(|_| self.in_fields) {
                    let lower = b.to_ascii_lowercase();
                    let pos = usize::from(pos);
                    let mut next = 0u8;
                    for (k, name) in NAMES.iter().enumerate() {
                        if mask & (1 << k) != 0 && name.get(pos) == Some(&lower) {
                            next |= 1 << k;
                        }
                    }
                    self.name = (next != 0).then_some((next, pos as u8 + 1));
                    for (k, name) in NAMES.iter().enumerate() {
                        if next & (1 << k) != 0 && name.len() == pos + 1 {
                            self.name = None;
                            match k {
                                TE => self.te = true,
                                CL => self.cl_value = Some(ClValue::Lead),
                                UPGRADE => self.upgrade = true,
                                _ => {}
                            }
                        }
                    }
                }
                false
            }
        }
    }
}

/// The request framing of one downstream HTTP/1 connection, followed over the raw bytes in
/// the order the client sent them: heads, bodies (Content-Length or chunked) and, with
/// pipelining, the next heads in the same reads. Pingora parses the same bytes; this only
/// needs to know where each head starts and ends (for the head deadline) and which bytes
/// are chunk-size lines (to refuse chunk extensions in every request of a pipeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    phase: Phase,
    head: HeadScan,
    /// The last complete head asked for a protocol upgrade.
    upgrade: bool,
}

/// What one [`Framing::feed`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fed {
    /// Chunk extensions poisoned.
    poisoned: usize,
    /// Request heads completed.
    heads: usize,
}

impl Framing {
    fn new() -> Self {
        Framing {
            phase: Phase::Head,
            head: HeadScan::default(),
            upgrade: false,
        }
    }

    /// A request head is being read and has begun (its deadline runs).
    fn head_started(&self) -> bool {
        self.phase == Phase::Head && self.head.started
    }

    /// Advances over bytes just read, poisoning chunk extensions in place.
    fn feed(&mut self, bytes: &mut [u8]) -> Fed {
        let mut fed = Fed::default();
        let mut i = 0;
        while i < bytes.len() {
            match self.phase {
                Phase::Head => {
                    // Most of a head is lines the scanner does not track: jump to their end
                    // (~1,700 fewer instructions for a plain GET than a byte at a time, callgrind).
                    if self.head.mid_untracked_line() {
                        match memchr::memchr(b'\n', &bytes[i..]) {
                            Some(k) => i += k,
                            None => break,
                        }
                    }
                    let b = bytes[i];
                    i += 1;
                    // Blank lines before a request line are ignored (RFC 9112 §2.2), as
                    // httparse does; they do not start a head.
                    if !self.head.started && (b == b'\r' || b == b'\n') {
                        continue;
                    }
                    if self.head.push(b) {
                        fed.heads += 1;
                        let h = std::mem::take(&mut self.head);
                        self.upgrade = h.upgrade;
                        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), and
                        // only `chunked` passes the gateway's checks.
                        self.phase = match (h.te, h.cl) {
                            (true, _) => Phase::Chunked(ChunkScan::start()),
                            (false, None) | (false, Some(Some(0))) => Phase::Head,
                            (false, Some(Some(n))) => Phase::Length(n),
                            (false, Some(None)) => Phase::Opaque,
                        };
                    }
                }
                Phase::Length(left) => {
                    let avail = (bytes.len() - i) as u64;
                    if avail >= left {
                        i += left as usize;
                        self.phase = Phase::Head;
                    } else {
                        i = bytes.len();
                        self.phase = Phase::Length(left - avail);
                    }
                }
                Phase::Chunked(mut scan) => {
                    let (poisoned, used) = scan.scan(&mut bytes[i..]);
                    fed.poisoned += poisoned;
                    i += used;
                    self.phase = match scan {
                        ChunkScan::Done => Phase::Head,
                        ChunkScan::Broken => Phase::Opaque,
                        s => Phase::Chunked(s),
                    };
                }
                Phase::Tunnel | Phase::Opaque => break,
            }
        }
        fed
    }

    /// A response is being written: after `101` to an upgrade request, the connection
    /// carries another protocol.
    fn wrote(&mut self, data: &[u8]) {
        if self.upgrade && (data.starts_with(b"HTTP/1.1 101") || data.starts_with(b"HTTP/1.0 101"))
        {
            self.phase = Phase::Tunnel;
        }
    }
}

/// Whether `data` starts a final (non-1xx) response.
fn final_response(data: &[u8]) -> bool {
    data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] != b'1'
}

/// A stream whose reads fail once a request head takes longer than `timeout`, and which
/// poisons chunk extensions (see [`ChunkScan`]), for every request of a pipeline.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    framing: Framing,
    /// One timer per connection, reset for each head (no allocation per request).
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline applies: a head is owed (from accept, or from its first byte).
    armed: bool,
}

/// Byte written over the `;` that starts a chunk extension: not a hex digit, whitespace,
/// `;`, CR or LF, so Pingora's chunk-size parser (httparse) fails with INVALID_CHUNK and the
/// request gets the JSON 400 and a closed connection, like any malformed chunk size.
const POISON: u8 = b'!';

/// Tracks RFC 9112 chunked framing over the raw body bytes, exactly enough to know which
/// bytes are chunk-size lines. Pingora's parser accepts and discards chunk extensions
/// (`5;name=value`); the issue asks for them to be refused like other ambiguous framing
/// (parsers disagree on them: a classic smuggling vector). The scanner never changes a
/// valid body: it only touches a `;` in a chunk-size line. On anything it does not expect
/// it stops scanning ([`ChunkScan::Broken`]), since Pingora refuses such a body by itself.
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
    /// Body complete: the next byte belongs to the next request.
    Done,
    /// Malformed or poisoned: Pingora refuses the request; scanning stops.
    Broken,
}

impl ChunkScan {
    fn start() -> Self {
        ChunkScan::Size(0, false)
    }

    /// Advance over `bytes`, poisoning any chunk extension in place. Returns how many
    /// extensions were poisoned and how many bytes belong to this body (all of them unless
    /// it ended: then the rest is the next pipelined request).
    fn scan(&mut self, bytes: &mut [u8]) -> (usize, usize) {
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
                            None => ChunkScan::Broken,
                        }
                    }
                    b';' if digits => {
                        bytes[i] = POISON;
                        poisoned += 1;
                        ChunkScan::Broken
                    }
                    b' ' | b'\t' if digits => ChunkScan::SizeWs(n),
                    b'\r' if digits => ChunkScan::SizeLf(n),
                    b'\n' if digits => Self::after_size(n),
                    _ => ChunkScan::Broken,
                },
                ChunkScan::SizeWs(n) => match b {
                    b' ' | b'\t' => ChunkScan::SizeWs(n),
                    b';' => {
                        bytes[i] = POISON;
                        poisoned += 1;
                        ChunkScan::Broken
                    }
                    b'\r' => ChunkScan::SizeLf(n),
                    b'\n' => Self::after_size(n),
                    _ => ChunkScan::Broken,
                },
                ChunkScan::SizeLf(n) => match b {
                    b'\n' => Self::after_size(n),
                    _ => ChunkScan::Broken,
                },
                ChunkScan::Data(left) => {
                    // Skip the data in one step: it is never inspected.
                    let avail = (bytes.len() - i) as u64;
                    if avail >= left {
                        i += left as usize;
                        *self = ChunkScan::DataCr;
                        continue;
                    }
                    *self = ChunkScan::Data(left - avail);
                    return (poisoned, bytes.len());
                }
                ChunkScan::DataCr => match b {
                    b'\r' => ChunkScan::DataLf,
                    b'\n' => ChunkScan::start(),
                    _ => ChunkScan::Broken,
                },
                ChunkScan::DataLf => match b {
                    b'\n' => ChunkScan::start(),
                    _ => ChunkScan::Broken,
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
                    _ => ChunkScan::Broken,
                },
                ChunkScan::Done | ChunkScan::Broken => return (poisoned, i),
            };
            i += 1;
            if matches!(*self, ChunkScan::Done | ChunkScan::Broken) {
                return (
                    poisoned,
                    if *self == ChunkScan::Done {
                        i
                    } else {
                        bytes.len()
                    },
                );
            }
        }
        (poisoned, i)
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
            .field("framing", &self.framing)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HeadDeadline {
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        let mut s = HeadDeadline {
            inner,
            timeout,
            framing: Framing::new(),
            sleep: None,
            armed: false,
        };
        // A new connection owes its first head from the moment it is accepted.
        s.arm();
        s
    }

    fn arm(&mut self) {
        if self.timeout.is_zero() {
            return;
        }
        let at = Instant::now() + self.timeout;
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = true;
    }

    /// Ready with the error once a head is owed and `server.header_timeout` has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if self.armed && self.framing.phase == Phase::Head {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    HEADER_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not received within server.header_timeout",
                    ));
                }
            }
        }
        Poll::Pending
    }

    /// Bookkeeping after a write: a head that began while the previous response was being
    /// produced (a pipelined request) was waiting on the gateway, not on the client, so its
    /// deadline restarts when that response goes out.
    fn wrote(&mut self, data: &[u8]) {
        self.framing.wrote(data);
        if self.armed && self.framing.head_started() && final_response(data) {
            self.arm();
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
        if let Poll::Ready(e) = this.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let filled = buf.filled().len();
            if filled > before {
                let fed = this.framing.feed(&mut buf.filled_mut()[before..filled]);
                if fed.poisoned > 0 {
                    CHUNK_EXTENSIONS.fetch_add(fed.poisoned as u64, Ordering::Relaxed);
                }
                if fed.heads > 0 {
                    // Between requests the wait is keepalive_timeout's business.
                    this.armed = false;
                }
                if this.framing.head_started() && !this.armed {
                    // The clock of a head starts with its first byte.
                    this.arm();
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
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.wrote(data);
            }
        }
        res
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
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.wrote(first);
            }
        }
        res
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

    /// A connection waiting for its first request without a buffer (Pingora's accept path)
    /// still owes its head within `server.header_timeout`.
    fn poll_wait_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if let Poll::Ready(e) = self.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        self.inner.poll_wait_readable(cx)
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
            n += s.scan(piece).0;
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
            assert_eq!(end, ChunkScan::Broken);
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

    /// Feed `wire` to a fresh [`Framing`] in pieces of `step` bytes.
    fn frame(wire: &[u8], step: usize) -> (Vec<u8>, Fed, Framing) {
        let mut f = Framing::new();
        let mut out = wire.to_vec();
        let mut total = Fed::default();
        for piece in out.chunks_mut(step) {
            let fed = f.feed(piece);
            total.poisoned += fed.poisoned;
            total.heads += fed.heads;
        }
        (out, total, f)
    }

    #[test]
    fn pipelined_heads_and_bodies_are_followed_in_any_split() {
        let mut wire = Vec::new();
        for i in 0..40 {
            wire.extend_from_slice(format!("GET /p?n={i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        // Bodies that look like heads must not count as heads.
        wire.extend_from_slice(
            b"POST /cl HTTP/1.1\r\nHost: x\r\ncontent-LENGTH:  22 \r\n\r\nGET /no HTTP/1.1\r\n\r\n\r\n",
        );
        wire.extend_from_slice(
            b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n14\r\nGET /no HTTP/1.1\r\n\r\n\r\n0\r\nX-T: a\r\n\r\n",
        );
        wire.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n");
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let (out, fed, f) = frame(&wire, step);
            assert_eq!(out, wire, "step {step}: nothing changed");
            assert_eq!(
                fed,
                Fed {
                    poisoned: 0,
                    heads: 43
                },
                "step {step}"
            );
            assert_eq!(f.phase, Phase::Head);
            assert!(!f.head_started(), "step {step}: between requests");
        }
    }

    #[test]
    fn extensions_are_poisoned_in_every_request_of_a_pipeline() {
        let wire = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n";
        let at = wire.windows(2).position(|w| w == b"5;").unwrap() + 1;
        for step in 1..=wire.len() {
            let (out, fed, f) = frame(wire, step);
            assert_eq!(fed.poisoned, 1, "step {step}");
            assert_eq!(fed.heads, 3);
            assert_eq!(out[at], POISON);
            assert_eq!(f.phase, Phase::Opaque, "Pingora refuses it: scanning stops");
        }
    }

    #[test]
    fn unusable_content_length_stops_scanning() {
        for cl in ["", "+5", "5 5", "12345678901234567890", "0x1"] {
            let wire = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
            let (_, _, f) = frame(wire.as_bytes(), 1);
            assert_eq!(f.phase, Phase::Opaque, "{cl:?}");
        }
        let (_, _, f) = frame(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            5,
        );
        assert_eq!(f.phase, Phase::Opaque, "repeated");
        let (_, _, f) = frame(b"POST / HTTP/1.1\r\nX-Content-Length: 9\r\n\r\n", 5);
        assert_eq!(f.phase, Phase::Head, "another header's name");
    }

    #[test]
    fn long_and_tracked_lines_in_any_split() {
        // Untracked lines are skipped to their end: the tracked names must still be found
        // wherever a read ends, also right after a skipped line.
        let wire = b"POST /a?x=content-length:9 HTTP/1.1\r\nUser-Agent: transfer-encoding: chunked\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nContent-Length: 4\r\n\r\nbodyGET /ws HTTP/1.1\r\nX-Upgrade: no\r\nUpgrade: websocket\r\n\r\n";
        for step in 1..=wire.len() {
            let (out, fed, f) = frame(wire, step);
            assert_eq!(&out[..], &wire[..], "step {step}");
            assert_eq!(fed.heads, 2, "step {step}: the body is not a head");
            assert_eq!(f.phase, Phase::Head, "step {step}");
            assert!(
                f.upgrade,
                "step {step}: the second head asks for an upgrade"
            );
        }
        let (_, _, f) = frame(
            b"POST / HTTP/1.1\r\nX-A: b\r\nTransfer-Encoding: chunked\r\n\r\n",
            3,
        );
        assert!(matches!(f.phase, Phase::Chunked(_)));
    }

    #[test]
    fn heads_start_with_their_first_byte() {
        let mut f = Framing::new();
        assert!(!f.head_started());
        f.feed(&mut b"\r\n".to_vec());
        assert!(
            !f.head_started(),
            "blank lines before a request are ignored"
        );
        f.feed(&mut b"GET / HTTP/1.1\r\nHost:".to_vec());
        assert!(f.head_started());
        f.feed(&mut b" x\r\n\r\nGE".to_vec());
        assert!(f.head_started(), "the next pipelined head has begun");
    }

    #[test]
    fn tunnel_only_after_101_to_an_upgrade_request() {
        let mut f = Framing::new();
        f.feed(&mut b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
        f.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert_eq!(f.phase, Phase::Head);
        f.feed(
            &mut b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec(),
        );
        f.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert_eq!(f.phase, Phase::Tunnel);
        assert_eq!(f.feed(&mut b"GET / HTTP/1.1\r\n\r\n".to_vec()).heads, 0);
    }

    #[test]
    fn final_responses() {
        assert!(final_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(!final_response(b"HTTP/1.1 100 Continue\r\n"));
        assert!(!final_response(b"{\"a\":1}"));
    }
}
