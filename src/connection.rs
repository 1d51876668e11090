//! One client connection: HTTP/1.1 framing with `httparse`, the requests themselves answered by
//! the axum router, and the requests that wait answered without holding any buffer.
//!
//! Why not hand every connection to hyper: an idle waiting client is CallHome's unit cost, and
//! through hyper each one keeps the connection's read buffer (8 KiB and up), write buffer and
//! dispatcher state for as long as it waits. Here a connection holds bytes only while it reads a
//! request head or body; a poll or event stream (see [`Held`]) copies the few bytes it needs out
//! of the head, frees the buffer and then waits holding only its socket and the wait itself.
//! docs/performance.md has the measurements.
//!
//! One framing: `head` reads every head on a connection by hyper's rules and refuses what hyper
//! would read one way and a proxy another (`400`, `417`, `431`, `501`, then close); `response`
//! decides how each answer is framed. A request with a chunked body, and HTTP/2 when it is on,
//! are handed to hyper (`handoff`) with the bytes already read put back in front; after a
//! chunked request hyper serves that one request and closes, so no second parser ever reads a
//! head on a connection this module started.
//!
//! Over TLS (`serve_tls`) the same code runs on the TLS session instead of the socket: it is
//! generic over the byte stream ([`Stream`]), so the plain path pays nothing for it. A
//! connection whose ALPN agreed on `h2` goes to hyper from the start.
//!
//! What this module does not do: decide anything about the API. Every request other than the
//! held ones and notifies becomes an `http::Request` for the same router the tests use; held
//! requests and notifies (the busiest backend request: building a request and routing it was
//! a third of its cost) go through the same functions as the router's routes.

mod handoff;
pub mod head;
mod response;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use axum::response::IntoResponse as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::api;
use crate::client_ip::X_FORWARDED_FOR;
use crate::error::ApiError;
use crate::extract::PeerAddr;
use crate::permit::Permit;
use crate::request_id::{self, RequestId, X_REQUEST_ID};
use crate::routes::common_headers;
use crate::state::AppState;
use crate::transport::{self, Held};
use handoff::Mode;
use head::{BodyLength, Head, MAX_HEAD, Parsed, Refusal, parse, path, query};
use response::{Answering, BodyFraming};

/// First read of a new request head. Most heads fit; the buffer grows when one does not.
const READ_CHUNK: usize = 1024;
/// Most bytes a body read asks the socket for at once: the buffer grows with what arrives,
/// never by what `Content-Length` claims.
const BODY_CHUNK: usize = 16 * 1024;
/// Refused connections being answered at once; past this many, new ones are closed unanswered
/// (answering is a courtesy that must not itself eat the file descriptors the cap protects).
const MAX_REFUSING: usize = 256;
/// How long a connection closed after an answer is still read from (and what it sends
/// dropped), so the client sees the answer rather than a reset caused by its unread bytes.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// A client's byte stream: a TCP socket, or the TLS session on one. Generic rather than boxed,
/// so the plain path compiles to exactly what it was before TLS existed.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// How the protocol on a connection is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Plain TCP: HTTP/1.1, or HTTP/2 by prior knowledge when `http2_cleartext` is on.
    Plain,
    /// TLS whose ALPN chose HTTP/1.1 (or nothing): HTTP/1.1 only, as RFC 9113 has HTTP/2
    /// over TLS agreed by ALPN.
    Http1,
    /// TLS whose ALPN chose `h2`.
    Http2,
}

