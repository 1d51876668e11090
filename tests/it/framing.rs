//! One table of HTTP/1.1 framing vectors ([`VECTORS`]), sent over raw sockets to the lean
//! path, to hyper alone (`http.lean_path = false`) and through a real nginx running the shipped
//! config: smuggling attempts (CL.0 on the held GETs), ambiguous lengths and codings, odd
//! line endings, pipelining, split writes, HTTP/1.0, HEAD and 204 framing.
//!
//! For every vector and every way in, the test checks the status lines that come back (and
//! that refusals on the lean path are our JSON error with its stable code), that exactly the
//! expected answers came back and nothing more, whether the connection is closed afterwards,
//! and the smuggling property: no stored info holds bytes of another request, and nothing was
//! notified, created or deleted that the vector did not mean to. Through nginx, CallHome's side
//! of every pooled connection is recorded (`support::tap`), so an answer CallHome wrote that
//! nginx dropped still counts.
//!
//! Each vector runs on a fresh server whose app "one" owns [`ID`] and [`OTHER`], each notified
//! once with `start` (so a poll with `since=0` answers at once).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use callhome::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::nginx::Nginx;
use crate::support::tap::Tap;
use crate::support::{KEY, KEY_TWO, TestServer, unlimited};

/// The id every vector reads and writes (app "one").
const ID: &str = "framing-vector-id-0001";
/// A second id of app "one"; only smuggled requests ever name it.
const OTHER: &str = "framing-other-id-0002";
/// An id nothing may create.
const NEVER: &str = "framing-never-made-0003";
/// What both ids hold before a vector runs.
const START: &str = "start";
/// `poll_timeout` on every table server: a held poll ends soon, so a smuggled one shows.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one vector may take to answer, in all.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a connection that should be closed may take to close after its last answer.
const CLOSE_PATIENCE: Duration = Duration::from_secs(3);

