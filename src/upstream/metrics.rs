//! The upstream families read at scrape time from the live target state of the current
//! runtime: `upstream_target_healthy` and, for upstreams with DNS discovery,
//! `upstream_dns_*`. Registered once at startup ([`register_metrics`]), so an upstream that
//! leaves the config leaves no series behind.

// Documented exception to the crate-wide `clippy::expect_used` deny: the `expect`s build
// metrics from constant names and labels, which cannot fail at run time.
#![allow(clippy::expect_used)]

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

/// The upstreams of the snapshot a scrape is handed (type-erased by the metrics registry,
/// which sits below the snapshot): given by the app, which knows the snapshot's type.
pub type UpstreamsOf =
    for<'a> fn(&'a dyn std::any::Any) -> Option<&'a [std::sync::Arc<super::Upstream>]>;

/// Registers the families below with the process's registry (once, at startup).
pub fn register_metrics(upstreams_of: UpstreamsOf) {
    crate::observe::metrics::registry().on_scrape(move |rt, out| {
        if let Some(upstreams) = upstreams_of(rt) {
            healthy_family(upstreams, out);
            discovery_families(upstreams, out);
        }
    });
}

/// `upstream_target_healthy`: 1 when a target passes its health checks or is unchecked and
/// the circuit breaker has not ejected it, 0 otherwise.
fn healthy_family(upstreams: &[std::sync::Arc<super::Upstream>], families: &mut Vec<MetricFamily>) {
    let healthy = IntGaugeVec::new(
        Opts::new(
            "upstream_target_healthy",
            "1 when the target may get traffic (healthy or unchecked, not ejected), else 0.",
        ),
        &["upstream", "target"],
    )
    .expect("valid metric definition");
    let now = super::now_ms();
    for u in upstreams {
        for t in &u.targets().targets {
            healthy
                .with_label_values(&[u.name.as_str(), t.addr.as_str()])
                .set(i64::from(t.state.available(now)));
        }
    }
    families.extend(healthy.collect());
}

/// `upstream_dns_*`: read from the discovery state of `rt` at scrape time, so an upstream
/// that stops using discovery leaves no series behind.
fn discovery_families(
    upstreams: &[std::sync::Arc<super::Upstream>],
    families: &mut Vec<MetricFamily>,
) {
    use super::discovery::LookupResult;
    if !upstreams.iter().any(|u| u.discovery.is_some()) {
        return;
    }
    let lookups = IntCounterVec::new(
        Opts::new(
            "upstream_dns_resolutions_total",
            "DNS lookups of upstreams with discovery, by result (ok, empty: no address, error: no answer).",
        ),
        &["upstream", "result"],
    )
    .expect("valid metric definition");
    let addresses = IntGaugeVec::new(
        Opts::new(
            "upstream_dns_addresses",
            "Addresses in the last good DNS answer of an upstream with discovery (its targets).",
        ),
        &["upstream"],
    )
    .expect("valid metric definition");
    let age = prometheus::GaugeVec::new(
        Opts::new(
            "upstream_dns_answer_age_seconds",
            "Seconds since the last good DNS answer of an upstream with discovery (grows while lookups fail).",
        ),
        &["upstream"],
    )
    .expect("valid metric definition");
    for u in upstreams {
        let Some(d) = &u.discovery else {
            continue;
        };
        for r in LookupResult::ALL {
            lookups
                .with_label_values(&[u.name.as_str(), r.as_str()])
                .inc_by(d.state.count(r));
        }
        addresses
            .with_label_values(&[u.name.as_str()])
            .set(d.state.target_count() as i64);
        if let Some(a) = d.state.age_seconds() {
            age.with_label_values(&[u.name.as_str()]).set(a);
        }
    }
    families.extend(lookups.collect());
    families.extend(addresses.collect());
    families.extend(age.collect());
}
