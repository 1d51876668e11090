//! Just enough HTTP/1.1 client for this tool: writing requests, parsing answers.
//!
//! Hand-written over `httparse` rather than a client library because a worker holds ~10,000
//! idle connections and each must cost one socket and a small buffer, and because the
//! receive time of an answer should be taken the moment its bytes arrive. Nothing here does
//! I/O: callers own the sockets and feed the bytes in.

use std::fmt::Write as _;

/// Headers an answer may have before it is refused; CallHome and Nchan send about ten.
const MAX_HEADERS: usize = 32;

/// An answer that does not follow HTTP/1.1 well enough to use.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("malformed response head: {0}")]
    Head(#[from] httparse::Error),
    #[error("malformed chunked body")]
    Chunked,
    #[error("invalid Content-Length")]
    ContentLength,
}

/// A whole request: head and body.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = String::with_capacity(96 + path.len());
    head.push_str(method);
    head.push(' ');
    head.push_str(path);
    head.push_str(" HTTP/1.1\r\nHost: ");
    head.push_str(host);
    head.push_str("\r\n");
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304, 1xx).
    Empty,
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// The parts of an answer's head this tool looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes the head took, including the blank line.
    pub len: usize,
    pub framing: Framing,
    /// The server will close the connection after this answer.
    pub close: bool,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
    /// Nchan's long-poll cursor: sent back as `If-None-Match` and `If-Modified-Since`.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Parses the head at the front of `buf`; `None` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = response.parse(buf)? else {
        return Ok(None);
    };
    let status = response.code.unwrap_or(0);
    let mut head = Head {
        status,
        len,
        framing: Framing::UntilClose,
        close: response.version == Some(0),
        event_stream: false,
        etag: None,
        last_modified: None,
    };
    let mut chunked = false;
    let mut length = None;
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| HttpError::ContentLength)?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                head.close = true;
            } else if value.contains("keep-alive") {
                head.close = false;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            head.event_stream = value.to_ascii_lowercase().starts_with("text/event-stream");
        } else if name.eq_ignore_ascii_case("etag") {
            head.etag = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("last-modified") {
            head.last_modified = Some(value.to_owned());
        }
    }
    head.framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if head.framing == Framing::UntilClose {
        head.close = true;
    }
    Ok(Some(head))
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

/// Parses a whole answer at the front of `buf` and says how many bytes it used; `None` while
/// it is incomplete. An answer delimited by the connection closing is never complete here:
/// see [`finish_at_close`].
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, HttpError> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let rest = &buf[head.len..];
    let (body, used) = match head.framing {
        Framing::Empty => (Vec::new(), 0),
        Framing::Length(n) => {
            if rest.len() < n {
                return Ok(None);
            }
            (rest[..n].to_vec(), n)
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            let mut body = Vec::new();
            let used = decoder.decode(rest, &mut body)?;
            if !decoder.is_done() {
                return Ok(None);
            }
            (body, used)
        }
        Framing::UntilClose => return Ok(None),
    };
    let used = head.len + used;
    Ok(Some((Response { head, body }, used)))
}

/// The answer in `buf` once the server has closed the connection: complete answers as
/// [`parse_response`], plus one whose body runs until the close.
pub fn finish_at_close(buf: &[u8]) -> Result<Option<Response>, HttpError> {
    if let Some((response, _)) = parse_response(buf)? {
        return Ok(Some(response));
    }
    match parse_head(buf)? {
        Some(head) if head.framing == Framing::UntilClose => {
            let body = buf[head.len..].to_vec();
            Ok(Some(Response { head, body }))
        }
        _ => Ok(None),
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the end of the size line.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// Trailer lines after the last chunk; `line` bytes into the current one.
    Trailer {
        line: usize,
    },
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally, for whole answers and for event
/// streams alike. Lenient about bare LF line ends.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: Chunk::Size { size: 0, digits: 0 },
        }
    }
}

