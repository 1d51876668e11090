//! `Idempotency-Key` on notify (single and batch) and create: a retry gets the first answer
//! and changes nothing; another request under the same key is refused.

use std::time::Duration;

use callhome::config::RateLimit;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{KEY, KEY_TWO, TestServer, error_code};

fn with_key(request: RequestBuilder, key: &str) -> RequestBuilder {
    request.header("Idempotency-Key", key)
}

async fn notify(s: &TestServer, app: &str, id: &str, info: &str, key: &str) -> Response {
    with_key(
        s.client
            .post(s.url(&format!("/v1/ids/{id}/notify")))
            .bearer_auth(app)
            .header("content-type", "text/plain")
            .body(info.to_owned()),
        key,
    )
    .send()
    .await
    .unwrap()
}

fn replayed(r: &Response) -> bool {
    r.headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

async fn seq(s: &TestServer, app: &str, id: &str) -> u64 {
    s.id_status(app, id).await["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn a_notify_retried_with_its_key_gets_the_first_answer_and_notifies_once() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let first = notify(&s, KEY, &id, "17", "retry-1").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!replayed(&first));
    let first: Value = first.json().await.unwrap();
    for _ in 0..3 {
        let again = notify(&s, KEY, &id, "17", "retry-1").await;
        assert_eq!(again.status(), StatusCode::OK);
        assert!(replayed(&again), "says it is the first answer again");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    assert_eq!(seq(&s, KEY, &id).await, 1, "notified once");

    // Another request under the same key: refused, nothing changes.
    let other = notify(&s, KEY, &id, "18", "retry-1").await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(other).await, "idempotency_key_reused");
    assert_eq!(seq(&s, KEY, &id).await, 1);
    // A new key is a new notify.
    let next: Value = notify(&s, KEY, &id, "18", "retry-2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["seq"], 2);
}

#[tokio::test]
async fn keys_are_each_apps_own() {
    let s = TestServer::spawn();
    let mine = s.new_id().await;
    let theirs = s.new_id_for(KEY_TWO).await;
    assert_eq!(
        notify(&s, KEY, &mine, "1", "same").await.status(),
        StatusCode::OK
    );
    let r = notify(&s, KEY_TWO, &theirs, "other body", "same").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!replayed(&r), "not app one's answer");
    assert_eq!(seq(&s, KEY_TWO, &theirs).await, 1);
}

#[tokio::test]
async fn a_create_retried_with_its_key_gets_the_same_id() {
    let s = TestServer::spawn();
    let create = |body: Value| {
        with_key(
            s.client.post(s.url("/v1/ids")).bearer_auth(KEY).json(&body),
            "create-1",
        )
        .send()
    };
    let first = create(json!({})).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = create(json!({})).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert!(replayed(&again));
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = create(json!({"id": "chosen-by-the-backend-0123"}))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(other).await, "idempotency_key_reused");
    let r = s
        .client
        .get(s.url("/v1/ids/chosen-by-the-backend-0123"))
        .bearer_auth(KEY)
        .send();
    assert_eq!(
        r.await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "not created"
    );
}

#[tokio::test]
async fn a_batch_retried_with_its_key_gets_the_first_answer_and_notifies_once() {
    let s = TestServer::spawn();
    let [a, b] = [s.new_id().await, s.new_id().await];
    let body = json!({"notifications": [{"id": a, "info": "1"}, {"id": b, "info": "1"}]});
    let send = |body: Value| {
        with_key(
            s.client
                .post(s.url("/v1/notify"))
                .bearer_auth(KEY)
                .json(&body),
            "batch-1",
        )
        .send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again = send(body).await.unwrap();
    assert!(replayed(&again));
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!((seq(&s, KEY, &a).await, seq(&s, KEY, &b).await), (1, 1));
    let changed = json!({"notifications": [{"id": a, "info": "2"}]});
    let r = send(changed).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!((seq(&s, KEY, &a).await, seq(&s, KEY, &b).await), (1, 1));
}

#[tokio::test]
async fn a_refusal_that_says_what_happened_is_kept_one_that_invites_a_retry_is_not() {
    let s = TestServer::spawn_with(|c| {
        c.rate_limits.notify_per_app = RateLimit {
            per_second: 2,
            burst: 1,
        };
    });
    // 429: not kept; the same key runs again once the rate allows.
    let id = s.new_id().await;
    assert_eq!(
        notify(&s, KEY, &id, "1", "rate-1").await.status(),
        StatusCode::OK
    );
    let limited = notify(&s, KEY, &id, "2", "rate-2").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let retried = notify(&s, KEY, &id, "2", "rate-2").await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert!(!replayed(&retried));
    // 404: kept, replayed (a replay takes nothing from the rate).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = notify(&s, KEY, "abcdefghijklmnopqrstuv", "1", "missing").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = notify(&s, KEY, "abcdefghijklmnopqrstuv", "1", "missing").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(replayed(&r));
    assert_eq!(seq(&s, KEY, &id).await, 2);
}

#[tokio::test]
async fn a_bad_key_is_refused_and_nothing_happens() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    for key in ["has space", &"x".repeat(256)] {
        let r = notify(&s, KEY, &id, "1", key).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(error_code(r).await, "invalid_idempotency_key");
    }
    assert_eq!(seq(&s, KEY, &id).await, 0);
}

#[tokio::test]
async fn a_key_is_free_again_when_its_window_ends() {
    let s = TestServer::spawn_with(|c| c.idempotency.window = Duration::from_secs(1));
    let id = s.new_id().await;
    assert_eq!(
        notify(&s, KEY, &id, "1", "short").await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = notify(&s, KEY, &id, "2", "short").await;
    assert_eq!(r.status(), StatusCode::OK, "a new request, not a reuse");
    assert!(!replayed(&r));
    assert_eq!(seq(&s, KEY, &id).await, 2);
}

#[tokio::test]
async fn an_app_holds_at_most_max_keys_per_app() {
    if !crate::support::engine::memory_engine_feature("max_keys_per_app") {
        return;
    }
    let s = TestServer::spawn_with(|c| c.idempotency.max_keys_per_app = 2);
    let id = s.new_id().await;
    for key in ["k1", "k2"] {
        assert_eq!(
            notify(&s, KEY, &id, key, key).await.status(),
            StatusCode::OK
        );
    }
    let r = notify(&s, KEY, &id, "k3", "k3").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "idempotency_keys_full");
    // Another app has its own room.
    let theirs = s.new_id_for(KEY_TWO).await;
    assert_eq!(
        notify(&s, KEY_TWO, &theirs, "k3", "k3").await.status(),
        StatusCode::OK
    );
}

/// Cluster mode: a key used on one node is known on the others, and a notify that was made
/// but whose answer was lost (here: its record of the answer deleted, as when the first
/// attempt answered `503` after Redis ran the notify) is not made again by a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_retry_on_another_node_never_notifies_twice() {
    use crate::support::redis::{RedisOptions, RedisServer, require_redis};
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = crate::cluster::nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let first: Value = notify(&a, KEY, &id, "1", "k").await.json().await.unwrap();
    let r = notify(&b, KEY, &id, "1", "k").await;
    assert!(replayed(&r), "b knows a's key");
    assert_eq!(r.json::<Value>().await.unwrap(), first);

    let second: Value = notify(&a, KEY, &id, "2", "lost")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["seq"], 2);
    assert_eq!(redis.cmd(&["DEL", "ch:ik:one:lost"]).await, "1");
    let retried = notify(&b, KEY, &id, "2", "lost").await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(
        retried.json::<Value>().await.unwrap()["seq"],
        2,
        "the seq it got"
    );
    assert_eq!(seq(&a, KEY, &id).await, 2, "made once");
}
