//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram per state change
//! to the Unix socket named by `$NOTIFY_SOCKET`; nothing happens when it is not set.
//!
//! Sent: `READY=1` with `MAINPID=` once every listener is bound (so after an in-unit binary
//! upgrade systemd adopts the new process as the service's main process; this needs
//! `NotifyAccess=all`, as the new process is not the one systemd started), `RELOADING=1`
//! with `MONOTONIC_USEC=` then `READY=1` around a config reload (systemd's reload protocol,
//! also what `Type=notify-reload` waits for), and `STOPPING=1` when a shutdown starts. Not
//! on the request path.

use std::os::unix::net::UnixDatagram;

/// Sends `state` to `$NOTIFY_SOCKET`. Returns whether a datagram was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        match bytes.strip_prefix(b"@") {
            // An abstract socket: `@` stands for the leading NUL byte.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &path),
        }
    });
    match sent {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("cannot notify systemd ({}): {e}", path.to_string_lossy());
            false
        }
    }
}

/// Every listener is bound: this process serves (also after taking over the sockets of an
/// upgraded one, hence `MAINPID`).
pub fn ready() {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving",
        std::process::id()
    ));
}

/// A config reload starts.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
        monotonic_usec()
    ));
}

/// The reload is over (applied or rejected: the process serves either way).
pub fn reloaded(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// The service is shutting down (not sent for a binary upgrade: the service goes on).
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}
