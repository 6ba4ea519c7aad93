//! The JSON access log: one object a line per request, built in Pingora's `logging` phase and
//! written by a thread of its own, so a slow disk or a blocked stdout never stalls a worker.
//!
//! Workers hand finished lines to a bounded channel with `try_send`; when it is full the line
//! is dropped and counted in `access_log_dropped_total`. The writer drains the channel in
//! batches and flushes after each batch (and at least every 250 ms when idle), so a line is
//! on its way to the file or stdout well within a second. `SIGUSR1` makes the writer reopen a
//! file (logrotate's `postrotate`); a reload that changes `server.access_log` is followed too.
//!
//! Secrets are never written: request headers are not logged at all, and the values of query
//! parameters that look like credentials (`api_key`, `token`, `password`, ... see
//! [`is_secret_param`]) are replaced by `REDACTED` with the name kept.

use crate::model::AccessLog;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Lines that may wait for the writer (about 6 MB at 400 bytes a line).
const QUEUE_LINES: usize = 16 * 1024;
/// Longest the writer sleeps before looking at reopen requests and config changes.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// Lines written between two flushes at most, under sustained load.
const BATCH: usize = 4096;
/// Value written in place of a secret query parameter's value.
pub const REDACTED: &str = "REDACTED";

struct Queue {
    tx: SyncSender<Vec<u8>>,
    rx: Mutex<Option<Receiver<Vec<u8>>>>,
}

static QUEUE: Lazy<Queue> = Lazy::new(|| {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    Queue {
        tx,
        rx: Mutex::new(Some(rx)),
    }
});

/// Set by SIGUSR1: the writer reopens its file.
static REOPEN: Lazy<Arc<AtomicBool>> = Lazy::new(|| Arc::new(AtomicBool::new(false)));

/// Query parameter names registered by plugins (e.g. key-auth's `query_param`) whose values
/// are secret whatever they are called.
static EXTRA_SECRET_PARAMS: Lazy<ArcSwap<Vec<String>>> =
    Lazy::new(|| ArcSwap::from_pointee(Vec::new()));

/// Makes SIGUSR1 request a reopen instead of killing the process (its default action).
/// Called before the server starts; the handler is a process-wide sigaction, so it survives
/// the `-d` fork.
pub fn install_reopen_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, REOPEN.clone()) {
            tracing::warn!("cannot install SIGUSR1 handler (access log reopen): {e}");
        }
    });
}

/// Treats query parameter `name` as secret in the access log (case-insensitive).
pub fn register_secret_param(name: &str) {
    let name = name.to_ascii_lowercase();
    EXTRA_SECRET_PARAMS.rcu(|cur| {
        let mut next = (**cur).clone();
        if !next.contains(&name) {
            next.push(name.clone());
        }
        next
    });
}

/// Whether a query parameter's value must not be logged. Deliberately broad: a redacted
/// harmless value costs little, a logged credential is an incident.
pub fn is_secret_param(raw_name: &str) -> bool {
    let name = String::from_utf8_lossy(&crate::util::form::decode(raw_name))
        .to_ascii_lowercase()
        .replace('-', "_");
    const CONTAINS: &[&str] = &[
        "key",
        "token",
        "secret",
        "passw",
        "signature",
        "credential",
        "session",
        "auth",
    ];
    const EXACT: &[&str] = &["sig", "jwt", "code", "pwd", "pass"];
    CONTAINS.iter().any(|w| name.contains(w))
        || EXACT.contains(&name.as_str())
        || EXTRA_SECRET_PARAMS.load().contains(&name)
}

/// `path?query` with the values of secret parameters replaced by [`REDACTED`].
pub fn redact_path(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let name_of = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    if !query.split('&').any(|kv| is_secret_param(&name_of(kv))) {
        return Cow::Borrowed(path_and_query);
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, kv) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match kv.split_once('=') {
            Some((k, _)) if is_secret_param(k) => {
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(kv),
        }
    }
    Cow::Owned(out)
}

/// RFC 3339 UTC time with milliseconds: `2024-05-01T12:00:00.123Z`.
pub fn format_ts(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::util::clock::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// One access log line (field order is the contract's).
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    client_ip: Option<std::net::IpAddr>,
    method: &'a str,
    path: Cow<'a, str>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    target: Option<&'a str>,
    status: u16,
    bytes_sent: usize,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    consumer: Option<&'a str>,
    cache: Option<&'a str>,
    error: Option<&'a str>,
    /// `opentelemetry`: the request's trace id; absent when the plugin is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<crate::util::hex_id::HexId<16>>,
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// A finished request, as the `logging` phase hands it over (plain values).
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub request_id: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    /// Path and query as received (secret query values are redacted here).
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub status: u16,
    pub bytes_sent: usize,
    pub elapsed: Duration,
    pub upstream_time: Option<Duration>,
    pub consumer: Option<&'a str>,
    pub cache: Option<&'a str>,
    /// The contract code of a gateway-made error answer, if any.
    pub error: Option<&'a str>,
    pub trace_id: Option<crate::util::hex_id::HexId<16>>,
}

