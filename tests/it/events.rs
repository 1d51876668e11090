//! Server-sent events over a real socket: the wire format, resumption and the error rows.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{KEY, TestServer, error_code};

/// Reads a `text/event-stream` response one block (event or comment) at a time.
pub(crate) struct EventReader {
    response: Response,
    buffer: String,
}

impl EventReader {
    pub(crate) fn new(response: Response) -> Self {
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next block's lines, or `None` when the stream ended. Bounded: a stream that says
    /// nothing for 30 s fails the test rather than hanging it.
    pub(crate) async fn next(&mut self) -> Option<Vec<String>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(block.trim_end().lines().map(str::to_owned).collect());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("the stream says something within 30 s")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not a comment.
    pub(crate) async fn next_event(&mut self) -> Option<Vec<String>> {
        loop {
            let block = self.next().await?;
            if !block.iter().all(|l| l.starts_with(':')) {
                return Some(block);
            }
        }
    }
}

pub(crate) fn data(block: &[String]) -> Value {
    let line = block.iter().find_map(|l| l.strip_prefix("data: ")).unwrap();
    serde_json::from_str(line).unwrap()
}

pub(crate) async fn open(s: &TestServer, id: &str, since: u64) -> EventReader {
    let r = s
        .client
        .get(s.url(&format!("/v1/events?id={id}&since={since}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let mut reader = EventReader::new(r);
    assert_eq!(
        reader.next_event().await.unwrap(),
        ["event: ready", "data: {}"]
    );
    reader
}

#[tokio::test]
async fn every_new_value_is_one_event_with_its_seq_as_id() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    s.notify(KEY, &id, "before").await;
    let mut events = open(&s, &id, 0).await;
    let first = events.next_event().await.unwrap();
    assert_eq!(first[0], "id: 1");
    assert_eq!(data(&first), json!({"seq": 1, "info": "before"}));

    s.wait_for_waiters(&id, 1).await;
    let r = s.notify(KEY, &id, "after").await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 2, "waiting": 1, "delivery": "woken"})
    );
    let second = events.next_event().await.unwrap();
    assert_eq!(second[0], "id: 2");
    assert_eq!(data(&second), json!({"seq": 2, "info": "after"}));
}

#[tokio::test]
async fn last_event_id_resumes_after_the_clients_last_seq() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    for info in ["a", "b", "c"] {
        s.notify(KEY, &id, info).await;
    }
    // Up to date at 3 (header wins over the query): nothing until the next notify.
    let r = s
        .client
        .get(s.url(&format!("/v1/events?id={id}&since=0")))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    let mut events = EventReader::new(r);
    assert_eq!(events.next_event().await.unwrap()[0], "event: ready");
    s.wait_for_waiters(&id, 1).await;
    s.notify(KEY, &id, "d").await;
    assert_eq!(
        data(&events.next_event().await.unwrap()),
        json!({"seq": 4, "info": "d"})
    );

    let r = s
        .client
        .get(s.url(&format!("/v1/events?id={id}")))
        .header("last-event-id", "three")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_parameters")
    );
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let s = TestServer::spawn_with(|c| c.limits.sse_keepalive = Duration::from_secs(1));
    let id = s.new_id().await;
    let mut events = open(&s, &id, 0).await;
    assert_eq!(events.next().await.unwrap(), [": keep-alive"]);
}

#[tokio::test]
async fn delete_ends_the_stream_with_gone() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let mut events = open(&s, &id, 0).await;
    s.wait_for_waiters(&id, 1).await;
    s.client
        .delete(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        events.next_event().await.unwrap(),
        ["event: gone", "data: {}"]
    );
    assert_eq!(events.next().await, None, "the stream ends");
}

#[tokio::test]
async fn the_same_error_rows_as_poll() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let r = s
        .client
        .get(s.url("/v1/events?id=no-such-id-00000001"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::NOT_FOUND, "unknown_id")
    );
    let r = s
        .client
        .get(s.url(&format!("/v1/events?id={id}&since=x")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_parameters")
    );
}

#[tokio::test]
async fn streams_and_polls_share_the_places_and_the_newest_wins() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 1);
    let id = s.new_id().await;
    let mut stream = open(&s, &id, 0).await;
    s.wait_for_waiters(&id, 1).await;
    // A held poll takes the stream's place: the stream ends, told to come back in a second.
    let poll = s.spawn_poll(&id, 0);
    assert_eq!(
        stream.next_event().await.unwrap(),
        ["retry: 1000", "event: released", "data: {}"]
    );
    assert_eq!(stream.next().await, None, "the stream ends");
    // And a stream takes the poll's.
    let mut again = open(&s, &id, 0).await;
    let r = poll.await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["retry-after"], "1");
    s.wait_for_waiters(&id, 1).await;
    s.notify(KEY, &id, "x").await;
    assert_eq!(
        data(&again.next_event().await.unwrap()),
        json!({"seq": 1, "info": "x"})
    );
}

#[tokio::test]
async fn a_closed_stream_gives_its_place_back() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 1);
    let id = s.new_id().await;
    let held = open(&s, &id, 0).await;
    s.wait_for_waiters(&id, 1).await;
    drop(held);
    s.wait_for_waiters(&id, 0).await;
}
