//! Process management: a binary upgrade that fails never takes the listeners down (the port
//! answers 200 every 100 ms throughout), `-u` fails in one line, the pid file follows the
//! process that serves, `-d` leaves the terminal, SIGINT ends a drain at once, and systemd's
//! readiness protocol (`NOTIFY_SOCKET`).
use crate::common;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A gateway process started by hand, killed on drop.
struct Proc {
    child: Child,
    err: PathBuf,
}

impl Proc {
    fn spawn(bin: &Path, conf: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let dir = conf.parent().unwrap();
        let n = std::fs::read_dir(dir).unwrap().count();
        let err = dir.join(format!("proc{n}.err"));
        let mut cmd = Command::new(bin);
        cmd.args(extra)
            .arg("-c")
            .arg(conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("proc{n}.out"))).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("spawn gatehouse"),
            err,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until it serves `port` (public) and `admin`.
    fn wait_serving(&mut self, port: u16, admin: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(get_ok(port, "/x/item") && get_ok(admin, "/health")) {
            assert!(self.exited().is_none(), "exited:\n{}", self.stderr());
            assert!(Instant::now() < deadline, "not serving:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (bounded) and returns (status, stderr).
    fn finish(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                return (st, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(port: u16, path: &str) -> Vec<u8> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw_request(port, req.as_bytes(), Duration::from_secs(2)).0
}

fn get_ok(port: u16, path: &str) -> bool {
    get(port, path).starts_with(b"HTTP/1.1 200")
}

fn metric_value(admin: u16, name: &str) -> Option<f64> {
    let raw = get(admin, "/metrics");
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    metric(body, name, &[])
}

/// A fresh `GET` every 100 ms; every answer must be a 200.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let resp = get(port, "/x/item");
                if resp.starts_with(b"HTTP/1.1 200") {
                    ok += 1;
                } else {
                    let head = String::from_utf8_lossy(&resp[..resp.len().min(60)]).into_owned();
                    failed.push(format!("{:?}: {head:?}", t0.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A config on one backend with `/x` routed, written to `dir/gatehouse.yaml`; `run` is the
/// directory of the pid file and the upgrade socket.
fn setup(a: &Backend, run: &str, extra_server: &str) -> (Cfg, PathBuf) {
    let cfg = Cfg::new()
        .upstream("u", &[target(a)], "")
        .route("r", &["/x"], "u", "");
    let d = cfg.dir.path().display().to_string();
    let mut yaml = cfg
        .yaml()
        .replace(
            &format!("{d}/gatehouse.pid"),
            &format!("{d}/{run}/gatehouse.pid"),
        )
        .replace(
            &format!("{d}/upgrade.sock"),
            &format!("{d}/{run}/upgrade.sock"),
        );
    if !extra_server.is_empty() {
        yaml = yaml.replacen("server:\n", &format!("server:\n{extra_server}"), 1);
    }
    std::fs::create_dir_all(cfg.dir.path().join(run)).unwrap();
    let conf = cfg.dir.path().join("gatehouse.yaml");
    std::fs::write(&conf, yaml).unwrap();
    (cfg, conf)
}

fn bin() -> PathBuf {
    PathBuf::from(BIN)
}

/// Keeps probing for `secs` seconds after SIGQUIT: Pingora gives up sending after about 5 s
/// and, before the fix, closed the listeners 5 s later.
const WATCH_AFTER_QUIT: Duration = Duration::from_secs(12);

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("cannot "))
        .collect()
}

#[test]
fn check_refuses_missing_pid_and_socket_directories() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let d = cfg.dir.path().display().to_string();
    std::fs::remove_dir(cfg.dir.path().join("run")).unwrap();
    let (code, stderr) = validate_file(&conf, &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "server.pid_file: directory {d}/run of {d}/run/gatehouse.pid does not exist (line 5)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "server.upgrade_sock: directory {d}/run of {d}/run/upgrade.sock does not exist (line 6)"
        )),
        "{stderr}"
    );
    // A directory the user cannot write to (root may write anywhere: checked as others).
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(true);
    if !root {
        use std::os::unix::fs::PermissionsExt;
        let run = cfg.dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o555)).unwrap();
        let (code, stderr) = validate_file(&conf, &[], &[]);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir(&run).unwrap();
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "server.upgrade_sock: directory {d}/run of {d}/run/upgrade.sock is not writable"
            )),
            "{stderr}"
        );
    }
    // A file where the directory should be.
    std::fs::write(cfg.dir.path().join("run"), "").unwrap();
    let (code, stderr) = validate_file(&conf, &[], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("server.upgrade_sock: {d}/run is not a directory")),
        "{stderr}"
    );
    // Startup refuses too, before binding anything.
    let mut p = Proc::spawn(&bin(), &conf, &[], &[]);
    let (st, err) = p.finish(Duration::from_secs(10));
    assert!(!st.success());
    assert!(err.contains("server.pid_file"), "{err}");
    assert!(!get_ok(cfg.port, "/x/item"));
}

