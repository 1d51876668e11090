//! The backend API, row by row: every success and every error of docs/api.md.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{KEY, KEY_TWO, ORIGIN, ORIGIN_TWO_A, ORIGIN_TWO_B, TestServer, error_code};

#[tokio::test]
async fn create_without_a_body_makes_a_random_id_bound_to_the_only_origin() {
    let s = TestServer::spawn();
    let r = s.create(KEY, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(id.len(), 22);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(body["origin"], ORIGIN);
    let base = format!("http://{}", s.addr);
    assert_eq!(
        body["iframe_url"],
        format!("{base}/v1/iframe?id={id}&origin=http%3A%2F%2Flocalhost%3A3000")
    );
    assert_eq!(body["poll_url"], format!("{base}/v1/poll?id={id}"));
    assert_ne!(s.new_id().await, id, "random ids differ");
}

#[tokio::test]
async fn create_with_a_chosen_id_and_origin() {
    let s = TestServer::spawn();
    let r = s
        .create(
            KEY_TWO,
            Some(json!({"id": "chosen-by-backend-01", "origin": ORIGIN_TWO_B})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "chosen-by-backend-01");
    assert_eq!(body["origin"], ORIGIN_TWO_B);
}

#[tokio::test]
async fn an_app_with_several_origins_gets_an_unbound_id_by_default() {
    let s = TestServer::spawn();
    let body: Value = s
        .create(KEY_TWO, Some(json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["origin"], Value::Null);
    assert!(!body["iframe_url"].as_str().unwrap().contains("origin="));
}

#[tokio::test]
async fn create_public_url_comes_from_the_config() {
    let s = TestServer::spawn_with(|c| c.public_url = Some("https://push.example/ch/".into()));
    let body: Value = s.create(KEY, None).await.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(
        body["iframe_url"]
            .as_str()
            .unwrap()
            .starts_with("https://push.example/ch/v1/iframe?id=")
    );
    assert_eq!(
        body["poll_url"],
        format!("https://push.example/ch/v1/poll?id={id}")
    );
}

#[tokio::test]
async fn create_errors() {
    let s = TestServer::spawn();
    s.create(KEY, Some(json!({"id": "taken-taken-taken-1"})))
        .await;
    let cases = [
        (
            KEY_TWO,
            json!({"id": "taken-taken-taken-1"}),
            StatusCode::CONFLICT,
            "id_taken",
        ),
        (
            KEY,
            json!({"id": "short"}),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            KEY,
            json!({"id": "has spaces in it!!"}),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
        (
            KEY,
            json!({"origin": "localhost:3000"}),
            StatusCode::BAD_REQUEST,
            "invalid_origin",
        ),
        (
            KEY,
            json!({"origin": "https://evil.example"}),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            KEY,
            json!({"origin": "*"}),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            KEY,
            json!({"id": 42}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            KEY,
            json!({"idd": "typo-in-the-field-name"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        // An array is not an object, though serde reads a struct from one (schemathesis
        // found this one: `[null, null]` created an id).
        (
            KEY,
            json!([null, null]),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            KEY,
            json!(["chosen-by-the-backend-0123", null]),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "wrong-key",
            json!({}),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];
    for (key, body, status, code) in cases {
        let r = s.create(key, Some(body.clone())).await;
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(error_code(r).await, code, "{body}");
    }
}

#[tokio::test]
async fn create_rejects_bad_bodies_clearly() {
    let s = TestServer::spawn();
    let post = || s.client.post(s.url("/v1/ids")).bearer_auth(KEY);

    let r = post()
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_json");

    let r = post()
        .header("content-type", "text/plain")
        .body("id=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(r).await, "unsupported_media_type");

    let huge = format!("{{\"id\": \"{}\"}}", "a".repeat(100_000));
    let r = post()
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "body_too_large");

    // None of that created anything; a good request still works.
    let body: Value = s.create(KEY, None).await.json().await.unwrap();
    assert!(body["id"].is_string());
}

#[tokio::test]
async fn auth_is_required_everywhere_on_the_backend_side() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let requests = [
        s.client.post(s.url("/v1/ids")),
        s.client
            .post(s.url(&format!("/v1/ids/{id}/notify")))
            .body(""),
        s.client.get(s.url(&format!("/v1/ids/{id}"))),
        s.client.delete(s.url(&format!("/v1/ids/{id}"))),
        s.client
            .get(s.url(&format!("/idcreate?id={}", "x".repeat(20)))),
        s.client.get(s.url(&format!("/notify?id={id}&info=1"))),
    ];
    for request in requests {
        for auth in [
            None,
            Some("Bearer nope"),
            Some(format!("Basic {KEY}").as_str()),
            Some(KEY),
        ] {
            let mut req = request.try_clone().unwrap();
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(error_code(r).await, "unauthorized");
        }
    }
    // And nothing happened to the id.
    let status: Value = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["seq"], 0);
}

#[tokio::test]
async fn max_ids_answers_503_with_retry_after() {
    // Quotas that add up to more than max_ids (by default each app gets an equal share, and
    // the store cannot fill up before every app is at its quota).
    let s = TestServer::spawn_with(|c| {
        c.limits.max_ids = 2;
        c.limits.max_ids_per_app = 2;
    });
    s.new_id().await;
    s.new_id_for(KEY_TWO).await;
    // Both apps are under their quotas, and both are refused: the server is full.
    for key in [KEY, KEY_TWO] {
        let r = s.create(key, None).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(error_code(r).await, "too_many_ids");
    }
}

#[tokio::test]
async fn notify_takes_json_or_text_and_counts() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let r = s.notify(KEY, &id, "first").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "waiting": 0, "delivery": "stored"})
    );

    let r = s
        .client
        .post(s.url(&format!("/v1/ids/{id}/notify")))
        .bearer_auth(KEY)
        .header("content-type", "text/plain; charset=utf-8")
        .body("sécond")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 2, "waiting": 0, "delivery": "stored"})
    );
    let v: Value = s.poll(&id, 0).await.json().await.unwrap();
    assert_eq!(v, json!({"seq": 2, "info": "sécond"}));

    // An empty body with no content type is a notify with empty info.
    let r = s
        .client
        .post(s.url(&format!("/v1/ids/{id}/notify")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["seq"], 3);
    let v: Value = s.poll(&id, 2).await.json().await.unwrap();
    assert_eq!(v, json!({"seq": 3, "info": ""}));
}

#[tokio::test]
async fn notify_errors_lose_nothing() {
    let s = TestServer::spawn_with(|c| c.limits.info_max_bytes = 10);
    let id = s.new_id().await;
    let other = s.new_id_for(KEY_TWO).await;
    s.notify(KEY, &id, "kept").await;
    let url = s.url(&format!("/v1/ids/{id}/notify"));
    let post = |ct: &str, body: Vec<u8>| {
        s.client
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    let r = s.notify(KEY, "no-such-id-0000000001", "x").await;
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::NOT_FOUND, "unknown_id")
    );
    // Another app's id looks exactly like one that does not exist.
    let r = s.notify(KEY, &other, "x").await;
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::NOT_FOUND, "unknown_id")
    );
    let r = s.notify(KEY, "bad id", "x").await;
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_id")
    );
    let r = s.notify(KEY, &id, "eleven byte").await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "info_too_large");
    let r = post("text/plain", "ééééééé".into()).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "the limit counts bytes, not characters"
    );
    let r = post("text/plain", vec![0xff, 0xfe]).await.unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_info")
    );
    let r = post("application/json", b"{\"info\": 5}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let r = post("application/json", b"{\"info\"".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let r = post("application/octet-stream", b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post("text/plain", vec![b'a'; 70_000]).await.unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    // After all of that the id still holds the one good value.
    let v: Value = s.poll(&id, 0).await.json().await.unwrap();
    assert_eq!(v, json!({"seq": 1, "info": "kept"}));
    let v: Value = s.poll(&other, 5).await.json().await.unwrap();
    assert_eq!(v["seq"], 0);
}

#[tokio::test]
async fn status_reports_the_id() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    s.notify(KEY, &id, "a").await;
    s.notify(KEY, &id, "b").await;
    let r = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["origin"], ORIGIN);
    assert_eq!(v["seq"], 2);
    assert_eq!(v["waiting"], 0);
    assert!(v["idle_secs"].as_u64().unwrap() < 60);
    let created = v["created_at"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(created).is_ok(), "{created}");

    let r = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY_TWO)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::NOT_FOUND, "unknown_id")
    );
}

