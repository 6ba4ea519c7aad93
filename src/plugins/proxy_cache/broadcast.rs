//! `cache.purge_broadcast`: an admin purge on one node reaches every node through a Redis
//! pub/sub channel (runs outside Pingora's request phases: the admin handler publishes,
//! a background service subscribes).
//!
//! The node that took `POST /cache/purge` purges its own stores, then `PUBLISH`es the
//! already validated and normalized purge as JSON with its node id. Every node (itself
//! included) is subscribed; the others apply it with [`super::purge`], the sender skips its
//! own. Pub/sub delivers at most once: a node whose subscription is down when a purge is
//! published misses it (the subscriber reconnects by itself and logs the gap).

use crate::model::PurgeBroadcast;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use async_trait::async_trait;
use futures_util::StreamExt;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest message applied (a purge is a route name and a path).
const MAX_MESSAGE: usize = 64 * 1024;

/// This process's id in messages, so it skips its own.
static NODE: Lazy<String> = Lazy::new(|| {
    format!(
        "{:x}-{:x}",
        std::process::id(),
        crate::util::clock::now_us() ^ 0x9e37_79b9_7f4a_7c15
    )
});

/// One purge on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    node: String,
    route: String,
    /// Normalized path; absent: the whole route.
    path: Option<String>,
    /// Normalized query; absent: every query of the path.
    query: Option<String>,
}

/// The publishing connection, remade when the URL changes.
static PUBLISHER: Lazy<Mutex<Option<(PurgeBroadcast, ConnectionManager)>>> =
    Lazy::new(|| Mutex::new(None));

fn publisher(b: &PurgeBroadcast) -> Result<ConnectionManager, String> {
    let mut p = PUBLISHER.lock();
    if let Some((cfg, conn)) = &*p {
        if cfg == b {
            return Ok(conn.clone());
        }
    }
    let client = ::redis::Client::open(b.url.expose()).map_err(|e| e.category().to_string())?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(b.timeout))
        .set_response_timeout(Some(b.timeout))
        .set_number_of_retries(1);
    let conn = ConnectionManager::new_lazy_with_config(client, cfg)
        .map_err(|e| e.category().to_string())?;
    *p = Some((b.clone(), conn.clone()));
    Ok(conn)
}

/// Publishes a purge this node just applied. Ok: how many subscribers received it (this
/// node included).
pub async fn publish(
    b: &PurgeBroadcast,
    route: &str,
    path: Option<&str>,
    query: Option<&str>,
) -> Result<i64, String> {
    let msg = Message {
        node: NODE.clone(),
        route: route.to_string(),
        path: path.map(str::to_string),
        query: query.map(str::to_string),
    };
    let body = serde_json::to_string(&msg).map_err(|e| e.to_string())?;
    let mut conn = publisher(b)?;
    let mut cmd = ::redis::cmd("PUBLISH");
    cmd.arg(&b.channel).arg(body);
    let sent = cmd.query_async::<i64>(&mut conn);
    match tokio::time::timeout(b.timeout, sent).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("redis error: {}", e.category())),
        Err(_) => Err("timed out".into()),
    }
}

/// Applies one received message; returns how many objects it removed (None: ignored).
fn apply(reg: &crate::util::registry::Registry, payload: &[u8]) -> Option<usize> {
    if payload.len() > MAX_MESSAGE {
        return None;
    }
    let m: Message = serde_json::from_slice(payload).ok()?;
    if m.node == *NODE {
        return None;
    }
    let n = super::stores::purge(reg, &m.route, m.path.as_deref(), m.query.as_deref());
    tracing::info!(route = %m.route, path = ?m.path, purged = n, "cache purge via broadcast");
    Some(n)
}

/// Background service: keeps one subscription to the configured channel, following
/// reloads (checked every second) and reconnecting after a failure.
pub struct Subscriber {
    /// The `cache.purge_broadcast` of the config in use now.
    wanted: Box<dyn Fn() -> Option<PurgeBroadcast> + Send + Sync>,
    /// The app's registry, where the cache stores live.
    registry: crate::util::registry::Registry,
}

impl Subscriber {
    pub fn new(
        wanted: impl Fn() -> Option<PurgeBroadcast> + Send + Sync + 'static,
        registry: crate::util::registry::Registry,
    ) -> Self {
        Subscriber {
            wanted: Box::new(wanted),
            registry,
        }
    }

    fn wanted(&self) -> Option<PurgeBroadcast> {
        (self.wanted)()
    }
}

#[async_trait]
impl BackgroundService for Subscriber {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tick = Duration::from_secs(1);
        // Set while the last attempt failed, so an outage is logged once.
        let mut failing = false;
        loop {
            let Some(b) = self.wanted() else {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(tick) => continue,
                }
            };
            let subscribed = async {
                let client =
                    ::redis::Client::open(b.url.expose()).map_err(|e| e.category().to_string())?;
                let mut ps = client
                    .get_async_pubsub()
                    .await
                    .map_err(|e| e.category().to_string())?;
                ps.subscribe(&b.channel)
                    .await
                    .map_err(|e| e.category().to_string())?;
                Ok::<_, String>(ps)
            };
            let attempt = match tokio::time::timeout(b.timeout, subscribed).await {
                Ok(r) => r,
                Err(_) => Err("timed out".to_string()),
            };
            let ps = match attempt {
                Ok(ps) => ps,
                Err(why) => {
                    if !failing {
                        tracing::warn!(redis = %b.addr, channel = %b.channel, "cache purge broadcast: cannot subscribe ({why}); purges from other nodes are missed until it can");
                        failing = true;
                    }
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(tick) => continue,
                    }
                }
            };
            if failing {
                tracing::info!(redis = %b.addr, channel = %b.channel, "cache purge broadcast: subscribed again");
                failing = false;
            } else {
                tracing::info!(redis = %b.addr, channel = %b.channel, "cache purge broadcast: subscribed");
            }
            let mut stream = ps.into_on_message();
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    msg = stream.next() => match msg {
                        Some(m) => { apply(&self.registry, m.get_payload_bytes()); }
                        None => {
                            tracing::warn!(redis = %b.addr, "cache purge broadcast: subscription lost; reconnecting");
                            failing = true;
                            break;
                        }
                    },
                    _ = tokio::time::sleep(tick) => {
                        if self.wanted().as_ref() != Some(&b) {
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_bad_messages_are_ignored() {
        let reg = crate::util::registry::Registry::default();
        let own = serde_json::json!({"node": *NODE, "route": "r", "path": null, "query": null});
        assert_eq!(apply(&reg, own.to_string().as_bytes()), None);
        assert_eq!(apply(&reg, b"not json"), None);
        assert_eq!(apply(&reg, &vec![b' '; MAX_MESSAGE + 1]), None);
        let other = serde_json::json!({"node": "elsewhere", "route": "nowhere", "path": "/x", "query": null});
        assert_eq!(apply(&reg, other.to_string().as_bytes()), Some(0));
    }
}
