//! Request heads: the pure part of the lean HTTP/1.1 path. Bytes in, a [`Head`] (or the
//! decision that the bytes are not one) out; no socket, no state, so it can be tested and
//! fuzzed on its own.
//!
//! The rules are hyper 1.12's (`proto/h1/role.rs`, `Server::parse`), because the same
//! connection may be read by hyper after a hand-off and the proxy in front must never see one
//! request where we see two. Where hyper guesses, this module refuses instead: the request is
//! answered `400` (or `417`, `431`, `501`, see [`Refusal`]) and the connection closed. [`check_headers`] is the
//! one place those header rules live; the router runs it too (`routes::guard_framing`), so a
//! request hyper parsed is held to the same rules as one parsed here.

use axum::http::{HeaderName, HeaderValue, Method, Version};

/// Largest request head, in bytes; a longer one is refused with `431`. hyper is configured
/// with the same bound (`handoff`), so it holds on both paths.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in a head; more is refused with `431`, as hyper does.
pub const MAX_HEADERS: usize = 48;

/// A request head, copied out of the read buffer.
#[derive(Debug)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The request target as sent (origin form: starts with `/`).
    pub target: String,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Every header line, in order.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Bytes of the head, up to and including its blank line.
    pub head_len: usize,
    /// How the body after the head is framed.
    pub framing: Framing,
}

/// How a request's body is delimited and whether its connection may be reused: what hyper
/// calls the decoder and `keep_alive`, decided once per head by [`check_headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The body after the head.
    pub body: BodyLength,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before sending its body.
    pub expect_continue: bool,
}

/// The body after a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// Exactly this many bytes (0 when the head says nothing).
    Length(u64),
    /// `Transfer-Encoding: chunked`, decoded by hyper.
    Chunked,
}

/// Why a head is refused (`ApiError` turns each into its status and code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Malformed or ambiguous: `400`.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Longer than [`MAX_HEAD`] or more than [`MAX_HEADERS`] lines: `431`.
    #[error("the request head is larger than {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    HeadTooLarge,
    /// An `Expect` other than `100-continue`: `417`.
    #[error("the only expectation supported is 100-continue")]
    Expectation,
    /// A transfer coding other than `chunked` alone: `501`.
    #[error("the only transfer coding supported is chunked")]
    TransferCoding,
}

impl Refusal {
    const fn bad(reason: &'static str) -> Self {
        Self::Malformed(reason)
    }
}

/// What the bytes at the front of a read buffer are.
#[derive(Debug)]
pub enum Parsed {
    /// A whole head whose request this path serves (its body, if any, follows).
    Complete(Head),
    /// Not a whole head yet.
    Partial,
    /// A whole head whose body is chunked: hyper reads it (and the head again).
    Chunked,
    /// The HTTP/2 connection preface; served by hyper when `http2_cleartext` is on.
    Http2,
    /// A head that is refused; the connection is closed after the answer.
    Refuse(Refusal),
}

/// The HTTP/2 connection preface, as far as it looks like an HTTP/1 request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Parses the head at the front of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.starts_with(H2_PREFACE) {
        return Parsed::Http2;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Parsed::Refuse(TOO_LARGE),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parsed::Refuse(TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refuse(TOO_LARGE),
        Err(_) => return Parsed::Refuse(Refusal::bad("malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::Refuse(Refusal::bad("malformed request line"));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Refuse(Refusal::bad("malformed method"));
    };
    // Origin form only: absolute form is for proxies, `*` for OPTIONS, authority form for
    // CONNECT, and none of them is a CallHome URL.
    if !target.starts_with('/') || target.parse::<axum::http::Uri>().is_err() {
        return Parsed::Refuse(Refusal::bad("malformed request target"));
    }
    let version = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let lines = request.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let framing = match check_headers(version, lines) {
        Ok(framing) => framing,
        Err(refusal) => return Parsed::Refuse(refusal),
    };
    if framing.body == BodyLength::Chunked {
        return Parsed::Chunked;
    }
    let mut copied = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Refuse(Refusal::bad("malformed header"));
        };
        copied.push((name, value));
    }
    // A fragment is not sent to a server; hyper's `Uri` drops one that is, and so do we.
    let target = target.split_once('#').map_or(target, |(before, _)| before);
    Parsed::Complete(Head {
        method,
        target: target.to_owned(),
        version,
        headers: copied,
        head_len,
        framing,
    })
}

const TOO_LARGE: Refusal = Refusal::HeadTooLarge;

