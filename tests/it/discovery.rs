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

/// dnsmasq answering for `*.test` from a hosts file only (TTL 1 s; unknown names: NXDOMAIN).
struct Dns {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
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
            _dir: dir,
        };
        dns.write(lines);
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dns._dir.path().join("dnsmasq.log")).unwrap();
            let mut child = Command::new(&bin)
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
                dns.child = Some(child);
                dns.port = port;
                return Some(dns);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start");
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
        let yaml = format!(
            "server:\n  listen: [\"127.0.0.1:{}\"]\nupstreams:\n  - name: api\n    discovery:\n{body}      allow_empty: true\nroutes:\n  - name: r\n    paths: [\"/api\"]\n    upstream: api\n",
            free_port()
        );
        let (code, stderr) = Gateway::validate(&yaml);
        assert_eq!(code, 1, "{yaml}\n{stderr}");
        assert!(
            stderr.contains(path) && stderr.contains(msg) && stderr.contains("(line "),
            "want {path}: {msg}\n{stderr}"
        );
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
