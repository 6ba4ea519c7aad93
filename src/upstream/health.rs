//! Active health checks, run by our own scheduler (a Pingora background service) over the
//! *live* config snapshot: Pingora's own health-check services are fixed at startup and could
//! not follow a reload. Each tick looks at the current runtime, starts the checks that are
//! due, and applies the healthy/unhealthy thresholds to the target's shared state.

use super::{HealthCheck, LiveConfig, TargetState, Upstream};
use crate::util::clock::now_ms;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How often the scheduler looks for due checks (the finest useful interval).
const TICK: Duration = Duration::from_millis(50);

pub struct HealthScheduler {
    live: Arc<dyn LiveConfig>,
}

impl HealthScheduler {
    pub fn new(live: Arc<dyn LiveConfig>) -> Self {
        HealthScheduler { live }
    }

    fn run_due(&self) {
        self.live
            .with_upstreams(&mut |upstreams| Self::start_due(upstreams));
    }

    fn start_due(upstreams: &[Arc<Upstream>]) {
        let now = now_ms();
        for up in upstreams {
            // The current set: addresses DNS discovery just added are checked at once.
            let set = up.targets();
            let Some(hc) = &up.health_check else {
                // Checks removed by a reload: the targets count as healthy again.
                for t in &set.targets {
                    t.state.healthy.store(true, Ordering::Relaxed);
                }
                continue;
            };
            for t in &set.targets {
                let st = &t.state;
                if st.next_check_ms.load(Ordering::Relaxed) > now
                    || st.checking.swap(true, Ordering::AcqRel)
                {
                    continue;
                }
                st.next_check_ms
                    .store(now + hc.interval.as_millis() as u64, Ordering::Relaxed);
                let (st, hc, sock) = (st.clone(), hc.clone(), t.sock);
                // `health_check.host` stands in for the target's name in `Host` and SNI.
                let host = hc.host.clone().unwrap_or_else(|| t.host.clone());
                let addr = t.addr.clone();
                let upstream = up.name.clone();
                let tls = up.transport.tls.as_ref().map(|x| {
                    let name = match &hc.host {
                        Some(h) => super::peer::host_of(h),
                        None => up.transport.server_name(t),
                    };
                    (x.health_config(), name.to_string())
                });
                tokio::spawn(async move {
                    let ok = probe(sock, &host, &hc, tls).await;
                    apply(&st, &hc, ok, &upstream, &addr);
                    st.checking.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Applies one probe result to the target's counters and thresholds.
pub fn apply(st: &TargetState, hc: &HealthCheck, ok: bool, upstream: &str, addr: &str) {
    crate::observe::metrics::health_check_result(upstream, addr, ok);
    if ok {
        st.consecutive_fail.store(0, Ordering::Relaxed);
        let n = st.consecutive_ok.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= hc.healthy_threshold && !st.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream, target = addr, "target is healthy again");
        }
    } else {
        st.consecutive_ok.store(0, Ordering::Relaxed);
        let n = st.consecutive_fail.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= hc.unhealthy_threshold && st.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                upstream,
                target = addr,
                "target marked unhealthy by health checks"
            );
        }
    }
}

/// The TLS client config and server name of a TLS upstream's checks.
pub type ProbeTls = (Arc<pingora::tls::ClientConfig>, String);

/// One probe: TCP connect (and the TLS handshake of a TLS upstream, with the same
/// certificate checks as requests), or `GET path` expecting a 2xx/3xx status line.
pub async fn probe(sock: SocketAddr, host: &str, hc: &HealthCheck, tls: Option<ProbeTls>) -> bool {
    let fut = async {
        let s = TcpStream::connect(sock).await.ok()?;
        match tls {
            None => http_check(s, host, hc).await,
            Some((cfg, name)) => {
                let name = pingora::tls::ServerName::try_from(name).ok()?;
                let s = pingora::tls::TlsConnector::from(cfg)
                    .connect(name, s)
                    .await
                    .ok()?;
                http_check(s, host, hc).await
            }
        }
    };
    matches!(tokio::time::timeout(hc.timeout, fut).await, Ok(Some(true)))
}

async fn http_check<S>(mut s: S, host: &str, hc: &HealthCheck) -> Option<bool>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    {
        let Some(path) = &hc.path else {
            return Some(true);
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-health-check\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        // Only the status line matters: read at most 64 bytes of it.
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        let code: u16 = line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
        Some((200..400).contains(&code))
    }
}

#[async_trait]
impl BackgroundService for HealthScheduler {
    async fn start(&self, shutdown: ShutdownWatch) {
        super::tick_until_shutdown(TICK, shutdown, || self.run_due()).await;
    }
}

/// Targets of an upstream with their health, for /status.
pub fn describe(up: &Upstream) -> Vec<serde_json::Value> {
    let now = now_ms();
    up.targets()
        .targets
        .iter()
        .map(|t| {
            serde_json::json!({
                "addr": t.addr,
                "weight": t.weight,
                "backup": t.backup,
                "healthy": t.state.healthy.load(Ordering::Relaxed),
                "ejected": t.state.ejected_until_ms.load(Ordering::Relaxed) > now,
                "available": t.state.available(now),
                "inflight": t.state.inflight.load(Ordering::Relaxed),
            })
        })
        .collect()
}