/// The reported outage: `upgrade_sock`'s directory is gone. `-u` fails in one line without a
/// panic; SIGQUIT then finds no new process and the old one serves on.
#[test]
fn failed_upgrade_into_missing_directory_keeps_the_old_process_serving() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    // Only the socket's directory goes missing.
    let d = cfg.dir.path().display().to_string();
    let yaml = std::fs::read_to_string(&conf).unwrap().replace(
        &format!("{d}/run/gatehouse.pid"),
        &format!("{d}/gatehouse.pid"),
    );
    std::fs::write(&conf, yaml).unwrap();
    let (port, admin) = (cfg.port, cfg.admin_port);
    let mut old = Proc::spawn(&bin(), &conf, &[], &[]);
    old.wait_serving(port, admin);
    let probe = Prober::start(port);

    std::fs::remove_dir_all(cfg.dir.path().join("run")).unwrap();
    let mut new = Proc::spawn(&bin(), &conf, &["-u"], &[]);
    let (st, err) = new.finish(Duration::from_secs(15));
    assert!(!st.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "cannot upgrade: server.upgrade_sock: directory {}/run of",
            cfg.dir.path().display()
        )) && lines[0].ends_with("does not exist (line 6)"),
        "{err}"
    );

    send_signal(old.pid(), "QUIT");
    std::thread::sleep(WATCH_AFTER_QUIT);
    let (ok, failed) = probe.finish();
    assert!(failed.is_empty(), "failed: {failed:?}\n{}", old.stderr());
    assert!(ok > 100, "{ok} answers");
    assert!(old.exited().is_none(), "old exited:\n{}", old.stderr());
    assert_eq!(
        metric_value(admin, "upgrade_handover_failures_total"),
        Some(1.0)
    );
    assert!(
        old.stderr()
            .contains("could not be handed to a new process; still serving"),
        "{}",
        old.stderr()
    );
}

#[test]
fn upgrade_with_nothing_running_fails_in_one_line() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let started = Instant::now();
    let mut new = Proc::spawn(&bin(), &conf, &["-u"], &[]);
    let (st, err) = new.finish(Duration::from_secs(10));
    assert!(!st.success());
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("cannot upgrade: nothing listens on server.listen[0] 127.0.0.1:"),
        "{err}"
    );
    assert!(!cfg.dir.path().join("run/upgrade.sock").exists());
}

/// `-u` while the old process runs but nobody sends SIGQUIT: it gives up in one error line,
/// and the old process was never disturbed.
#[test]
fn upgrade_that_receives_nothing_times_out_in_one_line() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let (port, admin) = (cfg.port, cfg.admin_port);
    let mut old = Proc::spawn(&bin(), &conf, &[], &[]);
    old.wait_serving(port, admin);
    let probe = Prober::start(port);
    let mut new = Proc::spawn(&bin(), &conf, &["-u"], &[]);
    let (st, err) = new.finish(Duration::from_secs(20));
    let (ok, failed) = probe.finish();
    assert!(!st.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&format!(
            "Bootstrap failed: no listening sockets received on {}/run/upgrade.sock: nothing was sent",
            cfg.dir.path().display()
        )),
        "{err}"
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 30);
    assert!(old.exited().is_none());
}

