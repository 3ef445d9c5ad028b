//! Stop signals for the long commands (`run`, `bench`, `predict`): one way to handle them.
//!
//! While a command loads (a TensorRT engine build can take minutes) a signal ends the
//! process at once. Once [`StopSignals::loaded`], the first signal sets
//! [`StopSignals::shutdown`] and the command stops as it sees fit; with
//! [`SecondSignal::Exits`], a second one ends the process at once. A signal the process
//! was started ignoring stays ignored: `nohup` starts it ignoring SIGHUP, and a shell
//! ignores SIGINT for a job it starts with `&` (signal-hook would replace the ignoring
//! with its handler).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;

/// The signals that stop a command: SIGTERM (systemd), SIGINT (Ctrl-C) and SIGHUP (the
/// terminal of a command in the foreground closing).
const STOP_SIGNALS: [(i32, &str); 3] = [
    (signal_hook::consts::SIGTERM, "SIGTERM"),
    (signal_hook::consts::SIGINT, "SIGINT"),
    (signal_hook::consts::SIGHUP, "SIGHUP"),
];

/// What a second signal does once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecondSignal {
    /// The same as the first: the command is stopping anyway, within a second.
    Waits,
    /// Ends the process at once, with 128 + the signal (a command that finishes its
    /// work in hand first, which may take a while).
    Exits,
}

/// The installed handlers' flags.
pub(super) struct StopSignals {
    /// Set by the first stop signal once loaded.
    pub shutdown: Arc<AtomicBool>,
    loading: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

impl StopSignals {
    /// Installs the handlers; while loading, a signal ends the process with
    /// `exit_while_loading(signal)`.
    pub fn install(
        exit_while_loading: impl Fn(i32) -> i32,
        second: SecondSignal,
    ) -> anyhow::Result<Self> {
        let signals = Self {
            shutdown: Arc::new(AtomicBool::new(false)),
            loading: Arc::new(AtomicBool::new(true)),
            received: Arc::new(AtomicUsize::new(0)),
        };
        for (signal, name) in STOP_SIGNALS {
            if ignored_at_start(signal) {
                continue;
            }
            let installing = || format!("installing the handler of {name}");
            // In this order: signal-hook runs a signal's actions as registered, so the
            // exits look at the flags as they were before this signal set them.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                exit_while_loading(signal),
                Arc::clone(&signals.loading),
            )
            .with_context(installing)?;
            if second == SecondSignal::Exits {
                signal_hook::flag::register_conditional_shutdown(
                    signal,
                    128 + signal,
                    Arc::clone(&signals.shutdown),
                )
                .with_context(installing)?;
            }
            signal_hook::flag::register(signal, Arc::clone(&signals.shutdown))
                .with_context(installing)?;
            signal_hook::flag::register_usize(
                signal,
                Arc::clone(&signals.received),
                signal as usize,
            )
            .with_context(installing)?;
        }
        Ok(signals)
    }

    /// Loading is over: from now on a signal stops the command rather than the process.
    pub fn loaded(&self) {
        self.loading.store(false, Ordering::SeqCst);
    }

    /// Whether a stop signal came (once loaded).
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// The last stop signal received, number and name.
    pub fn received(&self) -> Option<(i32, &'static str)> {
        let number = self.received.load(Ordering::SeqCst);
        STOP_SIGNALS
            .into_iter()
            .find(|(signal, _)| *signal as usize == number)
    }
}

/// Whether `signal`'s disposition is SIG_IGN.
fn ignored_at_start(signal: i32) -> bool {
    // SAFETY: sigaction is plain data, valid when zeroed.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new action) of a valid signal into a sigaction we own.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    rc == 0 && current.sa_sigaction == libc::SIG_IGN
}