/// The JSON line (with its newline) for a finished request.
pub fn format_line(r: &Record) -> Vec<u8> {
    let line = Line {
        ts: format_ts(SystemTime::now()),
        request_id: r.request_id,
        client_ip: r.client_ip,
        method: r.method,
        path: redact_path(r.path),
        route: r.route,
        upstream: r.upstream,
        target: r.target,
        status: r.status,
        bytes_sent: r.bytes_sent,
        duration_ms: millis(r.elapsed),
        upstream_ms: r.upstream_time.map(millis),
        consumer: r.consumer,
        cache: r.cache,
        error: r.error,
        trace_id: r.trace_id,
    };
    let mut out = Vec::with_capacity(384);
    if serde_json::to_writer(&mut out, &line).is_err() {
        out.clear();
    }
    out.push(b'\n');
    out
}

/// Hands a line to the writer without ever blocking: dropped (and counted) when the writer
/// is behind.
pub fn submit(line: Vec<u8>) {
    match QUEUE.tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            super::metrics::metrics().access_log_dropped.inc();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

enum Sink {
    Off,
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(std::io::BufWriter<std::fs::File>),
    /// The file could not be opened or written: lines are dropped until the next reopen.
    Broken,
}

impl Sink {
    fn open(dest: &AccessLog) -> Sink {
        match dest {
            AccessLog::Off => Sink::Off,
            AccessLog::Stdout => Sink::Stdout(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
            AccessLog::File(p) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
                match o.open(p) {
                    Ok(f) => Sink::File(std::io::BufWriter::with_capacity(64 * 1024, f)),
                    Err(e) => {
                        tracing::error!("cannot open access log {}: {e}", p.display());
                        Sink::Broken
                    }
                }
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        let res = match self {
            Sink::Off => return,
            Sink::Broken => Err(std::io::Error::other("access log not open")),
            Sink::Stdout(w) => w.write_all(line),
            Sink::File(w) => w.write_all(line),
        };
        if res.is_err() {
            super::metrics::metrics().access_log_dropped.inc();
            if !matches!(self, Sink::Broken) {
                if let Err(e) = res {
                    tracing::error!("cannot write the access log: {e}");
                }
                *self = Sink::Broken;
            }
        }
    }

    fn flush(&mut self) {
        let res = match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File(w) => w.flush(),
            Sink::Off | Sink::Broken => Ok(()),
        };
        if let Err(e) = res {
            tracing::error!("cannot flush the access log: {e}");
            *self = Sink::Broken;
        }
    }
}

/// `server.access_log` of the config in use now.
type Destination = Arc<dyn Fn() -> AccessLog + Send + Sync>;

fn write_loop(rx: Receiver<Vec<u8>>, wanted: Destination) {
    let mut dest = wanted();
    let mut sink = Sink::open(&dest);
    let mut opened = Instant::now();
    loop {
        match rx.recv_timeout(IDLE_TICK) {
            Ok(first) => {
                sink.write(&first);
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(line) => sink.write(&line),
                        Err(_) => break,
                    }
                }
                sink.flush();
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now_wanted = wanted();
        let retry_broken =
            matches!(sink, Sink::Broken) && opened.elapsed() > Duration::from_secs(5);
        if REOPEN.swap(false, Ordering::AcqRel) || now_wanted != dest || retry_broken {
            sink.flush();
            dest = now_wanted;
            sink = Sink::open(&dest);
            opened = Instant::now();
            if matches!(dest, AccessLog::File(_)) && !matches!(sink, Sink::Broken) {
                tracing::info!("access log (re)opened");
            }
        }
    }
}

/// The access-log writer as a Pingora background service, so it starts after a `-d` fork.
pub struct Writer {
    wanted: Destination,
}

impl Writer {
    /// `wanted`: the `server.access_log` of the config in use (asked after every batch and
    /// idle tick, so a reload that changes it is followed).
    pub fn new(wanted: impl Fn() -> AccessLog + Send + Sync + 'static) -> Self {
        Writer {
            wanted: Arc::new(wanted),
        }
    }
}

#[async_trait]
impl BackgroundService for Writer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rx) = QUEUE.rx.lock().take() else {
            tracing::warn!("access log writer already running");
            return;
        };
        let wanted = self.wanted.clone();
        // A plain thread, not a runtime task: it keeps writing while requests drain after
        // the shutdown signal, and file I/O never blocks an async worker.
        if let Err(e) = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, wanted))
        {
            tracing::error!("cannot start the access log writer: {e}");
            return;
        }
        // Pingora logs "service '...' exited" at INFO when this returns, which at startup
        // reads like a failure: the service lives as long as the server does.
        let _ = shutdown.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_values_are_redacted() {
        for (path, logged) in [
            ("/a/b", "/a/b"),
            ("/a?x=1&y=2", "/a?x=1&y=2"),
            ("/a?api_key=s3cr3t&x=1", "/a?api_key=REDACTED&x=1"),
            (
                "/a?x=1&access_token=abc&API-KEY=z&pass=p",
                "/a?x=1&access_token=REDACTED&API-KEY=REDACTED&pass=REDACTED",
            ),
            ("/a?api%5Fkey=s3", "/a?api%5Fkey=REDACTED"),
            ("/a?token", "/a?token"),
        ] {
            assert_eq!(redact_path(path), logged, "{path}");
        }
        register_secret_param("k");
        assert_eq!(redact_path("/a?k=v&kk=w"), "/a?k=REDACTED&kk=w");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        assert_eq!(format_ts(t), "2024-05-01T12:00:00.123Z");
        assert_eq!(
            format_ts(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_ts(t), "2000-02-29T00:00:00.000Z");
    }
}
