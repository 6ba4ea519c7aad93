//! What was built: the package version and the git commit (set by `build.rs`), shown by
//! `gatehouse --version`, admin `GET /status` and the `build_info{version,commit}` metric
//! (always 1), so a dashboard can tell which build each instance runs, e.g. during a rolling
//! upgrade. Not on any request path.

/// `Cargo.toml`'s version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit of the build, or "unknown" outside a git checkout.
pub const COMMIT: &str = env!("GATEHOUSE_GIT_COMMIT");
/// `gatehouse --version`: "0.1.0 (commit 1a2b3c4)".
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GATEHOUSE_GIT_COMMIT"),
    ")"
);

/// The `/status` object.
pub fn json() -> serde_json::Value {
    serde_json::json!({ "version": VERSION, "commit": COMMIT })
}

/// `build_info{version,commit} 1`, added to the exposition at scrape time.
pub fn metric_families() -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    let Ok(v) = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "build_info",
            "The running gatehouse build: package version and git commit (always 1).",
        ),
        &["version", "commit"],
    ) else {
        return Vec::new();
    };
    v.with_label_values(&[VERSION, COMMIT]).set(1);
    v.collect()
}
