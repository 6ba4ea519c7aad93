//! Which build is running: `gatehouse --version` names the package version and the git
//! commit, admin `/status` carries both under `build`, and `build_info{version,commit}` is 1
//! in `/metrics`. And the served certificate's `tls_certificate_expiry_seconds{name}`.
use crate::common;

use common::*;
use std::process::Command;

/// The commit the binary must report: the checkout's short HEAD (build.rs runs the same
/// command), or "unknown" when the tests do not run from a git checkout.
fn expected_commit() -> String {
    if let Ok(c) = std::env::var("GATEHOUSE_GIT_COMMIT") {
        if !c.trim().is_empty() {
            return c;
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

#[test]
fn version_flag_prints_the_version_and_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!(
            "gatehouse {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            expected_commit()
        )
    );
}

#[tokio::test]
async fn status_and_build_info_metric_carry_the_version_and_the_commit() {
    let b = Backend::start("b");
    let gw = one_route(&b, "/", "");
    let commit = expected_commit();
    let status = gw.status_json().await;
    assert_eq!(status["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["build"]["commit"], commit.as_str());

    let t = gw.metrics_text().await;
    promtool_check(&t);
    assert_eq!(
        metric(
            &t,
            "build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", commit.as_str())
            ]
        ),
        Some(1.0),
        "{t}"
    );
    assert_eq!(samples(&parse_metrics(&t), "build_info", &[]).len(), 1);
}

/// 2031-01-01T00:00:00Z.
const NOT_AFTER: i64 = 1_924_992_000;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn served_certificate_expiry_is_exported_by_its_first_dns_name() {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let b = Backend::start("b");
    let cfg = Cfg::new();
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["gw.example.test".to_string(), "localhost".to_string()])
            .unwrap();
    p.subject_alt_names
        .insert(0, SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "common-name.example.test");
    p.not_after = rcgen::date_time_ymd(2031, 1, 1);
    let cert = p.self_signed(&key).unwrap();
    std::fs::create_dir_all(cfg.dir.path().join("tls")).unwrap();
    std::fs::write(cfg.dir.path().join("tls/server.crt"), cert.pem()).unwrap();
    std::fs::write(cfg.dir.path().join("tls/server.key"), key.serialize_pem()).unwrap();
    let tls_port = free_port();
    let gw = cfg
        .server(&format!(
            "tls:\n  listen: [\"127.0.0.1:{tls_port}\"]\n  cert: tls/server.crt\n  key: tls/server.key"
        ))
        .upstream("u", &[target(&b)], "")
        .route_root("")
        .start();

    let before = now();
    let t = gw.metrics_text().await;
    let after = now();
    promtool_check(&t);
    let all = parse_metrics(&t);
    let series = samples(&all, "tls_certificate_expiry_seconds", &[]);
    assert_eq!(series.len(), 1, "{t}");
    assert_eq!(series[0].labels["name"], "gw.example.test");
    let left = series[0].value as i64;
    assert!(
        (NOT_AFTER - after..=NOT_AFTER - before).contains(&left),
        "{left} seconds left, expected {}",
        NOT_AFTER - before
    );
}

#[tokio::test]
async fn no_certificate_no_expiry_series() {
    let b = Backend::start("b");
    let gw = one_route(&b, "/", "");
    let t = gw.metrics_text().await;
    assert!(!t.contains("tls_certificate_expiry_seconds"), "{t}");
}
