//! DNS service discovery (`upstreams[].discovery`) against a real DNS server: dnsmasq, started
//! by the test on a loopback port with an `--addn-hosts` file that the test rewrites (SIGHUP
//! makes dnsmasq read it again). Backends listen on 127.0.0.2 and 127.0.0.3 on one port, as
//! the addresses behind one name do.
//!
//! Skipped with a notice when dnsmasq is not installed; a failure when `CI=true`.
use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// dnsmasq answering for `*.test` from a hosts file only (TTL 1 s; unknown names: NXDOMAIN),
/// plus the records of `extra` arguments (`--srv-host=...`).
struct Dns {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
    bin: PathBuf,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

fn dnsmasq_bin() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Dns {
    /// Starts dnsmasq with `lines` (`IP NAME`) as its hosts file; `None` if it is missing.
    fn start(lines: &[&str]) -> Option<Dns> {
        Self::start_with(lines, &[])
    }

    /// [`Dns::start`] with extra dnsmasq arguments (`--srv-host=...`).
    fn start_with(lines: &[&str], extra: &[String]) -> Option<Dns> {
        let Some(bin) = dnsmasq_bin() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("dnsmasq is required when CI=true (apt-get install dnsmasq-base)");
            }
            eprintln!("NOTICE: dnsmasq not installed; skipping this DNS discovery test");
            return None;
        };
        let dir = tempfile::TempDir::new().unwrap();
        // dnsmasq started as root may drop to `nobody`, which must still read the hosts file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let hosts = dir.path().join("hosts");
        let mut dns = Dns {
            child: None,
            port: 0,
            hosts,
            bin,
            extra: extra.to_vec(),
            _dir: dir,
        };
        dns.write(lines);
        for _ in 0..5 {
            if dns.spawn(free_port()) {
                return Some(dns);
            }
        }
        panic!("dnsmasq did not start");
    }

    /// Starts dnsmasq on `port`; false when it did not come up (port taken).
    fn spawn(&mut self, port: u16) -> bool {
        let dns = &*self;
        let log = std::fs::File::create(dns._dir.path().join("dnsmasq.log")).unwrap();
        let mut child = Command::new(&dns.bin)
            .arg("--no-daemon")
            .arg(format!("--port={port}"))
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--local=/test/",
                "--log-facility=-",
            ])
            .arg(format!("--addn-hosts={}", dns.hosts.display()))
            .args(&dns.extra)
            .arg(format!(
                "--pid-file={}",
                dns._dir.path().join("dnsmasq.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dnsmasq");
        // Ready once it answers on TCP (it listens on UDP and TCP at once).
        let deadline = Instant::now() + Duration::from_secs(5);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut up = false;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break; // port taken (UDP): try another
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if up {
            self.child = Some(child);
            self.port = port;
            return true;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// dnsmasq does not read its command line again on SIGHUP: new SRV records need a new
    /// process, on the same port.
    fn restart_with(&mut self, extra: &[String]) {
        self.stop();
        self.extra = extra.to_vec();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.spawn(port) {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not restart on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write(&self, lines: &[&str]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&self.hosts, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.hosts, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// New answers: rewrite the hosts file and tell dnsmasq (SIGHUP).
    fn set(&self, lines: &[&str]) {
        self.write(lines);
        let pid = self.child.as_ref().expect("dnsmasq running").id();
        send_signal(pid, "HUP");
    }

    /// The DNS server goes away: lookups fail (connection refused).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn resolver(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two backends on one port, at 127.0.0.2 and 127.0.0.3.
fn backend_pair() -> (Backend, Backend, u16) {
    for _ in 0..50 {
        let a = Backend::start_at("a", "127.0.0.2:0".parse().unwrap()).expect("bind 127.0.0.2");
        let port = a.port();
        if let Some(b) = Backend::start_at("b", SocketAddr::from(([127, 0, 0, 3], port))) {
            return (a, b, port);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// A gateway whose upstream `api` is discovered as `api.test` on `port` from `dns`;
/// `discovery_extra` goes into `discovery:`, `upstream_extra` at the upstream's level.
fn gateway(dns: &Dns, port: u16, discovery_extra: &str, upstream_extra: &str) -> Gateway {
    let extra = format!(
        "discovery:\n  dns: api.test\n  port: {port}\n  resolvers: [\"{}\"]\n  min_interval: 200ms\n  interval: 5s\n{discovery_extra}{upstream_extra}",
        dns.resolver()
    );
    Cfg::new()
        .upstream_untargeted("api", &extra)
        .route("r", &["/api"], "api", "preserve_host: false")
        .start()
}

async fn status_of(gw: &Gateway, upstream: &str) -> serde_json::Value {
    let st = gw.status_json().await;
    st["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .cloned()
        .unwrap_or_else(|| panic!("no upstream {upstream} in /status: {st}"))
}

fn target_addrs(up: &serde_json::Value) -> Vec<String> {
    up["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["addr"].as_str().unwrap().to_string())
        .collect()
}

/// `n` GETs: (statuses, backend names).
async fn run(gw: &Gateway, n: usize) -> (Vec<u16>, Vec<String>) {
    let mut st = Vec::new();
    let mut names = Vec::new();
    for _ in 0..n {
        let (s, body) = gw.send(gw.client.get(gw.url("/api/x"))).await;
        st.push(s);
        names.push(backend_of(&body));
    }
    (st, names)
}

#[tokio::test]
async fn a_changed_answer_moves_traffic_without_a_reload() {
    let (a, b, port) = backend_pair();
    let Some(dns) = Dns::start(&["127.0.0.2 api.test"]) else {
        return;
    };
    let gw = gateway(&dns, port, "", "");

    // The name's one address is the one target; the Host sent is the name, not the IP.
    let (st, names) = run(&gw, 6).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert!(names.iter().all(|n| n == "a"), "{names:?}");
    assert_eq!(b.hits(), 0);
    let host = a.last_request().unwrap().header("host").map(str::to_string);
    assert_eq!(host.as_deref(), Some(format!("api.test:{port}").as_str()));
    let up = status_of(&gw, "api").await;
    assert_eq!(target_addrs(&up), vec![format!("127.0.0.2:{port}")], "{up}");
    assert_eq!(
        up["discovery"]["addresses"],
        serde_json::json!(["127.0.0.2"])
    );
    assert_eq!(up["discovery"]["last_lookup"], "ok");
    let version = gw.status_json().await["version"].clone();

    // The answer moves to 127.0.0.3: traffic follows within the TTL, and no request fails
    // meanwhile (the old address still serves until it leaves the set).
    dns.set(&["127.0.0.3 api.test"]);
    let deadline = Instant::now() + WAIT;
    let mut failed = Vec::new();
    loop {
        let (st, names) = run(&gw, 1).await;
        failed.extend(st.into_iter().filter(|s| *s != 200));
        if names[0] == "b" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never moved to 127.0.0.3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failed.is_empty(),
        "requests failed during the move: {failed:?}"
    );
    // The old backend may go away now: nothing is sent to it any more.
    a.stop();
    a.reset();
    b.reset();
    let (st, _) = run(&gw, 10).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!(b.hits(), 10);
    assert_eq!(a.hits(), 0);
    let up = status_of(&gw, "api").await;
    assert_eq!(target_addrs(&up), vec![format!("127.0.0.3:{port}")], "{up}");
    assert_eq!(
        gw.status_json().await["version"],
        version,
        "the config was not reloaded"
    );

    // Two addresses: both take traffic (round robin over the new set).
    a.restart();
    dns.set(&["127.0.0.2 api.test", "127.0.0.3 api.test"]);
    let mut up = status_of(&gw, "api").await;
    let deadline = Instant::now() + WAIT;
    while target_addrs(&up).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "second address never added: {up}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        up = status_of(&gw, "api").await;
    }
    a.reset();
    b.reset();
    let (st, _) = run(&gw, 10).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!((a.hits(), b.hits()), (5, 5));

    let text = gw.metrics_text().await;
    assert_eq!(
        metric(&text, "upstream_dns_addresses", &[("upstream", "api")]),
        Some(2.0)
    );
    for t in ["127.0.0.2", "127.0.0.3"] {
        let target = format!("{t}:{port}");
        assert_eq!(
            metric(
                &text,
                "upstream_target_healthy",
                &[("upstream", "api"), ("target", &target)]
            ),
            Some(1.0),
            "{text}"
        );
    }
    let ok = metric(
        &text,
        "upstream_dns_resolutions_total",
        &[("upstream", "api"), ("result", "ok")],
    )
    .unwrap();
    assert!(ok >= 3.0, "lookups counted: {ok}");
}

#[tokio::test]
async fn a_dns_outage_keeps_the_last_good_addresses() {
    let (a, _b, port) = backend_pair();
    let Some(mut dns) = Dns::start(&["127.0.0.2 api.test"]) else {
        return;
    };
    let gw = gateway(&dns, port, "", "");
    let (st, _) = run(&gw, 3).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");

    dns.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = gw.metrics_text().await;
        let errors = metric(
            &text,
            "upstream_dns_resolutions_total",
            &[("upstream", "api"), ("result", "error")],
        );
        if errors.unwrap_or(0.0) >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed lookup counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.reset();
    let (st, _) = run(&gw, 10).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!(a.hits(), 10);
    let up = status_of(&gw, "api").await;
    assert_eq!(up["discovery"]["last_lookup"], "error", "{up}");
    assert_eq!(
        up["discovery"]["addresses"],
        serde_json::json!(["127.0.0.2"])
    );
    assert!(up["discovery"]["answer_age_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        gw.stderr().contains("the last good addresses stay in use"),
        "{}",
        gw.stderr()
    );

    // A reload that keeps the name, port and resolvers starts from the last good answer: it
    // needs no lookup, so it succeeds while DNS is down, and traffic keeps flowing.
    let yaml = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.write_config_yaml(&yaml.replace("    discovery:", "    retries: 2\n    discovery:"));
    let (code, body) = gw.admin_reload().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(gw.status_json().await["version"], 2);
    a.reset();
    let (st, _) = run(&gw, 5).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!(a.hits(), 5);
}

#[tokio::test]
async fn a_new_address_takes_traffic_only_after_passing_health_checks() {
    let (a, b, port) = backend_pair();
    let Some(dns) = Dns::start(&["127.0.0.2 api.test"]) else {
        return;
    };
    b.set_health(503);
    let gw = gateway(&dns, port, "", HC_HTTP);
    dns.set(&["127.0.0.2 api.test", "127.0.0.3 api.test"]);
    let b_addr = format!("127.0.0.3:{port}");
    assert!(
        wait_until(WAIT, || b.health_hits() >= 2).await,
        "new address never checked"
    );
    assert_eq!(gw.target_healthy("api", &b_addr).await, Some(false));
    a.reset();
    let (st, _) = run(&gw, 10).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!(
        (a.hits(), b.hits()),
        (10, 0),
        "an unchecked address got traffic"
    );
    let text = gw.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "upstream_target_healthy",
            &[("upstream", "api"), ("target", &b_addr)]
        ),
        Some(0.0)
    );

    b.set_health(200);
    assert!(gw.wait_target_health("api", &b_addr, true, WAIT).await);
    let (st, _) = run(&gw, 10).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert!(
        b.hits() >= 4,
        "healthy new address got no traffic: {}",
        b.hits()
    );
}

#[tokio::test]
async fn a_name_without_address_at_load() {
    let (a, _b, port) = backend_pair();
    let Some(dns) = Dns::start(&["127.0.0.2 other.test"]) else {
        return;
    };
    // By default a load error that names the YAML path and line.
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\nupstreams:\n  - name: api\n    discovery:\n      dns: api.test\n      port: {port}\n      resolvers: [\"{}\"]\nroutes:\n  - name: r\n    paths: [\"/api\"]\n    upstream: api\n",
        free_port(),
        dns.resolver()
    );
    let (code, stderr) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("upstreams[0].discovery.dns") && stderr.contains("(line 6)"),
        "{stderr}"
    );
    assert!(stderr.contains("allow_empty"), "{stderr}");

    // With allow_empty the gateway starts without targets (503), and serves once the name
    // resolves, without a reload.
    let gw = gateway(&dns, port, "  allow_empty: true\n", "");
    let (s, body) = gw.send(gw.client.get(gw.url("/api/x"))).await;
    assert_eq!(s, 503, "{body}");
    assert_error_body(&body, "service_unavailable");
    dns.set(&["127.0.0.2 api.test"]);
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, _) = gw.send(gw.client.get(gw.url("/api/x"))).await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "name never picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.hits() >= 1);
}

/// Asserts that `gatehouse -t` refuses the `discovery:` lines `body` (of an upstream with
/// `allow_empty: true`) with an error holding `path`, `msg` and a line number.
fn assert_discovery_refused(body: &str, path: &str, msg: &str) {
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\nupstreams:\n  - name: api\n    discovery:\n{body}      allow_empty: true\nroutes:\n  - name: r\n    paths: [\"/api\"]\n    upstream: api\n",
        free_port()
    );
    let (code, stderr) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{yaml}\n{stderr}");
    assert!(
        stderr.contains(path) && stderr.contains(msg) && stderr.contains("(line "),
        "want {path} {msg}\n{stderr}"
    );
}

#[test]
fn discovery_config_errors_name_their_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "      dns: \"http://api.test\"\n      port: 80\n",
            "upstreams[0].discovery.dns",
            "not a host name",
        ),
        (
            "      dns: api.test\n      port: 0\n",
            "upstreams[0].discovery.port",
            "between 1 and 65535",
        ),
        (
            "      dns: api.test\n      port: 80\n      resolvers: [\"dns.example\"]\n",
            "upstreams[0].discovery.resolvers[0]",
            "not an IP address",
        ),
        (
            "      dns: api.test\n      port: 80\n      interval: 1s\n      min_interval: 5s\n",
            "upstreams[0].discovery.interval",
            "min_interval",
        ),
        (
            "      dns: api.test\n      port: 80\n      ttl: 5s\n",
            "upstreams[0].discovery",
            "unknown field",
        ),
    ];
    for (body, path, msg) in cases {
        assert_discovery_refused(body, path, msg);
    }
    // `targets` and `discovery` together.
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\nupstreams:\n  - name: api\n    targets: [{{ addr: \"127.0.0.1:1\" }}]\n    discovery: {{ dns: api.test, port: 80, allow_empty: true, resolvers: [\"127.0.0.1:1\"], timeout: 100ms }}\nroutes:\n  - name: r\n    paths: [\"/api\"]\n    upstream: api\n",
        free_port()
    );
    let (code, stderr) = Gateway::validate(&yaml);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("upstreams[0].targets") && stderr.contains("not both"),
        "{stderr}"
    );
}

/// A backend on `ip` at `port` (0: any), retried until the port is free there.
fn backend_on(name: &str, ip: [u8; 4], port: u16) -> Backend {
    for _ in 0..50 {
        if let Some(b) = Backend::start_at(name, SocketAddr::from((ip, port))) {
            return b;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot listen on {ip:?}:{port}");
}

fn srv(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("--srv-host={name},{target},{port},{priority},{weight}")
}

/// Waits until `/status` shows `want` as the upstream's target addresses (in any order).
async fn wait_targets(gw: &Gateway, want: &[String]) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    let mut want = want.to_vec();
    want.sort();
    loop {
        let up = status_of(gw, "api").await;
        let mut got = target_addrs(&up);
        got.sort();
        if got == want {
            return up;
        }
        assert!(
            Instant::now() < deadline,
            "targets never became {want:?}: {up}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn srv_records_give_targets_ports_weights_and_backups() {
    // a.test and b.test (priority 10, weights 3 and 1, each on its own port) are the
    // primaries; c.test (priority 20) is the backup.
    let a = backend_on("a", [127, 0, 0, 2], 0);
    let b = backend_on("b", [127, 0, 0, 3], 0);
    let c = backend_on("c", [127, 0, 0, 4], 0);
    let (pa, pb, pc) = (a.port(), b.port(), c.port());
    let name = "_http._tcp.api.test";
    let records = [
        srv(name, "a.test", pa, 10, 3),
        srv(name, "b.test", pb, 10, 1),
        srv(name, "c.test", pc, 20, 1),
    ];
    let hosts = ["127.0.0.2 a.test", "127.0.0.3 b.test", "127.0.0.4 c.test"];
    let Some(mut dns) = Dns::start_with(&hosts, &records) else {
        return;
    };
    let extra = format!(
        "balance: weighted\ndiscovery:\n  srv: {name}\n  resolvers: [\"{}\"]\n  min_interval: 200ms\n  interval: 5s\n{HC_HTTP}",
        dns.resolver()
    );
    let gw = Cfg::new()
        .upstream_untargeted("api", &extra)
        .route("r", &["/api"], "api", "preserve_host: false")
        .start();
    let (aa, ba, ca) = (
        format!("127.0.0.2:{pa}"),
        format!("127.0.0.3:{pb}"),
        format!("127.0.0.4:{pc}"),
    );

    // Ports and weights from DNS: 3:1 over the primaries, nothing to the backup.
    let (st, _) = run(&gw, 8).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}\n{}", gw.stderr());
    assert_eq!((a.hits(), b.hits(), c.hits()), (6, 2, 0));
    // Host (preserve_host: false) is the SRV target with its port.
    let host = a.last_request().unwrap().header("host").map(str::to_string);
    assert_eq!(host.as_deref(), Some(format!("a.test:{pa}").as_str()));
    let up = status_of(&gw, "api").await;
    assert_eq!(target_addrs(&up), vec![aa.clone(), ba.clone(), ca.clone()]);
    let t = up["targets"].as_array().unwrap();
    assert_eq!(
        t.iter()
            .map(|t| (
                t["weight"].as_u64().unwrap(),
                t["backup"].as_bool().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![(3, false), (1, false), (1, true)],
        "{up}"
    );
    assert_eq!(up["discovery"]["srv"], name, "{up}");
    assert_eq!(up["discovery"]["records"][0]["target"], "a.test", "{up}");
    assert_eq!(up["discovery"]["records"][2]["backup"], true, "{up}");

    // The backup serves only while no primary can.
    a.set_health(503);
    b.set_health(503);
    assert!(gw.wait_target_health("api", &aa, false, WAIT).await);
    assert!(gw.wait_target_health("api", &ba, false, WAIT).await);
    c.reset();
    let (st, names) = run(&gw, 4).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert!(names.iter().all(|n| n == "c"), "{names:?}");
    a.set_health(200);
    b.set_health(200);
    assert!(gw.wait_target_health("api", &aa, true, WAIT).await);
    assert!(gw.wait_target_health("api", &ba, true, WAIT).await);

    // A target's address changes (hosts file + SIGHUP): its share moves to the new address,
    // on the port of its SRV record, without a reload.
    let d = backend_on("d", [127, 0, 0, 5], pa);
    dns.set(&["127.0.0.5 a.test", "127.0.0.3 b.test", "127.0.0.4 c.test"]);
    let da = format!("127.0.0.5:{pa}");
    wait_targets(&gw, &[da.clone(), ba.clone(), ca.clone()]).await;
    assert!(gw.wait_target_health("api", &da, true, WAIT).await);
    a.reset();
    b.reset();
    let (st, _) = run(&gw, 8).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!((a.hits(), d.hits(), b.hits()), (0, 6, 2));

    // New SRV records (weights 1:3, c promoted to priority 10, b's port moved): dnsmasq
    // reads them on a restart; the set follows at the next lookup.
    let b2 = backend_on("b2", [127, 0, 0, 3], 0);
    let pb2 = b2.port();
    dns.restart_with(&[
        srv(name, "a.test", pa, 10, 1),
        srv(name, "b.test", pb2, 10, 3),
        srv(name, "c.test", pc, 10, 4),
    ]);
    let b2a = format!("127.0.0.3:{pb2}");
    let up = wait_targets(&gw, &[b2a.clone(), ca.clone(), da.clone()]).await;
    assert!(
        up["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["backup"] == false),
        "{up}"
    );
    assert!(gw.wait_target_health("api", &b2a, true, WAIT).await);
    d.reset();
    c.reset();
    b.reset();
    let (st, _) = run(&gw, 16).await;
    assert!(st.iter().all(|s| *s == 200), "{st:?}");
    assert_eq!((d.hits(), b2.hits(), c.hits(), b.hits()), (2, 6, 8, 0));
}

#[test]
fn srv_and_dns_config_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "      srv: _http._tcp.api.test\n      dns: api.test\n      port: 80\n",
            "upstreams[0].discovery.srv",
            "exclude each other",
        ),
        (
            "      srv: _http._tcp.api.test\n      port: 80\n",
            "upstreams[0].discovery.port",
            "each SRV record carries",
        ),
        (
            "      dns: api.test\n",
            "upstreams[0].discovery",
            "`dns` needs `port`",
        ),
        (
            "      resolvers: [\"127.0.0.1\"]\n",
            "upstreams[0].discovery",
            "needs `dns`",
        ),
        (
            "      srv: \"_http._tcp.api.test:80\"\n",
            "upstreams[0].discovery.srv",
            "not an SRV record name",
        ),
    ];
    for (body, path, msg) in cases {
        assert_discovery_refused(body, &format!("{path}: "), msg);
    }
}
