//! The browser side: long poll, the iframe page and callhome.js, over real sockets.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{KEY, KEY_TWO, ORIGIN, ORIGIN_TWO_A, ORIGIN_TWO_B, TestServer, error_code};

#[tokio::test]
async fn a_held_poll_is_answered_by_notify() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let poll = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 1).await;
    let r = s.notify(KEY, &id, "hello").await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "waiting": 1, "delivery": "woken"})
    );
    let r = poll.await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "hello"})
    );
}

#[tokio::test]
async fn notifies_before_a_poll_collapse_into_the_newest() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    for info in ["one", "two", "three"] {
        s.notify(KEY, &id, info).await;
    }
    let v: Value = s.poll(&id, 0).await.json().await.unwrap();
    assert_eq!(v, json!({"seq": 3, "info": "three"}));
}

#[tokio::test]
async fn a_poll_with_nothing_new_times_out_with_204() {
    let s = TestServer::spawn_with(|c| c.limits.poll_timeout = std::time::Duration::from_secs(1));
    let id = s.new_id().await;
    s.notify(KEY, &id, "seen").await;
    let r = s.poll(&id, 1).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cursor_ahead_of_the_server_resynchronises_at_once() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let v: Value = s.poll(&id, 41).await.json().await.unwrap();
    assert_eq!(v, json!({"seq": 0, "info": null}));
}

#[tokio::test]
async fn poll_errors() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let cases = [
        (
            "/v1/poll?id=no-such-id-00000001&since=0".to_owned(),
            StatusCode::NOT_FOUND,
            "unknown_id",
        ),
        (
            format!("/v1/poll?id={id}&since=abc"),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            format!("/v1/poll?id={id}&since=-1"),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            "/v1/poll?since=0".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            "/v1/poll?id=bad!id&since=0".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        ),
    ];
    for (path, status, code) in cases {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(error_code(r).await, code, "{path}");
    }
}

#[tokio::test]
async fn a_full_id_releases_its_oldest_held_poll_for_a_new_one() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 2);
    let id = s.new_id().await;
    let oldest = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 1).await;
    let held = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 2).await;
    // Newest wins: the third is held, and the oldest is told to come back in a second.
    let newest = s.spawn_poll(&id, 0);
    let r = oldest.await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["retry-after"], "1");
    s.wait_for_waiters(&id, 2).await;
    // A poll with news answers without a place: the cap is on holding, not on asking.
    let r = s.notify(KEY, &id, "x").await;
    assert_eq!(r.json::<Value>().await.unwrap()["waiting"], 2);
    for h in [held, newest] {
        assert_eq!(h.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(s.poll(&id, 0).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn iframe_page_for_a_bound_id() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let r = s
        .client
        .get(s.url(&format!("/v1/iframe?id={id}&origin={ORIGIN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains(&format!("frame-ancestors {ORIGIN};")), "{csp}");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains(&format!(r#""id":"{id}""#)), "{html}");
    assert!(html.contains(&format!(r#""origin":"{ORIGIN}""#)));
    assert!(html.contains("postMessage"));
    assert!(!html.contains("\"error\""));
}

#[tokio::test]
async fn iframe_refuses_other_origins() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    for origin in ["https://evil.example", "http://localhost:3001"] {
        let r = s
            .client
            .get(s.url(&format!("/v1/iframe?id={id}&origin={origin}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{origin}");
        assert_eq!(error_code(r).await, "origin_mismatch");
    }
    for origin in ["*", "not-an-origin", ""] {
        let r = s
            .client
            .get(s.url(&format!("/v1/iframe?id={id}&origin={origin}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{origin}");
        assert_eq!(error_code(r).await, "invalid_origin");
    }
    let r = s
        .client
        .get(s.url(&format!("/v1/iframe?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "invalid_parameters");
}

#[tokio::test]
async fn an_unbound_id_serves_any_origin_of_its_app() {
    let s = TestServer::spawn();
    let id = s.new_id_for(KEY_TWO).await;
    for origin in [ORIGIN_TWO_A, ORIGIN_TWO_B] {
        let r = s
            .client
            .get(s.url(&format!("/v1/iframe?id={id}&origin={origin}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{origin}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains(&format!("frame-ancestors {origin};")));
    }
    let r = s
        .client
        .get(s.url(&format!("/v1/iframe?id={id}&origin={ORIGIN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "origin_mismatch");
}

#[tokio::test]
async fn iframe_for_an_unknown_id_is_a_404_page_that_tells_the_parent() {
    let s = TestServer::spawn();
    let r = s
        .client
        .get(s.url(&format!(
            "/v1/iframe?id=never-created-00001&origin={ORIGIN}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains(ORIGIN)
    );
    let html = r.text().await.unwrap();
    assert!(html.contains(r#""error":"unknown""#), "{html}");
}

#[tokio::test]
async fn callhome_js_is_served_as_javascript() {
    let s = TestServer::spawn();
    let r = s.client.get(s.url("/callhome.js")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let js = r.text().await.unwrap();
    assert!(js.contains("CallHome") && js.contains("connect"));
}

/// The page names the shared worker by its script's version; that URL may be cached for
/// good, any other gets the current script uncached. Both run under a policy of their own
/// that lets them connect to this origin only, and the page may start only our workers.
#[tokio::test]
async fn the_shared_worker_is_served_by_version_under_its_own_policy() {
    let s = TestServer::spawn();
    let id = s.new_id().await;
    let r = s
        .client
        .get(s.url(&format!("/v1/iframe?id={id}&origin={ORIGIN}")))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("worker-src 'self';"), "{csp}");
    let html = r.text().await.unwrap();
    let config: Value = serde_json::from_str(
        html.split_once(r#"id="callhome-config">"#)
            .unwrap()
            .1
            .split_once("</script>")
            .unwrap()
            .0,
    )
    .unwrap();
    assert_eq!(config["share"], "auto");
    assert_eq!(config["maxIds"], 64);
    let worker = config["worker"].as_str().unwrap();
    assert!(worker.starts_with("worker.js?v="), "{worker}");

    for (path, cache) in [
        (
            format!("/v1/{worker}"),
            "public, max-age=31536000, immutable",
        ),
        ("/v1/worker.js?v=0123456789abcdef".to_owned(), "no-cache"),
        ("/v1/worker.js".to_owned(), "no-cache"),
    ] {
        let r = s.client.get(s.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(
            r.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(r.headers()["cache-control"], cache, "{path}");
        assert_eq!(
            r.headers()["content-security-policy"],
            "default-src 'none'; connect-src 'self'"
        );
        let js = r.text().await.unwrap();
        assert!(
            js.contains("onconnect") && js.contains("CallHomeHub"),
            "{path}"
        );
    }

    let r = s
        .client
        .get(s.url(&format!(
            "/v1/iframe?id={id}&origin={ORIGIN}&share=sometimes"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "invalid_parameters");
}
