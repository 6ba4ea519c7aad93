//! `gatehouse demo`: the first URL it prints (the gateway's root) answers with an index of
//! the demo's endpoints, every one of which is routed by the demo config.
use crate::common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Kills the demo process when the test ends, whatever happens.
struct Demo(std::process::Child);
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_demo_root_lists_its_endpoints() {
    // The demo config on free gateway and admin ports (its upstreams keep their fixed ports).
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let d = dir.path().display();
    let yaml = gatehouse::demo::DEMO_CONFIG
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"))
        .replace("/tmp/gatehouse-demo.pid", &format!("{d}/g.pid"))
        .replace("/tmp/gatehouse-demo-upgrade.sock", &format!("{d}/g.sock"))
        .replace("access_log: stdout", "access_log: off");
    let conf = dir.path().join("demo.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let _demo = Demo(
        Command::new(BIN)
            .arg("demo")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = wait_until(Duration::from_secs(15), || {
        raw_request(
            admin,
            b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .0
        .starts_with(b"HTTP/1.1 200")
    })
    .await;
    assert!(ready, "demo did not start");

    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    let paths: Vec<&str> = v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains(&"/api/v1/users"), "{v}");
    // Every endpoint listed is served by a demo route (or the health probe), not a 404.
    for p in &paths {
        let r = client()
            .get(format!("http://127.0.0.1:{port}{p}"))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 404, "{p} is listed but not routed");
    }
    // Only the root: an unknown path is still the gateway's 404.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client()
        .post(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "POST / is no index");
}
