//! Several gateways, one fleet: `rate-limiting` `policy: redis` on a real Redis Cluster
//! (3 masters + 3 replicas, started here on loopback ports) and on a real Sentinel set, with
//! a master killed mid-test; over TLS with a private CA; `cache.purge_broadcast` over Redis
//! pub/sub.
//!
//! Each test starts its own redis-server processes in a temp dir (skipped with a notice when
//! redis-server or redis-cli is missing; a failure when `CI=true`).
use crate::common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;

use std::time::{Duration, Instant};
use tempfile::TempDir;

const PW: &str = "fleet-redis-pw";

/// Polls `cond` every 50 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of `masters` masters with one replica each, every node on loopback.
struct Cluster {
    nodes: Vec<Redis>,
    /// Holds the nodes' files while they run.
    _dir: TempDir,
}

impl Cluster {
    fn start(masters: usize) -> Cluster {
        let dir = TempDir::new().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let port = free_port();
            // The cluster bus defaults to port + 10000, which can be a port free_port() hands
            // to another test running beside this one (a node then never starts): take the
            // bus port from free_port() too (Redis 7's `cluster-port`).
            let bus = free_port().to_string();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            nodes.push(
                Redis::builder()
                    .port(port)
                    .password(PW)
                    .dir(dir.path())
                    .args(&[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        &conf.display().to_string(),
                        // Fast failure detection, and a replica always stands in for its master.
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-replica-validity-factor",
                        "0",
                    ])
                    .spawn(),
            );
        }
        let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = nodes[0].cli(&create);
        assert!(out.contains("[OK] All 16384 slots covered"), "{out}");
        let c = Cluster { nodes, _dir: dir };
        wait_for(
            Duration::from_secs(20),
            "cluster_state:ok everywhere",
            || {
                c.nodes
                    .iter()
                    .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            },
        );
        wait_for(Duration::from_secs(20), "replicas in sync", || {
            c.nodes.iter().all(|n| {
                let info = n.cli(&["info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        c
    }

    fn seed(&self, i: usize) -> String {
        self.nodes[i % self.nodes.len()].addr()
    }

    fn alive(&self) -> impl Iterator<Item = &Redis> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Ports of the live masters and how many keys each holds.
    fn masters(&self) -> Vec<(u16, u64)> {
        self.alive()
            .filter(|n| n.cli(&["role"]).starts_with("master"))
            .map(|n| {
                let keys = n.cli(&["dbsize"]).trim().parse().unwrap_or(0);
                (n.port, keys)
            })
            .collect()
    }
}

/// `rate-limiting` per `X-Tenant` on Redis (flow-mapping YAML of `redis:`).
fn limited(minute: u64, redis: &str, extra: &str) -> String {
    format!(
        "plugins:\n  - name: rate-limiting\n    config: {{ minute: {minute}, limit_by: header, header_name: X-Tenant, policy: redis, redis: {redis}{extra} }}"
    )
}

/// `timeout`: the Redis call timeout; past it a request falls back (allowed), so a test that
/// counts exact limits gives a loaded machine room, and the fail-over test a short one.
fn cluster_redis(seeds: &[String], timeout: &str) -> String {
    let list: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "{{ cluster_nodes: [{}], password: \"${{GATEHOUSE_TEST_UNSET_PW:-{PW}}}\", timeout: {timeout} }}",
        list.join(", ")
    )
}

/// One request for `tenant` on `gw`: (status, X-RateLimit-Remaining if present).
async fn hit(gw: &Gateway, path: &str, tenant: &str) -> (u16, Option<String>) {
    let r = gw
        .client
        .get(gw.url(path))
        .header("x-tenant", tenant)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()));
    let remaining = r
        .headers()
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (r.status().as_u16(), remaining)
}

/// `n` requests per tenant, all at once, spread round robin over `gws`: statuses by tenant.
async fn burst(
    gws: &[&Gateway],
    path: &str,
    tenants: &[String],
    n: usize,
) -> HashMap<String, Vec<u16>> {
    let mut set = tokio::task::JoinSet::new();
    let mut i = 0;
    for t in tenants {
        for _ in 0..n {
            let gw = gws[i % gws.len()];
            i += 1;
            let (client, url, t) = (gw.client.clone(), gw.url(path), t.clone());
            set.spawn(async move {
                let r = client
                    .get(url)
                    .header("x-tenant", &t)
                    .send()
                    .await
                    .expect("request");
                (t, r.status().as_u16())
            });
        }
    }
    let mut by: HashMap<String, Vec<u16>> = HashMap::new();
    while let Some(r) = set.join_next().await {
        let (t, s) = r.expect("task");
        by.entry(t).or_default().push(s);
    }
    by
}

fn count(v: &[u16], status: u16) -> usize {
    v.iter().filter(|s| **s == status).count()
}

/// Requests for `tenants` (one each per round, every 100 ms) until `done` says the failover
/// finished, within 30 s: every one answered 200 or 429 (fault_tolerant: never a 5xx).
/// How long it took.
async fn through_failover(
    gws: &[&Gateway],
    tenants: &[String],
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    let mut statuses = Vec::new();
    loop {
        let by = burst(gws, "/r", tenants, 1).await;
        statuses.extend(by.into_values().flatten());
        if done() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {what} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    started.elapsed()
}

fn tenants(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_enforce_one_limit_on_a_redis_cluster() {
    if !redis_tools_installed() {
        return;
    }
    let cluster = Cluster::start(3);
    let a = Backend::start("a");
    // Each gateway knows a different single seed node: the rest of the cluster is discovered.
    let gws: Vec<Gateway> = (0..3)
        .map(|i| {
            one_route(
                &a,
                "/r",
                &limited(10, &cluster_redis(&[cluster.seed(i * 2)], "2s"), ""),
            )
        })
        .collect();
    let refs: Vec<&Gateway> = gws.iter().collect();

    // 8 tenants x 25 requests at once over 3 gateways: exactly 10 per tenant pass.
    let ts = tenants("t", 8);
    let by = burst(&refs, "/r", &ts, 25).await;
    for t in &ts {
        let v = &by[t];
        assert_eq!(count(v, 200), 10, "{t}: {v:?}");
        assert_eq!(count(v, 429), 15, "{t}: {v:?}");
    }
    assert_eq!(
        a.hits(),
        80,
        "the upstream saw exactly the allowed requests"
    );

    // The limits' keys are spread over the masters (one slot per tenant's limit), and
    // every gateway counted through the cluster (no fallback).
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    let holding = masters.iter().filter(|(_, k)| *k > 0).count();
    assert!(holding >= 2, "keys on one master only: {masters:?}");
    for gw in &gws {
        assert_eq!(
            gw.metric_total("rate_limit_backend_errors_total").await,
            0.0
        );
        let log = gw.stderr();
        assert!(
            !log.contains(PW),
            "the Redis password never reaches the logs"
        );
    }
    // Headers count down in one sequence whichever gateway answers.
    let mut seen = Vec::new();
    for i in 0..4 {
        seen.push(hit(&gws[i % 3], "/r", "solo").await);
    }
    let want: Vec<(u16, Option<String>)> = ["9", "8", "7", "6"]
        .iter()
        .map(|r| (200, Some(r.to_string())))
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_cluster_master_fails_over_without_5xx_and_limits_hold_again() {
    if !redis_tools_installed() {
        return;
    }
    let mut cluster = Cluster::start(3);
    let a = Backend::start("a");
    let seeds: Vec<String> = (0..6).map(|i| cluster.seed(i)).collect();
    let gws: Vec<Gateway> = (0..2)
        .map(|_| one_route(&a, "/r", &limited(10, &cluster_redis(&seeds, "200ms"), "")))
        .collect();
    let refs: Vec<&Gateway> = gws.iter().collect();

    let before = tenants("before", 8);
    let by = burst(&refs, "/r", &before, 3).await;
    assert!(by.values().all(|v| count(v, 200) == 3), "{by:?}");

    // Kill a master that holds some of these limits.
    let (victim, keys) = cluster
        .masters()
        .into_iter()
        .max_by_key(|(_, k)| *k)
        .expect("a master");
    assert!(keys > 0);
    let idx = cluster.nodes.iter().position(|n| n.port == victim).unwrap();
    cluster.nodes[idx].stop();

    // Traffic through the failover: fault_tolerant lets it through, never a 5xx.
    let survivor = cluster.alive().next().unwrap();
    let failover = through_failover(&refs, &before, "failover", || {
        let promoted = cluster.masters().len() == 3;
        let ok = survivor
            .cli(&["cluster", "info"])
            .contains("cluster_state:ok");
        promoted && ok
    })
    .await;

    // The gateways find the promoted replica: every tenant of the dead master is counted
    // again (headers come back) on both gateways.
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in &gws {
        for t in &before {
            while hit(gw, "/r", t).await.1.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{t} not counted again\n{}",
                    gw.stderr()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Fresh limits hold exactly again across both gateways.
    let after = tenants("after", 8);
    let by = burst(&refs, "/r", &after, 15).await;
    for t in &after {
        assert_eq!(count(&by[t], 200), 10, "{t}: {:?}", by[t]);
    }
    // The outage was counted: errors and time on the fallback.
    let mut errors = 0.0;
    let mut fallback = 0.0;
    for gw in &gws {
        errors += gw.metric_total("rate_limit_backend_errors_total").await;
        fallback += gw
            .metric_total("rate_limit_backend_fallback_seconds_total")
            .await;
    }
    assert!(
        errors > 0.0,
        "requests to the dead master failed over to the fallback"
    );
    assert!(
        fallback > 0.0 && fallback < 2.0 * (failover.as_secs_f64() + 16.0),
        "fallback {fallback} s for a failover of {failover:?}"
    );
    eprintln!("failover took {failover:?}; {errors} backend errors, {fallback:.2} s on the fallback over both gateways");
}

/// GET `path` on `gw`: its X-Cache-Status.
async fn cache_status(gw: &Gateway, path: &str) -> String {
    let r = gw
        .client
        .get(gw.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}\n{}", gw.diagnostics()));
    assert_eq!(r.status(), 200, "{}", gw.stderr());
    r.headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn purge(gw: &Gateway, body: &str) -> (u16, serde_json::Value) {
    let r = gw
        .client
        .post(gw.admin_url("/cache/purge"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /cache/purge");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_on_one_node_empties_the_entry_on_every_node() {
    if !redis_tools_installed() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let mut redis = Redis::builder().password(PW).dir(dir.path()).spawn();
    let b = Backend::start("b");
    let top = format!(
        "cache:\n  purge_broadcast:\n    url: \"redis://:{PW}@127.0.0.1:{}/0\"\n    channel: test-purges\n",
        redis.port
    );
    let node = || {
        Cfg::new()
            .upstream("u", &[target(&b)], "retries: 0")
            .route_u(
                "c",
                "plugins:\n  - name: proxy-cache\n    config: { ttl: 60s }",
            )
            .top(&top)
            .start()
    };
    let (na, nb) = (node(), node());
    // Both nodes subscribed before anything is purged.
    wait_for(Duration::from_secs(10), "two subscribers", || {
        redis
            .cli(&["pubsub", "numsub", "test-purges"])
            .contains("\n2")
    });
    for gw in [&na, &nb] {
        for p in ["/c/1", "/c/2"] {
            assert_eq!(cache_status(gw, p).await, "MISS");
            assert_eq!(cache_status(gw, p).await, "HIT");
        }
    }
    assert_eq!(b.hits(), 4);

    // A purge of one path on node A: A drops it, and B within a second.
    let (s, v) = purge(&na, r#"{"route": "c", "path": "/c/1"}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["purged"], 1, "{v}");
    assert_eq!(v["broadcast"]["sent"], true, "{v}");
    assert_eq!(v["broadcast"]["receivers"], 2, "{v}");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let st = cache_status(&nb, "/c/1").await;
        if st == "MISS" {
            break;
        }
        assert_eq!(st, "HIT");
        assert!(
            Instant::now() < deadline,
            "node B still serves /c/1 from its cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.hits(), 5, "node B fetched /c/1 again, once");
    assert_eq!(cache_status(&na, "/c/1").await, "MISS");
    assert_eq!(b.hits(), 6);
    for gw in [&na, &nb] {
        assert_eq!(cache_status(gw, "/c/2").await, "HIT", "other paths stay");
    }

    // A whole-route purge from B reaches A.
    let (s, v) = purge(&nb, r#"{"route": "c"}"#).await;
    assert_eq!(
        (s, &v["broadcast"]["sent"]),
        (200, &Value::Bool(true)),
        "{v}"
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    while cache_status(&na, "/c/2").await == "HIT" {
        assert!(Instant::now() < deadline, "node A still serves /c/2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Redis gone: the purge still applies locally and says the broadcast failed.
    redis.stop();
    assert_eq!(
        cache_status(&na, "/c/1").await,
        "MISS",
        "the route purge covered it"
    );
    assert_eq!(cache_status(&na, "/c/1").await, "HIT");
    let (s, v) = purge(&na, r#"{"route": "c", "path": "/c/1"}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["purged"], 1, "{v}");
    assert_eq!(v["broadcast"]["sent"], false, "{v}");
    assert_eq!(cache_status(&na, "/c/1").await, "MISS");
    for gw in [&na, &nb] {
        assert!(
            !gw.stderr().contains(PW),
            "the Redis password never reaches the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_is_followed_and_limits_hold_again() {
    if !redis_tools_installed() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let mut master = Redis::builder().password(PW).dir(dir.path()).spawn();
    let replica_of = master.port.to_string();
    let replica = Redis::builder()
        .password(PW)
        .dir(dir.path())
        .args(&["--replicaof", "127.0.0.1", &replica_of])
        .spawn();
    wait_for(Duration::from_secs(10), "the replica in sync", || {
        replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    });
    let s = Redis::sentinel(dir.path(), master.port, PW);
    wait_for(
        Duration::from_secs(15),
        "the sentinel to know the replica",
        || {
            s.cli(&["sentinel", "replicas", "mymaster"])
                .contains(&replica.port.to_string())
        },
    );

    let a = Backend::start("a");
    let redis = format!(
        "{{ sentinel: {{ master: mymaster, nodes: [\"127.0.0.1:{}\"] }}, password: \"{PW}\", timeout: 200ms }}",
        s.port
    );
    let gws: Vec<Gateway> = (0..2)
        .map(|_| one_route(&a, "/r", &limited(5, &redis, "")))
        .collect();
    let refs: Vec<&Gateway> = gws.iter().collect();
    let by = burst(&refs, "/r", &tenants("before", 4), 8).await;
    assert!(by.values().all(|v| count(v, 200) == 5), "{by:?}");
    assert!(
        master.cli(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0,
        "the counts live on the master"
    );

    // The master dies; the sentinel promotes the replica.
    master.stop();
    let replica_port = replica.port.to_string();
    let failover = through_failover(&refs, &tenants("during", 2), "sentinel failover", || {
        let addr = s.cli(&["sentinel", "get-master-addr-by-name", "mymaster"]);
        addr.contains(&replica_port)
    })
    .await;
    // Both gateways ask the sentinel again and count on the new master.
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in &gws {
        while hit(gw, "/r", "probe").await.1.is_none() {
            assert!(
                Instant::now() < deadline,
                "not counting again\n{}",
                gw.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let after = tenants("after", 4);
    let by = burst(&refs, "/r", &after, 8).await;
    for t in &after {
        assert_eq!(count(&by[t], 200), 5, "{t}: {:?}", by[t]);
    }
    assert!(replica.cli(&["role"]).starts_with("master"));
    let mut errors = 0.0;
    for gw in &gws {
        errors += gw.metric_total("rate_limit_backend_errors_total").await;
        assert!(
            !gw.stderr().contains(PW),
            "the Redis password never reaches the logs"
        );
    }
    assert!(errors > 0.0);
    eprintln!("sentinel failover took {failover:?}; {errors} backend errors over both gateways");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_over_tls_trust_only_the_configured_ca() {
    if !redis_tools_installed() {
        return;
    }
    let dir = TempDir::new().unwrap();
    make_certs(dir.path());
    let tls = dir.path().join("tls");
    // Killed on drop, even when an assertion fails.
    let redis = Redis::builder()
        .password(PW)
        .dir(dir.path())
        .tls(&tls)
        .spawn();
    let port = redis.port;
    let ca = tls.join("ca.pem").display().to_string();
    let a = Backend::start("a");
    let url = format!("rediss://:{PW}@localhost:{port}/0");
    let gw = Cfg::new()
        .upstream("u", &[target(&a)], "")
        .route(
            "verified",
            &["/v"],
            "u",
            &limited(
                3,
                &format!("{{ url: \"{url}\", ca_file: \"{ca}\", timeout: 500ms }}"),
                "",
            ),
        )
        .route(
            "untrusted",
            &["/n"],
            "u",
            &limited(3, &format!("{{ url: \"{url}\", timeout: 500ms }}"), ""),
        )
        .start();
    let mut v = Vec::new();
    for _ in 0..4 {
        v.push(hit(&gw, "/v", "x").await);
    }
    let want: Vec<(u16, Option<String>)> = vec![
        (200, Some("2".into())),
        (200, Some("1".into())),
        (200, Some("0".into())),
        (429, Some("0".into())),
    ];
    assert_eq!(v, want, "{}", gw.stderr());
    // The test CA is not among the system's roots: no connection, so fault_tolerant lets
    // requests through uncounted.
    for _ in 0..4 {
        assert_eq!(hit(&gw, "/n", "x").await, (200, None));
    }
    assert!(gw.metric_total("rate_limit_backend_errors_total").await >= 1.0);
    assert!(!gw.stderr().contains(PW));
}
