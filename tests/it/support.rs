//! Test servers and the small helpers every test module uses.
//!
//! [`TestServer::spawn`] runs the real router on 127.0.0.1 port 0 inside the test's runtime and
//! shuts down when dropped. Logs stay silent unless `TEST_LOG=1`.

pub mod browser;
mod daemon;
pub mod engine;
pub mod faultproxy;
mod kept;
pub mod nginx;
mod page;
pub mod redis;
pub mod tap;
pub mod tls;

pub use daemon::{Daemon, Output};
pub use kept::Kept;
pub use page::{Answer, PageServer};

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use callhome::auth::AppKey;
use callhome::config::{AppConfig, Config, RateLimit, RateLimits};
use callhome::server;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// App "one": a single origin, so its ids are bound to it by default.
pub const KEY: &str = "test-key-one-0123456789";
pub const ORIGIN: &str = "http://localhost:3000";
/// App "two": two origins, so its ids are unbound unless the backend names one.
pub const KEY_TWO: &str = "test-key-two-0123456789";
pub const ORIGIN_TWO_A: &str = "https://two.example";
pub const ORIGIN_TWO_B: &str = "https://www.two.example";

/// A counter or gauge series of the `/metrics` of the server at `addr`, read on a connection
/// of its own.
pub async fn metric_at(addr: SocketAddr, series: &str) -> u64 {
    metric_from(&client(), &format!("http://{addr}/metrics"), series).await
}

/// A counter or gauge series of the `/metrics` at `url`, read with `client`.
pub async fn metric_from(client: &reqwest::Client, url: &str, series: &str) -> u64 {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// A server on a free loopback port, shut down on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// A client for this server: over TLS (offering HTTP/2 and HTTP/1.1) for a TLS server.
    pub client: reqwest::Client,
    /// The certificates of a TLS server ([`TestServer::spawn_tls_with`]).
    pub tls: Option<tls::Certs>,
    shutdown: CancellationToken,
    /// This server's own Redis, in a cluster-mode run.
    _redis: Option<engine::RedisProcess>,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = callhome::telemetry::init("debug", callhome::config::LogFormat::Text);
        }
    });
}

/// The apps every test server knows.
pub fn test_apps() -> Vec<AppConfig> {
    vec![
        AppConfig {
            name: "one".into(),
            key: Some(AppKey::new(KEY.into())),
            key_env: None,
            origins: vec![ORIGIN.into()],
            max_ids: None,
        },
        AppConfig {
            name: "two".into(),
            key: Some(AppKey::new(KEY_TWO.into())),
            key_env: None,
            origins: vec![ORIGIN_TWO_A.into(), ORIGIN_TWO_B.into()],
            max_ids: None,
        },
    ]
}

/// Whether servers in this run use the lean HTTP/1.1 path: `CALLHOME_HTTP__LEAN_PATH=false`
/// runs the whole suite with every connection served by hyper (the real binary reads the
/// same variable), to prove both paths answer the same.
pub fn lean_path() -> bool {
    std::env::var("CALLHOME_HTTP__LEAN_PATH").map_or(true, |v| v != "false")
}

/// Turns every rate limit off, for tests that are a load on purpose.
pub fn unlimited(config: &mut Config) {
    config.rate_limits = RateLimits {
        create_per_app: RateLimit::OFF,
        notify_per_app: RateLimit::OFF,
        browser_per_ip: RateLimit::OFF,
    };
}

/// A client builder that never goes through a proxy from the environment. Every client of
/// the suite starts here: reqwest's TLS is built without a crypto provider of its own (ring
/// is the tree's one, and reqwest's default would be aws-lc-rs), so ring is installed as the
/// process's default first, or building any client, TLS or not, would panic.
pub fn client_builder() -> reqwest::ClientBuilder {
    static RING: Once = Once::new();
    RING.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy()
}

/// An HTTP client that never goes through a proxy from the environment.
pub fn client() -> reqwest::Client {
    client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a plain HTTP client builds")
}

impl TestServer {
    pub fn spawn() -> Self {
        Self::spawn_with(|_| {})
    }

