//! What the server says to requests that match nothing: JSON errors, never a dropped connection.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{KEY, TestServer, error_code};

#[tokio::test]
async fn healthz() {
    let s = TestServer::spawn();
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    let r = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let s = TestServer::spawn();
    for path in [
        "/",
        "/v2/ids",
        "/v1/ids/abcdefghijklmnop/unknown",
        "/favicon.ico",
    ] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(r).await, "not_found", "{path}");
    }
}

#[tokio::test]
async fn wrong_methods_are_json_405() {
    let s = TestServer::spawn();
    let cases = [
        s.client.get(s.url("/v1/ids")),
        s.client.put(s.url("/v1/ids/abcdefghijklmnop")),
        s.client.get(s.url("/v1/ids/abcdefghijklmnop/notify")),
        s.client.post(s.url("/v1/poll")),
        s.client.delete(s.url("/healthz")),
    ];
    for req in cases {
        let r = req.bearer_auth(KEY).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_code(r).await, "method_not_allowed");
    }
}

#[tokio::test]
async fn the_connection_survives_bad_requests() {
    // One keep-alive connection: bad requests get answers and the next request still works.
    let s = TestServer::spawn();
    let client = crate::support::client_builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = client
            .get(s.url("/v1/poll?id=%ZZ&since=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = client
            .post(s.url("/v1/ids"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body("[")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    let r = client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
