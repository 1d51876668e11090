//! CallHome behind a real nginx running the shipped site config (`deploy/nginx/callhome.conf`):
//! long polls, event streams and the iframe page pass through it unharmed. See
//! `support::nginx` for how nginx is run, and why its `http` block is deliberately unfriendly.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use callhome::config::{Config, Limits};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::support::nginx::{Nginx, SITE};
use crate::support::{KEY, ORIGIN, TestServer, client};

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
    reqwest::Client::builder()
        .no_proxy()
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
        json!({ "seq": 1, "waiting": 1 })
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
async fn metrics_are_refused_to_clients_other_than_localhost() {
    let Some((_s, nginx)) = setup(|_| {}).await else {
        return;
    };
    // Every CallHome response carries nosniff; nginx's own 403 page does not.
    let local = client().get(nginx.url("/metrics")).send().await.unwrap();
    assert_ne!(local.status(), StatusCode::FORBIDDEN, "{}", nginx.logs());
    assert!(local.headers().contains_key("x-content-type-options"));

    let remote = client_from("127.0.0.2")
        .get(nginx.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(remote.status(), StatusCode::FORBIDDEN);
    assert!(!remote.headers().contains_key("x-content-type-options"));
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

/// The shipped timeouts leave room for CallHome's defaults: nginx must outwait a held poll and
/// an idle stream's keep-alive interval, or it cuts them.
#[test]
fn the_site_config_outwaits_held_polls_and_quiet_streams() {
    let limits = Limits::default();
    let read_timeout = humantime::parse_duration(directive("proxy_read_timeout")).unwrap();
    assert!(read_timeout > limits.poll_timeout, "{read_timeout:?}");
    assert!(read_timeout > limits.sse_keepalive, "{read_timeout:?}");
    assert_eq!(directive("proxy_buffering"), "off");
    assert_eq!(directive("proxy_http_version"), "1.1");
    assert_eq!(directive("proxy_set_header Connection"), "\"\"");
}