impl ChunkedDecoder {
    /// The last chunk and the trailer have been read.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Appends the data in `input` to `out`; returns the bytes of `input` used, which is all
    /// of them unless the body ended within `input`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut at = 0;
        while at < input.len() {
            if let Chunk::Data { left } = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - at);
                out.extend_from_slice(&input[at..at + take]);
                at += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left }
                };
                continue;
            }
            let byte = input[at];
            at += 1;
            self.state = match (self.state, byte) {
                (Chunk::Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err(HttpError::Chunked);
                    }
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    Chunk::Size {
                        size: size * 16 + digit,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err(HttpError::Chunked),
                (Chunk::Size { size, .. }, b';' | b' ' | b'\t')
                | (Chunk::Extension { size }, _)
                    if byte != b'\n' =>
                {
                    Chunk::Extension { size }
                }
                (Chunk::Size { size, .. }, b'\r') => Chunk::SizeLf { size },
                (
                    Chunk::Size { size, .. } | Chunk::Extension { size } | Chunk::SizeLf { size },
                    b'\n',
                ) => {
                    if size == 0 {
                        Chunk::Trailer { line: 0 }
                    } else {
                        Chunk::Data { left: size }
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
                (Chunk::Trailer { line: 0 }, b'\n') => {
                    self.state = Chunk::Done;
                    return Ok(at);
                }
                (Chunk::Trailer { .. }, b'\n') => Chunk::Trailer { line: 0 },
                (Chunk::Trailer { line }, b'\r') => Chunk::Trailer { line },
                (Chunk::Trailer { line }, _) => Chunk::Trailer { line: line + 1 },
                (Chunk::Done, _) => return Ok(at - 1),
                _ => return Err(HttpError::Chunked),
            };
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_host_and_length() {
        let r = request(
            "POST",
            "/v1/ids/x/notify",
            "127.0.0.1:8080",
            &[("Content-Type", "text/plain")],
            b"hi",
        );
        assert_eq!(
            r,
            b"POST /v1/ids/x/notify HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
              Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
        let r = request("GET", "/sub/x", "h", &[], b"");
        assert_eq!(r, b"GET /sub/x HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn a_200_with_content_length_arrives_in_pieces() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: 27\r\nDate: x\r\n\r\n{\"seq\":1,\"info\":\"0:1.....\"}";
        for cut in 0..full.len() {
            assert!(
                parse_response(&full[..cut]).expect("well formed").is_none(),
                "cut {cut}"
            );
        }
        let mut with_next = full.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 204");
        let (response, used) = parse_response(&with_next).expect("ok").expect("complete");
        assert_eq!(used, full.len());
        assert_eq!(response.head.status, 200);
        assert_eq!(response.head.framing, Framing::Length(27));
        assert!(!response.head.close);
        assert_eq!(response.body, br#"{"seq":1,"info":"0:1....."}"#);
    }

    #[test]
    fn a_204_has_no_body_even_with_a_length() {
        let buf = b"HTTP/1.1 204 No Content\r\ncache-control: no-store\r\n\r\n";
        let (response, used) = parse_response(buf).expect("ok").expect("complete");
        assert_eq!((response.head.status, used), (204, buf.len()));
        assert!(response.body.is_empty());
    }

    #[test]
    fn nchan_cursor_headers_and_close_are_read() {
        let buf = b"HTTP/1.1 200 OK\r\nLast-Modified: Fri, 28 Nov 2025 07:00:00 GMT\r\n\
                    Etag: 0\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi";
        let (response, _) = parse_response(buf).expect("ok").expect("complete");
        assert_eq!(response.head.etag.as_deref(), Some("0"));
        assert_eq!(
            response.head.last_modified.as_deref(),
            Some("Fri, 28 Nov 2025 07:00:00 GMT")
        );
        assert!(response.head.close);
    }

    #[test]
    fn a_chunked_answer_is_decoded() {
        let buf = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\nrest";
        let (response, used) = parse_response(buf).expect("ok").expect("complete");
        assert_eq!(response.body, b"hello, world");
        assert_eq!(&buf[used..], b"rest");
        assert!(parse_response(&buf[..buf.len() - 7]).expect("ok").is_none());
    }

    #[test]
    fn an_event_stream_is_decoded_across_reads() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     transfer-encoding: chunked\r\n\r\n";
        let parsed = parse_head(head).expect("ok").expect("complete");
        assert!(parsed.event_stream);
        assert_eq!(parsed.framing, Framing::Chunked);
        let body = b"f\r\nevent: ready\nda\r\n7\r\nta: {}\n\r\n22\r\n\
                     id: 1\ndata: {\"seq\":1,\"info\":\"x\"}\n\n\r\n";
        // Every split point gives the same decoded bytes.
        for cut in 0..body.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut out = Vec::new();
            assert_eq!(decoder.decode(&body[..cut], &mut out).expect("ok"), cut);
            decoder.decode(&body[cut..], &mut out).expect("ok");
            assert_eq!(
                out, b"event: ready\ndata: {}\nid: 1\ndata: {\"seq\":1,\"info\":\"x\"}\n\n",
                "cut {cut}"
            );
            assert!(!decoder.is_done());
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        let mut decoder = ChunkedDecoder::default();
        assert!(decoder.decode(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn a_body_until_close_is_taken_at_the_close() {
        let buf = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert!(parse_response(buf).expect("ok").is_none());
        let response = finish_at_close(buf).expect("ok").expect("complete");
        assert_eq!(response.body, b"all of it");
        assert!(response.head.close);
    }
}
