//! Limits and slow clients over real sockets: every 429 and 503, and the timeouts that cut
//! slow clients without cutting held polls.
//!
//! Rate limits here refill one request per second (the slowest a config can say), so a
//! stalled machine could slip a refill in between two requests. The tests therefore send
//! until the first refusal, within a number of tries an unenforced limit would use up, and
//! count refusals as they come instead of expecting one at an exact request.
//!
//! Where `connection` serves a request in place and where it hands it to hyper (chunked
//! bodies, large heads), limits are enforced by different code, so both paths are tried.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use callhome::config::RateLimit;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::support::{KEY, KEY_TWO, ORIGIN, TestServer};

/// Two requests at once, then one a second.
const SLOW: RateLimit = RateLimit {
    per_second: 1,
    burst: 2,
};

/// Requests sent before a test gives up waiting for a refusal. [`SLOW`] refuses the third in a
/// row; reaching ten would take some eight seconds of stalls between requests.
const TRIES: usize = 10;

/// Upper bound on anything a test waits for; only reached when the test fails.
const HANG: Duration = Duration::from_secs(20);

/// What the tests look at in an answer, whether it came through reqwest or a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    async fn of(response: Response) -> Self {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let body = response.text().await.unwrap();
        Self {
            status,
            headers,
            body,
        }
    }

    /// A whole HTTP/1.1 response with its body, as read off a socket.
    fn parse(text: &str) -> Self {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head: {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{text}");
        let status = status_line[9..12].parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The `error.code` of a JSON error, checking its shape on the way.
    fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body: Value = serde_json::from_str(&self.body).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        body["error"]["code"].as_str().unwrap().to_owned()
    }

    /// Checks `status` with `code`, and a `Retry-After` of whole seconds, at least 1.
    fn assert_refused(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.error_code(), code, "{self:?}");
        let after: u64 = self
            .header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {self:?}"));
        assert!(after >= 1, "{self:?}");
    }
}

/// Sends requests (`send(n)` for the n-th) until one is refused with `429 rate_limited`,
/// checking that every one before it succeeded with `ok`. Returns how many succeeded.
async fn until_refused(what: &str, ok: u16, mut send: impl AsyncFnMut(usize) -> Answer) -> usize {
    for n in 0..TRIES {
        let answer = send(n).await;
        if answer.status == 429 {
            answer.assert_refused(429, "rate_limited");
            return n;
        }
        assert_eq!(answer.status, ok, "{what}: {answer:?}");
    }
    panic!("{what}: {TRIES} requests in a row and none refused");
}