/// Decides how a request's body is framed and whether its connection may be reused, from its
/// header lines (name, value) in order, or refuses it. hyper's rules, and where hyper would
/// pick one reading of an ambiguous head, a refusal:
/// - `Content-Length` is ASCII digits only (no sign, space or list); a second one is refused
///   even when equal (nginx refuses it too), as is one beside `Transfer-Encoding`.
/// - `Transfer-Encoding` must be exactly `chunked` (one line, one coding): `gzip, chunked` is
///   a coding we do not implement (`501`), anything not ending in `chunked` cannot be framed
///   (`400`), and HTTP/1.0 has none.
/// - `Connection: close` on any line wins over `keep-alive` on another.
/// - `Expect` may only be `100-continue` (`417` otherwise).
/// - HTTP/1.1 needs exactly one `Host`; HTTP/1.0 at most one.
pub fn check_headers<'a>(
    version: Version,
    lines: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Framing, Refusal> {
    let http11 = version == Version::HTTP_11;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut hosts = 0u32;
    for (name, value) in lines {
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(Refusal::bad("more than one Content-Length"));
            }
            length = Some(digits(value).ok_or(Refusal::bad("malformed Content-Length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !http11 {
                return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if chunked {
                return Err(Refusal::bad("more than one Transfer-Encoding"));
            }
            let mut codings = value.split(|&b| b == b',').map(<[u8]>::trim_ascii).rev();
            if !codings
                .next()
                .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"))
            {
                return Err(Refusal::bad("Transfer-Encoding does not end in chunked"));
            }
            if codings.next().is_some() {
                return Err(Refusal::TransferCoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(value, b"close");
            keep_alive_token |= has_token(value, b"keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(Refusal::Expectation);
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if chunked && length.is_some() {
        return Err(Refusal::bad("both Content-Length and Transfer-Encoding"));
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Refusal::bad("a request needs exactly one Host"));
    }
    Ok(Framing {
        body: if chunked {
            BodyLength::Chunked
        } else {
            BodyLength::Length(length.unwrap_or(0))
        },
        keep_alive: !close && (http11 || keep_alive_token),
        expect_continue,
    })
}

/// A decimal number of ASCII digits only, as hyper's `from_digits` reads `Content-Length`
/// (`str::parse` would take a sign).
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// True when a comma-separated header value holds `token` (ASCII case-insensitive). A value
/// with bytes other than visible ASCII holds no token, as hyper reads it (`to_str` fails).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    let visible = value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    visible
        && value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The path of a request target.
pub fn path(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// The query of a request target, if it has one.
pub fn query(target: &str) -> Option<&str> {
    target.split_once('?').map(|(_, query)| query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> Head {
        match parse(raw.as_bytes()) {
            Parsed::Complete(head) => head,
            other => panic!("{other:?}: {raw:?}"),
        }
    }

    fn refused(raw: &str) -> Refusal {
        match parse(raw.as_bytes()) {
            Parsed::Refuse(refusal) => refusal,
            other => panic!("not refused ({other:?}): {raw:?}"),
        }
    }

    #[test]
    fn parses_a_poll() {
        let head = complete("GET /v1/poll?id=abc&since=2 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.method, Method::GET);
        assert_eq!(path(&head.target), "/v1/poll");
        assert_eq!(query(&head.target), Some("id=abc&since=2"));
        assert!(head.framing.keep_alive);
        assert_eq!(head.framing.body, BodyLength::Length(0));
    }

    #[test]
    fn connection_tokens_decide_keep_alive_and_close_wins() {
        let keeps = |raw: &str| complete(raw).framing.keep_alive;
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!keeps(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(matches!(
            parse(b"GET /v1/poll HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
    }

    #[test]
    fn chunked_bodies_and_http2_go_to_hyper() {
        assert!(matches!(
            parse(b"POST /v1/ids HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Chunked
        ));
        assert!(matches!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Parsed::Http2
        ));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\n",
        ] {
            // The h2 preface alone is recognised before parsing; the rest must be refused.
            if raw.starts_with("PRI") {
                continue;
            }
            assert!(matches!(refused(raw), Refusal::Malformed(_)), "{raw:?}");
        }
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Refusal::TransferCoding
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue-please\r\n\r\n"),
            Refusal::Expectation
        );
    }

    #[test]
    fn heads_past_the_limit_are_refused_with_431() {
        let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}", "a".repeat(MAX_HEAD));
        assert_eq!(refused(&long), Refusal::HeadTooLarge);
        let many = "X-A: 1\r\n".repeat(MAX_HEADERS + 1);
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(refused(&raw), Refusal::HeadTooLarge);
    }

    #[test]
    fn bodies_are_measured_and_expectations_noted() {
        let head = complete(
            "POST /v1/ids HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{\"id\":\"x\"}",
        );
        assert_eq!(head.framing.body, BodyLength::Length(12));
        let head = complete(
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(head.framing.expect_continue);
    }

    #[test]
    fn a_connection_value_with_obs_text_holds_no_token_as_in_hyper() {
        let head = complete("GET / HTTP/1.1\r\nHost: x\r\nConnection: \u{e9} close\r\n\r\n");
        assert!(head.framing.keep_alive);
    }

    #[test]
    fn a_fragment_is_dropped_as_hyper_drops_it() {
        let head = complete("GET /v1/poll?id=x&since=0#top HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.target, "/v1/poll?id=x&since=0");
    }

    #[test]
    fn bare_lf_line_ends_are_read_as_hyper_reads_them() {
        let head = complete("GET /healthz HTTP/1.1\nHost: x\n\n");
        assert_eq!(head.target, "/healthz");
    }
}
