//! Access log: one JSON object a line with the contract's fields, written within a second,
//! no secret in any line, SIGUSR1 reopens the file, stdout mode, client aborts as 499.
use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FIELDS: &[&str] = &[
    "ts",
    "request_id",
    "client_ip",
    "method",
    "path",
    "route",
    "upstream",
    "target",
    "status",
    "bytes_sent",
    "duration_ms",
    "upstream_ms",
    "consumer",
    "cache",
    "error",
];

/// Poll `path` until it has at least `n` lines; returns them and how long it took.
async fn wait_lines(path: &std::path::Path, n: usize, limit: Duration) -> (Vec<String>, Duration) {
    let start = Instant::now();
    loop {
        let lines = file_lines(path);
        if lines.len() >= n || start.elapsed() > limit {
            return (lines, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test]
async fn file_log_has_contract_fields_and_no_secrets() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    b.set_status(503);
    let dead = dead_addr();
    let cfg = Cfg::new()
        .upstream("ua", &[target(&a)], "")
        .upstream("ub", &[target(&b)], "retries: 0")
        .upstream("ud", &[target_addr(&dead)], "retries: 0")
        .route("ra", &["/a"], "ua", "")
        .route("rb", &["/b"], "ub", "")
        .route("rd", &["/d"], "ud", "");
    // relative: resolved against the config file's directory
    let gw = start_with_access_log(cfg, "access.log");
    let log = gw.dir().join("access.log");

    let secrets = [
        "SECRETQ1", "SECRETQ2", "SECRETQ3", "SECRETQ4", "SECRETH1", "SECRETH2", "SECRETH3",
    ];
    let r = gw
        .client
        .get(gw.url(
            "/a/items?api_key=SECRETQ1&page=2&apikey=SECRETQ2&access_token=SECRETQ3&password=SECRETQ4",
        ))
        .header("X-API-Key", "SECRETH1")
        .header("Authorization", "Bearer SECRETH2")
        .header("Cookie", "session=SECRETH3")
        .header("X-Request-ID", "req-abc-1")
        .send()
        .await
        .expect("GET /a");
    assert_eq!(r.status().as_u16(), 200);
    let body_len = r.bytes().await.unwrap().len();
    assert!(a.last_request().unwrap().uri.contains("api_key=SECRETQ1"));

    let (s, _) = gw.send(gw.client.post(gw.url("/nowhere"))).await;
    assert_eq!(s, 404);
    let (s, _) = gw.send(gw.client.get(gw.url("/b"))).await;
    assert_eq!(s, 503);
    let (s, _) = gw.send(gw.client.get(gw.url("/d?token=SECRETQ1"))).await;
    assert_eq!(s, 502);
    let sent = Instant::now();

    let (lines, took) = wait_lines(&log, 4, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 4, "lines: {lines:#?}\n{}", gw.stderr());
    // the contract: written within a second (measured from the last response)
    assert!(
        sent.elapsed() < Duration::from_secs(2) && took < Duration::from_secs(1),
        "access log lines took {took:?}"
    );
    for line in &lines {
        for s in secrets {
            assert!(
                !line.contains(s),
                "secret {s} written to the access log: {line}"
            );
        }
        let v = parse(line);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = FIELDS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "fields of {line}");
        assert!(line.starts_with("{\"ts\":"), "ts first: {line}");
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "ts {ts}"
        );
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(!v["request_id"].as_str().unwrap().is_empty());
    }

    let ok = parse(&lines[0]);
    assert_eq!(ok["request_id"], "req-abc-1");
    assert_eq!(ok["method"], "GET");
    assert_eq!(
        ok["path"],
        "/a/items?api_key=REDACTED&page=2&apikey=REDACTED&access_token=REDACTED&password=REDACTED"
    );
    assert_eq!(ok["route"], "ra");
    assert_eq!(ok["upstream"], "ua");
    assert_eq!(ok["target"], a.addr());
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_sent"].as_u64().unwrap() as usize, body_len);
    let up = ok["upstream_ms"]
        .as_f64()
        .expect("upstream_ms for a proxied request");
    assert!(up >= 0.0 && up <= ok["duration_ms"].as_f64().unwrap());
    assert!(ok["consumer"].is_null() && ok["cache"].is_null() && ok["error"].is_null());

    let nf = parse(&lines[1]);
    assert_eq!(nf["method"], "POST");
    assert_eq!(nf["status"], 404);
    assert!(nf["route"].is_null() && nf["upstream"].is_null() && nf["target"].is_null());
    assert!(nf["upstream_ms"].is_null());
    assert_eq!(nf["error"], "not_found");

    // the upstream's own 503 is passed through: not a gateway error
    let ub = parse(&lines[2]);
    assert_eq!(ub["status"], 503);
    assert_eq!(ub["target"], b.addr());
    assert!(ub["error"].is_null(), "{ub}");
    assert!(ub["upstream_ms"].is_number());

    let bad = parse(&lines[3]);
    assert_eq!(bad["status"], 502);
    assert_eq!(bad["error"], "bad_gateway");
    assert_eq!(bad["path"], "/d?token=REDACTED");
    assert!(bad["upstream_ms"].is_null());
}

