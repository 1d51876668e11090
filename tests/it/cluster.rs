//! Cluster mode on real Redis: two and three real nodes (in-process servers, each with its own
//! Redis engine, as separate processes would have) on one private `redis-server`, and the
//! faults between them and Redis, injected by stopping, pausing or restarting Redis or by a
//! [`FaultProxy`] on the nodes' links.
//!
//! Every outcome is exact: the answers each waiter got, the `seq`s each notify got, the
//! counters that moved. Waiter counts (`waiting`) are written by each node a few times a
//! second, so they are read in bounded polling loops; nothing here sleeps and hopes. Each
//! test returns early (passes vacuously) when `redis-server` is missing, except under
//! `CI=true`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use callhome::config::{Backend, Config, RateLimit, RedisUrl};
use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::events::{EventReader, data};
use crate::support::faultproxy::FaultProxy;
use crate::support::redis::{Fsync, RedisOptions, RedisServer, Sentinel, require_redis};
use crate::support::{self, KEY, KEY_TWO, TestServer, error_code};

/// How long anything that should happen "within seconds" may take before a test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// Waits a node began on its own copy of an id (docs/cluster.md).
const LOCAL_WATCHES: &str = "callhome_backplane_local_watches_total";
/// Polls waiting on a node right now.
const WAITING_POLLS: &str = "callhome_waiting{transport=\"poll\"}";
/// The default `store.command_timeout`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// What a refusal may take beyond the command timeout on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Nodes

/// A node on the Redis at `url`, named `name`, with every rate limit off and room for many
/// waiters per id; then `adjust`.
fn node(url: &str, name: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::spawn_with(|c| {
        support::unlimited(c);
        c.limits.max_waiters_per_id = 1_000;
        c.store.backend = Backend::Redis;
        c.store.redis_url = Some(RedisUrl::new(url.to_owned()));
        c.store.node_name = Some(name.to_owned());
        c.store.command_timeout = COMMAND_TIMEOUT;
        adjust(c);
    })
}

/// Nodes `names` on the Redis at `url`, each `adjust`ed, ready (`/readyz` 200) on return.
pub(crate) async fn nodes<const N: usize>(
    url: &str,
    names: [&str; N],
    adjust: impl Fn(&mut Config),
) -> [TestServer; N] {
    let nodes = names.map(|name| node(url, name, &adjust));
    for n in &nodes {
        until_ready(n, StatusCode::OK, WAIT).await;
    }
    nodes
}

