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
//! What this module does not do: decide anything about the API. Every request other than the
//! held ones and notifies becomes an `http::Request` for the same router the tests use; held
//! requests and notifies (the busiest backend request: building a request and routing it was
//! a third of its cost) go through the same functions as the router's routes. Anything unusual at the HTTP level
//! (chunked request bodies, `Expect`, upgrades, HTTP/2, a head this parser rejects) is handed to
//! hyper, with the bytes already read put back in front of the socket.

mod handoff;
mod head;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, Method, Request, Response, Version, header};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::api;
use crate::client_ip::X_FORWARDED_FOR;
use crate::error::ApiError;
use crate::extract::PeerAddr;
use crate::request_id::{self, RequestId, X_REQUEST_ID};
use crate::routes::common_headers;
use crate::state::AppState;
use crate::transport::Held;
use head::{Head, Parsed, parse, path, query};

/// Largest request head read; longer heads go to hyper, which answers 431.
const MAX_HEAD: usize = 16 * 1024;
/// First read of a new request head. Most heads fit; the buffer grows when one does not.
const READ_CHUNK: usize = 1024;
/// Refused connections being answered at once; past this many, new ones are closed unanswered
/// (answering is a courtesy that must not itself eat the file descriptors the cap protects).
const MAX_REFUSING: usize = 256;
/// How long a refused connection is read from after its answer, so the client sees the answer
/// rather than a reset caused by its unread request.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// Serves `stream` from `peer` until the client closes it, breaks the protocol, is too slow
/// (`header_timeout`, `idle_timeout`, `body_timeout`, `send_timeout`) or the server shuts down.
/// Held requests are not cut by any of these: they wait after their head has arrived.
pub async fn serve(stream: TcpStream, peer: SocketAddr, state: AppState, router: Router) {
    let conn = Connection {
        stream,
        peer,
        buf: Vec::new(),
    };
    match conn.run(&state, &router).await {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => tracing::debug!("connection too slow"),
        Err(e) => tracing::debug!(error = %e, "connection ended"),
        Ok(()) => {}
    }
    state.metrics.connections_open.dec();
}

