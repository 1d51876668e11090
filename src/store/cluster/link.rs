//! The command link: one multiplexed connection from this node to the Redis master, kept up
//! by a supervisor task, and the one place that knows how to find that master (a URL, or
//! Sentinel).
//!
//! Requests never wait for a connection: while there is none they fail at once, and a
//! command that does not answer within `command_timeout` fails too (a timeout after sending
//! is ambiguous, so it is a failure like any other: the publisher retries). Any failure wakes
//! the supervisor, which checks the link with `ROLE` and replaces it when Redis is gone or is
//! no longer a master (a Sentinel failover demotes the old one). Every new connection runs
//! [`ensure_epoch`](super::scripts::Scripts::ensure_epoch) before any request can use it, so no
//! request ever reads or writes a Redis whose epoch is not settled.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::EPOCH_KEY;
use super::scripts::SCRIPTS;
use crate::config::RedisUrl;
use crate::slot::Epoch;

/// How often a working link is checked when nothing went wrong.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The first wait before connecting again; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How many command timeouts a browser's lookup may wait.
const BROWSER_PATIENCE: u32 = 4;
/// How many command timeouts the link's `ROLE` check may wait before the link is given up.
/// More than one: replacing the link fails every command in flight on it, so a Redis (or a
/// node) that is only slow for a moment under a burst must not be taken for gone; a Redis
/// that is gone is still found within `CHECK_EVERY` plus this.
const CHECK_PATIENCE: u32 = 2;

/// Where the master is.
#[derive(Debug, Clone)]
pub enum Target {
    /// At this URL.
    Url(RedisUrl),
    /// Wherever these sentinels say master `name` is; `auth` lends its password and database.
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The master's name.
        name: String,
        /// A URL whose user, password and database are used for the master.
        auth: Option<RedisUrl>,
    },
}

/// A working connection to the master, and what was learnt on connecting.
#[derive(Clone)]
pub struct Conn {
    /// The multiplexed connection (cheap to clone; all clones share one socket).
    pub redis: MultiplexedConnection,
    /// A second connection for the link's own checks, so that a check is not queued
    /// behind a burst of requests and a busy Redis is not taken for a dead one.
    check: MultiplexedConnection,
    /// The master's URL, for the subscriber's own connection.
    pub url: RedisUrl,
    /// The epoch of this Redis's life.
    pub epoch: Epoch,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Redis cannot be reached or answered with an error: try again later.
    #[error("{0}")]
    Down(String),
    /// Redis answers but must not be used (it would evict ids): an operator must act.
    #[error("{0}")]
    Refused(String),
}

/// The command link.
pub struct Link {
    target: Target,
    timeout: Duration,
    current: watch::Sender<Option<Conn>>,
    broken: Notify,
    reconnects: Counter,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("up", &self.current.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `target` whose commands wait at most `timeout`; not connected yet.
    pub fn new(target: Target, timeout: Duration, reconnects: Counter) -> Self {
        Self {
            target,
            timeout,
            current: watch::Sender::new(None),
            broken: Notify::new(),
            reconnects,
        }
    }

    /// The connection now, if there is one.
    pub fn get(&self) -> Option<Conn> {
        self.current.borrow().clone()
    }

    /// Changes of the connection (a new one after a failure), for the subscriber.
    pub fn watch(&self) -> watch::Receiver<Option<Conn>> {
        self.current.subscribe()
    }

    /// The command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `request` on the connection within the command timeout. Fails at once when there
    /// is no connection; any failure makes the supervisor check the link.
    pub async fn call<T, F>(&self, request: impl FnOnce(Conn) -> F) -> Result<T, String>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(self.timeout, request).await
    }