/// Polls `check` every 20 ms until it gives a value; fails the test after `patience`.
pub(crate) async fn within<T>(
    patience: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, start.elapsed());
        }
        assert!(
            start.elapsed() < patience,
            "{what}: not within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/readyz`'s status (a request that fails or takes 2 s counts as 503).
async fn readyz(node: &TestServer) -> StatusCode {
    node.client
        .get(node.url("/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_or(StatusCode::SERVICE_UNAVAILABLE, |r| r.status())
}

/// Waits until `/readyz` answers `want`; returns how long that took.
async fn until_ready(node: &TestServer, want: StatusCode, patience: Duration) -> Duration {
    let what = format!("/readyz on {} answering {want}", node.addr);
    within(patience, &what, async || {
        (readyz(node).await == want).then_some(())
    })
    .await
    .1
}

/// `GET /v1/ids/{id}` as app one.
async fn status(node: &TestServer, id: &str) -> Response {
    node.client
        .get(node.url(&format!("/v1/ids/{id}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
}

async fn status_json(node: &TestServer, id: &str) -> Value {
    let r = status(node, id).await;
    assert_eq!(r.status(), StatusCode::OK, "status of {id}");
    r.json().await.unwrap()
}

/// Waits until `node` reports `n` clients waiting on `id` (every node's); returns how long.
async fn until_waiting(node: &TestServer, id: &str, n: u64) -> Duration {
    let what = format!("{n} waiting on {id}");
    within(WAIT, &what, async || {
        (status_json(node, id).await["waiting"] == n).then_some(())
    })
    .await
    .1
}

async fn delete(node: &TestServer, key: &str, id: &str) -> Response {
    node.client
        .delete(node.url(&format!("/v1/ids/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Whether `waiting` on `id` comes to `n` within [`WAIT`]: `Ok(how long)`, or `Err` with the
/// last count seen. For a check made at the end of a test, so that what comes after runs too.
async fn settles_at(node: &TestServer, id: &str, n: u64) -> Result<Duration, Value> {
    let start = Instant::now();
    loop {
        let seen = status_json(node, id).await["waiting"].clone();
        if seen == n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > WAIT {
            return Err(seen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_settled(settled: Result<Duration, Value>, n: u64) {
    if let Err(seen) = settled {
        panic!("waiting stayed at {seen}, not the {n} actually waiting, for {WAIT:?}");
    }
}

/// `GET /v1/poll`, with `&epoch=` when given.
fn poll_path(id: &str, since: u64, epoch: Option<u64>) -> String {
    match epoch {
        Some(epoch) => format!("/v1/poll?id={id}&since={since}&epoch={epoch}"),
        None => format!("/v1/poll?id={id}&since={since}"),
    }
}

async fn poll(node: &TestServer, id: &str, since: u64, epoch: Option<u64>) -> (StatusCode, Value) {
    let r = node
        .client
        .get(node.url(&poll_path(id, since, epoch)))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A client that polls `node` from `(since, epoch)` until it gets `final_info`, following
/// each answer's cursor as a browser does; every 200 answer it got, in order. A poll that
/// times out (204) is asked again; any other answer fails the test.
fn poller(
    node: &TestServer,
    id: &str,
    since: u64,
    epoch: Option<u64>,
    final_info: &'static str,
) -> Task<Vec<Value>> {
    let client = node.client.clone();
    let base = node.url("");
    let id = id.to_owned();
    Task::spawn(async move {
        let (mut since, mut epoch) = (since, epoch);
        let mut answers = Vec::new();
        for _ in 0..20 {
            let r = client
                .get(format!("{base}{}", poll_path(&id, since, epoch)))
                .send()
                .await
                .unwrap();
            match r.status() {
                StatusCode::OK => {
                    let value: Value = r.json().await.unwrap();
                    since = value["seq"].as_u64().unwrap();
                    epoch = epoch.map(|_| value["epoch"].as_u64().unwrap());
                    let done = value["info"] == final_info;
                    answers.push(value);
                    if done {
                        return answers;
                    }
                }
                StatusCode::NO_CONTENT => {}
                other => panic!("poll answered {other}: {}", r.text().await.unwrap()),
            }
        }
        panic!("no {final_info:?} in 20 polls: {answers:?}");
    })
}

/// Opens `/v1/events?{query}` on `node` (with `Last-Event-ID` when given) and reads its
/// `ready` event: the stream's waiting place is taken and counted once this returns.
async fn stream(node: &TestServer, query: &str, last_event_id: Option<&str>) -> EventReader {
    let mut request = node.client.get(node.url(&format!("/v1/events?{query}")));
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut reader = EventReader::new(r);
    assert_eq!(
        reader.next_event().await.unwrap(),
        ["event: ready", "data: {}"]
    );
    reader
}

/// A value event's `id:` line.
fn event_id(block: &[String]) -> &str {
    block
        .iter()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id in {block:?}"))
}

/// Reads value events until one with `final_info`; each as (event id, data).
fn stream_reader(mut reader: EventReader, final_info: &'static str) -> Task<Vec<(String, Value)>> {
    Task::spawn(async move {
        let mut events = Vec::new();
        loop {
            let block = reader
                .next_event()
                .await
                .unwrap_or_else(|| panic!("the stream ended after {events:?}"));
            let value = data(&block);
            let done = value["info"] == final_info;
            events.push((event_id(&block).to_owned(), value));
            if done {
                return events;
            }
        }
    })
}

/// A client running in the background, stopped when dropped (so that a failed test does not
/// leave it to fail again, noisily, as its nodes go away).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    fn spawn(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(work))
    }

    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A poll held in the background ([`TestServer::spawn_poll`]).
fn held_poll(node: &TestServer, id: &str, since: u64) -> Task<Response> {
    Task(node.spawn_poll(id, since))
}

/// Awaits `task` for at most `patience`.
async fn join<T>(mut task: Task<T>, patience: Duration, what: &str) -> T {
    tokio::time::timeout(patience, &mut task.0)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {patience:?}"))
        .unwrap()
}

/// The epoch Redis holds now (the nodes settle it on connecting).
async fn redis_epoch(redis: &RedisServer) -> u64 {
    redis.cmd(&["HGET", "ch:ep", "ep"]).await.parse().unwrap()
}

/// A `503 backplane_unavailable` with `Retry-After`, taken within `bound`.
async fn assert_unavailable(what: &str, took: Duration, r: Response, bound: Duration) {
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(r.headers()["retry-after"], "2", "{what}");
    assert_eq!(error_code(r).await, "backplane_unavailable", "{what}");
    assert!(took <= bound, "{what} took {took:?}, more than {bound:?}");
}

/// A notify, timed.
async fn timed_notify(node: &TestServer, id: &str, info: &str) -> (Duration, Response) {
    let start = Instant::now();
    let r = node.notify(KEY, id, info).await;
    (start.elapsed(), r)
}

// ---------------------------------------------------------------------------------------------
// Any node serves any id

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_on_one_node_answers_a_poll_held_on_another() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |_| {}).await;
    let id = a.new_id().await;
    let held = held_poll(&b, &id, 0);
    until_waiting(&a, &id, 1).await;
    assert!(!held.is_finished(), "nothing to answer yet");

    let r = c.notify(KEY, &id, "hello").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "waiting": 1, "delivery": "woken"})
    );
    let r = join(held, WAIT, "the poll held on b").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "hello"})
    );
    for n in [&a, &b, &c] {
        let seen = status_json(n, &id).await;
        assert_eq!(seen["seq"], 1, "{seen}");
        assert_eq!(seen["id"], id.as_str(), "{seen}");
    }
    until_waiting(&a, &id, 0).await;

    // A client that deals in epochs learns this Redis's, from any node.
    let epoch = redis_epoch(&redis).await;
    assert_ne!(epoch, 0);
    for n in [&a, &b, &c] {
        assert_eq!(
            poll(n, &id, 0, Some(0)).await,
            (
                StatusCode::OK,
                json!({"seq": 1, "info": "hello", "epoch": epoch})
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_with_wait_on_one_node_counts_the_deliveries_made_on_the_others() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |_| {}).await;
    let id = a.new_id().await;
    let on_b = [held_poll(&b, &id, 0), held_poll(&b, &id, 0)];
    let mut on_c = stream(&c, &format!("id={id}"), None).await;
    until_waiting(&a, &id, 3).await;

    let r = a
        .client
        .post(a.url(&format!("/v1/ids/{id}/notify?wait=10s")))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body("to b and c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "waiting": 3, "delivery": "woken", "delivered": 3})
    );
    for p in on_b {
        assert_eq!(join(p, WAIT, "a poll on b").await.status(), StatusCode::OK);
    }
    let event = on_c.next_event().await.unwrap();
    assert_eq!(event_id(&event), "1");
    // Every node shows the delivery in the id's status (written with the delivering nodes'
    // waiter counts, within tens of milliseconds).
    for n in [&a, &b, &c] {
        let (seen, _) = within(WAIT, "the delivery in the status", async || {
            let seen = status_json(n, &id).await;
            (seen["delivered_seq"] == 1).then_some(seen)
        })
        .await;
        assert!(seen["delivered_at"].is_string(), "{seen}");
    }
    // Deliveries of a notify that does not wait are not counted in Redis: no tally.
    let plain = a.new_id().await;
    let mut on_b = stream(&b, &format!("id={plain}"), None).await;
    until_waiting(&a, &plain, 1).await;
    assert_eq!(
        a.notify(KEY, &plain, "untallied").await.status(),
        StatusCode::OK
    );
    assert_eq!(event_id(&on_b.next_event().await.unwrap()), "1");
    within(WAIT, "the plain notify delivered", async || {
        (status_json(&a, &plain).await["delivered_seq"] == 1).then_some(())
    })
    .await;
    let tally = format!("ch:dc:{plain}");
    assert_eq!(redis.cmd(&["EXISTS", &tally]).await, "0");
    drop(on_c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_another_node_resumes_after_last_event_id() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |_| {}).await;
    let id = a.new_id().await;
    for info in ["a", "b", "c"] {
        assert_eq!(a.notify(KEY, &id, info).await.status(), StatusCode::OK);
    }
    // Up to date at 3 (the header wins over the query): nothing until the next notify.
    let mut events = stream(&b, &format!("id={id}&since=0"), Some("3")).await;
    until_waiting(&c, &id, 1).await;
    let r = a.notify(KEY, &id, "d").await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 4, "waiting": 1, "delivery": "woken"})
    );
    let block = events.next_event().await.unwrap();
    assert_eq!(event_id(&block), "4");
    assert_eq!(data(&block), json!({"seq": 4, "info": "d"}));

    // Behind (at 2): the newest value at once, on a third node.
    let mut behind = stream(&c, &format!("id={id}"), Some("2")).await;
    let block = behind.next_event().await.unwrap();
    assert_eq!(event_id(&block), "4");
    assert_eq!(data(&block), json!({"seq": 4, "info": "d"}));

    // With the epoch in the event id: resumed in the same epoch, then told of the next value
    // with its epoch; from another epoch, told to reset at once.
    let epoch = redis_epoch(&redis).await;
    let mut same = stream(&b, &format!("id={id}"), Some(&format!("4:{epoch}"))).await;
    let other = if epoch == 1 { 2 } else { 1 };
    let mut stale = stream(&a, &format!("id={id}"), Some(&format!("4:{other}"))).await;
    let block = stale.next_event().await.unwrap();
    assert_eq!(event_id(&block), format!("4:{epoch}"));
    assert_eq!(
        data(&block),
        json!({"seq": 4, "info": "d", "epoch": epoch, "reset": true})
    );
    // Waiting now: `events` and `behind` (plain) and `same` and `stale` (epoch).
    until_waiting(&a, &id, 4).await;
    assert_eq!(c.notify(KEY, &id, "e").await.status(), StatusCode::OK);
    let block = same.next_event().await.unwrap();
    assert_eq!(event_id(&block), format!("5:{epoch}"));
    assert_eq!(data(&block), json!({"seq": 5, "info": "e", "epoch": epoch}));
    let block = stale.next_event().await.unwrap();
    assert_eq!(event_id(&block), format!("5:{epoch}"));
    assert_eq!(data(&block), json!({"seq": 5, "info": "e", "epoch": epoch}));
    for reader in [&mut events, &mut behind] {
        let block = reader.next_event().await.unwrap();
        assert_eq!(event_id(&block), "5");
        assert_eq!(data(&block), json!({"seq": 5, "info": "e"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_node_ends_the_waiters_on_the_others() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |_| {}).await;
    let id = a.new_id().await;
    let held = held_poll(&b, &id, 0);
    let mut on_b = stream(&b, &format!("id={id}"), None).await;
    let mut on_c = stream(&c, &format!("id={id}"), None).await;
    until_waiting(&a, &id, 3).await;

    let r = delete(&a, KEY, &id).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = join(held, WAIT, "the poll held on b").await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(error_code(r).await, "gone");
    for reader in [&mut on_b, &mut on_c] {
        let block = tokio::time::timeout(WAIT, reader.next_event())
            .await
            .expect("the stream hears of the delete");
        assert_eq!(block.unwrap(), ["event: gone", "data: {}"]);
        assert_eq!(reader.next_event().await, None, "and ends");
    }
    for n in [&a, &b, &c] {
        let r = status(n, &id).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(r).await, "unknown_id");
        assert_eq!(poll(n, &id, 0, None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            n.notify(KEY, &id, "late").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(delete(n, KEY, &id).await.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_nobody_waits_on_expires_on_every_node_and_one_waited_on_stays() {
    if !require_redis() {
        return;
    }
    // The shortest idle time there is (1 s is the minimum, and it must outlast a poll).
    let ttl = Duration::from_secs(2);
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |c| {
        c.limits.id_idle_ttl = ttl;
        c.limits.poll_timeout = Duration::from_secs(1);
    })
    .await;
    let created = Instant::now();
    let idle = a.new_id().await;
    let streamed = a.new_id().await;
    let polled = a.new_id().await;
    // `streamed` has a stream open on b all along; `polled` a client on c that polls again
    // whenever its poll times out (every second).
    let events = stream_reader(stream(&b, &format!("id={streamed}"), None).await, "news");
    let looping = poller(&c, &polled, 0, None, "news");

    let what = "the idle id expiring";
    let ((), _) = within(ttl + Duration::from_secs(3), what, async || {
        (status(&a, &idle).await.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let expired_after = created.elapsed();
    assert!(
        expired_after >= ttl.saturating_sub(Duration::from_millis(100)),
        "expired after {expired_after:?}, before its idle time {ttl:?}"
    );
    // Half an idle time more: the waited-on ids have outlived theirs by then.
    tokio::time::sleep_until((created + ttl + ttl / 2).into()).await;
    for n in [&a, &b, &c] {
        let r = status(n, &idle).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(r).await, "unknown_id");
        assert_eq!(poll(n, &idle, 0, None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            n.notify(KEY, &idle, "late").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(status_json(n, &streamed).await["seq"], 0);
        assert_eq!(status_json(n, &polled).await["seq"], 0);
    }
    assert_eq!(redis.cmd(&["EXISTS", &format!("ch:i:{idle}")]).await, "0");
    for id in [&streamed, &polled] {
        let r = a.notify(KEY, id, "news").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["seq"], 1);
    }
    let events = join(events, WAIT, "the stream on b").await;
    assert_eq!(
        events,
        [("1".to_owned(), json!({"seq": 1, "info": "news"}))]
    );
    let answers = join(looping, WAIT, "the polling client on c").await;
    assert_eq!(answers, [json!({"seq": 1, "info": "news"})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_ids_give_their_places_back_exactly_on_every_node() {
    if !require_redis() {
        return;
    }
    let ttl = Duration::from_secs(2);
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |c| {
        c.limits.id_idle_ttl = ttl;
        c.limits.poll_timeout = Duration::from_secs(1);
        c.limits.max_ids = 50;
        c.apps[0].max_ids = Some(6);
    })
    .await;
    let all = [&a, &b, &c];
    let quota = |n| ((429, Some("app_quota_exceeded".to_owned())), n);
    let created = |n| ((201, None), n);
    let first = creates_at_once(&all, KEY, 20).await;
    assert_eq!(first, BTreeMap::from([created(6), quota(14)]));
    assert_eq!(b.metric("callhome_ids").await, 6);
    let old_buckets = redis.cmd(&["ZRANGE", "ch:ae:one", "0", "-1"]).await;
    assert!(!old_buckets.is_empty());

    // Once they have expired (their TTL, rounded up to the end of their expiry bucket), the
    // same places are free again: no more, no fewer.
    let ((), _) = within(
        ttl + Duration::from_secs(3),
        "the ids expiring",
        async || (redis.cmd(&["KEYS", "ch:i:*"]).await.is_empty()).then_some(()),
    )
    .await;
    assert_eq!(c.metric("callhome_ids").await, 0);
    let again = creates_at_once(&all, KEY, 20).await;
    assert_eq!(again, BTreeMap::from([created(6), quota(14)]));
    assert_eq!(redis.cmd(&["HGET", "ch:ab:one", "n"]).await, "6");
    assert_eq!(a.metric("callhome_ids").await, 6);
    // The buckets that ended are forgotten, with their counts.
    let buckets = redis.cmd(&["ZRANGE", "ch:ae:one", "0", "-1"]).await;
    for old in old_buckets.lines() {
        assert!(
            !buckets.lines().any(|b| b == old),
            "bucket {old} outlived its ids"
        );
        assert_eq!(redis.cmd(&["HEXISTS", "ch:ab:one", old]).await, "0");
    }
}

/// A create for `key` on `node`: its status and error code (`None` when created).
async fn create(node: &TestServer, key: &str) -> (StatusCode, Option<String>) {
    let r = node.create(key, None).await;
    match r.status() {
        StatusCode::CREATED => (StatusCode::CREATED, None),
        status => (status, Some(error_code(r).await)),
    }
}

/// `n` creates for `key` at once, spread over `nodes`: how many ended how.
pub(crate) async fn creates_at_once(
    nodes: &[&TestServer],
    key: &str,
    n: usize,
) -> BTreeMap<(u16, Option<String>), usize> {
    let creates = (0..n).map(|i| create(nodes[i % nodes.len()], key));
    let mut outcomes = BTreeMap::new();
    for (status, code) in join_all(creates).await {
        *outcomes.entry((status.as_u16(), code)).or_insert(0) += 1;
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ids_and_the_app_quota_are_exact_under_creates_racing_over_three_nodes() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |c| {
        c.limits.max_ids = 50;
        c.apps[0].max_ids = Some(30);
        c.apps[1].max_ids = Some(50);
    })
    .await;
    let all = [&a, &b, &c];
    let quota = |n| ((429, Some("app_quota_exceeded".to_owned())), n);
    let full = |n| ((503, Some("too_many_ids".to_owned())), n);
    let created = |n| ((201, None), n);

    // App one: its quota of 30 binds first.
    let outcomes = creates_at_once(&all, KEY, 200).await;
    assert_eq!(outcomes, BTreeMap::from([created(30), quota(170)]));
    // App two: the 20 left of max_ids.
    let outcomes = creates_at_once(&all, KEY_TWO, 200).await;
    assert_eq!(outcomes, BTreeMap::from([created(20), full(180)]));
    // The apps' totals in Redis, and the ids themselves, agree.
    assert_eq!(redis.cmd(&["HGET", "ch:ab:one", "n"]).await, "30");
    assert_eq!(redis.cmd(&["HGET", "ch:ab:two", "n"]).await, "20");
    assert_eq!(redis.cmd(&["HGET", "ch:gb", "n"]).await, "50");
    let keys = redis.cmd(&["KEYS", "ch:i:*"]).await;
    let mut owners = BTreeMap::new();
    for key in keys.lines() {
        let owner = redis.cmd(&["HGET", key, "a"]).await;
        owners
            .entry(owner)
            .or_insert_with(Vec::new)
            .push(key.to_owned());
    }
    assert_eq!(owners.values().map(Vec::len).collect::<Vec<_>>(), [30, 20]);

    // One delete frees exactly one place, wherever it is made and used.
    let id = owners["one"][0].strip_prefix("ch:i:").unwrap();
    assert_eq!(delete(&b, KEY, id).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(redis.cmd(&["HGET", "ch:ab:one", "n"]).await, "29");
    let outcomes = creates_at_once(&all, KEY, 10).await;
    assert_eq!(outcomes, BTreeMap::from([created(1), quota(9)]));
    let outcomes = creates_at_once(&all, KEY_TWO, 10).await;
    assert_eq!(outcomes, BTreeMap::from([full(10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_app_notify_rate_limit_holds_across_nodes() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |c| {
        c.rate_limits.notify_per_app = RateLimit {
            per_second: 1,
            burst: 10,
        };
    })
    .await;
    let id = a.new_id().await;
    let all = [&a, &b, &c];
    let start = Instant::now();
    let notifies = (0..30).map(|i| all[i % 3].notify(KEY, &id, "x"));
    let answers = join_all(notifies).await;
    let took = start.elapsed();
    let mut seqs = Vec::new();
    let mut limited = 0;
    for r in answers {
        match r.status() {
            StatusCode::OK => seqs.push(r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                assert_eq!(error_code(r).await, "rate_limited");
                limited += 1;
            }
            other => panic!("a notify answered {other}"),
        }
    }
    seqs.sort_unstable();
    // One more token a second: exact while the burst takes under a second, which it does by
    // far on loopback; if the machine was that slow, say so rather than fail on the count.
    let refilled = usize::try_from(took.as_secs()).unwrap();
    assert!(
        seqs.len() >= 10 && seqs.len() <= 10 + refilled,
        "{} accepted in {took:?}",
        seqs.len()
    );
    if refilled == 0 {
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(limited, 20);
    }
    // Per app: app two's bucket is its own.
    let other = b.new_id_for(KEY_TWO).await;
    assert_eq!(
        c.notify(KEY_TWO, &other, "y").await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_counts_the_waiters_of_every_node() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |_| {}).await;
    let id = c.new_id().await;
    let mut polls: Vec<_> = (0..3).map(|_| held_poll(&a, &id, 0)).collect();
    polls.extend((0..2).map(|_| held_poll(&b, &id, 0)));
    let took = until_waiting(&c, &id, 5).await;
    let r = c.notify(KEY, &id, "five").await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "waiting": 5, "delivery": "woken"})
    );
    for p in polls {
        let r = join(p, WAIT, "a poll").await;
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"seq": 1, "info": "five"})
        );
    }
    let back = until_waiting(&a, &id, 0).await;
    eprintln!("5 waiters counted within {took:?}, back to 0 within {back:?}");
}

/// A notify reads the waiter fields of the live nodes one by one while there are at most 8
/// others, and the whole id beyond that (src/store/cluster/scripts.lua, `read_plan`): both
/// count the same nodes, and only the second prunes the fields of nodes long gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_counts_the_same_waiters_with_few_nodes_and_with_many() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, _b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let key = format!("ch:i:{id}");
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000)
        .to_string();
    // `x` holds 2 clients and its heartbeat runs; `late`'s heartbeat ran out (its 7 do not
    // count); `gone` was forgotten by the heartbeat script (its 4 neither).
    redis
        .cmd(&["HSET", "ch:nodes", "x", &later, "late", "1"])
        .await;
    redis
        .cmd(&["HSET", &key, "w.x", "2", "w.late", "7", "w.gone", "4"])
        .await;
    let notify = async |info: &str| {
        let r = a.notify(KEY, &id, info).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    assert_eq!(
        notify("few").await,
        json!({"seq": 1, "waiting": 2, "delivery": "woken"})
    );
    assert_eq!(redis.cmd(&["HEXISTS", &key, "w.gone"]).await, "1");

    let many: Vec<String> = (0..9).map(|i| format!("n{i}")).collect();
    for name in &many {
        redis.cmd(&["HSET", "ch:nodes", name, &later]).await;
    }
    assert_eq!(
        notify("many").await,
        json!({"seq": 2, "waiting": 2, "delivery": "woken"})
    );
    assert_eq!(
        redis.cmd(&["HEXISTS", &key, "w.gone"]).await,
        "0",
        "pruned by the whole read"
    );
    assert_eq!(redis.cmd(&["HEXISTS", &key, "w.late"]).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_forgets_the_waiters_of_a_node_that_is_gone() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let on_a = held_poll(&a, &id, 0);
    let on_b: Vec<_> = (0..2).map(|_| held_poll(&b, &id, 0)).collect();
    until_waiting(&a, &id, 3).await;
    // b goes away with its waiters (in-process, so by shutdown, not `kill -9`): it writes no
    // count on the way out, so only its heartbeat running out can put `waiting` right.
    drop(b);
    for p in on_b {
        assert_eq!(
            join(p, WAIT, "b's poll").await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let took = until_waiting(&a, &id, 1).await;
    eprintln!("b's waiters forgotten within {took:?}");
    assert_eq!(a.notify(KEY, &id, "x").await.status(), StatusCode::OK);
    assert_eq!(join(on_a, WAIT, "a's poll").await.status(), StatusCode::OK);
}

/// Redis forgets its scripts (SCRIPT FLUSH, or a restart a node has not noticed yet): every
/// call that meets NOSCRIPT loads its script again and runs, no request fails for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_under_traffic_are_loaded_again_and_no_request_fails() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let mut events = stream(&b, &format!("id={id}"), None).await;
    until_waiting(&a, &id, 1).await;
    for round in 0..3_u64 {
        redis.cmd(&["SCRIPT", "FLUSH"]).await;
        // Notifies (batched), creates, looks and status reads, all after the flush.
        let notifies = (0..50).map(|i| {
            let (a, id) = (&a, id.as_str());
            async move {
                let r = a.notify(KEY, id, &format!("{round}-{i}")).await;
                assert_eq!(r.status(), StatusCode::OK, "notify {round}-{i}");
            }
        });
        join_all(notifies).await;
        let fresh = b.new_id().await;
        // A cursor ahead of the id's seq is answered at once (a look, the touch script).
        assert_eq!(b.poll(&fresh, 5).await.status(), StatusCode::OK);
        assert_eq!(status_json(&b, &fresh).await["seq"], 0);
        let seq = status_json(&a, &id).await["seq"].as_u64().unwrap();
        assert_eq!(seq, 50 * (round + 1), "every notify counted once");
    }
    // The stream on b saw seq reach the last one.
    loop {
        let value = data(&events.next_event().await.expect("the stream goes on"));
        if value["seq"] == 150 {
            break;
        }
    }
    // The flushes were met, not dodged: Redis answered NOSCRIPT after each.
    let errors = redis.cmd(&["INFO", "errorstats"]).await;
    let noscript: u64 = errors
        .lines()
        .find_map(|l| l.strip_prefix("errorstat_NOSCRIPT:count="))
        .map_or(0, |n| n.trim().parse().unwrap());
    assert!(noscript >= 3, "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_racing_on_two_nodes_get_every_seq_once_and_every_node_sees_them_in_order() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b, c] = nodes(&redis.url(), ["a", "b", "c"], |_| {}).await;
    let id = c.new_id().await;
    let mut readers = Vec::new();
    for n in [&a, &b, &c] {
        readers.push(stream(n, &format!("id={id}"), None).await);
    }
    until_waiting(&c, &id, 3).await;
    // Each reader runs until it has seen seq 400, whatever its info.
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            Task::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let block = reader.next_event().await.expect("the stream goes on");
                    let value = data(&block);
                    let seq = value["seq"].as_u64().unwrap();
                    assert_eq!(event_id(&block), seq.to_string());
                    seen.push((seq, value["info"].as_str().unwrap().to_owned()));
                    if seq == 400 {
                        return seen;
                    }
                }
            })
        })
        .collect();

    let id = id.as_str();
    let notifies = (0..200).flat_map(|i| {
        [(&a, format!("a-{i}")), (&b, format!("b-{i}"))].map(|(n, info)| async move {
            let r = n.notify(KEY, id, &info).await;
            assert_eq!(r.status(), StatusCode::OK, "{info}");
            let seq = r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
            (seq, info)
        })
    });
    let sent: BTreeMap<u64, String> = join_all(notifies).await.into_iter().collect();
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (1..=400).collect::<Vec<_>>(),
        "every seq exactly once"
    );
    for (node, reader) in ["a", "b", "c"].into_iter().zip(readers) {
        let seen = join(reader, WAIT, "a stream reaching seq 400").await;
        for pair in seen.windows(2) {
            assert!(pair[0].0 < pair[1].0, "on {node}: {pair:?} out of order");
        }
        for (seq, info) in &seen {
            assert_eq!(&sent[seq], info, "on {node}: seq {seq} with another's info");
        }
        assert_eq!(seen.last().unwrap().1, sent[&400], "on {node}");
        eprintln!("{node} saw {} of the 400 values", seen.len());
    }
    assert_eq!(status_json(&a, id).await["seq"], 400);
}

// ---------------------------------------------------------------------------------------------
// Faults

/// Clients waiting in the background, each until the value "final".
struct Waiters {
    polls: Vec<Task<Vec<Value>>>,
    streams: Vec<Task<Vec<(String, Value)>>>,
}

/// `polls` pollers and `streams` streams on `node` for `id`, from `since` at `epoch`, each
/// until the value "final".
async fn waiters(
    node: &TestServer,
    id: &str,
    (since, epoch): (u64, u64),
    polls: usize,
    streams: usize,
) -> Waiters {
    let mut w = Waiters {
        polls: (0..polls)
            .map(|_| poller(node, id, since, Some(epoch), "final"))
            .collect(),
        streams: Vec::new(),
    };
    for _ in 0..streams {
        let query = format!("id={id}&since={since}&epoch={epoch}");
        w.streams
            .push(stream_reader(stream(node, &query, None).await, "final"));
    }
    w
}

/// Found a bug (fixed): `hints::resync` read its pipeline (the epoch, then one `HMGET` per
/// local id) into a 2-tuple, so a node holding two or more ids repaired nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story, told in order
async fn waiters_get_the_final_value_once_after_a_redis_restart() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default().aof(Fsync::Always)).await;
    // a talks to Redis directly; b, where the clients wait, through a proxy, so that b can be
    // kept away for a while after Redis is back.
    let proxy = FaultProxy::start(redis.addr());
    let [a] = nodes(&redis.url(), ["a"], |_| {}).await;
    let [b] = nodes(&redis.url_via(proxy.addr()), ["b"], |_| {}).await;
    // `seen` has a value the waiters know, with its epoch; `fresh` has none, and its waiters
    // know no epoch yet (`&epoch=0`).
    let seen = a.new_id().await;
    let fresh = a.new_id().await;
    assert_eq!(a.notify(KEY, &seen, "v1").await.status(), StatusCode::OK);
    let before = redis_epoch(&redis).await;
    // 1,000 polls and 100 streams in all, half on each id.
    let on_seen = waiters(&b, &seen, (1, before), 500, 50).await;
    let on_fresh = waiters(&b, &fresh, (0, 0), 500, 50).await;
    until_waiting(&a, &seen, 550).await;
    until_waiting(&a, &fresh, 550).await;
    let resyncs = b.metric("callhome_backplane_resyncs_total").await;

    redis.stop().await;
    for i in 0..3 {
        let (took, r) = timed_notify(&a, &seen, "lost").await;
        assert_unavailable(&format!("notify {i}"), took, r, Duration::from_millis(1200)).await;
    }
    let start = Instant::now();
    let r = a.create(KEY, None).await;
    assert_unavailable("create", start.elapsed(), r, COMMAND_TIMEOUT + SLACK).await;
    let start = Instant::now();
    let r = delete(&b, KEY, &fresh).await;
    assert_unavailable("delete", start.elapsed(), r, COMMAND_TIMEOUT + SLACK).await;
    for n in [&a, &b] {
        until_ready(n, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    }

    // Redis comes back (with everything it acknowledged, and a new run id); b cannot reach
    // it yet. The news is sent meanwhile: b's waiters can only learn of it by reading again.
    proxy.refuse(true);
    redis.restart().await;
    let a_back = until_ready(&a, StatusCode::OK, Duration::from_secs(5)).await;
    let after = redis_epoch(&redis).await;
    assert_ne!(after, before, "a restarted Redis is a new epoch");
    let r = a.notify(KEY, &seen, "final").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["seq"], 2, "nothing lost");
    let r = a.notify(KEY, &fresh, "final").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["seq"], 1);
    assert_eq!(readyz(&b).await, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        on_seen
            .polls
            .iter()
            .chain(&on_fresh.polls)
            .all(|p| !p.is_finished()),
        "polls stay open while their node is away from Redis"
    );

    proxy.refuse(false);
    let b_back = until_ready(&b, StatusCode::OK, WAIT).await;
    // The clients that saw seq 1 of the old epoch get seq 2 of the new one, told to reset;
    // those that knew no epoch get their first value, with no reset: they saw nothing.
    let reset_seen = json!({"seq": 2, "info": "final", "epoch": after, "reset": true});
    let final_fresh = json!({"seq": 1, "info": "final", "epoch": after});
    let mut finals = 0;
    for (polls, expected) in [(on_seen.polls, &reset_seen), (on_fresh.polls, &final_fresh)] {
        for p in polls {
            let answers = join(p, WAIT, "a poll on b").await;
            assert_eq!(answers, std::slice::from_ref(expected));
            finals += 1;
        }
    }
    let streams = [
        (on_seen.streams, format!("2:{after}"), &reset_seen),
        (on_fresh.streams, format!("1:{after}"), &final_fresh),
    ];
    for (streams, event, expected) in streams {
        for s in streams {
            let events = join(s, WAIT, "a stream on b").await;
            assert_eq!(events, [(event.clone(), expected.clone())]);
            finals += 1;
        }
    }
    assert_eq!(
        finals, 1100,
        "every waiter got the final value exactly once"
    );
    assert!(b.metric("callhome_backplane_resyncs_total").await > resyncs);
    eprintln!("a ready {a_back:?} after Redis restarted, b {b_back:?} after it could reach it");
}

/// Found a bug (fixed): `hints::resync` read its pipeline (the epoch, then one `HMGET` per
/// local id) into a 2-tuple, so a node holding two or more ids repaired nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_ids_a_restart_without_persistence_lost_are_released_as_gone() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let ids = [a.new_id().await, a.new_id().await];
    let mut polls = Vec::new();
    let mut streams = Vec::new();
    // 1,000 polls and 100 streams in all, half on each id.
    for id in &ids {
        polls.extend((0..500).map(|_| held_poll(&b, id, 0)));
        for _ in 0..50 {
            streams.push(stream(&b, &format!("id={id}"), None).await);
        }
        until_waiting(&a, id, 550).await;
    }
    redis.restart().await;
    // Every id is lost (the nodes may already have written their heartbeats and the epoch).
    let ids_left = ["EVAL", "return #redis.call('KEYS', 'ch:i:*')", "0"];
    assert_eq!(redis.cmd(&ids_left).await, "0", "Redis lost every id");
    for p in polls {
        let r = join(p, WAIT, "a poll on an id that is no more").await;
        assert_eq!(r.status(), StatusCode::GONE);
        assert_eq!(error_code(r).await, "gone");
    }
    for mut s in streams {
        let block = tokio::time::timeout(WAIT, s.next_event())
            .await
            .expect("the stream hears that its id is gone");
        assert_eq!(block.unwrap(), ["event: gone", "data: {}"]);
        assert_eq!(s.next_event().await, None);
    }
    // (A node may still hold a connection to the Redis that died, and answer one request
    // with 503 before it notices: the client retries, as Retry-After says.)
    for id in &ids {
        let (code, _) = within(WAIT, "an answer from the new Redis", async || {
            let code = status(&a, id).await.status();
            (code != StatusCode::SERVICE_UNAVAILABLE).then_some(code)
        })
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
}

/// Found a bug (fixed): the `waiting` Lua function deleted the count fields of nodes whose
/// heartbeat ran out (every node's, after an outage longer than 6 s), and a node wrote again
/// only the counts that changed, so `waiting` under-counted for up to a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_recovers_after_a_redis_outage_longer_than_a_heartbeat() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default().aof(Fsync::Always)).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let mut polls: Vec<_> = (0..2).map(|_| held_poll(&b, &id, 0)).collect();
    polls.push(held_poll(&a, &id, 0));
    until_waiting(&a, &id, 3).await;
    redis.stop().await;
    // Longer than a node's heartbeat counts (6 s): when Redis is back, every node looks dead
    // until it beats again.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    redis.restart().await;
    for n in [&a, &b] {
        until_ready(n, StatusCode::OK, WAIT).await;
    }
    // The three polls wait on; `waiting` must come back to 3 within seconds.
    let settled = settles_at(&a, &id, 3).await;
    let r = a.notify(KEY, &id, "x").await;
    assert_eq!(r.status(), StatusCode::OK);
    for p in polls {
        assert_eq!(join(p, WAIT, "a poll").await.status(), StatusCode::OK);
    }
    assert_settled(settled, 3);
}

/// Found a bug (fixed): `hints::resync` read its pipeline (the epoch, then one `HMGET` per
/// local id) into a 2-tuple, so a node holding two or more ids repaired nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_made_while_the_subscriber_link_is_cut_still_reach_the_waiters() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let [a, b] = nodes(&redis.url_via(proxy.addr()), ["a", "b"], |_| {}).await;
    proxy
        .wait_until("two subscribers", WAIT, |p| p.live_subscribers() == 2)
        .await;
    // Three ids with a poll held on b each (a node re-reads all it holds at once).
    let mut held = Vec::new();
    for _ in 0..3 {
        let id = a.new_id().await;
        held.push((held_poll(&b, &id, 0), id));
    }
    for (_, id) in &held {
        until_waiting(&a, id, 1).await;
    }
    let resyncs = b.metric("callhome_backplane_resyncs_total").await;
    let reconnects = b.metric("callhome_backplane_reconnects_total").await;

    // Cut both nodes' subscriptions, and keep them from subscribing again for now: commands
    // still work (their connections are left alone), hints reach nobody.
    proxy.refuse(true);
    assert_eq!(proxy.cut_subscribers(), 2);
    within(WAIT, "redis forgetting the subscribers", async || {
        redis
            .cmd(&["PUBSUB", "CHANNELS", "ch:h"])
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    for (_, id) in &held {
        let r = a.notify(KEY, id, "while cut").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"seq": 1, "waiting": 1, "delivery": "woken"})
        );
    }
    // b knows it is not subscribed.
    until_ready(&b, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    assert!(
        held.iter().all(|(p, _)| !p.is_finished()),
        "the hints went to nobody"
    );

    proxy.refuse(false);
    let start = Instant::now();
    for (p, _) in held {
        let r = join(p, WAIT, "a poll on b, repaired").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"seq": 1, "info": "while cut"})
        );
    }
    let took = start.elapsed();
    until_ready(&b, StatusCode::OK, Duration::from_secs(5)).await;
    assert!(b.metric("callhome_backplane_resyncs_total").await > resyncs);
    assert!(b.metric("callhome_backplane_reconnects_total").await > reconnects);
    eprintln!("repaired {took:?} after subscribing was possible again");
}

/// Found a bug (fixed): `hints::resync` read its pipeline (the epoch, then one `HMGET` per
/// local id) into a 2-tuple, so a node holding two or more ids repaired nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_goes_silent_is_found_by_its_probe_and_repaired() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    // a talks to Redis directly, b through the proxy.
    let [a] = nodes(&redis.url(), ["a"], |_| {}).await;
    let [b] = nodes(&redis.url_via(proxy.addr()), ["b"], |_| {}).await;
    proxy
        .wait_until("b subscribed", WAIT, |p| p.live_subscribers() == 1)
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let id = a.new_id().await;
        held.push((held_poll(&b, &id, 0), id));
    }
    for (_, id) in &held {
        until_waiting(&a, id, 1).await;
    }
    let timeouts = b.metric("callhome_backplane_probe_timeouts_total").await;
    let resyncs = b.metric("callhome_backplane_resyncs_total").await;

    // b's subscription stays open but hears nothing more; its commands work.
    assert_eq!(proxy.silence_subscribers(), 1);
    let start = Instant::now();
    for (_, id) in &held {
        let r = a.notify(KEY, id, "unheard").await;
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"seq": 1, "waiting": 1, "delivery": "woken"})
        );
    }
    for (p, _) in held {
        let r = join(p, WAIT, "a poll on b, repaired").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"seq": 1, "info": "unheard"})
        );
    }
    let took = start.elapsed();
    assert_eq!(
        b.metric("callhome_backplane_probe_timeouts_total").await,
        timeouts + 1,
        "found by exactly one probe"
    );
    assert!(b.metric("callhome_backplane_resyncs_total").await > resyncs);
    until_ready(&b, StatusCode::OK, Duration::from_secs(5)).await;
    eprintln!("a silent subscription repaired within {took:?}");
}

