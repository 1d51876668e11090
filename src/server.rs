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
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Apps;
use crate::config::{Limits, Settings, StoreConfig};
use crate::error::ApiError;
use crate::snapshot::{self, SnapshotError};
use crate::store::Store;
use crate::{api, connection, health, transport};

/// Pending connections the kernel queues for us. Tokio's default (1024) refuses clients
/// during fast ramps of thousands of new connections; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bytes of body read beyond the info itself: JSON quoting and the `{"info":...}` wrapper.
const BODY_OVERHEAD: usize = 1024;

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
        // A JSON string may spend six bytes (`\u00XX`) on each byte of info.
        let body_limit = settings.limits.info_max_bytes * 6 + BODY_OVERHEAD;
        Self(Arc::new(Shared {
            store: Store::new(settings.limits.max_ids),
            apps: settings.apps,
            limits: settings.limits,
            public_url,
            body_limit,
            shutdown,
            snapshot: settings.store,
            drain_timeout: settings.drain_timeout,
        }))
    }
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
            // Spans name the method and path only: query strings carry ids.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
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
/// cancelled, waits for the connections to finish (held polls answer at once when the token
/// is cancelled; idle connections close) and writes the final snapshot.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let state = AppState::new(settings, listener.local_addr()?, shutdown.clone());
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
    let router = router(state.clone());
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                // Answers are small and written whole; do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                connections.spawn(connection::serve(stream, state.clone(), router.clone()));
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
        let started = std::time::Instant::now();
        let store = state.clone();
        let bytes = tokio::task::spawn_blocking(move || snapshot::save(&path, &store.store))
            .await
            .map_err(io::Error::other)??;
        tracing::info!(bytes, took = ?started.elapsed(), "final snapshot written");
    }
    Ok(())
}
