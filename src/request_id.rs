//! Request ids: one per request, on every log line the request causes (`request_id`) and in
//! the `X-Request-Id` response header, so an operator can go from a client's complaint or a
//! proxy's access log to our log lines.
//!
//! A trusted proxy's `X-Request-Id` (nginx: `proxy_set_header X-Request-Id $request_id`) is
//! kept, so both logs share the id; anyone else's is ignored. Ours are a random per-process
//! prefix and a counter: unique across restarts and nodes for practical purposes.
//!
//! Why a task-local and not a tracing span: a span is built (its fields formatted, a slot
//! taken in the registry) for every request whether or not anything is logged, which measured
//! at about a tenth of a notify's instructions. The task-local costs a pointer swap per poll;
//! the id is formatted only into a log line that is actually written (`telemetry`) and into
//! the response header.

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;
use compact_str::CompactString;

tokio::task_local! {
    /// The id of the request the current task is serving.
    static CURRENT: RequestId;
}

/// Runs `future` as the request `id`: log lines it writes carry the id. A plain function, not
/// an `async fn`: an `async fn` would keep `future` twice in its state (once as the argument,
/// once inside the scope), and a waiting connection's task is as big as that state.
pub fn scope<F: Future>(id: RequestId, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(id, future)
}

/// Runs `f` as the request `id` (for code polled outside the request's future: a response
/// body that hyper streams after the handler returned).
pub fn sync_scope<R>(id: RequestId, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(id, f)
}

/// The id of the request being served here, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The header that carries it.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a proxy.
const MAX_LEN: usize = 64;

/// One request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(CompactString);

impl RequestId {
    /// A fresh id: `<8 hex digits of this process>-<counter>`, made without `fmt` (this runs
    /// for every request).
    pub fn generate() -> Self {
        static PREFIX: LazyLock<CompactString> = LazyLock::new(|| {
            let mut prefix = CompactString::const_new("");
            let n: u32 = rand::random();
            for shift in (0..8).rev() {
                let digit = (n >> (shift * 4)) & 0xf;
                prefix.push(char::from_digit(digit, 16).unwrap_or('0'));
            }
            prefix.push('-');
            prefix
        });
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut id = PREFIX.clone();
        id.push_str(itoa::Buffer::new().format(n));
        Self(id)
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of a request from a peer: the `given` `X-Request-Id` when the peer is a
    /// `trusted` proxy (see [`RequestId::from_proxy`]), a fresh one otherwise.
    pub fn for_peer(trusted: bool, given: Option<&HeaderValue>) -> Self {
        if trusted {
            Self::from_proxy(given)
        } else {
            Self::generate()
        }
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
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
        let (prefix, n) = a.as_str().split_once('-').unwrap();
        assert_eq!(prefix.len(), 8);
        assert!(prefix.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(n.parse::<u64>().is_ok());
    }

    #[tokio::test]
    async fn the_current_id_is_the_scope_s() {
        assert_eq!(current(), None);
        let id = RequestId::generate();
        let seen = scope(id.clone(), async { current() }).await;
        assert_eq!(seen, Some(id));
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
