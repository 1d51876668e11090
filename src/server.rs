//! The HTTP server: the accept loop, start-up and the shutdown choreography.
//!
//! `run` takes an already-bound listener and a shutdown token, so tests bind port 0 and
//! shut a server down by cancelling its token. Each accepted connection is served by
//! `connection`, which frames HTTP/1.1 itself and calls the router (`routes`); with `[tls]`
//! every connection is TLS (`tls` holds the certificate, the connection's task does the
//! handshake). There is
//! deliberately no global request timeout: held polls last `poll_timeout` by design and would
//! be cut by one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Backend, Settings};
use crate::connection::Protocol;
use crate::metrics::Metrics;
use crate::snapshot::{self, SnapshotError};
use crate::state::AppState;
use crate::store::cluster::ConnectError;
use crate::store::{Cluster, Store};
use crate::{connection, housekeeping, registry, routes};

/// Pending connections the kernel queues for us. Tokio's default (1024) refuses clients
/// during fast ramps of thousands of new connections; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds `addr` with a listen backlog large enough for fast ramps of new clients.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listener failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The snapshot could not be read at start or written at shutdown.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Redis (cluster mode) must not be used, or shutdown came while waiting for it.
    #[error("redis: {0}")]
    Backplane(#[from] ConnectError),
}

/// Restores the snapshot, if one is configured, then serves `listener` until `shutdown` is
/// cancelled. Then `/readyz` fails for `shutdown_grace` while everything else goes on, so load
/// balancers stop sending new clients; then the listener closes, held polls answer at once,
/// streams end with a retry hint, idle connections close, and the final snapshot is written
/// once the connections are gone (or `drain_timeout` passed).
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    // Every task this server starts is tracked, so the final snapshot is written only after
    // all of them (the periodic saver above all) have stopped.
    let background = TaskTracker::new();
    let local_addr = listener.local_addr()?;
    let Some(state) = open(settings, local_addr, &background, &stop, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        max_connections = state.connections.size(),
        "connection limit"
    );
    restore_and_start(&state, &background, &stop).await?;
    background.spawn(begin_shutdown(shutdown, state.clone(), stop.clone()));
    background.close();
    let router = routes::router(state.clone());
    let connections = TaskTracker::new();
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(permit) = state.connections.try_take() else {
                    state.metrics.connections.refused.inc();
                    // Over TLS, closed unanswered: an answer would cost a handshake, the
                    // dearest thing a client asks of the server, when it has least to spare.
                    if state.tls.is_none() {
                        connection::refuse(stream, &state, &refusing);
                    }
                    continue;
                };
                state.metrics.connections.accepted.inc();
                // Answers are small and written whole; do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                let (state, router) = (state.clone(), router.clone());
                match &state.tls {
                    None => connections.spawn(connection::serve(
                        stream,
                        peer,
                        Protocol::Plain,
                        permit,
                        state,
                        router,
                    )),
                    Some(tls) => connections.spawn(connection::serve_tls(
                        tls.acceptor(),
                        stream,
                        peer,
                        permit,
                        state,
                        router,
                    )),
                };
            }
            Err(e) => {
                // Out of file descriptors, most likely: spinning would not free any.
                tracing::warn!(error = %e, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(state.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "drain timeout: exiting with connections still open"
        );
    }
    background.wait().await;
    if let Some(path) = state.snapshot.snapshot_path.clone() {
        let (bytes, took) = snapshot::save_measured(path, &state).await?;
        tracing::info!(bytes, took = ?took, "final snapshot written");
    }
    Ok(())
}

/// Puts back what was kept (the snapshot, or the registry in Redis) and starts the tasks
/// that keep it: the periodic snapshot or the registry's follower, expiry, certificate
/// reloads.
async fn restore_and_start(
    state: &AppState,
    background: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), RunError> {
    if let Some(path) = state.snapshot.snapshot_path.clone()
        && let Some(memory) = state.store.as_memory()
    {
        let started = std::time::Instant::now();
        let restored = snapshot::restore(&path, memory, &state.apps)?;
        tracing::info!(
            ids = restored.ids,
            unknown_app = restored.unknown_app,
            over_limit = restored.over_limit,
            took = ?started.elapsed(),
            "restored {}", path.display()
        );
        background.spawn(snapshot::run_periodic(
            path,
            state.snapshot.snapshot_interval,
            state.clone(),
        ));
    }
    if state.store.as_cluster().is_some() {
        registry::load(state).await;
        background.spawn(registry::follow(state.clone(), stop.clone()));
    }
    background.spawn(housekeeping::run(state.clone()));
    if let Some(tls) = &state.tls {
        background.spawn(Arc::clone(tls).watch(state.metrics.tls.clone(), stop.clone()));
    }
    Ok(())
}

/// When `shutdown` is cancelled: fail `/readyz`, wait `shutdown_grace`, then `stop`.
async fn begin_shutdown(shutdown: CancellationToken, state: AppState, stop: CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stop.cancelled() => return,
    }
    state.draining.store(true, Ordering::Release);
    if !state.shutdown_grace.is_zero() {
        tracing::info!(grace = ?state.shutdown_grace, "shutting down: /readyz fails from now");
        tokio::time::sleep(state.shutdown_grace).await;
    }
    tracing::info!("shutting down: no new connections; releasing held requests");
    stop.cancel();
}

/// This machine's name, for the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "callhome".into())
}

/// The server's state on the configured engine; with Redis, once it is reachable (`None`
/// when `shutdown` came first).
async fn open(
    settings: Settings,
    local_addr: SocketAddr,
    background: &TaskTracker,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Option<AppState>, RunError> {
    match settings.store.backend {
        Backend::Memory => Ok(Some(AppState::new(settings, local_addr, stop.clone()))),
        Backend::Redis => {
            let metrics = Metrics::new();
            let node = settings
                .store
                .node_name
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), local_addr.port()));
            let started =
                Cluster::start(&settings, node, metrics.backplane.clone(), background, stop);
            let cluster = tokio::select! {
                started = started => started?,
                () = shutdown.cancelled() => return Ok(None),
            };
            tracing::info!(node = cluster.node(), "cluster mode: ids live in Redis");
            let store = Store::cluster(cluster);
            let state = AppState::with_store(settings, local_addr, stop.clone(), store, metrics);
            Ok(Some(state))
        }
    }
}
