//! HTTP/1.1 framing over raw sockets: keep-alive, pipelining, clients that leave while they
//! wait, and the unusual requests that are handed to hyper.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{self, KEY, TestServer};

/// Reads from `stream` until `done` says the text so far is complete (bounded).
async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&String::from_utf8_lossy(&text)) {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the server answers");
        // A reset after the server closed counts as the end, like a clean close.
        let n = read.unwrap_or(0);
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(text).unwrap()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    s.notify(KEY, &id, "one").await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    // Three requests in one write: a poll with news, a health check, a poll with news.
    let poll = format!("GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n");
    let health = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(format!("{poll}{health}{poll}").as_bytes())
        .await
        .unwrap();
    let text = read_until(&mut c, |t| {
        count(t, "HTTP/1.1 200 OK") == 3 && t.ends_with('}')
    })
    .await;
    let first = text.find(r#"{"seq":1,"info":"one"}"#).unwrap();
    let second = text.find(r#"{"status":"ok"}"#).unwrap();
    let third = text.rfind(r#"{"seq":1,"info":"one"}"#).unwrap();
    assert!(first < second && second < third, "{text}");
    assert_eq!(count(&text, "cache-control: no-store"), 3, "{text}");
    assert_eq!(count(&text, "x-content-type-options: nosniff"), 3);
}

#[tokio::test]
async fn a_client_that_leaves_while_waiting_gives_its_place_back() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 1);
    let id = s.new_id().await;
    for path in ["/v1/poll", "/v1/events"] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(format!("GET {path}?id={id} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s.wait_for_waiters(&id, 1).await;
        drop(c);
        s.wait_for_waiters(&id, 0).await;
    }
}

#[tokio::test]
async fn a_waiting_poll_on_a_keep_alive_connection_is_answered_then_the_next_request() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(format!("GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.wait_for_waiters(&id, 1).await;
    s.notify(KEY, &id, "woke").await;
    let text = read_until(&mut c, |t| t.ends_with('}')).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with(r#"{"seq":1,"info":"woke"}"#), "{text}");
    c.write_all(format!("GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_until(&mut c, |t| t.ends_with('}')).await;
    assert!(text.ends_with(r#"{"seq":1,"info":"woke"}"#), "{text}");
}

#[tokio::test]
async fn an_event_stream_is_chunked() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(format!("GET /v1/events?id={id} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_until(&mut c, |t| t.contains("event: ready")).await;
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.contains("content-type: text/event-stream\r\n"),
        "{text}"
    );
    s.notify(KEY, &id, "streamed").await;
    let text = read_until(&mut c, |t| t.contains("streamed")).await;
    assert!(text.contains("id: 1\n"), "{text}");
}

#[tokio::test]
async fn http_1_0_closes_after_the_answer() {
    let s = TestServer::spawn();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    // Until the server closes (hyper answers with an HTTP/1.0 status line and no
    // `Connection` header, the lean path with HTTP/1.1 and `connection: close`: both close).
    let text = read_until(&mut c, |_| false).await;
    assert!(text.starts_with("HTTP/1."), "{text}");
    if support::lean_path() {
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
    assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let s = TestServer::spawn();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut c, |_| false).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
}

#[tokio::test]
async fn chunked_bodies_and_expect_continue_are_handed_to_hyper() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let body = "{\"info\": \"chunky\"}";
    let request = format!(
        "POST /v1/ids/{id}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    c.write_all(request.as_bytes()).await.unwrap();
    let text = read_until(&mut c, |t| t.contains("\"waiting\"")).await;
    assert!(
        text.contains(r#"{"seq":1,"waiting":0,"delivery":"stored"}"#),
        "{text}"
    );

    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let body = "second";
    let request = format!(
        "POST /v1/ids/{id}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(request.as_bytes()).await.unwrap();
    let text = read_until(&mut c, |t| t.contains("100 Continue")).await;
    assert!(text.starts_with("HTTP/1.1 100 Continue"), "{text}");
    c.write_all(body.as_bytes()).await.unwrap();
    let text = read_until(&mut c, |t| t.contains("\"waiting\"")).await;
    assert!(
        text.contains(r#"{"seq":2,"waiting":0,"delivery":"stored"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn heads_past_the_documented_limit_are_refused_with_431_on_both_paths() {
    let s = TestServer::spawn();
    // Just under the 16 KiB limit: served.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let large = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(15_000)
    );
    c.write_all(large.as_bytes()).await.unwrap();
    let text = read_until(&mut c, |t| t.ends_with('}')).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // Past it (hyper used to take 400 KB heads): 431, and the connection closes.
    for size in [20_000, 1_000_000] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        let huge = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        let _ = c.write_all(huge.as_bytes()).await; // the server may close before reading it all
        let text = read_until(&mut c, |_| false).await;
        assert!(text.starts_with("HTTP/1.1 431"), "{size}: {text:.200}");
        if support::lean_path() {
            assert!(text.contains(r#""code":"head_too_large""#), "{text}");
        }
    }
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the server carries on");
}

#[tokio::test]
async fn a_request_split_across_many_writes_is_assembled() {
    let s = TestServer::spawn();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    for piece in ["GE", "T /hea", "lthz HTTP/1.1\r", "\nHost: x\r\n", "\r\n"] {
        c.write_all(piece.as_bytes()).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = read_until(&mut c, |t| t.ends_with('}')).await;
    assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");
}

#[tokio::test]
async fn an_http_1_0_event_stream_is_sent_unchunked_and_ends_with_the_connection() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let request = format!("GET /v1/events?id={id} HTTP/1.0\r\n\r\n");
    c.write_all(request.as_bytes()).await.unwrap();
    let head = read_until(&mut c, |t| t.contains("event: ready")).await;
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 OK"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("transfer-encoding"),
        "HTTP/1.0 has no chunks: {head}"
    );
    // hyper leaves the close implied by HTTP/1.0; the lean path says it.
    if support::lean_path() {
        assert!(lower.contains("connection: close"), "{head}");
    }
    assert!(
        head.contains("\r\n\r\nevent: ready\ndata: {}\n\n"),
        "raw events: {head}"
    );
    s.notify(KEY, &id, "one").await;
    let more = read_until(&mut c, |t| t.contains("\"info\":\"one\"")).await;
    assert!(more.starts_with("id: 1\n"), "{more}");
}
