//! `gatehouse demo`: the first URL it prints (the gateway's root) answers with an index of
//! the demo's endpoints, every one of which is routed by the demo config; its HTTPS upstream
//! is verified against the CA the demo made at start, its gRPC service answers over h2c,
//! and the orders route mirrors its requests to the shadow instance.
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
    let endpoints: Vec<(&str, &str)> = v["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| Some((e["method"].as_str()?, e["path"].as_str()?)))
        .collect();
    let paths: Vec<&str> = endpoints.iter().map(|(_, p)| *p).collect();
    assert!(paths.contains(&"/api/v1/users"), "{v}");
    assert!(paths.contains(&"/api/v1/inventory"), "{v}");
    assert!(paths.contains(&"/demo.Greeter/SayHello"), "{v}");
    // Every GET endpoint listed is served by a demo route (or the health probe), not a 404.
    for (_, p) in endpoints.iter().filter(|(m, _)| *m == "GET") {
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

    // The HTTPS upstream: the certificate verified against the CA written next to the
    // config, under the name in tls.sni.
    assert!(dir.path().join("demo-pki/ca.pem").is_file());
    let r = client()
        .get(format!("http://127.0.0.1:{port}/api/v1/inventory"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["service"], "inventory", "{v}");
    assert_eq!(v["tls_server_name"], "inventory.demo.internal", "{v}");

    // The gRPC greeter through the gateway, h2c on both legs: the banner's request.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/demo.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream
        .send_data(bytes::Bytes::from_static(b"\0\0\0\0\x05\n\x03Ada"), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("gRPC answer")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, gatehouse::demo::hello_reply("Hello, Ada!").to_vec());
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");

    // request-mirror: the orders request above was copied to the shadow (orders-3).
    let mut sent = 0.0;
    for _ in 0..100 {
        let m = client()
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sent = metric(
            &m,
            "mirror_requests_total",
            &[
                ("route", "orders"),
                ("upstream", "orders-shadow"),
                ("result", "sent"),
            ],
        )
        .unwrap_or(0.0);
        if sent >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent >= 1.0, "the orders request was mirrored");
}
