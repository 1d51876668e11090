//! Cluster mode from the front: two nodes on one Redis behind a real nginx without sticky
//! sessions, and a real browser whose iframe waits on one node while the backend notifies the
//! other. Skips (passes vacuously) when nginx, Chromium or Redis is missing, except under
//! `CI=true`, as the proxy, browser and cluster suites do.

use std::time::{Duration, Instant};

use callhome::config::{Backend, Config, RedisUrl};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::browser::Browser;
use crate::support::nginx::Nginx;
use crate::support::redis::{RedisOptions, RedisServer, require_redis};
use crate::support::{self, KEY, PageServer, TestServer, client};

/// How long anything that should happen "within seconds" may take before a test fails.
const WAIT: Duration = Duration::from_secs(10);

/// Nodes `names` on the Redis at `url` (rate limits off, room for many waiters per id), each
/// `adjust`ed, ready (`/readyz` 200) on return.
async fn nodes<const N: usize>(
    url: &str,
    names: [&str; N],
    adjust: impl Fn(&mut Config),
) -> [TestServer; N] {
    let nodes = names.map(|name| {
        TestServer::spawn_with(|c| {
            support::unlimited(c);
            c.limits.max_waiters_per_id = 1_000;
            c.store.backend = Backend::Redis;
            c.store.redis_url = Some(RedisUrl::new(url.to_owned()));
            c.store.node_name = Some(name.to_owned());
            adjust(c);
        })
    });
    for n in &nodes {
        within(&format!("/readyz 200 on {}", n.addr), async || {
            let r = n.client.get(n.url("/readyz")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
    nodes
}

/// Polls `check` every 20 ms until it gives a value; fails the test after [`WAIT`].
async fn within<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET {base}/v1/ids/{id}` as app one: the id's status (`waiting` counts every node's).
async fn status(base: &str, id: &str) -> Value {
    let r = client()
        .get(format!("{base}/v1/ids/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "status of {id}");
    r.json().await.unwrap()
}

/// The clients this node itself holds, polls and event streams: its `callhome_waiting` gauges.
async fn held_here(node: &TestServer) -> (u64, u64) {
    let text = client()
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |transport: &str| -> u64 {
        let series = format!("callhome_waiting{{transport=\"{transport}\"}}");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    (gauge("poll"), gauge("events"))
}

async fn notify(base: &str, id: &str, info: &str) -> Value {
    let r = client()
        .post(format!("{base}/v1/ids/{id}/notify"))
        .bearer_auth(KEY)
        .json(&json!({ "info": info }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "notify {id} at {base}");
    r.json().await.unwrap()
}

/// Reads a `text/event-stream` one block at a time, each within [`WAIT`].
struct Blocks {
    response: reqwest::Response,
    buffer: String,
}

impl Blocks {
    async fn next(&mut self) -> Vec<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return block.trim_end().lines().map(str::to_owned).collect();
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("the next event arrives through nginx")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

const POLLS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_without_sticky_sessions_spreads_waiters_over_two_nodes_and_a_notify_reaches_all() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let [a, b] = nodes(&redis.url(), ["a", "b"], |c| {
        c.limits.sse_keepalive = Duration::from_secs(600);
    })
    .await;
    let Some(nginx) = Nginx::start_many(&[a.addr, b.addr]).await else {
        return;
    };
    let front = nginx.url("");

    // Everything the backend and the clients do goes through nginx.
    let r = client()
        .post(nginx.url("/v1/ids"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", nginx.logs());
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Each poll on a client (so a connection to nginx) of its own; nginx round-robins them.
    let polls: Vec<_> = (0..POLLS)
        .map(|_| {
            let request = client()
                .get(nginx.url(&format!("/v1/poll?id={id}&since=0")))
                .send();
            tokio::spawn(request)
        })
        .collect();
    let (on_a, on_b) = within("20 polls held, on both nodes", async || {
        let (on_a, _) = held_here(&a).await;
        let (on_b, _) = held_here(&b).await;
        (on_a + on_b == POLLS && status(&front, &id).await["waiting"] == POLLS)
            .then_some((on_a, on_b))
    })
    .await;
    assert!(
        on_a > 0 && on_b > 0,
        "nginx sent every poll to one node: {on_a} on a, {on_b} on b"
    );

    // And an event stream, through nginx too, on whichever node nginx picks.
    let r = client()
        .get(nginx.url(&format!("/v1/events?id={id}&since=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.logs());
    let mut stream = Blocks {
        response: r,
        buffer: String::new(),
    };
    assert_eq!(stream.next().await, ["event: ready", "data: {}"]);
    within("the stream counted", async || {
        (status(&front, &id).await["waiting"] == POLLS + 1).then_some(())
    })
    .await;

    let started = Instant::now();
    assert_eq!(
        notify(&front, &id, "42").await,
        json!({ "seq": 1, "waiting": POLLS + 1, "delivery": "woken" })
    );
    let answers = tokio::time::timeout(WAIT, join_all(polls))
        .await
        .expect("every poll answered");
    for answer in answers {
        let r = answer.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", nginx.logs());
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({ "seq": 1, "info": "42" })
        );
    }
    assert_eq!(
        stream.next().await,
        ["id: 1", r#"data: {"seq":1,"info":"42"}"#]
    );
    eprintln!(
        "{POLLS} polls ({on_a} on a, {on_b} on b) and a stream answered in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_iframe_waits_on_node_b_gets_what_the_backend_sends_to_node_a() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let page = PageServer::spawn();
    let origin = page.origin();
    let [a, b] = nodes(&redis.url(), ["a", "b"], |c| {
        c.apps[0].origins = vec![origin.clone()];
    })
    .await;

    let r = a.create(KEY, Some(json!({ "origin": origin }))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // The answer's iframe_url names A (its public_url); the page loads B's instead.
    let mut iframe = url::Url::parse(created["iframe_url"].as_str().unwrap()).unwrap();
    assert_eq!(iframe.port(), Some(a.addr.port()));
    iframe.set_port(Some(b.addr.port())).unwrap();
    assert_eq!(
        iframe.as_str(),
        format!(
            "http://{}/v1/iframe?id={id}&origin={}",
            b.addr,
            url::form_urlencoded::byte_serialize(origin.as_bytes()).collect::<String>()
        )
    );

    let started = Instant::now();
    browser
        .client
        .goto(&page.url(&[iframe.as_str()]))
        .await
        .unwrap();
    browser
        .wait_for(
            "callhome.js loaded and connected",
            "return window.ready === true",
        )
        .await;
    let front = a.url("");
    for (n, info) in [(1, "first"), (2, "second")] {
        // Held on B, seen from A.
        within(
            &format!("B holds the iframe's wait before notify {n}"),
            async || {
                let (poll, events) = held_here(&b).await;
                (poll + events == 1 && status(&front, &id).await["waiting"] == 1).then_some(())
            },
        )
        .await;
        assert_eq!(held_here(&a).await, (0, 0), "A holds nothing");
        assert_eq!(
            notify(&front, &id, info).await,
            json!({ "seq": n, "waiting": 1, "delivery": "woken" })
        );
        browser
            .wait_for(
                &format!("value {n} on the page"),
                &format!("return window.received[0].length === {n}"),
            )
            .await;
    }
    let received = browser.eval("return window.received[0]").await;
    assert_eq!(
        received,
        json!([{ "info": "first", "seq": 1 }, { "info": "second", "seq": 2 }])
    );
    assert_eq!(browser.eval("return window.errors[0]").await, json!([]));
    eprintln!("both values reached the page in {:?}", started.elapsed());
}
