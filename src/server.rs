//! The HTTP server: shared state, the router with its middleware, and the accept loop.
//!
//! `run` takes an already-bound listener and a shutdown token, so tests bind port 0 and
//! shut a server down by cancelling its token. Each accepted connection is served by
//! `connection`, which frames HTTP/1.1 itself and calls the router built here. There is
//! deliberately no global request timeout: held polls last `poll_timeout` by design and would
//! be cut by one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Apps;
use crate::client_ip::TrustedProxies;
use crate::config::{Limits, Settings, StoreConfig};
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::rate_limit::RateLimiters;
use crate::snapshot::{self, SnapshotError};
use crate::store::Store;
use crate::{api, connection, health, housekeeping, transport};

/// Pending connections the kernel queues for us. Tokio's default (1024) refuses clients
/// during fast ramps of thousands of new connections; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// File descriptors kept back from `max_connections = 0` (automatic) for everything else the
/// process opens: the listener, snapshot files, the runtime's own, a backplane.
const FD_RESERVE: u64 = 64;

/// What every handler can reach: one `Arc`, so cloning it per request is one atomic add
/// (cloning the fields one by one showed up in profiles of the notify path).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// The state behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// All ids.
    pub store: Store,
    /// The registered apps.
    pub apps: Apps,
    /// Resource limits.
    pub limits: Limits,
    /// The base URL browsers reach us at, without a trailing slash.
    pub public_url: String,
    /// Largest request body read, in bytes.
    pub body_limit: usize,
    /// Cancelled when the server shuts down; held requests answer at once.
    pub shutdown: CancellationToken,
    /// Where the store is saved across restarts.
    pub snapshot: StoreConfig,
    /// How long a shutdown waits for open connections.
    pub drain_timeout: Duration,
    /// How long `/readyz` fails before a shutdown stops accepting.
    pub shutdown_grace: Duration,
    /// Set when a shutdown begins, `shutdown_grace` before `shutdown` is cancelled.
    pub draining: AtomicBool,
    /// Open connections allowed (`max_connections`, resolved).
    pub max_connections: usize,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Request rates.
    pub limiters: RateLimiters,
    /// Everything `/metrics` shows.
    pub metrics: Metrics,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State for a server listening on `local_addr`.
    pub fn new(settings: Settings, local_addr: SocketAddr, shutdown: CancellationToken) -> Self {
        let public_url = settings
            .public_url
            .unwrap_or_else(|| format!("http://{local_addr}"));
        let body_limit = settings.limits.body_limit();
        let metrics = Metrics::new();
        let limiters = RateLimiters::new(&settings.rate_limits, &settings.apps, &metrics);
        Self(Arc::new(Shared {
            store: Store::new(settings.limits.max_ids).with_idle_ttl(settings.limits.id_idle_ttl),
            apps: settings.apps,
            limits: settings.limits,
            public_url,
            body_limit,
            shutdown,
            snapshot: settings.store,
            drain_timeout: settings.drain_timeout,
            shutdown_grace: settings.shutdown_grace,
            draining: AtomicBool::new(false),
            max_connections: connection_budget(settings.limits.max_connections),
            trusted_proxies: settings.trusted_proxies,
            limiters,
            metrics,
        }))
    }

    /// True from the moment a shutdown begins: `/readyz` fails.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) || self.shutdown.is_cancelled()
    }
}

/// `max_connections`, or when it is 0 the open-file limit less a reserve for everything else.
fn connection_budget(configured: usize) -> usize {
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let fit = usize::try_from(files.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    if configured == 0 {
        return fit.max(1);
    }
    if configured > fit {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = files,
            "max_connections is above what the open-file limit allows; accepts will fail first"
        );
    }
    configured
}

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

/// The whole application: backend API, browser transports, health, and the fallbacks that
/// turn unknown routes and wrong methods into JSON errors.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let router = Router::new()
        .merge(api::routes())
        .merge(transport::routes())
        .merge(health::routes())
        .merge(metrics::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(map_response(|mut response: Response| async move {
            common_headers(response.headers_mut());
            response
        }))
        .layer(CatchPanicLayer::custom(panic_response));
    // Request logs are debug-level; at the default level their spans and timings would cost
    // a measurable share of each notify for lines nobody sees, so they are left out.
    if tracing::enabled!(tracing::Level::DEBUG) {
        router.layer(
            // Spans name the method and the route only: paths and query strings carry ids.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("(no route)", MatchedPath::as_str);
                tracing::debug_span!("request", method = %req.method(), route)
            }),
        )
    } else {
        router
    }
}

/// Headers every response carries unless its handler set them: nothing is cached unless a
/// route says so, and no content is sniffed.
pub fn common_headers(headers: &mut HeaderMap) {
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
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
    let state = AppState::new(settings, listener.local_addr()?, stop.clone());
    tracing::info!(max_connections = state.max_connections, "connection limit");
    if let Some(path) = state.snapshot.snapshot_path.clone() {
        let started = std::time::Instant::now();
        let restored = snapshot::restore(&path, &state.store, &state.apps)?;
        tracing::info!(
            ids = restored.ids,
            unknown_app = restored.unknown_app,
            over_limit = restored.over_limit,
            took = ?started.elapsed(),
            "restored {}", path.display()
        );
        tokio::spawn(snapshot::run_periodic(
            path,
            state.snapshot.snapshot_interval,
            state.clone(),
        ));
    }
    tokio::spawn(housekeeping::run(state.clone()));
    tokio::spawn(begin_shutdown(shutdown, state.clone(), stop.clone()));
    let router = router(state.clone());
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let open = usize::try_from(state.metrics.connections_open.get()).unwrap_or(0);
                if open >= state.max_connections {
                    state.metrics.connections.refused.inc();
                    connection::refuse(stream, &state);
                    continue;
                }
                state.metrics.connections.accepted.inc();
                state.metrics.connections_open.inc();
                // Answers are small and written whole; do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                connections.spawn(connection::serve(
                    stream,
                    peer,
                    state.clone(),
                    router.clone(),
                ));
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
    if let Some(path) = state.snapshot.snapshot_path.clone() {
        let (bytes, took) = snapshot::save_measured(path, &state).await?;
        tracing::info!(bytes, took = ?took, "final snapshot written");
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
