//! Process signals Pingora leaves alone.
//!
//! SIGHUP's default action terminates the process, and Pingora installs no handler; until the
//! reload service (a Pingora background service, so it also exists after `-d` forks) takes
//! over, a flag handler makes SIGHUP harmless. Handlers are process-wide sigactions, so this
//! one survives the daemon fork too.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub fn ignore_sighup_until_running() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let flag = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, flag) {
            tracing::warn!("cannot install SIGHUP handler: {e}");
        }
    });
}
