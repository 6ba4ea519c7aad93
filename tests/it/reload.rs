//! Hot reload: SIGHUP and admin `POST /reload` change routes and upstreams, an invalid file
//! is rejected with path and line while the old config keeps serving, reloads under load
//! drop nothing, target health carries over, and the outcome shows in the log, in
//! `config_reloads_total` and `config_info`.
use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

async fn served_by(gw: &Gateway, path: &str) -> (u16, String) {
    let (s, body) = gw.send(gw.client.get(gw.url(path))).await;
    (s, backend_of(&body))
}

#[tokio::test]
async fn sighup_and_post_reload_change_routes_and_upstreams() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route("r1", &["/x"], "u", "")
        .start();
    assert_eq!(served_by(&gw, "/x").await, (200, "a".into()));

    // SIGHUP: upstream u now points at b, new upstream v and route r2
    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&b)], "")
            .upstream("v", &[target(&a)], "")
            .route("r1", &["/x"], "u", "")
            .route("r2", &["/y"], "v", ""),
    );
    gw.signal("HUP");
    assert!(
        gw.wait_version(2, WAIT).await,
        "SIGHUP did not reload\n{}",
        gw.stderr()
    );
    assert_eq!(served_by(&gw, "/x").await, (200, "b".into()));
    assert_eq!(served_by(&gw, "/y").await, (200, "a".into()));
    // The log line is written right after the swap that /status already shows: wait for it.
    let mut log = gw.stderr();
    for _ in 0..50 {
        if log.contains("SIGHUP: config reloaded") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log = gw.stderr();
    }
    let line = log
        .lines()
        .find(|l| l.contains("SIGHUP: config reloaded"))
        .unwrap_or_else(|| panic!("no reload log line:\n{log}"));
    assert!(
        line.contains("routes +[r2]") && line.contains("upstreams +[v] ~[u]"),
        "summary missing from: {line}"
    );
    let t = gw.metrics_text().await;
    assert_eq!(
        metric(&t, "config_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    let info = parse_metrics(&t);
    let info = samples(&info, "config_info", &[]);
    assert_eq!(info.len(), 1, "one config_info series: {info:?}");
    assert_eq!(info[0].labels["version"], "2");
    assert_eq!(
        info[0].labels["hash"],
        gw.status_json().await["hash"].as_str().unwrap()
    );
    // Recorded in the logging phase, which may finish just after the client got its answer.
    let r2_count = |t: &str| {
        metric(
            t,
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "r2"),
                ("status_code", "200"),
                ("service", "v"),
            ],
        )
    };
    let mut t = t;
    for _ in 0..50 {
        if r2_count(&t) == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        t = gw.metrics_text().await;
    }
    assert_eq!(r2_count(&t), Some(1.0));

    // POST /reload: r2 and v removed, r1 moves to /z
    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&b)], "")
            .route("r1", &["/z"], "u", ""),
    );
    let (s, v) = gw.admin_reload().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"], "success");
    assert_eq!(v["version"], 3);
    assert_eq!(v["needs_upgrade"], false);
    assert_eq!(v["changes"]["routes"]["removed"], serde_json::json!(["r2"]));
    assert_eq!(v["changes"]["routes"]["changed"], serde_json::json!(["r1"]));
    assert_eq!(
        v["changes"]["upstreams"]["removed"],
        serde_json::json!(["v"])
    );
    assert_eq!(served_by(&gw, "/z").await, (200, "b".into()));
    assert_eq!(gw.send(gw.client.get(gw.url("/y"))).await.0, 404);
    assert_eq!(gw.send(gw.client.get(gw.url("/x"))).await.0, 404);
    let t = gw.metrics_text().await;
    assert_eq!(
        metric(&t, "config_reloads_total", &[("result", "success")]),
        Some(2.0)
    );
    assert!(
        !t.contains("route=\"r2\""),
        "series of a removed route remain:\n{t}"
    );
    assert!(
        !t.contains("upstream=\"v\""),
        "series of a removed upstream remain"
    );
    assert!(gw.stderr().contains("config reloaded via admin API"));

    // same file again: nothing to do
    let (s, v) = gw.admin_reload().await;
    assert_eq!(s, 200);
    assert_eq!(v["result"], "unchanged");
    assert_eq!(v["version"], 3);

    // a listener change is applied later, by a binary upgrade
    let mut moved = Cfg::new()
        .upstream("u", &[target(&b)], "")
        .route("r1", &["/z"], "u", "");
    moved.port = gw.port;
    moved.admin_port = gw.admin_port;
    let yaml = moved
        .yaml()
        .replace(
            &moved.dir.path().display().to_string(),
            &gw.dir().display().to_string(),
        )
        .replace("  threads: 1\n", "  threads: 2\n")
        .replace("\"/z\"", "\"/w\"");
    gw.write_config_yaml(&yaml);
    let (s, v) = gw.admin_reload().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["needs_upgrade"], true, "{v}");
    assert_eq!(
        served_by(&gw, "/w").await,
        (200, "b".into()),
        "the rest is applied"
    );
}

