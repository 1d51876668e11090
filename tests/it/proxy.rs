//! CallHome behind a real nginx running the shipped site config (`deploy/nginx/callhome.conf`):
//! long polls, event streams and the iframe page pass through it unharmed, nginx keeps its
//! connections to CallHome open, and the client address that rate limits count is the one
//! nginx forwards only when nginx is a trusted proxy. See `support::nginx` for how nginx is run,
//! and why its `http` block is deliberately unfriendly.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use callhome::config::{Config, Limits, RateLimit};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::nginx::{Nginx, SITE};
use crate::support::{KEY, ORIGIN, TestServer, client, error_code};

/// How long the first event of a stream may take through nginx. Nothing else can push it out
/// of a buffer (the tests' keep-alive interval is ten minutes), so an event that arrives within
/// this came through unbuffered.
const PROMPT: Duration = Duration::from_secs(10);

/// A CallHome (with `adjust` applied to its config) and nginx in front of it; `None` when nginx
/// is not installed and this is not CI.
async fn setup(adjust: impl FnOnce(&mut Config)) -> Option<(TestServer, Nginx)> {
    let server = TestServer::spawn_with(adjust);
    let nginx = Nginx::start(server.addr).await?;
    Some((server, nginx))
}

/// A client whose connections come from `ip`, a loopback address other than 127.0.0.1, so
/// nginx sees another client.
fn client_from(ip: &str) -> reqwest::Client {
    crate::support::client_builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a plain HTTP client builds")
}

async fn notify(nginx: &Nginx, id: &str, info: &str) -> Value {
    let r = client()
        .post(nginx.url(&format!("/v1/ids/{id}/notify")))
        .bearer_auth(KEY)
        .json(&json!({ "info": info }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.logs());
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_held_poll_is_answered_when_the_backend_notifies() {
    let Some((s, nginx)) = setup(|_| {}).await else {
        return;
    };
    let id = s.new_id().await;
    let poll = tokio::spawn(
        client()
            .get(nginx.url(&format!("/v1/poll?id={id}&since=0")))
            .send(),
    );
    // Held by CallHome, not by nginx: the server counts it.
    s.wait_for_waiters(&id, 1).await;
    assert!(!poll.is_finished());

    assert_eq!(
        notify(&nginx, &id, "42").await,
        json!({ "seq": 1, "waiting": 1, "delivery": "woken" })
    );
    let r = poll.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "seq": 1, "info": "42" })
    );
}

