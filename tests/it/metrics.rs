//! `/metrics`: scraped before and after a known sequence of requests, every counter must have
//! moved by exactly what the test did, and no series may name an id.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{KEY, TestServer, error_code, unlimited};

/// One scrape: every series (name and labels, as written) with its value.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub series: BTreeMap<String, f64>,
    pub text: String,
}

impl Scrape {
    /// Parses the `OpenMetrics` text format: `# ...` lines are metadata, every other line is
    /// `<series> <value>`. A series written twice is a broken exposition.
    pub fn parse(text: &str) -> Self {
        assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not `<series> <value>`: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            assert!(
                series.insert(name.to_owned(), value).is_none(),
                "{name} twice"
            );
        }
        Self {
            series,
            text: text.to_owned(),
        }
    }

    /// The value of `series`, which must exist.
    pub fn value(&self, series: &str) -> f64 {
        *self
            .series
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.text))
    }

    /// The value of `series`, a count (a counter, a gauge of things, a histogram's count).
    pub fn count(&self, series: &str) -> i64 {
        let value = self.value(series);
        assert!(
            value.fract() == 0.0 && value.abs() < 1e15,
            "{series} = {value}"
        );
        // Checked just above: a whole number well within range.
        #[allow(clippy::cast_possible_truncation)]
        let count = value as i64;
        count
    }

    /// How far the count `series` moved since `before`.
    pub fn delta(&self, before: &Self, series: &str) -> i64 {
        self.count(series) - before.count(series)
    }
}

/// `GET /metrics`, checking its content type.
pub async fn scrape(s: &TestServer) -> Scrape {
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    Scrape::parse(&r.text().await.unwrap())
}