/// A notify of `id` (value `seq`, info "lost") whose hint never leaves Redis: its value and
/// the hint counter move, and nothing is published.
async fn lose_a_hint(redis: &RedisServer, id: &str, seq: u64) {
    let key = format!("ch:i:{id}");
    redis
        .cmd(&["HSET", &key, "s", &seq.to_string(), "v", "lost"])
        .await;
    redis.cmd(&["INCR", "ch:hc"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_lost_hint_is_found_by_the_gap_it_leaves_and_repaired() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let quiet = a.new_id().await;
    let loud = a.new_id().await;
    let held = held_poll(&b, &quiet, 0);
    until_waiting(&a, &quiet, 1).await;
    // Numbers the hint counter, so that b knows where it stands.
    assert_eq!(a.notify(KEY, &loud, "first").await.status(), StatusCode::OK);
    let gaps = b.metric("callhome_backplane_hint_gaps_total").await;
    let resyncs = b.metric("callhome_backplane_resyncs_total").await;

    // A notify of `quiet` whose hint never reached b: its value and the hint counter moved
    // in Redis, and nothing was published.
    lose_a_hint(&redis, &quiet, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "b cannot know yet");

    // The next hint skips a number: b reads its ids again.
    assert_eq!(
        a.notify(KEY, &loud, "second").await.status(),
        StatusCode::OK
    );
    let r = join(held, WAIT, "the poll on the id whose hint was lost").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "lost"})
    );
    assert_eq!(
        b.metric("callhome_backplane_hint_gaps_total").await,
        gaps + 1,
        "exactly one hint was lost"
    );
    assert_eq!(
        b.metric("callhome_backplane_resyncs_total").await,
        resyncs + 1
    );
}

