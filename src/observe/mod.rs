//! Observability: Prometheus metrics ([`metrics`]: the one registry; each feature registers
//! its own families), the JSON access log ([`access_log`]), served certificates' expiry
//! ([`certs`]), build info and the reload change summary ([`changes`]).
//!
//! A leaf: it knows nothing of the request context, the snapshot or the app. The Pingora
//! phases that feed it (`logging`, `upstream_peer`, `upstream_response_filter`) live in
//! [`crate::logging`], which hands over plain values ([`access_log::Record`], status and
//! times). Nothing here takes a lock on the request path.

pub mod access_log;
pub mod build_info;
pub mod certs;
pub mod changes;
pub mod metrics;

use std::time::Duration;

/// Status logged when the client went away before a response head was sent (NGINX's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// How a request ended, computed once in `logging` for the metrics, the access log and the
/// plugins' `logging` hooks.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// The status sent (or 499 for a client that left first).
    pub status: u16,
    /// From the request head to now.
    pub elapsed: Duration,
    /// The contract code of a gateway-made error answer.
    pub error: Option<&'static str>,
}
