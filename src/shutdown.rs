//! Shutdown: one [`CancellationToken`] made in `main` and handed to everything that waits.
//!
//! Every held poll, and later every stream and background loop, selects on the token it was
//! given (never a global), so tests can shut one server down without touching another.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM, and exits the process at once on a second:
/// an operator who presses Ctrl-C twice means it.
pub async fn cancel_on_signal(token: CancellationToken) {
    signal().await;
    tracing::info!("shutting down; a second signal exits at once");
    token.cancel();
    signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
