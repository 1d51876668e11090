//! The differential of request framing: the same bytes read by the lean path's head parser
//! (`callhome::connection::head::parse`, driven the way the connection drives it) and by a real
//! hyper HTTP/1 server connection, and every difference in how they frame requests.
//!
//! Shared by the integration suite's bounded `proptest` (`tests/it/parser.rs`) and the cargo
//! fuzz target (`fuzz/fuzz_targets/framing.rs`, which includes this file by `#[path]`). It is
//! test code, so it lives with the tests rather than in the library behind a feature: the
//! library's API stays what the server needs, and both users compile the very same file. It
//! depends on nothing but `callhome`, `hyper`, `hyper-util`, `http-body-util`, `bytes` and
//! `tokio`, never on the suite's `support`.
//!
//! A difference is any of: a different number of requests; a request with another method,
//! target, version or body length; one side keeping the connection open where the other
//! closes it; the lean parser accepting what hyper refuses. The lean parser may refuse what
//! hyper accepts only for the reasons [`Stricter`] names.

#![allow(dead_code)] // each of the two users takes what it needs

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use callhome::connection::head::{self, BodyLength, MAX_HEAD, MAX_HEADERS, Parsed, Refusal};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One request as a reader framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub body: Body,
}

/// A request's body as a reader framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// All of it, this many bytes.
    Complete(u64),
    /// The input ended inside it.
    Incomplete,
    /// Chunked: on the lean path hyper reads it (and the rest of the connection).
    Chunked,
    /// Refused unread: longer than the server ever reads (lean path: `413`, then close).
    TooLarge(u64),
    /// hyper's body stream failed (a bad chunk, say).
    Failed(String),
}

/// Where a reader stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Waiting for more input: all of it used, or a head or body not complete yet.
    Waiting,
    /// Closed after the last request, which did not keep the connection alive.
    Closed,
    /// Refused the bytes after the last request (the lean path's reason, or hyper's error).
    Refused(String),
    /// The lean path handed the connection to hyper (a chunked body): nothing more to
    /// compare.
    HandedOff,
}

/// What a reader made of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub requests: Vec<Framed>,
    pub end: End,
}

/// The largest body the lean path reads: what the default config allows. A longer one is
/// refused with `413` and the connection closed.
pub fn body_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let settings = callhome::config::Config::default()
            .validate(|_| None)
            .expect("the default config is valid");
        let addr = ([127, 0, 0, 1], 0).into();
        let token = tokio_util::sync::CancellationToken::new();
        let state = callhome::state::AppState::new(settings, addr, token);
        state.body_limit as u64
    })
}

/// The lean path's reading: parse a head, take the body of the length it decided, parse the
/// next head, until the input runs out, a head is refused or handed to hyper, or a request
/// does not keep the connection alive.
pub fn lean(input: &[u8]) -> Reading {
    let mut requests = Vec::new();
    let mut at = 0;
    let end = loop {
        let rest = &input[at..];
        if rest.is_empty() {
            break End::Waiting;
        }
        let head = match head::parse(rest) {
            Parsed::Partial => break End::Waiting,
            Parsed::Refuse(refusal) => break End::Refused(refusal_name(refusal)),
            Parsed::Http2 => break End::Refused("HTTP/2 preface".into()),
            Parsed::Chunked => {
                let line = request_line(rest).expect("a head the parser took");
                requests.push(Framed {
                    body: Body::Chunked,
                    ..line
                });
                break End::HandedOff;
            }
            Parsed::Complete(head) => head,
        };
        let BodyLength::Length(len) = head.framing.body else {
            unreachable!("chunked heads are Parsed::Chunked");
        };
        let framed = |body| Framed {
            method: head.method.to_string(),
            target: head.target.clone(),
            version: head.version,
            body,
        };
        if len > body_limit() {
            requests.push(framed(Body::TooLarge(len)));
            break End::Closed;
        }
        let start = at + head.head_len;
        if ((input.len() - start) as u64) < len {
            requests.push(framed(Body::Incomplete));
            break End::Waiting;
        }
        requests.push(framed(Body::Complete(len)));
        at = start + usize::try_from(len).expect("within the input");
        if !head.framing.keep_alive {
            break End::Closed;
        }
    };
    Reading { requests, end }
}

fn refusal_name(refusal: Refusal) -> String {
    format!("{refusal:?}")
}

/// The request line of a head the lean parser accepted, for the record.
fn request_line(bytes: &[u8]) -> Option<Framed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(bytes).ok()?;
    Some(Framed {
        method: request.method?.to_owned(),
        target: request.path?.to_owned(),
        version: if request.version? == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        body: Body::Incomplete,
    })
}

