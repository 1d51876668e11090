//! Tenants cannot hurt each other: a stranger who knows an id cannot keep its page from
//! subscribing, and an app that lists `*` cannot bind ids to another app's origins.

use std::time::Duration;

use callhome::auth::AppKey;
use callhome::config::{AppConfig, Config};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::events::{self, EventReader};
use crate::support::{KEY, KEY_TWO, ORIGIN, ORIGIN_TWO_A, TestServer, error_code};

/// App "any": lists `*`, so any origin is one of its own, except those another app lists.
const KEY_ANY: &str = "test-key-any-0123456789";

/// Adds app "any" to the test apps.
fn with_wildcard_app(config: &mut Config) {
    config.apps.push(AppConfig {
        name: "any".into(),
        key: Some(AppKey::new(KEY_ANY.into())),
        origins: vec!["*".into()],
        ..AppConfig::default()
    });
}

/// Upper bound on a wait that only a failing test reaches.
const HANG: Duration = Duration::from_secs(10);

/// The next block of `stream`, failing the test after [`HANG`] (a keep-alive comment counts).
async fn next_block(stream: &mut EventReader) -> Option<Vec<String>> {
    tokio::time::timeout(HANG, stream.next_event())
        .await
        .expect("the stream says something")
}

/// `/metrics` as text.
async fn scrape(s: &TestServer) -> String {
    s.client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (name and labels exactly as exposed).
fn value(scraped: &str, series: &str) -> i64 {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{scraped}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_stranger_holding_every_waiting_place_cannot_keep_the_page_out() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 3);
    let id = s.new_id().await;
    // The stranger opens one stream per place, and would keep them forever.
    let mut stranger = Vec::new();
    for _ in 0..3 {
        stranger.push(events::open(&s, &id, 0).await);
    }
    s.wait_for_waiters(&id, 3).await;

    // The page's poll is held at once, and the stranger's oldest stream is let go, told to
    // come back in a second.
    let page_poll = s.spawn_poll(&id, 0);
    let mut oldest = stranger.remove(0);
    assert_eq!(
        next_block(&mut oldest).await.unwrap(),
        ["retry: 1000", "event: released", "data: {}"]
    );
    assert_eq!(
        next_block(&mut oldest).await,
        None,
        "the released stream ends"
    );
    s.wait_for_waiters(&id, 3).await;

    // The page's own stream gets in the same way (the next oldest stranger goes), and both
    // of the page's requests get the value.
    let mut page_stream = events::open(&s, &id, 0).await;
    let mut next_oldest = stranger.remove(0);
    assert_eq!(
        next_block(&mut next_oldest).await.unwrap()[1],
        "event: released"
    );
    s.wait_for_waiters(&id, 3).await;
    let r = s.notify(KEY, &id, "for the page").await;
    assert_eq!(r.json::<Value>().await.unwrap()["waiting"], 3);
    let r = tokio::time::timeout(HANG, page_poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "for the page"})
    );
    let event = next_block(&mut page_stream).await.unwrap();
    assert_eq!(
        events::data(&event),
        json!({"seq": 1, "info": "for the page"})
    );

    let metrics = scrape(&s).await;
    assert_eq!(value(&metrics, "callhome_waiters_released_total"), 2);
    assert_eq!(
        value(&metrics, r#"callhome_polls_total{outcome="rejected"}"#),
        0
    );
    assert_eq!(
        value(
            &metrics,
            r#"callhome_event_streams_total{outcome="rejected"}"#
        ),
        0
    );
}

#[tokio::test]
async fn a_released_poll_answers_204_and_its_next_poll_gets_what_it_missed() {
    let s = TestServer::spawn_with(|c| c.limits.max_waiters_per_id = 1);
    let id = s.new_id().await;
    let page = s.spawn_poll(&id, 0);
    s.wait_for_waiters(&id, 1).await;

    // A stranger's poll takes the only place; the page's poll is answered at once.
    let stranger = s.spawn_poll(&id, 0);
    let r = tokio::time::timeout(HANG, page).await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["retry-after"], "1");
    s.wait_for_waiters(&id, 1).await;

    // A value notified before the page is back is not lost: its next poll, with the same
    // `since`, gets it at once.
    s.notify(KEY, &id, "missed").await;
    let r = s.poll(&id, 0).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "missed"})
    );
    let r = tokio::time::timeout(HANG, stranger).await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let metrics = scrape(&s).await;
    assert_eq!(
        value(&metrics, r#"callhome_polls_total{outcome="released"}"#),
        1
    );
    assert_eq!(value(&metrics, "callhome_waiters_released_total"), 1);
}

#[tokio::test]
async fn a_wildcard_app_cannot_bind_another_apps_origin() {
    let s = TestServer::spawn_with(with_wildcard_app);
    let taken = ["x1nA5Qb0sJ-eR7tLw2YkVg", "Lr4TzP0c-Wm8aQy1Hn6dXe"];
    for (other, origin) in [(taken[0], ORIGIN), (taken[1], ORIGIN_TWO_A)] {
        let r = s
            .create(KEY_ANY, Some(json!({"id": other, "origin": origin})))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(r).await, "origin_not_allowed", "{origin}");

        let r = s
            .client
            .get(s.url(&format!("/idcreate?id={other}&origin={origin}")))
            .bearer_auth(KEY_ANY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(r).await, "origin_not_allowed", "{origin}");

        let r = s
            .client
            .post(s.url("/idcreate"))
            .bearer_auth(KEY_ANY)
            .form(&[("id", other), ("origin", origin)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(r).await, "origin_not_allowed", "{origin}");
    }
    // Nothing was made: the owners can still create those ids.
    for (other, key) in [(taken[0], KEY), (taken[1], KEY_TWO)] {
        let r = s.create(key, Some(json!({ "id": other }))).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{other}");
    }

    // Any origin no app lists is still the wildcard app's to bind.
    let r = s
        .create(KEY_ANY, Some(json!({"origin": "https://anywhere.example"})))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .client
        .get(s.url("/idcreate?origin=https://anywhere.example"))
        .bearer_auth(KEY_ANY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_iframe_serves_a_wildcard_apps_id_to_no_other_apps_origin() {
    let s = TestServer::spawn_with(with_wildcard_app);
    // Bound to `*` (the app's only origin), so it serves any origin but those of other apps.
    let id = s.new_id_for(KEY_ANY).await;
    let iframe = async |origin: &str| {
        s.client
            .get(s.url(&format!("/v1/iframe?id={id}&origin={origin}")))
            .send()
            .await
            .unwrap()
    };
    for origin in [ORIGIN, ORIGIN_TWO_A] {
        let r = iframe(origin).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{origin}");
        assert_eq!(error_code(r).await, "origin_mismatch", "{origin}");
    }
    assert_eq!(
        iframe("https://anywhere.example").await.status(),
        StatusCode::OK
    );
}
