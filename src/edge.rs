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
        Phase::Body => Phase::Idle,
        p => p,
    }
}

/// A stream whose reads fail once a request head takes longer than `timeout`.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Newlines seen in a row (CR ignored) while scanning for the end of the head.
    newlines: u8,
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
        };
        // A new connection owes its first head from the moment it is accepted.
        s.arm();
        s
    }

    fn arm(&mut self) {
        self.phase = Phase::Head;
        self.newlines = 0;
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
                if this.phase == Phase::Head {
                    // Copy out the new bytes' view before scanning (borrow of buf).
                    let new = &buf.filled()[before..filled];
                    let mut nl = this.newlines;
                    let mut done = false;
                    for b in new {
                        match b {
                            b'\n' => {
                                nl += 1;
                                if nl == 2 {
                                    done = true;
                                    break;
                                }
                            }
                            b'\r' => {}
                            _ => nl = 0,
                        }
                    }
                    if done {
                        this.phase = Phase::Body;
                        this.sleep = None;
                        this.newlines = 0;
                    } else {
                        this.newlines = nl;
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