/// Answers a connection over `max_connections` with `503 too_many_connections` and closes it,
/// without reading its request (or holding it for more than a second).
pub fn refuse(stream: TcpStream, state: &AppState) {
    static REFUSING: AtomicUsize = AtomicUsize::new(0);
    if REFUSING.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed unanswered
    }
    let response = axum::response::IntoResponse::into_response(ApiError::TooManyConnections(
        state.max_connections,
    ));
    let state = state.clone();
    tokio::spawn(async move {
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let mut conn = Connection {
            stream,
            peer,
            buf: Vec::new(),
        };
        let linger = async {
            let id = RequestId::generate();
            let framing = Framing {
                keep_alive: false,
                is_head: false,
                http10: false,
            };
            if conn.write(response, framing, &id, &state).await.is_ok() {
                let _ = conn.stream.shutdown().await;
                let mut sink = [0u8; 1024];
                while matches!(conn.stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        };
        let _ = tokio::time::timeout(REFUSE_LINGER, linger).await;
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    });
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes read but not yet used. Empty (and unallocated) while a request waits.
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Framing {
    /// The connection may serve another request afterwards.
    keep_alive: bool,
    /// A `HEAD` request: the head only.
    is_head: bool,
    /// An HTTP/1.0 request: no chunked encoding.
    http10: bool,
}

/// What to do with the bytes at the front of the buffer.
enum Next {
    /// A request this module serves.
    Request(Head),
    /// Something for hyper.
    HandOff,
    /// The client closed the connection between requests.
    Closed,
}

impl Connection {
    async fn run(mut self, state: &AppState, router: &Router) -> io::Result<()> {
        // Every connection's task is as large as the largest state this loop can be in, for as
        // long as the connection lives. Waiting is the state that lasts, so the other steps
        // (routing, writing, hyper) are boxed: their memory exists only while they run.
        loop {
            let next = tokio::select! {
                next = self.read_head(state) => next?,
                // Between requests, shutdown closes the connection at once.
                () = state.shutdown.cancelled(), if self.buf.is_empty() => return Ok(()),
            };
            let head = match next {
                Next::Request(head) => head,
                Next::Closed => return Ok(()),
                Next::HandOff => {
                    let handed = handoff::hand_off(self.stream, self.buf, self.peer, state, router);
                    return Box::pin(handed).await;
                }
            };
            // A body too large to read is refused unread, so the connection cannot be reused.
            let keep_alive = head.keep_alive
                && head.body_len <= state.body_limit
                && !state.shutdown.is_cancelled();
            let framing = Framing {
                keep_alive,
                is_head: head.method == Method::HEAD,
                http10: head.version == Version::HTTP_10,
            };
            // Everything the request causes, up to the last byte of its response, runs as this
            // request (a streamed body is produced while it is written).
            let request_id = self.request_id(&head, state);
            let current = request_id.clone();
            let response = if let Some(waiting) =
                Held::at(path(&head.target)).filter(|_| head.method == Method::GET)
            {
                let wait = self.wait_for(waiting, head, state);
                request_id::scope(current, wait).await?
            } else if head.method == Method::POST
                && api::notify_id(path(&head.target)).is_some()
                && head.body_len <= state.body_limit
            {
                let notify = Box::pin(self.notify(head, state));
                Some(request_id::scope(current, notify).await?)
            } else {
                let route = Box::pin(self.route(head, state, router));
                request_id::scope(current, route).await?
            };
            let Some(response) = response else {
                return Ok(()); // the client left while its request waited
            };
            let current = request_id.clone();
            let write = Box::pin(self.write(response, framing, &request_id, state));
            if !request_id::scope(current, write).await? || !keep_alive {
                return Ok(());
            }
        }
    }

    /// The request's id: its trusted proxy's, or a fresh one.
    fn request_id(&self, head: &Head, state: &AppState) -> RequestId {
        let given = head.headers.iter().find(|(name, _)| name == X_REQUEST_ID);
        RequestId::for_peer(
            state.trusted_proxies.contains(self.peer.ip()),
            given.map(|(_, value)| value),
        )
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
                    Parsed::HandOff => return Ok(Next::HandOff),
                    Parsed::Partial if self.buf.len() >= MAX_HEAD => return Ok(Next::HandOff),
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

    /// Serves a poll or an event stream. Copies what it needs out of the head, frees the read
    /// buffer, then waits; `None` when the client closed the connection meanwhile.
    async fn wait_for(
        &mut self,
        request: Held,
        head: Head,
        state: &AppState,
    ) -> io::Result<Option<Response<Body>>> {
        let query = query(&head.target).map(str::to_owned);
        let last_event_id = head
            .headers
            .iter()
            .find(|(name, _)| name.as_str() == "last-event-id")
            .map(|(_, value)| value.clone());
        let forwarded_for = head
            .headers
            .iter()
            .filter(|(name, _)| name.as_str() == X_FORWARDED_FOR)
            .map(|(_, value)| value);
        let client = state
            .trusted_proxies
            .client_ip(self.peer.ip(), forwarded_for);
        self.consume(head.len);
        drop(head);
        let respond = request.respond(state.clone(), query, last_event_id, client);
        tokio::select! {
            response = respond => Ok(Some(response)),
            () = closed(&self.stream, &mut self.buf) => Ok(None),
        }
    }

    /// Serves a notify in place: the busiest backend request skips building an
    /// `http::Request` and the router, and goes through the same steps as the routed handler.
    async fn notify(&mut self, head: Head, state: &AppState) -> io::Result<Response<Body>> {
        let body = self.read_body(head.len, head.body_len, state).await?;
        let header = |name: &HeaderName| {
            head.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, value)| value)
        };
        let id = api::notify_id(path(&head.target)).unwrap_or_default();
        Ok(api::notify_in_place(
            state,
            header(&header::AUTHORIZATION),
            header(&header::CONTENT_TYPE),
            id,
            &body,
        ))
    }

    /// Serves any other request through the router.
    async fn route(
        &mut self,
        head: Head,
        state: &AppState,
        router: &Router,
    ) -> io::Result<Option<Response<Body>>> {
        if head.body_len > state.body_limit {
            // Not worth reading: answer, and the caller closes the connection.
            self.consume(self.buf.len());
            if head.method == Method::POST && api::is_notify(path(&head.target)) {
                // A refused notify like any other (`api::count_notify` counts the rest).
                state.metrics.notifies.rejected.inc();
            }
            return Ok(Some(axum::response::IntoResponse::into_response(
                ApiError::BodyTooLarge(state.body_limit),
            )));
        }
        let body = self.read_body(head.len, head.body_len, state).await?;
        let mut request = Request::builder()
            .method(head.method)
            .uri(&head.target)
            .version(head.version)
            .extension(PeerAddr(self.peer));
        if let Some(headers) = request.headers_mut() {
            headers.extend(head.headers);
        }
        let request = match request.body(Body::from(body)) {
            Ok(request) => request,
            Err(e) => {
                let error = ApiError::InvalidParameters(format!("malformed request: {e}"));
                return Ok(Some(axum::response::IntoResponse::into_response(error)));
            }
        };
        let response = router.clone().oneshot(request).await;
        Ok(Some(
            response.unwrap_or_else(|infallible| match infallible {}),
        ))
    }

    /// Takes the `body_len` bytes after a head of `head_len` bytes off the connection, within
    /// `body_timeout`.
    async fn read_body(
        &mut self,
        head_len: usize,
        body_len: usize,
        state: &AppState,
    ) -> io::Result<Bytes> {
        let total = head_len + body_len;
        let deadline = Instant::now() + state.limits.body_timeout;
        while self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            let Ok(read) = read else {
                state.metrics.timeouts.body.inc();
                return Err(io::ErrorKind::TimedOut.into());
            };
            if read? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let body = Bytes::copy_from_slice(&self.buf[head_len..total]);
        self.consume(total);
        Ok(body)
    }

    /// Drops the first `n` buffered bytes, and the allocation when nothing is left.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
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

    /// Writes `response`; `false` when the client left before the body was complete.
    async fn write(
        &mut self,
        response: Response<Body>,
        framing: Framing,
        request_id: &RequestId,
        state: &AppState,
    ) -> io::Result<bool> {
        let Framing {
            mut keep_alive,
            is_head,
            http10,
        } = framing;
        let (mut parts, mut body) = response.into_parts();
        common_headers(&mut parts.headers);
        let exact = body.size_hint().exact();
        // HTTP/1.0 has no chunked encoding: a stream is sent as it is and ends with the
        // connection.
        let chunked = exact.is_none() && !is_head && !http10;
        if exact.is_none() && http10 {
            keep_alive = false;
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            push_header(&mut out, name.as_str(), value.as_bytes());
        }
        push_header(&mut out, X_REQUEST_ID, request_id.as_str().as_bytes());
        push_header(
            &mut out,
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes(),
        );
        if !keep_alive {
            push_header(&mut out, "connection", b"close");
        }
        match exact {
            Some(len) => push_header(&mut out, "content-length", len.to_string().as_bytes()),
            None if chunked => push_header(&mut out, "transfer-encoding", b"chunked"),
            None => {}
        }
        out.extend_from_slice(b"\r\n");

        if is_head {
            self.send(&out, state).await?;
            return Ok(true);
        }
        if let Some(len) = exact {
            // A whole body (every JSON answer): one write with the head.
            let bytes = body.collect().await.map_err(io::Error::other)?.to_bytes();
            debug_assert_eq!(bytes.len() as u64, len);
            out.extend_from_slice(&bytes);
            self.send(&out, state).await?;
            return Ok(true);
        }
        // A stream (server-sent events): head now, then one chunk per frame as it comes, while
        // watching for the client leaving so its waiting place is given back at once.
        self.send(&out, state).await?;
        drop(out);
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = closed(&self.stream, &mut self.buf) => return Ok(false),
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
            return Ok(false); // the end of the body is the end of the connection
        }
        self.send(b"0\r\n\r\n", state).await?;
        Ok(true)
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Resolves when the peer closes the connection (or it fails). Bytes the client sends
/// meanwhile (a pipelined request) are kept in `buf` for later; past [`MAX_HEAD`] of them it
/// stops reading and never resolves, leaving the rest in the socket.
async fn closed(stream: &TcpStream, buf: &mut Vec<u8>) {
    loop {
        if buf.len() >= MAX_HEAD || stream.readable().await.is_err() {
            return std::future::pending().await;
        }
        let mut chunk = [0u8; 512];
        match stream.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