    /// A server whose config `adjust` may change first. Call it inside a tokio runtime.
    pub fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(None, adjust)
    }

    /// A server that speaks TLS with a certificate of a test authority of its own (in
    /// [`TestServer::tls`]); `url` and `client` are https.
    pub fn spawn_tls_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(Some(tls::Certs::new("callhome test server")), adjust)
    }

    fn spawn_on(certs: Option<tls::Certs>, adjust: impl FnOnce(&mut Config)) -> Self {
        init_logs();
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            apps: test_apps(),
            ..Config::default()
        };
        config.http.lean_path = lean_path();
        let redis = engine::redis_engine().then(engine::RedisProcess::start);
        if let Some(redis) = &redis {
            config.store.backend = callhome::config::Backend::Redis;
            config.store.redis_url = Some(callhome::config::RedisUrl::new(redis.url()));
            // The suite's tests are about what a server answers, not about an overloaded
            // Redis link (tests/it/cluster.rs tests the 1 s default), and its debug builds
            // share two cores: a thousand notifies at once can then take over a second.
            config.store.command_timeout = engine::SUITE_COMMAND_TIMEOUT;
        }
        if let Some(certs) = &certs {
            config.tls.cert_path = Some(certs.cert_path.clone());
            config.tls.key_path = Some(certs.key_path.clone());
        }
        adjust(&mut config);
        let settings = config.validate(|_| None).expect("test config is valid");
        let listener = server::bind(settings.listen).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(server::run(listener, settings, shutdown.clone()));
        Self {
            addr,
            client: certs
                .as_ref()
                .map_or_else(client, |c| c.client(tls::Alpn::Both)),
            tls: certs,
            shutdown,
            _redis: redis,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// `POST /v1/ids` with `body` (None: no body at all).
    pub async fn create(&self, key: &str, body: Option<Value>) -> Response {
        let mut req = self.client.post(self.url("/v1/ids")).bearer_auth(key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// Creates an id for app "one" and returns it.
    pub async fn new_id(&self) -> String {
        self.new_id_for(KEY).await
    }

    pub async fn new_id_for(&self, key: &str) -> String {
        let r = self.create(key, None).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `POST /v1/ids/{id}/notify` with a JSON body.
    pub async fn notify(&self, key: &str, id: &str, info: &str) -> Response {
        self.client
            .post(self.url(&format!("/v1/ids/{id}/notify")))
            .bearer_auth(key)
            .json(&json!({ "info": info }))
            .send()
            .await
            .unwrap()
    }

    /// A counter or gauge series of `/metrics` (`name{labels}` as printed), read on a
    /// connection of its own.
    pub async fn metric(&self, series: &str) -> u64 {
        match &self.tls {
            None => metric_at(self.addr, series).await,
            Some(certs) => {
                let fresh = certs.client(tls::Alpn::Http1);
                metric_from(&fresh, &self.url("/metrics"), series).await
            }
        }
    }

    /// Waits (bounded: 20 s) until `series` of `/metrics` is `n`.
    pub async fn wait_for_metric(&self, series: &str, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.metric(series).await;
            if now == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{series} stayed {now}, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/ids/{id}` with app `key`, as JSON.
    pub async fn id_status(&self, key: &str, id: &str) -> Value {
        self.client
            .get(self.url(&format!("/v1/ids/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (bounded) until the server reports `n` clients waiting on app one's `id`.
    pub async fn wait_for_waiters(&self, id: &str, n: u64) {
        for _ in 0..500 {
            if self.id_status(KEY, id).await["waiting"] == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} waiters never showed up on {id}");
    }

    /// A poll started in the background, to be held by the server.
    pub fn spawn_poll(&self, id: &str, since: u64) -> tokio::task::JoinHandle<Response> {
        let request = self
            .client
            .get(self.url(&format!("/v1/poll?id={id}&since={since}")));
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    /// `DELETE /v1/ids/{id}` with `KEY`, which must answer 204.
    pub async fn delete(&self, id: &str) {
        let deleted = self
            .client
            .delete(self.url(&format!("/v1/ids/{id}")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "delete {id}");
    }

    /// `GET /v1/poll?id=..&since=..`.
    pub async fn poll(&self, id: &str, since: u64) -> Response {
        self.client
            .get(self.url(&format!("/v1/poll?id={id}&since={since}")))
            .send()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `error.code` of a JSON error response, checking the shape on the way.
pub async fn error_code(response: Response) -> String {
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/json", "errors are JSON");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body["error"]["code"].as_str().unwrap().to_owned()
}
