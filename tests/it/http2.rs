//! HTTP/2 on the plain port: off by default; when on (prior knowledge), every open stream
//! takes a place in `max_connections` like a connection, and idle or silent connections are
//! closed by `idle_timeout` and `header_timeout` as HTTP/1 ones are.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::support::{KEY, TestServer};

/// Bound on anything this module waits for: generous, the machine is shared.
const PATIENCE: Duration = Duration::from_secs(10);

/// An HTTP/2 client connection (prior knowledge) and the task driving it.
async fn connect(s: &TestServer) -> (SendRequest<Empty<Bytes>>, JoinHandle<()>) {
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

fn get(s: &TestServer, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{}{path}", s.addr))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn http2_without_tls_is_refused_by_default() {
    let s = TestServer::spawn();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, c.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    if crate::support::lean_path() {
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains(r#""code":"malformed_request""#), "{answer}");
    } else {
        // hyper recognises the preface and closes without an answer.
        assert!(answer.is_empty(), "{answer}");
    }
}

#[tokio::test]
async fn each_waiting_stream_takes_a_place_of_its_own() {
    let s = TestServer::spawn_with(|c| {
        c.http.http2_cleartext = true;
        // The pooled HTTP/1 connection that creates the id, the HTTP/2 connection itself,
        // and three streams.
        c.limits.max_connections = 5;
    });
    let id = s.new_id().await;
    let (send, _driver) = connect(&s).await;
    let poll = format!("/v1/poll?id={id}&since=0");
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut send = send.clone();
        let request = get(&s, &poll);
        waiting.push(tokio::spawn(
            async move { send.send_request(request).await },
        ));
    }
    // The three polls are held (the id shows them waiting) before the fourth stream opens.
    // Asking over HTTP/1 would need a place too: ask on the HTTP/2 connection instead.
    let mut fourth = send.clone();
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            let r = fourth.send_request(get(&s, "/healthz")).await.unwrap();
            if r.status() == 503 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a fourth stream is refused once three wait");
    assert!(
        waiting.iter().all(|poll| !poll.is_finished()),
        "the three polls are still held"
    );
    let retry_after = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert_eq!(retry_after, "1");

    // A waiting stream that is cancelled gives its place back.
    waiting.pop().unwrap().abort();
    let r = tokio::time::timeout(PATIENCE, async {
        loop {
            let r = fourth.send_request(get(&s, "/healthz")).await.unwrap();
            if r.status() == 200 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the place of a cancelled stream comes back");
    assert_eq!(r.status(), 200);

    // The held polls are answered over HTTP/2 when the id is notified.
    let notified = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut h1 = s.client.post(s.url(&format!("/v1/ids/{id}/notify")));
            h1 = h1
                .bearer_auth(KEY)
                .body("news")
                .header("content-type", "text/plain");
            if let Ok(r) = h1.send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // The notify needs a place of its own: one is free now.
    notified.await.expect("the notify gets through");
    for poll in waiting {
        let r = poll.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"seq":1,"info":"news"}"#);
    }
}

#[tokio::test]
async fn idle_and_silent_http2_connections_are_closed() {
    let s = TestServer::spawn_with(|c| {
        c.http.http2_cleartext = true;
        c.limits.header_timeout = Duration::from_millis(500);
        c.limits.idle_timeout = Duration::from_millis(800);
    });
    // A connection that serves one request and then has nothing in flight.
    let (mut send, driver) = connect(&s).await;
    let r = send.send_request(get(&s, "/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap();
    // One that sends the preface and nothing more: no request ever comes.
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, silent.read_to_end(&mut sink))
        .await
        .expect("a silent HTTP/2 connection is closed")
        .ok();
}