/// Serves `stream` from `peer` until the client closes it, breaks the protocol, is too slow
/// (`header_timeout`, `idle_timeout`, `body_timeout`, `send_timeout`) or the server shuts down.
/// Held requests are not cut by any of these: they wait after their head has arrived.
/// `permit` is the connection's place in `max_connections`, given back when this returns.
pub async fn serve<S: Stream>(
    stream: S,
    peer: SocketAddr,
    protocol: Protocol,
    permit: Permit,
    state: AppState,
    router: Router,
) {
    let prior_knowledge = protocol == Protocol::Plain && state.http.http2_cleartext;
    let served = if protocol == Protocol::Http2 {
        Box::pin(handoff::hand_off(
            stream,
            Vec::new(),
            peer,
            Mode::Http2,
            &state,
            &router,
        ))
        .await
    } else if state.http.lean_path {
        let mut conn = Connection {
            stream,
            peer,
            buf: Vec::new(),
        };
        match conn.run(prior_knowledge, &state, &router).await {
            Ok(End::Close) => Ok(()),
            Ok(End::Linger) => {
                Box::pin(conn.linger()).await;
                Ok(())
            }
            Ok(End::Refuse(refusal)) => Box::pin(conn.refuse_head(refusal, &state)).await,
            Ok(End::HandOff(mode)) => {
                let Connection { stream, peer, buf } = conn;
                Box::pin(handoff::hand_off(stream, buf, peer, mode, &state, &router)).await
            }
            Err(e) => Err(e),
        }
    } else {
        let mode = if prior_knowledge {
            Mode::Any
        } else {
            Mode::Http1
        };
        Box::pin(handoff::hand_off(
            stream,
            Vec::new(),
            peer,
            mode,
            &state,
            &router,
        ))
        .await
    };
    match served {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => tracing::debug!("connection too slow"),
        Err(e) => tracing::debug!(error = %e, "connection ended"),
        Ok(()) => {}
    }
    drop(permit);
}

/// Serves a TLS connection: the handshake first, here in the connection's own task (the
/// accept loop never waits for one) and within `header_timeout`, so a client that never
/// finishes it holds its place no longer than one that never finishes a request head; then
/// HTTP/2 or HTTP/1.1, as ALPN agreed. `permit` was taken before the handshake, as for a
/// plain connection.
pub async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    state: AppState,
    router: Router,
) {
    let handshake = tokio::time::timeout(state.limits.header_timeout, acceptor.accept(stream));
    let handshake = tokio::select! {
        handshake = handshake => handshake,
        () = state.shutdown.cancelled() => return,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            state.metrics.tls.handshake_failed.inc();
            tracing::debug!(error = %e, %peer, "tls handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.tls.handshake_timeout.inc();
            tracing::debug!(%peer, "tls handshake too slow");
            return;
        }
    };
    let protocol = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    serve(stream, peer, protocol, permit, state, router).await;
}

