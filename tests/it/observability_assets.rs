//! The monitoring files shipped in conf/: the Prometheus alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), the Grafana dashboard is a JSON model
//! a stock Grafana imports (data source as a variable), every PromQL expression of both
//! parses, and every metric name they use is one a running gateway exports.
use crate::common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn conf(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").join(rel)
}

/// Runs promtool; `None` (with a notice) when it is not installed outside CI. Under CI=true
/// a missing promtool fails the test.
fn promtool(args: &[&str]) -> Option<(bool, String)> {
    match Command::new("promtool").args(args).output() {
        Ok(o) => Some((
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("promtool is required under CI=true (Debian package prometheus): {e}");
            }
            eprintln!(
                "NOTICE: promtool not installed ({e}); skipping `promtool {}`",
                args[0..2].join(" ")
            );
            None
        }
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = conf("prometheus/gatehouse-alerts.yml");
    let tests = conf("prometheus/gatehouse-alerts.test.yml");
    let Some((ok, out)) = promtool(&["check", "rules", rules.to_str().unwrap()]) else {
        return;
    };
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()]).unwrap();
    assert!(ok, "promtool test rules:\n{out}");

    // Every alert has unit tests that expect it both firing and not firing.
    let text = std::fs::read_to_string(&tests).unwrap();
    let t: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for alert in alert_names() {
        let cases: Vec<&serde_yaml::Value> = t["tests"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|c| c["alert_rule_test"].as_sequence().unwrap().iter())
            .filter(|c| c["alertname"].as_str() == Some(alert.as_str()))
            .collect();
        let fires = cases
            .iter()
            .any(|c| !c["exp_alerts"].as_sequence().unwrap().is_empty());
        let quiet = cases
            .iter()
            .any(|c| c["exp_alerts"].as_sequence().unwrap().is_empty());
        assert!(
            fires && quiet,
            "{alert}: needs a firing and a non-firing case"
        );
    }
}

fn alerts_yaml() -> serde_yaml::Value {
    let text = std::fs::read_to_string(conf("prometheus/gatehouse-alerts.yml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn alert_names() -> Vec<String> {
    let y = alerts_yaml();
    let names: Vec<String> = y["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "GatehouseHigh5xxRatio",
        "GatehouseUpstreamTargetDown",
        "GatehouseUpstreamAllTargetsDown",
        "GatehouseCertificateExpiring",
        "GatehouseReloadFailed",
        "GatehouseRateLimitBackendFailing",
        "GatehouseAccessLogDrops",
    ] {
        assert!(names.iter().any(|n| n == want), "missing alert {want}");
    }
    names
}

fn alert_exprs() -> Vec<String> {
    let y = alerts_yaml();
    y["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(conf("grafana/gatehouse.json")).unwrap();
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

/// (panel title, expr) of every query target.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// Grafana's variables replaced by values PromQL accepts (label values are strings
/// already; ranges need a duration).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

#[test]
fn dashboard_is_a_json_model_with_the_datasource_as_a_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "gatehouse");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    // Importable as is: no `${DS_...}` inputs to fill in.
    assert!(d["__inputs"].as_array().is_none_or(|a| a.is_empty()));
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "variable {}",
            v["name"]
        );
    }
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_u64().unwrap() > 0);
        titles.push(p["title"].as_str().unwrap().to_string());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    for want in [
        "Request rate by route",
        "5xx ratio by route",
        "Latency by route (p50, p95, p99)",
        "Request rate by upstream",
        "Upstream response time (p50, p95, p99)",
        "Target health",
        "Retries and retry budget refusals",
        "Rate-limit refusals by route",
        "Cache hit ratio by route",
        "Open connections",
        "Config reloads by result",
        "Certificate expiry",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want}: {titles:?}"
        );
    }
}

