//! OTLP/HTTP span export for the `opentelemetry` plugin: a bounded queue per collector, a
//! batching task per queue, and the HTTP POST of OTLP's JSON encoding.
//!
//! Pingora phase served: `logging` hands finished spans (already encoded as one JSON object
//! each, see [`super::span`]) to [`Exporter::submit`], which never blocks and never
//! waits: `try_send` on a bounded channel, and a full queue drops the span and counts it
//! (`otel_spans_dropped_total{reason="queue_full"}`). Everything else happens off the proxy's
//! workers, on a runtime of its own.
//!
//! **Where the work runs.** One small Tokio runtime (one worker thread, `otlp-export`) is
//! created the first time a span is submitted, never at config load: `gatehouse -t` and a
//! config load before the `-d` fork start nothing (threads do not survive a fork), and the
//! proxy's runtimes (one per worker thread when `work_stealing` is off) never run export
//! I/O or JSON batch assembly. Each exporter spawns its batching task there on its first span.
//!
//! **Reloads.** Exporters live in the app's registry ([`crate::util::registry`]) keyed by the
//! identity of their settings (endpoint, headers, timeouts, batching, queue size, resource
//! attributes; hashed, so no secret is kept as a key) and held weakly: a reload
//! that keeps the plugin's settings gets the very same exporter, queue and task back, so
//! nothing queued is lost and no task is added. A reload that changes them gets a new
//! exporter; the old one is dropped with the last runtime that uses it, which closes its
//! channel, and its task exports what is still queued with the old settings and ends. So
//! there is at most one task per distinct live setting, plus old ones that are draining.
//!
//! **Batching.** A batch is sent when it holds `batch_span_count` spans or when its first
//! span has waited `batch_flush_delay`, whichever comes first. One export is in flight per
//! exporter (the collector's pace is the back-pressure; the queue absorbs bursts). Every
//! export is bounded by `connect_timeout` and `timeout`; a failed one (error, timeout,
//! non-2xx) is not retried: its spans are counted in
//! `otel_spans_dropped_total{reason="export_failed"}` and the failure in
//! `otel_export_failures_total`. The first failure of a streak is logged as a warning with
//! the endpoint's scheme, host, port and path only (never userinfo, query or `headers`,
//! which usually carry the collector's credentials); recovery is logged once.

use crate::plugins::outbound::{self, redacted};
use crate::util::registry::Registry;
use once_cell::sync::Lazy;
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use prometheus::IntCounter;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The `otel_*` families; the dropped reasons resolved once.
struct Families {
    exported: IntCounter,
    dropped_queue_full: IntCounter,
    dropped_export_failed: IntCounter,
    export_failures: IntCounter,
}

static FAMILIES: Lazy<Families> = Lazy::new(|| {
    let r = crate::observe::metrics::registry();
    let dropped = r.counter_vec(
        "otel_spans_dropped_total",
        "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector did not take them).",
        &["reason"],
    );
    Families {
        exported: r.counter(
            "otel_spans_exported_total",
            "Spans the OTLP collector accepted (opentelemetry plugin).",
        ),
        dropped_queue_full: dropped.with_label_values(&["queue_full"]),
        dropped_export_failed: dropped.with_label_values(&["export_failed"]),
        export_failures: r.counter(
            "otel_export_failures_total",
            "OTLP export calls that failed (error, timeout or non-2xx answer).",
        ),
    }
});

/// Registers the `otel_*` families (once, at startup).
pub(super) fn register_metrics() {
    Lazy::force(&FAMILIES);
}

/// Version reported as the instrumentation scope's `version`.
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings of one exporter, compiled at load.
#[derive(Clone)]
pub(crate) struct ExportSettings {
    pub endpoint: reqwest::Url,
    /// Collector headers (credentials): marked sensitive, never logged or shown.
    pub headers: reqwest::header::HeaderMap,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub batch_span_count: usize,
    pub batch_flush_delay: Duration,
    pub queue_size: usize,
    /// Resource attributes (`service.name` first), as configured.
    pub resource_attributes: Vec<(String, String)>,
}

