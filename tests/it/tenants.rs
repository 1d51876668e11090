//! Tenants cannot hurt each other: an app at its id quota leaves the others creating, a
//! stranger who knows an id cannot keep its page from subscribing, and an app that lists `*`
//! cannot bind ids to another app's origins.

use std::time::Duration;

use callhome::auth::AppKey;
use callhome::config::{AppConfig, Config};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::events::{self, EventReader};
use crate::metrics::temp_dir;
use crate::support::{KEY, KEY_TWO, ORIGIN, ORIGIN_TWO_A, TestServer, error_code, unlimited};

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

/// `/idcreate?id=..` as the app with `key`.
async fn idcreate(s: &TestServer, key: &str, id: &str) -> reqwest::Response {
    s.client
        .get(s.url(&format!("/idcreate?id={id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Checks a refusal for being at the app's quota: 429, the code, and no `Retry-After`
/// (waiting alone frees nothing; the app must delete ids).
async fn assert_over_quota(r: reqwest::Response) {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_none(), "{r:?}");
    assert_eq!(error_code(r).await, "app_quota_exceeded");
}

/// A random-looking id for test `n` (22 characters, like a generated one).
fn quota_id(n: usize) -> String {
    format!("quotaTest{n:04}xQ7vLm2Rb")
}

#[tokio::test]
async fn an_app_at_its_quota_is_refused_while_the_others_still_create() {
    let s = TestServer::spawn_with(|c| c.apps[0].max_ids = Some(3));
    for n in 0..2 {
        let r = s.create(KEY, Some(json!({ "id": quota_id(n) }))).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    assert_eq!(idcreate(&s, KEY, &quota_id(2)).await.status(), 201);

    // At its quota: refused on both create paths, and the refused ids were not made.
    assert_over_quota(s.create(KEY, Some(json!({ "id": quota_id(3) }))).await).await;
    assert_over_quota(idcreate(&s, KEY, &quota_id(4)).await).await;
    assert_over_quota(s.create(KEY, None).await).await;

    // App two is not held back: it even takes the names app one was refused.
    for n in 3..8 {
        let r = s.create(KEY_TWO, Some(json!({ "id": quota_id(n) }))).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{n}");
    }

    // A delete gives the place back.
    let r = s
        .client
        .delete(s.url(&format!("/v1/ids/{}", quota_id(0))))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.create(KEY, None).await.status(), StatusCode::CREATED);
    assert_over_quota(s.create(KEY, None).await).await;

    let metrics = scrape(&s).await;
    assert_eq!(value(&metrics, "callhome_ids"), 8);
    assert_eq!(
        value(
            &metrics,
            r#"callhome_creates_refused_total{reason="app_quota"}"#
        ),
        4
    );
    assert_eq!(
        value(
            &metrics,
            r#"callhome_creates_refused_total{reason="max_ids"}"#
        ),
        0
    );
}

#[tokio::test]
async fn the_quota_holds_exactly_under_concurrent_creates() {
    let s = TestServer::spawn_with(|c| {
        unlimited(c);
        c.apps[0].max_ids = Some(20);
    });
    let creates = (0..100).map(|n| {
        let s = &s;
        async move {
            let r = if n % 2 == 0 {
                s.create(KEY, None).await
            } else {
                idcreate(s, KEY, &quota_id(n)).await
            };
            let status = r.status();
            if status == StatusCode::CREATED {
                None
            } else {
                Some((status, error_code(r).await))
            }
        }
    });
    let refusals: Vec<_> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(refusals.len(), 80);
    assert!(
        refusals
            .iter()
            .all(|r| *r == (StatusCode::TOO_MANY_REQUESTS, "app_quota_exceeded".into())),
        "{refusals:?}"
    );
    assert_eq!(value(&scrape(&s).await, "callhome_ids"), 20);
    assert_eq!(s.create(KEY_TWO, None).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn by_default_each_app_gets_an_equal_share_of_max_ids() {
    let s = TestServer::spawn_with(|c| c.limits.max_ids = 4);
    for key in [KEY, KEY_TWO] {
        for _ in 0..2 {
            assert_eq!(s.create(key, None).await.status(), StatusCode::CREATED);
        }
        assert_over_quota(s.create(key, None).await).await;
    }
    assert_eq!(value(&scrape(&s).await, "callhome_ids"), 4);
}

#[tokio::test]
async fn restored_ids_count_towards_their_apps_quota_and_are_all_kept() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("tenants-restore");
    let snapshot = dir.join("state");
    let s = TestServer::spawn_with(|c| {
        c.store.snapshot_path = Some(snapshot.clone());
        c.store.snapshot_interval = Duration::from_millis(100);
    });
    for n in 0..3 {
        let r = s.create(KEY, Some(json!({ "id": quota_id(n) }))).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let deadline = tokio::time::Instant::now() + HANG;
    let written = loop {
        let bytes = std::fs::read(&snapshot).unwrap_or_default();
        let last = quota_id(2);
        if bytes.windows(last.len()).any(|w| w == last.as_bytes()) {
            break bytes;
        }
        assert!(tokio::time::Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(s);

    // Restarted with a quota of 2: all three ids are back (a lower quota deletes nothing),
    // and they count, so the app creates nothing until it is under its quota again.
    let copy = dir.join("copy");
    std::fs::write(&copy, &written).unwrap();
    let s = TestServer::spawn_with(|c| {
        c.apps[0].max_ids = Some(2);
        c.store.snapshot_path = Some(copy);
    });
    for n in 0..3 {
        let r = s
            .client
            .get(s.url(&format!("/v1/ids/{}", quota_id(n))))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{n}");
    }
    assert_over_quota(s.create(KEY, None).await).await;
    for n in 0..2 {
        let r = s
            .client
            .delete(s.url(&format!("/v1/ids/{}", quota_id(n))))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(s.create(KEY, None).await.status(), StatusCode::CREATED);
    assert_over_quota(s.create(KEY, None).await).await;
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
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
