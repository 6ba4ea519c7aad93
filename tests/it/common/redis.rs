//! Real `redis-server` processes for the Redis-backed tests (rate-limiting `policy: redis`,
//! Redis Cluster and Sentinel fleets, purge broadcasts): each on a free loopback port, spoken
//! to over RESP (or `redis-cli` where a tool is needed), killed on drop.

use super::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether every one of `tools` answers `--version`. Without them the test prints a notice and
/// is skipped, except under `CI=true`, where their absence fails it.
fn tools_installed(tools: &[&str]) -> bool {
    let found = tools.iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        let names = tools.join(" and ");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{names} required when CI=true (apt-get install redis-server)");
        }
        eprintln!("NOTICE: {names} not installed; skipping this Redis test");
    }
    found
}

/// redis-server is installed (else a notice, or a panic under `CI=true`).
pub fn redis_installed() -> bool {
    tools_installed(&["redis-server"])
}

/// redis-server and redis-cli are installed (a Cluster is created with `redis-cli`).
pub fn redis_tools_installed() -> bool {
    tools_installed(&["redis-server", "redis-cli"])
}

/// How to start a [`Redis`]: no password, no persistence, output discarded unless `dir` is
/// set (then `dir/redis-PORT.log`, and `dir` as its working directory).
#[derive(Default)]
pub struct RedisBuilder {
    port: Option<u16>,
    password: Option<String>,
    dir: Option<PathBuf>,
    tls: Option<PathBuf>,
    args: Vec<String>,
}

impl RedisBuilder {
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// `requirepass`, and `masterauth` for replicas of a protected master.
    pub fn password(mut self, pw: &str) -> Self {
        self.password = Some(pw.to_string());
        self
    }

    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// TLS only (no plain port), with `server.crt`, `server.key` and `ca.pem` from `dir` (as
    /// [`make_certs`](super::make_certs) writes them); clients are not asked for certificates.
    pub fn tls(mut self, dir: &Path) -> Self {
        self.tls = Some(dir.to_path_buf());
        self
    }

    /// More `redis-server` arguments (cluster mode, `--replicaof`, ...).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts it and waits until it answers PING.
    pub fn spawn(self) -> Redis {
        let port = self.port.unwrap_or_else(free_port);
        let mut argv = self.args;
        let file = |name: &str| {
            self.tls
                .as_ref()
                .map(|d| d.join(name).display().to_string())
        };
        let tls_ca = file("ca.pem");
        match (file("server.crt"), file("server.key"), &tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                argv.extend(["--port", "0", "--tls-port"].map(String::from));
                argv.push(port.to_string());
                argv.extend(["--tls-cert-file".into(), cert, "--tls-key-file".into(), key]);
                argv.extend(["--tls-ca-cert-file".into(), ca.clone()]);
                argv.extend(["--tls-auth-clients", "no"].map(String::from));
            }
            _ => argv.extend(["--port".into(), port.to_string()]),
        }
        argv.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        if let Some(pw) = &self.password {
            argv.extend(["--requirepass".into(), pw.clone()]);
            argv.extend(["--masterauth".into(), pw.clone()]);
        }
        if let Some(d) = &self.dir {
            argv.extend(["--dir".into(), d.display().to_string()]);
        }
        let log = self.dir.map(|d| d.join(format!("redis-{port}.log")));
        let mut r = Redis {
            port,
            child: None,
            argv,
            password: self.password,
            tls_ca,
            log,
        };
        r.restart();
        r
    }
}

/// A `redis-server` child process on 127.0.0.1, killed on drop (woken first if frozen).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    argv: Vec<String>,
    password: Option<String>,
    /// The CA of a TLS-only server (spoken to with `redis-cli --tls` then).
    tls_ca: Option<String>,
    log: Option<PathBuf>,
}

impl Redis {
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// A plain redis-server, or None (after a notice) when it is not installed.
    pub fn start() -> Option<Redis> {
        redis_installed().then(|| Redis::builder().spawn())
    }

