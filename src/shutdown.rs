//! Shutdown: one [`CancellationToken`] made in `main` and handed to everything that waits.
//!
//! Every held poll, and later every stream and background loop, selects on the token it was
//! given (never a global), so tests can shut one server down without touching another.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT, SIGTERM or SIGHUP, and exits the process at once on a
/// second SIGINT or SIGTERM: an operator who presses Ctrl-C twice means it.
///
/// SIGHUP drains like SIGTERM, with the final snapshot, instead of its default of ending the
/// process on the spot: it is what a daemon started in a terminal gets when the terminal
/// closes. There is no configuration reload to give it instead (changing apps or limits under
/// running clients would need rules of its own). A SIGHUP after the first signal is ignored,
/// because a closing terminal can send several (the shell passes its own on to its jobs, the
/// kernel sends one when the shell exits) and none of them is an operator insisting.
pub async fn cancel_on_signal(token: CancellationToken) {
    let mut signals = Signals::new();
    let first = signals.next().await;
    tracing::info!(
        signal = first.name(),
        "shutting down; a second SIGINT or SIGTERM exits at once"
    );
    token.cancel();
    loop {
        match signals.next().await {
            Signal::Hangup => tracing::info!("SIGHUP while shutting down: ignored"),
            other => {
                tracing::warn!(signal = other.name(), "second signal: exiting now");
                std::process::exit(130);
            }
        }
    }
}

/// The signals that stop the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Interrupt,
    Terminate,
    Hangup,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
        }
    }
}

/// Listeners for every [`Signal`], made once so that none arriving between two waits is
/// missed. One that cannot be made is logged and never fires.
struct Signals {
    #[cfg(unix)]
    listeners: [(Signal, Option<tokio::signal::unix::Signal>); 3],
}

impl Signals {
    #[cfg(unix)]
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |which: Signal, kind: SignalKind| {
            let listener = signal(kind)
                .inspect_err(|e| {
                    tracing::error!(error = %e, signal = which.name(), "cannot listen for it");
                })
                .ok();
            (which, listener)
        };
        Self {
            listeners: [
                listen(Signal::Interrupt, SignalKind::interrupt()),
                listen(Signal::Terminate, SignalKind::terminate()),
                listen(Signal::Hangup, SignalKind::hangup()),
            ],
        }
    }

    #[cfg(not(unix))]
    fn new() -> Self {
        Self {}
    }

    /// Waits for the next signal.
    #[cfg(unix)]
    async fn next(&mut self) -> Signal {
        let [(a, sa), (b, sb), (c, sc)] = &mut self.listeners;
        tokio::select! {
            () = recv(sa) => *a,
            () = recv(sb) => *b,
            () = recv(sc) => *c,
        }
    }

    /// Waits for the next signal.
    #[cfg(not(unix))]
    async fn next(&mut self) -> Signal {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        Signal::Interrupt
    }
}

/// Resolves when `listener` receives its signal; never, when there is no listener.
#[cfg(unix)]
async fn recv(listener: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(listener) = listener
        && listener.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await;
}