    /// [`Link::call`] for a browser's lookup, which may wait [`BROWSER_PATIENCE`] times as
    /// long: a poll waits long anyway, and a burst of thousands of pages arriving at once
    /// (a node restarted, a network back) should queue in Redis rather than be refused.
    pub async fn call_patient<T, F>(&self, request: impl FnOnce(Conn) -> F) -> Result<T, String>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(self.patient_timeout(), request).await
    }

    /// The longest a browser's lookup waits.
    pub fn patient_timeout(&self) -> Duration {
        self.timeout * BROWSER_PATIENCE
    }

    async fn call_within<T, F>(
        &self,
        timeout: Duration,
        request: impl FnOnce(Conn) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.get() else {
            return Err("no connection to Redis".into());
        };
        match tokio::time::timeout(timeout, request(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.broken.notify_one();
                Err(e.to_string())
            }
            Err(_) => {
                self.broken.notify_one();
                Err(format!("Redis did not answer within {timeout:?}"))
            }
        }
    }

    /// Connects, retrying with backoff until it works, shutdown, or Redis is refused.
    pub async fn connect_first(&self, shutdown: &CancellationToken) -> Result<(), ConnectError> {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect().await {
                Ok(conn) => {
                    tracing::info!(redis = %conn.url, epoch = conn.epoch, "connected to Redis");
                    self.current.send_replace(Some(conn));
                    return Ok(());
                }
                Err(ConnectError::Refused(why)) => return Err(ConnectError::Refused(why)),
                Err(ConnectError::Down(why)) => {
                    tracing::warn!(error = %why, retry_in = ?backoff, "waiting for Redis");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return Err(ConnectError::Down("shutting down".into())),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Keeps the link up until shutdown: checks it every second and whenever a request
    /// failed, and replaces it when it does not work.
    pub async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            // Check the live connection until it fails.
            while let Some(conn) = self.get() {
                tokio::select! {
                    () = tokio::time::sleep(CHECK_EVERY) => {}
                    () = self.broken.notified() => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(why) = self.check(conn).await {
                    tracing::warn!(error = %why, "lost the Redis command link");
                    self.current.send_replace(None);
                }
            }
            let mut backoff = MIN_BACKOFF;
            loop {
                match self.connect().await {
                    Ok(conn) => {
                        tracing::info!(redis = %conn.url, epoch = conn.epoch, "reconnected to Redis");
                        self.reconnects.inc();
                        self.current.send_replace(Some(conn));
                        break;
                    }
                    Err(ConnectError::Refused(why)) => {
                        tracing::error!(error = %why, "refusing this Redis");
                    }
                    Err(ConnectError::Down(why)) => {
                        tracing::warn!(error = %why, retry_in = ?backoff, "Redis still unreachable");
                    }
                }
                // Jittered, so nodes do not come back in step.
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.2);
                tokio::select! {
                    () = tokio::time::sleep(backoff + jitter) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Whether `conn` still reaches a master.
    async fn check(&self, mut conn: Conn) -> Result<(), String> {
        let patience = self.timeout * CHECK_PATIENCE;
        let role = tokio::time::timeout(patience, role(&mut conn.check))
            .await
            .map_err(|_| format!("no answer to ROLE within {patience:?}"))?
            .map_err(|e| e.to_string())?;
        if role == "master" {
            Ok(())
        } else {
            Err(format!("Redis is now a {role}"))
        }
    }

    /// One attempt: find the master, connect, check it and settle the epoch.
    async fn connect(&self) -> Result<Conn, ConnectError> {
        let url = match &self.target {
            Target::Url(url) => url.clone(),
            Target::Sentinel {
                sentinels,
                name,
                auth,
            } => self.ask_sentinels(sentinels, name, auth.as_ref()).await?,
        };
        let down = |e: &dyn std::fmt::Display| ConnectError::Down(format!("{url}: {e}"));
        let client = Client::open(url.expose()).map_err(|e| down(&e))?;
        // Each call bounds its own wait (`call`, `call_patient`); the connection's bound is
        // the longest of them.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.patient_timeout()));
        let settle = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let role = role(&mut conn).await?;
            let policy: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await?;
            let run_id = info
                .lines()
                .find_map(|line| line.strip_prefix("run_id:"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            let fresh: Epoch = rand::random::<Epoch>().max(1);
            let epoch: String = SCRIPTS
                .ensure_epoch
                .key(EPOCH_KEY)
                .arg(&run_id)
                .arg(fresh)
                .invoke_async(&mut conn)
                .await?;
            // Loaded before the first request: a burst of requests on a Redis that lacks the
            // scripts (a new one, a restart, a `SCRIPT FLUSH`) would otherwise each get
            // `NOSCRIPT` and send the script's text again.
            for script in SCRIPTS.all() {
                script.load_async(&mut conn).await?;
            }
            let check = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::RedisResult::Ok((conn, check, role, policy, epoch))
        };
        let (conn, check, role, policy, epoch) = tokio::time::timeout(self.timeout * 3, settle)
            .await
            .map_err(|_| {
                ConnectError::Down(format!("{url}: no answer within {:?}", self.timeout * 3))
            })?
            .map_err(|e| down(&e))?;
        if role != "master" {
            return Err(ConnectError::Down(format!(
                "{url} is a {role}, not a master"
            )));
        }
        if let [_, policy] = policy.as_slice()
            && policy != "noeviction"
        {
            return Err(ConnectError::Refused(format!(
                "{url} has maxmemory-policy {policy}, which would evict ids when memory runs \
                 out; set maxmemory-policy noeviction (docs/cluster.md)"
            )));
        }
        let epoch = epoch
            .parse()
            .map_err(|_| ConnectError::Down(format!("{url}: unreadable epoch {epoch:?}")))?;
        Ok(Conn {
            redis: conn,
            check,
            url,
            epoch,
        })
    }

    /// The master's URL, from the first sentinel that knows it.
    async fn ask_sentinels(
        &self,
        sentinels: &[String],
        name: &str,
        auth: Option<&RedisUrl>,
    ) -> Result<RedisUrl, ConnectError> {
        let mut why = String::from("no sentinel configured");
        for sentinel in sentinels {
            let ask = async {
                let client = Client::open(format!("redis://{sentinel}/"))?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(name)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(self.timeout, ask).await {
                Ok(Ok(Some((host, port)))) => return Ok(master_url(&host, port, auth)),
                Ok(Ok(None)) => why = format!("sentinel {sentinel} does not know master {name}"),
                Ok(Err(e)) => why = format!("sentinel {sentinel}: {e}"),
                Err(_) => why = format!("sentinel {sentinel} did not answer"),
            }
        }
        Err(ConnectError::Down(why))
    }
}

/// The URL of the master at `host:port`, with `auth`'s credentials and database.
fn master_url(host: &str, port: u16, auth: Option<&RedisUrl>) -> RedisUrl {
    let mut url = auth
        .and_then(|auth| url::Url::parse(auth.expose()).ok())
        .unwrap_or_else(|| url::Url::parse("redis://localhost/").expect("a valid URL"));
    // Both succeed on a redis:// URL with a host.
    let _ = url.set_host(Some(host));
    let _ = url.set_port(Some(port));
    RedisUrl::new(url.to_string())
}

/// The first word of `ROLE`: master, slave or sentinel.
async fn role(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    let role: Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match role {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => "unknown".into(),
        },
        _ => "unknown".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_found_by_sentinel_keeps_the_password_and_database() {
        let auth = RedisUrl::new("redis://:s3cret@ignored:1/2".into());
        let url = master_url("10.0.0.7", 6380, Some(&auth));
        assert_eq!(url.expose(), "redis://:s3cret@10.0.0.7:6380/2");
        assert_eq!(url.to_string(), "redis://:***@10.0.0.7:6380/2");
        assert_eq!(
            master_url("127.0.0.1", 7000, None).expose(),
            "redis://127.0.0.1:7000/"
        );
    }
}