/// Scrapes until `done` holds (bounded: 10 s), and returns that scrape.
pub async fn scrape_until(s: &TestServer, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(s).await;
        if done(&scraped) {
            return scraped;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened; last scrape:\n{}",
            scraped.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the system's temporary one.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callhome-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads an event stream until its text contains `needle` (bounded: 10 s).
async fn read_until(stream: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} never came; got {seen:?}"))
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

const POLL: &str = "callhome_waiting{transport=\"poll\"}";
const EVENTS: &str = "callhome_waiting{transport=\"events\"}";

fn notifies(outcome: &str) -> String {
    format!("callhome_notifies_total{{outcome=\"{outcome}\"}}")
}

fn polls(outcome: &str) -> String {
    format!("callhome_polls_total{{outcome=\"{outcome}\"}}")
}

// The default (current-thread) runtime on purpose: server and client share the thread, so a
// held request has registered for its wake-up before the test's next request can run, and
// every delivery is counted as one (not as a value found at once).
#[tokio::test]
async fn every_counter_moves_by_exactly_what_was_done() {
    if !crate::support::engine::memory_engine_feature("snapshots") {
        return;
    }
    let dir = temp_dir("metrics");
    let s = TestServer::spawn_with(|c| {
        unlimited(c);
        c.limits.poll_timeout = Duration::from_secs(1);
        c.limits.info_max_bytes = 16;
        c.store.snapshot_path = Some(dir.join("state"));
        c.store.snapshot_interval = Duration::from_millis(100);
    });
    let before = scrape(&s).await;
    assert_eq!(before.count("callhome_ids"), 0);

    // Ids: three created, one of them deleted.
    let polled = s.new_id().await;
    let streamed = s.new_id().await;
    let deleted = s.new_id().await;
    let r = s
        .client
        .delete(s.url(&format!("/v1/ids/{deleted}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    polls_and_notifies(&s, &polled, &streamed).await;
    event_stream(&s, &streamed).await;

    // Snapshots are written (every 100 ms after a change) and measured.
    let after = scrape_until(&s, "a snapshot", |m| {
        m.delta(&before, "callhome_snapshots_total{outcome=\"ok\"}") >= 1
            && m.count("callhome_snapshot_size_bytes") > 0
    })
    .await;
    assert!(dir.join("state").is_file());
    assert_eq!(
        after.count("callhome_snapshots_total{outcome=\"error\"}"),
        0
    );
    assert!(after.count("callhome_snapshot_duration_seconds_count") >= 1);

    assert_moved_exactly(
        &before,
        &after,
        &[
            ("callhome_ids_created_total", 3),
            ("callhome_ids_deleted_total", 1),
            (&notifies("delivered"), 2),
            (&notifies("stored"), 1),
            (&notifies("unknown_id"), 1),
            (&notifies("rejected"), 3),
            (&polls("immediate"), 1),
            (&polls("delivered"), 1),
            (&polls("timeout"), 1),
            (&polls("unknown_id"), 1),
            (&polls("rejected"), 1),
            ("callhome_event_streams_total{outcome=\"opened\"}", 1),
            // The woken poll and the event after "ready".
            ("callhome_delivery_seconds_count", 2),
            ("callhome_delivery_seconds_bucket{le=\"+Inf\"}", 2),
        ],
    );
    assert!(
        after.value("callhome_delivery_seconds_sum")
            > before.value("callhome_delivery_seconds_sum")
    );
    assert!(
        after.delta(&before, "callhome_connections_total{outcome=\"accepted\"}") >= 1,
        "the test's own connections were accepted"
    );
    assert_eq!(after.count("callhome_ids"), 2, "polled and streamed");
    assert_eq!(after.count(POLL), 0);
    assert_eq!(after.count(EVENTS), 0);

    // Ids are never labels, and keys never appear at all.
    for secret in [polled.as_str(), streamed.as_str(), deleted.as_str(), KEY] {
        assert!(!after.text.contains(secret), "{secret} in\n{}", after.text);
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every counter (`_total`, histogram `_count`) moved by exactly its `expected` amount, and
/// every other one not at all; snapshots and connections, which move on their own, aside.
fn assert_moved_exactly(before: &Scrape, after: &Scrape, expected: &[(&str, i64)]) {
    for (name, _) in expected {
        assert!(after.series.contains_key(*name), "{name} missing");
    }
    let counters = after.series.keys().filter(|name| {
        let metric = name.split('{').next().unwrap();
        (metric.ends_with("_total") || metric.ends_with("_count"))
            && !metric.starts_with("callhome_snapshot")
            && metric != "callhome_connections_total"
    });
    for name in counters {
        let want = expected
            .iter()
            .find(|(series, _)| series == name)
            .map_or(0, |(_, n)| *n);
        assert_eq!(after.delta(before, name), want, "{name}");
    }
    for (name, want) in expected {
        assert_eq!(after.delta(before, name), *want, "{name}");
    }
}

/// Notifies and polls of every outcome: 1 stored, 1 delivered, 1 unknown, 3 rejected
/// notifies; 1 immediate, 1 delivered, 1 timed out, 1 unknown, 1 rejected poll.
async fn polls_and_notifies(s: &TestServer, polled: &str, idle: &str) {
    // A notify nobody waits for is stored; the next poll finds it at once.
    assert_eq!(s.notify(KEY, polled, "one").await.status(), StatusCode::OK);
    let r = s.poll(polled, 0).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "one"})
    );

    // A held poll is a waiting client until a notify wakes it: one delivery.
    let held = s.spawn_poll(polled, 1);
    s.wait_for_waiters(polled, 1).await;
    assert_eq!(scrape(s).await.count(POLL), 1);
    let r = s.notify(KEY, polled, "two").await;
    assert_eq!(r.json::<Value>().await.unwrap()["waiting"], 1);
    let r = held.await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 2, "info": "two"})
    );
    assert_eq!(scrape(s).await.count(POLL), 0, "the poll was answered");

    // A poll nothing happens to times out.
    let r = s.poll(idle, 0).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Unknown ids and refusals, on both sides.
    let unknown = "metrics-no-such-id-0001";
    assert_eq!(s.poll(unknown, 0).await.status(), StatusCode::NOT_FOUND);
    let r = s.client.get(s.url("/v1/poll")).send().await.unwrap();
    assert_eq!(error_code(r).await, "invalid_parameters");
    assert_eq!(
        s.notify(KEY, unknown, "x").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = s.notify("not-the-key-0123456789", polled, "x").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s.notify(KEY, polled, &"x".repeat(17)).await;
    assert_eq!(error_code(r).await, "info_too_large");
    // A body past the body limit (6 * 16 + 1024 bytes here) is refused before it is read.
    let r = s.notify(KEY, polled, &"x".repeat(2_000)).await;
    assert_eq!(error_code(r).await, "body_too_large");
}

/// An event stream is a waiting client while it is open; a notify after it is ready is one
/// more delivery.
async fn event_stream(s: &TestServer, id: &str) {
    let mut stream = s
        .client
        .get(s.url(&format!("/v1/events?id={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: ready").await;
    assert_eq!(scrape(s).await.count(EVENTS), 1);
    let r = s.notify(KEY, id, "three").await;
    assert_eq!(r.json::<Value>().await.unwrap()["waiting"], 1);
    read_until(&mut stream, &mut seen, r#""info":"three""#).await;
    drop(stream);
    scrape_until(s, "the closed stream no longer waiting", |m| {
        m.count(EVENTS) == 0
    })
    .await;
}