/// SIGUSR2 starts the new binary, which listens on `upgrade_sock` and dies without taking the
/// sockets: the old process serves on and counts the failure.
#[test]
fn sigusr2_whose_new_binary_dies_keeps_the_old_process_serving() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let (port, admin) = (cfg.port, cfg.admin_port);
    // The running binary is a copy: the upgrade replaces it.
    let exe = cfg.dir.path().join("bin/gatehouse");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(BIN, &exe).unwrap();
    let mut old = Proc::spawn(&exe, &conf, &[], &[]);
    old.wait_serving(port, admin);
    let probe = Prober::start(port);

    // The "new binary": passes -t, listens on upgrade_sock, never reads, exits after 1.5 s.
    let sock = cfg.dir.path().join("run/upgrade.sock");
    let script = format!(
        "#!/usr/bin/env python3\nimport os, socket, sys, time\nif '-t' in sys.argv:\n    sys.exit(0)\npath = {:?}\ntry:\n    os.unlink(path)\nexcept FileNotFoundError:\n    pass\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.bind(path)\ns.listen(8)\ntime.sleep(1.5)\nsys.exit(3)\n",
        sock.display().to_string()
    );
    let tmp = cfg.dir.path().join("bin/gatehouse.new");
    {
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(script.as_bytes()).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();

    send_signal(old.pid(), "USR2");
    std::thread::sleep(WATCH_AFTER_QUIT);
    let (ok, failed) = probe.finish();
    assert!(failed.is_empty(), "failed: {failed:?}\n{}", old.stderr());
    assert!(ok > 100, "{ok} answers");
    assert!(old.exited().is_none(), "old exited:\n{}", old.stderr());
    let log = old.stderr();
    assert!(log.contains("SIGUSR2: new process is waiting"), "{log}");
    assert!(log.contains("did not read the sockets"), "{log}");
    assert_eq!(
        metric_value(admin, "upgrade_handover_failures_total"),
        Some(1.0)
    );
}

