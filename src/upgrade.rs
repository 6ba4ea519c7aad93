//! Binary upgrade started from inside the running process, on `SIGUSR2` (NGINX's model).
//!
//! Pingora's own upgrade is two steps: start the new binary with `-u` (it waits on
//! `upgrade_sock` for the listening sockets), then send `SIGQUIT` to the old process. Under
//! systemd the new process must be started from inside the service (its cgroup, user,
//! capabilities and sandbox), or systemd will neither adopt it as the new main process nor
//! keep it when the old one exits. So the old process does both steps itself: on `SIGUSR2` it
//! validates the new binary against the config (`-t`), starts it with its own command line
//! plus `-u`, waits until it listens on `upgrade_sock`, and only then raises `SIGQUIT` on
//! itself. If any step fails nothing changes and the old process keeps serving. The new
//! process writes the pid file and tells systemd `READY=1` with its `MAINPID` once it holds
//! the sockets ([`crate::process`]), so systemd (`Type=notify`, `NotifyAccess=all`) adopts it
//! as the service's main process.
//!
//! A handover that fails must not cost the listeners. Pingora 0.9.1 sent the sockets on
//! `SIGQUIT`, logged a failure, and shut its listeners down 5 s later anyway, leaving nobody
//! serving; and it counted a message merely queued on the socket as sent, though a new
//! process dying before reading it takes nothing over. Neither can be fixed around Pingora
//! (its listening sockets and its main loop are private), so `vendor/pingora-core` carries
//! a small patch (listed in `vendor/PATCHES.md`): the send succeeds only once the new process
//! has read the message, and on failure Pingora reports
//! [`ExecutionPhase::GracefulUpgradeFailed`] and goes back to waiting for signals, still
//! serving. [`HandoverOutcome`] reads those phases: it counts failures in
//! `upgrade_handover_failures_total` and, after a successful handover, lets `SIGINT` end the
//! drain at once. Before Pingora runs, `-t` and startup refuse an `upgrade_sock` whose
//! directory is missing or not writable, and `-u` refuses to wait when nothing listens on
//! the configured addresses (see `main.rs`).

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set once the sockets were handed over: this process is leaving, a further SIGUSR2 would
/// start a second new process with nobody to take sockets from.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// Follows Pingora's execution phases for the outcome of a `SIGQUIT` handover.
pub struct HandoverOutcome {
    phases: parking_lot::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

impl HandoverOutcome {
    pub fn new(phases: tokio::sync::broadcast::Receiver<ExecutionPhase>) -> Self {
        HandoverOutcome {
            phases: parking_lot::Mutex::new(Some(phases)),
        }
    }
}

#[async_trait]
impl BackgroundService for HandoverOutcome {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().take() else {
            return;
        };
        // Runs to the end of the process: the phases after the shutdown broadcast matter too.
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::GracefulUpgradeFailed) => {
                    crate::observe::metrics::upgrade_handover_failed();
                    tracing::error!(
                        "binary upgrade: the listening sockets could not be handed to a new process; still serving"
                    );
                }
                Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => {
                    HANDED_OVER.store(true, Ordering::Relaxed);
                    tracing::info!(
                        "binary upgrade: sockets handed over; serving 5 s more, then draining (SIGINT stops at once)"
                    );
                    crate::process::exit_on_sigint();
                }
                Ok(ExecutionPhase::Terminated) => return,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// How long the new process may take to start listening on `upgrade_sock`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Until the service below listens, SIGUSR2 (whose default action kills) is ignored.
pub fn ignore_sigusr2_until_running() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR2, flag) {
            tracing::warn!("cannot install SIGUSR2 handler: {e}");
        }
    });
}

pub struct UpgradeOnSigusr2 {
    /// This binary's path as of startup: after `install` replaced the file, the same path
    /// names the new binary.
    exe: Option<PathBuf>,
    /// Our own arguments (without the program name).
    args: Vec<OsString>,
    upgrade_sock: PathBuf,
}

impl UpgradeOnSigusr2 {
    pub fn new(upgrade_sock: PathBuf) -> Self {
        UpgradeOnSigusr2 {
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
            upgrade_sock,
        }
    }

    /// Runs off the async runtime: spawns processes and polls the socket path.
    fn upgrade(exe: PathBuf, args: Vec<OsString>, sock: PathBuf) -> Result<u32, String> {
        if args.iter().any(|a| a == "demo") {
            return Err("the demo cannot be upgraded in place".into());
        }
        let check = Command::new(&exe)
            .arg("-t")
            .args(args.iter().filter(|a| *a != "-u" && *a != "-d"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {} -t: {e}", exe.display()))?;
        if !check.status.success() {
            return Err(format!(
                "new binary rejects the config: {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        // A socket file left by an earlier upgrade would look like a ready new process.
        let _ = std::fs::remove_file(&sock);
        let mut child_args = args.clone();
        if !child_args.iter().any(|a| a == "-u" || a == "--upgrade") {
            child_args.push("-u".into());
        }
        let mut child = Command::new(&exe)
            .args(&child_args)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if sock.exists() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("new process {pid} exited early ({st})"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "new process {pid} did not listen on {} within {START_TIMEOUT:?}",
                    sock.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Reap it when it exits (at once with -d, which forks; else when it stops).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(pid)
    }
}

#[async_trait]
impl BackgroundService for UpgradeOnSigusr2 {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut usr2 =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGUSR2 (binary upgrade): {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = usr2.recv() => {
                    if got.is_none() {
                        return;
                    }
                    if HANDED_OVER.load(Ordering::Relaxed) {
                        tracing::warn!("SIGUSR2: the sockets were already handed over; ignored");
                        continue;
                    }
                    let Some(exe) = self.exe.clone() else {
                        tracing::error!("SIGUSR2: cannot find this binary's path; upgrade with -u and SIGQUIT");
                        continue;
                    };
                    let (args, sock) = (self.args.clone(), self.upgrade_sock.clone());
                    tracing::info!(binary = %exe.display(), "SIGUSR2: starting the new binary with -u");
                    match tokio::task::spawn_blocking(move || Self::upgrade(exe, args, sock)).await {
                        Ok(Ok(pid)) => {
                            tracing::info!(new_pid = pid, "SIGUSR2: new process is waiting for the sockets; handing them over (SIGQUIT)");
                            if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGQUIT) {
                                tracing::error!("SIGUSR2: cannot raise SIGQUIT: {e}");
                            }
                            // Keep listening: if the handover fails (the new process died
                            // before taking the sockets) this process serves on and a later
                            // SIGUSR2 may try again.
                        }
                        Ok(Err(e)) => tracing::error!("SIGUSR2: upgrade abandoned, still serving: {e}"),
                        Err(e) => tracing::error!("SIGUSR2: upgrade task failed: {e}"),
                    }
                }
            }
        }
    }
}
