//! `POST /v1/notify`: many notifies in one request, each answered as a single one would be.

use callhome::config::RateLimit;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{KEY, KEY_TWO, TestServer, error_code};

/// `POST /v1/notify` with `key` and `body` (JSON).
async fn batch(s: &TestServer, key: &str, body: &Value) -> reqwest::Response {
    s.client
        .post(s.url("/v1/notify"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn batch_ok(s: &TestServer, body: &Value) -> Value {
    let r = batch(s, KEY, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn seq_of(s: &TestServer, key: &str, id: &str) -> u64 {
    s.id_status(key, id).await["seq"].as_u64().unwrap()
}

fn notifies(pairs: &[(&str, &str)]) -> Value {
    let items: Vec<Value> = pairs
        .iter()
        .map(|(id, info)| json!({"id": id, "info": info}))
        .collect();
    json!({ "notifications": items })
}

#[tokio::test]
async fn each_notify_of_a_batch_is_answered_in_order_and_repeats_of_an_id_follow_each_other() {
    let s = TestServer::spawn();
    let [a, b, c] = [s.new_id().await, s.new_id().await, s.new_id().await];
    // A poll waiting on `a` is woken by the batch.
    let held = s
        .client
        .get(s.url(&format!("/v1/poll?id={a}&since=0")))
        .send();
    let held = tokio::spawn(held);
    s.wait_for_waiters(&a, 1).await;

    let answer = batch_ok(
        &s,
        &notifies(&[(&a, "1"), (&b, "x"), (&a, "2"), (&c, ""), (&a, "3")]),
    )
    .await;
    assert_eq!(
        (answer["notified"].clone(), answer["failed"].clone()),
        (json!(5), json!(0))
    );
    let results = answer["results"].as_array().unwrap();
    let seqs: Vec<(String, u64)> = results
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seqs,
        [
            (a.clone(), 1),
            (b.clone(), 1),
            (a.clone(), 2),
            (c.clone(), 1),
            (a.clone(), 3)
        ]
    );
    assert_eq!(results[0]["waiting"], 1, "the held poll was woken");
    let woken: Value = held.await.unwrap().unwrap().json().await.unwrap();
    assert!(woken["seq"].as_u64().unwrap() >= 1, "{woken}");
    // Only the newest value of each id is kept, as with single notifies.
    let newest: Value = s.poll(&a, 0).await.json().await.unwrap();
    assert_eq!(
        (newest["seq"].clone(), newest["info"].clone()),
        (json!(3), json!("3"))
    );
    assert_eq!(seq_of(&s, KEY, &b).await, 1);
}

#[tokio::test]
async fn one_bad_notify_fails_only_itself_with_the_error_a_single_one_would_get() {
    let s = TestServer::spawn_with(|c| c.limits.info_max_bytes = 8);
    let good = s.new_id().await;
    let theirs = s.new_id_for(KEY_TWO).await;
    let before = s
        .metric(r#"callhome_notifies_total{outcome="rejected"}"#)
        .await;
    let before_unknown = s
        .metric(r#"callhome_notifies_total{outcome="unknown_id"}"#)
        .await;
    let answer = batch_ok(
        &s,
        &notifies(&[
            ("not an id!", "1"),
            ("abcdefghijklmnopqrstuv", "1"),
            (&theirs, "1"),
            (&good, "much too long"),
            (&good, "fine"),
        ]),
    )
    .await;
    assert_eq!(
        (answer["notified"].clone(), answer["failed"].clone()),
        (json!(1), json!(4))
    );
    let errors: Vec<(u64, &str)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|r| {
            (
                r["error"]["status"].as_u64().unwrap(),
                r["error"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (400, "invalid_id"),
            (404, "unknown_id"),
            (404, "unknown_id"),
            (413, "info_too_large")
        ]
    );
    assert_eq!(answer["results"][4]["seq"], 1);
    // Another app's id is neither notified nor told apart from a missing one.
    assert_eq!(seq_of(&s, KEY_TWO, &theirs).await, 0);
    // Counted as single notifies are: two rejected, two unknown.
    assert_eq!(
        s.metric(r#"callhome_notifies_total{outcome="rejected"}"#)
            .await,
        before + 2
    );
    assert_eq!(
        s.metric(r#"callhome_notifies_total{outcome="unknown_id"}"#)
            .await,
        before_unknown + 2
    );
}

#[tokio::test]
async fn a_batch_over_max_batch_is_refused_whole_and_changes_nothing() {
    let s = TestServer::spawn_with(|c| c.limits.max_batch = 3);
    let id = s.new_id().await;
    let body = notifies(&[(&id, "1"), (&id, "2"), (&id, "3"), (&id, "4")]);
    let r = batch(&s, KEY, &body).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "batch_too_large");
    assert_eq!(seq_of(&s, KEY, &id).await, 0);
    // Three fit.
    let answer = batch_ok(&s, &notifies(&[(&id, "1"), (&id, "2"), (&id, "3")])).await;
    assert_eq!(answer["notified"], 3);
}

#[tokio::test]
async fn a_batch_takes_from_the_apps_notify_rate_one_notify_at_a_time() {
    let s = TestServer::spawn_with(|c| {
        c.rate_limits.notify_per_app = RateLimit {
            per_second: 1,
            burst: 3,
        };
    });
    let id = s.new_id().await;
    let answer = batch_ok(
        &s,
        &notifies(&[(&id, "1"), (&id, "2"), (&id, "3"), (&id, "4"), (&id, "5")]),
    )
    .await;
    assert_eq!(
        (answer["notified"].clone(), answer["failed"].clone()),
        (json!(3), json!(2))
    );
    for refused in &answer["results"].as_array().unwrap()[3..] {
        assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
        assert_eq!(refused["error"]["status"], 429);
        assert!(refused["error"]["retry_after"].as_u64().unwrap() >= 1);
    }
    assert_eq!(seq_of(&s, KEY, &id).await, 3);
}

#[tokio::test]
async fn bad_batches_get_a_clear_error_and_change_nothing() {
    let s = TestServer::spawn_with(|c| c.limits.info_max_bytes = 16);
    let id = s.new_id().await;
    let cases = [
        (json!({"notifications": [{"id": id}]}), "invalid_json"),
        (
            json!({"notifications": [{"id": id, "info": "x", "extra": 1}]}),
            "invalid_json",
        ),
        (json!({"notes": []}), "invalid_json"),
        (json!([{"id": id, "info": "x"}]), "invalid_json"),
        (json!([[{"id": id, "info": "x"}]]), "invalid_json"),
    ];
    for (body, code) in cases {
        let r = batch(&s, KEY, &body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(r).await, code, "{body}");
    }
    let r = s
        .client
        .post(s.url("/v1/notify"))
        .bearer_auth(KEY)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = batch(&s, "not-a-key", &notifies(&[(&id, "1")])).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seq_of(&s, KEY, &id).await, 0);
    // An empty batch is a batch of nothing.
    let answer = batch_ok(&s, &json!({"notifications": []})).await;
    assert_eq!(answer["results"], json!([]));
}

/// A batch's body may be larger than a single notify's (`max_batch` of them), and no larger.
#[tokio::test]
async fn a_batch_body_may_hold_max_batch_notifies_and_no_more() {
    let s = TestServer::spawn_with(|c| {
        c.limits.info_max_bytes = 16;
        c.limits.max_batch = 200;
    });
    let single_limit = 16 * 6 + 1024;
    let id = s.new_id().await;
    let info = "0123456789abcdef";
    let pairs: Vec<(&str, &str)> = (0..200).map(|_| (id.as_str(), info)).collect();
    let body = notifies(&pairs);
    assert!(
        body.to_string().len() > single_limit,
        "larger than one notify may be"
    );
    let answer = batch_ok(&s, &body).await;
    assert_eq!(answer["notified"], 200);
    // Past the batch limit in bytes (padded with spaces, which JSON allows): refused.
    let batch_limit = single_limit * 200;
    let padded = format!("{}{}", body, " ".repeat(batch_limit));
    let r = s
        .client
        .post(s.url("/v1/notify"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "body_too_large");
    assert_eq!(seq_of(&s, KEY, &id).await, 200);
}