/// Header lines (name, value) of each request hyper read.
pub type HeaderLines = Vec<Vec<(String, Vec<u8>)>>;

/// What hyper's service saw of one request.
#[derive(Debug, Default)]
struct Seen {
    framed: Vec<Framed>,
    /// Header lines (name, value) of each request, for [`Stricter`].
    headers: HeaderLines,
}

thread_local! {
    /// One runtime per thread, its clock paused: when hyper waits for input that will never
    /// come, the runtime is idle and the clock jumps to the timeout at once, so "hyper is
    /// waiting" is decided without waiting.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
}

/// hyper's reading: the input written to a hyper 1 HTTP/1 server connection (configured with
/// the lean path's limits, as `connection::handoff` configures it), whose service reads every
/// body to its end; the input is never closed, so hyper waits for more where it would.
pub fn hyper(input: &[u8]) -> (Reading, HeaderLines) {
    RUNTIME.with(|runtime| runtime.block_on(hyper_async(input)))
}

async fn hyper_async(input: &[u8]) -> (Reading, HeaderLines) {
    let (mut client, server) = tokio::io::duplex(input.len() + 64 * 1024);
    client
        .write_all(input)
        .await
        .expect("the pipe holds the input");
    let (mut client_read, _client_write) = tokio::io::split(client);
    // Answers are drained so that hyper never waits to write one.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(client_read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let seen = Rc::new(RefCell::new(Seen::default()));
    let recorder = Rc::clone(&seen);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let seen = Rc::clone(&recorder);
        async move {
            let (parts, body) = request.into_parts();
            let index = {
                let mut seen = seen.borrow_mut();
                seen.framed.push(Framed {
                    method: parts.method.to_string(),
                    target: parts.uri.to_string(),
                    version: parts.version,
                    body: Body::Incomplete,
                });
                seen.headers.push(
                    parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect(),
                );
                seen.framed.len() - 1
            };
            let body = match body.collect().await {
                Ok(collected) => Body::Complete(collected.to_bytes().len() as u64),
                Err(e) => Body::Failed(e.to_string()),
            };
            seen.borrow_mut().framed[index].body = body;
            // Not 2xx: a 2xx to CONNECT would end HTTP on the connection, which no CallHome
            // route answers (they answer CONNECT 405).
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD).max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(server), service);
    let end = match tokio::time::timeout(Duration::from_secs(3600), conn).await {
        Err(_) => End::Waiting,
        Ok(Ok(())) => End::Closed,
        Ok(Err(e)) => End::Refused(e.to_string()),
    };
    drain.abort();
    let seen = Rc::try_unwrap(seen).map_or_else(
        |seen| std::mem::take(&mut *seen.borrow_mut()),
        RefCell::into_inner,
    );
    let mut requests = seen.framed;
    // A body still being read when hyper stopped is one the input ended in.
    for request in &mut requests {
        if request.body == Body::Incomplete && end != End::Waiting {
            request.body = Body::Failed("connection ended".into());
        }
    }
    (Reading { requests, end }, seen.headers)
}

/// A reason the lean path may refuse a head hyper accepts: each a deliberate refusal of a
/// head hyper reads one way and a proxy may read another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stricter {
    /// Two `Content-Length` lines, even equal ones.
    DuplicateLength,
    /// `Content-Length` beside `Transfer-Encoding`.
    LengthAndCoding,
    /// `Expect` other than `100-continue`.
    UnknownExpectation,
    /// HTTP/1.1 without exactly one `Host`, HTTP/1.0 with more than one.
    Host,
    /// `Transfer-Encoding` other than one line of plain `chunked`.
    Coding,
    /// A target not in origin form (`*`, absolute form, authority form); the router refuses
    /// it too, so both paths agree.
    TargetForm,
}

/// Why the lean path may refuse the head at the front of `bytes`, judged from the head
/// itself (as httparse splits it, which both readers use) rather than from the lean path's
/// own reason, so a wrong reason cannot excuse itself.
pub fn stricter(bytes: &[u8]) -> Option<Stricter> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(bytes) else {
        return None;
    };
    let http11 = request.version == Some(1);
    let count = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let values = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let lengths = count("content-length");
    let codings = count("transfer-encoding");
    let hosts = count("host");
    if !request.path.is_some_and(|p| p.starts_with('/')) {
        Some(Stricter::TargetForm)
    } else if lengths > 1 {
        Some(Stricter::DuplicateLength)
    } else if lengths > 0 && codings > 0 {
        Some(Stricter::LengthAndCoding)
    } else if values("expect").any(|v| !v.eq_ignore_ascii_case(b"100-continue")) {
        Some(Stricter::UnknownExpectation)
    } else if hosts > 1 || (http11 && hosts == 0) {
        Some(Stricter::Host)
    } else if codings > 1
        || values("transfer-encoding").any(|v| !v.eq_ignore_ascii_case(b"chunked"))
    {
        Some(Stricter::Coding)
    } else {
        None
    }
}