/// Reads one response with a `Content-Length` body off `stream` (bounded).
async fn read_response(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |len| len.trim().parse().unwrap());
            if bytes.len() >= end + 4 + len {
                return Answer::parse(std::str::from_utf8(&bytes[..end + 4 + len]).unwrap());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the server answers")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the server closes `stream` (bounded); a reset counts as closing. Returns what
/// was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let deadline = Instant::now() + HANG;
    loop {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the server never closed the connection; read {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            });
        match read {
            Ok(0) | Err(_) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

/// `/metrics`, over a connection of its own that does not outlive the scrape.
async fn scrape(addr: SocketAddr) -> String {
    let answer = exchange(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body
}

/// The value of one series (name and labels exactly as exposed) in a scrape.
fn value(scraped: &str, series: &str) -> i64 {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{scraped}"))
        .parse()
        .unwrap()
}

/// A client that opens a connection per request and closes it after the answer, so no idle
/// pooled connection is there for a short `idle_timeout` to close (and count) under it.
fn unpooled_client() -> reqwest::Client {
    crate::support::client_builder()
        .pool_max_idle_per_host(0)
        .timeout(HANG)
        .build()
        .unwrap()
}

/// The `seq` of app one's `id`.
async fn seq_of(s: &TestServer, id: &str) -> u64 {
    id_status(s, KEY, id).await["seq"].as_u64().unwrap()
}

/// `GET /v1/ids/{id}` as the app with `key`; `Null` when there is no such id.
async fn id_status(s: &TestServer, key: &str, id: &str) -> Value {
    let r = s
        .client
        .get(s.url(&format!("/v1/ids/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::OK => r.json().await.unwrap(),
        StatusCode::NOT_FOUND => Value::Null,
        other => panic!("status of {id}: {other}"),
    }
}

#[tokio::test]
async fn creates_are_limited_per_app_on_both_apis() {
    let s = TestServer::spawn_with(|c| c.rate_limits.create_per_app = SLOW);
    let v1 = |n: usize| format!("limits-v1-create-{n:02}");
    let seed = |n: usize| format!("limits-seed-create-{n:02}");

    let by_v1 = until_refused("POST /v1/ids", 201, async |n| {
        Answer::of(s.create(KEY, Some(json!({ "id": v1(n) }))).await).await
    })
    .await;
    let by_seed = until_refused("/idcreate", 201, async |n| {
        let url = s.url(&format!("/idcreate?id={}", seed(n)));
        Answer::of(s.client.get(url).bearer_auth(KEY).send().await.unwrap()).await
    })
    .await;

    // The accepted ids exist; the refused ones were not made.
    for n in 0..by_v1 {
        assert!(id_status(&s, KEY, &v1(n)).await.is_object());
    }
    for n in 0..by_seed {
        assert!(id_status(&s, KEY, &seed(n)).await.is_object());
    }
    assert_eq!(id_status(&s, KEY, &v1(by_v1)).await, Value::Null);
    assert_eq!(id_status(&s, KEY, &seed(by_seed)).await, Value::Null);

    // App one's spent bucket is not app two's: its burst is all there.
    for n in 0..2 {
        let id = format!("limits-other-app-{n:02}");
        let r = s.create(KEY_TWO, Some(json!({ "id": id }))).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    let metrics = scrape(s.addr).await;
    let made = i64::try_from(by_v1 + by_seed + 2).unwrap();
    assert_eq!(value(&metrics, "callhome_ids_created_total"), made);
    assert_eq!(value(&metrics, "callhome_ids"), made);
    assert_eq!(
        value(
            &metrics,
            r#"callhome_rate_limited_total{limit="create_per_app"}"#
        ),
        2
    );
    assert_eq!(
        value(
            &metrics,
            r#"callhome_rate_limited_total{limit="notify_per_app"}"#
        ),
        0
    );
}

/// A raw notify with a chunked body, which `connection` hands to hyper and the router.
fn chunked_notify(id: &str, info: &str) -> String {
    format!(
        "POST /v1/ids/{id}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{info}\r\n0\r\n\r\n",
        info.len()
    )
}

#[tokio::test]
async fn notifies_are_limited_per_app_on_every_path() {
    let s = TestServer::spawn_with(|c| c.rate_limits.notify_per_app = SLOW);
    let id = s.new_id().await;
    let mut passed = 0;

    // Served in place: a text/plain body with a Content-Length.
    passed += until_refused("in-place notify", 200, async |n| {
        let r = s
            .client
            .post(s.url(&format!("/v1/ids/{id}/notify")))
            .bearer_auth(KEY)
            .header("content-type", "text/plain")
            .body(format!("in place {n}"))
            .send()
            .await
            .unwrap();
        Answer::of(r).await
    })
    .await;
    assert_eq!(seq_of(&s, &id).await, passed as u64, "a refusal bumped seq");

    // Handed to hyper: a chunked body.
    passed += until_refused("chunked notify", 200, async |n| {
        exchange(s.addr, &chunked_notify(&id, &format!("chunked {n}"))).await
    })
    .await;
    assert_eq!(seq_of(&s, &id).await, passed as u64, "a refusal bumped seq");

    // Through the router: a percent-encoded id.
    let encoded = format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
    passed += until_refused("routed notify", 200, async |n| {
        let r = s
            .client
            .post(s.url(&format!("/v1/ids/{encoded}/notify")))
            .bearer_auth(KEY)
            .json(&json!({ "info": format!("routed {n}") }))
            .send()
            .await
            .unwrap();
        Answer::of(r).await
    })
    .await;
    assert_eq!(seq_of(&s, &id).await, passed as u64, "a refusal bumped seq");

    // The seed API.
    passed += until_refused("/notify", 200, async |n| {
        let url = s.url(&format!("/notify?id={id}&info=seed-{n}"));
        Answer::of(s.client.get(url).bearer_auth(KEY).send().await.unwrap()).await
    })
    .await;
    assert_eq!(seq_of(&s, &id).await, passed as u64, "a refusal bumped seq");

    // App two's bucket is its own.
    let other = s.new_id_for(KEY_TWO).await;
    for info in ["a", "b"] {
        assert_eq!(s.notify(KEY_TWO, &other, info).await.status(), 200);
    }

    let metrics = scrape(s.addr).await;
    assert_eq!(
        value(
            &metrics,
            r#"callhome_rate_limited_total{limit="notify_per_app"}"#
        ),
        4
    );
    assert_eq!(
        value(&metrics, r#"callhome_notifies_total{outcome="rejected"}"#),
        4
    );
    assert_eq!(
        value(&metrics, r#"callhome_notifies_total{outcome="stored"}"#),
        i64::try_from(passed + 2).unwrap()
    );
}

/// `/v1/iframe` for app one's `id` through `client`.
async fn iframe(s: &TestServer, client: &reqwest::Client, id: &str) -> Answer {
    let url = s.url(&format!("/v1/iframe?id={id}&origin={ORIGIN}"));
    Answer::of(client.get(url).send().await.unwrap()).await
}

#[tokio::test]
async fn browser_requests_are_limited_per_client_ip() {
    let s = TestServer::spawn_with(|c| c.rate_limits.browser_per_ip = SLOW);
    let id = s.new_id().await;

    // `since` ahead of the id's seq: answered at once.
    until_refused("poll", 200, async |_| {
        Answer::of(s.poll(&id, 99).await).await
    })
    .await;

    // Accepted streams are kept open: a refused one must not take a waiting place.
    let mut streams = Vec::new();
    let opened = until_refused("events", 200, async |_| {
        let url = s.url(&format!("/v1/events?id={id}"));
        let r = s.client.get(url).send().await.unwrap();
        if r.status() == StatusCode::OK {
            streams.push(r);
            return Answer {
                status: 200,
                headers: Vec::new(),
                body: String::new(),
            };
        }
        Answer::of(r).await
    })
    .await;
    assert_eq!(
        id_status(&s, KEY, &id).await["waiting"],
        opened,
        "a refused stream took a place"
    );

    until_refused("iframe", 200, async |_| iframe(&s, &s.client, &id).await).await;

    // Another address has a bucket of its own, full.
    let elsewhere = crate::support::client_builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .timeout(HANG)
        .build()
        .unwrap();
    let url = s.url(&format!("/v1/poll?id={id}&since=99"));
    let r = elsewhere.get(url).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "127.0.0.2 shares 127.0.0.1's bucket"
    );
    let answer = iframe(&s, &elsewhere, &id).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    drop(streams);
    let metrics = scrape(s.addr).await;
    assert_eq!(
        value(
            &metrics,
            r#"callhome_rate_limited_total{limit="browser_per_ip"}"#
        ),
        3
    );
    assert_eq!(
        value(&metrics, r#"callhome_polls_total{outcome="rejected"}"#),
        1
    );
    assert_eq!(
        value(
            &metrics,
            r#"callhome_event_streams_total{outcome="rejected"}"#
        ),
        1
    );
}

/// A poll (answered at once) that claims to be forwarded for `client`.
async fn poll_for(s: &TestServer, id: &str, client: &str) -> Answer {
    let r = s
        .client
        .get(s.url(&format!("/v1/poll?id={id}&since=99")))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap();
    Answer::of(r).await
}

/// An iframe page request that claims to be forwarded for `client`.
async fn iframe_for(s: &TestServer, id: &str, client: &str) -> Answer {
    let r = s
        .client
        .get(s.url(&format!("/v1/iframe?id={id}&origin={ORIGIN}")))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap();
    Answer::of(r).await
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    // Untrusted: a new made-up address on every request, and still one bucket.
    let s = TestServer::spawn_with(|c| c.rate_limits.browser_per_ip = SLOW);
    let id = s.new_id().await;
    until_refused("spoofing poll", 200, async |n| {
        poll_for(&s, &id, &format!("203.0.113.{n}")).await
    })
    .await;
    until_refused("spoofing iframe", 200, async |n| {
        iframe_for(&s, &id, &format!("198.51.100.{n}")).await
    })
    .await;
    let metrics = scrape(s.addr).await;
    assert_eq!(
        value(
            &metrics,
            r#"callhome_rate_limited_total{limit="browser_per_ip"}"#
        ),
        2
    );

    // Trusted: each forwarded client has its own bucket, on the lean path and the router's.
    let s = TestServer::spawn_with(|c| {
        c.rate_limits.browser_per_ip = SLOW;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    });
    let id = s.new_id().await;
    until_refused("poll for one client", 200, async |_| {
        poll_for(&s, &id, "203.0.113.1").await
    })
    .await;
    for _ in 0..2 {
        let answer = poll_for(&s, &id, "203.0.113.2").await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    until_refused("iframe for one client", 200, async |_| {
        iframe_for(&s, &id, "198.51.100.1").await
    })
    .await;
    for _ in 0..2 {
        let answer = iframe_for(&s, &id, "198.51.100.2").await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let metrics = scrape(s.addr).await;
    assert_eq!(
        value(
            &metrics,
            r#"callhome_rate_limited_total{limit="browser_per_ip"}"#
        ),
        2
    );
}

#[tokio::test]
async fn connections_over_max_connections_get_503_and_are_closed() {
    let s = TestServer::spawn_with(|c| c.limits.max_connections = 2);
    // Only raw connections here: a client's pool would hold places of its own.
    // One keep-alive connection that has been answered...
    let mut kept = TcpStream::connect(s.addr).await.unwrap();
    kept.write_all(
        format!(
            "POST /v1/ids HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let created = read_response(&mut kept).await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = serde_json::from_str::<Value>(&created.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // ...and one held poll.
    let mut held = TcpStream::connect(s.addr).await.unwrap();
    held.write_all(format!("GET /v1/poll?id={id}&since=0 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let status =
        format!("GET /v1/ids/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let deadline = Instant::now() + HANG;
    loop {
        kept.write_all(status.as_bytes()).await.unwrap();
        let answer = read_response(&mut kept).await;
        if serde_json::from_str::<Value>(&answer.body).unwrap()["waiting"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the poll was never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The third is answered in full, then closed.
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8(read_until_closed(&mut third).await).unwrap();
    let refused = Answer::parse(&text);
    refused.assert_refused(503, "too_many_connections");
    assert_eq!(refused.header("connection"), Some("close"), "{text}");
    let len: usize = refused.header("content-length").unwrap().parse().unwrap();
    assert_eq!(
        refused.body.len(),
        len,
        "the whole body, then the close: {text}"
    );

    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let metrics = read_response(&mut kept).await.body;
    assert_eq!(
        value(&metrics, r#"callhome_connections_total{outcome="refused"}"#),
        1
    );
    assert_eq!(
        value(
            &metrics,
            r#"callhome_connections_total{outcome="accepted"}"#
        ),
        2
    );
    assert_eq!(value(&metrics, "callhome_connections_open"), 2);

    // Once the held poll's client leaves, its place serves a new connection.
    drop(held);
    let mut refusals = 1;
    let deadline = Instant::now() + HANG;
    loop {
        let answer = exchange(
            s.addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.status == 200 {
            break;
        }
        answer.assert_refused(503, "too_many_connections");
        refusals += 1;
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let metrics = read_response(&mut kept).await.body;
    assert_eq!(
        value(&metrics, r#"callhome_connections_total{outcome="refused"}"#),
        refusals
    );
}

/// How a connection that sent `fast` at once, then `slow` a byte every `pace`, ended.
struct Cut {
    /// From the first byte sent to the server closing the connection (or answering).
    after: Duration,
    /// What the server answered, if it did: a slow client should get nothing.
    answer: Vec<u8>,
}

/// Sends `fast`, then trickles `slow`, until the server closes the connection or answers
/// (bounded).
async fn trickle(addr: SocketAddr, fast: &[u8], slow: &[u8], pace: Duration) -> Cut {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let slow = slow.to_vec();
    let fast = fast.to_vec();
    let started = Instant::now();
    let writing = tokio::spawn(async move {
        if writer.write_all(&fast).await.is_err() {
            return;
        }
        for byte in slow {
            // Fails once the server has closed; the reader reports that.
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
        // Everything sent: keep the connection open, as a slow client would.
        std::future::pending::<()>().await;
    });
    // A close (or reset) reads nothing; an answer means the client was not cut, and its
    // first bytes are enough to say so.
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout_at(started + HANG, reader.read(&mut chunk))
        .await
        .expect("the server never cut the slow client");
    let answer = chunk[..read.unwrap_or(0)].to_vec();
    let after = started.elapsed();
    writing.abort();
    Cut { after, answer }
}

#[tokio::test]
async fn a_trickled_head_is_cut_at_header_timeout_but_held_polls_are_not() {
    let mut s = TestServer::spawn_with(|c| {
        c.limits.header_timeout = Duration::from_millis(500);
        c.limits.idle_timeout = Duration::from_secs(1);
        c.limits.poll_timeout = Duration::from_secs(3);
    });
    s.client = unpooled_client();
    let quiet = s.new_id().await;
    let woken = s.new_id().await;
    let started = Instant::now();
    let timing_out = s.spawn_poll(&quiet, 0);
    let notified = s.spawn_poll(&woken, 0);
    s.wait_for_waiters(&quiet, 1).await;
    s.wait_for_waiters(&woken, 1).await;
    // Both polls were held by now, so they will have waited at least as long as this has.
    let all_held = Instant::now();

    // A head that would take 12 s at this pace.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20)
    );
    let cut = trickle(s.addr, b"", head.as_bytes(), Duration::from_millis(200)).await;
    assert!(
        cut.answer.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&cut.answer)
    );
    // The server's clock starts at the first byte, so never before 500 ms.
    assert!(
        cut.after >= Duration::from_millis(500) && cut.after < Duration::from_secs(5),
        "cut after {:?}",
        cut.after
    );

    // Waiting longer than idle_timeout and header_timeout is what a poll is for.
    tokio::time::sleep_until(all_held + Duration::from_millis(1200)).await;
    assert_eq!(s.notify(KEY, &woken, "late").await.status(), 200);
    let r = notified.await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"seq": 1, "info": "late"})
    );
    let r = timing_out.await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_secs(3));

    let metrics = scrape(s.addr).await;
    let phase = |p: &str| {
        value(
            &metrics,
            &format!(r#"callhome_connection_timeouts_total{{phase="{p}"}}"#),
        )
    };
    assert_eq!(phase("header"), 1);
    assert_eq!(phase("idle"), 0, "a held poll was taken for idle");
    assert_eq!(
        value(&metrics, r#"callhome_polls_total{outcome="timeout"}"#),
        1
    );
    assert_eq!(
        value(&metrics, r#"callhome_polls_total{outcome="delivered"}"#),
        1
    );
}

/// Closed by `idle_timeout`, counted as idle, and long before `header_timeout`: on the hyper
/// path too, where hyper's own head timer once ran from the end of the answer (and the close
/// came at `header_timeout`, counted as a slow head, or at random one or the other).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let s = TestServer::spawn_with(|c| {
        c.limits.idle_timeout = Duration::from_secs(1);
        c.limits.header_timeout = Duration::from_secs(30);
    });
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut c).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), None, "kept alive: {answer:?}");
    let answered = Instant::now();
    let rest = read_until_closed(&mut c).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // The server's clock started a little before the answer reached us.
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_secs(15),
        "closed after {after:?} (idle_timeout 1 s, header_timeout 30 s)"
    );

    let metrics = scrape(s.addr).await;
    let phase = |p: &str| {
        value(
            &metrics,
            &format!(r#"callhome_connection_timeouts_total{{phase="{p}"}}"#),
        )
    };
    assert_eq!(phase("idle"), 1);
    assert_eq!(phase("header"), 0);
}

/// A keep-alive connection waits `idle_timeout` for its next request, however short
/// `header_timeout` is: the head timer runs from a head's first byte, on both paths.
#[tokio::test]
async fn a_keep_alive_connection_outlives_header_timeout_between_requests() {
    let s = TestServer::spawn_with(|c| {
        c.limits.idle_timeout = Duration::from_secs(10);
        c.limits.header_timeout = Duration::from_millis(500);
    });
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    for round in 0..2 {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut c).await;
        assert_eq!(answer.status, 200, "request {round}");
        assert_eq!(answer.header("connection"), None, "kept alive: {answer:?}");
        // Four header timeouts of silence between the requests.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let metrics = scrape(s.addr).await;
    let timeouts = value(
        &metrics,
        r#"callhome_connection_timeouts_total{phase="header"}"#,
    );
    assert_eq!(timeouts, 0, "no head was slow");
}

#[tokio::test]
async fn a_body_slower_than_body_timeout_is_cut_and_not_notified() {
    let s = TestServer::spawn_with(|c| c.limits.body_timeout = Duration::from_millis(500));
    let id = s.new_id().await;
    let head = |framing: &str| {
        format!(
            "POST /v1/ids/{id}/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: text/plain\r\n{framing}\r\n\r\n"
        )
    };
    // Read in place, and by hyper: both take 2 s or more at this pace.
    let pace = Duration::from_millis(200);
    let by_length = head("Content-Length: 10");
    let chunked = head("Transfer-Encoding: chunked") + "a\r\n";
    for (fast, slow) in [
        (by_length.as_bytes(), &b"0123456789"[..]),
        (chunked.as_bytes(), &b"0123456789\r\n0\r\n\r\n"[..]),
    ] {
        let cut = trickle(s.addr, fast, slow, pace).await;
        let head = String::from_utf8_lossy(fast);
        assert!(
            cut.answer.is_empty(),
            "{head}\n{}",
            String::from_utf8_lossy(&cut.answer)
        );
        // The server's clock starts after the head, so never before 500 ms.
        assert!(
            cut.after >= Duration::from_millis(500) && cut.after < Duration::from_secs(5),
            "{head}\ncut after {:?}",
            cut.after
        );
        assert_eq!(seq_of(&s, &id).await, 0, "the cut notify was published");
    }

    let metrics = scrape(s.addr).await;
    assert_eq!(
        value(
            &metrics,
            r#"callhome_connection_timeouts_total{phase="body"}"#
        ),
        2
    );
    assert_eq!(
        value(&metrics, r#"callhome_notifies_total{outcome="stored"}"#),
        0
    );
}

#[tokio::test]
async fn event_streams_that_are_not_read_are_dropped_after_send_timeout() {
    let s = TestServer::spawn_with(|c| {
        c.limits.send_timeout = Duration::from_millis(500);
        // On loopback the server's send buffer grows to megabytes: large values fill it in
        // tens of notifies rather than a thousand.
        c.limits.info_max_bytes = 64 * 1024;
    });
    let id = s.new_id().await;
    let info = "i".repeat(64 * 1024);
    // Written in place, and by hyper (a request with a chunked body is handed to it).
    let chunked = "Transfer-Encoding: chunked\r\n";
    for (dropped, pad) in [(1, ""), (2, chunked)] {
        // A small receive window: the client's side fills after a few events.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stalled = socket.connect(s.addr).await.unwrap();
        let body = if pad.is_empty() { "" } else { "0\r\n\r\n" };
        let request = format!("GET /v1/events?id={id} HTTP/1.1\r\nHost: x\r\n{pad}\r\n{body}");
        stalled.write_all(request.as_bytes()).await.unwrap();
        s.wait_for_waiters(&id, 1).await;

        let deadline = Instant::now() + HANG;
        let mut sent = 0;
        loop {
            assert_eq!(s.notify(KEY, &id, &info).await.status(), 200);
            sent += 1;
            let metrics = scrape(s.addr).await;
            let series = r#"callhome_connection_timeouts_total{phase="send"}"#;
            if value(&metrics, series) == dropped {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pad:.20}: no send timeout after {sent} notifies"
            );
        }

        // Dropped: its waiting place is free, though the client never closed.
        s.wait_for_waiters(&id, 0).await;
        let metrics = scrape(s.addr).await;
        assert_eq!(
            value(&metrics, r#"callhome_waiting{transport="events"}"#),
            0
        );
        drop(stalled);
    }
}