#[tokio::test]
async fn sigusr1_reopens_the_file() {
    let a = Backend::start("a");
    let cfg = Cfg::new()
        .upstream("ua", &[target(&a)], "")
        .route("ra", &["/a"], "ua", "");
    let dir_log = cfg.dir.path().join("logs");
    std::fs::create_dir_all(&dir_log).unwrap();
    let gw = start_with_access_log(cfg, &dir_log.join("access.log").display().to_string());
    let log = dir_log.join("access.log");
    let rotated = dir_log.join("access.log.1");

    let (s, _) = gw.send(gw.client.get(gw.url("/a/1"))).await;
    assert_eq!(s, 200);
    assert_eq!(wait_lines(&log, 1, Duration::from_secs(3)).await.0.len(), 1);

    // logrotate: rename, then SIGUSR1; until then lines still go to the renamed file
    std::fs::rename(&log, &rotated).unwrap();
    let (s, _) = gw.send(gw.client.get(gw.url("/a/2"))).await;
    assert_eq!(s, 200);
    assert_eq!(
        wait_lines(&rotated, 2, Duration::from_secs(3))
            .await
            .0
            .len(),
        2
    );
    gw.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(3), || log.exists()).await,
        "SIGUSR1 did not reopen the access log\n{}",
        gw.stderr()
    );
    let (s, _) = gw.send(gw.client.get(gw.url("/a/3"))).await;
    assert_eq!(s, 200);
    let (now, _) = wait_lines(&log, 1, Duration::from_secs(3)).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(parse(&now[0])["path"], "/a/3");
    let old = file_lines(&rotated);
    assert_eq!(old.len(), 2, "{old:?}");
    assert!(gw.exited().is_none(), "SIGUSR1 must not stop the gateway");
}

#[tokio::test]
async fn stdout_log_and_client_abort_is_499() {
    let slow = Backend::start("slow");
    slow.set_delay(Duration::from_millis(1500));
    let cfg = Cfg::new()
        .upstream("us", &[target(&slow)], "retries: 0")
        .route("rs", &["/slow"], "us", "");
    let gw = start_with_access_log(cfg, "stdout");

    // the client gives up before the upstream answers
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"GET /slow/x HTTP/1.1\r\nHost: t\r\nX-Request-ID: abort-1\r\n\r\n")
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || slow.in_flight() == 1).await,
        "request did not reach the upstream"
    );
    drop(s);

    let deadline = Instant::now() + Duration::from_secs(6);
    let line = loop {
        let out = gw.stdout();
        if let Some(l) = out.lines().find(|l| l.contains("abort-1")) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the aborted request on stdout:\n{out}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v = parse(&line);
    assert_eq!(v["status"], 499, "{line}");
    assert!(
        v["error"].is_null(),
        "a client abort is not an error: {line}"
    );
    assert_eq!(v["route"], "rs");

    // a normal request lands on stdout too
    slow.set_delay(Duration::ZERO);
    let (st, _) = gw.send(gw.client.get(gw.url("/slow/ok"))).await;
    assert_eq!(st, 200);
    assert!(
        wait_until(Duration::from_secs(2), || gw
            .stdout()
            .contains("\"/slow/ok\""))
        .await,
        "{}",
        gw.stdout()
    );
    let errors: Vec<String> = gw
        .stderr()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "client abort logged as an error: {errors:#?}"
    );
}

#[tokio::test]
async fn startup_logs_no_service_exit() {
    // The access-log writer runs for the life of the server: Pingora's INFO line
    // "service '...' exited." at every start read like a failure.
    let b = Backend::start("b");
    let cfg = Cfg::new().upstream("u", &[target(&b)], "").route_root("");
    let gw = start_with_access_log(cfg, "access.log");
    let (s, _) = gw.get_json("/x").await;
    assert_eq!(s, 200);
    let (lines, _) = wait_lines(&gw.dir().join("access.log"), 1, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 1, "the writer writes");
    let err = gw.stderr();
    assert!(
        !err.contains("exited"),
        "a service exited at startup:\n{err}"
    );
}
