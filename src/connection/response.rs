//! Response heads for the lean path, and the one decision of how a response's body is framed:
//! hyper's `can_have_body` and `can_have_content_length` (`proto/h1/role.rs`) for the
//! responses CallHome sends. Pure: bytes out, no socket.

use axum::http::response::Parts;
use axum::http::{StatusCode, header};

use crate::request_id::{RequestId, X_REQUEST_ID};

/// What a response answers, as far as its framing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answering {
    /// A `HEAD` request: the head only.
    pub head: bool,
    /// An HTTP/1.0 request: no chunked encoding, and keep-alive only when asked for.
    pub http10: bool,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
}

/// How the body after a response head is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: `HEAD`, `1xx`, `204`, `304`.
    None,
    /// Exactly this many bytes, announced by `Content-Length`.
    Length(u64),
    /// Chunks as they come, ended by a zero-length chunk.
    Chunked,
    /// Bytes as they come, ended by closing the connection (HTTP/1.0 streams).
    UntilClose,
}

/// A response head to write, and how its body follows.
#[derive(Debug)]
pub struct Encoded {
    /// The status line and header lines, blank line included.
    pub head: Vec<u8>,
    /// How the body is sent after it.
    pub body: BodyFraming,
    /// The connection may serve another request afterwards.
    pub keep_alive: bool,
}

/// Decides the framing of a response with `status` whose body is `exact` bytes (`None`: a
/// stream) and whose handler `declared` a `Content-Length` (axum's answer to `HEAD` declares
/// GET's length and carries no body). Returns the `Content-Length` to announce, if any, how
/// the body is sent, and whether the connection stays open.
pub fn framing(
    answering: Answering,
    status: StatusCode,
    exact: Option<u64>,
    declared: Option<u64>,
) -> (Option<u64>, BodyFraming, bool) {
    let keep_alive = answering.keep_alive;
    // RFC 9110 §15.2 and §15.3.5: no content, and no Content-Length either.
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return (None, BodyFraming::None, keep_alive);
    }
    // §15.4.5 (304) and §9.3.2 (HEAD): the head a GET would get, without its body. The
    // length is GET's when it is known, or none at all; never a made-up 0.
    if status == StatusCode::NOT_MODIFIED || answering.head {
        return (declared.or(exact), BodyFraming::None, keep_alive);
    }
    match exact {
        Some(len) => (Some(len), BodyFraming::Length(len), keep_alive),
        None if answering.http10 => (None, BodyFraming::UntilClose, false),
        None => (None, BodyFraming::Chunked, keep_alive),
    }
}

/// Encodes the head of a response: status line, the handler's headers (less the framing
/// headers, which are decided here), `X-Request-Id`, `Date`, `Connection` and the framing.
pub fn encode(
    parts: &Parts,
    answering: Answering,
    exact: Option<u64>,
    request_id: &RequestId,
) -> Encoded {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (length, body, keep_alive) = framing(answering, parts.status, exact, declared);
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
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
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
    } else if answering.http10 {
        push_header(&mut out, "connection", b"keep-alive");
    }
    if let Some(len) = length {
        push_header(
            &mut out,
            "content-length",
            itoa::Buffer::new().format(len).as_bytes(),
        );
    }
    if body == BodyFraming::Chunked {
        push_header(&mut out, "transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
    Encoded {
        head: out,
        body,
        keep_alive,
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Answering = Answering {
        head: false,
        http10: false,
        keep_alive: true,
    };

    #[test]
    fn no_content_has_no_length() {
        for status in [StatusCode::NO_CONTENT, StatusCode::CONTINUE] {
            assert_eq!(
                framing(GET, status, Some(0), None),
                (None, BodyFraming::None, true)
            );
        }
    }

    #[test]
    fn head_gets_gets_length_or_none_and_no_body() {
        let head = Answering { head: true, ..GET };
        // axum's HEAD answer: GET's length declared, body empty.
        assert_eq!(
            framing(head, StatusCode::OK, Some(0), Some(2476)),
            (Some(2476), BodyFraming::None, true)
        );
        // The lean path's own HEAD (a held poll): the body it would have sent.
        assert_eq!(
            framing(head, StatusCode::OK, Some(22), None),
            (Some(22), BodyFraming::None, true)
        );
        // A stream: no length at all.
        assert_eq!(
            framing(head, StatusCode::OK, None, None),
            (None, BodyFraming::None, true)
        );
    }

    #[test]
    fn streams_are_chunked_except_for_http10() {
        assert_eq!(
            framing(GET, StatusCode::OK, None, None),
            (None, BodyFraming::Chunked, true)
        );
        let old = Answering {
            http10: true,
            ..GET
        };
        assert_eq!(
            framing(old, StatusCode::OK, None, None),
            (None, BodyFraming::UntilClose, false)
        );
        assert_eq!(
            framing(old, StatusCode::OK, Some(3), None),
            (Some(3), BodyFraming::Length(3), true)
        );
    }

    #[test]
    fn http10_keep_alive_is_answered_in_kind() {
        let (parts, ()) = axum::http::Response::new(()).into_parts();
        let old = Answering {
            http10: true,
            ..GET
        };
        let encoded = encode(&parts, old, Some(0), &RequestId::generate());
        let text = String::from_utf8(encoded.head).unwrap();
        assert!(text.contains("\r\nconnection: keep-alive\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 0\r\n"), "{text}");
    }
}
