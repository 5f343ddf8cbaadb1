//! SIGINT and SIGTERM as a flag: `check` stops measuring and still reports,
//! the daemon exports what it saw and stops. One handler for every command.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM.
static STOP_ASKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_ASKED.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM (a failure is logged, not fatal:
/// the default action, ending the process, remains).
pub fn catch_stop_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::debug!("cannot install a {signal} handler: {e}");
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_stop_signals`].
pub fn stop_asked() -> bool {
    STOP_ASKED.load(Ordering::Relaxed)
}