/// True when httparse already finds the bytes at the front of `bytes` malformed, complete
/// head or not.
fn malformed(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    httparse::Request::new(&mut headers).parse(bytes).is_err()
}

/// A difference between the two readings of one input.
pub struct Difference {
    pub what: String,
    pub input: Vec<u8>,
    pub lean: Reading,
    pub hyper: Reading,
}

impl fmt::Debug for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.what)?;
        writeln!(f, "input: {:?}", String::from_utf8_lossy(&self.input))?;
        writeln!(f, "lean:  {:?}", self.lean)?;
        write!(f, "hyper: {:?}", self.hyper)
    }
}

/// Reads `input` both ways and returns the first difference, if any.
pub fn compare(input: &[u8]) -> Result<(), Box<Difference>> {
    judge(input, &lean(input), &hyper(input).0)
}

/// The first difference between two readings of `input`, if any.
pub fn judge(input: &[u8], lean: &Reading, hyper: &Reading) -> Result<(), Box<Difference>> {
    let differ = |what: String| {
        Box::new(Difference {
            what,
            input: input.to_vec(),
            lean: lean.clone(),
            hyper: hyper.clone(),
        })
    };
    // Where the head the lean path stopped at starts, for judging a refusal.
    let mut at = 0;
    for (i, l) in lean.requests.iter().enumerate() {
        let h = hyper.requests.get(i);
        if matches!(l.body, Body::TooLarge(_))
            && h.is_none()
            && matches!(hyper.end, End::Refused(_))
        {
            // The lean path refuses the body unread (413), hyper the head (a length it cannot
            // count to, 431): both refuse before reading a byte of it.
            return Ok(());
        }
        let Some(h) = h else {
            return Err(differ(format!(
                "the lean path read request {} and hyper did not",
                i + 1
            )));
        };
        // Both drop a `#fragment` from the target (the lean path since the fuzzer found it).
        if (&l.method, l.target.as_str(), l.version) != (&h.method, h.target.as_str(), h.version) {
            return Err(differ(format!("request {} differs", i + 1)));
        }
        match (&l.body, &h.body) {
            // A chunked body: hyper reads it (and the rest) on the lean path too. One too
            // large: refused with 413 by the lean path, and by the router behind hyper.
            (Body::Chunked | Body::TooLarge(_), _) => return Ok(()),
            (Body::Complete(a), Body::Complete(b)) if a == b => {}
            (Body::Incomplete, Body::Incomplete) => {}
            _ => return Err(differ(format!("request {}'s body differs", i + 1))),
        }
        if let Body::Complete(len) = l.body {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Ok(httparse::Status::Complete(head_len)) =
                httparse::Request::new(&mut headers).parse(&input[at..])
            else {
                return Err(differ(format!("request {} has no head", i + 1)));
            };
            at = (at + head_len).saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            at = at.min(input.len());
        }
    }
    let n = lean.requests.len();
    match &lean.end {
        End::Waiting | End::Closed if hyper.requests.len() > n => Err(differ(format!(
            "hyper read request {} and the lean path did not",
            n + 1
        ))),
        End::Waiting if hyper.end != End::Waiting => Err(differ(
            "the lean path waits for more; hyper does not (keep-alive or refusal)".into(),
        )),
        End::Closed if hyper.end != End::Closed => Err(differ(
            "the lean path closes after the last request; hyper does not".into(),
        )),
        End::Waiting | End::Closed | End::HandedOff => Ok(()),
        End::Refused(_) => {
            let served = hyper.requests.len() > n;
            if !served && matches!(hyper.end, End::Refused(_)) {
                return Ok(()); // both refuse
            }
            if !served && hyper.end == End::Waiting && malformed(&input[at..]) {
                // hyper looks at a head only once it seems complete (a blank line arrived, its
                // `is_complete_fast`) and then refuses it with the same httparse error; the
                // lean path parses what it has and refuses sooner. Same head, same refusal.
                return Ok(());
            }
            match stricter(&input[at..]) {
                Some(_) => Ok(()),
                None if served => Err(differ(format!(
                    "the lean path refuses request {} and hyper serves it",
                    n + 1
                ))),
                None => Err(differ(format!(
                    "the lean path refuses what follows request {n}; hyper {:?}",
                    hyper.end
                ))),
            }
        }
    }
}