#[tokio::test]
async fn a_held_poll_times_out_to_204_through_nginx() {
    let timeout = Duration::from_secs(1);
    let Some((s, nginx)) = setup(|c| c.limits.poll_timeout = timeout).await else {
        return;
    };
    let id = s.new_id().await;
    let started = Instant::now();
    let r = client()
        .get(nginx.url(&format!("/v1/poll?id={id}&since=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{}", nginx.logs());
    // Held for the whole poll_timeout (timers never fire early), not answered by nginx.
    assert!(started.elapsed() >= timeout);
    assert!(r.bytes().await.unwrap().is_empty());
}

/// Reads a `text/event-stream` one block (event or comment) at a time.
struct Blocks {
    response: Response,
    buffer: String,
}

impl Blocks {
    /// The next block's lines; fails the test if it takes longer than [`PROMPT`].
    async fn next(&mut self) -> Vec<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return block.trim_end().lines().map(str::to_owned).collect();
            }
            let chunk = tokio::time::timeout(PROMPT, self.response.chunk())
                .await
                .expect("the next event arrives through nginx without waiting in a buffer")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn events_pass_through_nginx_at_once_and_uncompressed() {
    let Some((s, nginx)) = setup(|c| c.limits.sse_keepalive = Duration::from_secs(600)).await
    else {
        return;
    };
    let id = s.new_id().await;
    // The client accepts gzip and nginx's http block compresses every type; the site config
    // must keep event streams out of it.
    let request = client()
        .get(nginx.url(&format!("/v1/events?id={id}&since=0")))
        .header("accept-encoding", "gzip")
        .send();
    let r = tokio::time::timeout(PROMPT, request)
        .await
        .expect("the stream's head arrives through nginx without waiting in a buffer")
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.logs());
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(r.headers().get("content-encoding").is_none());
    let mut blocks = Blocks {
        response: r,
        buffer: String::new(),
    };
    assert_eq!(blocks.next().await, ["event: ready", "data: {}"]);

    s.wait_for_waiters(&id, 1).await;
    notify(&nginx, &id, "hello").await;
    assert_eq!(
        blocks.next().await,
        ["id: 1", r#"data: {"seq":1,"info":"hello"}"#]
    );
}

#[tokio::test]
async fn the_iframe_page_keeps_its_security_headers_through_nginx() {
    let Some((s, nginx)) = setup(|_| {}).await else {
        return;
    };
    let id = s.new_id().await;
    let path = format!("/v1/iframe?id={id}&origin={ORIGIN}");
    let direct = client().get(s.url(&path)).send().await.unwrap();
    let proxied = client().get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(proxied.status(), StatusCode::OK, "{}", nginx.logs());
    let csp = proxied.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains(&format!("frame-ancestors {ORIGIN};")), "{csp}");
    for name in [
        "content-security-policy",
        "referrer-policy",
        "cache-control",
        "content-type",
    ] {
        assert_eq!(proxied.headers()[name], direct.headers()[name], "{name}");
    }
    assert_eq!(
        proxied.text().await.unwrap(),
        direct.text().await.unwrap(),
        "the page itself"
    );
}

#[tokio::test]
async fn metrics_are_served_to_localhost_only() {
    let Some((_s, nginx)) = setup(|_| {}).await else {
        return;
    };
    let local = client().get(nginx.url("/metrics")).send().await.unwrap();
    assert_eq!(local.status(), StatusCode::OK, "{}", nginx.logs());
    assert!(
        local
            .text()
            .await
            .unwrap()
            .contains("callhome_connections_total")
    );

    let remote = client_from("127.0.0.2")
        .get(nginx.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(remote.status(), StatusCode::FORBIDDEN);
    // nginx's own page: every CallHome response carries nosniff.
    assert!(!remote.headers().contains_key("x-content-type-options"));
}

#[tokio::test]
async fn nginx_keeps_its_connection_to_callhome_open() {
    let Some((s, nginx)) = setup(|_| {}).await else {
        return;
    };
    let id = s.new_id().await;
    let accepted = r#"callhome_connections_total{outcome="accepted"}"#;
    let before = s.metric(accepted).await;
    // Fresh clients: each request reaches nginx on a new connection of its own.
    for _ in 0..5 {
        let r = client()
            .get(nginx.url(&format!("/v1/poll?id={id}&since=1000")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The second scrape's own connection is the other one.
    let opened = s.metric(accepted).await - before - 1;
    assert_eq!(
        opened, 1,
        "nginx opened a connection to CallHome per request: no upstream keep-alive"
    );
}

/// Browser requests one client may make at once; its bucket refills at one per second.
const BURST: u32 = 3;

/// CallHome with a tight per-client rate limit that trusts `trusted`, nginx in front, and an
/// id to poll.
async fn rate_limited(trusted: &[&str]) -> Option<(TestServer, Nginx, String)> {
    let trusted: Vec<String> = trusted.iter().map(|&t| t.to_owned()).collect();
    let (s, nginx) = setup(move |c| {
        c.trusted_proxies = trusted;
        c.rate_limits.browser_per_ip = RateLimit {
            per_second: 1,
            burst: BURST,
        };
    })
    .await?;
    let id = s.new_id().await;
    Some((s, nginx, id))
}

/// One poll through nginx that answers at once (`since` is ahead of the id's seq), with
/// `forwarded` as the client's own `X-Forwarded-For` when given.
async fn poll(
    nginx: &Nginx,
    from: &reqwest::Client,
    id: &str,
    forwarded: Option<&str>,
) -> Response {
    let mut request = from.get(nginx.url(&format!("/v1/poll?id={id}&since=1000")));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap()
}

/// True when the poll passed, false when the rate limit refused it (checking the refusal).
async fn passed(r: Response) -> bool {
    match r.status() {
        StatusCode::OK => true,
        StatusCode::TOO_MANY_REQUESTS => {
            let retry_after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry_after >= 1, "Retry-After: {retry_after}");
            assert_eq!(error_code(r).await, "rate_limited");
            false
        }
        other => panic!("a poll answered {other}"),
    }
}

/// Polls from `from` until one is refused, and returns how many passed first. Bounded: a
/// client whose bucket never runs dry fails the test.
async fn passed_until_refused(
    nginx: &Nginx,
    from: &reqwest::Client,
    id: &str,
    mut forwarded: impl FnMut(u32) -> Option<String>,
) -> u32 {
    for n in 0..BURST * 5 {
        if !passed(poll(nginx, from, id, forwarded(n).as_deref()).await).await {
            return n;
        }
    }
    panic!("{} polls in a row passed a limit of {BURST}", BURST * 5);
}

#[tokio::test]
async fn behind_a_trusted_nginx_each_browser_has_a_bucket_of_its_own() {
    // nginx connects from 127.0.0.1 and appends the browser's address (127.0.0.2 or .3).
    let Some((_s, nginx, id)) = rate_limited(&["127.0.0.1"]).await else {
        return;
    };
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    // Sharing one bucket, B's polls would need it to refill BURST times over.
    for from in [&a, &b] {
        for _ in 0..BURST {
            let r = poll(&nginx, from, &id, None).await;
            // nginx's request id, kept because nginx is trusted: 32 hex digits.
            let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert!(
                request_id.len() == 32 && request_id.bytes().all(|c| c.is_ascii_hexdigit()),
                "{request_id}"
            );
            assert!(passed(r).await);
        }
    }
    // And each bucket does run dry (a refill or two may have come meanwhile).
    for from in [&a, &b] {
        assert!(passed_until_refused(&nginx, from, &id, |_| None).await < BURST);
    }
}

#[tokio::test]
async fn behind_an_untrusted_nginx_all_browsers_share_its_bucket() {
    let Some((_s, nginx, id)) = rate_limited(&[]).await else {
        return;
    };
    let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
    // Two browsers from two addresses, each claiming yet another: with a bucket each they
    // would all pass. Sharing nginx's, about BURST do (more only if a second or two went by).
    let mut passes = 0;
    for _ in 0..BURST {
        for (from, claimed) in [(&a, "203.0.113.1"), (&b, "203.0.113.2")] {
            let r = poll(&nginx, from, &id, Some(claimed)).await;
            // nginx's request id is not believed either: CallHome makes its own.
            assert!(r.headers()["x-request-id"].to_str().unwrap().contains('-'));
            passes += u32::from(passed(r).await);
        }
    }
    assert!(passes < 2 * BURST, "{passes} of {} passed", 2 * BURST);
}

#[tokio::test]
async fn a_browser_cannot_leave_its_bucket_by_sending_x_forwarded_for() {
    let Some((_s, nginx, id)) = rate_limited(&["127.0.0.1"]).await else {
        return;
    };
    // Each poll claims another address; nginx appends the real one, which is what counts.
    let passes = passed_until_refused(&nginx, &client_from("127.0.0.2"), &id, |n| {
        Some(format!("198.51.100.{n}"))
    })
    .await;
    assert!(passes >= BURST, "{passes}");
    // Another browser is not affected.
    assert!(passed(poll(&nginx, &client_from("127.0.0.3"), &id, None).await).await);
}

/// The value of the directive `name` in the site config (first occurrence).
fn directive(name: &str) -> &'static str {
    SITE.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("deploy/nginx/callhome.conf has no {name}"))
        .trim()
}

/// The shipped timeouts fit CallHome's defaults: nginx must outwait a held poll and an idle
/// stream's keep-alive interval, or it cuts them, and must drop an idle upstream connection
/// before CallHome does, or it may send a request on a connection being closed.
#[test]
fn the_site_config_timeouts_fit_callhome_defaults() {
    let limits = Limits::default();
    let read_timeout = humantime::parse_duration(directive("proxy_read_timeout")).unwrap();
    assert!(read_timeout > limits.poll_timeout, "{read_timeout:?}");
    assert!(read_timeout > limits.sse_keepalive, "{read_timeout:?}");
    let keepalive = humantime::parse_duration(directive("keepalive_timeout")).unwrap();
    assert!(keepalive < limits.idle_timeout, "{keepalive:?}");
    // Not provable through the events test alone: gzip off keeps streams flowing too.
    assert_eq!(directive("proxy_buffering"), "off");
}