#[tokio::test]
async fn invalid_file_is_rejected_and_old_config_keeps_serving() {
    let (a, cfg) = upstream_u();
    let gw = cfg.route("r1", &["/x"], "u", "").start();
    let hash = gw.status_json().await["hash"].as_str().unwrap().to_string();

    let mut bad = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route("r1", &["/x"], "nope", "");
    bad.port = gw.port;
    bad.admin_port = gw.admin_port;
    let yaml = bad.yaml();
    let line = yaml
        .lines()
        .position(|l| l.contains("upstream: nope"))
        .unwrap()
        + 1;
    gw.write_config_yaml(&yaml);
    let (s, v) = gw.admin_reload().await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "invalid_config");
    let errs = v["errors"].to_string();
    assert!(
        errs.contains("routes[0].upstream") && errs.contains(&format!("(line {line})")),
        "path and line missing: {errs}"
    );
    assert_eq!(served_by(&gw, "/x").await, (200, "a".into()));
    let st = gw.status_json().await;
    assert_eq!(st["version"], 1);
    assert_eq!(st["hash"], hash.as_str());

    // SIGHUP with the same broken file: logged and counted, nothing changes
    gw.signal("HUP");
    let mut counted = false;
    for _ in 0..100 {
        let t = gw.metrics_text().await;
        if metric(&t, "config_reloads_total", &[("result", "error")]) == Some(2.0) {
            counted = true;
            assert_eq!(
                metric(&t, "config_reloads_total", &[("result", "success")]),
                Some(0.0)
            );
            assert_eq!(
                metric(&t, "config_info", &[("version", "1"), ("hash", &hash)]),
                Some(1.0)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "rejected reloads not counted\n{}", gw.stderr());
    let mut log = gw.stderr();
    for _ in 0..50 {
        if log.contains("config rejected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = gw.stderr();
    }
    assert!(log.contains("config rejected"), "{log}");
    assert_eq!(served_by(&gw, "/x").await, (200, "a".into()));
    assert!(gw.exited().is_none());

    // YAML that does not even parse
    gw.write_config_yaml("server: [\n");
    let (s, v) = gw.admin_reload().await;
    assert_eq!(s, 422, "{v}");
    assert!(v["errors"].to_string().contains("YAML syntax"), "{v}");
    assert_eq!(served_by(&gw, "/x").await, (200, "a".into()));
}

#[tokio::test]
async fn ten_reloads_under_load_fail_no_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let cfg_for = |i: usize| {
        // every version differs: weights change and a route comes and goes
        let mut c = Cfg::new().upstream(
            "u",
            &[target_w(&a, 1 + (i % 3) as u32), target_w(&b, 1)],
            "balance: weighted",
        );
        c = c.route("main", &["/x"], "u", "");
        if i % 2 == 1 {
            c = c.route(&format!("extra{i}"), &["/extra"], "u", "");
        }
        c
    };
    let gw = Arc::new(cfg_for(0).start());

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(gw.url("/x/item")).send().await {
                    Ok(r) if r.status().as_u16() == 200 => match r.text().await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failed.lock().unwrap().push(format!("body: {e}")),
                    },
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=10usize {
        gw.write_config(cfg_for(i));
        if i % 2 == 0 {
            let (s, v) = gw.admin_reload().await;
            assert_eq!(s, 200, "{v}");
        } else {
            gw.signal("HUP");
        }
        assert!(
            gw.wait_version(1 + i as u64, WAIT).await,
            "reload {i} not applied\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "reload under load: {ok} requests ok, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(10)]
    );
    assert!(ok > 200, "too little traffic to mean anything: {ok}");
    let t = gw.metrics_text().await;
    assert_eq!(
        metric(&t, "config_reloads_total", &[("result", "success")]),
        Some(10.0)
    );
    assert_eq!(
        metric(&t, "config_reloads_total", &[("result", "error")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn target_health_survives_an_unrelated_reload() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    // slow checks: a state reset by the reload would show as healthy for about 2 s
    let hc = "health_check: { path: /health, interval: 1s, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1 }";
    let gw = one_upstream(&[target(&a), target(&b)], hc, "/x", "");
    a.set_health(500);
    assert!(gw.wait_target_health("u", &a.addr(), false, WAIT).await);

    gw.write_config(
        Cfg::new()
            .upstream("u", &[target(&a), target(&b)], hc)
            .upstream("other", &[target(&b)], "")
            .route("r", &["/x"], "u", "")
            .route("r2", &["/other"], "other", ""),
    );
    let (s, v) = gw.admin_reload().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        gw.target_healthy("u", &a.addr()).await,
        Some(false),
        "health reset by reload"
    );
    let t = gw.metrics_text().await;
    assert_eq!(
        metric(
            &t,
            "upstream_target_healthy",
            &[("upstream", "u"), ("target", &a.addr())]
        ),
        Some(0.0)
    );
    a.reset();
    for _ in 0..10 {
        assert_eq!(served_by(&gw, "/x").await, (200, "b".into()));
    }
    assert_eq!(a.hits(), 0, "unhealthy target got traffic after the reload");
}
