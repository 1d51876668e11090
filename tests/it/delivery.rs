//! Delivery outcomes: a notify says whether it woke clients or stored its value, `?wait=`
//! returns once the woken clients' answers were handed to their connections (or the wait
//! ends), and an id's status shows the newest value delivered.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use crate::events::{data, open};
use crate::support::{KEY, TestServer, error_code};

/// `POST /v1/ids/{id}/notify{query}` with text `info`.
async fn notify_with(s: &TestServer, id: &str, query: &str, info: &str) -> reqwest::Response {
    s.client
        .post(s.url(&format!("/v1/ids/{id}/notify{query}")))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(info.to_owned())
        .send()
        .await
        .unwrap()
}

async fn notify_ok(s: &TestServer, id: &str, query: &str, info: &str) -> Value {
    let r = notify_with(s, id, query, info).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_notify_says_whether_it_woke_clients_or_stored_the_value() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let stored = notify_ok(&s, &id, "", "1").await;
    assert_eq!(
        stored,
        json!({"seq": 1, "waiting": 0, "delivery": "stored"})
    );

    let held = s.spawn_poll(&id, 1);
    s.wait_for_waiters(&id, 1).await;
    let woken = notify_ok(&s, &id, "", "2").await;
    assert_eq!(woken, json!({"seq": 2, "waiting": 1, "delivery": "woken"}));
    let answer: Value = held.await.unwrap().json().await.unwrap();
    assert_eq!(answer["seq"], 2);

    // The batch says the same of each of its notifies.
    let held = s.spawn_poll(&id, 2);
    s.wait_for_waiters(&id, 1).await;
    let other = s.new_id().await;
    let r = s
        .client
        .post(s.url("/v1/notify"))
        .bearer_auth(KEY)
        .json(&json!({"notifications": [{"id": id, "info": "3"}, {"id": other, "info": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let batch: Value = r.json().await.unwrap();
    assert_eq!(batch["results"][0]["delivery"], "woken");
    assert_eq!(batch["results"][1]["delivery"], "stored");
    assert!(batch["results"][0].get("delivered").is_none(), "{batch}");
    held.await.unwrap();
}

#[tokio::test]
async fn a_notify_with_wait_returns_once_every_woken_client_was_answered() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let polls = [s.spawn_poll(&id, 0), s.spawn_poll(&id, 0)];
    let mut stream = open(&s, &id, 0).await;
    s.wait_for_waiters(&id, 3).await;

    let answer = notify_ok(&s, &id, "?wait=10s", "news").await;
    assert_eq!(
        answer,
        json!({"seq": 1, "waiting": 3, "delivery": "woken", "delivered": 3})
    );
    for poll in polls {
        let value: Value = poll.await.unwrap().json().await.unwrap();
        assert_eq!(value["seq"], 1);
    }
    let event = stream.next_event().await.unwrap();
    assert_eq!(data(&event)["seq"], 1);

    // Nobody waiting: the answer comes at once, with nothing delivered.
    drop(stream);
    s.wait_for_waiters(&id, 0).await;
    let answer = notify_ok(&s, &id, "?wait=10s", "later").await;
    assert_eq!(
        answer,
        json!({"seq": 2, "waiting": 0, "delivery": "stored", "delivered": 0})
    );
}

#[tokio::test]
async fn a_batch_with_wait_waits_for_all_its_notifies_together() {
    let s = TestServer::spawn();
    let [one, two, idle] = [s.new_id().await, s.new_id().await, s.new_id().await];
    let polls = [s.spawn_poll(&one, 0), s.spawn_poll(&two, 0)];
    s.wait_for_waiters(&one, 1).await;
    s.wait_for_waiters(&two, 1).await;
    let answer = s
        .client
        .post(s.url("/v1/notify?wait=10s"))
        .bearer_auth(KEY)
        .json(&json!({"notifications": [
            {"id": one, "info": "1"}, {"id": two, "info": "1"}, {"id": idle, "info": "1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let batch: Value = answer.json().await.unwrap();
    let delivered: Vec<(Value, Value)> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["delivery"].clone(), r["delivered"].clone()))
        .collect();
    assert_eq!(
        delivered,
        [
            (json!("woken"), json!(1)),
            (json!("woken"), json!(1)),
            (json!("stored"), json!(0))
        ]
    );
    for poll in polls {
        assert_eq!(poll.await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn deliveries_on_a_stream_of_many_ids_and_a_poll_of_many_ids_are_counted() {
    let s = TestServer::spawn();
    let [a, b] = [s.new_id().await, s.new_id().await];
    let r = s
        .client
        .get(s.url(&format!("/v1/events?watch={a}.0,{b}.0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = crate::events::EventReader::new(r);
    assert_eq!(stream.next_event().await.unwrap()[0], "event: ready");
    let poll = s
        .client
        .get(s.url(&format!("/v1/poll?watch={b}.0,{a}.0")))
        .send();
    let poll = tokio::spawn(poll);
    s.wait_for_waiters(&a, 2).await;
    s.wait_for_waiters(&b, 2).await;

    let answer = notify_ok(&s, &a, "?wait=10s", "to a").await;
    assert_eq!(
        (answer["waiting"].clone(), answer["delivered"].clone()),
        (json!(2), json!(2))
    );
    let event = stream.next_event().await.unwrap();
    assert_eq!(data(&event)["id"], a.as_str());
    let polled: Value = poll.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(polled["values"][0]["id"], a.as_str());
    wait_for_delivered(&s, &a, 1).await;
    assert_eq!(s.id_status(KEY, &b).await["delivered_seq"], Value::Null);
}

#[tokio::test]
async fn the_status_shows_the_newest_value_delivered_and_when() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let status = s.id_status(KEY, &id).await;
    assert_eq!(
        (
            status["delivered_seq"].clone(),
            status["delivered_at"].clone()
        ),
        (Value::Null, Value::Null),
        "{status}"
    );
    notify_ok(&s, &id, "", "1").await;
    assert_eq!(s.id_status(KEY, &id).await["delivered_seq"], Value::Null);

    // A poll answered at once delivers the stored value.
    let before = std::time::SystemTime::now();
    assert_eq!(s.poll(&id, 0).await.status(), 200);
    let status = wait_for_delivered(&s, &id, 1).await;
    let at = humantime::parse_rfc3339(status["delivered_at"].as_str().unwrap()).unwrap();
    // Whole milliseconds: the shown time may round below `before` by less than one.
    assert!(at + Duration::from_millis(1) >= before, "{status}");

    // Stored without a delivery: the newest delivered stays where it was.
    notify_ok(&s, &id, "", "2").await;
    let status = s.id_status(KEY, &id).await;
    assert_eq!(
        (status["seq"].clone(), status["delivered_seq"].clone()),
        (json!(2), json!(1))
    );
}

/// The status of `id` once it shows `seq` delivered (in cluster mode each node writes its
/// deliveries once a second).
async fn wait_for_delivered(s: &TestServer, id: &str, seq: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = s.id_status(KEY, id).await;
        if status["delivered_seq"] == seq {
            return status;
        }
        assert!(Instant::now() < deadline, "never delivered {seq}: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_value_stuck_in_a_full_socket_is_not_counted_delivered_until_the_client_reads_it() {
    let s = TestServer::spawn_with(|c| {
        c.limits.send_timeout = Duration::from_secs(60);
        // Large values fill the buffers in tens of notifies rather than thousands.
        c.limits.info_max_bytes = 64 * 1024;
        crate::support::unlimited(c);
    });
    let id = s.new_id().await;
    let info = "i".repeat(64 * 1024);
    // A small receive window, and a client that does not read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(s.addr).await.unwrap();
    let request = format!("GET /v1/events?id={id} HTTP/1.1\r\nHost: x\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    s.wait_for_waiters(&id, 1).await;

    // Each notify waits a little for its delivery; once one is not delivered in that time,
    // the value is stuck behind the full socket.
    let mut stuck = None;
    for _ in 0..500 {
        let answer = notify_ok(&s, &id, "?wait=300ms", &info).await;
        assert_eq!(answer["waiting"], 1, "{answer:.200}");
        if answer["delivered"] == 0 {
            stuck = Some(answer["seq"].as_u64().unwrap());
            break;
        }
    }
    let stuck = stuck.expect("the client's socket fills within 500 values of 64 KiB");
    let status = s.id_status(KEY, &id).await;
    assert!(
        status["delivered_seq"].as_u64().unwrap_or(0) < stuck,
        "{status}"
    );

    // The client reads: the stream catches up, and the newest value is delivered.
    let reader = tokio::spawn(async move {
        let mut sink = vec![0; 1 << 16];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    });
    let caught_up = notify_ok(&s, &id, "?wait=20s", "last").await;
    assert_eq!(caught_up["delivered"], 1, "{caught_up}");
    wait_for_delivered(&s, &id, caught_up["seq"].as_u64().unwrap()).await;
    reader.abort();
}

#[tokio::test]
async fn a_bad_wait_is_refused_and_notifies_nothing() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    for query in [
        "?wait=0s",
        "?wait=31s",
        "?wait=soon",
        "?wait=",
        "?wait=2s&also=1",
        "?then=1",
    ] {
        let r = notify_with(&s, &id, query, "x").await;
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(error_code(r).await, "invalid_parameters", "{query}");
        let r = s
            .client
            .post(s.url(&format!("/v1/notify{query}")))
            .bearer_auth(KEY)
            .json(&json!({"notifications": [{"id": id, "info": "x"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "batch {query}");
        assert_eq!(error_code(r).await, "invalid_parameters", "batch {query}");
    }
    assert_eq!(
        s.id_status(KEY, &id).await["seq"],
        0,
        "nothing was notified"
    );
    // The bounds themselves are taken.
    assert_eq!(notify_ok(&s, &id, "?wait=30s", "x").await["delivered"], 0);
    assert_eq!(notify_ok(&s, &id, "?wait=1ms", "x").await["delivered"], 0);
}

#[tokio::test]
async fn a_retried_notify_with_wait_gets_the_first_answer_with_its_count() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let held = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 1).await;
    let send = |query: &'static str| {
        s.client
            .post(s.url(&format!("/v1/ids/{id}/notify{query}")))
            .bearer_auth(KEY)
            .header("idempotency-key", "delivery-retry-1")
            .header("content-type", "text/plain")
            .body("once")
            .send()
    };
    let first: Value = send("?wait=10s").await.unwrap().json().await.unwrap();
    assert_eq!(first["delivered"], 1);
    held.await.unwrap();
    // Waiting longer, or not at all, is the same notify.
    for query in ["?wait=2s", ""] {
        let r = send(query).await.unwrap();
        assert_eq!(r.headers()["idempotent-replayed"], "true", "{query:?}");
        assert_eq!(r.json::<Value>().await.unwrap(), first, "{query:?}");
    }
    assert_eq!(s.id_status(KEY, &id).await["seq"], 1);
}