/// What the client does, in order. In the bytes, `{id}`, `{other}`, `{never}` and `{key}` are
/// replaced by [`ID`], [`OTHER`], [`NEVER`] and app one's key, `{pad}` by 3,500 bytes of
/// header value, and `{n}` by the number of bytes after the first blank line of the same
/// write (a `Content-Length` that covers exactly the rest).
#[derive(Debug, Clone, Copy)]
enum Step {
    /// One write.
    Send(&'static str),
    /// One write per byte, 1 ms apart (well within `header_timeout`).
    Bytewise(&'static str),
    /// Waits (bounded) until this many clients wait on [`ID`].
    Waiting(u32),
    /// Deletes [`ID`] through the API, from another connection.
    Delete,
    /// Shuts the client's sending side (FIN), keeping its receiving side open.
    HalfClose,
}

/// One expected answer.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    /// The answer is to a `HEAD`: it has no body whatever its headers say.
    to_head: bool,
    check: Check,
}

const fn ok(check: Check) -> Answer {
    status(200, check)
}

const fn status(status: u16, check: Check) -> Answer {
    Answer {
        status,
        to_head: false,
        check,
    }
}

const fn head(status: u16, check: Check) -> Answer {
    Answer {
        status,
        to_head: true,
        check,
    }
}

/// What else an answer must be.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Nothing more.
    Any,
    /// Our JSON error with this `error.code`.
    Code(&'static str),
    /// A refusal by hyper's or nginx's own parser: a status line and no JSON (neither lets
    /// the application write that answer).
    Bare,
    /// A poll's answer, exactly `{"seq": .., "info": ..}`.
    Poll(u64, &'static str),
    /// A notify's answer with this `seq`.
    Notified(u64),
    /// `/healthz`'s answer.
    Healthy,
    /// A `HEAD` of this path: `Content-Length` absent or equal to its `GET`'s.
    HeadOf(&'static str),
    /// No body and no `Content-Length` (RFC 9110 §8.6: a 204 must not have one).
    NoLength,
    /// This header has this value (names lower case).
    Header(&'static str, &'static str),
    /// A chunked stream whose body contains this.
    Stream(&'static str),
}

/// The state of the connection after the answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still open, and the next request on it (a probe `GET /healthz`) is answered next:
    /// nothing is queued behind the answers.
    Open,
    /// Closed by the server, with nothing after the answers.
    Closed,
}

/// What a vector may change.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// [`ID`] still holds `start` at seq 1.
    Unchanged,
    /// [`ID`] was notified once with this info (seq 2).
    Notified(&'static str),
    /// [`ID`] was deleted.
    Deleted,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    answers: &'static [Answer],
    end: End,
    effect: Effect,
}

const fn outcome(answers: &'static [Answer], end: End, effect: Effect) -> Outcome {
    Outcome {
        answers,
        end,
        effect,
    }
}

/// What the client of nginx sees.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// What the lean path answers, passed through.
    Same,
    /// nginx decides (typically refusing the head itself with its own `400`).
    Own(Outcome),
    /// Not run through nginx, for the reason given.
    Skip(&'static str),
}

#[derive(Debug)]
struct Vector {
    name: &'static str,
    steps: &'static [Step],
    /// On the lean path.
    lean: Outcome,
    /// With the lean path off, where hyper answers otherwise; `None`: as [`Vector::lean`].
    hyper: Option<Outcome>,
    /// Through nginx.
    nginx: Via,
}

/// A notify on `{id}` with a text body, up to its framing headers.
macro_rules! notify_head {
    () => {
        "POST /v1/ids/{id}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: text/plain\r\n"
    };
}

/// A poll on `{id}` that answers at once, with a body of `{n}` bytes to follow.
macro_rules! poll_with_body {
    () => {
        "GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n"
    };
}

use Check::{Any, Bare, Code, Healthy, NoLength, Notified, Poll};
use Effect::{Deleted, Unchanged};
use End::{Closed, Open};
use Step::{Bytewise, Delete, HalfClose, Send, Waiting};

const START_POLL: Answer = ok(Poll(1, START));
const HELLO: Effect = Effect::Notified("hello");
const NOTIFIED: Outcome = outcome(&[ok(Notified(2))], Open, HELLO);
const NOTIFIED_THEN_CLOSED: Outcome = outcome(&[ok(Notified(2))], Closed, HELLO);
const MALFORMED: Outcome = outcome(&[status(400, Code("malformed_request"))], Closed, Unchanged);
const BARE_400: Outcome = outcome(&[status(400, Bare)], Closed, Unchanged);
const BARE_501: Outcome = outcome(&[status(501, Bare)], Closed, Unchanged);
/// A chunked notify of `hello`: hyper reads it, on the lean path as one request after which
/// the connection closes (no second parser reads a head on that connection).
const CHUNKED_HELLO: Outcome = NOTIFIED_THEN_CLOSED;

/// The table. Each vector says what the lean path answers and, where it differs, what hyper
/// alone and nginx answer.
const VECTORS: &[Vector] = &[
    // CL.0: a held GET with a body that is itself a request (finding 1).
    Vector {
        name: "cl0: poll body is a notify with an overlong Content-Length",
        steps: &[Send(concat!(
            poll_with_body!(),
            notify_head!(),
            "Content-Length: 100\r\n\r\nsmuggled"
        ))],
        lean: outcome(&[START_POLL], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "cl0: poll body is a GET /metrics",
        steps: &[Send(concat!(
            poll_with_body!(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        ))],
        lean: outcome(&[START_POLL], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "cl0: poll body is a held poll",
        steps: &[Send(concat!(
            poll_with_body!(),
            "GET /v1/poll?id={id}&since=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        ))],
        lean: outcome(&[START_POLL], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "cl0: event stream body is a notify on another id with an overlong Content-Length",
        steps: &[
            Send(concat!(
                "GET /v1/events?id={id} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n",
                "POST /v1/ids/{other}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n",
                "Content-Type: text/plain\r\nContent-Length: 100\r\n\r\nsmuggled"
            )),
            Waiting(1),
            // Ends the stream, so whatever follows it on the connection is read.
            Delete,
        ],
        lean: outcome(&[ok(Check::Stream("event: gone"))], Open, Deleted),
        hyper: None,
        nginx: Via::Same,
    },
    // Content-Length (finding 2).
    Vector {
        name: "two differing Content-Lengths",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 5\r\nContent-Length: 0\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "two equal Content-Lengths",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        // hyper keeps one of two equal lengths: not ambiguous, so served.
        hyper: Some(NOTIFIED),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "Content-Length: +5",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: +5\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "Content-Length with a leading space",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length:  5\r\n\r\nhello"
        ))],
        lean: NOTIFIED,
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "Content-Length with a trailing space",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 5 \r\n\r\nhello"
        ))],
        lean: NOTIFIED,
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "Content-Length: 0x5",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 0x5\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "Content-Length: 5,5",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 5,5\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "empty Content-Length",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length:\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "Content-Length over u64",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 99999999999999999999999\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    // Connection (finding 2).
    Vector {
        name: "Connection: close, then Connection: keep-alive",
        steps: &[Send(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
        )],
        lean: outcome(&[ok(Healthy)], Closed, Unchanged),
        hyper: None,
        // nginx takes the last Connection line for its own side (CallHome closes its side).
        nginx: Via::Own(outcome(&[ok(Healthy)], Open, Unchanged)),
    },
    // Content-Length beside Transfer-Encoding.
    Vector {
        name: "Content-Length then Transfer-Encoding",
        steps: &[Send(concat!(
            notify_head!(),
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: MALFORMED,
        // hyper drops the length, reads the chunks and closes (RFC 9112 §6.3).
        hyper: Some(NOTIFIED_THEN_CLOSED),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "Transfer-Encoding then Content-Length",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: MALFORMED,
        hyper: Some(NOTIFIED_THEN_CLOSED),
        nginx: Via::Own(BARE_400),
    },
    // Transfer-Encoding.
    Vector {
        name: "Transfer-Encoding: chunked",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: CHUNKED_HELLO,
        hyper: Some(NOTIFIED),
        nginx: Via::Own(NOTIFIED),
    },
    Vector {
        name: "Transfer-Encoding: Chunked",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: CHUNKED_HELLO,
        hyper: Some(NOTIFIED),
        nginx: Via::Own(NOTIFIED),
    },
    Vector {
        name: "Transfer-Encoding with a leading space",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding:  chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: CHUNKED_HELLO,
        hyper: Some(NOTIFIED),
        nginx: Via::Own(NOTIFIED),
    },
    Vector {
        name: "Transfer-Encoding: gzip, chunked",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: outcome(
            &[status(501, Code("unsupported_transfer_coding"))],
            Closed,
            Unchanged,
        ),
        hyper: None,
        nginx: Via::Own(BARE_501),
    },
    Vector {
        name: "Transfer-Encoding: chunked, gzip",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_501),
    },
    Vector {
        name: "Transfer-Encoding: identity",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_501),
    },
    Vector {
        name: "Transfer-Encoding on HTTP/1.0",
        steps: &[Send(concat!(
            "POST /v1/ids/{id}/notify HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {key}\r\n",
            "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "two Transfer-Encoding lines",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: MALFORMED,
        hyper: None,
        nginx: Via::Own(BARE_400),
    },
    // Line syntax.
    Vector {
        name: "obs-fold",
        steps: &[Send(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  folded\r\n\r\n",
        )],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "bare CR",
        steps: &[Send("GET /healthz HTTP/1.1\r\nHost: x\rX-Y: z\r\n\r\n")],
        lean: MALFORMED,
        hyper: Some(BARE_400),
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "bare LF line endings",
        steps: &[Send("GET /healthz HTTP/1.1\nHost: x\n\n")],
        lean: outcome(&[ok(Healthy)], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    // Chunked bodies (read by hyper on both paths).
    Vector {
        name: "chunk size overflow",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: outcome(&[status(400, Any)], Closed, Unchanged),
        hyper: None,
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "chunk extension",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n"
        ))],
        lean: CHUNKED_HELLO,
        hyper: Some(NOTIFIED),
        nginx: Via::Own(NOTIFIED),
    },
    Vector {
        name: "chunked trailers",
        steps: &[Send(concat!(
            notify_head!(),
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
        ))],
        lean: CHUNKED_HELLO,
        hyper: Some(NOTIFIED),
        nginx: Via::Own(NOTIFIED),
    },
    // Expect (findings 2 and 7).
    Vector {
        name: "Expect: foo",
        steps: &[Send(concat!(
            notify_head!(),
            "Expect: foo\r\nContent-Length: 5\r\n\r\nhello"
        ))],
        lean: outcome(
            &[status(417, Code("expectation_failed"))],
            Closed,
            Unchanged,
        ),
        hyper: None,
        // nginx does not pass Expect on: CallHome sees a plain notify.
        nginx: Via::Own(NOTIFIED),
    },
    Vector {
        name: "Expect: 100-continue on a notify without a key",
        steps: &[Send(concat!(
            "POST /v1/ids/{id}/notify HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n",
            "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ))],
        // 401 first: no `100 Continue`, and the body is never asked for.
        lean: outcome(&[status(401, Code("unauthorized"))], Closed, Unchanged),
        hyper: None,
        nginx: Via::Skip("nginx sends 100 Continue itself and waits for the body"),
    },
    // The request target (found by the fuzzer).
    Vector {
        name: "a poll whose target has a fragment",
        steps: &[Send(
            "GET /v1/poll?id={id}&since=0#f HTTP/1.1\r\nHost: x\r\n\r\n",
        )],
        // As hyper reads it: the fragment is no part of the query (RFC 3986 §3.5).
        lean: outcome(&[START_POLL], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "a notify whose path has a fragment",
        steps: &[Send(concat!(
            "POST /v1/ids/{id}#f/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n",
            "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        ))],
        // hyper's target is /v1/ids/{id}: a status call, which does not take POST.
        lean: outcome(&[status(405, Code("method_not_allowed"))], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    // Many requests, and one in many pieces.
    Vector {
        name: "three pipelined requests in one write",
        steps: &[Send(concat!(
            "GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n"
        ))],
        lean: outcome(&[START_POLL, ok(Healthy), START_POLL], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "a head one byte at a time",
        steps: &[Bytewise(
            "GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        )],
        lean: outcome(&[START_POLL], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    // HTTP/1.0 and Host.
    Vector {
        name: "HTTP/1.0",
        steps: &[Send("GET /healthz HTTP/1.0\r\n\r\n")],
        lean: outcome(&[ok(Healthy)], Closed, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "HTTP/1.0 with Connection: keep-alive",
        steps: &[Send(
            "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )],
        lean: outcome(
            &[ok(Check::Header("connection", "keep-alive"))],
            Open,
            Unchanged,
        ),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "HTTP/1.1 without Host",
        steps: &[Send("GET /healthz HTTP/1.1\r\n\r\n")],
        lean: MALFORMED,
        hyper: None,
        nginx: Via::Own(BARE_400),
    },
    Vector {
        name: "two Host lines",
        steps: &[Send("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")],
        lean: MALFORMED,
        hyper: None,
        nginx: Via::Own(BARE_400),
    },
    // Limits (findings 3 and 4).
    Vector {
        name: "a head over 16 KiB",
        steps: &[Send(concat!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad-1: {pad}\r\nX-Pad-2: {pad}\r\n",
            "X-Pad-3: {pad}\r\nX-Pad-4: {pad}\r\nX-Pad-5: {pad}\r\n\r\n"
        ))],
        lean: outcome(&[status(431, Code("head_too_large"))], Closed, Unchanged),
        hyper: Some(outcome(&[status(431, Bare)], Closed, Unchanged)),
        // Each line fits nginx's header buffers, so the whole head reaches CallHome, whose
        // answer nginx passes on; nginx keeps its own side of the connection open.
        nginx: Via::Own(outcome(
            &[status(431, Code("head_too_large"))],
            Open,
            Unchanged,
        )),
    },
    Vector {
        name: "the HTTP/2 preface with HTTP/2 cleartext off",
        steps: &[Send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")],
        lean: MALFORMED,
        // hyper closes on the preface without a word.
        hyper: Some(outcome(&[], Closed, Unchanged)),
        nginx: Via::Own(BARE_400),
    },
    // HEAD and 204 (finding 5).
    Vector {
        name: "HEAD /callhome.js",
        steps: &[Send("HEAD /callhome.js HTTP/1.1\r\nHost: x\r\n\r\n")],
        lean: outcome(&[head(200, Check::HeadOf("/callhome.js"))], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "HEAD on the seed notify URL",
        steps: &[Send(
            "HEAD /notify?id={id}&info=evil HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
        )],
        lean: outcome(&[head(405, Any)], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "HEAD on the seed idcreate URL",
        steps: &[Send(
            "HEAD /idcreate?id={never} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
        )],
        lean: outcome(&[head(405, Any)], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "DELETE answers 204 without Content-Length",
        steps: &[Send(
            "DELETE /v1/ids/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n",
        )],
        lean: outcome(&[status(204, NoLength)], Open, Deleted),
        hyper: None,
        nginx: Via::Same,
    },
    Vector {
        name: "a poll timing out answers 204 without Content-Length",
        steps: &[Send(
            "GET /v1/poll?id={id}&since=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        )],
        lean: outcome(&[status(204, NoLength)], Open, Unchanged),
        hyper: None,
        nginx: Via::Same,
    },
    // Half-close (finding 6; `half_closed_clients_get_their_answer` repeats it).
    Vector {
        name: "a poll answered at once, then the client half-closes",
        steps: &[
            Send("GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n"),
            HalfClose,
        ],
        lean: outcome(&[START_POLL], Closed, Unchanged),
        hyper: None,
        // nginx takes a client's FIN for an abort (499) unless proxy_ignore_client_abort is on.
        nginx: Via::Skip("nginx closes on a client's FIN"),
    },
];

/// How a vector reaches CallHome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// The lean path.
    Lean,
    /// hyper alone: the lean path off.
    Hyper,
    /// nginx with the shipped config, in front of the lean path.
    Nginx,
}

#[tokio::test]
async fn vectors_on_the_lean_path() {
    run_table(Way::Lean).await;
}

#[tokio::test]
async fn vectors_with_the_lean_path_off() {
    run_table(Way::Hyper).await;
}

#[tokio::test]
async fn vectors_through_nginx() {
    run_table(Way::Nginx).await;
}

/// Runs every vector (each on a fresh server) and fails with the list of those that failed.
async fn run_table(way: Way) {
    let mut failed = String::new();
    for vector in VECTORS {
        if let Err(why) = run_vector(vector, way).await {
            let _ = writeln!(failed, "- {}: {why}", vector.name);
        }
    }
    assert!(
        failed.is_empty(),
        "vectors that failed ({way:?}):\n{failed}"
    );
}

/// The config of every table server: short polls, no rate limits, and the way in.
fn table_config(config: &mut Config, way: Way) {
    unlimited(config);
    config.limits.poll_timeout = POLL_TIMEOUT;
    config.http.lean_path = way != Way::Hyper;
}

/// A fresh server with [`ID`] and [`OTHER`] holding `start`.
async fn prepared_server(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let s = TestServer::spawn_with(adjust);
    for id in [ID, OTHER] {
        let r = s.create(KEY, Some(json!({ "id": id }))).await;
        assert_eq!(r.status(), 201, "creating {id}");
        assert_eq!(s.notify(KEY, id, START).await.status(), 200);
    }
    s
}

async fn run_vector(vector: &Vector, way: Way) -> Result<(), String> {
    let expected = match (way, vector.nginx) {
        (Way::Nginx, Via::Skip(why)) => {
            eprintln!("not through nginx: {}: {why}", vector.name);
            return Ok(());
        }
        (Way::Nginx, Via::Own(outcome)) => outcome,
        // hyper answers a half-closed client only when the answer is ready at once, which
        // with Redis it never is (a round trip first): docs/deploy.md, "Half-closed clients".
        (Way::Hyper, _)
            if vector.steps.iter().any(|s| matches!(s, HalfClose))
                && crate::support::engine::redis_engine() =>
        {
            outcome(&[], Closed, Unchanged)
        }
        (Way::Hyper, _) => vector.hyper.unwrap_or(vector.lean),
        _ => vector.lean,
    };
    let s = prepared_server(|c| table_config(c, way)).await;
    let front = match way {
        Way::Nginx => {
            let tap = Tap::start(s.addr).await;
            let Some(nginx) = Nginx::start(tap.addr).await else {
                return Ok(()); // not installed, and not CI: said so on stderr
            };
            Some((tap, nginx))
        }
        _ => None,
    };
    let addr = front.as_ref().map_or(s.addr, |(_, nginx)| nginx.addr);
    let result = exchange(&s, addr, vector.steps, &expected).await;
    let result = result.and(check_effect(&s, expected.effect).await);
    let result = match &front {
        Some((tap, _)) => result.and(check_upstream(tap)),
        None => result,
    };
    result.map_err(|why| match &front {
        Some((_, nginx)) if std::env::var_os("TEST_LOG").is_some() => {
            format!("{why}\nnginx:\n{}", nginx.logs())
        }
        _ => why,
    })
}

/// Performs the steps on one connection to `addr` and checks what comes back.
async fn exchange(
    s: &TestServer,
    addr: SocketAddr,
    steps: &[Step],
    expected: &Outcome,
) -> Result<(), String> {
    let mut c = Client::connect(addr, None).await;
    for step in steps {
        match *step {
            Send(raw) => c.send(&expand(raw)).await?,
            Bytewise(raw) => {
                for byte in expand(raw) {
                    c.send(&[byte]).await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Waiting(n) => s.wait_for_waiters(ID, u64::from(n)).await,
            Delete => {
                let r = s
                    .client
                    .delete(s.url(&format!("/v1/ids/{ID}")))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204, "deleting {ID}");
            }
            HalfClose => c.half_close().await,
        }
    }
    for (i, answer) in expected.answers.iter().enumerate() {
        let got = c
            .answer(answer.to_head)
            .await?
            .ok_or_else(|| format!("closed after {i} of {} answers", expected.answers.len()))?;
        check_answer(s, answer, &got)
            .await
            .map_err(|why| format!("answer {}: {why}\n{got}", i + 1))?;
    }
    match expected.end {
        End::Closed => c.closed().await,
        End::Open => {
            c.send(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
                .await?;
            let got = c.answer(false).await?.ok_or(
                "closed after the answers, or nothing answered the probe: expected it open",
            )?;
            check_answer(s, &ok(Healthy), &got).await.map_err(|why| {
                format!("the next answer after the expected ones is not the probe's: {why}\n{got}")
            })
        }
    }
}

/// The vector's bytes with its placeholders filled in.
fn expand(raw: &str) -> Vec<u8> {
    let pad = "a".repeat(3500);
    let text = raw
        .replace("{id}", ID)
        .replace("{other}", OTHER)
        .replace("{never}", NEVER)
        .replace("{key}", KEY)
        .replace("{pad}", &pad);
    // `{n}` is in the head, so the body's length does not depend on what replaces it.
    let body_len = text.find("\r\n\r\n").map_or(0, |end| text.len() - end - 4);
    text.replacen("{n}", &body_len.to_string(), 1).into_bytes()
}

async fn check_answer(s: &TestServer, answer: &Answer, got: &Answered) -> Result<(), String> {
    if got.status != answer.status {
        return Err(format!("status {}, expected {}", got.status, answer.status));
    }
    let json = || serde_json::from_slice::<Value>(&got.body).map_err(|e| format!("not JSON: {e}"));
    match answer.check {
        Any => {}
        Code(code) => {
            if got.header("content-type") != Some("application/json") {
                return Err("a refusal that is not application/json".into());
            }
            let body = json()?;
            if body["error"]["code"] != code || !body["error"]["message"].is_string() {
                return Err(format!("error {body}, expected code {code}"));
            }
        }
        Bare => {
            if got.header("content-type") == Some("application/json") {
                return Err("JSON where hyper's or nginx's own answer was expected".into());
            }
        }
        Poll(seq, info) => {
            let body = json()?;
            if body != json!({ "seq": seq, "info": info }) {
                return Err(format!("poll answered {body}"));
            }
        }
        Notified(seq) => {
            if json()?["seq"] != seq {
                return Err(format!("notify answered seq {}", json()?["seq"]));
            }
        }
        Healthy => {
            if json()? != json!({ "status": "ok" }) {
                return Err("not /healthz's answer".into());
            }
        }
        Check::HeadOf(path) => {
            let get = s.client.get(s.url(path)).send().await.unwrap();
            let length = get.bytes().await.unwrap().len().to_string();
            match got.header("content-length") {
                None => {}
                Some(given) if given == length => {}
                Some(given) => {
                    return Err(format!(
                        "HEAD says content-length {given}, GET sends {length} bytes"
                    ));
                }
            }
        }
        NoLength => {
            if got.header("content-length").is_some() || !got.body.is_empty() {
                return Err("a 204 with a Content-Length or a body".into());
            }
        }
        Check::Header(name, value) => {
            if !got
                .header(name)
                .is_some_and(|v| v.eq_ignore_ascii_case(value))
            {
                return Err(format!("no {name}: {value}"));
            }
        }
        Check::Stream(needle) => {
            if got.header("transfer-encoding") != Some("chunked")
                || !String::from_utf8_lossy(&got.body).contains(needle)
            {
                return Err(format!("not a chunked stream with {needle:?}"));
            }
        }
    }
    Ok(())
}

/// The smuggling property, read back from the server itself: [`ID`] holds what the vector
/// meant it to, [`OTHER`] holds `start`, [`NEVER`] does not exist, and no other id was made.
async fn check_effect(s: &TestServer, effect: Effect) -> Result<(), String> {
    let expected = match effect {
        Effect::Unchanged => Some((1, START)),
        Effect::Notified(info) => Some((2, info)),
        Effect::Deleted => None,
    };
    let mut problems = Vec::new();
    let id_state = stored(s, ID).await;
    if id_state != expected.map(|(seq, info)| (seq, info.to_owned())) {
        problems.push(format!("{ID} holds {id_state:?}, expected {expected:?}"));
    }
    let other = stored(s, OTHER).await;
    if other != Some((1, START.to_owned())) {
        problems.push(format!("{OTHER} holds {other:?}: a smuggled request ran"));
    }
    if let Some(never) = stored(s, NEVER).await {
        problems.push(format!("{NEVER} was created: {never:?}"));
    }
    let ids = metric(s, "callhome_ids").await;
    let expected_ids = if expected.is_some() { 2 } else { 1 };
    if ids != Some(expected_ids) {
        problems.push(format!("callhome_ids is {ids:?}, expected {expected_ids}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `id`'s seq and info (`None`: no such id), read with a status call and a poll.
async fn stored(s: &TestServer, id: &str) -> Option<(u64, String)> {
    let status = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    if status.status() == 404 {
        return None;
    }
    let seq = status.json::<Value>().await.unwrap()["seq"]
        .as_u64()
        .unwrap();
    if seq == 0 {
        return Some((0, String::new())); // made by a vector, never notified
    }
    // A poll from 0 answers at once.
    let poll: Value = s.poll(id, 0).await.json().await.unwrap();
    assert_eq!(poll["seq"], seq, "{id}: {poll}");
    Some((seq, poll["info"].as_str().unwrap_or_default().to_owned()))
}

/// One unlabelled sample of the server's `/metrics`.
async fn metric(s: &TestServer, name: &str) -> Option<u64> {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// CallHome's side of nginx's pooled connections: on each, no more answers than nginx sent
/// requests (an extra one is the answer to a smuggled request, even if nginx dropped it),
/// and no metrics scrape answered.
fn check_upstream(tap: &Tap) -> Result<(), String> {
    for (n, connection) in tap.recorded().iter().enumerate() {
        let requests = requests_in(&connection.requests)?;
        let mut rest = connection.answers.as_slice();
        let mut answers = 0;
        while !rest.is_empty() {
            let to_head = requests.get(answers).is_some_and(|method| method == "HEAD");
            // Whatever is incomplete at the end is a stream still being written.
            let Ok(Some((_, used))) = parse_answer(rest, to_head, true) else {
                break;
            };
            answers += 1;
            rest = &rest[used..];
        }
        if answers > requests.len() {
            return Err(format!(
                "upstream connection {n}: CallHome wrote {answers} answers to {} requests \
                 from nginx ({requests:?})",
                requests.len()
            ));
        }
        if String::from_utf8_lossy(&connection.answers).contains("# HELP callhome_") {
            return Err(format!(
                "upstream connection {n}: CallHome answered a metrics scrape"
            ));
        }
    }
    Ok(())
}

/// The methods of the requests nginx sent on one upstream connection. nginx's requests are
/// its own, well framed by `Content-Length` or chunks, so a plain reading is the right one.
fn requests_in(mut bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut methods = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = request.parse(bytes) else {
            break; // a request still being sent
        };
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let body_len = if header("transfer-encoding").is_some() {
            match decode_chunked(&bytes[head_len..])? {
                Some((_, used)) => used,
                None => break,
            }
        } else {
            header("content-length").map_or(Ok(0), |v| {
                v.parse::<usize>()
                    .map_err(|e| format!("nginx sent content-length {v:?}: {e}"))
            })?
        };
        methods.push(request.method.unwrap_or_default().to_owned());
        bytes = &bytes[(head_len + body_len).min(bytes.len())..];
    }
    Ok(methods)
}

/// A raw client connection with a buffer of what it has read.
struct Client {
    read: OwnedReadHalf,
    write: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
    eof: bool,
    deadline: Instant,
}

impl Client {
    /// Connects to `addr`, from `from` if given (another loopback address: another client
    /// to nginx).
    async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> Self {
        let stream = match from {
            None => TcpStream::connect(addr).await.unwrap(),
            Some(ip) => {
                let socket = TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(ip, 0)).unwrap();
                socket.connect(addr).await.unwrap()
            }
        };
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        Self {
            read,
            write: Some(write),
            buf: Vec::new(),
            eof: false,
            deadline: Instant::now() + PATIENCE,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let write = self.write.as_mut().ok_or("sending after a half-close")?;
        // A server that refused and closed may reset the rest; what it answered still counts.
        let _ = write.write_all(bytes).await;
        Ok(())
    }

    async fn half_close(&mut self) {
        if let Some(mut write) = self.write.take() {
            write.shutdown().await.unwrap();
            // Dropping the half would shut it down too; keep it for the test's length.
            std::mem::forget(write);
        }
    }

    /// Reads more, or notes the end; fails when nothing comes before the deadline.
    async fn fill(&mut self, deadline: Instant) -> Result<(), String> {
        self.buf.reserve(16 * 1024);
        match tokio::time::timeout_at(deadline, self.read.read_buf(&mut self.buf)).await {
            Err(_) => Err(format!(
                "nothing more within the time allowed; unparsed: {:?}",
                String::from_utf8_lossy(&self.buf)
            )),
            // A reset after the server closed counts as the end, like a clean close.
            Ok(Ok(0) | Err(_)) => {
                self.eof = true;
                Ok(())
            }
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The next answer; `None` when the connection ended cleanly before one began.
    async fn answer(&mut self, to_head: bool) -> Result<Option<Answered>, String> {
        loop {
            match parse_answer(&self.buf, to_head, self.eof)? {
                Some((answer, used)) => {
                    self.buf.drain(..used);
                    return Ok(Some(answer));
                }
                None if self.eof => return Ok(None),
                None => self.fill(self.deadline).await?,
            }
        }
    }

    /// Succeeds when the server closes the connection with nothing more sent.
    async fn closed(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CLOSE_PATIENCE;
        loop {
            if !self.buf.is_empty() {
                return Err(format!(
                    "more after the expected answers: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            if self.eof {
                return Ok(());
            }
            self.fill(deadline)
                .await
                .map_err(|_| "still open after the answers: expected closed".to_owned())?;
        }
    }
}

/// One response as read off the wire.
struct Answered {
    status: u16,
    /// Names lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answered {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "  {name}: {value}")?;
        }
        let body = String::from_utf8_lossy(&self.body);
        let cut = body.char_indices().nth(300).map_or(body.len(), |(i, _)| i);
        write!(f, "  {}", &body[..cut])
    }
}

/// Parses the response at the front of `buf`: `None` while incomplete, else the response and
/// the bytes it took. Framing as RFC 9112 §6.3 has it for a client: no body for a `HEAD`,
/// 1xx, 204 or 304; then chunked, then `Content-Length`, then until the close.
fn parse_answer(buf: &[u8], to_head: bool, eof: bool) -> Result<Option<(Answered, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof && !buf.is_empty() => {
            return Err(format!(
                "closed in the middle of an answer: {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "not an HTTP answer ({e}): {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(300)])
            ));
        }
    };
    let status = response.code.unwrap_or_default();
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let rest = &buf[head_len..];
    let (body, used) = if to_head || (100..200).contains(&status) || status == 204 || status == 304
    {
        (Vec::new(), 0)
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match decode_chunked(rest)? {
            Some(decoded) => decoded,
            None if eof => return Err("closed in the middle of a chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|e| format!("content-length {length:?}: {e}"))?;
        if rest.len() < length {
            return if eof {
                Err("closed in the middle of a body".into())
            } else {
                Ok(None)
            };
        }
        (rest[..length].to_vec(), length)
    } else if eof {
        (rest.to_vec(), rest.len())
    } else {
        return Ok(None); // delimited by the close
    };
    Ok(Some((
        Answered {
            status,
            headers,
            body,
        },
        head_len + used,
    )))
}

/// Decodes a chunked body at the front of `buf`: the data and the bytes it took (trailers
/// included), or `None` while incomplete.
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let line_end = |from: usize| {
        buf.get(from..)
            .and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"))
            .map(|i| from + i)
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = line_end(at) else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[at..end]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|e| format!("chunk size {line:?}: {e}"))?;
        at = end + 2;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let Some(end) = line_end(at) else {
                    return Ok(None);
                };
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

// Tests outside the table: what needs more than one connection or a long wait.

/// A held `HEAD /v1/poll` watches its socket as a held GET does: a client that leaves gives
/// its waiting place back at once, not at `poll_timeout` (finding 5).
#[tokio::test]
async fn a_held_head_poll_gives_its_place_back_when_its_client_leaves() {
    for way in [Way::Lean, Way::Hyper] {
        let s = prepared_server(|c| {
            table_config(c, way);
            // Far longer than `wait_for_waiters` waits: only the close can free the place.
            c.limits.poll_timeout = Duration::from_secs(60);
        })
        .await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(
            format!("HEAD /v1/poll?id={ID}&since=1 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        s.wait_for_waiters(ID, 1).await;
        drop(c);
        s.wait_for_waiters(ID, 0).await;
    }
}

/// A client that sends a poll whose answer is ready and half-closes at once (`printf | nc`)
/// gets its answer, every time (finding 6: it lost the race with the EOF about half the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_clients_get_their_answer() {
    // The lean path only: hyper takes a read EOF for a client gone (`half_close(false)`, its
    // default), which is what frees a held request's place when its client leaves
    // (`a_held_head_poll_gives_its_place_back_when_its_client_leaves`); with `half_close(true)`
    // it would answer this client but hold a departed one's place until its poll timed out.
    // The lean path does both: a ready answer wins over the EOF, a waiting one does not.
    for way in [Way::Lean] {
        let s = prepared_server(|c| table_config(c, way)).await;
        for attempt in 0..50 {
            let mut c = Client::connect(s.addr, None).await;
            c.send(format!("GET /v1/poll?id={ID}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            c.half_close().await;
            let answer = c.answer(false).await;
            let answered = matches!(&answer, Ok(Some(a)) if a.status == 200);
            assert!(
                answered,
                "{way:?}, attempt {attempt}: no answer ({:?})",
                answer.err()
            );
        }
    }
}

/// Finding 1 through the shipped nginx, with two tenants on nginx's pooled connections:
/// tenant A (app one) smuggles a notify on its own id with an overlong `Content-Length` in a
/// poll's body, then a held poll, then a metrics scrape; tenant B (app two) notifies its own
/// id, and an unrelated browser loads `callhome.js`. Each gets exactly its own answer: B's
/// notify ran on B's id, A's id holds none of B's bytes, the browser gets the script, and
/// CallHome never answered a scrape nginx would deny (nginx allows /metrics from 127.0.0.1
/// only, so A and the others connect from 127.0.0.2 and up).
#[tokio::test]
async fn smuggling_through_nginx_leaves_every_client_its_own_answer() {
    const B_ID: &str = "framing-tenant-two-0004";
    const B_INFO: &str = "tenant two's news";
    let s = prepared_server(|c| table_config(c, Way::Nginx)).await;
    let r = s.create(KEY_TWO, Some(json!({ "id": B_ID }))).await;
    assert_eq!(r.status(), 201);
    let tap = Tap::start(s.addr).await;
    let Some(nginx) = Nginx::start(tap.addr).await else {
        return;
    };
    let (a_ip, b_ip, browser_ip) = (
        IpAddr::from([127, 0, 0, 2]),
        IpAddr::from([127, 0, 0, 3]),
        IpAddr::from([127, 0, 0, 4]),
    );

    let smuggled = [
        // (a) a notify on A's own id whose body would swallow the next forwarded request
        concat!(notify_head!(), "Content-Length: 600\r\n\r\nswallowed:"),
        // (b) a held poll, whose answer would go to the next forwarded request
        "GET /v1/poll?id={id}&since=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        // (c) the scrape nginx denies A
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for (round, inner) in (1u64..).zip(smuggled) {
        let mut a = Client::connect(nginx.addr, Some(a_ip)).await;
        let outer = format!("{}{inner}", poll_with_body!());
        a.send(&expand(&outer)).await.unwrap();
        let answer = a.answer(false).await.unwrap().expect("A gets an answer");
        assert_eq!(
            serde_json::from_slice::<Value>(&answer.body).ok(),
            Some(json!({ "seq": 1, "info": START })),
            "A's poll got someone else's answer:\n{answer}"
        );

        // B's notify, and a browser's script, on whatever upstream connection nginx picks.
        let b = Client::connect(nginx.addr, Some(b_ip));
        let mut b = b.await;
        let body = B_INFO;
        b.send(
            format!(
                "POST /v1/ids/{B_ID}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_TWO}\r\n\
                 Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let answer = b.answer(false).await.unwrap().expect("B gets an answer");
        let notified = serde_json::from_slice::<Value>(&answer.body).unwrap_or_default();
        assert!(
            answer.status == 200 && notified["seq"] == round,
            "B's notify got someone else's answer:\n{answer}"
        );

        let mut browser = Client::connect(nginx.addr, Some(browser_ip)).await;
        browser
            .send(b"GET /callhome.js HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let script = browser.answer(false).await.unwrap().expect("the script");
        assert_eq!(script.status, 200, "{script}");
        assert!(
            script
                .header("content-type")
                .is_some_and(|t| t.contains("javascript")),
            "the browser got something other than the script:\n{script}"
        );
    }

    // B's notifies all ran on B's id, with B's info.
    let b_status: Value = s
        .client
        .get(s.url(&format!("/v1/ids/{B_ID}")))
        .bearer_auth(KEY_TWO)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b_status["seq"], 3, "{b_status}");
    let b_poll: Value = s.poll(B_ID, 0).await.json().await.unwrap();
    assert_eq!(b_poll["info"], B_INFO);
    // A's id holds none of B's bytes: it was never notified at all.
    let a = stored(&s, ID).await.unwrap();
    assert!(
        !a.1.contains("Bearer") && !a.1.contains(KEY_TWO) && !a.1.contains(B_INFO),
        "A's id holds B's request: {a:?}"
    );
    assert_eq!(a, (1, START.to_owned()), "A's smuggled notify ran");
    check_upstream(&tap).unwrap();
}