/// A client back for its next value right after one (within the few milliseconds before its
/// node writes its count down) waits on the node's own copy of the id, with no Redis read
/// (`local_watches`). Such a wait is repaired like any other when a hint is lost, and once
/// hints broke off the copy is not trusted again until it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_for_the_next_value_waits_on_the_nodes_copy_and_is_repaired_like_any() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let loud = a.new_id().await;
    let mut held = held_poll(&b, &id, 0);
    until_waiting(&a, &id, 1).await;
    // Round after round, until one poll asked again at once is begun on b's copy.
    let mut seq = 0;
    for round in 1..=50 {
        let before = b.metric(LOCAL_WATCHES).await;
        let info = format!("v{round}");
        assert_eq!(a.notify(KEY, &id, &info).await.status(), StatusCode::OK);
        let r = join(held, WAIT, "the poll of the round").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"seq": round, "info": info})
        );
        held = held_poll(&b, &id, round);
        within(WAIT, "the next poll waiting on b", async || {
            (b.metric(WAITING_POLLS).await == 1).then_some(())
        })
        .await;
        if b.metric(LOCAL_WATCHES).await == before + 1 {
            seq = round;
            break;
        }
    }
    assert!(seq > 0, "no poll in 50 began on b's own copy");
    let began_locally = b.metric(LOCAL_WATCHES).await;

    // A notify of the id whose hint never reached b: the next hint's number shows the gap,
    // and the wait begun without a read is answered from the resync.
    let key = format!("ch:i:{id}");
    lose_a_hint(&redis, &id, seq + 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "b cannot know yet");
    assert_eq!(a.notify(KEY, &loud, "gap").await.status(), StatusCode::OK);
    let r = join(held, WAIT, "the poll whose hint was lost").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": seq + 1, "info": "lost"})
    );

    // Hints broke off: b's copy, though just repaired, is read again before it is trusted.
    // A change no hint tells (written straight into Redis) is then seen at once. (Asked at
    // once, before b writes its count down, the poll would be begun on b's copy if b still
    // trusted it.)
    let direct = (seq + 2).to_string();
    redis
        .cmd(&["HSET", &key, "s", &direct, "v", "direct"])
        .await;
    let (status, value) = tokio::time::timeout(COMMAND_TIMEOUT * 2, poll(&b, &id, seq + 1, None))
        .await
        .expect("a poll behind Redis is answered at once");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value, json!({"seq": seq + 2, "info": "direct"}));
    assert_eq!(b.metric(LOCAL_WATCHES).await, began_locally, "b read Redis");
}

