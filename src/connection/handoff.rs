//! The hand-off to hyper: a connection whose request the lean path does not serve itself goes
//! to hyper and the same router, with the bytes already read put back in front of the
//! socket, and with the lean path's limits (head size, timeouts, places).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, Version};
use axum::response::IntoResponse as _;
use bytes::Bytes;
use futures_util::TryFutureExt as _;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::Stream;
use super::head::{MAX_HEAD, MAX_HEADERS};
use crate::error::ApiError;
use crate::extract::PeerAddr;
use crate::permit::Permit;
use crate::request_id::{self, RequestId, X_REQUEST_ID};
use crate::state::AppState;

/// How long an idle connection's graceful close may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What hyper serves on a connection it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, every request on the connection (the lean path is off).
    Http1,
    /// HTTP/1.1 or HTTP/2 by prior knowledge (lean path off, `http2_cleartext` on).
    Any,
    /// The one HTTP/1.1 request the lean path framed (a chunked body), then close: every
    /// head on a connection the lean path started is read by one parser.
    OneRequest,
    /// HTTP/2 by prior knowledge (`http2_cleartext` on).
    Http2,
}

/// Gives the connection, with `read` (the bytes already taken from it) put back in front,
/// to hyper and the same router, configured with the lean path's limits: the same head size
/// and header count, the same header, idle, body and send timeouts. On HTTP/2 each stream
/// takes a place of its own in `max_connections` for as long as it is open, so a waiting
/// stream costs what a waiting connection costs.
pub async fn hand_off<S: Stream>(
    stream: S,
    read: Vec<u8>,
    peer: SocketAddr,
    mode: Mode,
    state: &AppState,
    router: &Router,
) -> io::Result<()> {
    let io = TokioIo::new(Rewind {
        prefix: Bytes::from(read),
        inner: stream,
        send_timeout: state.limits.send_timeout,
        stalled: None,
        timed_out: state.metrics.timeouts.send.clone(),
    });
    let trusted = state.trusted_proxies.contains(peer.ip());
    let peer = PeerAddr(peer);
    let router = router.clone();
    // Heads are bounded by `Activity` (below); bodies need a timer of their own: a chunked
    // body trickled in would hold the connection for as long as its client liked.
    let cut = CancellationToken::new();
    let body_timeout = state.limits.body_timeout;
    let body_timeouts = state.metrics.timeouts.body.clone();
    let cut_by_body = cut.clone();
    let activity = Arc::new(Activity::new());
    let in_flight = Arc::clone(&activity);
    let streams = state.clone();
    let service = TowerToHyperService::new(tower::service_fn(move |request: Request<Incoming>| {
        let busy = Activity::start(&in_flight);
        // An HTTP/2 stream is a client of its own: it needs a place, as a connection does.
        let place = if request.version() == Version::HTTP_2 {
            let Some(place) = streams.connections.try_take() else {
                streams.metrics.connections.refused.inc();
                let refused = ApiError::TooManyConnections(streams.connections.size());
                let response = refused.into_response();
                return Box::pin(async move { Ok(response) })
                    as Pin<Box<dyn Future<Output = _> + Send>>;
            };
            Some(place)
        } else {
            None
        };
        let mut request = if request.body().is_end_stream() {
            request.map(Body::new)
        } else {
            request.map(|body| {
                Body::new(TimedBody {
                    inner: body,
                    deadline: Box::pin(tokio::time::sleep(body_timeout)),
                    cut: cut_by_body.clone(),
                    timed_out: body_timeouts.clone(),
                })
            })
        };
        request.extensions_mut().insert(peer);
        let request_id = RequestId::for_peer(trusted, request.headers().get(X_REQUEST_ID));
        let current = request_id.clone();
        let respond = router.clone().oneshot(request).map_ok(move |response| {
            let (mut parts, body) = response.into_parts();
            parts.headers.insert(X_REQUEST_ID, current.to_header());
            // hyper streams the body after this future is done: it runs as the request too,
            // and the request (with its place) lasts until its last byte.
            let body = Body::new(ScopedBody {
                inner: body,
                id: current,
                _held: (busy, place),
            });
            Response::from_parts(parts, body)
        });
        Box::pin(request_id::scope(request_id, respond))
    }));
    let builder = builder(mode);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let limits = state.limits;
    let timeouts = &state.metrics.timeouts;
    let served = async {
        tokio::select! {
            result = conn.as_mut() => result.map_err(io::Error::other),
            () = state.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(io::Error::other)
            }
            started = activity.idle(limits.header_timeout, limits.idle_timeout) => {
                if started { &timeouts.idle } else { &timeouts.header }.inc();
                // Nothing is in flight: a graceful close (GOAWAY) has nothing to wait for,
                // unless the client never finished its handshake. Then it is dropped.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    };
    tokio::select! {
        result = served => result,
        () = cut.cancelled() => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// hyper configured for `mode` with the lean path's limits.
fn builder(mode: Mode) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder = match mode {
        Mode::Http1 | Mode::OneRequest => builder.http1_only(),
        Mode::Http2 => builder.http2_only(),
        Mode::Any => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(mode != Mode::OneRequest)
        // hyper's head timer runs from the end of the last answer, so it would close an idle
        // keep-alive connection at `header_timeout` (long before `idle_timeout`) and count
        // it as a slow head. `Activity` is the one timer instead: `header_timeout` until the
        // first request, `idle_timeout` after each.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD).unwrap_or(u32::MAX));
    builder
}

/// Requests in flight on a connection served by hyper, and when the last one ended: hyper
/// has no idle timeout for HTTP/2 (and none that spares a held HTTP/1 request), so this
/// closes a connection that has had nothing in flight for `idle_timeout`, or none at all
/// within `header_timeout` of its start.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds from `epoch` to the end of the last request; `u64::MAX` before any.
    ended: AtomicU64,
    epoch: Instant,
}

/// One request in flight, until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            ended: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    fn start(this: &Arc<Self>) -> Busy {
        this.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(this))
    }

    /// Resolves once the connection has been idle too long: `true` when it had served a
    /// request (an idle timeout), `false` when none ever came (a header timeout).
    async fn idle(&self, first: Duration, idle: Duration) -> bool {
        loop {
            let now = self.epoch.elapsed();
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                idle
            } else {
                let ended = self.ended.load(Ordering::Acquire);
                let (since, limit) = if ended == u64::MAX {
                    (Duration::ZERO, first)
                } else {
                    (Duration::from_millis(ended), idle)
                };
                let quiet = now.saturating_sub(since);
                if quiet >= limit {
                    return ended != u64::MAX;
                }
                // Before the first request a request may start and end while this sleeps:
                // look again within `idle`, so that the idle timeout after it holds even
                // when `first` is longer.
                limit.saturating_sub(quiet).min(idle)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let millis = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.ended.store(millis, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A body read by hyper that must arrive within `body_timeout` of its head, as bodies read in
/// place must. Past it, `cut` ends the whole connection without an answer, as in place: the
/// body stays pending rather than failing, so no handler answers in the meantime.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    cut: CancellationToken,
    timed_out: Counter,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() && !self.cut.is_cancelled() {
            self.timed_out.inc();
            self.cut.cancel();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body polled as its request (see [`request_id::sync_scope`]).
struct ScopedBody {
    inner: Body,
    id: RequestId,
    /// The request's mark on its connection's activity, and its HTTP/2 place.
    _held: (Busy, Option<Permit>),
}

impl hyper::body::Body for ScopedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        request_id::sync_scope(this.id.clone(), || Pin::new(&mut this.inner).poll_frame(cx))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket with some bytes already read from it, served again before the socket's own.
///
/// Writes that make no progress for `send_timeout` fail, so hyper drops a client that does
/// not read (an event stream above all) as the in-place path does; hyper has no such timeout.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
    send_timeout: Duration,
    /// Armed while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
    timed_out: Counter,
}

impl<S> Rewind<S> {
    /// Passes on a write's result, or fails a write stalled for `send_timeout`.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if write.is_ready() {
            self.stalled = None;
            return write;
        }
        let send_timeout = self.send_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.timed_out.inc();
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl<S: Stream> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let bytes = self.prefix.split_to(n);
            buf.put_slice(&bytes);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Stream> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, write)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