impl fmt::Debug for ExportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportSettings")
            .field("endpoint", &redacted(&self.endpoint))
            .field("headers", &self.headers.len())
            .field("timeout", &self.timeout)
            .field("batch_span_count", &self.batch_span_count)
            .field("batch_flush_delay", &self.batch_flush_delay)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl ExportSettings {
    /// Registry key: a hash of every setting (header values included, so a changed
    /// credential makes a new exporter; the hash never reveals it).
    fn identity(&self) -> String {
        let mut parts: Vec<String> = vec![
            self.endpoint.as_str().to_string(),
            format!("{:?}", self.connect_timeout),
            format!("{:?}", self.timeout),
            self.batch_span_count.to_string(),
            format!("{:?}", self.batch_flush_delay),
            self.queue_size.to_string(),
        ];
        for (n, v) in &self.headers {
            parts.push(n.as_str().to_string());
            parts.push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        for (k, v) in &self.resource_attributes {
            parts.push(k.clone());
            parts.push(v.clone());
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        crate::util::digest::identity(&refs)
    }

    /// The JSON around a batch's spans: `{"resourceSpans":[{"resource":…,"scopeSpans":
    /// [{"scope":…,"spans":[` and `]}]}]}`.
    fn envelope(&self) -> (Vec<u8>, &'static [u8]) {
        let attrs: Vec<serde_json::Value> = self
            .resource_attributes
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": {"stringValue": v}}))
            .collect();
        let resource = serde_json::json!({ "attributes": attrs });
        let scope = serde_json::json!({ "name": "gatehouse", "version": SCOPE_VERSION });
        let mut prefix = Vec::with_capacity(256);
        prefix.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":");
        prefix.extend_from_slice(resource.to_string().as_bytes());
        prefix.extend_from_slice(b",\"scopeSpans\":[{\"scope\":");
        prefix.extend_from_slice(scope.to_string().as_bytes());
        prefix.extend_from_slice(b",\"spans\":[");
        (prefix, b"]}]}]}")
    }
}

/// What the batching task takes over when it starts.
type Pending = (mpsc::Receiver<Vec<u8>>, Arc<ExportSettings>);

/// One collector queue. Shared by every plugin instance (and config generation) with the
/// same settings.
pub(crate) struct Exporter {
    tx: mpsc::Sender<Vec<u8>>,
    /// Receiver and settings until the batching task takes them on the first span.
    pending: Mutex<Option<Pending>>,
    started: OnceCell<()>,
    endpoint: String,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Exporter {
    fn new(settings: ExportSettings) -> Exporter {
        let (tx, rx) = mpsc::channel(settings.queue_size.max(1));
        Exporter {
            tx,
            endpoint: redacted(&settings.endpoint),
            pending: Mutex::new(Some((rx, Arc::new(settings)))),
            started: OnceCell::new(),
        }
    }

    /// Queues one encoded span. Never blocks: a full queue drops it (counted).
    pub(crate) fn submit(&self, span: Vec<u8>) {
        self.started.get_or_init(|| self.start());
        if self.tx.try_send(span).is_err() {
            FAMILIES.dropped_queue_full.inc();
        }
    }

    /// Spawns the batching task on the export runtime (first span only). Without a runtime
    /// the receiver is dropped: every later span is counted as dropped.
    fn start(&self) {
        let Some((rx, settings)) = self.pending.lock().take() else {
            return;
        };
        if let Some(rt) = export_runtime() {
            rt.spawn(run(rx, settings));
        }
    }
}

/// The exporter for `settings`: the live one with the same settings in `registry` (a reload
/// keeps its queue and task), else a new one. Starts nothing: the task starts with the first
/// span.
pub(crate) fn exporter(registry: &Registry, settings: ExportSettings) -> Arc<Exporter> {
    let id = settings.identity();
    registry.get_or_insert_with(&id, || Exporter::new(settings))
}

/// The runtime every export task runs on, created on first use.
fn export_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RT: OnceCell<Option<tokio::runtime::Runtime>> = OnceCell::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("otlp-export")
            .enable_all()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::error!(
                    "opentelemetry: cannot start the export runtime, spans are dropped: {e}"
                );
                None
            }
        }
    })
    .as_ref()
}

