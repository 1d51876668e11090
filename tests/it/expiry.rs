//! Id expiry with a short `id_idle_ttl` (2 s, polls held 1 s): an id left alone is unknown
//! everywhere after the TTL and not before; polls, notifies and a waiting client keep it; the
//! sweep frees its place under `max_ids` and the next snapshot no longer has it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::metrics::{scrape, scrape_until, temp_dir};
use crate::support::{KEY, ORIGIN, TestServer, error_code, unlimited};

const TTL: Duration = Duration::from_secs(2);

fn server(adjust: impl FnOnce(&mut callhome::config::Config)) -> TestServer {
    TestServer::spawn_with(|c| {
        unlimited(c);
        c.limits.poll_timeout = Duration::from_secs(1);
        c.limits.id_idle_ttl = TTL;
        adjust(c);
    })
}

/// `GET /v1/ids/{id}`'s status code (which does not count as activity).
async fn status(s: &TestServer, id: &str) -> StatusCode {
    s.client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .status()
}

/// Waits (bounded: 6 s, the TTL three times over) until `id` is unknown, and returns when
/// that was first seen.
async fn wait_until_unknown(s: &TestServer, id: &str) -> Instant {
    let deadline = Instant::now() + 3 * TTL;
    loop {
        match status(s, id).await {
            StatusCode::NOT_FOUND => return Instant::now(),
            StatusCode::OK => {}
            other => panic!("status of {id}: {other}"),
        }
        assert!(Instant::now() < deadline, "{id} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_id_left_alone_is_unknown_everywhere_after_its_ttl_and_not_before() {
    let s = server(|_| {});
    let id = s.new_id().await;
    let last_touched = Instant::now();
    assert_eq!(
        s.notify(KEY, &id, "last words").await.status(),
        StatusCode::OK
    );
    let gone = wait_until_unknown(&s, &id).await;
    // The notify touched the id after `last_touched`, so it had been idle for less than this.
    let idle = gone - last_touched;
    assert!(idle >= TTL, "expired after {idle:?} of idleness");

    assert_eq!(error_code(s.poll(&id, 0).await).await, "unknown_id");
    assert_eq!(
        error_code(s.notify(KEY, &id, "x").await).await,
        "unknown_id"
    );
    let r = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "unknown_id");
    let r = s
        .client
        .get(s.url(&format!("/v1/events?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "unknown_id");
    let r = s
        .client
        .get(s.url(&format!("/v1/iframe?id={id}&origin={ORIGIN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains(r#""error":"unknown""#));
}

#[tokio::test]
async fn polls_and_notifies_keep_ids_alive() {
    let s = server(|_| {});
    let polled = s.new_id().await;
    let notified = s.new_id().await;
    let alone = s.new_id().await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < 2 * TTL + Duration::from_millis(500) {
        // A `since` the id has not reached answers at once: activity without a wait.
        assert_eq!(s.poll(&polled, 99).await.status(), StatusCode::OK);
        n += 1;
        let r = s.notify(KEY, &notified, &n.to_string()).await;
        assert_eq!(r.status(), StatusCode::OK, "notify {n}");
        assert_eq!(status(&s, &polled).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status(&s, &polled).await, StatusCode::OK);
    assert_eq!(status(&s, &notified).await, StatusCode::OK);
    assert_eq!(
        status(&s, &alone).await,
        StatusCode::NOT_FOUND,
        "the TTL is in force"
    );
}

#[tokio::test]
async fn a_waiting_client_keeps_its_id_until_it_leaves() {
    let s = server(|_| {});
    let id = s.new_id().await;
    let mut stream = s
        .client
        .get(s.url(&format!("/v1/events?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    s.wait_for_waiters(&id, 1).await;
    // Idle, but watched, for the TTL and a sweep (every second) more.
    let watched_until = Instant::now() + TTL + Duration::from_millis(1500);
    while Instant::now() < watched_until {
        assert_eq!(status(&s, &id).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let m = scrape(&s).await;
    assert_eq!(m.count("callhome_ids_expired_total"), 0);
    assert_eq!(m.count("callhome_ids"), 1);
    let ready = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        std::str::from_utf8(&ready)
            .unwrap()
            .contains("event: ready")
    );

    let left = Instant::now();
    drop(stream);
    s.wait_for_waiters(&id, 0).await;
    let gone = wait_until_unknown(&s, &id).await;
    // The stream's end counts as activity: the TTL runs from there.
    assert!(
        gone - left >= TTL,
        "expired {:?} after the client left",
        gone - left
    );
}

#[tokio::test]
async fn the_sweep_frees_the_place_and_the_next_snapshot_forgets_the_id() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("expiry");
    let snapshot = dir.join("state");
    let s = server(|c| {
        c.limits.max_ids = 1;
        c.store.snapshot_path = Some(snapshot.clone());
        c.store.snapshot_interval = Duration::from_millis(100);
    });
    let old = s.new_id().await;
    wait_until_unknown(&s, &old).await;
    scrape_until(&s, "the sweep", |m| {
        m.count("callhome_ids_expired_total") == 1
    })
    .await;
    assert_eq!(scrape(&s).await.count("callhome_ids"), 0);
    let new = s.new_id().await;
    assert_eq!(scrape(&s).await.count("callhome_ids"), 1);

    // A snapshot after the create has the new id, and so none from before the sweep.
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let bytes = std::fs::read(&snapshot).unwrap_or_default();
        if bytes.windows(new.len()).any(|w| w == new.as_bytes()) {
            break bytes;
        }
        assert!(Instant::now() < deadline, "no snapshot with the new id");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!written.windows(old.len()).any(|w| w == old.as_bytes()));

    // A server started on that snapshot knows only the new id. (A long TTL there: snapshots
    // keep whole seconds, so a restored id may look up to a second idler than it is.)
    let copy = dir.join("copy");
    std::fs::write(&copy, &written).unwrap();
    drop(s);
    let restarted = server(|c| {
        c.limits.id_idle_ttl = Duration::from_secs(60);
        c.store.snapshot_path = Some(copy);
    });
    assert_eq!(scrape(&restarted).await.count("callhome_ids"), 1);
    assert_eq!(status(&restarted, &new).await, StatusCode::OK);
    assert_eq!(status(&restarted, &old).await, StatusCode::NOT_FOUND);
    let v: Value = restarted.poll(&new, 99).await.json().await.unwrap();
    assert_eq!(v["seq"], 0);
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}
