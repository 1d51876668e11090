//! `GET /.well-known/callhome`: what a web app told of this server learns from it.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{KEY, TestServer};

#[tokio::test]
async fn discovery_says_what_the_server_offers_and_names_no_app() {
    let s = TestServer::spawn_with(|c| {
        c.limits.info_max_bytes = 1000;
        c.limits.max_ids_per_stream = 10;
        c.rate_limits.notify_per_app.per_second = 77;
        c.rate_limits.notify_per_app.burst = 99;
        c.rate_limits.create_per_app.per_second = 0;
    });
    let r = s
        .client
        .get(s.url("/.well-known/callhome"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(KEY) && !text.contains("\"one\""),
        "names an app or key: {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    let base = s.url("");
    let base = base.trim_end_matches('/');
    assert_eq!(body["callhome"], 1);
    assert_eq!(body["api_versions"], json!(["v1"]));
    assert_eq!(body["public_url"], base);
    assert_eq!(body["browser"]["transports"], json!(["sse", "poll"]));
    assert_eq!(body["browser"]["max_ids_per_stream"], 10);
    assert_eq!(
        body["browser"]["callhome_js"],
        format!("{base}/callhome.js")
    );
    assert_eq!(body["registration"], json!({"policy": "closed"}));
    assert_eq!(body["limits"]["info_max_bytes"], 1000);
    assert_eq!(
        body["limits"]["notify_per_app"],
        json!({"per_second": 77, "burst": 99})
    );
    assert_eq!(body["limits"]["create_per_app"], Value::Null, "no limit");

    // What it says works: callhome.js is where it says.
    let js = s
        .client
        .get(body["browser"]["callhome_js"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
}

#[tokio::test]
async fn discovery_is_get_only() {
    let s = TestServer::spawn();
    let r = s
        .client
        .post(s.url("/.well-known/callhome"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(crate::support::error_code(r).await, "method_not_allowed");
}