/// The batching loop of one exporter; ends when every sender is gone and the queue is empty.
async fn run(mut rx: mpsc::Receiver<Vec<u8>>, settings: Arc<ExportSettings>) {
    // The collector is reached directly (no environment proxy: see `outbound`).
    let client = match outbound::client()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .default_headers(settings.headers.clone())
        .pool_max_idle_per_host(2)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                endpoint = %redacted(&settings.endpoint),
                "opentelemetry: cannot build the export client, spans are dropped: {}",
                e.without_url()
            );
            // Keep draining so the queue never looks full forever; count what is lost.
            while let Some(_span) = rx.recv().await {
                FAMILIES.dropped_export_failed.inc();
            }
            return;
        }
    };
    let (prefix, suffix) = settings.envelope();
    let mut failing = false;
    let max = settings.batch_span_count.max(1);
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(max.min(4096));
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + settings.batch_flush_delay;
        let mut open = true;
        while batch.len() < max {
            let room = max - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let body = assemble(&prefix, suffix, &mut batch);
        let n = body.1;
        match post(&client, &settings.endpoint, body.0).await {
            Ok(()) => {
                FAMILIES.exported.inc_by(n);
                if failing {
                    failing = false;
                    tracing::info!(endpoint = %redacted(&settings.endpoint), "opentelemetry: collector accepts spans again");
                }
            }
            Err(reason) => {
                FAMILIES.export_failures.inc();
                FAMILIES.dropped_export_failed.inc_by(n);
                if !failing {
                    failing = true;
                    tracing::warn!(endpoint = %redacted(&settings.endpoint), "opentelemetry: span export failed ({reason}); spans are dropped until it recovers");
                } else {
                    tracing::debug!("opentelemetry: span export failed again ({reason})");
                }
            }
        }
        if !open {
            return;
        }
    }
}

/// The request body for `batch` (emptied), and how many spans it holds.
fn assemble(prefix: &[u8], suffix: &[u8], batch: &mut Vec<Vec<u8>>) -> (Vec<u8>, u64) {
    let n = batch.len() as u64;
    let size = prefix.len() + suffix.len() + batch.iter().map(|s| s.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(prefix);
    for (i, span) in batch.drain(..).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&span);
    }
    body.extend_from_slice(suffix);
    (body, n)
}

/// One OTLP/HTTP JSON export. The error text never holds the URL or a header.
async fn post(
    client: &reqwest::Client,
    endpoint: &reqwest::Url,
    body: Vec<u8>,
) -> Result<(), String> {
    let resp = client
        .post(endpoint.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "cannot connect".to_string()
            } else {
                e.without_url().to_string()
            }
        })?;
    let status = resp.status();
    // Read the (small) answer so the connection can be reused; bounded by `timeout`.
    let _ = resp.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: &str, token: &str) -> ExportSettings {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", token.parse().unwrap());
        ExportSettings {
            endpoint: endpoint.parse().unwrap(),
            headers,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            batch_span_count: 10,
            batch_flush_delay: Duration::from_millis(100),
            queue_size: 8,
            resource_attributes: vec![("service.name".into(), "gatehouse".into())],
        }
    }

    #[test]
    fn same_settings_share_one_exporter() {
        let reg = Registry::default();
        let a = exporter(
            &reg,
            settings("http://127.0.0.1:4318/v1/traces", "Bearer a"),
        );
        let b = exporter(
            &reg,
            settings("http://127.0.0.1:4318/v1/traces", "Bearer a"),
        );
        assert!(
            Arc::ptr_eq(&a, &b),
            "a reload with the same settings keeps the queue"
        );
        let c = exporter(
            &reg,
            settings("http://127.0.0.1:4318/v1/traces", "Bearer b"),
        );
        assert!(!Arc::ptr_eq(&a, &c), "changed credentials: a new exporter");
        let id = settings("http://127.0.0.1:4318/v1/traces", "Bearer a").identity();
        assert!(!id.contains("Bearer"), "the key never holds the secret");
        drop((a, b));
        let again = exporter(
            &reg,
            settings("http://127.0.0.1:4318/v1/traces", "Bearer a"),
        );
        assert_eq!(Arc::strong_count(&again), 1, "dropped with its last user");
        assert_eq!(reg.count::<Exporter>(), 2);
    }

    #[test]
    fn debug_and_display_hide_credentials() {
        let s = settings(
            "http://user:pw@collector:4318/v1/traces?k=secret",
            "Bearer tok",
        );
        let d = format!("{s:?}");
        assert!(
            !d.contains("pw") && !d.contains("tok") && !d.contains("secret"),
            "{d}"
        );
        assert_eq!(redacted(&s.endpoint), "http://collector:4318/v1/traces");
    }

    #[test]
    fn batch_body_is_otlp_json() {
        let s = settings("http://127.0.0.1:4318/v1/traces", "x");
        let (prefix, suffix) = s.envelope();
        let mut batch = vec![b"{\"name\":\"a\"}".to_vec(), b"{\"name\":\"b\"}".to_vec()];
        let (body, n) = assemble(&prefix, suffix, &mut batch);
        assert_eq!(n, 2);
        assert!(batch.is_empty());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "gatehouse"}})
        );
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "gatehouse");
        assert_eq!(rs["scopeSpans"][0]["spans"][1]["name"], "b");
    }
}
