//! Request ids: one per request, on every log line the request causes (as the `request`
//! span's `id`) and in the `X-Request-Id` response header, so an operator can go from a
//! client's complaint or a proxy's access log to our log lines.
//!
//! A trusted proxy's `X-Request-Id` (nginx: `proxy_set_header X-Request-Id $request_id`) is
//! kept, so both logs share the id; anyone else's is ignored. Ours are a random per-process
//! prefix and a counter: unique across restarts and nodes for practical purposes, and cheap
//! enough to make for every notify.

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;
use compact_str::{CompactString, format_compact};

/// The header that carries it.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a proxy.
const MAX_LEN: usize = 64;

/// One request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(CompactString);

impl RequestId {
    /// A fresh id: `<8 hex digits of this process>-<counter>`.
    pub fn generate() -> Self {
        static PREFIX: LazyLock<u32> = LazyLock::new(rand::random);
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(format_compact!("{:08x}-{n}", *PREFIX))
    }

    /// The proxy's id if it is sane (1 to 64 of `A-Z a-z 0-9 - _ . :`), else a fresh one.
    pub fn from_proxy(value: Option<&HeaderValue>) -> Self {
        value
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty() && v.len() <= MAX_LEN)
            .filter(|v| {
                v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            })
            .and_then(|v| std::str::from_utf8(v).ok())
            .map_or_else(Self::generate, |v| Self(CompactString::from(v)))
    }

    /// The id as a header value.
    ///
    /// # Panics
    /// Never: both kinds of id are visible ASCII.
    pub fn to_header(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("request ids are visible ASCII")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_differ() {
        assert_ne!(RequestId::generate(), RequestId::generate());
    }

    #[test]
    fn a_sane_proxy_id_is_kept_and_anything_else_replaced() {
        let kept = HeaderValue::from_static("4f1c2b9a0d3e5f67a8b9c0d1e2f3a4b5");
        assert_eq!(
            RequestId::from_proxy(Some(&kept)).to_string(),
            "4f1c2b9a0d3e5f67a8b9c0d1e2f3a4b5"
        );
        for bad in ["", "has space", "new\tline", &"x".repeat(65)] {
            let value = HeaderValue::from_str(bad).unwrap();
            let id = RequestId::from_proxy(Some(&value)).to_string();
            assert_ne!(id, bad);
            assert!(id.contains('-'), "{id}");
        }
    }
}