/// A wait begun on the node's copy while the node's write of a lower count is on its way to
/// Redis is counted once that write is back. (It was not: the wait went by the count the node
/// believed Redis had, the write then lowered it, and `waiting` stayed 0 until the refresh a
/// minute later. Seen once in CI as `a_failover_to_a_lagging_replica_...` timing out on
/// "1 waiting".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_begun_while_its_nodes_count_is_on_its_way_to_redis_is_counted() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let [a] = nodes(&redis.url(), ["a"], |_| {}).await;
    let [b] = nodes(&redis.url_via(proxy.addr()), ["b"], |_| {}).await;
    let id = a.new_id().await;
    assert_eq!(a.notify(KEY, &id, "v1").await.status(), StatusCode::OK);
    let before = b.metric(LOCAL_WATCHES).await;
    proxy.delay(Duration::from_millis(300));
    // Answered at once. b counted this client in Redis with its read, and writes the count
    // down 20 ms later: a write that takes 600 ms to come back.
    let (status, _) = poll(&b, &id, 0, None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile the page is back for the next value, and b begins it on its copy.
    let held = held_poll(&b, &id, 1);
    within(WAIT, "the poll waiting on b", async || {
        (b.metric(WAITING_POLLS).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        b.metric(LOCAL_WATCHES).await,
        before + 1,
        "begun on b's copy"
    );
    proxy.delay(Duration::ZERO);
    assert_settled(settles_at(&a, &id, 1).await, 1);
    assert!(!held.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_makes_requests_fail_in_time_never_hang() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let spare = a.new_id().await;
    let held = poller(&b, &id, 0, None, "final");
    until_waiting(&a, &id, 1).await;
    let bound = COMMAND_TIMEOUT + SLACK;

    redis.pause();
    let paused = Instant::now();
    let mut refused = 0;
    for i in 0..3 {
        let (took, r) = timed_notify(&a, &id, "during").await;
        assert_unavailable(&format!("notify {i}"), took, r, bound).await;
        refused += 1;
    }
    let start = Instant::now();
    let at_once = join_all((0..10).map(|_| b.notify(KEY, &id, "during"))).await;
    let took = start.elapsed();
    for r in at_once {
        assert_unavailable("one of 10 at once", took, r, bound).await;
        refused += 1;
    }
    let start = Instant::now();
    let r = b.create(KEY, None).await;
    assert_unavailable("create", start.elapsed(), r, bound).await;
    // (Of a spare id: Redis may run it when it wakes.)
    let start = Instant::now();
    let r = delete(&a, KEY, &spare).await;
    assert_unavailable("delete", start.elapsed(), r, bound).await;
    // A new poll cannot read the id: refused in time too, not held blind.
    let start = Instant::now();
    let r = b
        .client
        .get(b.url(&poll_path(&id, 0, None)))
        .send()
        .await
        .unwrap();
    assert_unavailable("a new poll", start.elapsed(), r, bound).await;
    for n in [&a, &b] {
        until_ready(n, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    }
    let unready_after = paused.elapsed();
    assert!(!held.is_finished(), "the held poll stays open");

    redis.resume();
    let mut back = Duration::ZERO;
    for n in [&a, &b] {
        back = back.max(until_ready(n, StatusCode::OK, WAIT).await);
    }
    let settled = settles_at(&a, &id, 1).await;
    // A refused notify had been sent: Redis may run it once it wakes (a timeout is
    // ambiguous, and said to be). So the next seq is 1 + however many it ran.
    let r = a.notify(KEY, &id, "final").await;
    assert_eq!(r.status(), StatusCode::OK);
    let last = r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    assert!((1..=refused + 1).contains(&last), "seq {last}");
    let answers = join(held, WAIT, "the held poll").await;
    assert_eq!(
        answers.last().unwrap(),
        &json!({"seq": last, "info": "final"})
    );
    for pair in answers.windows(2) {
        assert!(
            pair[0]["seq"].as_u64() < pair[1]["seq"].as_u64(),
            "{answers:?}"
        );
    }
    assert_settled(settled, 1);
    eprintln!(
        "unready within {unready_after:?} of the pause, ready {back:?} after resuming; \
         {} of {refused} refused notifies ran after all",
        last - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_makes_requests_fail_in_time_never_hang() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let [a, b] = nodes(&redis.url_via(proxy.addr()), ["a", "b"], |_| {}).await;
    let id = a.new_id().await;
    let held = poller(&b, &id, 0, None, "final");
    until_waiting(&a, &id, 1).await;
    let bound = COMMAND_TIMEOUT + SLACK;

    // A round trip takes 4 s now: longer than the command timeout.
    proxy.delay(Duration::from_secs(2));
    let slowed = Instant::now();
    let mut refused = 0;
    for i in 0..3 {
        let (took, r) = timed_notify(&a, &id, "during").await;
        assert_unavailable(&format!("notify {i}"), took, r, bound).await;
        refused += 1;
    }
    let start = Instant::now();
    let r = b
        .client
        .get(b.url(&poll_path(&id, 0, None)))
        .send()
        .await
        .unwrap();
    assert_unavailable("a new poll", start.elapsed(), r, bound).await;
    for n in [&a, &b] {
        until_ready(n, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await;
    }
    let unready_after = slowed.elapsed();
    assert!(!held.is_finished(), "the held poll stays open");

    proxy.delay(Duration::ZERO);
    let mut back = Duration::ZERO;
    for n in [&a, &b] {
        back = back.max(until_ready(n, StatusCode::OK, WAIT).await);
    }
    let settled = settles_at(&a, &id, 1).await;
    let r = a.notify(KEY, &id, "final").await;
    assert_eq!(r.status(), StatusCode::OK);
    let last = r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    assert!((1..=refused + 1).contains(&last), "seq {last}");
    let answers = join(held, WAIT, "the held poll").await;
    assert_eq!(
        answers.last().unwrap(),
        &json!({"seq": last, "info": "final"})
    );
    let distinct: HashSet<_> = answers.iter().map(|v| v["seq"].as_u64()).collect();
    assert_eq!(distinct.len(), answers.len(), "{answers:?}");
    assert_settled(settled, 1);
    eprintln!(
        "unready within {unready_after:?} of the delay, ready {back:?} after it ended; \
         {} of {refused} refused notifies ran after all",
        last - 1
    );
}

// ---------------------------------------------------------------------------------------------
// High availability

/// Redis Sentinel, a master and a replica that lags (paused while the master takes two more
/// notifies), then the master killed: Sentinel promotes the replica, the nodes follow it
/// without a restart (they find it through Sentinel), and a page whose cursor is from before
/// the failover is told `reset` with the value the new master has, then gets the next notify:
/// never silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_lagging_replica_resets_pages_and_the_nodes_follow_it() {
    if !require_redis() {
        return;
    }
    let mut master = RedisServer::start(RedisOptions::default()).await;
    // Replication goes through a proxy, so that the replica can be made to lag for real (a
    // paused replica would still find the writes in its socket buffer when resumed).
    let link = FaultProxy::start(master.addr());
    let replica = RedisServer::start(RedisOptions::default().replica_of(link.port())).await;
    replica.wait_synced().await;
    let sentinel = Sentinel::start(master.port(), "callhome", 1).await;
    sentinel.wait_for_replicas(1).await;
    let sentinels = vec![sentinel.addr().to_string()];
    let [a, b] = nodes("redis://unused/", ["a", "b"], |c| {
        c.store.redis_url = None;
        c.store.redis_sentinels.clone_from(&sentinels);
        c.store.redis_master_name = Some("callhome".into());
    })
    .await;

    let id = a.new_id().await;
    for n in 1..=3 {
        assert_eq!(a.notify(KEY, &id, &format!("v{n}")).await.status(), 200);
    }
    let (_, first) = poll(&b, &id, 0, Some(0)).await;
    let before = first["epoch"].as_u64().expect("an epoch");
    // Let the replica have seq 3, then cut it off: seq 4 and 5 reach the master only.
    within(WAIT, "the replica at seq 3", async || {
        (replica.cmd(&["HGET", &format!("ch:i:{id}"), "s"]).await == "3").then_some(())
    })
    .await;
    link.blackhole(true);
    for n in 4..=5 {
        assert_eq!(a.notify(KEY, &id, &format!("v{n}")).await.status(), 200);
    }
    let page = poller(&b, &id, 5, Some(before), "final");
    until_waiting(&a, &id, 1).await;

    let old = master.addr();
    master.kill();
    let (new, took) = sentinel
        .wait_master_change(old, Duration::from_secs(30))
        .await;
    assert_eq!(new.port(), replica.port());
    eprintln!("sentinel promoted the replica {took:?} after the master was killed");
    // The nodes find the new master by themselves.
    until_ready(&a, StatusCode::OK, WAIT).await;
    until_ready(&b, StatusCode::OK, WAIT).await;
    let (notified, _) = within(WAIT, "a notify after the failover", async || {
        let r = a.notify(KEY, &id, "final").await;
        if r.status() == StatusCode::OK {
            Some(r.json::<Value>().await.unwrap())
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    })
    .await;
    // The promoted replica never had seq 4 and 5.
    assert_eq!(notified["seq"], 4, "{notified}");

    let answers = join(page, WAIT, "the page's polls").await;
    let last = answers.last().unwrap();
    assert_eq!((&last["seq"], &last["info"]), (&json!(4), &json!("final")));
    let after = last["epoch"].as_u64().unwrap();
    assert_ne!(after, before, "a promoted replica is a new epoch");
    assert!(
        answers.iter().any(|v| v["reset"] == true),
        "the page was told to reset: {answers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Nodes that die

/// The real binary as a cluster node on the Redis at `url`, on the shipped config with every
/// rate limit off (run through `env`, which `exec`s it, so the PID is the daemon's).
fn daemon_node(url: &str, name: &str) -> support::Daemon {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/callhome.toml");
    let vars = [
        "CALLHOME_STORE__BACKEND=redis".to_owned(),
        format!("CALLHOME_STORE__REDIS_URL={url}"),
        format!("CALLHOME_STORE__NODE_NAME={name}"),
        "CALLHOME_RATE_LIMITS__BROWSER_PER_IP__PER_SECOND=0".to_owned(),
        "CALLHOME_RATE_LIMITS__CREATE_PER_APP__PER_SECOND=0".to_owned(),
        "CALLHOME_RATE_LIMITS__NOTIFY_PER_APP__PER_SECOND=0".to_owned(),
        "CALLHOME_LIMITS__MAX_WAITERS_PER_ID=2000".to_owned(),
    ];
    let mut wrapper: Vec<&std::ffi::OsStr> = vec![std::ffi::OsStr::new("env")];
    wrapper.extend(vars.iter().map(std::ffi::OsStr::new));
    support::Daemon::start_wrapped(&wrapper, &config, "127.0.0.1:0", None, &[])
}

/// A node killed with `kill -9` while 1,000 clients wait on it: they come back through the
/// other node with their cursors and get the value notified meanwhile, and `waiting` forgets
/// the dead node's clients within 10 s (its heartbeat runs out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_kill_9_loses_its_clients_to_the_other_and_waiting_recovers() {
    const CLIENTS: usize = 1_000;
    const KEY_DEMO: &str = "demo-key-change-me-0123456789";
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let a = daemon_node(&redis.url(), "a");
    let mut b = daemon_node(&redis.url(), "b");
    let client = support::client();
    let base = |d: &support::Daemon| format!("http://{}", d.addr);
    let created: Value = client
        .post(format!("{}/v1/ids", base(&a)))
        .bearer_auth(KEY_DEMO)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let status = async |node: &support::Daemon| -> Value {
        client
            .get(format!("{}/v1/ids/{id}", base(node)))
            .bearer_auth(KEY_DEMO)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };

    // 1,000 polls held on B; each, when B dies, polls A from the same cursor.
    let polls: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, on_b, on_a) = (client.clone(), base(&b), base(&a));
            let path = format!("/v1/poll?id={id}&since=0");
            tokio::spawn(async move {
                match client.get(format!("{on_b}{path}")).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        ("b", r.json::<Value>().await.unwrap())
                    }
                    _ => {
                        let r = client.get(format!("{on_a}{path}")).send().await.unwrap();
                        assert_eq!(r.status(), StatusCode::OK);
                        ("a", r.json::<Value>().await.unwrap())
                    }
                }
            })
        })
        .collect();
    within(WAIT, "1,000 waiting on B", async || {
        (status(&a).await["waiting"] == CLIENTS).then_some(())
    })
    .await;

    b.send_signal("KILL");
    let killed = Instant::now();
    assert!(!b.wait_exit(), "killed, not exited");
    // The clients are back, on A (its own gauge, not the cluster's sum), waiting from seq 0.
    let metrics = format!("{}/metrics", base(&a));
    within(WAIT, "the clients back on A", async || {
        let text = client
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = format!("callhome_waiting{{transport=\"poll\"}} {CLIENTS}");
        text.lines().any(|l| l == line).then_some(())
    })
    .await;
    let r = client
        .post(format!("{}/v1/ids/{id}/notify", base(&a)))
        .bearer_auth(KEY_DEMO)
        .json(&json!({"info": "after the kill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut on_a = 0;
    for poll in polls {
        let (node, value) = tokio::time::timeout(WAIT, poll).await.unwrap().unwrap();
        assert_eq!(value, json!({"seq": 1, "info": "after the kill"}));
        on_a += usize::from(node == "a");
    }
    assert_eq!(on_a, CLIENTS, "every client came back through A");
    // Nobody waits any more, and B's 1,000 are not counted (its heartbeat ran out).
    within(WAIT, "waiting back to 0", async || {
        (status(&a).await["waiting"] == 0).then_some(())
    })
    .await;
    let took = killed.elapsed();
    eprintln!("waiting right again {took:?} after the kill");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// Redis killed (`SIGKILL`, AOF with `appendfsync always`) during 10,000 concurrent notifies
/// over 50 ids: every notify is answered, `200` with its `seq` or `503
/// backplane_unavailable`, never anything else; no `seq` is acknowledged twice; and after the
/// restart every id holds at least the newest `seq` acknowledged for it (an acknowledged
/// notify was really done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_10_000_notifies_leaves_every_answer_true() {
    const NOTIFIES: usize = 10_000;
    const IDS: usize = 50;
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default().aof(Fsync::Always)).await;
    let [a] = nodes(&redis.url(), ["a"], |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..IDS {
        ids.push(a.new_id().await);
    }
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let notifies: Vec<_> = (0..NOTIFIES)
        .map(|n| {
            let (client, url) = (
                a.client.clone(),
                a.url(&format!("/v1/ids/{}/notify", ids[n % IDS])),
            );
            let (answered, limit) = (answered.clone(), limit.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                let r = client
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&json!({"info": format!("n{n}")}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (n % IDS, status, body)
            })
        })
        .collect();
    within(WAIT, "a third of the notifies answered", async || {
        (answered.load(std::sync::atomic::Ordering::Relaxed) >= NOTIFIES / 3).then_some(())
    })
    .await;
    redis.kill();
    let mut acknowledged: Vec<Vec<u64>> = vec![Vec::new(); IDS];
    let (mut ok, mut refused) = (0, 0);
    for notify in notifies {
        let (id, status, body) = tokio::time::timeout(WAIT, notify).await.unwrap().unwrap();
        match status {
            StatusCode::OK => {
                ok += 1;
                acknowledged[id].push(body["seq"].as_u64().unwrap());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(body["error"]["code"], "backplane_unavailable", "{body}");
            }
            other => panic!("a notify answered {other}: {body}"),
        }
    }
    eprintln!("{ok} acknowledged, {refused} refused");
    assert!(ok >= NOTIFIES / 3 && refused > 0, "{ok} / {refused}");
    redis.restart().await;
    until_ready(&a, StatusCode::OK, WAIT).await;
    for (n, seqs) in acknowledged.iter_mut().enumerate() {
        seqs.sort_unstable();
        let unique = seqs.len();
        seqs.dedup();
        assert_eq!(seqs.len(), unique, "a seq acknowledged twice on id {n}");
        let r = status(&a, &ids[n]).await;
        assert_eq!(r.status(), StatusCode::OK, "id {n} survived the restart");
        let held = r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
        let newest = seqs.last().copied().unwrap_or(0);
        assert!(
            held >= newest,
            "id {n}: Redis holds seq {held}, {newest} was acknowledged"
        );
    }
}