/// Answers a connection over `max_connections` with `503 too_many_connections` and closes it,
/// without reading its request (or holding it for more than a second). `refusing` counts the
/// connections being refused right now (one counter per server).
pub fn refuse(stream: TcpStream, state: &AppState, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed unanswered
    }
    let response = ApiError::TooManyConnections(state.connections.size()).into_response();
    let state = state.clone();
    let refusing = Arc::clone(refusing);
    tokio::spawn(async move {
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let mut conn = Connection {
            stream,
            peer,
            buf: Vec::new(),
        };
        let answering = Answering {
            head: false,
            http10: false,
            keep_alive: false,
        };
        let id = RequestId::generate();
        if conn.write(response, answering, &id, &state).await.is_ok() {
            conn.linger().await;
        }
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

struct Connection<S> {
    stream: S,
    peer: SocketAddr,
    /// Bytes read but not yet used. Empty (and unallocated) while a request waits.
    buf: Vec<u8>,
}

/// What to do with the bytes at the front of the buffer.
enum Next {
    /// A request this module serves.
    Request(Head),
    /// A request with a chunked body: hyper reads it.
    Chunked,
    /// The HTTP/2 preface.
    Http2,
    /// A head that is refused.
    Refuse(Refusal),
    /// The client closed the connection between requests.
    Closed,
}

/// How the lean path leaves a connection.
enum End {
    /// Close it now.
    Close,
    /// Close it after a final answer, reading for a moment what the client still sends.
    Linger,
    /// Answer a refused head, then close.
    Refuse(Refusal),
    /// Give it to hyper, with the bytes already read.
    HandOff(Mode),
}

/// How far [`Connection::serve_head`] got.
enum Step {
    /// The answer (none when the client left) and what follows it.
    Answered(Option<Response<Body>>, After),
    /// A held request, ready to wait.
    Wait(Wait),
}

/// Who serves a request this module framed.
enum Dispatch {
    /// A poll or an event stream (`GET` or `HEAD`): waits holding no buffer.
    Held(Held),
    /// `POST /v1/ids/{id}/notify` without a query or an `Idempotency-Key`, served in place.
    Notify,
    /// Everything else, through the router.
    Route,
}

impl Dispatch {
    fn of(head: &Head) -> Self {
        let path = path(&head.target);
        match head.method {
            Method::GET | Method::HEAD => Held::at(path).map_or(Self::Route, Self::Held),
            // A notify with an idempotency key goes through the router, which keeps keys; one
            // with a query (`?wait=`) too, which reads it (and refuses what it does not know).
            Method::POST
                if api::notify_id(path).is_some()
                    && query(&head.target).is_none()
                    && header_value(head, &crate::idempotency::HEADER).is_none() =>
            {
                Self::Notify
            }
            _ => Self::Route,
        }
    }
}

/// What a held request needs while it waits, copied out of its head.
struct Wait {
    request: Held,
    query: Option<String>,
    last_event_id: Option<HeaderValue>,
    client: std::net::IpAddr,
}

/// After a request: whether the connection may read another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Read the next request.
    KeepAlive,
    /// Close: the request said so, its body was left unread, or the answer ends with the
    /// connection.
    Close,
    /// The client left (while its request waited, or during a stream).
    Gone,
}

impl<S: Stream> Connection<S> {
    /// Serves requests until the connection ends. `prior_knowledge`: the HTTP/2 preface is
    /// handed to hyper (plain TCP with `http2_cleartext` on) rather than refused.
    async fn run(
        &mut self,
        prior_knowledge: bool,
        state: &AppState,
        router: &Router,
    ) -> io::Result<End> {
        // Every connection's task is as large as the largest state this loop can be in, for as
        // long as the connection lives. Waiting is the state that lasts, so the other steps
        // (reading a body, routing, writing, hyper) are boxed: their memory exists only while
        // they run, and the head is gone before the wait begins.
        loop {
            let next = tokio::select! {
                next = self.read_head(state) => next?,
                // Between requests, shutdown closes the connection at once.
                () = state.shutdown.cancelled(), if self.buf.is_empty() => return Ok(End::Close),
            };
            let head = match next {
                Next::Request(head) => head,
                Next::Closed => return Ok(End::Close),
                Next::Chunked => return Ok(End::HandOff(Mode::OneRequest)),
                Next::Http2 if prior_knowledge => return Ok(End::HandOff(Mode::Http2)),
                Next::Http2 => {
                    let refusal = Refusal::Malformed(
                        "HTTP/2 without TLS is not enabled here (over TLS it is agreed by ALPN)",
                    );
                    return Ok(End::Refuse(refusal));
                }
                Next::Refuse(refusal) => return Ok(End::Refuse(refusal)),
            };
            let answering = Answering {
                head: head.method == Method::HEAD,
                http10: head.version == Version::HTTP_10,
                keep_alive: head.framing.keep_alive && !state.shutdown.is_cancelled(),
            };
            // Everything the request causes, up to the last byte of its response, runs as this
            // request (a streamed body is produced while it is written).
            let request_id = self.request_id(&head, state);
            let step = Box::pin(self.serve_head(head, &request_id, state, router)).await?;
            let (response, after) = match step {
                Step::Answered(response, after) => (response, after),
                Step::Wait(wait) => {
                    let current = request_id.clone();
                    request_id::scope(current, self.wait_for(wait, state)).await
                }
            };
            let Some(response) = response else {
                return Ok(End::Close); // the client left while its request waited
            };
            let answering = Answering {
                keep_alive: answering.keep_alive && after == After::KeepAlive,
                ..answering
            };
            let current = request_id.clone();
            let write = Box::pin(self.write(response, answering, &request_id, state));
            match request_id::scope(current, write).await? {
                After::KeepAlive => {}
                After::Close => return Ok(End::Linger),
                After::Gone => return Ok(End::Close),
            }
        }
    }

    /// Serves a framed request up to its answer, or up to the wait for a held one.
    async fn serve_head(
        &mut self,
        head: Head,
        request_id: &RequestId,
        state: &AppState,
        router: &Router,
    ) -> io::Result<Step> {
        let current = request_id.clone();
        let (response, after) = match Dispatch::of(&head) {
            Dispatch::Held(waiting) => {
                let prepared = self.prepare_wait(waiting, head, state);
                return Ok(match request_id::scope(current, prepared).await? {
                    Ok(wait) => Step::Wait(wait),
                    Err(refused) => Step::Answered(Some(refused.into_response()), After::Close),
                });
            }
            Dispatch::Notify => request_id::scope(current, self.notify(head, state)).await?,
            Dispatch::Route => request_id::scope(current, self.route(head, state, router)).await?,
        };
        Ok(Step::Answered(response, after))
    }

    /// The request's id: its trusted proxy's, or a fresh one.
    fn request_id(&self, head: &Head, state: &AppState) -> RequestId {
        let given = header_value(head, &X_REQUEST_ID_NAME);
        RequestId::for_peer(state.trusted_proxies.contains(self.peer.ip()), given)
    }

    /// Reads until a whole request head is buffered, and decides who serves it. Waiting for
    /// the first byte is bounded by `idle_timeout`, the rest of the head by `header_timeout`
    /// from that byte on, so a client trickling a head byte by byte is cut off.
    async fn read_head(&mut self, state: &AppState) -> io::Result<Next> {
        let limits = &state.limits;
        let mut started = !self.buf.is_empty();
        let mut deadline = Instant::now()
            + if started {
                limits.header_timeout
            } else {
                limits.idle_timeout
            };
        loop {
            if !self.buf.is_empty() {
                match parse(&self.buf) {
                    Parsed::Complete(head) => return Ok(Next::Request(head)),
                    Parsed::Chunked => return Ok(Next::Chunked),
                    Parsed::Http2 => return Ok(Next::Http2),
                    Parsed::Refuse(refusal) => return Ok(Next::Refuse(refusal)),
                    Parsed::Partial => {}
                }
            }
            self.buf.reserve(READ_CHUNK);
            let Ok(read) =
                tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await
            else {
                let timeouts = &state.metrics.timeouts;
                if started {
                    &timeouts.header
                } else {
                    &timeouts.idle
                }
                .inc();
                // Idle keep-alive connections ending is routine; a stalled head is not.
                return if started {
                    Err(io::ErrorKind::TimedOut.into())
                } else {
                    Ok(Next::Closed)
                };
            };
            if !started {
                started = true;
                deadline = Instant::now() + limits.header_timeout;
            }
            if read? == 0 {
                return if self.buf.is_empty() {
                    Ok(Next::Closed)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Answers a refused head with its JSON error and closes the connection: after a head
    /// that cannot be framed, nothing that follows it can be.
    async fn refuse_head(&mut self, refusal: Refusal, state: &AppState) -> io::Result<()> {
        tracing::debug!(%refusal, "request refused");
        self.buf = Vec::new();
        let answering = Answering {
            head: false,
            http10: false,
            keep_alive: false,
        };
        let response = ApiError::from(refusal).into_response();
        let id = RequestId::generate();
        let current = id.clone();
        request_id::scope(current, self.write(response, answering, &id, state)).await?;
        self.linger().await;
        Ok(())
    }

    /// Gets a poll or an event stream ready to wait: reads and drops any body (one left
    /// unread would be taken for the next request) and copies the few things the wait needs
    /// out of the head, which is then freed.
    async fn prepare_wait(
        &mut self,
        request: Held,
        head: Head,
        state: &AppState,
    ) -> io::Result<Result<Wait, ApiError>> {
        if let Err(refused) = self.take_body(&head, state).await? {
            return Ok(Err(refused));
        }
        let forwarded_for = head
            .headers
            .iter()
            .filter(|(name, _)| name.as_str() == X_FORWARDED_FOR)
            .map(|(_, value)| value);
        let client = state
            .trusted_proxies
            .client_ip(self.peer.ip(), forwarded_for);
        Ok(Ok(Wait {
            request,
            query: query(&head.target).map(str::to_owned),
            last_event_id: header_value(&head, &LAST_EVENT_ID).cloned(),
            client,
        }))
    }

    /// Serves a poll or an event stream, holding only the socket and the wait itself; no
    /// response when the client closed the connection meanwhile.
    async fn wait_for(&mut self, wait: Wait, state: &AppState) -> (Option<Response<Body>>, After) {
        let Wait {
            request,
            query,
            last_event_id,
            client,
        } = wait;
        let respond = request.respond(state.clone(), query, last_event_id, client);
        let mut respond = std::pin::pin!(respond);
        // The answer first: a client that sent its request and half-closed its side (FIN, as
        // `printf ... | nc` does) still gets an answer that is ready at once, or (with an
        // engine across the network) once the engine has answered.
        let mut began = false;
        tokio::select! {
            biased;
            response = std::future::poll_fn(|cx| {
                transport::poll_noting_wait(respond.as_mut(), cx, &mut began)
            }) => return (Some(response), After::KeepAlive),
            () = closed(&mut self.stream, &mut self.buf) => {}
        }
        // The client has gone, or half-closed its side. A lookup still in flight (Redis) may
        // finish for it; a wait that has begun is given up at once, so its place is free for
        // the next client (as with the memory engine, whose lookups never wait).
        let grace = state.store.lookup_bound();
        if began || grace.is_zero() {
            return (None, After::Gone);
        }
        let lookup = std::future::poll_fn(|cx| {
            match transport::poll_noting_wait(respond.as_mut(), cx, &mut began) {
                Poll::Ready(response) => Poll::Ready(Some(response)),
                Poll::Pending if began => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        });
        match tokio::time::timeout(grace, lookup).await {
            Ok(Some(response)) => (Some(response), After::Close),
            _ => (None, After::Gone),
        }
    }

    /// Serves a notify in place: the busiest backend request skips building an
    /// `http::Request` and the router, and goes through the same steps as the routed handler.
    /// The key is checked before the body is read (or `100 Continue` sent).
    async fn notify(
        &mut self,
        head: Head,
        state: &AppState,
    ) -> io::Result<(Option<Response<Body>>, After)> {
        let id = api::notify_id(path(&head.target)).unwrap_or_default();
        let app = api::authenticate(state, header_value(&head, &header::AUTHORIZATION));
        let content_type = header_value(&head, &header::CONTENT_TYPE);
        if app.is_err() {
            let after = self.skip_body(&head);
            let response = api::notify_in_place(state, app, content_type, id, &[]).await;
            return Ok((Some(response), after));
        }
        let body = match self.take_body(&head, state).await? {
            Ok(body) => body,
            Err(refused) => {
                // Counted like any other refused notify.
                let response = api::count_notify(state, Err(refused)).map(axum::Json);
                return Ok((Some(response.into_response()), After::Close));
            }
        };
        let response = api::notify_in_place(state, app, content_type, id, &body).await;
        Ok((Some(response), After::KeepAlive))
    }

    /// Serves any other request through the router. A request with a body whose key does
    /// not authenticate (as an app or the admin) is routed without its body, which is never
    /// read: every route that reads a body needs a key, so the answer is the same `401`, and
    /// the connection closes.
    async fn route(
        &mut self,
        head: Head,
        state: &AppState,
        router: &Router,
    ) -> io::Result<(Option<Response<Body>>, After)> {
        let has_body = head.framing.body != BodyLength::Length(0);
        let unauthenticated = has_body
            && !api::may_send_a_body(
                state,
                path(&head.target),
                header_value(&head, &header::AUTHORIZATION),
            );
        let (body, after) = if unauthenticated {
            (Bytes::new(), self.skip_body(&head))
        } else {
            match self.take_body(&head, state).await? {
                Ok(body) => (body, After::KeepAlive),
                Err(refused) => {
                    let refused =
                        if head.method == Method::POST && api::is_notify(path(&head.target)) {
                            // Counted like any other refused notify.
                            api::count_notify(state, Err(refused))
                                .map(axum::Json)
                                .into_response()
                        } else {
                            refused.into_response()
                        };
                    return Ok((Some(refused), After::Close));
                }
            }
        };
        let mut request = Request::builder()
            .method(head.method)
            .uri(&head.target)
            .version(head.version)
            .extension(PeerAddr(self.peer));
        if let Some(headers) = request.headers_mut() {
            headers.extend(head.headers);
        }
        let Ok(request) = request.body(Body::from(body)) else {
            let error = ApiError::from(Refusal::Malformed("malformed request target"));
            return Ok((Some(error.into_response()), After::Close));
        };
        let response = router.clone().oneshot(request).await;
        let response = response.unwrap_or_else(|infallible| match infallible {});
        Ok((Some(response), after))
    }

    /// Drops the head from the buffer and reads the body after it, within `body_timeout`,
    /// sending `100 Continue` first when the client waits for one. A body over the server's
    /// limit is not read: the answer is `413`, and the caller closes the connection.
    async fn take_body(
        &mut self,
        head: &Head,
        state: &AppState,
    ) -> io::Result<Result<Bytes, ApiError>> {
        let BodyLength::Length(len) = head.framing.body else {
            unreachable!("chunked bodies are handed to hyper before dispatch");
        };
        self.consume(head.head_len);
        let path = head.target.split('?').next().unwrap_or_default();
        let limit = state.body_limit_for(path);
        let len = match usize::try_from(len) {
            Ok(len) if len <= limit => len,
            _ => {
                self.buf = Vec::new();
                return Ok(Err(ApiError::BodyTooLarge(limit)));
            }
        };
        if len == 0 {
            return Ok(Ok(Bytes::new()));
        }
        if head.framing.expect_continue && self.buf.is_empty() {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n", state).await?;
        }
        self.read_body(len, state).await.map(Ok)
    }

    /// Drops the head and whatever of its body is buffered, without reading more; the
    /// connection must close after the answer (the rest of the body is still in the socket).
    fn skip_body(&mut self, head: &Head) -> After {
        self.buf = Vec::new();
        if head.framing.body == BodyLength::Length(0) {
            After::KeepAlive
        } else {
            After::Close
        }
    }

    /// Takes the next `len` bytes off the connection, within `body_timeout`.
    async fn read_body(&mut self, len: usize, state: &AppState) -> io::Result<Bytes> {
        let deadline = Instant::now() + state.limits.body_timeout;
        while self.buf.len() < len {
            self.buf.reserve((len - self.buf.len()).min(BODY_CHUNK));
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            let Ok(read) = read else {
                state.metrics.timeouts.body.inc();
                return Err(io::ErrorKind::TimedOut.into());
            };
            if read? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let body = Bytes::copy_from_slice(&self.buf[..len]);
        self.consume(len);
        Ok(body)
    }

    /// Drops the first `n` buffered bytes, and the allocation when nothing is left.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Closes our side after a final answer and reads what the client still sends for a
    /// moment (bounded in time and bytes), so unread input does not turn the close into a
    /// reset that destroys the answer before the client reads it.
    async fn linger(&mut self) {
        self.buf = Vec::new();
        let linger = async {
            let _ = self.stream.shutdown().await;
            let mut sink = [0u8; 1024];
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                match self.stream.read(&mut sink).await {
                    Ok(n) if n > 0 => dropped += n,
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }

    /// Sends `bytes`, within `send_timeout`: a client that stops reading is dropped rather than
    /// holding its connection (and our buffers) forever.
    async fn send(&mut self, bytes: &[u8], state: &AppState) -> io::Result<()> {
        let sent = tokio::time::timeout(state.limits.send_timeout, self.stream.write_all(bytes));
        let Ok(sent) = sent.await else {
            state.metrics.timeouts.send.inc();
            return Err(io::ErrorKind::TimedOut.into());
        };
        sent
    }

    /// Writes `response`, framed as [`response::framing`] decides.
    async fn write(
        &mut self,
        response: Response<Body>,
        answering: Answering,
        request_id: &RequestId,
        state: &AppState,
    ) -> io::Result<After> {
        let (mut parts, mut body) = response.into_parts();
        let delivered = parts.extensions.remove::<transport::Delivered>();
        common_headers(&mut parts.headers);
        let encoded = response::encode(&parts, answering, body.size_hint().exact(), request_id);
        let after = if encoded.keep_alive {
            After::KeepAlive
        } else {
            After::Close
        };
        let mut out = encoded.head;
        match encoded.body {
            BodyFraming::None => {
                drop(body);
                self.send(&out, state).await?;
                return Ok(after);
            }
            BodyFraming::Length(len) => {
                // A whole body (every JSON answer): one write with the head.
                let bytes = body.collect().await.map_err(io::Error::other)?.to_bytes();
                debug_assert_eq!(bytes.len() as u64, len);
                out.extend_from_slice(&bytes);
                self.send(&out, state).await?;
                if let Some(delivered) = delivered {
                    delivered.report(state);
                }
                return Ok(after);
            }
            BodyFraming::Chunked | BodyFraming::UntilClose => {}
        }
        let chunked = encoded.body == BodyFraming::Chunked;
        // A stream (server-sent events): head now, then one chunk per frame as it comes, while
        // watching for the client leaving so its waiting place is given back at once.
        self.send(&out, state).await?;
        drop(out);
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = closed(&mut self.stream, &mut self.buf) => return Ok(After::Gone),
            };
            match frame {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        if !chunked {
                            self.send(&data, state).await?;
                            continue;
                        }
                        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                        chunk.extend_from_slice(&data);
                        chunk.extend_from_slice(b"\r\n");
                        self.send(&chunk, state).await?;
                    }
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        if !chunked {
            return Ok(After::Close); // the end of the body is the end of the connection
        }
        self.send(b"0\r\n\r\n", state).await?;
        Ok(after)
    }
}

const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The first value of header `name` in `head`.
fn header_value<'h>(head: &'h Head, name: &HeaderName) -> Option<&'h HeaderValue> {
    head.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value)
}

/// Resolves when the peer closes the connection (or it fails). Bytes the client sends
/// meanwhile (a pipelined request) are kept in `buf` for later; past [`MAX_HEAD`] of them it
/// stops reading and never resolves, leaving the rest in the socket.
///
/// Polled by hand so the read's scratch space lives on the stack only while it is polled: a
/// waiting connection's task does not grow by it. On a TCP socket this is the readiness
/// wait and non-blocking read `readable` and `try_read` would do.
async fn closed<S: Stream>(stream: &mut S, buf: &mut Vec<u8>) {
    std::future::poll_fn(|cx| {
        loop {
            if buf.len() >= MAX_HEAD {
                return Poll::Pending; // never woken: the rest stays in the socket
            }
            let mut chunk = [0u8; 512];
            let mut read = ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => buf.extend_from_slice(read.filled()),
            }
        }
    })
    .await;
}
