//! One event stream for many ids (`GET /v1/events?watch=ID.SEQ,...`), over a real socket: each
//! id with its own cursor and waiting place, what ends one id ends only that id, and
//! `Last-Event-ID` resumes every cursor.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::events::{EventReader, data};
use crate::support::{KEY, TestServer, error_code};

async fn open_many(s: &TestServer, watch: &str, last_event_id: Option<&str>) -> EventReader {
    let mut request = s.client.get(s.url(&format!("/v1/events?watch={watch}")));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut reader = EventReader::new(r);
    assert_eq!(
        reader.next_event().await.unwrap(),
        ["event: ready", "data: {}"]
    );
    reader
}

/// The `id:` line of an event block.
fn event_id(block: &[String]) -> String {
    block
        .iter()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id line")
        .to_owned()
}

#[tokio::test]
async fn each_id_gets_its_values_on_one_stream_and_every_event_carries_every_cursor() {
    let s = TestServer::spawn();
    let [a, b, c] = [s.new_id().await, s.new_id().await, s.new_id().await];
    // `a` has a value the client has not seen; `b` one it has.
    s.notify(KEY, &a, "a1").await;
    s.notify(KEY, &b, "b1").await;
    let mut stream = open_many(&s, &format!("{a}.0,{b}.1,{c}.0"), None).await;
    let first = stream.next_event().await.unwrap();
    assert_eq!(data(&first), json!({"id": a, "seq": 1, "info": "a1"}));
    assert_eq!(event_id(&first), format!("{a}.1,{b}.1,{c}.0"));
    // Every id holds one waiting place, and the stream is one waiting client.
    for id in [&a, &b, &c] {
        s.wait_for_waiters(id, 1).await;
    }
    s.notify(KEY, &c, "c1").await;
    let next = stream.next_event().await.unwrap();
    assert_eq!(data(&next), json!({"id": c, "seq": 1, "info": "c1"}));
    assert_eq!(event_id(&next), format!("{a}.1,{b}.1,{c}.1"));
    s.notify(KEY, &b, "b2").await;
    let next = stream.next_event().await.unwrap();
    assert_eq!(data(&next), json!({"id": b, "seq": 2, "info": "b2"}));
    assert_eq!(event_id(&next), format!("{a}.1,{b}.2,{c}.1"));
}

#[tokio::test]
async fn last_event_id_resumes_every_id_where_it_was() {
    let s = TestServer::spawn();
    let [a, b] = [s.new_id().await, s.new_id().await];
    let watch = format!("{a}.0,{b}.0");
    let mut stream = open_many(&s, &watch, None).await;
    s.wait_for_waiters(&a, 1).await;
    s.notify(KEY, &a, "seen").await;
    let seen = stream.next_event().await.unwrap();
    let last = event_id(&seen);
    drop(stream);
    s.wait_for_waiters(&a, 0).await;

    // While the client was away `b` got its first value; `a` has nothing new.
    s.notify(KEY, &b, "b1").await;
    // An EventSource reconnects to the same URL, with the last event's id: `a`'s value is
    // not sent again (from the URL's cursor, 0, it would be).
    let mut again = open_many(&s, &watch, Some(&last)).await;
    assert_eq!(
        data(&again.next_event().await.unwrap()),
        json!({"id": b, "seq": 1, "info": "b1"})
    );
    s.wait_for_waiters(&a, 1).await;
    s.notify(KEY, &a, "after").await;
    assert_eq!(
        data(&again.next_event().await.unwrap()),
        json!({"id": a, "seq": 2, "info": "after"})
    );
}

#[tokio::test]
async fn what_ends_one_id_ends_only_that_id_and_the_last_one_ends_the_stream() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 1);
    let [a, b, c] = [s.new_id().await, s.new_id().await, s.new_id().await];
    let unknown = "no-such-id-0000000000";
    let mut stream = open_many(&s, &format!("{a}.0,{unknown}.0,{b}.0,{c}.0"), None).await;
    // Unknown at the start: an error event for it, the others are watched.
    let error = stream.next_event().await.unwrap();
    assert_eq!(error[0], "event: error");
    assert_eq!(
        data(&error),
        json!({"id": unknown, "error": {"code": "unknown_id", "message": "no such id"}})
    );
    for id in [&a, &b, &c] {
        s.wait_for_waiters(id, 1).await;
    }

    // Deleted: `event: gone` for it, and its place is given back.
    s.delete(&a).await;
    let gone = stream.next_event().await.unwrap();
    assert_eq!(gone, ["event: gone", &format!("data: {{\"id\":\"{a}\"}}")]);

    // Its place taken by a newer client (one place per id here): `event: released`.
    let poll = s.spawn_poll(&b, 0);
    let released = stream.next_event().await.unwrap();
    assert_eq!(
        released,
        [
            "retry: 1000",
            "event: released",
            &format!("data: {{\"id\":\"{b}\"}}")
        ]
    );
    s.notify(KEY, &b, "to the poll").await;
    assert_eq!(poll.await.unwrap().status(), StatusCode::OK);

    // `c` still gets its values.
    s.notify(KEY, &c, "still here").await;
    assert_eq!(
        data(&stream.next_event().await.unwrap()),
        json!({"id": c, "seq": 1, "info": "still here"})
    );
    // Its deletion ends the last id, and the stream.
    s.delete(&c).await;
    assert_eq!(stream.next_event().await.unwrap()[0], "event: gone");
    assert_eq!(
        stream.next().await,
        None,
        "the stream ends with its last id"
    );
}