    /// A sentinel (`redis-server --sentinel`, no password of its own) in `dir`, watching the
    /// master on `master_port` (password `master_pw`) as `mymaster`: quick to call it down
    /// (1 s) and to fail over.
    pub fn sentinel(dir: &Path, master_port: u16, master_pw: &str) -> Redis {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\nsentinel auth-pass mymaster {master_pw}\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display()
            ),
        )
        .expect("write sentinel.conf");
        let mut r = Redis {
            port,
            child: None,
            argv: vec![conf.display().to_string(), "--sentinel".into()],
            password: None,
            tls_ca: None,
            log: Some(dir.join(format!("sentinel-{port}.log"))),
        };
        r.restart();
        r
    }

    /// Starts the process again on the same port with the same arguments (after `stop`), and
    /// waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "redis-server {} still running",
            self.port
        );
        let stdout = match &self.log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create redis log")),
            None => Stdio::null(),
        };
        let child = Command::new("redis-server")
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn ping(&self) -> bool {
        if self.tls_ca.is_some() {
            return self.cli(&["ping"]).trim() == "PONG";
        }
        self.command(&["PING"])
            .is_some_and(|r| r == [b"PONG".to_vec()])
    }

    /// One command over RESP (after AUTH when there is a password): the reply as its
    /// strings (a simple or bulk string as one, an integer as its digits, an array as its
    /// elements); None on an error reply or a connection failure. Plain servers only.
    pub fn command(&self, args: &[&str]) -> Option<Vec<Vec<u8>>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut got = Vec::new();
        if let Some(pw) = &self.password {
            s.write_all(&encode(&["AUTH", pw])).ok()?;
            let (_, used) = read_reply(&mut s, &mut got)??;
            got.drain(..used);
        }
        s.write_all(&encode(args)).ok()?;
        read_reply(&mut s, &mut got)?.map(|(reply, _)| reply)
    }

    /// `redis-cli <args>` against this server (with its password, over TLS for a TLS one): its
    /// stdout, empty when it failed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        if let Some(ca) = &self.tls_ca {
            cmd.args(["--tls", "--cacert", ca]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Kills the process (`restart` brings it back on the same port).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that accepts connections but never answers.
    pub fn freeze(&self, on: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if on { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be woken to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        self.stop();
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    cmd.into_bytes()
}

/// Reads from `s` into `got` until it holds one whole reply: Some(Some((reply, bytes used))),
/// Some(None) for an error reply, None when the connection fails first.
#[allow(clippy::type_complexity)]
fn read_reply(s: &mut TcpStream, got: &mut Vec<u8>) -> Option<Option<(Vec<Vec<u8>>, usize)>> {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(parsed) = parse_resp(got) {
            return Some(parsed);
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// One complete RESP reply at the start of `b`: None while incomplete; Some(None) for an
/// error reply; else its strings and the bytes it took.
#[allow(clippy::type_complexity)]
fn parse_resp(b: &[u8]) -> Option<Option<(Vec<Vec<u8>>, usize)>> {
    let line_end = |from: usize| {
        b.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    // A bulk string whose `$LEN` line starts at `at`: (its bytes, where the next item starts).
    let bulk = |at: usize| -> Option<(Vec<u8>, usize)> {
        let e = line_end(at)?;
        let len: usize = std::str::from_utf8(&b[at + 1..e]).ok()?.parse().ok()?;
        let start = e + 2;
        if b.len() < start + len + 2 {
            return None;
        }
        Some((b[start..start + len].to_vec(), start + len + 2))
    };
    let end = line_end(0)?;
    let first = std::str::from_utf8(&b[1..end]).ok()?;
    match b[0] {
        b'-' => Some(None),
        b'+' | b':' => Some(Some((vec![first.as_bytes().to_vec()], end + 2))),
        b'$' => bulk(0).map(|(v, used)| Some((vec![v], used))),
        b'*' => {
            let n: usize = first.parse().ok()?;
            let mut at = end + 2;
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let (v, next) = bulk(at)?;
                out.push(v);
                at = next;
            }
            Some(Some((out, at)))
        }
        _ => panic!("unexpected RESP reply: {:?}", String::from_utf8_lossy(b)),
    }
}