/// `-u` by hand from a daemon: once the new process holds the sockets the pid file names it,
/// and the old one leaves it so when it exits.
#[test]
fn pid_file_names_the_new_process_after_an_upgrade() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let (port, admin) = (cfg.port, cfg.admin_port);
    let pid_file = cfg.dir.path().join("run/gatehouse.pid");
    let pids = KillOnDrop::default();
    let starter = Proc::spawn(&bin(), &conf, &["-d"], &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let old_pid = loop {
        if let (Some(pid), true) = (read_pid(&pid_file), get_ok(port, "/x/item")) {
            break pid;
        }
        assert!(Instant::now() < deadline, "{}", starter.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    pids.add(old_pid);

    let mut new = Proc::spawn(&bin(), &conf, &["-u"], &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cfg.dir.path().join("run/upgrade.sock").exists() {
        assert!(Instant::now() < deadline, "{}", new.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    send_signal(old_pid, "QUIT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(old_pid) {
        assert!(new.exited().is_none(), "{}", new.stderr());
        assert!(Instant::now() < deadline, "old still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_pid(&pid_file), Some(new.pid()));
    assert!(get_ok(port, "/x/item"));
    assert!(get_ok(admin, "/health"));
    // And a foreground process removes its own pid file when it stops.
    send_signal(new.pid(), "INT");
    let (_, err) = new.finish(Duration::from_secs(10));
    assert!(!pid_file.exists(), "{err}");
}

/// Starts `gatehouse -d`, returns (daemon pid, what the launcher wrote on its stderr).
fn start_daemon(conf: &Path, port: u16, pid_file: &Path, pids: &KillOnDrop) -> (u32, String) {
    let mut starter = Proc::spawn(&bin(), conf, &["-d"], &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let pid = loop {
        if let (Some(pid), true) = (read_pid(pid_file), get_ok(port, "/x/item")) {
            break pid;
        }
        assert!(Instant::now() < deadline, "{}", starter.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    pids.add(pid);
    let (st, launch_err) = starter.finish(Duration::from_secs(5));
    assert!(st.success(), "{launch_err}");
    (pid, launch_err)
}

fn fd_target(pid: u32, n: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/fd/{n}")).unwrap()
}

/// `-d` leaves the terminal: stdin, stdout and (without `server.error_log`) stderr on
/// /dev/null, with a warning said before; with `server.error_log` the log goes there.
#[test]
fn daemon_detaches_from_the_terminal() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let yaml = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("access_log: off", "access_log: stdout");
    std::fs::write(&conf, &yaml).unwrap();
    let port = cfg.port;
    let pid_file = cfg.dir.path().join("run/gatehouse.pid");
    let pids = KillOnDrop::default();

    let (pid, launch_err) = start_daemon(&conf, port, &pid_file, &pids);
    for n in 0..3 {
        assert_eq!(fd_target(pid, n), Path::new("/dev/null"), "fd {n}");
    }
    assert!(
        launch_err.contains("server.error_log is not set: the process log is discarded"),
        "{launch_err}"
    );
    assert!(
        launch_err.contains("server.access_log is stdout, which -d discards"),
        "{launch_err}"
    );
    // The launcher's own lines end with "Daemonizing the server"; nothing of the daemon's.
    assert!(
        launch_err.contains("Daemonizing the server"),
        "{launch_err}"
    );
    assert!(
        !launch_err.contains("Starting service") && !launch_err.contains("every listener is bound"),
        "{launch_err}"
    );
    send_signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }

    // With server.error_log the process log goes to that file.
    let yaml = yaml.replacen("server:\n", "server:\n  error_log: daemon.log\n", 1);
    std::fs::write(&conf, yaml).unwrap();
    let (pid, launch_err) = start_daemon(&conf, port, &pid_file, &pids);
    assert_eq!(fd_target(pid, 0), Path::new("/dev/null"));
    assert_eq!(fd_target(pid, 1), Path::new("/dev/null"));
    assert_eq!(fd_target(pid, 2), cfg.dir.path().join("daemon.log"));
    assert!(!launch_err.contains("server.error_log"), "{launch_err}");
    send_signal(pid, "HUP");
    let log = cfg.dir.path().join("daemon.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("SIGHUP")
    {
        assert!(Instant::now() < deadline, "no SIGHUP line in the error log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGINT during the graceful drain (grace_period 30 s) stops the process at once.
#[test]
fn sigint_during_the_drain_stops_at_once() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let yaml = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("grace_period: 1", "grace_period: 30");
    std::fs::write(&conf, yaml).unwrap();
    let mut p = Proc::spawn(&bin(), &conf, &[], &[]);
    p.wait_serving(cfg.port, cfg.admin_port);
    send_signal(p.pid(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !p
        .stderr()
        .contains("Graceful shutdown: grace period 30s starts")
    {
        assert!(Instant::now() < deadline, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = Instant::now();
    send_signal(p.pid(), "INT");
    let (_, err) = p.finish(Duration::from_secs(25));
    assert!(
        at.elapsed() < Duration::from_secs(2),
        "SIGINT took {:?}:\n{err}",
        at.elapsed()
    );
}

/// A datagram socket standing in for systemd's notify socket.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Notify { sock, path }
    }

    fn env(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.display().to_string())
    }

    /// The next message, within `limit`.
    fn next(&self, limit: Duration) -> String {
        self.sock.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {limit:?}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let notify = Notify::new(cfg.dir.path());
    let (k, v) = notify.env();
    let mut p = Proc::spawn(&bin(), &conf, &[], &[(k, &v)]);
    let ready = notify.next(Duration::from_secs(15));
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={}", p.pid())),
        "{ready}"
    );
    // Ready means listening: both ports answer now, and the pid file is written.
    assert!(get_ok(cfg.port, "/x/item"));
    assert!(get_ok(cfg.admin_port, "/health"));
    assert_eq!(
        read_pid(&cfg.dir.path().join("run/gatehouse.pid")),
        Some(p.pid())
    );

    send_signal(p.pid(), "HUP");
    let reloading = notify.next(Duration::from_secs(10));
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec > 0);
    let reloaded = notify.next(Duration::from_secs(10));
    assert!(reloaded.contains("READY=1"), "{reloaded}");

    send_signal(p.pid(), "TERM");
    let stopping = notify.next(Duration::from_secs(10));
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let (st, err) = p.finish(Duration::from_secs(15));
    assert!(st.success(), "{err}");
}

/// After an in-unit upgrade (SIGUSR2) the new process tells systemd it is the main process.
#[test]
fn systemd_hears_the_new_mainpid_after_sigusr2() {
    let a = Backend::start("a");
    let (cfg, conf) = setup(&a, "run", "");
    let (port, admin) = (cfg.port, cfg.admin_port);
    let notify = Notify::new(cfg.dir.path());
    let (k, v) = notify.env();
    let pids = KillOnDrop::default();
    let mut old = Proc::spawn(&bin(), &conf, &[], &[(k, &v)]);
    let first = notify.next(Duration::from_secs(15));
    assert!(first.contains(&format!("MAINPID={}", old.pid())), "{first}");
    let probe = Prober::start(port);

    send_signal(old.pid(), "USR2");
    let msg = notify.next(Duration::from_secs(20));
    let new_pid: u32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {msg:?}\n{}", old.stderr()));
    pids.add(new_pid);
    assert!(msg.contains("READY=1"), "{msg}");
    assert_ne!(new_pid, old.pid());
    assert!(alive(new_pid));
    // The old process hands over, serves 5 s more, drains 1 s and exits, without STOPPING=1.
    let (st, err) = old.finish(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = probe.finish();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 30);
    notify
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 512];
    if let Ok(n) = notify.sock.recv(&mut buf) {
        let extra = String::from_utf8_lossy(&buf[..n]);
        assert!(!extra.contains("STOPPING=1"), "{extra}");
    }
    assert_eq!(
        read_pid(&cfg.dir.path().join("run/gatehouse.pid")),
        Some(new_pid)
    );
    assert!(get_ok(admin, "/health"));
}