#[tokio::test]
async fn a_bad_watch_list_is_a_json_400_and_takes_no_place() {
    let s = TestServer::spawn_with(|c| c.limits.max_ids_per_stream = 2);
    let [a, b, c] = [s.new_id().await, s.new_id().await, s.new_id().await];
    for query in [
        format!("watch={a}"),
        format!("watch={a}.x"),
        format!("watch={a}.1,{a}.2"),
        format!("watch={a}.0,short.0"),
        format!("watch={a}.0,{b}.0,{c}.0"),
        format!("watch={a}.0&id={b}"),
        "watch=".to_owned(),
    ] {
        let refused = s
            .client
            .get(s.url(&format!("/v1/events?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error_code(refused).await, "invalid_parameters", "{query}");
    }
    let status = s
        .client
        .get(s.url(&format!("/v1/ids/{a}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(status.json::<Value>().await.unwrap()["waiting"], 0);
}

async fn poll_many(s: &TestServer, watch: &str) -> reqwest::Response {
    s.client
        .get(s.url(&format!("/v1/poll?watch={watch}")))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_poll_of_many_ids_answers_at_once_with_everything_new_and_ended() {
    let s = TestServer::spawn();
    let [a, b, c] = [s.new_id().await, s.new_id().await, s.new_id().await];
    s.notify(KEY, &a, "a1").await;
    s.notify(KEY, &c, "c1").await;
    s.notify(KEY, &c, "c2").await;
    let unknown = "no-such-id-0000000000";
    let answer = poll_many(&s, &format!("{a}.0,{b}.0,{c}.0,{unknown}.0")).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({
            "values": [
                {"id": a, "seq": 1, "info": "a1"},
                {"id": c, "seq": 2, "info": "c2"},
            ],
            "ended": [{"id": unknown, "reason": "unknown_id"}],
        }),
        "only the newest value of each id; nothing for the id with nothing new"
    );
    for id in [&a, &b, &c] {
        s.wait_for_waiters(id, 0).await;
    }
}

#[tokio::test]
async fn a_held_poll_of_many_ids_wakes_for_the_first_news_and_times_out_with_204() {
    let s = TestServer::spawn_with(|c| c.limits.poll_timeout = std::time::Duration::from_secs(1));
    let [a, b] = [s.new_id().await, s.new_id().await];
    let url = s.url(&format!("/v1/poll?watch={a}.0,{b}.0"));
    let request = s.client.get(&url);
    let held = tokio::spawn(async move { request.send().await.unwrap() });
    s.wait_for_waiters(&a, 1).await;
    s.wait_for_waiters(&b, 1).await;
    s.notify(KEY, &b, "b1").await;
    let answer = held.await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"values": [{"id": b, "seq": 1, "info": "b1"}], "ended": []})
    );
    // Deleted while held: ended, "gone".
    let request = s.client.get(s.url(&format!("/v1/poll?watch={a}.0,{b}.1")));
    let held = tokio::spawn(async move { request.send().await.unwrap() });
    s.wait_for_waiters(&a, 1).await;
    s.delete(&a).await;
    assert_eq!(
        held.await.unwrap().json::<Value>().await.unwrap(),
        json!({"values": [], "ended": [{"id": a, "reason": "gone"}]})
    );
    // Nothing new before poll_timeout: 204, and the places are given back.
    let quiet = poll_many(&s, &format!("{b}.1")).await;
    assert_eq!(quiet.status(), StatusCode::NO_CONTENT);
    s.wait_for_waiters(&b, 0).await;
    // The same refusals as the stream.
    let refused = poll_many(&s, &format!("{b}.1,{b}.1")).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(refused).await, "invalid_parameters");
}