#[tokio::test]
async fn delete_answers_waiting_polls_with_410_then_the_id_is_unknown() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let waiting = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 1).await;

    let r = s
        .client
        .delete(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY_TWO)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "another app cannot delete it"
    );
    let r = s
        .client
        .delete(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = waiting.await.unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::GONE, "gone")
    );
    let r = s.poll(&id, 0).await;
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::NOT_FOUND, "unknown_id")
    );
    let r = s
        .client
        .delete(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The id may be created afresh.
    let r = s.create(KEY, Some(json!({ "id": id }))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn seed_urls_work_with_query_or_form_parameters() {
    let s = TestServer::spawn();
    let r = s
        .client
        .get(s.url("/idcreate?id=seed-style-id-000001"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "seed-style-id-000001");
    assert_eq!(v["origin"], ORIGIN);

    let r = s
        .client
        .post(s.url("/idcreate"))
        .bearer_auth(KEY_TWO)
        .form(&[("id", "seed-style-id-000002"), ("origin", ORIGIN_TWO_A)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["origin"], ORIGIN_TWO_A);

    let r = s
        .client
        .get(s.url("/notify?id=seed-style-id-000001&info=seq%207"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "waiting": 0, "delivery": "stored"})
    );
    let r = s
        .client
        .post(s.url("/notify"))
        .bearer_auth(KEY)
        .form(&[("id", "seed-style-id-000001"), ("info", "seq 8")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["seq"], 2);
    let v: Value = s
        .poll("seed-style-id-000001", 0)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"seq": 2, "info": "seq 8"}));

    // Same errors as v1.
    let r = s
        .client
        .get(s.url("/idcreate?id=seed-style-id-000001"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::CONFLICT, "id_taken")
    );
    let r = s
        .client
        .get(s.url("/notify?info=x"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_parameters")
    );
    let r = s
        .client
        .get(s.url("/notify?id=seed-style-id-000002&info=x"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), error_code(r).await.as_str()),
        (StatusCode::NOT_FOUND, "unknown_id")
    );
}
