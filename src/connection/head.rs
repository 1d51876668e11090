//! Request heads: the pure part of the lean HTTP/1.1 path. Bytes in, a [`Head`] (or the
//! decision that the bytes are not one) out; no socket, no state, so it can be tested and
//! fuzzed on its own.

use axum::http::{HeaderName, HeaderValue, Method, Version};

/// Headers parsed in place; a request with more goes to hyper.
pub const MAX_HEADERS: usize = 48;

/// A request head, copied out of the read buffer.
pub struct Head {
    pub method: Method,
    pub target: String,
    pub version: Version,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub len: usize,
    pub body_len: usize,
    pub keep_alive: bool,
}

/// What the bytes at the front of a read buffer are.
pub enum Parsed {
    /// A whole head this module serves.
    Complete(Head),
    /// Not a whole head yet.
    Partial,
    /// Something for hyper.
    HandOff,
}

/// Parses the head at the front of `buf`. Anything this module does not serve itself is
/// `HandOff`: hyper knows what to do with it, including how to refuse it.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::HandOff;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::HandOff;
    };
    if !target.starts_with('/') {
        return Parsed::HandOff;
    }
    let mut keep_alive = version == 1;
    let mut body_len = 0;
    let mut copied = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::HandOff;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return Parsed::HandOff;
            };
            body_len = n;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if value.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::HandOff;
        };
        copied.push((name, value));
    }
    Parsed::Complete(Head {
        method,
        target: target.to_owned(),
        version: if version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        headers: copied,
        len,
        body_len,
        keep_alive,
    })
}

pub fn path(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

pub fn query(target: &str) -> Option<&str> {
    target.split_once('?').map(|(_, query)| query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> Head {
        match parse(raw.as_bytes()) {
            Parsed::Complete(head) => head,
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::HandOff => panic!("handed off: {raw:?}"),
        }
    }

    #[test]
    fn parses_a_poll() {
        let head = complete("GET /v1/poll?id=abc&since=2 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.method, Method::GET);
        assert_eq!(path(&head.target), "/v1/poll");
        assert_eq!(query(&head.target), Some("id=abc&since=2"));
        assert!(head.keep_alive);
        assert_eq!(head.body_len, 0);
    }

    #[test]
    fn connection_tokens_decide_keep_alive() {
        assert!(!complete("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(matches!(
            parse(b"GET /v1/poll HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
    }

    #[test]
    fn unusual_requests_go_to_hyper() {
        for raw in [
            "POST /v1/ids HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v1/ids HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(raw.as_bytes()), Parsed::HandOff), "{raw:?}");
        }
    }

    #[test]
    fn bodies_are_measured() {
        let head = complete("POST /v1/ids HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"id\":\"x\"}");
        assert_eq!(head.body_len, 12);
    }
}