/// Metric names an expression selects. PromQL is tokenized after removing what cannot hold a
/// metric name: string literals, label matchers `{...}`, ranges `[...]`, and the label
/// lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`; an identifier followed
/// by `(` is a function or aggregation; keywords and numbers are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Besides GROUPING, which is looked at first.
    const KEYWORDS: &[&str] = &[
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
        // Aggregations, which may stand before their `by (...)` clause instead of `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_group = |i: &mut usize, open: char, close: char| {
        let mut depth = 0;
        while *i < c.len() {
            if c[*i] == open {
                depth += 1;
            } else if c[*i] == close {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return;
                }
            }
            *i += 1;
        }
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '{' {
            // Matchers hold strings with braces only inside quotes: skip them quote-aware.
            i += 1;
            while i < c.len() && c[i] != '}' {
                if c[i] == '"' {
                    i += 1;
                    while i < c.len() && c[i] != '"' {
                        if c[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                i += 1;
            }
            i += 1;
        } else if ch == '[' {
            skip_group(&mut i, '[', ']');
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let call = c.get(j) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = j;
                    skip_group(&mut i, '(', ')');
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_metric_name_extraction_finds_selectors_only() {
    let got = metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"$route",x="}{"}[5m] offset 1h))) / ignoring(le) group_left(x) b_total > 14 * 86400 and on (i) c"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b_total", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// A YAML rules file with each expression as a recording rule, for `promtool check rules`.
fn rules_file(exprs: &[(String, String)]) -> String {
    let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        y.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&substitute(e)).unwrap()
        ));
    }
    y
}

/// The sample names of an exposition, and the family names (`# TYPE`), so that a histogram's
/// `_bucket`, `_sum` and `_count` are all known.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = parse_metrics(text).into_iter().map(|s| s.name).collect();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[tokio::test]
async fn every_dashboard_and_alert_query_parses_and_uses_exported_metrics() {
    let d = dashboard();
    let mut exprs = dashboard_exprs(&d);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // The template variables' label_values(metric, label) queries name metrics too.
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(m, _)| m.to_string())
                .unwrap_or_else(|| panic!("variable query {q}"));
            exprs.push((format!("variable {}", v["name"]), inner));
        }
    }
    for e in alert_exprs() {
        exprs.push(("alert rule".to_string(), e));
    }

    // Every expression parses (promtool's PromQL parser).
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("exprs.yml");
    std::fs::write(&file, rules_file(&exprs)).unwrap();
    if let Some((ok, out)) = promtool(&["check", "rules", file.to_str().unwrap()]) {
        assert!(
            ok,
            "promtool check rules on the dashboard and alert queries:\n{out}"
        );
    }

    // A gateway exercising what the queries look at: routes and upstreams, retries, a dead
    // target (health checks failing, ejection), rate limiting, the cache and an HTTPS
    // listener's certificate.
    let a = Backend::start("a");
    let dead = dead_addr();
    let tls_port = free_port();
    let (cfg, _) = Cfg::new().tls_listener(tls_port, "");
    let gw = cfg
        .upstream("retrying", &[target_addr(&dead), target(&a)], "retries: 1")
        .upstream(
            "down",
            &[target_addr(&dead)],
            &format!("retries: 0\npassive: {{ max_fails: 1, fail_timeout: 10s }}\n{HC_TCP}"),
        )
        .upstream("plain", &[target(&a)], "")
        .route("retry", &["/retry"], "retrying", "")
        .route("down", &["/down"], "down", "")
        .route(
            "limited",
            &["/limited"],
            "plain",
            "plugins:\n  - name: rate-limiting\n    config: { minute: 1 }",
        )
        .route(
            "cached",
            &["/cached"],
            "plain",
            "plugins:\n  - name: proxy-cache\n    config: { ttl: 1m }",
        )
        .start();
    for path in [
        "/retry", "/retry", "/retry", "/down", "/down", "/limited", "/limited", "/cached",
        "/cached", "/nowhere",
    ] {
        let _ = gw.get(path).await;
    }
    let t = gw.metrics_text().await;
    let have = exported(&t);

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (title, e) in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{title}: no metric in {e}");
        for n in names {
            if !have.contains(&n) {
                missing.push(format!("{title}: {n}"));
            }
            used.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by gatehouse: {missing:#?}\n--- /metrics ---\n{t}"
    );
    for n in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "upstream_request_duration_seconds_bucket",
        "upstream_target_healthy",
        "upstream_retries_total",
        "upstream_retries_skipped_total",
        "rate_limit_hits_total",
        "cache_requests_total",
        "http_active_connections",
        "config_reloads_total",
        "tls_certificate_expiry_seconds",
        "build_info",
        "rate_limit_backend_errors_total",
        "access_log_dropped_total",
    ] {
        assert!(used.contains(n), "no dashboard query or alert uses {n}");
    }
}
