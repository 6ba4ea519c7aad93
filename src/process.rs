//! The process around Pingora's server: readiness, pid file, `-d` output, and `SIGINT`
//! during a drain. Nothing here runs on the request path.
//!
//! - Readiness ([`Readiness`], a Pingora background service, so it runs after `-d` forked):
//!   Pingora binds its listeners in its service threads and says nothing when done, so the
//!   kernel's socket table (`/proc/self/net/tcp`, `tcp6`) is read until every configured
//!   address is listening. Then the pid file is written and systemd gets `READY=1` with
//!   `MAINPID`. After `-u` the sockets are already held when services start (they came
//!   through `upgrade_sock` during bootstrap), so the pid file names the new process as soon
//!   as it holds them. With `-d` Pingora's daemonize writes the pid file itself, after the
//!   bootstrap too.
//! - The pid file is removed at exit only while it still names this process: after a
//!   handover it names the new one, which the old one must leave in place.
//! - `-d`: Pingora's daemonize keeps stdout and stderr (the launching terminal) unless an
//!   error log is given; [`daemon_error_log`] always gives one: `server.error_log`, or
//!   `/dev/null` unless stderr is systemd's journal.
//! - `SIGINT` stops at once, also during a graceful drain, which Pingora spends in a plain
//!   `sleep` of `grace_period` without watching signals: [`exit_on_sigint`].

use crate::model::{AdminSettings, ServerSettings};
use async_trait::async_trait;
use once_cell::sync::OnceCell;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The pid file this process writes (and removes at exit while it still names it).
static PID_FILE: OnceCell<PathBuf> = OnceCell::new();

/// Every address the process listens on, with its config key.
pub fn listen_addrs(server: &ServerSettings, admin: &AdminSettings) -> Vec<(String, SocketAddr)> {
    let mut addrs: Vec<(String, SocketAddr)> = Vec::new();
    for (i, a) in server.listen.iter().enumerate() {
        addrs.push((format!("server.listen[{i}]"), *a));
    }
    if let Some(tls) = &server.tls {
        for (i, a) in tls.listen.iter().enumerate() {
            addrs.push((format!("server.tls.listen[{i}]"), *a));
        }
    }
    addrs.push(("admin.listen".to_string(), admin.listen));
    addrs
}

/// The listening TCP sockets of this network namespace, from the kernel's tables.
pub fn listening_sockets() -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            out.extend(parse_listening(&text));
        }
    }
    out
}

/// The `LISTEN` (state `0A`) local addresses of a `/proc/net/tcp` or `tcp6` table. Addresses
/// are printed as the kernel's 32-bit words in host byte order, ports as numbers.
pub fn parse_listening(table: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port_hex, 16) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(16);
        let words = ip_hex.len() / 8;
        for w in 0..words {
            let Ok(word) = u32::from_str_radix(&ip_hex[w * 8..w * 8 + 8], 16) else {
                break;
            };
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        let ip = match bytes.len() {
            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(&bytes[..]).unwrap_or_default()),
            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(&bytes[..]).unwrap_or_default()),
            _ => continue,
        };
        out.push(SocketAddr::new(ip, port));
    }
    out
}

/// Waits for every listener, then writes the pid file and tells systemd.
pub struct Readiness {
    addrs: Vec<SocketAddr>,
    /// `None` with `-d`: Pingora's daemonize wrote it.
    pid_file: Option<PathBuf>,
}

impl Readiness {
    pub fn new(server: &ServerSettings, admin: &AdminSettings, daemon: bool) -> Self {
        let pid_file = server.pid_file.clone();
        let _ = PID_FILE.set(pid_file.clone());
        Readiness {
            addrs: listen_addrs(server, admin)
                .into_iter()
                .map(|(_, a)| a)
                .collect(),
            pid_file: (!daemon).then_some(pid_file),
        }
    }
}

/// How long Pingora may take to bind (it retries an address in use for a while).
const BIND_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let deadline = Instant::now() + BIND_TIMEOUT;
        loop {
            let bound = listening_sockets();
            if self.addrs.iter().all(|a| bound.contains(a)) {
                break;
            }
            if Instant::now() > deadline {
                tracing::error!(
                    "not every listener is bound after {BIND_TIMEOUT:?}; not reporting ready"
                );
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        if let Some(p) = &self.pid_file {
            if let Err(e) = write_pid_file(p) {
                tracing::error!("cannot write the pid file {}: {e}", p.display());
            }
        }
        tracing::info!(pid = std::process::id(), "serving: every listener is bound");
        crate::sdnotify::ready();
        // Pingora logs every background service that returns as "service '...' exited.",
        // which reads like a failure at each start: stay until shutdown.
        let _ = shutdown.changed().await;
    }
}

/// Writes our pid through a temporary file and a rename, so a reader never sees it empty.
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// At exit: removes the pid file if it still names this process.
pub fn remove_pid_file_if_ours() {
    let Some(path) = PID_FILE.get() else {
        return;
    };
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Where `-d` sends the process log (Pingora's `error_log`; stdin and stdout go to
/// `/dev/null`): `server.error_log`, else nowhere unless stderr already is the journal
/// (then both streams are kept: they are not a terminal).
pub fn daemon_error_log(server: &ServerSettings) -> Option<String> {
    match &server.error_log {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if stderr_is_journal() => None,
        None => Some("/dev/null".to_string()),
    }
}

/// systemd sets `JOURNAL_STREAM` to the device and inode of the journal stream it connected
/// stdout/stderr to; it only counts if stderr still is that stream.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(m.dev()) && ino.parse::<u64>().ok() == Some(m.ino())
}

/// From now on `SIGINT` ends the process at once (a drain or the wait after a handover is
/// under way). Idempotent.
pub fn exit_on_sigint() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGINT during the drain: {e}");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("sigint".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    tracing::info!("SIGINT: stopping now, without waiting for the drain");
                    crate::sdnotify::stopping();
                    remove_pid_file_if_ours();
                    std::process::exit(0);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch SIGINT during the drain: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets_of_both_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let got = parse_listening(v4);
        if cfg!(target_endian = "little") {
            assert_eq!(
                got,
                vec![
                    "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
                    "0.0.0.0:80".parse().unwrap()
                ]
            );
        }
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_listening(v6),
                vec!["[::1]:8080".parse::<SocketAddr>().unwrap()]
            );
        }
    }
}
